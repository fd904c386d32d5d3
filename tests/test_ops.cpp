// Tests for every op in engine/ops.h on the CPU backend, each held to a plain-loop float64
// oracle written here (llm.c's "naive reference" habit) on Philox-random inputs, in float64 and
// float32, on odd shapes, sizes 0 and 1, and sizes that take the OpenMP paths (>= 16384).
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/ops.h"
#include "kernels/philox.cuh"

using iif::DType;
using iif::Shape;
using iif::Tensor;
namespace ops = iif::ops;
using Vec = std::vector<double>;

namespace {

constexpr uint64_t kSeed = 0x5EEDULL;
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

template <class T>
constexpr DType dtype_of = std::is_same<T, float>::value ? DType::f32 : DType::f64;

// Shapes that divide nothing, sizes 1 and 0, and one past the OpenMP threshold (129*131 = 16899).
const std::vector<Shape> kShapes = {{7, 13}, {1, 1}, {0, 5}, {129, 131}};

// Uniform values in [lo, hi) from Philox stream `stream`, stored in dtype dt.
Tensor rnd(const Shape& s, DType dt, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  Vec v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = lo + (hi - lo) * iif::philox::uniform(kSeed, stream, i);
  return Tensor::from_vector(v, s, dt);
}

// ---- tolerances ---------------------------------------------------------------------------
// Higham (Accuracy and Stability of Numerical Algorithms, eq. 3.5): a result formed by `depth`
// rounded operations on terms whose magnitudes sum to `mass` is within depth*u*mass of the exact
// value, u = eps/2. We allow depth*eps*mass (twice that: the oracle's own float64 rounding, and
// the (1 - depth*u)^-1 factor) as atol, and depth*eps as rtol. For float32 eps = 1.19e-7, for
// float64 eps = 2.2e-16; inputs are in [-1, 1], so `mass` is usually the reduction length.
struct Tol {
  double atol, rtol;
};
template <class T>
Tol tol(double depth, double mass = 1.0) {
  const double eps = std::numeric_limits<T>::epsilon();
  return {depth * eps * mass, depth * eps};
}

// |got - ref| <= atol + |ref| * rtol everywhere, NaN where the oracle has NaN, equal infinities.
// On failure prints the first few mismatches and the largest error.
void expect_close(const Vec& got, const Vec& ref, Tol t, const std::string& what) {
  REQUIRE(got.size() == ref.size());
  std::size_t bad = 0;
  double max_err = 0.0;
  std::ostringstream first;
  first.precision(17);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    bool ok;
    if (std::isnan(ref[i]) || std::isnan(got[i])) {
      ok = std::isnan(ref[i]) && std::isnan(got[i]);
    } else if (std::isinf(ref[i]) || std::isinf(got[i])) {
      ok = got[i] == ref[i];
    } else {
      const double err = std::fabs(got[i] - ref[i]);
      max_err = std::max(max_err, err);
      ok = err <= t.atol + std::fabs(ref[i]) * t.rtol;
    }
    if (!ok && bad++ < 5) first << "\n  [" << i << "] got " << got[i] << ", expected " << ref[i];
  }
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << ref.size() << " values outside atol "
                               << t.atol << " + rtol " << t.rtol << "; max error " << max_err
                               << first.str());
}

// f() must throw std::invalid_argument whose message contains every string in `parts`.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  std::string msg;
  try {
    f();
  } catch (const std::invalid_argument& e) {
    msg = e.what();
  }
  REQUIRE_MESSAGE(!msg.empty(), "expected std::invalid_argument mentioning " << parts[0]);
  for (const auto& p : parts) CHECK_MESSAGE(msg.find(p) != std::string::npos, "'" << p << "' not in: " << msg);
}

}  // namespace

// ---- elementwise ----------------------------------------------------------------------------

