// Tests of attribution/linreg.h (the paper's linear-regression experiment). Every expected value
// is computed here independently: plain-loop Gauss-Jordan inverses, plain gradient descent, and
// the closed forms derived in docs/linreg.md. Nothing is a number copied from the program.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "attribution/evaluation.h"
#include "attribution/linreg.h"
#include "kernels/philox.cuh"

namespace lr = iif::attr::linreg;
namespace eval = iif::eval;
using Vec = std::vector<double>;

namespace {

// ---- independent linear algebra (plain loops, no LAPACK) ----------------------------------

// Inverse of a (d, d) row-major matrix by Gauss-Jordan with partial pivoting.
Vec inverse(Vec a, int64_t d) {
  Vec inv(d * d, 0.0);
  for (int64_t i = 0; i < d; ++i) inv[i * d + i] = 1.0;
  for (int64_t c = 0; c < d; ++c) {
    int64_t piv = c;
    for (int64_t r = c + 1; r < d; ++r)
      if (std::fabs(a[r * d + c]) > std::fabs(a[piv * d + c])) piv = r;
    REQUIRE(std::fabs(a[piv * d + c]) > 1e-300);
    for (int64_t k = 0; k < d; ++k) {
      std::swap(a[c * d + k], a[piv * d + k]);
      std::swap(inv[c * d + k], inv[piv * d + k]);
    }
    const double p = a[c * d + c];
    for (int64_t k = 0; k < d; ++k) {
      a[c * d + k] /= p;
      inv[c * d + k] /= p;
    }
    for (int64_t r = 0; r < d; ++r) {
      if (r == c) continue;
      const double f = a[r * d + c];
      for (int64_t k = 0; k < d; ++k) {
        a[r * d + k] -= f * a[c * d + k];
        inv[r * d + k] -= f * inv[c * d + k];
      }
    }
  }
  return inv;
}

Vec matvec(const Vec& m, const Vec& v, int64_t rows, int64_t cols) {
  Vec out(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r] += m[r * cols + c] * v[c];
  return out;
}

double dotv(const double* a, const double* b, int64_t d) {
  double s = 0.0;
  for (int64_t k = 0; k < d; ++k) s += a[k] * b[k];
  return s;
}

Vec row(const Vec& m, int64_t r, int64_t d) { return Vec(m.begin() + r * d, m.begin() + (r + 1) * d); }

Vec gram(const lr::Problem& p) {  // X^T X
  Vec a(p.d * p.d, 0.0);
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t r = 0; r < p.d; ++r)
      for (int64_t c = 0; c < p.d; ++c) a[r * p.d + c] += p.x[i * p.d + r] * p.x[i * p.d + c];
  return a;
}

Vec xt_times(const lr::Problem& p, const Vec& t) {  // X^T t
  Vec b(p.d, 0.0);
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t r = 0; r < p.d; ++r) b[r] += p.x[i * p.d + r] * t[i];
  return b;
}

// Largest |a - b| relative to the largest |b| (so a score matrix is compared as a whole).
double rel_max_diff(const Vec& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0.0, scale = 0.0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    diff = std::max(diff, std::fabs(a[k] - b[k]));
    scale = std::max(scale, std::fabs(b[k]));
  }
  return diff / std::max(scale, 1e-300);
}

// float64 solves of a d = 10 system with condition number ~ 4 lose a few digits at most:
// 1e-10 relative leaves a margin of ~10^5 over eps * d * kappa.
constexpr double kTol = 1e-10;

lr::Problem problem(double sigma_n = 1.0, double sigma_s = 1.0, uint64_t trial = 3,
                    int64_t n_test = 4) {
  lr::DataSpec s;
  s.sigma_n = sigma_n;
  s.sigma_s = sigma_s;
  s.n_test = n_test;
  return lr::make_problem(s, 12345, trial);
}

// theta' of the unlearning objective by its stationarity condition, independently:
// (mu A - sum_g x x^T) theta = mu X^T y - sum_g x yhat.
Vec unlearned_theta(const lr::Problem& p, const std::vector<int64_t>& g, double mu) {
  Vec m = gram(p), rhs = xt_times(p, p.y);
  for (double& v : m) v *= mu;
  for (double& v : rhs) v *= mu;
  for (int64_t j : g)
    for (int64_t r = 0; r < p.d; ++r) {
      rhs[r] -= p.x_test[j * p.d + r] * p.y_test[j];
      for (int64_t c = 0; c < p.d; ++c) m[r * p.d + c] -= p.x_test[j * p.d + r] * p.x_test[j * p.d + c];
    }
  return matvec(inverse(m, p.d), rhs, p.d, p.d);
}

