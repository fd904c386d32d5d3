// Tests of the curvature ops (syrk, batched damped Cholesky solve) and of attribution/curvature.h
// (FisherAccumulator, damped solves, conjugate gradient, LiSSA), each against a plain-loop
// float64 oracle written here: explicit sums for syrk, Gauss-Jordan inversion for the solves.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "attribution/curvature.h"
#include "engine/ops.h"
#include "kernels/philox.cuh"

using iif::DType;
using iif::Shape;
using iif::Tensor;
namespace ops = iif::ops;
namespace attr = iif::attr;
using Vec = std::vector<double>;

namespace {

constexpr uint64_t kSeed = 0xC0A7ULL;
constexpr double kEps64 = std::numeric_limits<double>::epsilon();
constexpr double kEps32 = std::numeric_limits<float>::epsilon();
constexpr double kSentinel = -0x1.8p+100;  // -1.5 * 2^100: exactly representable in float32

double eps_of(DType t) { return t == DType::f32 ? kEps32 : kEps64; }

// Uniform values in [lo, hi) from Philox stream `stream`.
Vec uniform(std::size_t n, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  Vec v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * iif::philox::uniform(kSeed, stream, i);
  return v;
}

// The values as stored in dtype t (float32 rounding applied), so oracles see the same inputs.
Vec stored(const Vec& v, DType t) {
  if (t == DType::f64) return v;
  Vec r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = static_cast<float>(v[i]);
  return r;
}

// A tensor of `shape` followed in memory by `guard` sentinel values (an out-of-bounds write
// by the op under test changes them; see guard_intact).
struct Guarded {
  Tensor whole, view;
  int64_t n;
};
Guarded guarded(const Vec& values, const Shape& shape, DType t, int64_t guard = 16) {
  Vec all = values;
  all.resize(values.size() + static_cast<std::size_t>(guard), kSentinel);
  Guarded g;
  g.n = shape.numel();
  g.whole = Tensor::from_vector(all, {static_cast<int64_t>(all.size())}, t);
  g.view = g.whole.rows(0, g.n).reshape(shape);
  return g;
}
bool guard_intact(const Guarded& g) {
  const Vec all = g.whole.to_vector();
  for (std::size_t i = static_cast<std::size_t>(g.n); i < all.size(); ++i)
    if (all[i] != kSentinel) return false;
  return true;
}

// |got - ref| <= tol[i] everywhere; prints the first mismatches and the largest error.
void expect_within(const Vec& got, const Vec& ref, const Vec& tol, const std::string& what) {
  REQUIRE(got.size() == ref.size());
  std::size_t bad = 0;
  double max_err = 0.0;
  std::ostringstream first;
  first.precision(17);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(got[i] - ref[i]);
    max_err = std::max(max_err, err);
    if (!(err <= tol[i]) && bad++ < 5)
      first << "\n  [" << i << "] got " << got[i] << ", expected " << ref[i] << " (tol " << tol[i] << ")";
  }
  INFO(what << ": " << bad << " of " << ref.size() << " out of tolerance, max error " << max_err
            << first.str());
  CHECK(bad == 0);
}

double norm2(const Vec& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}
double rel_diff(const Vec& a, const Vec& b) {
  Vec d(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return norm2(d) / norm2(b);
}

// ---- oracles -------------------------------------------------------------------------------

// C(P,P) = alpha U^T U + beta C0, plus the per-entry "mass" sum |alpha u_ki u_kj| + |beta c0_ij|
// that bounds the rounding error of any summation order (Higham eq. 3.5).
void syrk_ref(const Vec& u, int64_t n, int64_t p, double alpha, double beta, const Vec& c0, Vec& c,
              Vec& mass) {
  c.assign(static_cast<std::size_t>(p * p), 0.0);
  mass.assign(c.size(), 0.0);
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = 0; j < p; ++j) {
      double s = 0, m = 0;
      for (int64_t k = 0; k < n; ++k) {
        s += u[k * p + i] * u[k * p + j];
        m += std::fabs(u[k * p + i] * u[k * p + j]);
      }
      const double prev = beta == 0.0 ? 0.0 : beta * c0[i * p + j];
      c[i * p + j] = alpha * s + prev;
      mass[i * p + j] = std::fabs(alpha) * m + std::fabs(prev);
    }
}