TEST_CASE_TEMPLATE("elementwise ops match the oracle", T, float, double) {
  const DType dt = dtype_of<T>;
  for (const Shape& s : kShapes) {
    CAPTURE(s.str());
    const Tensor x = rnd(s, dt, 1), y0 = rnd(s, dt, 2);
    const Vec xv = x.to_vector(), yv = y0.to_vector();
    const std::size_t n = xv.size();
    Vec r(n);
    const double a = 1.5, b = -0.75;

    // The result of one operation is correctly rounded: depth 1. axpby rounds a and b to T,
    // multiplies twice and adds: depth 3 on mass |a| + |b|.
    for (std::size_t i = 0; i < n; ++i) r[i] = xv[i] + yv[i];
    expect_close(ops::add(x, y0).to_vector(), r, tol<T>(1, 2), "add");
    for (std::size_t i = 0; i < n; ++i) r[i] = xv[i] - yv[i];
    expect_close(ops::sub(x, y0).to_vector(), r, tol<T>(1, 2), "sub");
    for (std::size_t i = 0; i < n; ++i) r[i] = xv[i] * yv[i];
    expect_close(ops::mul(x, y0).to_vector(), r, tol<T>(1), "mul");
    for (std::size_t i = 0; i < n; ++i) r[i] = a * xv[i];
    expect_close(ops::scale(x, a).to_vector(), r, tol<T>(2, a), "scale");
    for (std::size_t i = 0; i < n; ++i) r[i] = a * xv[i] + b * yv[i];
    Tensor y = y0.clone();
    ops::axpby(a, x, b, y);
    expect_close(y.to_vector(), r, tol<T>(3, a - b), "axpby");
    for (std::size_t i = 0; i < n; ++i) r[i] = xv[i] > 0 ? xv[i] : 0.0;
    CHECK(ops::relu(x).to_vector() == r);  // exact: relu only selects

    // relu_backward: dx = dy * (x > 0) + beta * dx, overwrite and accumulate.
    const Tensor dy = rnd(s, dt, 3);
    const Vec gv = dy.to_vector();
    for (double beta : {0.0, 0.5}) {
      Tensor dx = y0.clone();
      ops::relu_backward(x, dy, beta, dx);
      for (std::size_t i = 0; i < n; ++i) r[i] = (xv[i] > 0 ? gv[i] : 0.0) + beta * yv[i];
      expect_close(dx.to_vector(), r, tol<T>(2, 2), beta == 0 ? "relu_backward" : "relu_backward beta");
    }

    Tensor f = x.clone();
    ops::fill(f, 0.1);
    CHECK(f.to_vector() == Vec(n, static_cast<double>(static_cast<T>(0.1))));
  }
}

TEST_CASE("elementwise: mul may alias, axpby with b = 0 overwrites, relu at 0, NaN and Inf") {
  Tensor a = Tensor::from_vector({1, -2, 3}, {3}, DType::f64);
  iif::cpu_backend().mul(a, a, a);  // the backend documents out aliasing an input as legal
  CHECK(a.to_vector() == Vec{1, 4, 9});
  // b == 0 means "overwrite": y is not read, so NaN or garbage in y does not leak through.
  // ops::scale relies on this (its output starts uninitialised).
  Tensor y = Tensor::full({3}, kNaN, DType::f64);
  ops::axpby(2.0, a, 0.0, y);
  CHECK(y.to_vector() == Vec{2, 8, 18});

  // ReLU of NaN is NaN (the CPU reference propagates it, like torch.relu, so a diverged layer is
  // visible downstream instead of silently becoming 0). relu_backward follows its formula
  // dy * (x > 0): no gradient flows through a NaN input.
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor x = Tensor::from_vector({kNaN, kInf, -kInf, 0.0, -0.0, -1.0, 2.0}, {7}, dt);
    const Vec r = ops::relu(x).to_vector();
    CHECK(std::isnan(r[0]));
    CHECK(Vec(r.begin() + 1, r.end()) == Vec{kInf, 0, 0, 0, 0, 2});
    Tensor dx = Tensor::full({7}, kNaN, dt);  // beta = 0 overwrites: the old dx is not read
    ops::relu_backward(x, Tensor::full({7}, 3.0, dt), 0.0, dx);
    CHECK(dx.to_vector() == Vec{0, 3, 0, 0, 0, 0, 3});  // the kink x = 0 gets no gradient
  }
}

TEST_CASE("elementwise: shape, dtype and device errors name both sides") {
  const Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({4, 3});
  expect_error([&] { ops::add(a, b); }, {"add", "(3, 4)", "(4, 3)"});
  expect_error([&] { ops::sub(a, b); }, {"sub", "(3, 4)", "(4, 3)"});
  expect_error([&] { ops::mul(a, b); }, {"mul", "(3, 4)", "(4, 3)"});
  Tensor y = b.clone();
  expect_error([&] { ops::axpby(1, a, 1, y); }, {"axpby", "(3, 4)", "(4, 3)"});
  expect_error([&] { ops::relu_backward(a, a, 0, y); }, {"relu_backward", "(3, 4)", "(4, 3)"});
  expect_error([&] { ops::add(a, Tensor::zeros({3, 4}, DType::f64)); }, {"float32", "float64"});
  expect_error([&] { ops::relu(Tensor()); }, {"undefined"});
}

// ---- dropout ------------------------------------------------------------------------------