double leverage(const lr::Problem& p, int64_t j) {  // xhat^T A^{-1} xhat
  const Vec xt = row(p.x_test, j, p.d);
  const Vec c = matvec(inverse(gram(p), p.d), xt, p.d, p.d);
  return dotv(xt.data(), c.data(), p.d);
}

// IF by its definition with an explicitly inverted Hessian H = (2/N) X^T X.
Vec influence_reference(const lr::Problem& p) {
  Vec h = gram(p);
  for (double& v : h) v *= 2.0 / double(p.n);
  const Vec hinv = inverse(h, p.d);
  const Vec theta = matvec(inverse(gram(p), p.d), xt_times(p, p.y), p.d, p.d);
  Vec s(p.n * p.n_test);
  for (int64_t j = 0; j < p.n_test; ++j) {
    const Vec xt = row(p.x_test, j, p.d);
    const double r = dotv(xt.data(), theta.data(), p.d) - p.y_test[j];
    Vec g(p.d);
    for (int64_t k = 0; k < p.d; ++k) g[k] = 2.0 * r * xt[k];
    const Vec hg = matvec(hinv, g, p.d, p.d);
    for (int64_t i = 0; i < p.n; ++i) {
      const double e = dotv(&p.x[i * p.d], theta.data(), p.d) - p.y[i];
      Vec gi(p.d);
      for (int64_t k = 0; k < p.d; ++k) gi[k] = 2.0 * e * p.x[i * p.d + k];
      s[i * p.n_test + j] = -dotv(hg.data(), gi.data(), p.d) / double(p.n);
    }
  }
  return s;
}

template <class E, class F>
std::string thrown_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL_CHECK("expected an exception, none was thrown");
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("make_problem: shapes, shared draws across noise settings, noise scales") {
  const lr::Problem a = problem(0.1, 1.0), b = problem(1.0, 0.1);
  CHECK(a.x.size() == 100 * 10);
  CHECK(a.x_test.size() == 4 * 10);
  CHECK(a.x == b.x);  // common random numbers: only the noise scale differs
  CHECK(a.w == b.w);
  CHECK(a.x_test == b.x_test);
  for (int64_t i = 0; i < a.n; ++i) {
    const double fa = dotv(&a.x[i * a.d], a.w.data(), a.d);
    // y - x^T w is the same standard draw times sigma_n: 0.1 vs 1.0
    CHECK((b.y[i] - fa) == doctest::Approx(10.0 * (a.y[i] - fa)).epsilon(1e-9));
  }
  lr::DataSpec s;
  s.train_noise = lr::NoiseKind::laplace;
  s.laplace_scale = lr::LaplaceScale::b_is_sigma;
  const lr::Problem l1 = lr::make_problem(s, 12345, 3);
  s.laplace_scale = lr::LaplaceScale::std_is_sigma;
  const lr::Problem l2 = lr::make_problem(s, 12345, 3);
  for (int64_t i = 0; i < l1.n; ++i) {
    const double f = dotv(&l1.x[i * l1.d], l1.w.data(), l1.d);
    CHECK((l1.y[i] - f) == doctest::Approx(std::sqrt(2.0) * (l2.y[i] - f)).epsilon(1e-9));
  }
  CHECK(lr::make_problem(s, 12345, 4).x != l1.x);  // trials differ
  CHECK_THROWS_AS(lr::make_problem(lr::DataSpec{5, 10}, 1, 0), std::invalid_argument);
}

TEST_CASE("standard_laplace: E|L| = 1, Var L = 2, symmetric") {
  // |L| is Exp(1): mean 1, sd 1; L has variance 2. With n = 200000 draws the standard errors
  // are 1/sqrt(n) ~ 0.0022 (mean |L|), sqrt(2/n) ~ 0.0032 (mean L) and sqrt(20/n) ~ 0.01
  // (mean L^2, since E L^4 = 24); 5 standard errors cannot fail by chance in practice.
  const int n = 200000;
  double s1 = 0, sa = 0, s2 = 0;
  for (int i = 0; i < n; ++i) {
    const double v = lr::standard_laplace(7, 1, i);
    s1 += v;
    sa += std::fabs(v);
    s2 += v * v;
  }
  // Exactly: the Laplace CDF (0.5 e^x below 0, 1 - 0.5 e^-x above) maps each draw back to the
  // uniform (bits + 0.5) / 2^32 it came from; float64 round trip of log/exp: ~1e-15 relative.
  for (uint64_t i = 0; i < 2000; ++i) {
    const double x = lr::standard_laplace(7, 1, i);
    const double u = (double(iif::philox::bits(7, 1, i)) + 0.5) / 4294967296.0;
    const double cdf = x < 0 ? 0.5 * std::exp(x) : 1.0 - 0.5 * std::exp(-x);
    CHECK(cdf == doctest::Approx(u).epsilon(1e-9));
  }
  CHECK(std::fabs(sa / n - 1.0) < 5 * 0.0023);
  CHECK(std::fabs(s1 / n) < 5 * 0.0032);
  CHECK(std::fabs(s2 / n - 2.0) < 5 * 0.01);
}