// Inverse of a (P,P) matrix by Gauss-Jordan elimination with partial pivoting (float64).
Vec gauss_jordan_inverse(Vec a, int64_t p) {
  Vec inv(static_cast<std::size_t>(p * p), 0.0);
  for (int64_t i = 0; i < p; ++i) inv[i * p + i] = 1.0;
  for (int64_t col = 0; col < p; ++col) {
    int64_t piv = col;
    for (int64_t r = col + 1; r < p; ++r)
      if (std::fabs(a[r * p + col]) > std::fabs(a[piv * p + col])) piv = r;
    REQUIRE(a[piv * p + col] != 0.0);
    for (int64_t j = 0; j < p; ++j) {
      std::swap(a[col * p + j], a[piv * p + j]);
      std::swap(inv[col * p + j], inv[piv * p + j]);
    }
    const double d = a[col * p + col];
    for (int64_t j = 0; j < p; ++j) {
      a[col * p + j] /= d;
      inv[col * p + j] /= d;
    }
    for (int64_t r = 0; r < p; ++r) {
      if (r == col) continue;
      const double f = a[r * p + col];
      if (f == 0.0) continue;
      for (int64_t j = 0; j < p; ++j) {
        a[r * p + j] -= f * a[col * p + j];
        inv[r * p + j] -= f * inv[col * p + j];
      }
    }
  }
  return inv;
}

Vec matmul(const Vec& a, const Vec& b, int64_t m, int64_t k, int64_t n) {
  Vec c(static_cast<std::size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t l = 0; l < k; ++l)
      for (int64_t j = 0; j < n; ++j) c[i * n + j] += a[i * k + l] * b[l * n + j];
  return c;
}

double norm1(const Vec& a, int64_t p) {  // max column sum
  double best = 0;
  for (int64_t j = 0; j < p; ++j) {
    double s = 0;
    for (int64_t i = 0; i < p; ++i) s += std::fabs(a[i * p + j]);
    best = std::max(best, s);
  }
  return best;
}

// M M^T / cols + shift I: symmetric, eigenvalues >= shift.
Vec gram_plus(int64_t p, int64_t cols, double shift, uint64_t stream) {
  const Vec m = uniform(static_cast<std::size_t>(p * cols), stream);
  Vec a(static_cast<std::size_t>(p * p), 0.0);
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = 0; j < p; ++j) {
      double s = 0;
      for (int64_t l = 0; l < cols; ++l) s += m[i * cols + l] * m[j * cols + l];
      a[i * p + j] = s / static_cast<double>(cols) + (i == j ? shift : 0.0);
    }
  return a;
}

// Q diag(lambda) Q^T with Q an orthogonal matrix from Gram-Schmidt on random vectors.
Vec spd_with_eigenvalues(const Vec& lambda, uint64_t stream) {
  const int64_t p = static_cast<int64_t>(lambda.size());
  Vec q = uniform(static_cast<std::size_t>(p * p), stream);  // rows are the vectors
  for (int64_t i = 0; i < p; ++i) {
    for (int64_t j = 0; j < i; ++j) {
      double d = 0;
      for (int64_t l = 0; l < p; ++l) d += q[i * p + l] * q[j * p + l];
      for (int64_t l = 0; l < p; ++l) q[i * p + l] -= d * q[j * p + l];
    }
    double nn = 0;
    for (int64_t l = 0; l < p; ++l) nn += q[i * p + l] * q[i * p + l];
    nn = std::sqrt(nn);
    for (int64_t l = 0; l < p; ++l) q[i * p + l] /= nn;
  }
  Vec a(static_cast<std::size_t>(p * p), 0.0);
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = 0; j < p; ++j)
      for (int64_t k = 0; k < p; ++k) a[i * p + j] += q[k * p + i] * lambda[k] * q[k * p + j];
  return a;
}

std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- syrk -------------------------------------------------------------------------------------