TEST_CASE_TEMPLATE("dropout_mask: the keyed Bernoulli mask of the header", T, float, double) {
  const DType dt = dtype_of<T>;
  const Shape s{129, 131};
  const int64_t n = s.numel();
  const double p = 0.3;
  const Tensor m = ops::dropout_mask(s, dt, iif::Device::cpu(), p, 7, 11);
  const Vec mv = m.to_vector();
  const double keep = static_cast<double>(static_cast<T>(1.0 / (1.0 - p)));
  int64_t kept = 0, formula_mismatch = 0;
  for (int64_t i = 0; i < n; ++i) {
    kept += mv[i] != 0.0;
    const bool k = iif::philox::uniform(7, 11, static_cast<uint64_t>(i)) >= p;
    formula_mismatch += mv[i] != (k ? keep : 0.0);  // kept values are exactly 1/(1-p) in T
  }
  CHECK(formula_mismatch == 0);
  // kept ~ Binomial(n, 1-p): mean n(1-p), sd sqrt(n p (1-p)) ~ 60; six sd fail with prob 2e-9.
  const double mean = n * (1 - p), sd = std::sqrt(n * p * (1 - p));
  CHECK(std::fabs(kept - mean) <= 6 * sd);

  // Deterministic per (seed, stream); different streams and seeds give different masks.
  CHECK(ops::dropout_mask(s, dt, iif::Device::cpu(), p, 7, 11).to_vector() == mv);
  for (auto [seed, stream] : {std::pair<uint64_t, uint64_t>{7, 12}, {8, 11}}) {
    const Vec other = ops::dropout_mask(s, dt, iif::Device::cpu(), p, seed, stream).to_vector();
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += other[i] != mv[i];
    // Independent masks differ at a fraction 2p(1-p) = 0.42 of positions.
    CHECK(differ > n / 4);
  }
  CHECK(ops::dropout_mask(s, dt, iif::Device::cpu(), 0.0, 7, 11).to_vector() == Vec(n, 1.0));
  CHECK(ops::dropout_mask({0, 3}, dt, iif::Device::cpu(), p, 7, 11).numel() == 0);
  for (double bad : {-0.1, 1.0, 1.5, kNaN})
    CHECK_THROWS_AS(ops::dropout_mask(s, dt, iif::Device::cpu(), bad, 7, 11), std::invalid_argument);
}

// ---- gemm -----------------------------------------------------------------------------------

TEST_CASE_TEMPLATE("gemm: every transpose combination, alpha and beta, odd shapes", T, float, double) {
  const DType dt = dtype_of<T>;
  struct Mkn { int64_t m, k, n; };
  // 129x131 outputs exceed one OpenBLAS block; k = 0 must still scale C by beta.
  for (Mkn d : {Mkn{7, 13, 5}, Mkn{1, 1, 1}, Mkn{129, 67, 131}, Mkn{0, 5, 3}, Mkn{4, 0, 3}, Mkn{3, 5, 0}}) {
    for (int trans = 0; trans < 4; ++trans) {
      const bool ta = trans & 1, tb = trans & 2;
      CAPTURE(d.m); CAPTURE(d.k); CAPTURE(d.n); CAPTURE(ta); CAPTURE(tb);
      // A is stored (k, m) when transposed, B (n, k).
      const Tensor a = rnd(ta ? Shape{d.k, d.m} : Shape{d.m, d.k}, dt, 20);
      const Tensor b = rnd(tb ? Shape{d.n, d.k} : Shape{d.k, d.n}, dt, 21);
      const Tensor c0 = rnd({d.m, d.n}, dt, 22);
      const Vec av = a.to_vector(), bv = b.to_vector(), cv = c0.to_vector();
      auto A = [&](int64_t i, int64_t p) { return ta ? av[p * d.m + i] : av[i * d.k + p]; };
      auto B = [&](int64_t p, int64_t j) { return tb ? bv[j * d.k + p] : bv[p * d.n + j]; };
      for (auto [alpha, beta] : {std::pair<double, double>{1.0, 0.0}, {-0.5, 1.0}, {1.5, -0.5}}) {
        Vec ref(cv.size());
        for (int64_t i = 0; i < d.m; ++i)
          for (int64_t j = 0; j < d.n; ++j) {
            double s = 0.0;
            for (int64_t p = 0; p < d.k; ++p) s += A(i, p) * B(p, j);
            ref[i * d.n + j] = alpha * s + beta * cv[i * d.n + j];
          }
        Tensor c = c0.clone();
        ops::gemm(ta, tb, alpha, a, b, beta, c);
        // A length-k dot product, then the alpha and beta terms: depth k + 2 on terms of total
        // magnitude at most |alpha| k + |beta|.
        expect_close(c.to_vector(), ref, tol<T>(d.k + 2, std::fabs(alpha) * d.k + std::fabs(beta)),
                     "gemm alpha " + std::to_string(alpha) + " beta " + std::to_string(beta));
        if (alpha == 1.0 && beta == 0.0)
          expect_close(ops::matmul(a, b, ta, tb).to_vector(), ref, tol<T>(d.k + 2, d.k), "matmul");
      }
    }
  }
}

