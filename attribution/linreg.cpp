// The linear-regression experiment of the paper (see attribution/linreg.h and docs/linreg.md):
// data, closed-form least squares, IF / TracIn / IIF / datamodel scores, the LDS protocol.
#include "attribution/linreg.h"

#include <cblas.h>
#include <lapacke.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "engine/rng.h"
#include "kernels/philox.cuh"

namespace iif {
namespace attr {
namespace linreg {

namespace {

// Streams of make_problem: (trial << 8) | purpose.
enum Purpose : uint64_t {
  kX = 1,
  kW = 2,
  kTrainGauss = 3,
  kTrainLaplace = 4,
  kXTest = 5,
  kTestGauss = 6,
  kTestLaplace = 7,
};

uint64_t stream_of(uint64_t trial, Purpose p) { return (trial << 8) | p; }

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t mix(uint64_t seed, uint64_t trial, uint64_t purpose) {
  return splitmix64(splitmix64(seed) ^ splitmix64(trial * 16 + purpose));
}

std::string num(double x) {
  std::ostringstream s;
  s.precision(6);
  s << x;
  return s.str();
}

double dot(const double* a, const double* b, int64_t d) {
  double s = 0.0;
  for (int64_t k = 0; k < d; ++k) s += a[k] * b[k];
  return s;
}

// Solves a (d, d) symmetric positive definite system in place (a is overwritten by its
// Cholesky factor, b (d, nrhs) column-major by the solution). False if a is not SPD.
bool spd_solve(std::vector<double>& a, std::vector<double>& b, int64_t d, int64_t nrhs = 1) {
  const lapack_int info = LAPACKE_dposv(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(d),
                                        static_cast<lapack_int>(nrhs), a.data(),
                                        static_cast<lapack_int>(d), b.data(),
                                        static_cast<lapack_int>(d));
  if (info < 0) throw std::logic_error("linreg: LAPACKE_dposv argument " + std::to_string(-info));
  return info == 0;
}

// Eigenvalues (ascending) of a symmetric (d, d) matrix; vectors into `a` if want_vectors.
std::vector<double> sym_eig(std::vector<double>& a, int64_t d, bool want_vectors) {
  std::vector<double> ev(static_cast<std::size_t>(d));
  if (d == 0) return ev;
  const lapack_int info =
      LAPACKE_dsyevd(LAPACK_COL_MAJOR, want_vectors ? 'V' : 'N', 'L',
                     static_cast<lapack_int>(d), a.data(), static_cast<lapack_int>(d), ev.data());
  if (info != 0) throw std::runtime_error("linreg: LAPACKE_dsyevd failed (info " +
                                          std::to_string(info) + ")");
  return ev;
}

// G = X_S^T X_S and X_S^T t over the rows S (all rows if empty). G is symmetric, so row- and
// column-major agree.
void normal_equations(const std::vector<double>& x, const std::vector<double>& t, int64_t n,
                      int64_t d, const std::vector<int64_t>& rows, std::vector<double>& gram,
                      std::vector<double>& rhs) {
  gram.assign(static_cast<std::size_t>(d * d), 0.0);
  rhs.assign(static_cast<std::size_t>(d), 0.0);
  auto add = [&](int64_t i) {
    const double* xi = x.data() + i * d;
    for (int64_t a = 0; a < d; ++a) {
      rhs[a] += xi[a] * t[i];
      for (int64_t b = 0; b <= a; ++b) gram[a * d + b] += xi[a] * xi[b];
    }
  };
  if (rows.empty())
    for (int64_t i = 0; i < n; ++i) add(i);
  else
    for (int64_t i : rows) add(i);
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = 0; b < a; ++b) gram[b * d + a] = gram[a * d + b];
}

std::vector<double> predict(const std::vector<double>& x, int64_t n, int64_t d,
                            const std::vector<double>& theta) {
  std::vector<double> f(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) f[i] = dot(x.data() + i * d, theta.data(), d);
  return f;
}

void check_problem(const Problem& p, const char* what) {
  if (p.d < 1 || p.n < p.d || p.n_test < 1 ||
      p.x.size() != static_cast<std::size_t>(p.n * p.d) ||
      p.y.size() != static_cast<std::size_t>(p.n) ||
      p.x_test.size() != static_cast<std::size_t>(p.n_test * p.d) ||
      p.y_test.size() != static_cast<std::size_t>(p.n_test))
    throw std::invalid_argument(std::string(what) + ": inconsistent Problem (n = " +
                                std::to_string(p.n) + ", d = " + std::to_string(p.d) +
                                ", n_test = " + std::to_string(p.n_test) + ", x holds " +
                                std::to_string(p.x.size()) + ", x_test " +
                                std::to_string(p.x_test.size()) + ")");
}

void check_fit(const Problem& p, const Fit& fit, const char* what) {
  check_problem(p, what);
  if (fit.n != p.n || fit.d != p.d || fit.theta.size() != static_cast<std::size_t>(p.d))
    throw std::invalid_argument(std::string(what) +
                                ": the Fit is not the least-squares fit of this Problem "
                                "(call fit_least_squares(problem))");
}

// Test residuals r_j = x_j^T theta - y_j over the group.
std::vector<double> group_residuals(const Problem& p, const std::vector<int64_t>& g,
                                    const std::vector<double>& theta) {
  std::vector<double> r(g.size());
  for (std::size_t a = 0; a < g.size(); ++a)
    r[a] = dot(p.x_test.data() + g[a] * p.d, theta.data(), p.d) - p.y_test[g[a]];
  return r;
}

double sum_sq(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x * x;
  return s;
}

}  // namespace

const char* noise_name(NoiseKind k) { return k == NoiseKind::gaussian ? "gaussian" : "laplace"; }

// ---- data -----------------------------------------------------------------------------------

double standard_laplace(uint64_t seed, uint64_t stream, uint64_t index) {
  // u in (0, 1), never 0 or 1, so both logs are finite.
  const double u = (static_cast<double>(philox::bits(seed, stream, index)) + 0.5) / 4294967296.0;
  return u < 0.5 ? std::log(2.0 * u) : -std::log(2.0 * (1.0 - u));
}

Problem make_problem(const DataSpec& s, uint64_t seed, uint64_t trial) {
  if (s.d < 1 || s.n < s.d || s.n_test < 1)
    throw std::invalid_argument("make_problem: n = " + std::to_string(s.n) + ", d = " +
                                std::to_string(s.d) + ", n_test = " + std::to_string(s.n_test) +
                                "; need d >= 1, n >= d (full-rank least squares), n_test >= 1");
  if (!(s.sigma_n >= 0.0) || !(s.sigma_s >= 0.0))
    throw std::invalid_argument("make_problem: noise levels sigma_n = " + num(s.sigma_n) +
                                ", sigma_s = " + num(s.sigma_s) + " must be >= 0");
  if (trial >= (uint64_t{1} << 56))
    throw std::invalid_argument("make_problem: trial index too large (streams hold 56 bits)");
  Problem p;
  p.n = s.n;
  p.d = s.d;
  p.n_test = s.n_test;
  const double lap = s.laplace_scale == LaplaceScale::b_is_sigma ? 1.0 : 1.0 / std::sqrt(2.0);
  auto noise = [&](NoiseKind k, double sigma, Purpose gauss, Purpose laplace, uint64_t i) {
    return k == NoiseKind::gaussian
               ? sigma * rng::normal(seed, stream_of(trial, gauss), i)
               : sigma * lap * standard_laplace(seed, stream_of(trial, laplace), i);
  };
  p.w.resize(s.d);
  for (int64_t k = 0; k < s.d; ++k) p.w[k] = rng::normal(seed, stream_of(trial, kW), k);
  p.x.resize(s.n * s.d);
  p.y.resize(s.n);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t k = 0; k < s.d; ++k)
      p.x[i * s.d + k] = rng::normal(seed, stream_of(trial, kX), i * s.d + k);
    p.y[i] = dot(p.x.data() + i * s.d, p.w.data(), s.d) +
             noise(s.train_noise, s.sigma_n, kTrainGauss, kTrainLaplace, i);
  }
  p.x_test.resize(s.n_test * s.d);
  p.y_test.resize(s.n_test);
  for (int64_t j = 0; j < s.n_test; ++j) {
    for (int64_t k = 0; k < s.d; ++k)
      p.x_test[j * s.d + k] = rng::normal(seed, stream_of(trial, kXTest), j * s.d + k);
    p.y_test[j] = dot(p.x_test.data() + j * s.d, p.w.data(), s.d) +
                  noise(s.test_noise, s.sigma_s, kTestGauss, kTestLaplace, j);
  }
  return p;
}