TEST_CASE("syrk equals a plain loop in overwrite and accumulate modes, f32 and f64") {
  // Shapes that divide nothing, size 1, N = 0, and P*P >= 16384 (the OpenMP mirror path).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{7, 13}, {1, 1}, {0, 5}, {13, 1}, {37, 131}};
  for (DType dt : {DType::f64, DType::f32}) {
    for (auto [n, p] : shapes) {
      for (double beta : {0.0, 1.0, -0.5}) {
        const double alpha = 0.75;
        const std::string dname = dtype_name(dt);
        CAPTURE(dname);
        CAPTURE(n);
        CAPTURE(p);
        CAPTURE(beta);
        const Vec u = stored(uniform(static_cast<std::size_t>(n * p), 1), dt);
        // A symmetric C0 for accumulate mode; NaN for overwrite mode (it must not be read).
        Vec c0(static_cast<std::size_t>(p * p));
        const Vec r = uniform(c0.size(), 2);
        for (int64_t i = 0; i < p; ++i)
          for (int64_t j = 0; j < p; ++j)
            c0[i * p + j] = beta == 0.0 ? std::nan("") : r[std::min(i, j) * p + std::max(i, j)];
        c0 = stored(c0, dt);
        Vec ref, mass;
        syrk_ref(u, n, p, alpha, beta, c0, ref, mass);
        Guarded c = guarded(c0, {p, p}, dt);
        ops::syrk(alpha, Tensor::from_vector(u, {n, p}, dt), beta, c.view);
        const Vec got = c.view.to_vector();
        // Error bound: (N + 2) rounded operations per entry (N products and sums, the alpha and
        // beta terms) on terms of total magnitude `mass`: (N + 2) eps mass, with a factor 2 for
        // the oracle's own float64 rounding.
        Vec tol(mass.size());
        for (std::size_t i = 0; i < tol.size(); ++i) tol[i] = 2.0 * (n + 2) * eps_of(dt) * mass[i];
        expect_within(got, ref, tol, "syrk");
        CHECK(guard_intact(c));
        bool symmetric = true;
        for (int64_t i = 0; i < p; ++i)
          for (int64_t j = 0; j < p; ++j) symmetric = symmetric && got[i * p + j] == got[j * p + i];
        CHECK(symmetric);
      }
    }
  }
}

TEST_CASE("syrk checks its arguments") {
  Tensor u = Tensor::zeros({4, 3}, DType::f64);
  Tensor c_bad = Tensor::zeros({4, 4}, DType::f64);
  CHECK_THROWS_AS(ops::syrk(1.0, u, 0.0, c_bad), std::invalid_argument);
  Tensor c32 = Tensor::zeros({3, 3}, DType::f32);
  CHECK_THROWS_AS(ops::syrk(1.0, u, 0.0, c32), std::invalid_argument);
  Tensor u1 = Tensor::zeros({3}, DType::f64);
  Tensor c = Tensor::zeros({3, 3}, DType::f64);
  CHECK_THROWS_AS(ops::syrk(1.0, u1, 0.0, c), std::invalid_argument);
}

// ---- FisherAccumulator ------------------------------------------------------------------------

TEST_CASE("FisherAccumulator over chunks equals one shot and (1/N) sum u u^T") {
  const int64_t n = 23, p = 7;
  const Vec u = stored(uniform(static_cast<std::size_t>(n * p), 3), DType::f32);
  const Tensor u32 = Tensor::from_vector(u, {n, p}, DType::f32);

  attr::FisherAccumulator one(p);
  one.add(u32);
  attr::FisherAccumulator chunked(p);
  for (auto [b0, b1] : std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {5, 5}, {5, 16}, {16, 23}})
    chunked.add(u32.rows(b0, b1));  // includes an empty chunk
  CHECK(one.count() == n);
  CHECK(chunked.count() == n);
  CHECK(chunked.dim() == p);
  const Tensor f1 = one.finalize(), f2 = chunked.finalize();
  CHECK(f1.dtype() == DType::f64);  // float32 rows accumulate in float64 by default
  Vec ref, mass;
  syrk_ref(u, n, p, 1.0 / n, 0.0, Vec(p * p, 0.0), ref, mass);
  // float64 sums of N + 2 terms (chunk partial sums add at most one rounding per chunk, 4 here).
  Vec tol(mass.size());
  for (std::size_t i = 0; i < tol.size(); ++i) tol[i] = 2.0 * (n + 6) * kEps64 * mass[i];
  expect_within(f1.to_vector(), ref, tol, "one shot");
  expect_within(f2.to_vector(), ref, tol, "chunked");
  expect_within(chunked.sum().to_vector(), ops::scale(f2, double(n)).to_vector(),
                Vec(p * p, 1e-13), "sum() = N * finalize()");

  attr::FisherAccumulator empty(p);
  CHECK_THROWS_AS(empty.finalize(), std::logic_error);
  CHECK_THROWS_AS(empty.add(Tensor::zeros({2, p + 1}, DType::f64)), std::invalid_argument);
  attr::FisherAccumulator acc32(p, DType::f32);
  acc32.add(u32);
  CHECK(acc32.finalize().dtype() == DType::f32);
}

// ---- batched damped Cholesky solve ----------------------------------------------------------