TEST_CASE("closed-form least squares equals gradient descent run to convergence") {
  const lr::Problem p = problem();
  const lr::Fit fit = lr::fit_least_squares(p);
  // GD on the mean MSE with lr = 1 / (2/N trace A) <= 1 / lambda_max(H): monotone convergence.
  const Vec a = gram(p);
  double tr = 0;
  for (int64_t k = 0; k < p.d; ++k) tr += a[k * p.d + k];
  const double step = 1.0 / (2.0 / p.n * tr);
  Vec theta(p.d, 0.0);
  for (int it = 0; it < 200000; ++it) {
    Vec g(p.d, 0.0);
    for (int64_t i = 0; i < p.n; ++i) {
      const double e = dotv(&p.x[i * p.d], theta.data(), p.d) - p.y[i];
      for (int64_t k = 0; k < p.d; ++k) g[k] += 2.0 / p.n * e * p.x[i * p.d + k];
    }
    double gn = 0;
    for (int64_t k = 0; k < p.d; ++k) {
      theta[k] -= step * g[k];
      gn += g[k] * g[k];
    }
    if (std::sqrt(gn) < 1e-13) break;
  }
  CHECK(rel_max_diff(fit.theta, theta) < 1e-9);
  for (int64_t i = 0; i < p.n; ++i)
    CHECK(fit.residual[i] == doctest::Approx(dotv(&p.x[i * p.d], theta.data(), p.d) - p.y[i]).epsilon(1e-8));
  // A subset refit against the normal equations of those rows, inverted independently.
  const std::vector<int64_t> rows = {0, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47};
  Vec as(p.d * p.d, 0.0), bs(p.d, 0.0);
  for (int64_t i : rows)
    for (int64_t r = 0; r < p.d; ++r) {
      bs[r] += p.x[i * p.d + r] * p.y[i];
      for (int64_t c = 0; c < p.d; ++c) as[r * p.d + c] += p.x[i * p.d + r] * p.x[i * p.d + c];
    }
  CHECK(rel_max_diff(lr::least_squares(p.x, p.y, p.n, p.d, rows), matvec(inverse(as, p.d), bs, p.d, p.d)) < kTol);
  // subset_test_losses uses those refits.
  const auto losses = lr::subset_test_losses(p, {rows});
  const Vec th = matvec(inverse(as, p.d), bs, p.d, p.d);
  for (int64_t j = 0; j < p.n_test; ++j) {
    const double r = dotv(&p.x_test[j * p.d], th.data(), p.d) - p.y_test[j];
    CHECK(losses[0][j] == doctest::Approx(r * r).epsilon(1e-9));
  }
  CHECK_THROWS_AS(lr::least_squares(p.x, p.y, p.n, p.d, {0, 1, 2}), std::runtime_error);  // 3 < d
}

TEST_CASE("IF and TracIn against their definitions") {
  const lr::Problem p = problem();
  const lr::Fit fit = lr::fit_least_squares(p);
  CHECK(rel_max_diff(lr::influence_function(p, fit), influence_reference(p)) < kTol);

  // TracIn (final checkpoint, lr 0.5): -lr g_test . grad l_i
  const Vec tr = lr::tracin_final(p, fit, 0.5);
  Vec ref(p.n * p.n_test);
  for (int64_t j = 0; j < p.n_test; ++j) {
    const double r = dotv(&p.x_test[j * p.d], fit.theta.data(), p.d) - p.y_test[j];
    for (int64_t i = 0; i < p.n; ++i) {
      const double e = dotv(&p.x[i * p.d], fit.theta.data(), p.d) - p.y[i];
      ref[i * p.n_test + j] = -0.5 * (2 * r) * (2 * e) * dotv(&p.x[i * p.d], &p.x_test[j * p.d], p.d);
    }
  }
  CHECK(rel_max_diff(tr, ref) < kTol);

  // Trajectory from theta = 0, two steps of lr 0.1: checkpoints 0 and theta_1.
  lr::TracInTrajectory o;
  o.steps = 2;
  o.lr = 0.1;
  Vec theta1(p.d, 0.0);
  for (int64_t i = 0; i < p.n; ++i)  // theta_1 = 0 - lr (2/N) X^T (0 - y)
    for (int64_t k = 0; k < p.d; ++k) theta1[k] += 0.1 * 2.0 / p.n * p.y[i] * p.x[i * p.d + k];
  Vec tref(p.n * p.n_test, 0.0);
  for (const Vec& th : {Vec(p.d, 0.0), theta1})
    for (int64_t j = 0; j < p.n_test; ++j) {
      const double r = dotv(&p.x_test[j * p.d], th.data(), p.d) - p.y_test[j];
      for (int64_t i = 0; i < p.n; ++i) {
        const double e = dotv(&p.x[i * p.d], th.data(), p.d) - p.y[i];
        tref[i * p.n_test + j] += -0.1 * 4 * r * e * dotv(&p.x[i * p.d], &p.x_test[j * p.d], p.d);
      }
    }
  CHECK(rel_max_diff(lr::tracin_trajectory(p, o), tref) < kTol);
}