TEST_CASE_TEMPLATE("gemm: NaN propagates to the rows it touches; beta = 0 ignores C", T, float, double) {
  const DType dt = dtype_of<T>;
  for (bool ta : {false, true}) {
    Tensor a = rnd(ta ? Shape{6, 4} : Shape{4, 6}, dt, 30);  // op(A) is (4, 6)
    a.data<T>()[ta ? 2 * 4 + 1 : 1 * 6 + 2] = static_cast<T>(kNaN);  // op(A)(1, 2)
    const Tensor b = rnd({6, 5}, dt, 31);
    // C starts as NaN: with beta = 0 it is overwritten, never read (BLAS semantics).
    Tensor c = Tensor::full({4, 5}, kNaN, dt);
    ops::gemm(ta, false, 1.0, a, b, 0.0, c);
    const Vec cv = c.to_vector();
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 5; ++j) CHECK_MESSAGE(std::isnan(cv[i * 5 + j]) == (i == 1), i << "," << j);
  }
  // The k = 0 path must not read C when beta = 0 either.
  Tensor c = Tensor::full({2, 3}, kNaN, dt);
  ops::gemm(false, false, 1.0, Tensor::zeros({2, 0}, dt), Tensor::zeros({0, 3}, dt), 0.0, c);
  CHECK(c.to_vector() == Vec(6, 0.0));
  CHECK(ops::matmul(Tensor::zeros({2, 0}, dt), Tensor::zeros({0, 3}, dt)).to_vector() == Vec(6, 0.0));
}

TEST_CASE("gemm: shape errors mention both shapes") {
  const Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({5, 2});
  Tensor c = Tensor::zeros({3, 2});
  expect_error([&] { ops::gemm(false, false, 1, a, b, 0, c); }, {"gemm", "(3, 4)", "(5, 2)", "(3, 2)"});
  expect_error([&] { ops::gemm(true, false, 1, a, b, 0, c); }, {"(4, 3)", "(5, 2)"});
  expect_error([&] { ops::matmul(a, Tensor::zeros({3, 4})); }, {"(3, 4)", "(3, 4)"});
  expect_error([&] { ops::matmul(a, Tensor::zeros({4})); }, {"2-D", "(4,)"});
  expect_error([&] { ops::gemm(false, false, 1, a, Tensor::zeros({4, 2}, DType::f64), 0, c); },
               {"float32", "float64"});
}

// ---- row broadcasts and reductions ----------------------------------------------------------

TEST_CASE_TEMPLATE("add_row_vector and sum_rows match the oracle", T, float, double) {
  const DType dt = dtype_of<T>;
  for (const Shape& s : kShapes) {
    CAPTURE(s.str());
    const int64_t rows = s[0], cols = s[1];
    const Tensor x = rnd(s, dt, 40), v = rnd({cols}, dt, 41);
    const Vec xv = x.to_vector(), vv = v.to_vector();
    Vec ref(xv.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) ref[r * cols + c] = xv[r * cols + c] + vv[c];
    Tensor y = x.clone();
    ops::add_row_vector(v, y);
    expect_close(y.to_vector(), ref, tol<T>(1, 2), "add_row_vector");

    for (double beta : {0.0, 0.5}) {
      Vec sref(static_cast<std::size_t>(cols));
      for (int64_t c = 0; c < cols; ++c) {
        double acc = 0.0;
        for (int64_t r = 0; r < rows; ++r) acc += xv[r * cols + c];
        sref[c] = acc + beta * vv[c];
      }
      Tensor out = v.clone();
      ops::sum_rows(x, beta, out);
      // A column sum of `rows` terms, then beta: depth rows + 2, mass rows + |beta|.
      expect_close(out.to_vector(), sref, tol<T>(rows + 2, rows + beta), "sum_rows");
    }
  }
  expect_error([&] { Tensor y = Tensor::zeros({3, 4}, dt); ops::add_row_vector(Tensor::zeros({5}, dt), y); },
               {"(5,)", "(3, 4)"});
  expect_error([&] { Tensor o = Tensor::zeros({3}, dt); ops::sum_rows(Tensor::zeros({3, 4}, dt), 0, o); },
               {"(3,)", "(3, 4)"});
}

TEST_CASE_TEMPLATE("sum and dot across the 4096 chunk boundary", T, float, double) {
  const DType dt = dtype_of<T>;
  for (int64_t n : {0, 1, 4095, 4096, 4097, 3 * 4096 + 1, 100003}) {
    CAPTURE(n);
    const Tensor a = rnd({n}, dt, 50), b = rnd({n}, dt, 51);
    const Vec av = a.to_vector(), bv = b.to_vector();
    double s = 0.0, d = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      s += av[i];
      d += av[i] * bv[i];
    }
    // n terms of magnitude <= 1 each. (The CPU backend accumulates in double, so it is far
    // inside the float32 bound, which is what any backend is allowed.)
    expect_close({ops::sum(a)}, {s}, tol<T>(n + 1, n), "sum");
    expect_close({ops::dot(a, b)}, {d}, tol<T>(n + 1, n), "dot");
    // dot only needs equal sizes: a (n,) with a (1, n) view.
    if (n > 0) CHECK(ops::dot(a, b.reshape({1, n})) == ops::dot(a, b));
  }
  expect_error([&] { ops::dot(Tensor::zeros({3}, dt), Tensor::zeros({4}, dt)); }, {"(3,)", "(4,)"});
  const Tensor nan = Tensor::from_vector({1.0, kNaN, 2.0}, {3}, dt);
  CHECK(std::isnan(ops::sum(nan)));
  CHECK(std::isnan(ops::dot(nan, nan)));
}

