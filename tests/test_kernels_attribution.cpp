// The attribution kernels of the CUDA backend (kernels/projection.cuh, fisher.cuh, cholesky.cuh)
// run on the SIMT emulator and held to the CPU references: the projector's R bit for bit, the
// per-sample-gradient projection against a long-double oracle and the CPU featurizer, syrk and
// the batched damped Cholesky solve against long-double oracles (an explicit inverse) and the
// CPU backend. Shapes that do not divide the tiles; guard values after every output; every
// kernel with a barrier run in four fiber orders with bitwise-equal outputs.
// CTest label: cuda-emulated (kernels/kernels.cmake: iif_simt_test(test_kernels_attribution)).
//
// Error bounds (u = 2^-24 for float32, 2^-53 for float64; first order, inflated by 1 % for
// the second-order terms). Each output is a sum computed in T, term by term in ascending order:
//  - projections: y = beta y0 + sum_{r < m} g_r R_r, with g_r = d a rounded once (fused), R_r
//    rounded once to T (float(+-1/sqrt(P)) or float(z s)), each product rounded once, m - 1
//    additions into the accumulator, then the scaled old value and one more addition:
//      |y - y_exact| <= (m + 4) u (sum_r |g_r R_r| + |beta y0|).
//    The oracle is long double with R from Projector::entry (float64): its own error is
//    m 2^-64 of the same magnitude, negligible. Against the CPU code (OpenBLAS GEMMs in T, or
//    the featurizer's factored kernel, each within the same kind of bound) the bound doubles.
//    These worst-case bounds are loose (a dropped row can hide under them when m is large), so
//    the index mapping is checked exactly: unit vectors and one-hot (a, d) give outputs that
//    involve no rounding at all and must equal R's rows bit for bit.
//  - syrk: C = alpha sum_n u_ni u_nj + beta c: N products, N - 1 additions, alpha, beta, one
//    addition: |C - C_exact| <= (N + 3) u (|alpha| sum_n |u_ni u_nj| + |beta c|).
//  - Cholesky: backward stable in float64 (Higham, Thm 10.3/10.4): the computed x solves
//    (A + dA) x = b with |dA| <= gamma_{3P+1} |L| |L^T|, so
//      ||x - x_exact||_inf <= 8 P kappa_inf(A + damping I) 2^-53 ||x_exact||_inf
//    (gamma_{3P+1} ~ 3P u, and || |L| |L^T| || <= P ||A|| for SPD A; the factor 8 covers both),
//    plus u32 |x_exact| per entry for a float32 result (the float64 solution rounded once).
//    The oracle is Gauss-Jordan with partial pivoting in long double (error ~ P kappa 2^-64).
#include <doctest/doctest.h>

#if defined(IIF_HAVE_SIMT)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "attribution/featurizer.h"
#include "attribution/projector.h"
#include "engine/autodiff.h"
#include "engine/ops.h"
#include "kernels/cholesky.cuh"
#include "kernels/fisher.cuh"
#include "kernels/projection.cuh"
#include "nn/models.h"
#include "nn/module.h"

using namespace iif;
namespace k = iif::kernels;

namespace {

template <class T>
constexpr double unit_roundoff() {
  return std::numeric_limits<T>::epsilon() / 2;
}

// n values followed by guard values that a kernel must leave untouched.
template <class T>
class Guarded {
 public:
  static constexpr int kGuard = 64;
  explicit Guarded(std::size_t n, T fill = T{}) : n_(n), v_(n + kGuard, fill) {
    std::memset(static_cast<void*>(v_.data() + n), 0xA5, kGuard * sizeof(T));
  }
  Guarded(const std::vector<T>& values) : Guarded(values.size()) {
    std::copy(values.begin(), values.end(), v_.begin());
  }
  T* data() { return v_.data(); }
  const T* data() const { return v_.data(); }
  T& operator[](std::size_t i) { return v_[i]; }
  std::size_t size() const { return n_; }
  std::vector<T> values() const { return std::vector<T>(v_.begin(), v_.begin() + n_); }
  bool guards_intact() const {
    const auto* p = reinterpret_cast<const unsigned char*>(v_.data() + n_);
    for (std::size_t i = 0; i < kGuard * sizeof(T); ++i)
      if (p[i] != 0xA5) return false;
    return true;
  }