namespace {

struct SolveCase {
  int64_t k = 3, p = 6, r = 4;
  Vec a, b;          // (K,P,P), (K,P,R)
  Vec damping;       // (K)
};

// Matrix 0: well conditioned SPD; 1: SPD with a spread spectrum; 2: indefinite (smallest
// eigenvalue -0.05), positive definite only with damping > 0.05 and then ill-conditioned.
SolveCase make_case() {
  SolveCase c;
  const int64_t p = c.p;
  const Vec a0 = gram_plus(p, 9, 0.5, 10);
  Vec lam1(static_cast<std::size_t>(p));
  for (int64_t i = 0; i < p; ++i) lam1[i] = std::pow(10.0, 0.6 * static_cast<double>(i) - 1.0);
  const Vec a1 = spd_with_eigenvalues(lam1, 11);
  Vec lam2(static_cast<std::size_t>(p), 0.0);
  for (int64_t i = 0; i < p; ++i) lam2[i] = i == 0 ? -0.05 : 2.0 * static_cast<double>(i);
  const Vec a2 = spd_with_eigenvalues(lam2, 12);
  c.a = a0;
  c.a.insert(c.a.end(), a1.begin(), a1.end());
  c.a.insert(c.a.end(), a2.begin(), a2.end());
  c.b = uniform(static_cast<std::size_t>(c.k * p * c.r), 13);
  c.damping = {0.0, 1e-3, 0.0501};  // the third: 1e-4 above the smallest eigenvalue's magnitude
  return c;
}

// X_k = (A_k + d_k I)^{-1} B_k by Gauss-Jordan, and each matrix's 1-norm condition number.
void solve_ref(const SolveCase& c, const Vec& a, const Vec& b, Vec& x, Vec& cond) {
  const int64_t p = c.p;
  x.clear();
  cond.clear();
  for (int64_t k = 0; k < c.k; ++k) {
    Vec ak(a.begin() + k * p * p, a.begin() + (k + 1) * p * p);
    for (int64_t i = 0; i < p; ++i) ak[i * p + i] += c.damping[k];
    const Vec inv = gauss_jordan_inverse(ak, p);
    cond.push_back(norm1(ak, p) * norm1(inv, p));
    const Vec bk(b.begin() + k * p * c.r, b.begin() + (k + 1) * p * c.r);
    const Vec xk = matmul(inv, bk, p, p, c.r);
    x.insert(x.end(), xk.begin(), xk.end());
  }
}

}  // namespace

TEST_CASE("batched damped Cholesky solve equals the explicit inverse times the rhs") {
  const SolveCase c = make_case();
  for (DType dt : {DType::f64, DType::f32}) {
    const std::string dname = dtype_name(dt);
    CAPTURE(dname);
    const Vec a = stored(c.a, dt), b = stored(c.b, dt);
    Vec ref, cond;
    solve_ref(c, a, b, ref, cond);
    CHECK(cond[2] > 1e4);  // the third system is ill-conditioned (~ 10 / 1e-4)
    const Tensor at = Tensor::from_vector(a, {c.k, c.p, c.p}, dt);
    Guarded x = guarded(b, {c.k, c.p, c.r}, dt);
    ops::batched_cholesky_solve_into(at, c.damping, x.view);
    CHECK(guard_intact(x));
    CHECK(at.to_vector() == a);  // A is not modified
    const Vec got = x.view.to_vector();
    // Both solutions are backward stable in float64: each is within ~P cond eps64 of the exact one
    // (relative, norm-wise); 4 P cond eps64 covers both. In float32 the float64 solution is then
    // rounded once (eps32 / 2 per entry): a float32 factorisation would be off by cond * eps32
    // ~ 1e-3 on the third system and fail this bound.
    for (int64_t k = 0; k < c.k; ++k) {
      CAPTURE(k);
      const std::size_t o = static_cast<std::size_t>(k * c.p * c.r), e = o + c.p * c.r;
      const Vec gk(got.begin() + o, got.begin() + e), rk(ref.begin() + o, ref.begin() + e);
      const double scale = norm2(rk);
      Vec tol(rk.size());
      for (std::size_t i = 0; i < tol.size(); ++i)
        tol[i] = 4.0 * c.p * cond[k] * kEps64 * scale + (dt == DType::f32 ? 0.5 * kEps32 * std::fabs(rk[i]) : 0.0);
      expect_within(gk, rk, tol, "solve of system k");
    }
  }
}