// ---- least squares --------------------------------------------------------------------------

std::vector<double> Fit::solve(const std::vector<double>& b) const {
  if (b.size() != static_cast<std::size_t>(d))
    throw std::invalid_argument("Fit::solve: b has " + std::to_string(b.size()) +
                                " entries, expected d = " + std::to_string(d));
  std::vector<double> x = b;
  const lapack_int info =
      LAPACKE_dpotrs(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(d), 1, chol.data(),
                     static_cast<lapack_int>(d), x.data(), static_cast<lapack_int>(d));
  if (info != 0) throw std::logic_error("Fit::solve: LAPACKE_dpotrs info " + std::to_string(info));
  return x;
}

Fit fit_least_squares(const Problem& p) {
  check_problem(p, "fit_least_squares");
  Fit f;
  f.n = p.n;
  f.d = p.d;
  normal_equations(p.x, p.y, p.n, p.d, {}, f.gram, f.theta);
  f.chol = f.gram;
  if (!spd_solve(f.chol, f.theta, p.d))
    throw std::runtime_error("fit_least_squares: X^T X (" + std::to_string(p.d) + " x " +
                             std::to_string(p.d) + ") is not positive definite: the " +
                             std::to_string(p.n) + " training inputs do not span R^d");
  const auto fx = predict(p.x, p.n, p.d, f.theta);
  f.residual.resize(p.n);
  for (int64_t i = 0; i < p.n; ++i) f.residual[i] = fx[i] - p.y[i];
  std::vector<double> g = f.gram;
  f.gram_max_eig = sym_eig(g, p.d, false).back();
  return f;
}