 private:
  std::size_t n_;
  std::vector<T> v_;
};

simt::Options with_schedule(simt::Schedule s, std::uint64_t seed = 0) {
  simt::Options o = simt::options();
  o.schedule = s;
  o.seed = seed;
  return o;
}

// Forward, reversed and two random orders: one order alone can hide a race.
const std::vector<simt::Options>& all_orders() {
  static const std::vector<simt::Options> orders = {
      with_schedule(simt::Schedule::forward), with_schedule(simt::Schedule::reversed),
      with_schedule(simt::Schedule::random, 1), with_schedule(simt::Schedule::random, 2)};
  return orders;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Runs `run` (which returns the kernel's outputs) in every order; all must be bitwise equal.
template <class T>
void check_schedule_independent(const std::function<std::vector<T>()>& run) {
  std::vector<T> first;
  for (const simt::Options& o : all_orders()) {
    simt::ScopedOptions scope(o);
    const std::vector<T> out = run();
    if (first.empty()) {
      first = out;
      REQUIRE(!first.empty());
    } else {
      CHECK_MESSAGE(bitwise_equal(first, out), "schedule " << simt::schedule_name(o.schedule) << " seed " << o.seed);
    }
  }
}

template <class T>
std::vector<T> uniform(std::size_t n, unsigned seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(d(g));
  return v;
}

// |got - want| <= tol for every entry; reports the first misses and the worst ratio.
void check_within(const std::vector<double>& got, const std::vector<double>& want, const std::vector<double>& tol,
                  const std::string& what) {
  REQUIRE(got.size() == want.size());
  REQUIRE(tol.size() == want.size());
  int bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    worst = std::max(worst, err / (tol[i] + 1e-300));
    if (!(err <= tol[i]) && bad++ < 5)
      MESSAGE(what << ": entry " << i << ": got " << got[i] << ", want " << want[i] << ", tolerance " << tol[i]);
  }
  INFO(what << ": worst error / tolerance = " << worst);
  CHECK(bad == 0);
  // IIF_KERNEL_TEST_REPORT=1 prints how much of each bound was used (docs and reviews).
  static const bool report = std::getenv("IIF_KERNEL_TEST_REPORT") != nullptr;
  if (report) MESSAGE(what << ": worst error / tolerance = " << worst);
}

template <class T>
std::vector<double> as_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

attr::Projector make_projector(int64_t m, int p, k::RKind kind, uint64_t seed) {
  attr::ProjectorSpec spec;
  spec.kind = kind == k::RKind::rademacher ? attr::ProjectionKind::rademacher : attr::ProjectionKind::gaussian;
  spec.dim = p;
  spec.seed = seed;
  return attr::Projector(m, spec);
}

const char* kind_name(k::RKind kind) { return kind == k::RKind::rademacher ? "rademacher" : "gaussian"; }

template <class T>
DType dtype_of() {
  return std::is_same<T, float>::value ? DType::f32 : DType::f64;
}

// The projector's rows r0 .. r0 + count - 1 as T (the CPU tile generator).
template <class T>
std::vector<T> cpu_rows(const attr::Projector& pr, int64_t r0, int64_t count) {
  const Tensor t = pr.rows(r0, count, dtype_of<T>());
  const T* p = t.data<T>();
  return std::vector<T>(p, p + count * pr.output_dim());
}

// Oracle of y = beta y0 + G R[r0 : r0 + m], G (B, m) given as a function of (b, j) in long
// double; also the error scale sum_j |g R| + |beta y0| per entry.
void oracle_projection(const attr::Projector& pr, int64_t r0, int64_t m, int batch,
                       const std::function<long double(int, int64_t)>& g, double beta, const std::vector<double>& y0,
                       std::vector<double>& y, std::vector<double>& mag) {
  const int64_t p = pr.output_dim();
  std::vector<double> r(static_cast<std::size_t>(m * p));
  for (int64_t j = 0; j < m; ++j)
    for (int64_t c = 0; c < p; ++c) r[j * p + c] = pr.entry(r0 + j, c);
  y.assign(static_cast<std::size_t>(batch * p), 0.0);
  mag.assign(y.size(), 0.0);
  std::vector<long double> gb(static_cast<std::size_t>(m));
  for (int b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < m; ++j) gb[j] = g(b, j);
    for (int64_t c = 0; c < p; ++c) {
      long double acc = beta == 0.0 ? 0.0L : static_cast<long double>(beta) * y0[b * p + c];
      long double abs_acc = std::fabs(static_cast<double>(acc));
      for (int64_t j = 0; j < m; ++j) {
        const long double t = gb[j] * r[j * p + c];
        acc += t;
        abs_acc += std::fabs(static_cast<double>(t));
      }
      y[b * p + c] = static_cast<double>(acc);
      mag[b * p + c] = static_cast<double>(abs_acc);
    }
  }
}

std::vector<double> tolerance(const std::vector<double>& mag, double terms, double u) {
  std::vector<double> t(mag.size());
  for (std::size_t i = 0; i < mag.size(); ++i) t[i] = 1.01 * terms * u * mag[i];
  return t;
}

}  // namespace

// ---- projection -------------------------------------------------------------------------------

TEST_CASE_TEMPLATE("projection kernels: the R generated in the kernel is the projector's R bit for bit", T, float,
                   double) {
  // Row j of G is the unit vector e_j, so y = G R[r0 : r0 + m] is R's rows with no rounding
  // (acc = +0 + 0 * R ... + 1 * R_jc + 0 * R ...). beta = 0 on a NaN-filled y: y is not read.
  for (k::RKind kind : {k::RKind::rademacher, k::RKind::gaussian}) {
    for (int p : {1, 7, 100, 256, 300}) {
      for (int64_t r0 : {int64_t{0}, int64_t{5}, (int64_t{1} << 33) + 3}) {
        const int m = 37;
        const attr::Projector pr = make_projector(r0 + m, p, kind, 1234);
        std::vector<T> g(static_cast<std::size_t>(m) * m, T(0));
        for (int j = 0; j < m; ++j) g[j * m + j] = T(1);
        Guarded<T> y(static_cast<std::size_t>(m) * p, std::numeric_limits<T>::quiet_NaN());
        k::project_rows<T>(g.data(), m, m, m, r0, p, kind, 1234, 0.0, y.data());
        INFO(kind_name(kind) << " P=" << p << " r0=" << r0);
        CHECK(bitwise_equal(y.values(), cpu_rows<T>(pr, r0, m)));
        CHECK(y.guards_intact());
      }
    }
  }
}