TEST_CASE("IIF with K = 1 and baseline f(x; theta*) equals IF (Lemma 2.5, Corollary 2.6)") {
  for (double sn : {0.1, 1.0}) {
    const lr::Problem p = problem(sn, 1.0);
    const lr::Fit fit = lr::fit_least_squares(p);
    lr::IifOptions o;
    o.K = 1;
    o.baseline_is_model = true;
    const lr::IifResult r = lr::integrated_influence(p, fit, o);
    CHECK(rel_max_diff(r.scores, influence_reference(p)) < kTol);
    // With K > 1 and the same baseline the path is constant in theta (targets move from the
    // fitted values to y, the least-squares fit moves from theta* to theta*): still IF.
    o.K = 4;
    CHECK(rel_max_diff(lr::integrated_influence(p, fit, o).scores, influence_reference(p)) < kTol);
  }
}

TEST_CASE("IIF closed form: scores and the completeness error (r* - r')^2 / K") {
  const lr::Problem p = problem(1.0, 1.0, 5, 3);
  const lr::Fit fit = lr::fit_least_squares(p);
  const Vec ainv = inverse(gram(p), p.d);
  const Vec theta_star = matvec(ainv, xt_times(p, p.y), p.d, p.d);
  const double mu = 1.0;
  std::vector<double> prev_err(p.n_test, INFINITY);
  for (int64_t K : {1, 2, 5, 20, 100}) {
    lr::IifOptions o;
    o.K = K;
    o.mu = mu;
    const lr::IifResult r = lr::integrated_influence(p, fit, o);
    CHECK(r.n_indefinite == 0);
    for (int64_t j = 0; j < p.n_test; ++j) {
      const Vec xt = row(p.x_test, j, p.d);
      const Vec th_u = unlearned_theta(p, {j}, mu);
      const double rs = dotv(xt.data(), theta_star.data(), p.d) - p.y_test[j];
      const double ru = dotv(xt.data(), th_u.data(), p.d) - p.y_test[j];
      CHECK(r.loss_star[j] == doctest::Approx(rs * rs).epsilon(1e-9));
      CHECK(r.loss_base[j] == doctest::Approx(ru * ru).epsilon(1e-9));
      const double err = r.score_sum[j] - (r.loss_star[j] - r.loss_base[j]);
      const double expect = (rs - ru) * (rs - ru) / double(K);
      CHECK(err == doctest::Approx(expect).epsilon(1e-8));
      CHECK(err < prev_err[j]);  // shrinks as K grows
      prev_err[j] = err;
      // The scores themselves (docs/linreg.md): theta_k interpolates theta' and theta*, so
      // S[i] = 2 (y_i - ybar_i) c_i rbar, c_i = x_i^T A^{-1} xhat, rbar = mean_k r(theta_k).
      const Vec c = matvec(ainv, xt, p.d, p.d);
      double rbar = 0;
      for (int64_t k = 1; k <= K; ++k) rbar += ru + (rs - ru) * double(k) / double(K);
      rbar /= double(K);
      Vec col(p.n), ref(p.n);
      for (int64_t i = 0; i < p.n; ++i) {
        const double ybar = dotv(&p.x[i * p.d], th_u.data(), p.d);
        ref[i] = 2.0 * (p.y[i] - ybar) * dotv(&p.x[i * p.d], c.data(), p.d) * rbar;
        col[i] = r.scores[i * p.n_test + j];
      }
      CHECK(rel_max_diff(col, ref) < 1e-9);
    }
  }
}

TEST_CASE("IIF closed form: the baseline amplifies the test residual by mu / (mu - h)") {
  // Sherman-Morrison on (mu A - x x^T): r' = r* mu / (mu - h). Independent of the library's
  // mu_crit, which must equal the leverage h for a single point.
  const lr::Problem p = problem(1.0, 1.0, 8, 3);
  const lr::Fit fit = lr::fit_least_squares(p);
  for (double mu : {0.5, 1.0, 4.0}) {
    lr::IifOptions o;
    o.mu = mu;
    for (int64_t j = 0; j < p.n_test; ++j) {
      const lr::Unlearned u = lr::unlearn(p, fit, {j}, o);
      const double h = leverage(p, j);
      CHECK(u.mu_crit == doctest::Approx(h).epsilon(1e-9));
      const double rs = dotv(&p.x_test[j * p.d], fit.theta.data(), p.d) - p.y_test[j];
      const double ru = dotv(&p.x_test[j * p.d], u.theta.data(), p.d) - p.y_test[j];
      CHECK(ru == doctest::Approx(rs * mu / (mu - h)).epsilon(1e-9));
    }
  }
}