std::vector<double> least_squares(const std::vector<double>& x, const std::vector<double>& t,
                                  int64_t n, int64_t d, const std::vector<int64_t>& rows) {
  if (d < 1 || x.size() != static_cast<std::size_t>(n * d) || t.size() != static_cast<std::size_t>(n))
    throw std::invalid_argument("least_squares: x holds " + std::to_string(x.size()) +
                                " values and t " + std::to_string(t.size()) + "; expected n x d = " +
                                std::to_string(n) + " x " + std::to_string(d) + " and n");
  for (int64_t i : rows)
    if (i < 0 || i >= n)
      throw std::invalid_argument("least_squares: row " + std::to_string(i) + " outside [0, " +
                                  std::to_string(n) + ")");
  std::vector<double> gram, theta;
  normal_equations(x, t, n, d, rows, gram, theta);
  if (!spd_solve(gram, theta, d))
    throw std::runtime_error("least_squares: X_S^T X_S is singular (" +
                             std::to_string(rows.empty() ? n : int64_t(rows.size())) +
                             " rows do not span R^" + std::to_string(d) +
                             "); use larger subsets");
  return theta;
}

std::vector<std::vector<double>> subset_test_losses(const Problem& p,
                                                    const eval::Subsets& subsets) {
  check_problem(p, "subset_test_losses");
  const int64_t m_count = static_cast<int64_t>(subsets.size());
  std::vector<std::vector<double>> losses(subsets.size(),
                                          std::vector<double>(static_cast<std::size_t>(p.n_test)));
  std::string error;
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
  for (int64_t m = 0; m < m_count; ++m) {
    try {
      const auto theta = least_squares(p.x, p.y, p.n, p.d, subsets[m]);
      for (int64_t j = 0; j < p.n_test; ++j) {
        const double r = dot(p.x_test.data() + j * p.d, theta.data(), p.d) - p.y_test[j];
        losses[m][j] = r * r;
      }
    } catch (const std::exception& e) {
#pragma omp critical(linreg_subset_error)
      if (error.empty()) error = "subset " + std::to_string(m) + ": " + e.what();
    }
  }
  if (!error.empty()) throw std::runtime_error("subset_test_losses: " + error);
  return losses;
}

// ---- groups ---------------------------------------------------------------------------------

Groups singleton_groups(int64_t n_test) {
  Groups g(static_cast<std::size_t>(n_test));
  for (int64_t j = 0; j < n_test; ++j) g[j] = {j};
  return g;
}

namespace {
void check_groups(const Groups& groups, int64_t n_test, const char* what) {
  if (groups.empty()) throw std::invalid_argument(std::string(what) + ": no test groups");
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].empty())
      throw std::invalid_argument(std::string(what) + ": test group " + std::to_string(g) +
                                  " is empty");
    for (int64_t j : groups[g])
      if (j < 0 || j >= n_test)
        throw std::invalid_argument(std::string(what) + ": test group " + std::to_string(g) +
                                    " holds index " + std::to_string(j) + ", outside [0, " +
                                    std::to_string(n_test) + ")");
  }
}
}  // namespace

std::vector<double> group_scores(const std::vector<double>& scores, int64_t n, int64_t n_test,
                                 const Groups& groups) {
  check_groups(groups, n_test, "group_scores");
  if (scores.size() != static_cast<std::size_t>(n * n_test))
    throw std::invalid_argument("group_scores: scores hold " + std::to_string(scores.size()) +
                                " values, expected n x n_test = " + std::to_string(n * n_test));
  const int64_t ng = static_cast<int64_t>(groups.size());
  std::vector<double> out(static_cast<std::size_t>(n * ng), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < ng; ++g)
      for (int64_t j : groups[g]) out[i * ng + g] += scores[i * n_test + j];
  return out;
}

std::vector<std::vector<double>> group_losses(const std::vector<std::vector<double>>& losses,
                                              const Groups& groups) {
  std::vector<std::vector<double>> out(losses.size(), std::vector<double>(groups.size(), 0.0));
  for (std::size_t m = 0; m < losses.size(); ++m) {
    check_groups(groups, static_cast<int64_t>(losses[m].size()), "group_losses");
    for (std::size_t g = 0; g < groups.size(); ++g)
      for (int64_t j : groups[g]) out[m][g] += losses[m][j];
  }
  return out;
}

// ---- IF and TracIn --------------------------------------------------------------------------