TEST_CASE_TEMPLATE("sum and dot are bitwise equal for 1 and 2 OpenMP threads", T, float, double) {
  const DType dt = dtype_of<T>;
  // Values with full mantissas ((hi - lo) = 2000/3 is inexact), so that float64 addition rounds
  // and a thread-count-dependent order would show in the last bits. (Float32 values summed in
  // double are often exact, so the float case only catches float-accumulating reductions.)
  const Tensor a = rnd({100003}, dt, 60, -1e3 / 3, 1e3 / 3), b = rnd({100003}, dt, 61);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double s1 = ops::sum(a), d1 = ops::dot(a, b);
  omp_set_num_threads(2);
  const double s2 = ops::sum(a), d2 = ops::dot(a, b);
  omp_set_num_threads(saved);
  CHECK(std::memcmp(&s1, &s2, sizeof s1) == 0);
  CHECK(std::memcmp(&d1, &d2, sizeof d1) == 0);
}

TEST_CASE_TEMPLATE("argmax_rows: oracle, first index on ties", T, float, double) {
  const DType dt = dtype_of<T>;
  for (const Shape& s : kShapes) {
    const Tensor x = rnd(s, dt, 70);
    const Vec xv = x.to_vector();
    std::vector<int64_t> ref(static_cast<std::size_t>(s[0]));
    for (int64_t r = 0; r < s[0]; ++r)
      for (int64_t c = 1; c < s[1]; ++c)
        if (xv[r * s[1] + c] > xv[r * s[1] + ref[r]]) ref[r] = c;
    CHECK(ops::argmax_rows(x) == ref);
  }
  const Tensor ties = Tensor::from_vector({1, 3, 3, 0, /**/ 2, 2, 2, 2, /**/ -1, -5, -1, -1}, {3, 4}, dt);
  CHECK(ops::argmax_rows(ties) == std::vector<int64_t>{1, 0, 0});
  expect_error([&] { ops::argmax_rows(Tensor::zeros({3, 0}, dt)); }, {"(3, 0)"});
  expect_error([&] { ops::argmax_rows(Tensor::zeros({3}, dt)); }, {"(3,)"});
}

// ---- losses -------------------------------------------------------------------------------

TEST_CASE_TEMPLATE("softmax_xent with soft targets, and softmax", T, float, double) {
  const DType dt = dtype_of<T>;
  for (const Shape& s : kShapes) {
    for (double zscale : {3.0, 1e3}) {  // 1e3: exp would overflow without the max shift
      CAPTURE(s.str()); CAPTURE(zscale);
      const int64_t rows = s[0], cols = s[1];
      const Tensor z = rnd(s, dt, 80, -zscale, zscale);
      // Arbitrary non-negative targets in [0, 2): rows sum to ~cols, far above 1. Row 0 is all
      // zeros, row 1 (if any) one-hot, row 2 (if any) a probability vector.
      Vec tv = rnd(s, dt, 81, 0.0, 2.0).to_vector();
      for (int64_t c = 0; c < cols && rows > 0; ++c) tv[c] = 0.0;
      for (int64_t c = 0; c < cols && rows > 1; ++c) tv[cols + c] = c == cols / 2 ? 1.0 : 0.0;
      for (int64_t c = 0; c < cols && rows > 2; ++c) tv[2 * cols + c] = 1.0 / cols;
      const Tensor t = Tensor::from_vector(tv, s, dt);
      tv = t.to_vector();  // the values as stored (1/cols rounds in float32)
      const Vec zv = z.to_vector();

      // The oracle, from the header: p = softmax(z), loss = -sum_c T log p_c, dZ = (sum T) p - T.
      Vec lref(static_cast<std::size_t>(rows)), gref(zv.size()), pref(zv.size());
      double lmass = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        const double* zr = &zv[r * cols];
        double zmax = -kInf, se = 0.0, tsum = 0.0, l = 0.0, mass = 0.0;
        for (int64_t c = 0; c < cols; ++c) zmax = std::max(zmax, zr[c]);
        for (int64_t c = 0; c < cols; ++c) se += std::exp(zr[c] - zmax);
        const double lse = zmax + std::log(se);
        for (int64_t c = 0; c < cols; ++c) {
          const double tc = tv[r * cols + c];
          tsum += tc;
          l -= tc * (zr[c] - lse);
          mass += tc * (std::fabs(zr[c]) + std::fabs(lse));
          pref[r * cols + c] = std::exp(zr[c] - lse);
        }
        lref[r] = l;
        lmass = std::max(lmass, mass);
        for (int64_t c = 0; c < cols; ++c) gref[r * cols + c] = tsum * pref[r * cols + c] - tv[r * cols + c];
      }
      Tensor loss = Tensor::empty({rows}, dt), dz = Tensor::full(s, kNaN, dt);
      ops::softmax_xent(z, t, loss, &dz);
      const Vec lv = loss.to_vector(), gv = dz.to_vector(), pv = ops::softmax(z).to_vector();
      // lse = max + log(sum of cols exps): depth cols + 4, and z - lse loses eps (|z| + |lse|)
      // <= eps * 2 zscale absolutely, which exp turns into a relative error of p. So p is within
      // (cols + 4) eps (1 + 2 zscale) of the oracle, relatively (and absolutely, p <= 1).
      // dZ = (sum T) p - T scales that by sum T < 2 cols. The loss is a cols-term sum of
      // T (z - lse): depth 2 cols + 4 on mass sum_c T (|z| + |lse|).
      const double pmass = 1.0 + 2.0 * zscale;
      expect_close(pv, pref, tol<T>(cols + 4, pmass), "softmax");
      expect_close(lv, lref, tol<T>(2 * cols + 4, lmass), "softmax_xent loss");
      expect_close(gv, gref, tol<T>(cols + 4, 2.0 * cols * pmass), "softmax_xent dlogits");
      for (int64_t r = 0; r < rows; ++r) {  // rows of p sum to 1
        double rs = 0.0;
        for (int64_t c = 0; c < cols; ++c) rs += pv[r * cols + c];
        CHECK(std::fabs(rs - 1.0) <= tol<T>(2 * cols + 4, pmass).atol);
      }
      for (double v : lv) CHECK(std::isfinite(v));
      for (double v : gv) CHECK(std::isfinite(v));
      if (rows > 0) {
        CHECK(lv[0] == 0.0);  // all-zero targets: no loss and no gradient
        for (int64_t c = 0; c < cols; ++c) CHECK(gv[c] == 0.0);
      }
      Tensor loss2 = Tensor::empty({rows}, dt);
      ops::softmax_xent(z, t, loss2, nullptr);  // the gradient is optional
      CHECK(loss2.to_vector() == lv);
    }
  }
}