TEST_CASE_TEMPLATE("projection kernels: projection of given gradients against the oracle and Projector", T, float,
                   double) {
  const double u = unit_roundoff<T>();
  unsigned seed = 1;
  for (int p : {1, 7, 100, 256}) {
    for (int batch : {1, 5, 37}) {
      for (int64_t m : {int64_t{1}, int64_t{13}, int64_t{65 * 13}}) {
        for (double beta : {0.0, 1.0, -0.5}) {
          const k::RKind kind = (seed % 3 == 0) ? k::RKind::gaussian : k::RKind::rademacher;
          const int64_t r0 = seed % 2 ? 11 : 0;
          const int64_t ldg = m + (seed % 4);  // a row stride past m
          INFO(kind_name(kind) << " P=" << p << " B=" << batch << " m=" << m << " beta=" << beta << " ldg=" << ldg);
          const uint64_t rseed = 77 + seed;
          const attr::Projector pr = make_projector(r0 + m, p, kind, rseed);
          const std::vector<T> g = uniform<T>(static_cast<std::size_t>(batch * ldg), ++seed);
          const std::vector<T> y0 = uniform<T>(static_cast<std::size_t>(batch) * p, ++seed);
          Guarded<T> y(y0);
          k::project_rows<T>(g.data(), ldg, batch, m, r0, p, kind, rseed, beta, y.data());
          CHECK(y.guards_intact());
          std::vector<double> want, mag;
          oracle_projection(pr, r0, m, batch, [&](int b, int64_t j) { return (long double)g[b * ldg + j]; }, beta,
                            as_double(y0), want, mag);
          const std::vector<double> tol = tolerance(mag, double(m) + 4, u);
          check_within(as_double(y.values()), want, tol, "kernel vs oracle");
          // The CPU projector (OpenBLAS GEMM on generated tiles): within twice the bound.
          std::vector<T> gc(static_cast<std::size_t>(batch * m));
          for (int b = 0; b < batch; ++b)
            for (int64_t j = 0; j < m; ++j) gc[b * m + j] = g[b * ldg + j];
          Tensor gt = Tensor::from_vector(as_double(gc), {batch, m}, dtype_of<T>());
          Tensor yt = Tensor::from_vector(as_double(y0), {batch, p}, dtype_of<T>());
          pr.project_block(gt, r0, beta, yt);
          check_within(as_double(y.values()), yt.to_vector(), tolerance(mag, 2 * (double(m) + 4), u),
                       "kernel vs Projector::project_block");
        }
      }
    }
  }
}

TEST_CASE("projection kernels: fused Linear projection is exact on one-hot activations and cotangents") {
  // Sample b: a = e_{i_b}, d = 2^{e_b} e_{o_b}. Its gradient has the weight row o_b * in + i_b
  // equal to 2^{e_b} and (with a bias) the bias row o_b equal to 2^{e_b}; every other entry is 0.
  // So y[b] = 2^{e_b} (R_w + R_bias) (both rows added in row order, one rounding, scaled by a
  // power of 2): the kernel's row mapping must reproduce that bit for bit, for both kinds.
  for (k::RKind kind : {k::RKind::rademacher, k::RKind::gaussian}) {
    for (int p : {1, 7, 100, 256}) {
      for (auto [in, out] : {std::pair<int, int>{1, 1}, {13, 1}, {1, 13}, {13, 65}, {65, 13}}) {
        for (bool bias : {false, true}) {
          const int batch = 37;
          const int64_t r0 = 29;
          const int64_t rows = int64_t(in) * out + (bias ? out : 0);
          const attr::Projector pr = make_projector(r0 + rows, p, kind, 5);
          const std::vector<float> r = cpu_rows<float>(pr, r0, rows);
          std::vector<float> a(static_cast<std::size_t>(batch) * in, 0.0f), d(static_cast<std::size_t>(batch) * out, 0.0f);
          std::vector<float> want(static_cast<std::size_t>(batch) * p);
          for (int b = 0; b < batch; ++b) {
            const int i = (b * 7) % in, o = (b * 5 + 3) % out;
            const float scale = std::ldexp(1.0f, b % 5 - 2);
            a[b * in + i] = 1.0f;
            d[b * out + o] = scale;
            for (int c = 0; c < p; ++c) {
              float v = r[(int64_t(o) * in + i) * p + c];
              if (bias) v += r[(int64_t(in) * out + o) * p + c];
              want[b * p + c] = scale * v;
            }
          }
          Guarded<float> y(static_cast<std::size_t>(batch) * p, 0.0f);
          k::linear_project<float>(a.data(), d.data(), y.data(), batch, in, out, bias, r0, p, kind, 5);
          INFO(kind_name(kind) << " P=" << p << " in=" << in << " out=" << out << " bias=" << bias);
          CHECK(bitwise_equal(y.values(), want));
          CHECK(y.guards_intact());
        }
      }
    }
  }
}

namespace {

// linear_project with `count` cotangent sets on random data, accumulating into random y0,
// against the long-double oracle; returns nothing, checks inside.
template <class T>
void check_fused_random(int batch, int in, int out, int p, bool bias, int count, k::RKind kind, unsigned seed) {
  const double u = unit_roundoff<T>();
  const int64_t r0 = 3 + seed % 7;
  const int64_t wrows = int64_t(in) * out, rows = wrows + (bias ? out : 0);
  const attr::Projector pr = make_projector(r0 + rows, p, kind, seed);
  const std::vector<T> a = uniform<T>(static_cast<std::size_t>(batch) * in, seed * 11 + 1);
  std::vector<std::vector<T>> d(count), y0(count);
  std::vector<std::unique_ptr<Guarded<T>>> y;
  std::vector<const T*> dp;
  std::vector<T*> yp;
  for (int c = 0; c < count; ++c) {
    d[c] = uniform<T>(static_cast<std::size_t>(batch) * out, seed * 11 + 2 + c);
    y0[c] = uniform<T>(static_cast<std::size_t>(batch) * p, seed * 11 + 7 + c);
    y.push_back(std::make_unique<Guarded<T>>(y0[c]));
    dp.push_back(d[c].data());
    yp.push_back(y.back()->data());
  }
  k::linear_project<T>(a.data(), dp.data(), yp.data(), count, batch, in, out, bias, r0, p, kind, seed);
  INFO(kind_name(kind) << " P=" << p << " B=" << batch << " in=" << in << " out=" << out << " bias=" << bias
                       << " count=" << count);
  for (int c = 0; c < count; ++c) {
    CHECK(y[c]->guards_intact());
    std::vector<double> want, mag;
    oracle_projection(
        pr, r0, rows, batch,
        [&](int b, int64_t j) -> long double {
          if (j < wrows) return (long double)d[c][b * out + j / in] * a[b * in + j % in];
          return d[c][b * out + (j - wrows)];
        },
        1.0, as_double(y0[c]), want, mag);
    check_within(as_double(y[c]->values()), want, tolerance(mag, double(rows) + 4, u), "fused vs oracle");
  }
}

}  // namespace