std::vector<double> influence_function(const Problem& p, const Fit& fit) {
  check_fit(p, fit, "influence_function");
  const int64_t n = p.n, d = p.d, T = p.n_test;
  std::vector<double> s(static_cast<std::size_t>(n * T));
  for (int64_t j = 0; j < T; ++j) {
    const std::vector<double> xt(p.x_test.begin() + j * d, p.x_test.begin() + (j + 1) * d);
    const double r = dot(xt.data(), fit.theta.data(), d) - p.y_test[j];
    // -(1/N) g^T H^{-1} grad l_i = -(1/N) (2 r xhat)^T (N/2) A^{-1} (2 e_i x_i)
    const auto c = fit.solve(xt);  // A^{-1} xhat
    for (int64_t i = 0; i < n; ++i)
      s[i * T + j] = -2.0 * r * fit.residual[i] * dot(p.x.data() + i * d, c.data(), d);
  }
  return s;
}

std::vector<double> tracin_final(const Problem& p, const Fit& fit, double lr) {
  check_fit(p, fit, "tracin_final");
  if (!(lr > 0.0)) throw std::invalid_argument("tracin_final: lr = " + num(lr) + " must be > 0");
  const int64_t n = p.n, d = p.d, T = p.n_test;
  std::vector<double> s(static_cast<std::size_t>(n * T));
  for (int64_t j = 0; j < T; ++j) {
    const double* xt = p.x_test.data() + j * d;
    const double r = dot(xt, fit.theta.data(), d) - p.y_test[j];
    for (int64_t i = 0; i < n; ++i)  // -lr (2 r xhat) . (2 e_i x_i)
      s[i * T + j] = -lr * 4.0 * r * fit.residual[i] * dot(p.x.data() + i * d, xt, d);
  }
  return s;
}

std::vector<double> tracin_trajectory(const Problem& p, const TracInTrajectory& o) {
  check_problem(p, "tracin_trajectory");
  if (o.steps < 1 || !(o.lr > 0.0))
    throw std::invalid_argument("tracin_trajectory: steps = " + std::to_string(o.steps) +
                                ", lr = " + num(o.lr) + "; need steps >= 1 and lr > 0");
  const int64_t n = p.n, d = p.d, T = p.n_test;
  std::vector<double> s(static_cast<std::size_t>(n * T), 0.0);
  std::vector<double> theta(static_cast<std::size_t>(d), 0.0);
  for (int64_t c = 0; c < o.steps; ++c) {
    const auto f = predict(p.x, n, d, theta);
    std::vector<double> e(static_cast<std::size_t>(n));
    for (int64_t i = 0; i < n; ++i) e[i] = f[i] - p.y[i];
    for (int64_t j = 0; j < T; ++j) {
      const double* xt = p.x_test.data() + j * d;
      const double r = dot(xt, theta.data(), d) - p.y_test[j];
      for (int64_t i = 0; i < n; ++i)
        s[i * T + j] -= o.lr * 4.0 * r * e[i] * dot(p.x.data() + i * d, xt, d);
    }
    // theta -= lr (2/N) X^T e: the full-batch step on the mean MSE
    for (int64_t k = 0; k < d; ++k) {
      double gk = 0.0;
      for (int64_t i = 0; i < n; ++i) gk += p.x[i * d + k] * e[i];
      theta[k] -= o.lr * 2.0 / static_cast<double>(n) * gk;
    }
  }
  return s;
}

// ---- IIF ------------------------------------------------------------------------------------

namespace {

void check_iif_options(const IifOptions& o) {
  if (o.K < 1) throw std::invalid_argument("integrated_influence: K = " + std::to_string(o.K) +
                                           "; the path needs at least one step (K >= 1)");
  if (!o.baseline_is_model && !(o.mu > 0.0))
    throw std::invalid_argument("integrated_influence: mu = " + num(o.mu) +
                                " must be > 0 (it weighs the training loss in the unlearning "
                                "objective -L_test + mu ||X theta - y||^2)");
  if (o.unlearn_epochs < 0 || !(o.unlearn_lr_rel > 0.0))
    throw std::invalid_argument("integrated_influence: unlearn_epochs = " +
                                std::to_string(o.unlearn_epochs) + ", unlearn_lr_rel = " +
                                num(o.unlearn_lr_rel) + "; need epochs >= 0 and lr > 0");
  if (!(o.fisher_damping >= 0.0))
    throw std::invalid_argument("integrated_influence: fisher_damping = " + num(o.fisher_damping) +
                                " must be >= 0");
  if (!(o.path_lr > 0.0) || o.path_batch < 0)
    throw std::invalid_argument("integrated_influence: path_lr = " + num(o.path_lr) +
                                ", path_batch = " + std::to_string(o.path_batch) +
                                "; need lr > 0 and batch >= 0 (0 = full batch)");
}

// One epoch of mini-batch SGD on the mean MSE with targets t, from theta (eq. 16; with
// batch = n it is the single full-batch step the equation writes).
void sgd_epoch(const Problem& p, const std::vector<double>& t, double lr, int64_t batch,
               uint64_t seed, uint64_t stream, std::vector<double>& theta) {
  const int64_t n = p.n, d = p.d;
  std::vector<int64_t> order;
  if (batch < n) {
    order = rng::permutation(n, seed, stream);
  } else {
    order.resize(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
  }
  std::vector<double> g(static_cast<std::size_t>(d));
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t end = std::min(n, start + batch);
    std::fill(g.begin(), g.end(), 0.0);
    for (int64_t b = start; b < end; ++b) {
      const int64_t i = order[b];
      const double* xi = p.x.data() + i * d;
      const double e = dot(xi, theta.data(), d) - t[i];
      for (int64_t k = 0; k < d; ++k) g[k] += 2.0 * e * xi[k];
    }
    const double scale = lr / static_cast<double>(end - start);
    for (int64_t k = 0; k < d; ++k) theta[k] -= scale * g[k];
  }
}

}  // namespace