TEST_CASE("damped solves: scalar damping, 2-D form, vector rhs, R = 0, K = 0 and P = 0") {
  const int64_t p = 5;
  const Vec a = gram_plus(p, 7, 0.2, 20);
  const Vec b = uniform(p * 3, 21);
  Vec ad = a;
  for (int64_t i = 0; i < p; ++i) ad[i * p + i] += 0.1;
  const Vec ref = matmul(gauss_jordan_inverse(ad, p), b, p, p, 3);
  const Tensor at = Tensor::from_vector(a, {p, p}, DType::f64);
  const Tensor bt = Tensor::from_vector(b, {p, 3}, DType::f64);
  // cond(A) <= (lambda_max + 0.1) / 0.3 < 20 here; 4 P cond eps64 relative to ||x||.
  const Vec tol(ref.size(), 4.0 * p * 20 * kEps64 * norm2(ref));
  expect_within(ops::batched_cholesky_solve(at, 0.1, bt).to_vector(), ref, tol, "ops 2-D form");
  expect_within(attr::damped_solve(at, 0.1, bt).to_vector(), ref, tol, "damped_solve");
  // rhs in float32 is converted to F's dtype.
  const Tensor x32 = attr::damped_solve(at, 0.1, bt.to(DType::f32));
  CHECK(x32.dtype() == DType::f64);
  // A vector rhs keeps its shape.
  Vec col(p), col_ref(p);
  for (int64_t i = 0; i < p; ++i) {
    col[i] = b[i * 3];
    col_ref[i] = ref[i * 3];
  }
  const Tensor xv = attr::damped_solve(at, 0.1, Tensor::from_vector(col, {p}, DType::f64));
  CHECK(xv.shape() == Shape{p});
  expect_within(xv.to_vector(), col_ref, Vec(p, tol[0]), "vector rhs");
  // Batched with one scalar damping for all K.
  Vec a3 = a, b3 = b;
  a3.insert(a3.end(), a.begin(), a.end());
  b3.insert(b3.end(), b.begin(), b.end());
  const Tensor x3 = attr::batched_damped_solve(Tensor::from_vector(a3, {2, p, p}, DType::f64), 0.1,
                                               Tensor::from_vector(b3, {2, p, 3}, DType::f64));
  Vec ref3 = ref;
  ref3.insert(ref3.end(), ref.begin(), ref.end());
  expect_within(x3.to_vector(), ref3, Vec(ref3.size(), tol[0]), "batched, scalar damping");
  // Degenerate sizes do nothing and do not throw.
  CHECK(ops::batched_cholesky_solve(at, 0.1, Tensor::zeros({p, 0}, DType::f64)).numel() == 0);
  CHECK(ops::batched_cholesky_solve(Tensor::zeros({0, p, p}, DType::f64), 0.1,
                                    Tensor::zeros({0, p, 2}, DType::f64)).numel() == 0);
  CHECK(ops::batched_cholesky_solve(Tensor::zeros({0, 0}, DType::f64), 0.1,
                                    Tensor::zeros({0, 2}, DType::f64)).numel() == 0);
}

TEST_CASE("a matrix that is not positive definite even with the damping throws naming k and info") {
  const int64_t p = 4;
  // K = 3; matrix 1 = diag(2, 1, -0.5, 3): with damping 0.1 the leading minor of order 3 fails.
  Vec a(static_cast<std::size_t>(3 * p * p), 0.0);
  const double diag[3][4] = {{1, 2, 3, 4}, {2, 1, -0.5, 3}, {1, 1, 1, 1}};
  for (int k = 0; k < 3; ++k)
    for (int i = 0; i < p; ++i) a[k * p * p + i * p + i] = diag[k][i];
  for (DType dt : {DType::f64, DType::f32}) {
    const Tensor at = Tensor::from_vector(a, {3, p, p}, dt);
    const Tensor bt = Tensor::zeros({3, p, 2}, dt);
    const std::string msg = what_of([&] { ops::batched_cholesky_solve(at, 0.1, bt); });
    INFO(msg);
    CHECK(msg.find("k = 1") != std::string::npos);
    CHECK(msg.find("info = 3") != std::string::npos);
    CHECK(msg.find("larger damping") != std::string::npos);
    // Enough damping fixes it.
    CHECK_NOTHROW(ops::batched_cholesky_solve(at, 0.6, bt));
  }
  // The indefinite matrix of make_case without its damping.
  const SolveCase c = make_case();
  const std::string msg2 = what_of([&] {
    ops::batched_cholesky_solve(Tensor::from_vector(c.a, {c.k, c.p, c.p}, DType::f64), 0.0,
                                Tensor::from_vector(c.b, {c.k, c.p, c.r}, DType::f64));
  });
  CHECK(msg2.find("k = 2") != std::string::npos);
  // NaN in A is reported, not solved.
  Vec an(p * p, 0.0);
  for (int i = 0; i < p; ++i) an[i * p + i] = 1.0;
  an[5] = std::nan("");
  CHECK(what_of([&] {
          ops::batched_cholesky_solve(Tensor::from_vector(an, {p, p}, DType::f64), 0.1,
                                      Tensor::zeros({p, 1}, DType::f64));
        }).find("NaN") != std::string::npos);
  // Argument errors.
  const Tensor ok = Tensor::from_vector(an, {p, p}, DType::f64);
  CHECK_THROWS_AS(ops::batched_cholesky_solve(ok, -1.0, Tensor::zeros({p, 1}, DType::f64)), std::invalid_argument);
  CHECK_THROWS_AS(ops::batched_cholesky_solve(ok, 0.1, Tensor::zeros({p + 1, 1}, DType::f64)), std::invalid_argument);
  CHECK_THROWS_AS(ops::batched_cholesky_solve(ok, 0.1, Tensor::zeros({p, 1}, DType::f32)), std::invalid_argument);
  CHECK_THROWS_AS(ops::batched_cholesky_solve(Tensor::zeros({2, p, p}, DType::f64), std::vector<double>{0.1},
                                              Tensor::zeros({2, p, 1}, DType::f64)),
                  std::invalid_argument);
}