TEST_CASE("softmax_xent and softmax: errors name both shapes") {
  const Tensor z = Tensor::zeros({2, 3});
  Tensor loss = Tensor::zeros({2}), bad_loss = Tensor::zeros({3}), dz = Tensor::zeros({3, 2});
  expect_error([&] { ops::softmax_xent(z, Tensor::zeros({2, 4}), loss, nullptr); }, {"(2, 3)", "(2, 4)"});
  expect_error([&] { ops::softmax_xent(z, z, bad_loss, nullptr); }, {"(3,)", "(2, 3)"});
  expect_error([&] { ops::softmax_xent(z, z, loss, &dz); }, {"(2, 3)", "(3, 2)"});
  expect_error([&] { ops::softmax(Tensor::zeros({6})); }, {"2-D", "(6,)"});
}

TEST_CASE_TEMPLATE("mse: loss and gradient", T, float, double) {
  const DType dt = dtype_of<T>;
  for (const Shape& s : kShapes) {
    CAPTURE(s.str());
    const Tensor p = rnd(s, dt, 90), t = rnd(s, dt, 91);
    const Vec pv = p.to_vector(), tv = t.to_vector();
    const int64_t rows = s[0], cols = s[1];
    Vec lref(static_cast<std::size_t>(rows), 0.0), gref(pv.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double d = pv[r * cols + c] - tv[r * cols + c];
        lref[r] += d * d;
        gref[r * cols + c] = 2 * d;
      }
    Tensor loss = Tensor::empty({rows}, dt), dp = Tensor::empty(s, dt);
    ops::mse(p, t, loss, &dp);
    // cols squared differences, each <= 4, summed: depth cols + 2, mass 4 cols.
    expect_close(loss.to_vector(), lref, tol<T>(cols + 2, 4.0 * cols), "mse loss");
    expect_close(dp.to_vector(), gref, tol<T>(2, 4), "mse dpred");
    ops::mse(p, t, loss, nullptr);
    expect_close(loss.to_vector(), lref, tol<T>(cols + 2, 4.0 * cols), "mse loss, no gradient");
  }
  Tensor loss = Tensor::zeros({2}, dt);
  expect_error([&] { ops::mse(Tensor::zeros({2, 3}, dt), Tensor::zeros({3, 2}, dt), loss, nullptr); },
               {"(2, 3)", "(3, 2)"});
}

// ---- data movement ------------------------------------------------------------------------

TEST_CASE_TEMPLATE("gather_rows on 4-D tensors", T, float, double) {
  const DType dt = dtype_of<T>;
  // (5, 2, 3, 4) is small; (300, 2, 3, 4) rows of 24 values, 400 picks: the OpenMP path.
  for (int64_t n0 : {5, 300}) {
    const Shape s{n0, 2, 3, 4};
    const Tensor src = rnd(s, dt, 100);
    const Vec sv = src.to_vector();
    std::vector<int64_t> idx = {4, 0, 4, 2};  // repeats are fine
    if (n0 == 300)
      for (int i = 0; i < 396; ++i) idx.push_back((i * 37) % n0);
    const Tensor g = ops::gather_rows(src, idx);
    CHECK(g.shape() == Shape{static_cast<int64_t>(idx.size()), 2, 3, 4});
    Vec ref;
    for (int64_t i : idx) ref.insert(ref.end(), sv.begin() + i * 24, sv.begin() + (i + 1) * 24);
    CHECK(g.to_vector() == ref);  // a copy: exact
  }
  const Tensor src = rnd({5, 2, 3, 4}, dt, 100);
  CHECK(ops::gather_rows(src, {}).shape() == Shape{0, 2, 3, 4});
  CHECK(ops::gather_rows(Tensor::zeros({5, 0}, dt), {1, 3}).shape() == Shape{2, 0});
  expect_error([&] { ops::gather_rows(src, {1, 5}); }, {"index 5", "(5, 2, 3, 4)"});
  expect_error([&] { ops::gather_rows(src, {-1}); }, {"index -1"});
}