Unlearned unlearn(const Problem& p, const Fit& fit, const std::vector<int64_t>& group,
                  const IifOptions& o) {
  check_fit(p, fit, "unlearn");
  check_iif_options(o);
  check_groups({group}, p.n_test, "unlearn");
  const int64_t d = p.d, ng = static_cast<int64_t>(group.size());
  Unlearned u;
  // mu_crit = lambda_max(X_g A^{-1} X_g^T): the Hessian 2 (mu A - X_g^T X_g) is positive
  // definite iff mu > mu_crit (congruence with A^{-1/2}; for one point, Sherman-Morrison).
  std::vector<std::vector<double>> ainv_xg(group.size());
  for (int64_t a = 0; a < ng; ++a)
    ainv_xg[a] = fit.solve(std::vector<double>(p.x_test.begin() + group[a] * d,
                                               p.x_test.begin() + (group[a] + 1) * d));
  std::vector<double> small(static_cast<std::size_t>(ng * ng));
  for (int64_t a = 0; a < ng; ++a)
    for (int64_t b = 0; b < ng; ++b)
      small[a * ng + b] = dot(p.x_test.data() + group[a] * d, ainv_xg[b].data(), d);
  u.mu_crit = sym_eig(small, ng, false).back();
  // The Hessian / 2 and the right-hand side of its stationarity condition:
  //   (mu A - X_g^T X_g) theta = mu X^T y - X_g^T y_g.
  std::vector<double> m(static_cast<std::size_t>(d * d)), rhs(static_cast<std::size_t>(d));
  for (int64_t a = 0; a < d; ++a) {
    double xty = 0.0;
    for (int64_t i = 0; i < p.n; ++i) xty += p.x[i * d + a] * p.y[i];
    rhs[a] = o.mu * xty;
    for (int64_t b = 0; b < d; ++b) m[a * d + b] = o.mu * fit.gram[a * d + b];
  }
  for (int64_t j : group) {
    const double* xj = p.x_test.data() + j * d;
    for (int64_t a = 0; a < d; ++a) {
      rhs[a] -= xj[a] * p.y_test[j];
      for (int64_t b = 0; b < d; ++b) m[a * d + b] -= xj[a] * xj[b];
    }
  }
  std::vector<double> factor = m, theta = rhs;
  u.indefinite = !spd_solve(factor, theta, d);
  if (u.indefinite && o.on_indefinite == OnIndefinite::throw_error) {
    std::string pts;
    for (int64_t j : group) pts += (pts.empty() ? "" : ",") + std::to_string(j);
    throw std::runtime_error(
        "unlearning objective -L_test + mu ||X theta - y||^2 is indefinite for test group {" +
        pts + "}: mu = " + num(o.mu) + " <= mu_crit = " + num(u.mu_crit) +
        " (lambda_max of X_g (X^T X)^{-1} X_g^T; for one point, its leverage). Its stationary "
        "point is a saddle and gradient descent diverges. Use mu > mu_crit (mu = 1, i.e. "
        "lambda = 1 on a sum-of-squares training loss, is safe whenever the leverage is < 1), "
        "or OnIndefinite::flag to compute it anyway and count it");
  }
  if (o.unlearning == Unlearning::closed_form) {
    if (u.indefinite) {  // the saddle point, by a general symmetric solve (flag policy only)
      std::vector<lapack_int> ipiv(static_cast<std::size_t>(d));
      factor = m;
      theta = rhs;
      const lapack_int info = LAPACKE_dsysv(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(d), 1,
                                            factor.data(), static_cast<lapack_int>(d),
                                            ipiv.data(), theta.data(), static_cast<lapack_int>(d));
      if (info != 0)
        throw std::runtime_error("unlearn: mu = " + num(o.mu) + " equals mu_crit = " +
                                 num(u.mu_crit) + ": the unlearning objective has no "
                                 "stationary point (singular Hessian)");
    }
    u.theta = theta;
    return u;
  }
  // E_u full-batch GD steps on F(theta) = -sum_g r^2 + mu ||X theta - y||^2 from theta*:
  //   grad F = -2 X_g^T r_g + 2 mu X^T (X theta - y) = 2 (m theta - rhs).
  const double lr = o.unlearn_lr_rel / (2.0 * o.mu * fit.gram_max_eig);
  u.theta = fit.theta;
  std::vector<double> grad(static_cast<std::size_t>(d));
  for (int64_t e = 0; e < o.unlearn_epochs; ++e) {
    for (int64_t a = 0; a < d; ++a)
      grad[a] = 2.0 * (dot(m.data() + a * d, u.theta.data(), d) - rhs[a]);
    for (int64_t a = 0; a < d; ++a) u.theta[a] -= lr * grad[a];
  }
  return u;
}