TEST_CASE("unlearning by gradient descent: the GD iterates, and the closed form at convergence") {
  const lr::Problem p = problem(1.0, 1.0, 9, 2);
  const lr::Fit fit = lr::fit_least_squares(p);
  lr::IifOptions o;
  o.mu = 1.0;
  o.unlearning = lr::Unlearning::gradient_descent;
  o.unlearn_epochs = 3;
  o.unlearn_lr_rel = 0.5;
  // Independent: lambda_max(A) by power iteration, then three GD steps on
  // F = -(xhat^T theta - yhat)^2 + mu ||X theta - y||^2.
  const Vec a = gram(p);
  Vec v(p.d, 1.0);
  double lmax = 0;
  for (int it = 0; it < 5000; ++it) {
    Vec w = matvec(a, v, p.d, p.d);
    lmax = std::sqrt(dotv(w.data(), w.data(), p.d));
    for (int64_t k = 0; k < p.d; ++k) v[k] = w[k] / lmax;
  }
  const double step = 0.5 / (2.0 * o.mu * lmax);
  Vec th = fit.theta;
  const Vec xt = row(p.x_test, 1, p.d);
  for (int e = 0; e < 3; ++e) {
    const double r = dotv(xt.data(), th.data(), p.d) - p.y_test[1];
    Vec res(p.n);
    for (int64_t i = 0; i < p.n; ++i) res[i] = dotv(&p.x[i * p.d], th.data(), p.d) - p.y[i];
    const Vec g2 = xt_times(p, res);
    for (int64_t k = 0; k < p.d; ++k) th[k] -= step * (-2.0 * r * xt[k] + 2.0 * o.mu * g2[k]);
  }
  CHECK(rel_max_diff(lr::unlearn(p, fit, {1}, o).theta, th) < 1e-8);
  o.unlearn_epochs = 20000;  // converges to the (positive definite) closed form
  o.unlearn_lr_rel = 0.9;
  CHECK(rel_max_diff(lr::unlearn(p, fit, {1}, o).theta, unlearned_theta(p, {1}, o.mu)) < 1e-8);
}

TEST_CASE("the indefinite (saddle) unlearning objective is detected, never returned silently") {
  const lr::Problem p = problem(1.0, 1.0, 11, 3);
  const lr::Fit fit = lr::fit_least_squares(p);
  const double h = leverage(p, 0);
  lr::IifOptions o;
  o.mu = 0.5 * h;  // mu < h: -x x^T beats mu A along A^{-1} xhat
  const std::string msg = thrown_message<std::runtime_error>([&] { lr::unlearn(p, fit, {0}, o); });
  CHECK(contains(msg, "indefinite"));
  CHECK(contains(msg, "mu_crit"));
  CHECK_THROWS_AS(lr::integrated_influence(p, fit, o), std::runtime_error);
  o.unlearning = lr::Unlearning::gradient_descent;  // GD does not hide it either
  CHECK_THROWS_AS(lr::unlearn(p, fit, {0}, o), std::runtime_error);

  o.unlearning = lr::Unlearning::closed_form;
  o.on_indefinite = lr::OnIndefinite::flag;
  const lr::Unlearned u = lr::unlearn(p, fit, {0}, o);
  CHECK(u.indefinite);
  // It is the stationary point (the saddle), and the objective curves down along A^{-1} xhat.
  CHECK(rel_max_diff(u.theta, unlearned_theta(p, {0}, o.mu)) < 1e-8);
  const Vec xt = row(p.x_test, 0, p.d);
  const Vec dir = matvec(inverse(gram(p), p.d), xt, p.d, p.d);
  const double along = o.mu * dotv(dir.data(), matvec(gram(p), dir, p.d, p.d).data(), p.d) -
                       std::pow(dotv(xt.data(), dir.data(), p.d), 2);
  CHECK(along < 0);
  // Counted per test point in integrate_influence: exactly those with h_j > mu.
  o.mu = leverage(p, 0) * 0.5 + leverage(p, 1) * 0.5;
  const lr::IifResult r = lr::integrated_influence(p, fit, o);
  int expect = 0;
  for (int64_t j = 0; j < p.n_test; ++j) {
    const bool indef = leverage(p, j) > o.mu;
    expect += indef;
    CHECK(bool(r.indefinite[j]) == indef);
  }
  CHECK(r.n_indefinite == expect);
  // The paper's lambda = 1 on the mean MSE is mu = 1/N: below every leverage here.
  o.mu = 1.0 / p.n;
  for (int64_t j = 0; j < p.n_test; ++j) CHECK(leverage(p, j) > o.mu);
  CHECK(lr::integrated_influence(p, fit, o).n_indefinite == p.n_test);
  // Above the leverage it is convex: no flag.
  o.mu = 2.0 * std::max({leverage(p, 0), leverage(p, 1), leverage(p, 2)});
  CHECK(lr::integrated_influence(p, fit, o).n_indefinite == 0);
}