// ---- conjugate gradient ---------------------------------------------------------------------

TEST_CASE("conjugate gradient solves an SPD system to tolerance and equals the Cholesky solve") {
  const int64_t p = 20;
  const Vec a = gram_plus(p, 30, 0.1, 30);  // eigenvalues in [0.1, ~7]: cond < 100
  const Tensor at = Tensor::from_vector(a, {p, p}, DType::f64);
  const Tensor b = Tensor::from_vector(uniform(p, 31), {p}, DType::f64);
  int products = 0;
  auto apply = [&](const Tensor& v) {
    ++products;
    return ops::matmul(at, v.reshape({p, 1})).reshape({p});
  };
  int iters = -1;
  double rel = -1;
  const Tensor x = attr::conjugate_gradient(apply, b, 200, 1e-12, &iters, &rel);
  CHECK(iters == products);
  CHECK(iters <= 2 * p);  // P in exact arithmetic; rounding may cost a few more
  CHECK(rel <= 1e-12);
  // The true residual, formed independently: the recurrence residual drifts from it by about
  // iters * eps * ||A|| ||x|| / ||b|| < 1e-13 here.
  const Vec ax = matmul(a, x.to_vector(), p, p, 1);
  Vec res(p);
  const Vec bv = b.to_vector();
  for (int64_t i = 0; i < p; ++i) res[i] = bv[i] - ax[i];
  CHECK(norm2(res) / norm2(bv) <= 1e-11);
  // Equals the Cholesky solve: forward error <= cond * relative residual = 100 * 1e-11.
  const Tensor xc = attr::damped_solve(at, 0.0, b);
  CHECK(rel_diff(x.to_vector(), xc.to_vector()) <= 1e-9);

  // As the solver of a damped operator, (A + lambda I) x = b, it matches damped_solve.
  const double lambda = 0.3;
  auto damped = [&](const Tensor& v) {
    Tensor out = apply(v);
    ops::axpby(lambda, v, 1.0, out);
    return out;
  };
  const Tensor xd = attr::conjugate_gradient(damped, b, 200, 1e-12);
  CHECK(rel_diff(xd.to_vector(), attr::damped_solve(at, lambda, b).to_vector()) <= 1e-9);
}

TEST_CASE("conjugate gradient reports non-convergence and rejects an indefinite operator") {
  const int64_t p = 12;
  const Tensor at = Tensor::from_vector(gram_plus(p, 12, 0.01, 40), {p, p}, DType::f64);
  const Tensor b = Tensor::from_vector(uniform(p, 41), {p}, DType::f64);
  auto apply = [&](const Tensor& v) { return ops::matmul(at, v.reshape({p, 1})).reshape({p}); };
  int iters = -1;
  double rel = -1;
  const Tensor x = attr::conjugate_gradient(apply, b, 2, 1e-12, &iters, &rel);
  CHECK(iters == 2);
  CHECK(rel > 1e-12);  // stopped, not converged, and the caller can see it
  CHECK(rel < 1.0);    // but it made progress
  // b = 0: x = 0 after no products.
  attr::conjugate_gradient(apply, Tensor::zeros({p}, DType::f64), 10, 1e-12, &iters, &rel);
  CHECK(iters == 0);
  CHECK(rel == 0.0);
  // -A is negative definite: the first p^T A p is negative.
  auto neg = [&](const Tensor& v) { return ops::scale(apply(v), -1.0); };
  const std::string msg = what_of([&] { attr::conjugate_gradient(neg, b, 10, 1e-12); });
  CHECK(msg.find("not positive definite") != std::string::npos);
  // An operator that changes the shape is a usage error.
  auto bad = [&](const Tensor& v) { return v.reshape({p, 1}).clone(); };
  CHECK_THROWS_AS(attr::conjugate_gradient(bad, b, 10, 1e-12), std::invalid_argument);
}