IifResult integrated_influence(const Problem& p, const Fit& fit, const IifOptions& o,
                               const Groups& groups_in) {
  check_fit(p, fit, "integrated_influence");
  check_iif_options(o);
  const Groups groups = groups_in.empty() ? singleton_groups(p.n_test) : groups_in;
  check_groups(groups, p.n_test, "integrated_influence");
  const int64_t n = p.n, d = p.d, ng = static_cast<int64_t>(groups.size()), K = o.K;
  IifResult res;
  res.scores.assign(static_cast<std::size_t>(n * ng), 0.0);
  res.loss_star.resize(ng);
  res.loss_base.resize(ng);
  res.score_sum.resize(ng);
  res.mu_crit.assign(ng, 0.0);
  res.indefinite.assign(ng, 0);
  const int64_t batch = o.path_batch == 0 ? n : std::min(o.path_batch, n);
  for (int64_t g = 0; g < ng; ++g) {
    const auto& grp = groups[g];
    // 1-2. baseline parameters and targets (eqs. 12, 13)
    std::vector<double> theta_base = fit.theta;
    if (!o.baseline_is_model) {
      Unlearned u = unlearn(p, fit, grp, o);
      res.mu_crit[g] = u.mu_crit;
      res.indefinite[g] = u.indefinite ? 1 : 0;
      res.n_indefinite += u.indefinite ? 1 : 0;
      theta_base = std::move(u.theta);
    }
    const std::vector<double> ybar = predict(p.x, n, d, theta_base);
    // 3. rho_i(t_k) = (k/K) y_i + (1 - k/K) ybar_i (eq. 15)
    auto rho = [&](int64_t k) {
      const double t = static_cast<double>(k) / static_cast<double>(K);
      std::vector<double> r(static_cast<std::size_t>(n));
      for (int64_t i = 0; i < n; ++i) r[i] = t * p.y[i] + (1.0 - t) * ybar[i];
      return r;
    };
    auto ls_on = [&](const std::vector<double>& t) {  // A^{-1} X^T t
      std::vector<double> xtt(static_cast<std::size_t>(d), 0.0);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t a = 0; a < d; ++a) xtt[a] += p.x[i * d + a] * t[i];
      return fit.solve(xtt);
    };
    // 4. path models theta_k, k = 1..K
    std::vector<std::vector<double>> theta_k(static_cast<std::size_t>(K + 1));
    if (o.path == PathModels::closed_form) {
      for (int64_t k = 1; k <= K; ++k) theta_k[k] = ls_on(rho(k));
    } else {
      theta_k[K] = fit.theta;  // theta(Gamma(t_K)) = theta* (eq. 16)
      for (int64_t k = K - 1; k >= 1; --k) {
        theta_k[k] = theta_k[k + 1];
        sgd_epoch(p, rho(k), o.path_lr, batch, o.path_seed,
                  (static_cast<uint64_t>(g) << 20) | static_cast<uint64_t>(k), theta_k[k]);
      }
    }
    // 5. S[i][g] = sum_k -(1/N) G(t_k)^T H^{-1} J_i Delta_i^k (eq. 10), H = (2/N) A
    std::vector<double> rho_prev = rho(0);
    for (int64_t k = 1; k <= K; ++k) {
      const std::vector<double> rho_k = rho(k);
      const auto r = group_residuals(p, grp, theta_k[k]);
      std::vector<double> G(static_cast<std::size_t>(d), 0.0);  // 2 X_g^T r_g
      for (std::size_t a = 0; a < grp.size(); ++a)
        for (int64_t c = 0; c < d; ++c) G[c] += 2.0 * r[a] * p.x_test[grp[a] * d + c];
      std::vector<double> v;
      if (o.curvature == Curvature::hessian) {
        v = fit.solve(G);  // H^{-1} G = (N/2) A^{-1} G
        for (double& vc : v) vc *= 0.5 * static_cast<double>(n);
      } else {
        // F_k = (1/N) sum_i u_i u_i^T, u_i = 2 (f_i(theta_k) - rho_i(t_k)) x_i   (eq. 31)
        std::vector<double> fk(static_cast<std::size_t>(d * d), 0.0);
        for (int64_t i = 0; i < n; ++i) {
          const double* xi = p.x.data() + i * d;
          const double u = 2.0 * (dot(xi, theta_k[k].data(), d) - rho_k[i]);
          for (int64_t a = 0; a < d; ++a)
            for (int64_t b = 0; b < d; ++b) fk[a * d + b] += u * u * xi[a] * xi[b] / n;
        }
        double tr = 0.0;
        for (int64_t a = 0; a < d; ++a) tr += fk[a * d + a];
        for (int64_t a = 0; a < d; ++a) fk[a * d + a] += o.fisher_damping * tr / d;
        v = G;
        if (!spd_solve(fk, v, d))
          throw std::runtime_error("integrated_influence: the Fisher at path step " +
                                   std::to_string(k) + " is singular (all path residuals zero?); "
                                   "use fisher_damping > 0");
      }
      for (int64_t i = 0; i < n; ++i) {
        // J_i Delta = grad_theta l(f_i, rho_k) - grad_theta l(f_i, rho_{k-1}) = -2 x_i Delta
        const double delta = rho_k[i] - rho_prev[i];
        const double jd_dot_v = -2.0 * delta * dot(p.x.data() + i * d, v.data(), d);
        res.scores[i * ng + g] += -jd_dot_v / static_cast<double>(n);
      }
      rho_prev = rho_k;
    }
    // Completeness (eq. 1): theta(Gamma(0)) is the least-squares fit of ybar.
    res.loss_star[g] = sum_sq(group_residuals(p, grp, fit.theta));
    res.loss_base[g] = sum_sq(group_residuals(p, grp, ls_on(ybar)));
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += res.scores[i * ng + g];
    res.score_sum[g] = s;
  }
  return res;
}