TEST_CASE("one_hot: values and errors") {
  const Tensor h = ops::one_hot({2, 0, 2}, 3, DType::f64, iif::Device::cpu());
  CHECK(h.shape() == Shape{3, 3});
  CHECK(h.to_vector() == Vec{0, 0, 1, 1, 0, 0, 0, 0, 1});
  CHECK(ops::one_hot({1}, 2, DType::f32, iif::Device::cpu()).dtype() == DType::f32);
  CHECK(ops::one_hot({}, 4, DType::f32, iif::Device::cpu()).shape() == Shape{0, 4});
  expect_error([] { ops::one_hot({0, 3}, 3, DType::f32, iif::Device::cpu()); }, {"label 3", "position 1", "[0, 3)"});
  expect_error([] { ops::one_hot({-1}, 3, DType::f32, iif::Device::cpu()); }, {"label -1"});
  expect_error([] { ops::one_hot({0}, -2, DType::f32, iif::Device::cpu()); }, {"-2"});
}

// ---- optimizers ---------------------------------------------------------------------------
// torch.optim.SGD (per element, step 1 uses buf = g'):
//   g' = g + wd p;  buf = mu buf + (1 - dampening) g';  p -= lr (nesterov ? g' + mu buf : buf)
// torch.optim.Adam (amsgrad off):
//   g' = g + wd p;  m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

TEST_CASE_TEMPLATE("sgd_step: hand-computed steps", T, float, double) {
  const DType dt = dtype_of<T>;
  // One parameter p0 = 1, gradients 0.5, -0.25, 0.5, lr 0.1. Worked by hand:
  struct Case { const char* name; iif::SgdParams h; double p[3]; };
  const Case cases[] = {
      // plain SGD: p = 1 - 0.05 = 0.95, 0.95 + 0.025 = 0.975, 0.975 - 0.05 = 0.925
      {"plain", {0.1, 0.0, 0.0, 0.0, false}, {0.95, 0.975, 0.925}},
      // momentum 0.9, wd 0.01: g'1 = 0.51, buf 0.51, p 0.949; g'2 = -0.25 + 0.00949 = -0.24051,
      // buf = 0.459 - 0.24051 = 0.21849, p 0.927151; g'3 = 0.50927151,
      // buf = 0.196641 + 0.50927151 = 0.70591251, p = 0.856559749
      {"momentum+wd", {0.1, 0.9, 0.01, 0.0, false}, {0.949, 0.927151, 0.856559749}},
      // nesterov 0.9: buf 0.5, step 0.95, p 0.905; buf 0.2, step -0.07, p 0.912;
      // buf 0.68, step 1.112, p 0.8008
      {"nesterov", {0.1, 0.9, 0.0, 0.0, true}, {0.905, 0.912, 0.8008}},
      // dampening 0.5 (ignored on the first step): buf 0.5, p 0.95; buf 0.45 - 0.125 = 0.325,
      // p 0.9175; buf 0.2925 + 0.25 = 0.5425, p 0.86325
      {"dampening", {0.1, 0.9, 0.0, 0.5, false}, {0.95, 0.9175, 0.86325}},
  };
  const double grads[3] = {0.5, -0.25, 0.5};
  for (const Case& c : cases) {
    CAPTURE(c.name);
    Tensor p = Tensor::full({1}, 1.0, dt), v = Tensor::zeros({1}, dt);
    for (int s = 0; s < 3; ++s) {
      ops::sgd_step(p, Tensor::full({1}, grads[s], dt), v, c.h, s == 0);
      // ~6 roundings per step, values of size <= 2.
      expect_close({p.item()}, {c.p[s]}, tol<T>(6 * (s + 1), 2), std::string(c.name) + " step " + std::to_string(s + 1));
    }
  }
  // Without momentum the velocity is never touched and may be undefined.
  Tensor p = Tensor::full({2}, 1.0, dt), undefined;
  CHECK_NOTHROW(ops::sgd_step(p, Tensor::full({2}, 0.5, dt), undefined, {0.1}, true));
  expect_error([&] { Tensor v = Tensor::zeros({3}, dt); ops::sgd_step(p, p, v, {0.1, 0.9}, true); },
               {"(2,)", "(3,)"});
}