TEST_CASE("conjugate gradient from a warm start: the start's product counts, the solution is the same") {
  const int64_t p = 16;
  const Tensor at = Tensor::from_vector(gram_plus(p, 20, 0.1, 50), {p, p}, DType::f64);
  const Tensor b = Tensor::from_vector(uniform(p, 51), {p}, DType::f64);
  auto apply = [&](const Tensor& v) { return ops::matmul(at, v.reshape({p, 1})).reshape({p}); };
  const Tensor exact = attr::damped_solve(at, 0.0, b);
  int iters = -1;
  double rel = -1;
  // Started at the solution: one product (A x0) finds the residual already below tolerance.
  attr::conjugate_gradient(apply, b, 50, 1e-9, &iters, &rel, exact);
  CHECK(iters == 1);
  CHECK(rel <= 1e-9);
  // Started elsewhere: converges to the same solution, and a start near it needs fewer products
  // than a start at zero.
  const Tensor x1 = attr::conjugate_gradient(apply, b, 200, 1e-12, &iters, &rel, Tensor::from_vector(uniform(p, 52), {p}, DType::f64));
  CHECK(rel <= 1e-12);
  CHECK(rel_diff(x1.to_vector(), exact.to_vector()) <= 1e-9);
  Vec near = exact.to_vector();
  for (int64_t i = 0; i < p; ++i) near[i] *= 1.0 + 1e-4 * (i % 3 - 1.0);
  int from_zero = 0, from_near = 0;
  attr::conjugate_gradient(apply, b, 200, 1e-8, &from_zero, &rel);
  attr::conjugate_gradient(apply, b, 200, 1e-8, &from_near, &rel, Tensor::from_vector(near, {p}, DType::f64));
  CHECK(from_near < from_zero);
  // A start of another shape is a usage error.
  CHECK_THROWS_AS(attr::conjugate_gradient(apply, b, 10, 1e-9, nullptr, nullptr, Tensor::zeros({p, 1}, DType::f64)),
                  std::invalid_argument);
}

// ---- LiSSA ----------------------------------------------------------------------------------

TEST_CASE("LiSSA converges to (H + damping * scale * I)^{-1} b") {
  const int64_t p = 8;
  Vec lam(static_cast<std::size_t>(p));
  for (int64_t i = 0; i < p; ++i) lam[i] = 0.5 + 0.5 * static_cast<double>(i);  // 0.5 .. 4
  const Tensor h = Tensor::from_vector(spd_with_eigenvalues(lam, 50), {p, p}, DType::f64);
  const Tensor b = Tensor::from_vector(uniform(p, 51), {p}, DType::f64);
  auto hvp = [&](const Tensor& v) { return ops::matmul(h, v.reshape({p, 1})).reshape({p}); };
  const double damping = 0.01, scale = 5.0;
  // rho = max |1 - damping - lambda/scale| = 1 - 0.01 - 0.5/5 = 0.89; 0.89^400 < 1e-20, so the
  // truncation is negligible and the error is rounding: each step adds ~ eps (||b|| + ||h||
  // (1 + ||H||/scale)) and the contraction damps old errors by rho, so the accumulated relative
  // error is ~ 4 eps / (1 - rho) ~ 1e-14. Tolerance 1e-11.
  double change = -1;
  const Tensor x = attr::lissa(hvp, b, damping, scale, 400, 1, &change);
  const Tensor ref = attr::damped_solve(h, damping * scale, b);
  CHECK(rel_diff(x.to_vector(), ref.to_vector()) <= 1e-11);
  CHECK(change <= 1e-12);
  // The effective damping really is damping * scale, not damping.
  CHECK(rel_diff(x.to_vector(), attr::damped_solve(h, damping, b).to_vector()) > 1e-3);
  // Repeats of a deterministic HVP average identical runs.
  CHECK(rel_diff(attr::lissa(hvp, b, damping, scale, 400, 3).to_vector(), x.to_vector()) <= 1e-14);
  // Truncated early, the report shows it has not converged.
  attr::lissa(hvp, b, damping, scale, 20, 1, &change);
  CHECK(change > 1e-3);
  // depth 0 returns b / scale.
  CHECK(rel_diff(attr::lissa(hvp, b, damping, scale, 0).to_vector(), ops::scale(b, 1.0 / scale).to_vector()) == 0.0);
  // scale below lambda_max / 2: |1 - 0.01 - 4/1.5| > 1, the recursion diverges and says so.
  const std::string msg = what_of([&] { attr::lissa(hvp, b, damping, 1.5, 400); });
  CHECK(msg.find("diverged") != std::string::npos);
  CHECK(msg.find("larger scale") != std::string::npos);
}