TEST_CASE("projection kernels: fused Linear projection with one to four cotangent sets against the oracle") {
  unsigned seed = 100;
  for (int p : {1, 7, 100, 256}) {
    for (int batch : {1, 5, 37}) {
      for (auto [in, out] : {std::pair<int, int>{1, 1}, {13, 1}, {1, 65}, {13, 65}, {65, 13}}) {
        ++seed;
        const k::RKind kind = seed % 4 == 0 ? k::RKind::gaussian : k::RKind::rademacher;
        check_fused_random<float>(batch, in, out, p, seed % 2 == 0, 1 + seed % 2, kind, seed);
      }
    }
  }
  check_fused_random<float>(37, 65, 65, 256, true, 2, k::RKind::rademacher, 7);
  check_fused_random<float>(5, 13, 13, 100, true, 3, k::RKind::gaussian, 8);
  check_fused_random<float>(5, 13, 1, 7, false, 4, k::RKind::rademacher, 9);
  check_fused_random<double>(37, 13, 65, 100, true, 2, k::RKind::rademacher, 10);
  check_fused_random<double>(5, 65, 13, 256, true, 1, k::RKind::gaussian, 11);
  check_fused_random<double>(1, 1, 1, 1, false, 4, k::RKind::rademacher, 12);
}

TEST_CASE_TEMPLATE("projection kernels: fused projection equals the CPU featurizer on an MLP (two cotangents)", T,
                   float, double) {
  // The model's recorded (a, delta) per Linear layer, one forward and two backward passes as
  // Featurizer::sweep_batch does; the kernel adds each layer's rows; the featurizer (factored
  // kernel, OpenBLAS) is the reference. The layer's bias rows must follow its weight rows.
  nn::Init init;
  init.dtype = dtype_of<T>();
  init.seed = 3;
  auto model = nn::make_model("mlp:12-13-65-3,dropout=0", init);
  model->set_training(false);
  const int n = 37, p = 100;
  const int64_t m = model->num_parameters();
  for (k::RKind kind : {k::RKind::rademacher, k::RKind::gaussian}) {
    const attr::Projector pr = make_projector(m, p, kind, 42);
    const Tensor x = Tensor::from_vector(as_double(uniform<T>(n * 12, 1)), {n, 12}, dtype_of<T>());
    const Tensor t1 = Tensor::from_vector(as_double(uniform<T>(n * 3, 2, 0.0, 1.0)), {n, 3}, dtype_of<T>());
    const Tensor t2 = Tensor::from_vector(as_double(uniform<T>(n * 3, 3, -1.0, 1.0)), {n, 3}, dtype_of<T>());
    attr::CotangentFn c1 = [&](const Tensor& o, int64_t f) { return attr::xent_cotangent(o, t1.rows(f, f + o.dim(0))); };
    attr::CotangentFn c2 = [&](const Tensor& o, int64_t f) { return attr::mse_cotangent(o, t2.rows(f, f + o.dim(0))); };
    attr::Featurizer feat(*model, pr);
    const std::vector<Tensor> ref = feat.project(x, {c1, c2}, 16);

    std::map<const Var*, int64_t> first_row;
    int64_t off = 0;
    for (auto& np : model->named_parameters()) {
      first_row[np.var] = off;
      off += np.var->value().numel();
    }
    Var outv = model->forward(Var(x));
    std::vector<Tensor> acts;
    std::vector<std::vector<Tensor>> cots(2);
    for (nn::ParametricLayer* pl : model->parametric_layers()) acts.push_back(pl->input_activations().clone());
    const attr::CotangentFn fns[2] = {c1, c2};
    for (int c = 0; c < 2; ++c) {
      backward(outv, fns[c](outv.value(), 0));
      for (nn::ParametricLayer* pl : model->parametric_layers()) cots[c].push_back(pl->output_cotangents().clone());
    }
    Guarded<T> y1(static_cast<std::size_t>(n) * p, T(0)), y2(static_cast<std::size_t>(n) * p, T(0));
    T* ys[2] = {y1.data(), y2.data()};
    std::vector<std::vector<double>> mag(2, std::vector<double>(static_cast<std::size_t>(n) * p, 0.0));
    std::size_t li = 0;
    for (nn::ParametricLayer* pl : model->parametric_layers()) {
      auto* lin = dynamic_cast<nn::Linear*>(pl);
      REQUIRE(lin);
      const int in = static_cast<int>(lin->in_features), out = static_cast<int>(lin->out_features);
      const int64_t r0 = first_row.at(&lin->weight);
      const bool bias = lin->bias.defined();
      if (bias) REQUIRE(first_row.at(&lin->bias) == r0 + int64_t(in) * out);  // the kernel's row order
      const T* ds[2] = {cots[0][li].template data<T>(), cots[1][li].template data<T>()};
      k::linear_project<T>(acts[li].template data<T>(), ds, ys, 2, n, in, out, bias, r0, p, kind, 42);
      // Error scale sum_r |g_r R_r| of this layer, added per output entry.
      const std::vector<double> av = acts[li].to_vector();
      const int64_t rows = int64_t(in) * out + (bias ? out : 0);
      const std::vector<double> rl = pr.rows(r0, rows, DType::f64).to_vector();
      for (int c = 0; c < 2; ++c) {
        const std::vector<double> dv = cots[c][li].to_vector();
        for (int b = 0; b < n; ++b)
          for (int64_t j = 0; j < rows; ++j) {
            const double g = j < int64_t(in) * out ? dv[b * out + j / in] * av[b * in + j % in]
                                                   : dv[b * out + (j - int64_t(in) * out)];
            for (int col = 0; col < p; ++col) mag[c][b * p + col] += std::fabs(g * rl[j * p + col]);
          }
      }
      ++li;
    }
    CHECK(y1.guards_intact());
    CHECK(y2.guards_intact());
    INFO(kind_name(kind));
    const double terms = double(m) + 4 * double(li);
    check_within(as_double(y1.values()), ref[0].to_vector(), tolerance(mag[0], 2 * terms, unit_roundoff<T>()),
                 "cotangent 1 vs featurizer");
    check_within(as_double(y2.values()), ref[1].to_vector(), tolerance(mag[1], 2 * terms, unit_roundoff<T>()),
                 "cotangent 2 vs featurizer");
  }
}