TEST_CASE_TEMPLATE("adam_step: hand-computed steps", T, float, double) {
  const DType dt = dtype_of<T>;
  iif::AdamParams h;
  h.lr = 0.1;  // beta1 0.9, beta2 0.999, eps 1e-8
  Tensor p = Tensor::full({1}, 1.0, dt), m = Tensor::zeros({1}, dt), v = Tensor::zeros({1}, dt);
  // t = 1, g = 0.5: m = 0.05, v = 0.00025; m / (1 - 0.9) = 0.5 = g, v / (1 - 0.999) = 0.25 = g^2,
  // so the first step moves by lr * |g| / (|g| + eps), i.e. lr * sign(g) to within eps.
  ops::adam_step(p, Tensor::full({1}, 0.5, dt), m, v, h, 1);
  const double p1 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8);
  expect_close({p.item(), m.item(), v.item()}, {p1, 0.05, 0.00025}, tol<T>(8, 1), "adam t=1");
  // t = 2, g = -0.25: m = 0.045 - 0.025 = 0.02, v = 0.00024975 + 0.0000625 = 0.00031225,
  // 1 - 0.9^2 = 0.19, 1 - 0.999^2 = 0.001999.
  ops::adam_step(p, Tensor::full({1}, -0.25, dt), m, v, h, 2);
  const double p2 = p1 - 0.1 * (0.02 / 0.19) / (std::sqrt(0.00031225 / 0.001999) + 1e-8);
  expect_close({p.item(), m.item(), v.item()}, {p2, 0.02, 0.00031225}, tol<T>(16, 1), "adam t=2");

  // Weight decay is added to the gradient (Adam, not AdamW): with p = 2, wd = 0.5, g = -1 the
  // decayed gradient is 0, so m = v = 0 and p does not move.
  h.weight_decay = 0.5;
  Tensor q = Tensor::full({1}, 2.0, dt), mq = Tensor::zeros({1}, dt), vq = Tensor::zeros({1}, dt);
  ops::adam_step(q, Tensor::full({1}, -1.0, dt), mq, vq, h, 1);
  CHECK(q.item() == 2.0);
  CHECK_THROWS_AS(ops::adam_step(q, q, mq, vq, h, 0), std::invalid_argument);
  expect_error([&] { Tensor bad = Tensor::zeros({2}, dt); ops::adam_step(q, q, bad, vq, h, 1); }, {"(1,)", "(2,)"});
}

TEST_CASE_TEMPLATE("sgd_step and adam_step match the PyTorch formulas on many elements", T, float, double) {
  const DType dt = dtype_of<T>;
  const Shape s{129, 131};  // the OpenMP path
  const std::size_t n = static_cast<std::size_t>(s.numel());
  const int kSteps = 3;
  iif::SgdParams sh{0.05, 0.9, 0.01, 0.1, true};
  iif::AdamParams ah;
  ah.lr = 0.01;
  ah.weight_decay = 0.01;
  Tensor sp = rnd(s, dt, 110), sv = Tensor::zeros(s, dt);
  Tensor ap = sp.clone(), am = Tensor::zeros(s, dt), av = Tensor::zeros(s, dt);
  Vec p_sgd = sp.to_vector(), buf(n), p_adam = p_sgd, m(n, 0.0), v(n, 0.0);
  for (int t = 1; t <= kSteps; ++t) {
    const Tensor g = rnd(s, dt, 110 + t);
    const Vec gv = g.to_vector();
    ops::sgd_step(sp, g, sv, sh, t == 1);
    ops::adam_step(ap, g, am, av, ah, t);
    const double bc1 = 1 - std::pow(ah.beta1, t), bc2 = 1 - std::pow(ah.beta2, t);
    for (std::size_t i = 0; i < n; ++i) {
      double d = gv[i] + sh.weight_decay * p_sgd[i];
      buf[i] = t == 1 ? d : sh.momentum * buf[i] + (1 - sh.dampening) * d;
      p_sgd[i] -= sh.lr * (d + sh.momentum * buf[i]);
      d = gv[i] + ah.weight_decay * p_adam[i];
      m[i] = ah.beta1 * m[i] + (1 - ah.beta1) * d;
      v[i] = ah.beta2 * v[i] + (1 - ah.beta2) * d * d;
      p_adam[i] -= ah.lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + ah.eps);
    }
  }
  // ~8 roundings per step; the hyperparameters themselves round to T. Mass: |p| <= 1 plus the
  // updates, each below lr * (1 + mu + mu^2) * 2 for SGD and a few lr for Adam: < 2 in all.
  expect_close(sp.to_vector(), p_sgd, tol<T>(8 * kSteps, 2), "sgd param");
  expect_close(sv.to_vector(), buf, tol<T>(8 * kSteps, 4), "sgd velocity");
  expect_close(ap.to_vector(), p_adam, tol<T>(8 * kSteps, 2), "adam param");
  expect_close(am.to_vector(), m, tol<T>(8 * kSteps, 2), "adam m");
  expect_close(av.to_vector(), v, tol<T>(8 * kSteps, 4), "adam v");
}