TEST_CASE("stochastic LiSSA with mini-batch Hessians is unbiased and reproducible") {
  // H = (1/4) sum_i H_i, each H_i SPD with eigenvalues in [0.5, 4] and its own eigenvectors.
  // Step t of repeat r uses H_i with i drawn from (r, t): independent of h_{t-1}, so E[h_t]
  // follows the deterministic recursion with H, and the mean over repeats estimates
  // (H + damping * scale I)^{-1} b.
  const int64_t p = 6, parts = 4;
  std::vector<Tensor> hs;
  Vec hsum(static_cast<std::size_t>(p * p), 0.0);
  for (int64_t i = 0; i < parts; ++i) {
    Vec lam(static_cast<std::size_t>(p));
    const Vec u = uniform(p, 60 + i, 0.5, 4.0);
    for (int64_t j = 0; j < p; ++j) lam[j] = u[j];
    const Vec hi = spd_with_eigenvalues(lam, 70 + i);
    for (std::size_t j = 0; j < hsum.size(); ++j) hsum[j] += hi[j] / parts;
    hs.push_back(Tensor::from_vector(hi, {p, p}, DType::f64));
  }
  const Tensor h = Tensor::from_vector(hsum, {p, p}, DType::f64);
  const Tensor b = Tensor::from_vector(uniform(p, 80), {p}, DType::f64);
  auto pick = [&](int repeat, int step) {
    return static_cast<int64_t>(iif::philox::uniform(kSeed, 90 + static_cast<uint64_t>(repeat),
                                                     static_cast<uint64_t>(step)) * parts) % parts;
  };
  auto hvp_at = [&](const Tensor& v, int repeat, int step) {
    return ops::matmul(hs[pick(repeat, step)], v.reshape({p, 1})).reshape({p});
  };
  const double damping = 0.02, scale = 5.0;
  const int depth = 300, repeats = 400;
  const Tensor mean = attr::lissa(attr::IndexedHvp(hvp_at), b, damping, scale, depth, repeats);
  // Same callback, same result: sampling keyed by (repeat, step) is reproducible.
  CHECK(attr::lissa(attr::IndexedHvp(hvp_at), b, damping, scale, depth, repeats).to_vector() == mean.to_vector());
  // Per-repeat estimates, one run each (repeat index r mapped through the callback).
  std::vector<Vec> runs;
  for (int r = 0; r < repeats; ++r) {
    auto one = [&, r](const Tensor& v, int, int step) { return hvp_at(v, r, step); };
    runs.push_back(attr::lissa(attr::IndexedHvp(one), b, damping, scale, depth, 1).to_vector());
  }
  const Vec ref = attr::damped_solve(h, damping * scale, b).to_vector();
  const Vec got = mean.to_vector();
  for (int64_t j = 0; j < p; ++j) {
    double m = 0, s2 = 0;
    for (const Vec& run : runs) m += run[j] / repeats;
    for (const Vec& run : runs) s2 += (run[j] - m) * (run[j] - m) / (repeats - 1);
    CAPTURE(j);
    // repeats=R equals the mean of R single runs (up to the order of the float64 sums).
    CHECK(std::fabs(got[j] - m) <= 1e-12 * (std::fabs(m) + 1.0));
    // Unbiased: within 5 standard errors of the exact value. The truncation bias is below
    // rho^depth ||h|| with rho <= 1 - 0.02 - 0.5/5 = 0.88: 0.88^300 ~ 2e-17, far below that.
    CHECK(std::fabs(m - ref[j]) <= 5.0 * std::sqrt(s2 / repeats));
  }
}