TEST_CASE("projection kernels: outputs are bitwise equal in every fiber order") {
  const int batch = 37, in = 13, out = 65, p = 100;
  const std::vector<float> a = uniform<float>(batch * in, 1), d1 = uniform<float>(batch * out, 2),
                           d2 = uniform<float>(batch * out, 3);
  check_schedule_independent<float>([&] {
    Guarded<float> y1(batch * p, 0.5f), y2(batch * p, -0.5f);
    const float* ds[2] = {d1.data(), d2.data()};
    float* ys[2] = {y1.data(), y2.data()};
    k::linear_project<float>(a.data(), ds, ys, 2, batch, in, out, true, 7, p, k::RKind::rademacher, 9);
    CHECK(y1.guards_intact());
    CHECK(y2.guards_intact());
    std::vector<float> v = y1.values(), w = y2.values();
    v.insert(v.end(), w.begin(), w.end());
    return v;
  });
  const int m = 300;
  const std::vector<double> g = uniform<double>(batch * m, 4);
  check_schedule_independent<double>([&] {
    Guarded<double> y(batch * 256, 1.0);
    k::project_rows<double>(g.data(), m, batch, m, 3, 256, k::RKind::gaussian, 9, 0.25, y.data());
    CHECK(y.guards_intact());
    return y.values();
  });
}

TEST_CASE("projection kernels: launcher argument errors") {
  float x = 0, y = 0;
  const float* ds[5] = {&x, &x, &x, &x, &x};
  float* ys[5] = {&y, &y, &y, &y, &y};
  CHECK_THROWS_AS(k::linear_project<float>(&x, ds, ys, 5, 1, 1, 1, false, 0, 1, k::RKind::rademacher, 0),
                  std::invalid_argument);
  CHECK_THROWS_AS(k::linear_project<float>(&x, ds, ys, 0, 1, 1, 1, false, 0, 1, k::RKind::rademacher, 0),
                  std::invalid_argument);
  CHECK_THROWS_AS(k::linear_project<float>(&x, &x, &y, 1, 0, 1, false, 0, 1, k::RKind::rademacher, 0),
                  std::invalid_argument);
  CHECK_THROWS_AS(k::project_rows<float>(&x, 1, 1, 1, 0, 0, k::RKind::rademacher, 0, 0.0, &y), std::invalid_argument);
  CHECK_THROWS_AS(k::project_rows<float>(&x, 1, 1, 2, 0, 1, k::RKind::rademacher, 0, 0.0, &y), std::invalid_argument);
  // batch == 0: nothing to do, nothing touched.
  y = 3.0f;
  k::project_rows<float>(&x, 1, 0, 1, 0, 1, k::RKind::rademacher, 0, 0.0, &y);
  CHECK(y == 3.0f);
  // m == 0: y = beta y (beta == 0: zeros, y not read), as Projector::project_block does.
  Guarded<float> y2(std::vector<float>{2.0f, std::numeric_limits<float>::quiet_NaN()});
  k::project_rows<float>(&x, 0, 1, 0, 0, 1, k::RKind::rademacher, 0, 0.5, y2.data());
  CHECK(y2[0] == 1.0f);
  k::project_rows<float>(&x, 0, 2, 0, 0, 1, k::RKind::rademacher, 0, 0.0, y2.data());
  CHECK(y2.values() == std::vector<float>{0.0f, 0.0f});
  CHECK(y2.guards_intact());
}

// ---- Fisher (syrk) ------------------------------------------------------------------------------