// ---- datamodel ------------------------------------------------------------------------------

namespace {

// Ridge fits of the centred losses on the centred memberships of the rows [0, m_fit), returned
// as the eigen-decomposition pieces beta(lambda) = V diag(1 / (ev + lambda)) P.
struct RidgeBasis {
  std::vector<double> v;   // (n, n) column-major eigenvectors
  std::vector<double> ev;  // (n)
  std::vector<double> p;   // (n, T) column-major: V^T Zc^T Lc
  std::vector<double> z_mean, l_mean;
};

RidgeBasis ridge_basis(const std::vector<double>& z, const std::vector<std::vector<double>>& l,
                       int64_t m_fit, int64_t n, int64_t T) {
  RidgeBasis b;
  b.z_mean.assign(n, 0.0);
  b.l_mean.assign(T, 0.0);
  for (int64_t m = 0; m < m_fit; ++m) {
    for (int64_t i = 0; i < n; ++i) b.z_mean[i] += z[m * n + i];
    for (int64_t j = 0; j < T; ++j) b.l_mean[j] += l[m][j];
  }
  for (double& x : b.z_mean) x /= static_cast<double>(m_fit);
  for (double& x : b.l_mean) x /= static_cast<double>(m_fit);
  std::vector<double> zc(static_cast<std::size_t>(m_fit * n)), lc(static_cast<std::size_t>(m_fit * T));
  for (int64_t m = 0; m < m_fit; ++m) {
    for (int64_t i = 0; i < n; ++i) zc[m * n + i] = z[m * n + i] - b.z_mean[i];
    for (int64_t j = 0; j < T; ++j) lc[m * T + j] = l[m][j] - b.l_mean[j];
  }
  // G = Zc^T Zc (n, n); B = Zc^T Lc (n, T), both column-major.
  b.v.assign(static_cast<std::size_t>(n * n), 0.0);
  cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, static_cast<int>(n),
              static_cast<int>(m_fit), 1.0, zc.data(), static_cast<int>(n), 0.0, b.v.data(),
              static_cast<int>(n));
  std::vector<double> B(static_cast<std::size_t>(n * T));
  // zc is (m_fit, n) row-major = (n, m_fit) column-major; lc (m_fit, T) row-major = (T, m_fit)
  // column-major. B = zc_cm * lc_cm^T.
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(T),
              static_cast<int>(m_fit), 1.0, zc.data(), static_cast<int>(n), lc.data(),
              static_cast<int>(T), 0.0, B.data(), static_cast<int>(n));
  b.ev = sym_eig(b.v, n, true);
  b.p.assign(static_cast<std::size_t>(n * T), 0.0);
  cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(T),
              static_cast<int>(n), 1.0, b.v.data(), static_cast<int>(n), B.data(),
              static_cast<int>(n), 0.0, b.p.data(), static_cast<int>(n));
  return b;
}