TEST_CASE("IIF on a group of test points: group unlearning and a summed test loss") {
  const lr::Problem p = problem(1.0, 0.1, 13, 5);
  const lr::Fit fit = lr::fit_least_squares(p);
  const std::vector<int64_t> g = {0, 2, 4};
  lr::IifOptions o;
  o.K = 3;
  o.mu = 2.0;
  const lr::IifResult r = lr::integrated_influence(p, fit, o, {g});
  // Independent: theta' from the group's stationarity condition, theta_k by interpolation,
  // then eq. 10 with G = 2 sum_g r_j xhat_j and H = (2/N) A.
  const Vec th_u = unlearned_theta(p, g, o.mu);
  Vec h = gram(p);
  for (double& v : h) v *= 2.0 / p.n;
  const Vec hinv = inverse(h, p.d);
  Vec ref(p.n, 0.0);
  for (int64_t k = 1; k <= o.K; ++k) {
    const double t = double(k) / o.K;
    Vec th(p.d), G(p.d, 0.0);
    for (int64_t c = 0; c < p.d; ++c) th[c] = t * fit.theta[c] + (1 - t) * th_u[c];
    for (int64_t j : g) {
      const double rj = dotv(&p.x_test[j * p.d], th.data(), p.d) - p.y_test[j];
      for (int64_t c = 0; c < p.d; ++c) G[c] += 2 * rj * p.x_test[j * p.d + c];
    }
    const Vec hg = matvec(hinv, G, p.d, p.d);
    for (int64_t i = 0; i < p.n; ++i) {
      const double delta = (p.y[i] - dotv(&p.x[i * p.d], th_u.data(), p.d)) / o.K;
      ref[i] += -(1.0 / p.n) * dotv(hg.data(), &p.x[i * p.d], p.d) * (-2.0 * delta);
    }
  }
  CHECK(rel_max_diff(r.scores, ref) < 1e-9);
  // mu_crit of a group is lambda_max(X_g A^{-1} X_g^T) >= every member's leverage.
  for (int64_t j : g) CHECK(r.mu_crit[0] >= leverage(p, j) - 1e-12);
}

TEST_CASE("IIF with the one-epoch SGD path (eq. 16)") {
  const lr::Problem p = problem(1.0, 1.0, 17, 2);
  const lr::Fit fit = lr::fit_least_squares(p);
  lr::IifOptions o;
  o.K = 3;
  o.mu = 1.0;
  o.path = lr::PathModels::sgd_epoch;
  o.path_lr = 0.05;
  const lr::IifResult r = lr::integrated_influence(p, fit, o);
  Vec h = gram(p);
  for (double& v : h) v *= 2.0 / p.n;
  const Vec hinv = inverse(h, p.d);
  for (int64_t j = 0; j < p.n_test; ++j) {
    const Vec th_u = unlearned_theta(p, {j}, o.mu);
    Vec ybar(p.n);
    for (int64_t i = 0; i < p.n; ++i) ybar[i] = dotv(&p.x[i * p.d], th_u.data(), p.d);
    // theta_3 = theta*, theta_k = theta_{k+1} - lr grad L_train(rho(t_k)) at theta_{k+1}
    std::vector<Vec> th(o.K + 1);
    th[o.K] = fit.theta;
    for (int64_t k = o.K - 1; k >= 1; --k) {
      const double t = double(k) / o.K;
      Vec res(p.n);
      for (int64_t i = 0; i < p.n; ++i)
        res[i] = dotv(&p.x[i * p.d], th[k + 1].data(), p.d) - (t * p.y[i] + (1 - t) * ybar[i]);
      const Vec g = xt_times(p, res);
      th[k] = th[k + 1];
      for (int64_t c = 0; c < p.d; ++c) th[k][c] -= o.path_lr * 2.0 / p.n * g[c];
    }
    Vec col(p.n), ref(p.n, 0.0);
    for (int64_t k = 1; k <= o.K; ++k) {
      const double rj = dotv(&p.x_test[j * p.d], th[k].data(), p.d) - p.y_test[j];
      Vec G(p.d);
      for (int64_t c = 0; c < p.d; ++c) G[c] = 2 * rj * p.x_test[j * p.d + c];
      const Vec hg = matvec(hinv, G, p.d, p.d);
      for (int64_t i = 0; i < p.n; ++i)
        ref[i] += (2.0 / p.n) * ((p.y[i] - ybar[i]) / o.K) * dotv(hg.data(), &p.x[i * p.d], p.d);
    }
    for (int64_t i = 0; i < p.n; ++i) col[i] = r.scores[i * p.n_test + j];
    CHECK(rel_max_diff(col, ref) < 1e-9);
  }
  // Mini-batches are an epoch over every sample once; the scores change but stay finite.
  o.path_batch = 10;
  const lr::IifResult rb = lr::integrated_influence(p, fit, o);
  for (double v : rb.scores) CHECK(std::isfinite(v));
  CHECK(rel_max_diff(rb.scores, r.scores) > 0);
}