namespace {

template <class T>
void check_syrk(int n, int p, double alpha, double beta, unsigned seed) {
  const double u = unit_roundoff<T>();
  INFO("N=" << n << " P=" << p << " alpha=" << alpha << " beta=" << beta);
  const std::vector<T> uu = uniform<T>(static_cast<std::size_t>(n) * p, seed);
  // C0: symmetric in its upper triangle; the lower triangle holds NaN (only the upper one may
  // be read). With beta == 0 all of C0 is NaN (C is not read at all).
  std::vector<T> c0 = uniform<T>(static_cast<std::size_t>(p) * p, seed + 1);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (int i = 0; i < p; ++i)
    for (int j = 0; j < p; ++j)
      if (beta == 0.0 || j < i) c0[i * p + j] = nan;
  Guarded<T> c(c0);
  k::syrk<T>(alpha, uu.data(), n, p, beta, c.data());
  CHECK(c.guards_intact());
  const std::vector<T> got = c.values();
  std::vector<double> want(got.size()), mag(got.size());
  bool symmetric = true;
  for (int i = 0; i < p; ++i)
    for (int j = 0; j < p; ++j) {
      const int lo = std::min(i, j), hi = std::max(i, j);
      long double s = 0, sa = 0;
      for (int r = 0; r < n; ++r) {
        const long double t = (long double)uu[r * p + lo] * uu[r * p + hi];
        s += t;
        sa += std::fabs((double)t);
      }
      long double v = (long double)alpha * s;
      double m = std::fabs(alpha) * (double)sa;
      if (beta != 0.0) {
        v += (long double)beta * c0[lo * p + hi];
        m += std::fabs(beta * c0[lo * p + hi]);
      }
      want[i * p + j] = (double)v;
      mag[i * p + j] = m;
      symmetric = symmetric && std::memcmp(&got[i * p + j], &got[j * p + i], sizeof(T)) == 0;
    }
  CHECK(symmetric);
  check_within(as_double(got), want, tolerance(mag, double(n) + 3, u), "syrk vs oracle");
  // The CPU backend (cblas ?syrk): within twice the bound. It gets a symmetric C0.
  std::vector<double> c0s(as_double(c0));
  for (int i = 0; i < p; ++i)
    for (int j = 0; j < i; ++j) c0s[i * p + j] = beta == 0.0 ? 0.0 : c0s[j * p + i];
  Tensor ut = Tensor::from_vector(as_double(uu), {n, p}, dtype_of<T>());
  Tensor ct = Tensor::from_vector(c0s, {p, p}, dtype_of<T>());
  ops::syrk(alpha, ut, beta, ct);
  check_within(as_double(got), ct.to_vector(), tolerance(mag, 2 * (double(n) + 3), u), "syrk vs CPU backend");
}

}  // namespace

TEST_CASE_TEMPLATE("fisher kernel: syrk against the oracle and the CPU backend", T, float, double) {
  unsigned seed = 1;
  for (int p : {1, 7, 100, 130}) {
    for (int n : {0, 1, 5, 37}) {
      for (auto [alpha, beta] : {std::pair<double, double>{1.0, 0.0}, {1.0, 1.0}, {0.25, -0.5}}) {
        check_syrk<T>(n, p, alpha, beta, seed += 3);
      }
    }
  }
  check_syrk<T>(100, 256, 1.0 / 100, 1.0, 99);
}

TEST_CASE("fisher kernel: outputs are bitwise equal in every fiber order") {
  const int n = 37, p = 130;
  const std::vector<float> uu = uniform<float>(n * p, 5);
  const std::vector<float> c0 = [&] {
    std::vector<float> c = uniform<float>(p * p, 6);
    for (int i = 0; i < p; ++i)
      for (int j = 0; j < i; ++j) c[i * p + j] = c[j * p + i];
    return c;
  }();
  check_schedule_independent<float>([&] {
    Guarded<float> c(c0);
    k::syrk<float>(0.5, uu.data(), n, p, 1.0, c.data());
    CHECK(c.guards_intact());
    return c.values();
  });
}

// ---- batched damped Cholesky -----------------------------------------------------------------