// beta (n) of column j for penalty lambda. Directions with (numerically) zero variance, such as
// the all-ones vector when every subset has the same size, are left out (pseudo-inverse):
// they do not change any subset's prediction beyond a constant.
std::vector<double> ridge_beta(const RidgeBasis& b, int64_t n, int64_t j, double lambda) {
  std::vector<double> beta(static_cast<std::size_t>(n), 0.0);
  const double tol = 1e-9 * std::max(b.ev.back(), 1e-300);
  for (int64_t c = 0; c < n; ++c) {
    if (b.ev[c] <= tol) continue;
    const double coef = b.p[j * n + c] / (b.ev[c] + lambda);
    for (int64_t i = 0; i < n; ++i) beta[i] += b.v[c * n + i] * coef;
  }
  return beta;
}

}  // namespace

Datamodel fit_datamodel(const eval::Subsets& subsets,
                        const std::vector<std::vector<double>>& losses, int64_t n,
                        const DatamodelOptions& o) {
  const int64_t M = static_cast<int64_t>(subsets.size());
  if (M < 10 || losses.size() != subsets.size() || n < 1)
    throw std::invalid_argument("fit_datamodel: " + std::to_string(M) + " subsets and " +
                                std::to_string(losses.size()) +
                                " loss rows; need the same number, at least 10, and n >= 1");
  if (!(o.holdout > 0.0 && o.holdout < 1.0) || o.ridge_grid.empty())
    throw std::invalid_argument("fit_datamodel: holdout = " + num(o.holdout) +
                                " must be in (0, 1) and the ridge grid non-empty");
  for (double lam : o.ridge_grid)
    if (!(lam >= 0.0))
      throw std::invalid_argument("fit_datamodel: ridge penalty " + num(lam) + " must be >= 0");
  const int64_t T = static_cast<int64_t>(losses[0].size());
  for (const auto& row : losses)
    if (static_cast<int64_t>(row.size()) != T)
      throw std::invalid_argument("fit_datamodel: loss rows of different lengths");
  std::vector<double> z(static_cast<std::size_t>(M * n), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i : subsets[m]) {
      if (i < 0 || i >= n)
        throw std::invalid_argument("fit_datamodel: subset " + std::to_string(m) +
                                    " holds index " + std::to_string(i) + " outside [0, " +
                                    std::to_string(n) + ")");
      z[m * n + i] = 1.0;
    }
  const int64_t m_fit = M - std::max<int64_t>(1, std::llround(o.holdout * static_cast<double>(M)));
  Datamodel dm;
  dm.ridge.assign(T, o.ridge_grid[0]);
  {  // choose lambda per column on the held-out subsets
    const RidgeBasis b = ridge_basis(z, losses, m_fit, n, T);
    for (int64_t j = 0; j < T; ++j) {
      double best = std::numeric_limits<double>::infinity();
      for (double lam : o.ridge_grid) {
        const auto beta = ridge_beta(b, n, j, lam);
        double mse = 0.0;
        for (int64_t m = m_fit; m < M; ++m) {
          double pred = b.l_mean[j];
          for (int64_t i = 0; i < n; ++i) pred += (z[m * n + i] - b.z_mean[i]) * beta[i];
          mse += (pred - losses[m][j]) * (pred - losses[m][j]);
        }
        if (mse < best) {
          best = mse;
          dm.ridge[j] = lam;
        }
      }
    }
  }
  const RidgeBasis b = ridge_basis(z, losses, M, n, T);
  dm.scores.assign(static_cast<std::size_t>(n * T), 0.0);
  dm.intercept.assign(T, 0.0);
  for (int64_t j = 0; j < T; ++j) {
    const auto beta = ridge_beta(b, n, j, dm.ridge[j]);
    double c = b.l_mean[j];
    for (int64_t i = 0; i < n; ++i) {
      dm.scores[i * T + j] = beta[i];
      c -= b.z_mean[i] * beta[i];
    }
    dm.intercept[j] = c;
  }
  return dm;
}

// ---- protocol -------------------------------------------------------------------------------

uint64_t lds_subset_seed(uint64_t seed, uint64_t trial) { return mix(seed, trial, 1); }
uint64_t datamodel_subset_seed(uint64_t seed, uint64_t trial) { return mix(seed, trial, 2); }

TrialTruth trial_truth(const Problem& p, const Protocol& proto, uint64_t trial,
                       const DatamodelOptions& dm) {
  TrialTruth t;
  t.subsets = eval::make_subsets(p.n, proto.alpha, proto.subsets, lds_subset_seed(proto.seed, trial));
  t.losses = subset_test_losses(p, t.subsets);
  t.dm_subsets = eval::make_subsets(p.n, proto.alpha, proto.dm_subsets,
                                    datamodel_subset_seed(proto.seed, trial));
  t.dm_losses = subset_test_losses(p, t.dm_subsets);
  t.datamodel = fit_datamodel(t.dm_subsets, t.dm_losses, p.n, dm);
  return t;
}

}  // namespace linreg
}  // namespace attr
}  // namespace iif