TEST_CASE("IIF with the Fisher of appendix E (eq. 31) in place of the Hessian") {
  const lr::Problem p = problem(1.0, 1.0, 19, 2);
  const lr::Fit fit = lr::fit_least_squares(p);
  lr::IifOptions o;
  o.K = 2;
  o.mu = 1.0;
  o.curvature = lr::Curvature::fisher;
  o.fisher_damping = 0.01;
  const lr::IifResult r = lr::integrated_influence(p, fit, o);
  for (int64_t j = 0; j < p.n_test; ++j) {
    const Vec th_u = unlearned_theta(p, {j}, o.mu);
    Vec ref(p.n, 0.0), col(p.n);
    for (int64_t k = 1; k <= o.K; ++k) {
      const double t = double(k) / o.K;
      Vec th(p.d), rho(p.n);
      for (int64_t c = 0; c < p.d; ++c) th[c] = t * fit.theta[c] + (1 - t) * th_u[c];
      Vec f(p.d * p.d, 0.0);
      for (int64_t i = 0; i < p.n; ++i) {
        rho[i] = t * p.y[i] + (1 - t) * dotv(&p.x[i * p.d], th_u.data(), p.d);
        const double u = 2 * (dotv(&p.x[i * p.d], th.data(), p.d) - rho[i]);
        for (int64_t a = 0; a < p.d; ++a)
          for (int64_t b = 0; b < p.d; ++b) f[a * p.d + b] += u * u * p.x[i * p.d + a] * p.x[i * p.d + b] / p.n;
      }
      double tr = 0;
      for (int64_t a = 0; a < p.d; ++a) tr += f[a * p.d + a];
      for (int64_t a = 0; a < p.d; ++a) f[a * p.d + a] += 0.01 * tr / p.d;
      const double rj = dotv(&p.x_test[j * p.d], th.data(), p.d) - p.y_test[j];
      Vec G(p.d);
      for (int64_t c = 0; c < p.d; ++c) G[c] = 2 * rj * p.x_test[j * p.d + c];
      const Vec fg = matvec(inverse(f, p.d), G, p.d, p.d);
      for (int64_t i = 0; i < p.n; ++i) {
        const double delta = (p.y[i] - dotv(&p.x[i * p.d], th_u.data(), p.d)) / o.K;
        ref[i] += -(1.0 / p.n) * dotv(fg.data(), &p.x[i * p.d], p.d) * (-2.0 * delta);
      }
    }
    for (int64_t i = 0; i < p.n; ++i) col[i] = r.scores[i * p.n_test + j];
    CHECK(rel_max_diff(col, ref) < 1e-9);
  }
}