namespace {

// A (P, P) symmetric positive definite with condition number about `cond`: Q diag Q^T from a
// random orthogonal-ish basis is costly to build; B B^T / P + shift I is enough here.
std::vector<double> spd(int p, unsigned seed, double shift) {
  const std::vector<double> b = uniform<double>(static_cast<std::size_t>(p) * p, seed);
  std::vector<double> a(static_cast<std::size_t>(p) * p);
  for (int i = 0; i < p; ++i)
    for (int j = 0; j <= i; ++j) {
      double s = 0;
      for (int r = 0; r < p; ++r) s += b[i * p + r] * b[j * p + r];
      a[i * p + j] = a[j * p + i] = s / p + (i == j ? shift : 0.0);
    }
  return a;
}

// The inverse of A + damping I by Gauss-Jordan with partial pivoting in long double; also
// kappa_inf = ||A + damping I||_inf ||(A + damping I)^{-1}||_inf.
std::vector<long double> inverse(const std::vector<double>& a, int p, double damping, double* kappa) {
  std::vector<long double> m(static_cast<std::size_t>(p) * 2 * p, 0.0L);
  double norm_a = 0;
  for (int i = 0; i < p; ++i) {
    double row = 0;
    for (int j = 0; j < p; ++j) {
      m[i * 2 * p + j] = a[i * p + j] + (i == j ? damping : 0.0);
      row += std::fabs(a[i * p + j] + (i == j ? damping : 0.0));
    }
    norm_a = std::max(norm_a, row);
    m[i * 2 * p + p + i] = 1.0L;
  }
  for (int c = 0; c < p; ++c) {
    int piv = c;
    for (int i = c + 1; i < p; ++i)
      if (std::fabs((double)m[i * 2 * p + c]) > std::fabs((double)m[piv * 2 * p + c])) piv = i;
    for (int j = 0; j < 2 * p; ++j) std::swap(m[c * 2 * p + j], m[piv * 2 * p + j]);
    const long double d = m[c * 2 * p + c];
    for (int j = 0; j < 2 * p; ++j) m[c * 2 * p + j] /= d;
    for (int i = 0; i < p; ++i) {
      if (i == c) continue;
      const long double f = m[i * 2 * p + c];
      if (f == 0) continue;
      for (int j = 0; j < 2 * p; ++j) m[i * 2 * p + j] -= f * m[c * 2 * p + j];
    }
  }
  std::vector<long double> inv(static_cast<std::size_t>(p) * p);
  double norm_inv = 0;
  for (int i = 0; i < p; ++i) {
    double row = 0;
    for (int j = 0; j < p; ++j) {
      inv[i * p + j] = m[i * 2 * p + p + j];
      row += std::fabs((double)inv[i * p + j]);
    }
    norm_inv = std::max(norm_inv, row);
  }
  *kappa = norm_a * norm_inv;
  return inv;
}

// The CPU backend's error message for the same problem ("" if it does not throw).
std::string cpu_cholesky_error(const std::vector<double>& a, const std::vector<double>& damping, int kc, int p, int r) {
  try {
    Tensor at = Tensor::from_vector(a, {kc, p, p}, DType::f64);
    Tensor bt = Tensor::zeros({kc, p, r}, DType::f64);
    ops::batched_cholesky_solve(at, damping, bt);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

template <class T>
void check_cholesky(int kc, int p, int r, std::size_t shared_bytes, unsigned seed) {
  INFO("K=" << kc << " P=" << p << " R=" << r << " shared_bytes=" << shared_bytes);
  std::vector<double> a, damping;
  for (int q = 0; q < kc; ++q) {
    // Matrix 1 is indefinite on its own (shift -0.3) and made positive definite by damping.
    const std::vector<double> aq = spd(p, seed + q, q == 1 ? -0.3 : 0.05 * (q + 1));
    for (double v : aq) a.push_back(static_cast<T>(v));  // the matrix the kernel sees, exactly
    damping.push_back(q == 1 ? 1.0 : 0.01 * q);
  }
  std::vector<T> at(a.begin(), a.end());
  // The upper triangle must not matter for the factorisation: scramble it (finite values).
  for (int q = 0; q < kc; ++q)
    for (int i = 0; i < p; ++i)
      for (int j = i + 1; j < p; ++j) at[(std::size_t(q) * p + i) * p + j] = T(1e3);
  const std::vector<T> b0 = uniform<T>(static_cast<std::size_t>(kc) * p * r, seed + 100);
  Guarded<T> b(b0);
  Guarded<int> info(kc, 12345);
  std::vector<unsigned char> ws(k::cholesky_workspace_bytes(kc, p, r, shared_bytes) + 16);
  k::batched_cholesky_solve<T>(at.data(), damping.data(), kc, p, b.data(), r, ws.data(), info.data(), nullptr,
                               shared_bytes);
  CHECK(b.guards_intact());
  CHECK(info.guards_intact());
  for (int q = 0; q < kc; ++q) CHECK(info[q] == 0);
  const std::vector<T> got = b.values();
  // Oracle: the explicit inverse times B (A read as the symmetric matrix of its lower triangle).
  std::vector<double> want(got.size()), tol(got.size());
  for (int q = 0; q < kc; ++q) {
    std::vector<double> aq(a.begin() + std::size_t(q) * p * p, a.begin() + std::size_t(q + 1) * p * p);
    double kappa = 0;
    const std::vector<long double> inv = inverse(aq, p, damping[q], &kappa);
    double xmax = 0;
    for (int i = 0; i < p; ++i)
      for (int c = 0; c < r; ++c) {
        long double s = 0;
        for (int j = 0; j < p; ++j) s += inv[i * p + j] * b0[(std::size_t(q) * p + j) * r + c];
        want[(std::size_t(q) * p + i) * r + c] = (double)s;
        xmax = std::max(xmax, std::fabs((double)s));
      }
    for (int i = 0; i < p; ++i)
      for (int c = 0; c < r; ++c) {
        const std::size_t e = (std::size_t(q) * p + i) * r + c;
        tol[e] = 8.0 * p * kappa * unit_roundoff<double>() * xmax +
                 (std::is_same<T, float>::value ? 1.01 * unit_roundoff<float>() * std::fabs(want[e]) : 0.0);
      }
  }
  check_within(as_double(got), want, tol, "cholesky vs explicit inverse");
  // The CPU backend (LAPACK potrf/potrs) on the symmetric matrices: within twice the bound.
  Tensor a_t = Tensor::from_vector(a, {kc, p, p}, dtype_of<T>());
  Tensor b_t = Tensor::from_vector(as_double(b0), {kc, p, r}, dtype_of<T>());
  ops::batched_cholesky_solve_into(a_t, damping, b_t);
  std::vector<double> tol2(tol);
  for (double& t : tol2) t *= 2;
  check_within(as_double(got), b_t.to_vector(), tol2, "cholesky vs CPU backend");
}

}  // namespace

TEST_CASE_TEMPLATE("cholesky kernels: damped solves against an explicit inverse and the CPU backend", T, float,
                   double) {
  unsigned seed = 1;
  for (int p : {1, 7, 100}) {
    for (int r : {1, 5, 37}) {
      check_cholesky<T>(3, p, r, k::chol::kDefaultSharedBytes, seed += 10);
    }
    check_cholesky<T>(2, p, 37, 0, seed += 10);  // factor and RHS tiles in the global workspace
  }
  check_cholesky<T>(1, 50, 100, k::chol::kDefaultSharedBytes, 7);  // several RHS tiles per matrix
  check_cholesky<T>(2, 13, 40, 13 * 8 * 5, 8);                     // factor global, 5-column RHS tiles
  check_cholesky<T>(1, 256, 5, k::chol::kDefaultSharedBytes, 9);   // P = 256: factor in global memory
}

TEST_CASE("cholesky kernels: R == 0 factorises only; K == 0 and P == 0 do nothing") {
  const int p = 7;
  const std::vector<double> a = spd(p, 3, 0.1);
  const double damping = 0.0;
  Guarded<int> info(1, 99);
  std::vector<unsigned char> ws(k::cholesky_workspace_bytes(1, p, 0));
  k::batched_cholesky_solve<double>(a.data(), &damping, 1, p, nullptr, 0, ws.data(), info.data());
  CHECK(info[0] == 0);
  CHECK(info.guards_intact());
  k::batched_cholesky_solve<double>(a.data(), &damping, 0, p, nullptr, 0, nullptr, info.data());
  k::batched_cholesky_solve<double>(a.data(), &damping, 1, 0, nullptr, 0, nullptr, info.data());
  CHECK(info[0] == 0);
}

TEST_CASE("cholesky kernels: the first matrix that is not positive definite is reported like the CPU backend") {
  // A = L D L^T with L unit lower triangular (random below the diagonal) and D = I except
  // D[m-1] = -1: the leading minors of order < m are positive definite and the one of order m
  // is not (det < 0), so potrf's info is m. Matrices 2 and 4 fail (orders 4 and 2); matrix 3
  // holds a NaN in its (unread) upper triangle; damping is 0 for the failing ones.
  const int p = 7, r = 3, kc = 5;
  auto ldl = [&](int m, unsigned seed) {
    const std::vector<double> rnd = uniform<double>(p * p, seed, -0.5, 0.5);
    std::vector<double> l(p * p, 0.0), a(p * p, 0.0);
    for (int i = 0; i < p; ++i)
      for (int j = 0; j <= i; ++j) l[i * p + j] = i == j ? 1.0 : rnd[i * p + j];
    for (int i = 0; i < p; ++i)
      for (int j = 0; j < p; ++j) {
        double s = 0;
        for (int q = 0; q < p; ++q) s += l[i * p + q] * l[j * p + q] * (q == m - 1 ? -1.0 : 1.0);
        a[i * p + j] = s;
      }
    return a;
  };
  std::vector<double> a;
  auto add = [&](const std::vector<double>& m) { a.insert(a.end(), m.begin(), m.end()); };
  add(spd(p, 1, 0.1));
  add(spd(p, 2, 0.1));
  add(ldl(4, 3));
  add(spd(p, 4, 0.1));
  add(ldl(2, 5));
  a[(3 * p + 1) * p + 5] = std::numeric_limits<double>::quiet_NaN();  // matrix 3, upper triangle
  const std::vector<double> damping = {0.5, 0.0, 0.0, 0.0, 0.0};
  for (std::size_t shared : {k::chol::kDefaultSharedBytes, std::size_t{0}}) {
    INFO("shared_bytes=" << shared);
    const std::vector<double> b0 = uniform<double>(kc * p * r, 9);
    Guarded<double> b(b0);
    Guarded<int> info(kc, 12345);
    std::vector<unsigned char> ws(k::cholesky_workspace_bytes(kc, p, r, shared));
    k::batched_cholesky_solve<double>(a.data(), damping.data(), kc, p, b.data(), r, ws.data(), info.data(), nullptr,
                                      shared);
    CHECK(b.guards_intact());
    CHECK(info.guards_intact());
    CHECK(info.values() == std::vector<int>{0, 0, 4, k::chol::kNonFinite, 2});
    // Failed matrices keep their B; matrix 0 and 1 are solved (checked above in detail).
    const std::vector<double> got = b.values();
    for (int q : {2, 3, 4})
      CHECK(std::equal(got.begin() + q * p * r, got.begin() + (q + 1) * p * r, b0.begin() + q * p * r));
    CHECK(!std::equal(got.begin(), got.begin() + p * r, b0.begin()));
    // The error names k = 2 and info 4, word for word as the CPU backend says it.
    const std::vector<int> iv = info.values();
    std::string msg;
    try {
      k::throw_on_cholesky_info(iv.data(), kc, p, damping.data());
    } catch (const std::runtime_error& e) {
      msg = e.what();
    }
    CHECK(msg.find("matrix k = 2 of 5") != std::string::npos);
    CHECK(msg.find("info = 4") != std::string::npos);
    CHECK(msg == cpu_cholesky_error(a, damping, kc, p, r));
  }
  // Without matrices 2: the NaN of matrix 3 is reported, as the CPU backend reports it.
  std::vector<double> a2(a.begin(), a.begin() + 2 * p * p);
  a2.insert(a2.end(), a.begin() + 3 * p * p, a.end());
  const std::vector<double> d2 = {0.5, 0.0, 0.0, 0.0};
  std::vector<int> info(4, 7);
  std::vector<double> b(4 * p * r, 1.0);
  std::vector<unsigned char> ws(k::cholesky_workspace_bytes(4, p, r));
  k::batched_cholesky_solve<double>(a2.data(), d2.data(), 4, p, b.data(), r, ws.data(), info.data());
  CHECK(info == std::vector<int>{0, 0, k::chol::kNonFinite, 2});
  std::string msg;
  try {
    k::throw_on_cholesky_info(info.data(), 4, p, d2.data());
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  CHECK(msg.find("holds NaN or Inf") != std::string::npos);
  CHECK(msg == cpu_cholesky_error(a2, d2, 4, p, r));
  std::vector<int> ok = {0, 0};
  CHECK_NOTHROW(k::throw_on_cholesky_info(ok.data(), 2, p, d2.data()));
}

TEST_CASE("cholesky kernels: outputs are bitwise equal in every fiber order") {
  const int kc = 2, p = 100, r = 37;
  std::vector<double> a = spd(p, 1, 0.1);
  const std::vector<double> a1 = spd(p, 2, 0.1);
  a.insert(a.end(), a1.begin(), a1.end());
  std::vector<float> af(a.begin(), a.end());
  const std::vector<double> damping = {0.01, 0.1};
  const std::vector<float> b0 = uniform<float>(kc * p * r, 3);
  for (std::size_t shared : {k::chol::kDefaultSharedBytes, std::size_t{0}}) {
    INFO("shared_bytes=" << shared);
    check_schedule_independent<float>([&] {
      Guarded<float> b(b0);
      std::vector<int> info(kc, 9);
      std::vector<unsigned char> ws(k::cholesky_workspace_bytes(kc, p, r, shared));
      k::batched_cholesky_solve<float>(af.data(), damping.data(), kc, p, b.data(), r, ws.data(), info.data(),
                                       nullptr, shared);
      CHECK(b.guards_intact());
      CHECK(info == std::vector<int>{0, 0});
      return b.values();
    });
  }
}

#else

TEST_CASE("attribution kernels: skipped (built without the SIMT emulator, IIF_HAVE_SIMT)") {}

#endif