TEST_CASE("datamodel: recovers an exactly additive target; fits its own subsets") {
  const int64_t n = 40;
  const auto subsets = eval::make_subsets(n, 0.3, 800, 99);
  // Exactly additive losses b + sum beta_i: the fit must recover beta (up to the constant that
  // fixed-size subsets cannot identify) and rank the subsets perfectly.
  Vec beta(n);
  for (int64_t i = 0; i < n; ++i) beta[i] = std::sin(1.3 * i) + 0.01 * i;
  std::vector<Vec> losses(subsets.size(), Vec(2));
  for (std::size_t m = 0; m < subsets.size(); ++m) {
    double s = 0;
    for (int64_t i : subsets[m]) s += beta[i];
    losses[m] = {3.0 + s, -s};
  }
  lr::DatamodelOptions o;
  o.ridge_grid = {1e-8, 1.0, 100.0};
  const lr::Datamodel dm = lr::fit_datamodel(subsets, losses, n, o);
  CHECK(dm.ridge[0] == 1e-8);  // held-out MSE picks the smallest penalty for exact data
  double mean_diff = 0;
  for (int64_t i = 0; i < n; ++i) mean_diff += (dm.scores[i * 2] - beta[i]) / n;
  for (int64_t i = 0; i < n; ++i) {
    CHECK(dm.scores[i * 2] - mean_diff == doctest::Approx(beta[i]).epsilon(1e-6));
    CHECK(dm.scores[i * 2 + 1] == doctest::Approx(-dm.scores[i * 2]).epsilon(1e-6));
  }
  CHECK(eval::lds(dm.scores, n, 2, subsets, losses).lds > 0.999999);

  // Real subset losses: with (almost) no penalty the fit is least squares on memberships, so
  // its in-sample correlation (Pearson, with an intercept) is at least that of any other
  // additive predictor, e.g. IF's. And it ranks its own training subsets well.
  lr::DataSpec s;
  s.sigma_n = 0.1;
  s.n_test = 3;
  const lr::Problem p = lr::make_problem(s, 5, 0);
  const auto sub = eval::make_subsets(p.n, 0.3, 1500, 6);
  const auto true_losses = lr::subset_test_losses(p, sub);
  o.ridge_grid = {1e-9};
  const lr::Datamodel dm2 = lr::fit_datamodel(sub, true_losses, p.n, o);
  const Vec ifs = lr::influence_function(p, lr::fit_least_squares(p));
  const auto pred_dm = eval::predict_subset_losses(dm2.scores, p.n, p.n_test, sub);
  const auto pred_if = eval::predict_subset_losses(ifs, p.n, p.n_test, sub);
  auto pearson = [](const Vec& a, const Vec& b) {
    const double ma = std::accumulate(a.begin(), a.end(), 0.0) / a.size();
    const double mb = std::accumulate(b.begin(), b.end(), 0.0) / b.size();
    double sab = 0, saa = 0, sbb = 0;
    for (std::size_t k = 0; k < a.size(); ++k) {
      sab += (a[k] - ma) * (b[k] - mb);
      saa += (a[k] - ma) * (a[k] - ma);
      sbb += (b[k] - mb) * (b[k] - mb);
    }
    return sab / std::sqrt(saa * sbb);
  };
  for (int64_t j = 0; j < p.n_test; ++j) {
    Vec t(sub.size()), a(sub.size()), b(sub.size());
    for (std::size_t m = 0; m < sub.size(); ++m) {
      t[m] = true_losses[m][j];
      a[m] = pred_dm[m][j];
      b[m] = pred_if[m][j];
    }
    CHECK(pearson(a, t) >= std::fabs(pearson(b, t)) - 1e-9);
  }
  CHECK(eval::lds(dm2.scores, p.n, p.n_test, sub, true_losses).lds > 0.5);
}

TEST_CASE("trial_truth: LDS subsets and the datamodel's subsets are different draws") {
  lr::DataSpec s;
  s.n_test = 2;
  const lr::Problem p = lr::make_problem(s, 1, 0);
  lr::Protocol proto;
  proto.subsets = 50;
  proto.dm_subsets = 60;
  const lr::TrialTruth t = lr::trial_truth(p, proto, 0);
  CHECK(t.subsets.size() == 50);
  CHECK(t.dm_subsets.size() == 60);
  CHECK(t.subsets[0].size() == 30);
  int same = 0;
  for (const auto& a : t.subsets)
    for (const auto& b : t.dm_subsets) same += (a == b);
  CHECK(same == 0);
  CHECK(lr::lds_subset_seed(0, 0) != lr::datamodel_subset_seed(0, 0));
  CHECK(lr::lds_subset_seed(0, 0) != lr::lds_subset_seed(0, 1));
  CHECK(t.datamodel.scores.size() == static_cast<std::size_t>(p.n * 2));
}

TEST_CASE("groups and input checks") {
  const lr::Groups g = lr::singleton_groups(3);
  CHECK(g.size() == 3);
  const Vec s = {1, 2, 3, 4, 5, 6};  // (2, 3)
  CHECK(lr::group_scores(s, 2, 3, {{0, 2}, {1}}) == Vec{4, 2, 10, 5});
  CHECK(lr::group_losses({{1, 2, 3}}, {{0, 2}, {1}}) == std::vector<Vec>{{4, 2}});
  CHECK_THROWS_AS(lr::group_scores(s, 2, 3, {{3}}), std::invalid_argument);
  CHECK_THROWS_AS(lr::group_scores(s, 2, 3, {{}}), std::invalid_argument);

  const lr::Problem p = problem();
  const lr::Fit fit = lr::fit_least_squares(p);
  lr::IifOptions o;
  o.K = 0;
  CHECK(contains(thrown_message<std::invalid_argument>([&] { lr::integrated_influence(p, fit, o); }), "K = 0"));
  o.K = 2;
  o.mu = 0;
  CHECK_THROWS_AS(lr::integrated_influence(p, fit, o), std::invalid_argument);
  lr::DataSpec small;
  small.d = 5;
  o.mu = 1;
  CHECK_THROWS_AS(lr::integrated_influence(p, lr::fit_least_squares(lr::make_problem(small, 1, 0)), o),
                  std::invalid_argument);
}
