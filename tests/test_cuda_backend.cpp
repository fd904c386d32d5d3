// The CUDA backend (engine/cuda/) held to the CPU backend, op by op: the kernels of
// kernels/elementwise.cuh, kernels/reduce.cuh, kernels/losses.cuh, kernels/random.cuh,
// kernels/optim.cuh and kernels/image.cuh through the backend that launches them. Built twice
// (engine/cuda/cuda.cmake): test_cuda_backend links iif_cuda_emulated (kernels on the SIMT
// emulator; CTest label cuda-emulated) and test_cuda_backend_native links iif_cuda (label cuda;
// every case returns after printing "no CUDA device" when cudaGetDeviceCount finds none, and
// CTest reports the test as skipped). Without either library this file is one skipped case.
//
// The op cases form one table (op_table(), at the end): each entry names the backend ops it
// covers and the harness runs every entry; a coverage check parses engine/backend.h and fails
// when a declared op has no entry (as ggml's test-backend-ops): a new op comes with its case.
//
// What every op test does:
// - shapes that do not divide the block sizes (1, 7, 33, 257, 1000+ along each dimension),
//   float32 and float64;
// - outputs are views of a larger device buffer whose tail is filled with a sentinel, checked
//   untouched after the op (guard buffers); outputs the op must not read start as NaN;
// - NaN/Inf: where the CPU gives NaN the CUDA backend must give NaN, where it gives +-Inf the
//   same infinity, and it must not give either where the CPU result is finite;
// - error bounds, per entry i, normalised by the sum of absolute values of the terms that form
//   that entry, S_i (e.g. S = |a x| + |b y| for axpby, (|A||B|)_ij for gemm, sum_r |x_rc| for a
//   column sum):  |cuda_i - cpu_i| <= (c_T u_T + c_64 L u_64) S_i, where u_T is the unit
//   roundoff of the storage type (2^-24, 2^-53), u_64 = 2^-53, and L the reduction length.
//   Both backends accumulate sums in float64 and round once to T (the c_T = 2 term: one
//   rounding each); their summation orders differ (the c_64 L term, the classical bound for
//   a sum of L terms, for each of the two). GEMMs accumulate in T inside BLAS: c_T = 2 (k + 2).
//   Exp/log-based losses use L = C + |z| + |lse| (the absolute error of z - lse in float64
//   turns into a relative error of exp).
// - on the emulator, the ops whose per-element arithmetic is the CPU's expression (elementwise,
//   broadcast, optimizers, dropout, gather) must also be bitwise equal to the CPU; on a GPU
//   nvcc may contract a*b+c into an FMA, so only the bound applies there;
// - every op whose kernel uses __syncthreads or warp shuffles (sum, dot, sum_rows and batched,
//   argmax, softmax, softmax_xent, softmax_xent_hvp, mse) is run with the fibers scheduled
//   forward, reversed and in two random orders, and the four results must be bitwise equal.
#include <doctest/doctest.h>

#if defined(IIF_CUDA_BACKEND)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "attribution/projector.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/device.h"
#include "engine/ops.h"
#include "engine/tensor.h"
#include "nn/models.h"
#include "nn/trainer.h"

#if defined(IIF_CUDA_EMULATED)
#include "kernels/simt/runtime.h"
#endif

using namespace iif;

namespace {

const Device kCuda{DeviceKind::cuda, 0};
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kSentinel = -12345.5;  // exact in float32
constexpr int64_t kGuard = 37;
constexpr double kU64 = 1.1102230246251565e-16;  // 2^-53

#if defined(IIF_CUDA_EMULATED)
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif

bool have_device() {
  static const bool ok = [] {
    const bool a = cuda::available();
    if (a) cuda::register_backend();
    else std::printf("no CUDA device (cudaGetDeviceCount = 0): test_cuda_backend skipped\n");
    return a;
  }();
  return ok;
}
#define REQUIRE_DEVICE() \
  if (!have_device()) return

double unit(DType t) { return t == DType::f32 ? 5.9604644775390625e-08 : kU64; }

std::vector<double> randoms(int64_t n, unsigned seed, double lo = -2.0, double hi = 2.0) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (double& x : v) x = d(g);
  return v;
}

// Rounds values to what dtype t stores, so host-side bounds see the numbers the ops see.
std::vector<double> stored(std::vector<double> v, DType t) {
  if (t == DType::f32)
    for (double& x : v) x = static_cast<double>(static_cast<float>(x));
  return v;
}

// Sprinkles NaN, +-Inf and -0 over v (about one entry in `every`).
void add_specials(std::vector<double>& v, unsigned seed, int every = 11) {
  std::mt19937 g(seed);
  const double specials[] = {kNaN, kInf, -kInf, -0.0};
  for (std::size_t i = 0; i < v.size(); ++i)
    if (g() % every == 0) v[i] = specials[g() % 4];
}

Tensor host(const std::vector<double>& v, const Shape& s, DType t) {
  return Tensor::from_vector(v, s, t, Device::cpu());
}

// A CUDA output: a view of the first numel entries of a buffer whose kGuard tail entries hold
// kSentinel. `init` gives the view's entries (NaN when the op must not read them).
struct Guarded {
  Tensor full, view;
  int64_t n = 0;
  Guarded(const Shape& s, DType t, const std::vector<double>& init) : n(s.numel()) {
    std::vector<double> v(init);
    v.resize(static_cast<std::size_t>(n), kNaN);
    v.insert(v.end(), kGuard, kSentinel);
    full = Tensor::from_vector(v, Shape{n + kGuard}, t, kCuda);
    view = full.rows(0, n).reshape(s);
  }
  bool guard_intact() const {
    const std::vector<double> v = full.to_vector();
    for (int64_t i = n; i < n + kGuard; ++i)
      if (!(v[static_cast<std::size_t>(i)] == kSentinel)) return false;
    return true;
  }
  std::vector<double> values() const { return view.to_vector(); }
};

bool bitwise_equal(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

// ref = CPU, got = CUDA, tol[i] the bound of entry i (see the header comment).
void expect_match(const std::string& what, const std::vector<double>& ref,
                  const std::vector<double>& got, const std::vector<double>& tol) {
  REQUIRE(ref.size() == got.size());
  int bad = 0;
  std::string first;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double r = ref[i], g = got[i];
    bool ok;
    if (std::isnan(r))
      ok = std::isnan(g);
    else if (std::isinf(r))
      ok = g == r;
    else if (!std::isfinite(tol[i]))  // a NaN/Inf term the op masks out (relu_backward, ...)
      ok = g == r;
    else
      ok = std::isfinite(g) && std::fabs(g - r) <= tol[i];
    if (!ok && bad++ == 0) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "entry %zu: cpu %.17g cuda %.17g tol %.3g", i, r, g, tol[i]);
      first = buf;
    }
  }
  INFO(what << ": " << bad << " of " << ref.size() << " entries differ; first " << first);
  CHECK(bad == 0);
}

// Under the emulator: runs fn in forward, reversed and two random fiber orders and requires
// bitwise-equal results; returns them. Natively: runs fn once.
std::vector<double> in_all_orders(const std::string& what, const std::function<std::vector<double>()>& fn) {
#if defined(IIF_CUDA_EMULATED)
  std::vector<double> first;
  const simt::Schedule orders[] = {simt::Schedule::forward, simt::Schedule::reversed,
                                   simt::Schedule::random, simt::Schedule::random};
  for (int i = 0; i < 4; ++i) {
    simt::Options o = simt::options();
    o.schedule = orders[i];
    o.seed = static_cast<std::uint64_t>(i);
    simt::ScopedOptions scope(o);
    std::vector<double> r = fn();
    if (i == 0) {
      first = r;
    } else {
      INFO(what << ": schedule " << std::string(simt::schedule_name(orders[i])) << " seed " << i
                << " changed the result bits");
      CHECK(bitwise_equal(first, r));
    }
  }
  return first;
#else
  (void)what;
  return fn();
#endif
}

const DType kTypes[] = {DType::f32, DType::f64};
const int64_t kSizes[] = {1, 7, 33, 257, 1000, 4099};
struct RC {
  int64_t rows, cols;
};
const RC kShapes[] = {{1, 1}, {7, 33}, {33, 7}, {257, 10}, {1031, 3}, {5, 1000}, {2, 1025}};

std::string label(const char* op, DType t, const Shape& s) {
  return std::string(op) + " " + dtype_name(t) + " " + s.str();
}
std::string what_channel(DType t, const Shape& s, int mode) {
  return label(mode == 0 ? "channel_affine (scale)" : mode == 1 ? "channel_affine (shift)" : "channel_affine", t, s);
}

// The elementwise ops: bound c_T = 2 on S_i (one rounding each, or an FMA on a GPU).
void check_elementwise(const std::string& what, DType t, const std::vector<double>& ref,
                       const std::vector<double>& got, const std::vector<double>& s) {
  std::vector<double> tol(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) tol[i] = 2.0 * unit(t) * s[i];
  expect_match(what, ref, got, tol);
  if (kEmulated) {
    INFO(what << ": the emulated kernel computes the CPU's expression and must match it bitwise");
    CHECK(bitwise_equal(ref, got));
  }
}

}  // namespace

// ---- memory, copies, device layer ---------------------------------------------------------

static void case_copies_casts_pool() {  // registration, copies, casts and the caching pool
  REQUIRE_DEVICE();
  CHECK(backend_for(kCuda).device() == kCuda);
  CHECK(backend_for(kCuda).name().find("cuda") == 0);
  for (DType t : kTypes)
    for (int64_t n : kSizes) {
      std::vector<double> v = randoms(n, 1);
      add_specials(v, 2);
      const Tensor c = host(v, Shape{n}, t);
      const Tensor d = c.to(kCuda);
      CHECK(d.device() == kCuda);
      CHECK(bitwise_equal(d.to_vector(), c.to_vector()));
      const Tensor d2 = d.clone();  // copy_on_device
      CHECK(bitwise_equal(d2.to_vector(), c.to_vector()));
      // cast: float64 <-> float32 on the device, as on the CPU
      const DType o = t == DType::f32 ? DType::f64 : DType::f32;
      Guarded g(Shape{n}, o, {});
      backend_for(kCuda).cast(d, g.view);
      Tensor ref = Tensor::empty(Shape{n}, o);
      cpu_backend().cast(c, ref);
      CHECK(bitwise_equal(g.values(), ref.to_vector()));
      CHECK(g.guard_intact());
    }
  {  // events around device work: a non-negative elapsed time
    cuda::dev::Event start, stop;
    start.record();
    Tensor big = Tensor::full(Shape{100000}, 1.0, DType::f32, kCuda);
    stop.record();
    CHECK(stop.elapsed_ms_since(start) >= 0.0f);
  }
  const cuda::dev::PoolStats before = cuda::dev::pool_stats();
  for (int i = 0; i < 10; ++i) Tensor::empty(Shape{1000}, DType::f32, kCuda);
  const cuda::dev::PoolStats after = cuda::dev::pool_stats();
#if !defined(__SANITIZE_ADDRESS__)  // ASan builds allocate exactly, without the pool
  CHECK(after.hits >= before.hits + 9);  // the same block comes back from the cache
#else
  (void)after;
#endif
}

static void case_elementwise() {  // fill, axpby, mul, relu, relu_backward
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  std::vector<int64_t> sizes(std::begin(kSizes), std::end(kSizes));
  sizes.push_back(300007);  // more than the 1024 x 256 threads of a launch: grid-stride loop
  for (DType t : kTypes)
    for (int64_t n : sizes) {
      const Shape s{n};
      std::vector<double> x = randoms(n, 3), y = randoms(n, 4);
      add_specials(x, 5);
      add_specials(y, 6, 13);
      x = stored(x, t);
      y = stored(y, t);
      const Tensor xc = host(x, s, t), xd = xc.to(kCuda);
      const Tensor yc0 = host(y, s, t), yd0 = yc0.to(kCuda);
      {  // fill
        Guarded g(s, t, {});
        cb.fill(g.view, -0.75);
        Tensor r = Tensor::empty(s, t);
        hb.fill(r, -0.75);
        check_elementwise(label("fill", t, s), t, r.to_vector(), g.values(), std::vector<double>(n, 1.0));
        CHECK(g.guard_intact());
      }
      for (double b : {0.0, -1.5}) {  // axpby; b == 0 must not read y (NaN there stays out)
        const double a = 0.7;
        Guarded g(s, t, b == 0.0 ? std::vector<double>() : y);
        cb.axpby(a, xd, b, g.view);
        Tensor r = b == 0.0 ? Tensor::full(s, kNaN, t) : yc0.clone();
        hb.axpby(a, xc, b, r);
        std::vector<double> S(n);
        for (int64_t i = 0; i < n; ++i) S[i] = std::fabs(a * x[i]) + (b == 0.0 ? 0.0 : std::fabs(b * y[i]));
        check_elementwise(label("axpby", t, s) + " b=" + std::to_string(b), t, r.to_vector(), g.values(), S);
        CHECK(g.guard_intact());
      }
      if (n > 5000) continue;  // the large size only for the grid-stride check above
      {  // mul, also in place (out aliases a)
        Guarded g(s, t, {});
        cb.mul(xd, yd0, g.view);
        Tensor r = Tensor::empty(s, t);
        hb.mul(xc, yc0, r);
        std::vector<double> S(n);
        for (int64_t i = 0; i < n; ++i) S[i] = std::fabs(x[i] * y[i]);
        check_elementwise(label("mul", t, s), t, r.to_vector(), g.values(), S);
        CHECK(g.guard_intact());
        Tensor inplace = xd.clone();
        cb.mul(inplace, yd0, inplace);
        CHECK(bitwise_equal(inplace.to_vector(), g.values()));
      }
      {  // relu
        Guarded g(s, t, {});
        cb.relu(xd, g.view);
        Tensor r = Tensor::empty(s, t);
        hb.relu(xc, r);
        std::vector<double> S(x);
        for (double& v : S) v = std::fabs(v);
        check_elementwise(label("relu", t, s), t, r.to_vector(), g.values(), S);
        CHECK(g.guard_intact());
      }
      for (double beta : {0.0, 0.5}) {  // relu_backward
        std::vector<double> dx = stored(randoms(n, 8), t);
        Guarded g(s, t, beta == 0.0 ? std::vector<double>() : dx);
        cb.relu_backward(xd, yd0, beta, g.view);
        Tensor r = beta == 0.0 ? Tensor::full(s, kNaN, t) : host(dx, s, t);
        hb.relu_backward(xc, yc0, beta, r);
        std::vector<double> S(n);
        for (int64_t i = 0; i < n; ++i) S[i] = std::fabs(y[i]) + std::fabs(beta * dx[i]);
        check_elementwise(label("relu_backward", t, s), t, r.to_vector(), g.values(), S);
        CHECK(g.guard_intact());
      }
    }
}

static void case_broadcast_gather() {  // add_row_vector, gather_rows (plain and batched broadcast)
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  for (DType t : kTypes)
    for (const RC& rc : kShapes) {
      const Shape s{rc.rows, rc.cols};
      std::vector<double> y = stored(randoms(s.numel(), 9), t), v = stored(randoms(rc.cols, 10), t);
      add_specials(v, 11, 7);
      {
        Guarded g(s, t, y);
        cb.add_row_vector(host(v, Shape{rc.cols}, t).to(kCuda), g.view);
        Tensor r = host(y, s, t);
        hb.add_row_vector(host(v, Shape{rc.cols}, t), r);
        std::vector<double> S(s.numel());
        for (int64_t i = 0; i < s.numel(); ++i) S[i] = std::fabs(y[i]) + std::fabs(v[i % rc.cols]);
        check_elementwise(label("add_row_vector", t, s), t, r.to_vector(), g.values(), S);
        CHECK(g.guard_intact());
      }
      {  // batched: 3 problems
        const int64_t B = 3;
        const Shape sb{B, rc.rows, rc.cols};
        std::vector<double> yb = stored(randoms(sb.numel(), 12), t), vb = stored(randoms(B * rc.cols, 13), t);
        Guarded g(sb, t, yb);
        cb.add_row_vector_batched(host(vb, Shape{B, rc.cols}, t).to(kCuda), g.view);
        Tensor r = host(yb, sb, t);
        hb.add_row_vector_batched(host(vb, Shape{B, rc.cols}, t), r);
        std::vector<double> S(sb.numel());
        for (int64_t i = 0; i < sb.numel(); ++i)
          S[i] = std::fabs(yb[i]) + std::fabs(vb[(i / (rc.rows * rc.cols)) * rc.cols + i % rc.cols]);
        check_elementwise(label("add_row_vector_batched", t, sb), t, r.to_vector(), g.values(), S);
        CHECK(g.guard_intact());
      }
      {  // gather_rows: repeated and out-of-order indices
        std::vector<double> x = stored(randoms(s.numel(), 14), t);
        add_specials(x, 15);
        std::vector<int64_t> index;
        std::mt19937 gen(16);
        for (int64_t i = 0; i < rc.rows + 5; ++i) index.push_back(static_cast<int64_t>(gen() % rc.rows));
        const Shape so{static_cast<int64_t>(index.size()), rc.cols};
        Guarded g(so, t, {});
        cb.gather_rows(host(x, s, t).to(kCuda), index, g.view);
        Tensor r = Tensor::empty(so, t);
        hb.gather_rows(host(x, s, t), index, r);
        CHECK(bitwise_equal(r.to_vector(), g.values()));
        CHECK(g.guard_intact());
      }
    }
}

static void case_dropout() {  // dropout masks equal the CPU's bit for bit (plain and batched)
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  for (DType t : kTypes)
    for (int64_t n : kSizes)
      for (double p : {0.1, 0.5}) {
        const Shape s{n};
        Guarded g(s, t, {});
        cb.dropout_mask(g.view, p, 1234567, (uint64_t(7) << 32) + 3);
        Tensor r = Tensor::empty(s, t);
        hb.dropout_mask(r, p, 1234567, (uint64_t(7) << 32) + 3);
        INFO(label("dropout_mask", t, s) << " p=" << p);
        CHECK(bitwise_equal(r.to_vector(), g.values()));  // also on a GPU: no arithmetic to contract
        CHECK(g.guard_intact());
        const int64_t B = 3;
        const Shape sb{B, n};
        const std::vector<uint64_t> seeds = {1, 99, 1ull << 40}, streams = {0, 5, (1ull << 33) + 1};
        Guarded gb(sb, t, {});
        cb.dropout_mask_batched(gb.view, p, seeds, streams);
        Tensor rb = Tensor::empty(sb, t);
        hb.dropout_mask_batched(rb, p, seeds, streams);
        CHECK(bitwise_equal(rb.to_vector(), gb.values()));
        CHECK(gb.guard_intact());
      }
}

// ---- reductions ---------------------------------------------------------------------------

static void case_sum_dot() {  // sum and dot (float64 results), in every schedule order
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  std::vector<int64_t> sizes(std::begin(kSizes), std::end(kSizes));
  sizes.push_back(0);
  sizes.push_back(100003);  // more than the 256 x 256 threads of the first pass
  for (DType t : kTypes)
    for (int64_t n : sizes) {
      const Shape s{n};
      const std::vector<double> x = stored(randoms(n, 17), t), y = stored(randoms(n, 18), t);
      const Tensor xc = host(x, s, t), yc = host(y, s, t);
      const Tensor xd = xc.to(kCuda), yd = yc.to(kCuda);
      double sx = 0, sxy = 0;
      for (int64_t i = 0; i < n; ++i) {
        sx += std::fabs(x[i]);
        sxy += std::fabs(x[i] * y[i]);
      }
      const double L = static_cast<double>(n) + 2.0;
      const std::vector<double> got = in_all_orders(label("sum/dot", t, s), [&] {
        return std::vector<double>{cb.sum(xd), cb.dot(xd, yd)};
      });
      // float64 results from T inputs (products of two floats are exact in float64): only the
      // two summation orders differ, 2 L u_64 S.
      expect_match(label("sum", t, s), {hb.sum(xc)}, {got[0]}, {2 * L * kU64 * sx});
      expect_match(label("dot", t, s), {hb.dot(xc, yc)}, {got[1]}, {2 * L * kU64 * sxy + 4 * kU64 * sxy});
    }
  // NaN and Inf propagate as on the CPU.
  for (DType t : kTypes) {
    std::vector<double> x = randoms(1000, 19);
    x[500] = kInf;
    CHECK(std::isinf(cb.sum(host(x, Shape{1000}, t).to(kCuda))));
    x[10] = kNaN;
    CHECK(std::isnan(cb.sum(host(x, Shape{1000}, t).to(kCuda))));
    CHECK(std::isnan(cb.dot(host(x, Shape{1000}, t).to(kCuda), host(x, Shape{1000}, t).to(kCuda))));
  }
}

static void case_sum_rows() {  // sum_rows and sum_rows_batched, in every schedule order
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  std::vector<RC> shapes(std::begin(kShapes), std::end(kShapes));
  shapes.push_back({1000, 33});
  shapes.push_back({0, 5});
  for (DType t : kTypes)
    for (const RC& rc : shapes)
      for (double beta : {0.0, 0.5}) {
        const int64_t B = 3;
        for (bool batched : {false, true}) {
          const Shape sx = batched ? Shape{B, rc.rows, rc.cols} : Shape{rc.rows, rc.cols};
          const Shape so = batched ? Shape{B, rc.cols} : Shape{rc.cols};
          std::vector<double> x = stored(randoms(sx.numel(), 20), t), o = stored(randoms(so.numel(), 21), t);
          if (sx.numel() > 3) x[3] = kInf;
          if (sx.numel() > 40) x[40] = kNaN;
          const Tensor xd = host(x, sx, t).to(kCuda);
          Tensor r = beta == 0.0 ? Tensor::full(so, kNaN, t) : host(o, so, t);
          const std::string what = label(batched ? "sum_rows_batched" : "sum_rows", t, sx) +
                                   " beta=" + std::to_string(beta);
          bool guards = true;
          const std::vector<double> got = in_all_orders(what, [&] {
            Guarded g(so, t, beta == 0.0 ? std::vector<double>() : o);
            if (batched)
              cb.sum_rows_batched(xd, beta, g.view);
            else
              cb.sum_rows(xd, beta, g.view);
            guards = guards && g.guard_intact();
            return g.values();
          });
          if (batched)
            hb.sum_rows_batched(host(x, sx, t), beta, r);
          else
            hb.sum_rows(host(x, sx, t), beta, r);
          std::vector<double> tol(so.numel(), 0.0);
          const int64_t nb = batched ? B : 1;
          for (int64_t k = 0; k < nb; ++k)
            for (int64_t c = 0; c < rc.cols; ++c) {
              double S = beta == 0.0 ? 0.0 : std::fabs(beta * o[k * rc.cols + c]);
              for (int64_t rr = 0; rr < rc.rows; ++rr) S += std::fabs(x[(k * rc.rows + rr) * rc.cols + c]);
              tol[k * rc.cols + c] = (2 * unit(t) + 2 * (rc.rows + 2) * kU64) * S;
            }
          expect_match(what, r.to_vector(), got, tol);
          CHECK(guards);
        }
      }
}

static void case_argmax_rows() {  // argmax_rows (ties, NaN, -0), in every schedule order
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  std::vector<RC> shapes(std::begin(kShapes), std::end(kShapes));
  for (DType t : kTypes)
    for (const RC& rc : shapes) {
      const Shape s{rc.rows, rc.cols};
      std::vector<double> x = randoms(s.numel(), 22);
      std::mt19937 g(23);
      for (double& v : x)  // coarse values: many ties
        v = std::round(v * 2.0) / 2.0;
      add_specials(x, 24, 9);
      if (rc.rows > 1) x[rc.cols] = kNaN;                    // NaN in column 0 of row 1: answer 0
      if (rc.rows > 2)
        for (int64_t c = 0; c < rc.cols; ++c) x[2 * rc.cols + c] = kNaN;  // all NaN: 0
      if (rc.rows > 3)
        for (int64_t c = 0; c < rc.cols; ++c) x[3 * rc.cols + c] = c % 2 ? -0.0 : 0.0;  // +-0 tie
      const Tensor xd = host(x, s, t).to(kCuda);
      const std::vector<double> got = in_all_orders(label("argmax_rows", t, s), [&] {
        const std::vector<int64_t> a = cb.argmax_rows(xd);
        return std::vector<double>(a.begin(), a.end());
      });
      const std::vector<int64_t> ref = hb.argmax_rows(host(x, s, t));
      INFO(label("argmax_rows", t, s));
      CHECK(bitwise_equal(std::vector<double>(ref.begin(), ref.end()), got));
    }
}

// ---- losses -------------------------------------------------------------------------------

namespace {
// Logits with a few rows of special values: +Inf, NaN, all -Inf, huge values.
std::vector<double> logits_with_specials(const RC& rc, DType t, unsigned seed) {
  std::vector<double> z = stored(randoms(rc.rows * rc.cols, seed, -6.0, 6.0), t);
  if (rc.rows > 4) {
    z[1 * rc.cols] = kInf;
    z[2 * rc.cols + rc.cols / 2] = kNaN;
    for (int64_t c = 0; c < rc.cols; ++c) z[3 * rc.cols + c] = -kInf;
    for (int64_t c = 0; c < rc.cols; ++c) z[4 * rc.cols + c] = 1e30 * (c % 3 ? 1 : -1);
  }
  return z;
}
std::vector<double> soft_targets(const RC& rc, DType t, unsigned seed) {
  std::vector<double> v = randoms(rc.rows * rc.cols, seed, 0.0, 1.0);
  for (std::size_t i = 0; i < v.size(); i += 3) v[i] = 0.0;  // exact zeros (skipped in the loss)
  return stored(v, t);
}
// Per row: L = C + max|z| + |lse| (finite entries), the length factor of the exp/log bounds.
std::vector<double> row_factor(const std::vector<double>& z, const RC& rc, std::vector<double>& p) {
  std::vector<double> L(rc.rows);
  p.assign(z.size(), 0.0);
  for (int64_t r = 0; r < rc.rows; ++r) {
    double m = -kInf, zm = 0;
    for (int64_t c = 0; c < rc.cols; ++c) m = std::max(m, z[r * rc.cols + c]);
    double s = 0;
    for (int64_t c = 0; c < rc.cols; ++c) s += std::exp(z[r * rc.cols + c] - m);
    const double lse = m + std::log(s);
    for (int64_t c = 0; c < rc.cols; ++c) {
      zm = std::max(zm, std::fabs(z[r * rc.cols + c]));
      p[r * rc.cols + c] = std::exp(z[r * rc.cols + c] - lse);
    }
    L[r] = static_cast<double>(rc.cols) + zm + std::fabs(lse) + 2.0;
  }
  return L;
}
}  // namespace

static void case_losses() {  // softmax, softmax_xent (loss + dlogits), softmax_xent_hvp, mse
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  for (DType t : kTypes)
    for (const RC& rc : kShapes) {
      const Shape s{rc.rows, rc.cols}, sl{rc.rows};
      const std::vector<double> z = logits_with_specials(rc, t, 25), tg = soft_targets(rc, t, 26);
      const std::vector<double> d = stored(randoms(s.numel(), 27), t);
      std::vector<double> p;
      const std::vector<double> L = row_factor(z, rc, p);
      const Tensor zc = host(z, s, t), tc = host(tg, s, t), dc = host(d, s, t);
      const Tensor zd = zc.to(kCuda), td = tc.to(kCuda), dd = dc.to(kCuda);
      const double uT = unit(t);
      auto tol_of = [&](int64_t r, double S) { return (2 * uT + 8 * L[r] * kU64) * S; };

      {  // softmax
        bool guards = true;
        const std::vector<double> got = in_all_orders(label("softmax", t, s), [&] {
          Guarded g(s, t, {});
          cb.softmax(zd, g.view);
          guards = guards && g.guard_intact();
          return g.values();
        });
        Tensor r = Tensor::empty(s, t);
        hb.softmax(zc, r);
        std::vector<double> tol(s.numel());
        for (int64_t i = 0; i < s.numel(); ++i) tol[i] = tol_of(i / rc.cols, p[i]);
        expect_match(label("softmax", t, s), r.to_vector(), got, tol);
        CHECK(guards);
      }
      for (bool with_grad : {true, false}) {  // softmax_xent
        bool guards = true;
        const std::vector<double> got = in_all_orders(label("softmax_xent", t, s), [&] {
          Guarded gl(sl, t, {}), gd(s, t, {});
          cb.softmax_xent(zd, td, gl.view, with_grad ? &gd.view : nullptr);
          guards = guards && gl.guard_intact() && gd.guard_intact();
          std::vector<double> out = gl.values();
          if (with_grad) {
            const std::vector<double> g2 = gd.values();
            out.insert(out.end(), g2.begin(), g2.end());
          }
          return out;
        });
        Tensor rl = Tensor::empty(sl, t), rd = Tensor::empty(s, t);
        hb.softmax_xent(zc, tc, rl, with_grad ? &rd : nullptr);
        std::vector<double> ref = rl.to_vector(), tol(rc.rows);
        for (int64_t r = 0; r < rc.rows; ++r) {
          double S = 0, lse = 0, m = -kInf, sum = 0;
          for (int64_t c = 0; c < rc.cols; ++c) m = std::max(m, z[r * rc.cols + c]);
          for (int64_t c = 0; c < rc.cols; ++c) sum += std::exp(z[r * rc.cols + c] - m);
          lse = m + std::log(sum);
          for (int64_t c = 0; c < rc.cols; ++c)
            S += tg[r * rc.cols + c] * (std::fabs(z[r * rc.cols + c]) + std::fabs(lse));
          tol[r] = tol_of(r, S);
        }
        if (with_grad) {
          const std::vector<double> g2 = rd.to_vector();
          ref.insert(ref.end(), g2.begin(), g2.end());
          for (int64_t r = 0; r < rc.rows; ++r) {
            double ts = 0;
            for (int64_t c = 0; c < rc.cols; ++c) ts += tg[r * rc.cols + c];
            for (int64_t c = 0; c < rc.cols; ++c)
              tol.push_back(tol_of(r, ts * p[r * rc.cols + c] + tg[r * rc.cols + c]));
          }
        }
        expect_match(label("softmax_xent", t, s), ref, got, tol);
        CHECK(guards);
      }
      for (bool alias : {false, true}) {  // softmax_xent_hvp (out may alias dir)
        bool guards = true;
        const std::vector<double> got = in_all_orders(label("softmax_xent_hvp", t, s), [&] {
          Guarded g(s, t, alias ? d : std::vector<double>());
          cb.softmax_xent_hvp(zd, td, alias ? g.view : dd, g.view);
          guards = guards && g.guard_intact();
          return g.values();
        });
        Tensor r = Tensor::empty(s, t);
        hb.softmax_xent_hvp(zc, tc, dc, r);
        std::vector<double> tol(s.numel());
        for (int64_t r2 = 0; r2 < rc.rows; ++r2) {
          double ts = 0, pd = 0;
          for (int64_t c = 0; c < rc.cols; ++c) {
            ts += tg[r2 * rc.cols + c];
            pd += p[r2 * rc.cols + c] * std::fabs(d[r2 * rc.cols + c]);
          }
          for (int64_t c = 0; c < rc.cols; ++c) {
            const int64_t i = r2 * rc.cols + c;
            tol[i] = tol_of(r2, ts * p[i] * (std::fabs(d[i]) + pd));
          }
        }
        expect_match(label("softmax_xent_hvp", t, s) + (alias ? " aliased" : ""), r.to_vector(), got, tol);
        CHECK(guards);
      }
      for (bool with_grad : {true, false}) {  // mse
        std::vector<double> pr = stored(randoms(s.numel(), 28), t);
        add_specials(pr, 29, 17);
        const Tensor pc = host(pr, s, t), pdv = pc.to(kCuda);
        bool guards = true;
        const std::vector<double> got = in_all_orders(label("mse", t, s), [&] {
          Guarded gl(sl, t, {}), gd(s, t, {});
          cb.mse(pdv, dd, gl.view, with_grad ? &gd.view : nullptr);
          guards = guards && gl.guard_intact() && gd.guard_intact();
          std::vector<double> out = gl.values();
          if (with_grad) {
            const std::vector<double> g2 = gd.values();
            out.insert(out.end(), g2.begin(), g2.end());
          }
          return out;
        });
        Tensor rl = Tensor::empty(sl, t), rd = Tensor::empty(s, t);
        hb.mse(pc, dc, rl, with_grad ? &rd : nullptr);
        std::vector<double> ref = rl.to_vector(), tol(rc.rows);
        for (int64_t r = 0; r < rc.rows; ++r) {
          double S = 0;
          for (int64_t c = 0; c < rc.cols; ++c) {
            const double e = pr[r * rc.cols + c] - d[r * rc.cols + c];
            S += e * e;
          }
          tol[r] = (2 * uT + 2 * (rc.cols + 2) * kU64) * S;
        }
        if (with_grad) {
          const std::vector<double> g2 = rd.to_vector();
          ref.insert(ref.end(), g2.begin(), g2.end());
          for (int64_t i = 0; i < s.numel(); ++i)
            tol.push_back(2 * uT * 2 * (std::fabs(pr[i]) + std::fabs(d[i])));
        }
        expect_match(label("mse", t, s), ref, got, tol);
        CHECK(guards);
      }
    }
}

// ---- linear algebra -----------------------------------------------------------------------

namespace {
// |A| and friends for the bounds: the same op on absolute values, in float64.
Tensor abs_f64(const std::vector<double>& v, const Shape& s) {
  std::vector<double> a(v);
  for (double& x : a) x = std::fabs(x);
  return host(a, s, DType::f64);
}
}  // namespace

static void case_gemm() {  // gemm and gemm_batched (all transposes, beta, k = 0, shared operands)
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  struct MNK {
    int64_t m, n, k;
  };
  const MNK dims[] = {{1, 1, 1}, {7, 33, 5}, {33, 7, 257}, {64, 10, 1000}, {3, 4, 0}, {0, 3, 2}};
  for (DType t : kTypes)
    for (const MNK& d : dims)
      for (int tr = 0; tr < 4; ++tr)
        for (double beta : {0.0, 0.5}) {
          const bool ta = tr & 1, tb = tr & 2;
          const Shape sa = ta ? Shape{d.k, d.m} : Shape{d.m, d.k};
          const Shape sb = tb ? Shape{d.n, d.k} : Shape{d.k, d.n};
          const Shape sc{d.m, d.n};
          std::vector<double> a = stored(randoms(sa.numel(), 30), t), b = stored(randoms(sb.numel(), 31), t);
          std::vector<double> c = stored(randoms(sc.numel(), 32), t);
          const double alpha = 1.25;
          const std::string what = label("gemm", t, sc) + " k=" + std::to_string(d.k) + " ta=" +
                                   std::to_string(ta) + " tb=" + std::to_string(tb) +
                                   " beta=" + std::to_string(beta);
          Guarded g(sc, t, beta == 0.0 ? std::vector<double>() : c);
          cb.gemm(ta, tb, alpha, host(a, sa, t).to(kCuda), host(b, sb, t).to(kCuda), beta, g.view);
          Tensor r = beta == 0.0 ? Tensor::full(sc, kNaN, t) : host(c, sc, t);
          hb.gemm(ta, tb, alpha, host(a, sa, t), host(b, sb, t), beta, r);
          Tensor S = beta == 0.0 ? Tensor::zeros(sc, DType::f64) : abs_f64(c, sc);
          if (d.m > 0 && d.n > 0)
            hb.gemm(ta, tb, alpha, abs_f64(a, sa), abs_f64(b, sb), std::fabs(beta), S);
          std::vector<double> tol = S.to_vector();
          for (double& x : tol) x *= 2.0 * (d.k + 2) * unit(t);
          expect_match(what, r.to_vector(), g.values(), tol);
          CHECK(g.guard_intact());

          // batched: 3 problems, A shared (2-D) in half of the cases
          const int64_t B = 3;
          const bool shared_a = tr % 2 == 0;
          const Shape sab = shared_a ? sa : Shape{B, sa[0], sa[1]};
          const Shape sbb{B, sb[0], sb[1]}, scb{B, d.m, d.n};
          std::vector<double> ab = stored(randoms(sab.numel(), 33), t), bb = stored(randoms(sbb.numel(), 34), t);
          std::vector<double> cbv = stored(randoms(scb.numel(), 35), t);
          Guarded gb(scb, t, beta == 0.0 ? std::vector<double>() : cbv);
          cb.gemm_batched(ta, tb, alpha, host(ab, sab, t).to(kCuda), host(bb, sbb, t).to(kCuda), beta, gb.view);
          Tensor rb = beta == 0.0 ? Tensor::full(scb, kNaN, t) : host(cbv, scb, t);
          hb.gemm_batched(ta, tb, alpha, host(ab, sab, t), host(bb, sbb, t), beta, rb);
          Tensor Sb = beta == 0.0 ? Tensor::zeros(scb, DType::f64) : abs_f64(cbv, scb);
          if (d.m > 0 && d.n > 0)
            hb.gemm_batched(ta, tb, alpha, abs_f64(ab, sab), abs_f64(bb, sbb), std::fabs(beta), Sb);
          std::vector<double> tolb = Sb.to_vector();
          for (double& x : tolb) x *= 2.0 * (d.k + 2) * unit(t);
          expect_match(what + " batched" + (shared_a ? " shared A" : ""), rb.to_vector(), gb.values(), tolb);
          CHECK(gb.guard_intact());
        }
}

static void case_syrk() {  // syrk (overwrite and accumulate, N = 0) is exactly symmetric
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  const RC dims[] = {{1, 1}, {7, 33}, {257, 7}, {1000, 10}, {0, 5}, {40, 65}};  // (N, P)
  for (DType t : kTypes)
    for (const RC& d : dims)
      for (double beta : {0.0, 1.0, 0.5}) {
        const Shape su{d.rows, d.cols}, sc{d.cols, d.cols};
        const std::vector<double> u = stored(randoms(su.numel(), 36), t);
        std::vector<double> c(sc.numel());  // symmetric on entry
        {
          const std::vector<double> rnd = stored(randoms(sc.numel(), 37), t);
          for (int64_t i = 0; i < d.cols; ++i)
            for (int64_t j = 0; j < d.cols; ++j) c[i * d.cols + j] = rnd[std::min(i, j) * d.cols + std::max(i, j)];
        }
        Guarded g(sc, t, beta == 0.0 ? std::vector<double>() : c);
        cb.syrk(0.75, host(u, su, t).to(kCuda), beta, g.view);
        Tensor r = beta == 0.0 ? Tensor::full(sc, kNaN, t) : host(c, sc, t);
        hb.syrk(0.75, host(u, su, t), beta, r);
        Tensor S = beta == 0.0 ? Tensor::zeros(sc, DType::f64) : abs_f64(c, sc);
        if (d.rows > 0) hb.gemm(true, false, 0.75, abs_f64(u, su), abs_f64(u, su), std::fabs(beta), S);
        std::vector<double> tol = S.to_vector();
        for (double& x : tol) x *= 2.0 * (d.rows + 2) * unit(t);
        const std::vector<double> got = g.values();
        expect_match(label("syrk", t, su) + " beta=" + std::to_string(beta), r.to_vector(), got, tol);
        CHECK(g.guard_intact());
        bool sym = true;
        for (int64_t i = 0; i < d.cols; ++i)
          for (int64_t j = 0; j < i; ++j) sym = sym && got[i * d.cols + j] == got[j * d.cols + i];
        CHECK(sym);
      }
}

static void case_cholesky() {  // batched_cholesky_solve (float64 solves; errors name k)
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  const RC dims[] = {{1, 1}, {7, 3}, {33, 1}, {65, 10}, {5, 0}};  // (P, R)
  for (DType t : kTypes)
    for (const RC& d : dims) {
      const int64_t K = 3, P = d.rows, R = d.cols;
      // A_k = U_k^T U_k / N (well conditioned with N = 2P + 3), damping 0.1 * (k + 1)
      std::vector<double> a(K * P * P, 0.0);
      const int64_t N = 2 * P + 3;
      for (int64_t k = 0; k < K; ++k) {
        const std::vector<double> uk = randoms(N * P, 38 + static_cast<unsigned>(k));
        for (int64_t i = 0; i < P; ++i)
          for (int64_t j = 0; j < P; ++j) {
            double s = 0;
            for (int64_t n = 0; n < N; ++n) s += uk[n * P + i] * uk[n * P + j];
            a[(k * P + i) * P + j] = s / N;
          }
      }
      a = stored(a, t);
      const std::vector<double> damping = {0.1, 0.2, 0.3};
      const std::vector<double> b = stored(randoms(K * P * R, 41), t);
      const Shape sa{K, P, P}, sb{K, P, R};
      Guarded g(sb, t, b);
      cb.batched_cholesky_solve(host(a, sa, t).to(kCuda), damping, g.view);
      Tensor r = host(b, sb, t);
      hb.batched_cholesky_solve(host(a, sa, t), damping, r);
      // float64 solves of systems with condition number below ~100 (eigenvalues of U^T U / N
      // with N = 2P + 3 lie in about [0.1, 6] here, plus damping): the two float64 solutions
      // differ by ~1e3 P u_64 |x|; T rounds them once (2 u_T).
      const std::vector<double> ref = r.to_vector();
      double xmax = 0;
      for (double x : ref) xmax = std::max(xmax, std::fabs(x));
      std::vector<double> tol(ref.size());
      for (std::size_t i = 0; i < ref.size(); ++i) tol[i] = 2 * unit(t) * std::fabs(ref[i]) + 1e3 * P * kU64 * xmax;
      expect_match(label("batched_cholesky_solve", t, sb), ref, g.values(), tol);
      CHECK(g.guard_intact());
      if (P < 2) continue;
      // Not positive definite at k = 1: both backends throw and name k = 1.
      std::vector<double> bad = a;
      for (int64_t i = 0; i < P; ++i) bad[(1 * P + i) * P + i] = -1.0;
      Tensor bd = host(b, sb, t).to(kCuda);
      std::string msg;
      try {
        cb.batched_cholesky_solve(host(bad, sa, t).to(kCuda), damping, bd);
      } catch (const std::runtime_error& e) {
        msg = e.what();
      }
      CHECK(msg.find("matrix k = 1") != std::string::npos);
      CHECK(msg.find("not positive definite") != std::string::npos);
      CHECK(msg.find("info = 1") != std::string::npos);
      // NaN at k = 2
      std::vector<double> nan = a;
      nan[2 * P * P + 1] = kNaN;
      msg.clear();
      try {
        cb.batched_cholesky_solve(host(nan, sa, t).to(kCuda), damping, bd);
      } catch (const std::runtime_error& e) {
        msg = e.what();
      }
      CHECK(msg.find("matrix k = 2") != std::string::npos);
      CHECK(msg.find("NaN or Inf") != std::string::npos);
    }
}

// ---- optimizers ---------------------------------------------------------------------------

static void case_optimizers() {  // fused sgd_step and adam_step over several steps
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  for (DType t : kTypes)
    for (int64_t n : kSizes) {
      const Shape s{n};
      const std::vector<double> p0 = stored(randoms(n, 42), t);
      for (int variant = 0; variant < 4; ++variant) {  // plain, momentum, nesterov + wd, dampening
        SgdParams h;
        h.lr = 0.05;
        h.momentum = variant == 0 ? 0.0 : 0.9;
        h.nesterov = variant == 2;
        h.weight_decay = variant == 2 ? 1e-2 : 0.0;
        h.dampening = variant == 3 ? 0.25 : 0.0;
        Guarded gp(s, t, p0), gv(s, t, std::vector<double>(n, 0.0));
        Tensor rp = host(p0, s, t), rv = Tensor::zeros(s, t);
        std::vector<double> S(n, 0.0);
        for (int step = 0; step < 3; ++step) {
          const std::vector<double> gr = stored(randoms(n, 43 + step), t);
          cb.sgd_step(gp.view, host(gr, s, t).to(kCuda), gv.view, h, step == 0);
          hb.sgd_step(rp, host(gr, s, t), rv, h, step == 0);
          for (int64_t i = 0; i < n; ++i) S[i] += std::fabs(gr[i]) * 4 + std::fabs(p0[i]);
        }
        check_elementwise(label("sgd_step", t, s) + " variant " + std::to_string(variant), t,
                          rp.to_vector(), gp.values(), S);
        CHECK(gp.guard_intact());
        CHECK(gv.guard_intact());
      }
      AdamParams h;
      h.lr = 1e-2;
      h.weight_decay = 1e-3;
      Guarded gp(s, t, p0), gm(s, t, std::vector<double>(n, 0.0)), gv(s, t, std::vector<double>(n, 0.0));
      Tensor rp = host(p0, s, t), rm = Tensor::zeros(s, t), rv = Tensor::zeros(s, t);
      for (int step = 1; step <= 3; ++step) {
        const std::vector<double> gr = stored(randoms(n, 50 + step), t);
        cb.adam_step(gp.view, host(gr, s, t).to(kCuda), gm.view, gv.view, h, step);
        hb.adam_step(rp, host(gr, s, t), rm, rv, h, step);
      }
      // Each step moves p by at most ~lr / (1 - beta1^t) * |m|/sqrt(v) (bounded by ~3 lr): the
      // bound is on the sum of |p0| and those steps.
      std::vector<double> S(n);
      for (int64_t i = 0; i < n; ++i) S[i] = std::fabs(p0[i]) + 100 * h.lr;
      check_elementwise(label("adam_step", t, s), t, rp.to_vector(), gp.values(), S);
      CHECK(gp.guard_intact());
      CHECK(gm.guard_intact());
      CHECK(gv.guard_intact());
    }
}

// ---- sort / top-k (device layer) ----------------------------------------------------------

TEST_CASE("cuda backend: top_k by device radix sort (ties by index)") {
  REQUIRE_DEVICE();
  for (DType t : kTypes)
    for (int64_t n : kSizes) {
      std::vector<double> x = randoms(n, 60);
      for (double& v : x) v = std::round(v * 4.0) / 4.0;  // ties
      if (n > 3) x[2] = kInf, x[3] = -kInf;
      x = stored(x, t);
      const int64_t k = std::min<int64_t>(n, 17);
      Tensor vals;
      std::vector<int64_t> idx;
      cuda::top_k(host(x, Shape{n}, t).to(kCuda), k, vals, idx);
      std::vector<int64_t> order(n);
      for (int64_t i = 0; i < n; ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[a] > x[b]; });
      order.resize(k);
      INFO("top_k " << dtype_name(t) << " n=" << n);
      CHECK(idx == order);
      const std::vector<double> v = vals.to_vector();
      for (int64_t i = 0; i < k; ++i) CHECK(v[i] == x[order[i]]);
    }
}

// ---- end to end: an MLP trained on the CUDA backend and on the CPU ------------------------

// ---- images (kernels/image.cuh) -------------------------------------------------------------

namespace {
Window2d win(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Window2d w;
  w.kh = kh;
  w.kw = kw;
  w.sh = sh;
  w.sw = sw;
  w.ph = ph;
  w.pw = pw;
  return w;
}
}  // namespace

static void case_image() {  // image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)
  REQUIRE_DEVICE();
  Backend& cb = backend_for(kCuda);
  Backend& hb = cpu_backend();
  const Shape shapes[] = {{2, 3, 7, 9}, {1, 5, 33, 6}, {3, 1, 4, 4}, {1, 2, 1, 1}, {2, 2, 5, 3}};
  for (DType t : kTypes)
    for (const Shape& xs : shapes) {
      const int64_t h = xs[2], w = xs[3];
      const std::vector<Window2d> windows = {win(3, 3, 1, 1, 1, 1), win(3, 3, 2, 2, 1, 1), win(2, 2, 2, 2, 0, 0),
                                             win(3, 2, 2, 1, 1, 0), win(5, 5, 1, 1, 2, 2), win(h, w, 1, 1, 0, 0),
                                             win(1, 1, 1, 1, 0, 0)};
      // Pixels on a coarse grid (ties inside windows), with NaN, +-Inf and -0 sprinkled in.
      std::vector<double> xv = randoms(xs.numel(), 60);
      for (double& v : xv) v = std::floor(v * 2.0) / 2.0;
      add_specials(xv, 61, 13);
      const Tensor xh = host(xv, xs, t), xd = xh.to(kCuda);
      for (const Window2d& wn : windows) {
        if (h + 2 * wn.ph < wn.kh || w + 2 * wn.pw < wn.kw) continue;
        const int64_t oh = wn.out_h(h), ow = wn.out_w(w);
        const std::string what = label("image", t, xs) + " window " + std::to_string(wn.kh) + "x" +
                                 std::to_string(wn.kw) + " s" + std::to_string(wn.sh) + "x" + std::to_string(wn.sw) +
                                 " p" + std::to_string(wn.ph) + "x" + std::to_string(wn.pw);
        // im2col: a copy, bitwise everywhere.
        const Shape cs{xs[0] * oh * ow, xs[1] * wn.kh * wn.kw};
        {
          Guarded g(cs, t, {});
          cb.im2col(xd, wn, g.view);
          Tensor r = Tensor::empty(cs, t);
          hb.im2col(xh, wn, r);
          INFO(what << ": im2col");
          CHECK(bitwise_equal(r.to_vector(), g.values()));
          CHECK(g.guard_intact());
        }
        // col2im: each pixel sums its patches in the CPU's order; beta 0 (x not read) and 0.5.
        const std::vector<double> cv = stored(randoms(cs.numel(), 62), t);
        for (double beta : {0.0, 0.5}) {
          const std::vector<double> x0 = stored(randoms(xs.numel(), 63), t);
          Guarded g(xs, t, beta == 0.0 ? std::vector<double>() : x0);
          cb.col2im(host(cv, cs, t).to(kCuda), wn, beta, g.view);
          Tensor r = host(beta == 0.0 ? std::vector<double>(static_cast<std::size_t>(xs.numel()), kNaN) : x0, xs, t);
          hb.col2im(host(cv, cs, t), wn, beta, r);
          // Bound: every pixel sums at most kh*kw terms of |c| <= 2, plus |beta x|.
          std::vector<double> tol(static_cast<std::size_t>(xs.numel()), 2.0 * (wn.kh * wn.kw + 2) * unit(t) * (2.0 * wn.kh * wn.kw + 2.0));
          expect_match(what + ": col2im beta=" + std::to_string(beta), r.to_vector(), g.values(), tol);
          if (kEmulated) CHECK(bitwise_equal(r.to_vector(), g.values()));
          CHECK(g.guard_intact());
        }
        if (2 * wn.ph > wn.kh || 2 * wn.pw > wn.kw) continue;
        // max pooling: a selection, bitwise everywhere (ties: the first; NaN wins).
        const Shape ps{xs[0], xs[1], oh, ow};
        const std::vector<double> gv = stored(randoms(xs.numel(), 64), t);
        {
          Guarded g(ps, t, {});
          cb.maxpool_gather(xd, host(gv, xs, t).to(kCuda), wn, g.view);
          Tensor r = Tensor::empty(ps, t);
          hb.maxpool_gather(xh, host(gv, xs, t), wn, r);
          INFO(what << ": maxpool select");
          CHECK(bitwise_equal(r.to_vector(), g.values()));
          CHECK(g.guard_intact());
          Guarded m(ps, t, {});
          cb.maxpool_gather(xd, xd, wn, m.view);
          Tensor rm = Tensor::empty(ps, t);
          hb.maxpool_gather(xh, xh, wn, rm);
          CHECK(bitwise_equal(rm.to_vector(), m.values()));
        }
        for (double beta : {0.0, 0.5}) {
          const std::vector<double> gy = stored(randoms(ps.numel(), 65), t), x0 = stored(randoms(xs.numel(), 66), t);
          Guarded g(xs, t, beta == 0.0 ? std::vector<double>() : x0);
          cb.maxpool_scatter(xd, host(gy, ps, t).to(kCuda), wn, beta, g.view);
          Tensor r = host(beta == 0.0 ? std::vector<double>(static_cast<std::size_t>(xs.numel()), kNaN) : x0, xs, t);
          hb.maxpool_scatter(xh, host(gy, ps, t), wn, beta, r);
          std::vector<double> tol(static_cast<std::size_t>(xs.numel()), 2.0 * (wn.kh * wn.kw + 2) * unit(t) * (2.0 * wn.kh * wn.kw + 2.0));
          expect_match(what + ": maxpool route beta=" + std::to_string(beta), r.to_vector(), g.values(), tol);
          if (kEmulated) CHECK(bitwise_equal(r.to_vector(), g.values()));
          CHECK(g.guard_intact());
        }
      }
      // NCHW <-> rows: permutations, bitwise.
      const Shape rs{xs[0] * xs[2] * xs[3], xs[1]};
      {
        Guarded g(rs, t, {});
        cb.nchw_to_rows(xd, g.view);
        Tensor r = Tensor::empty(rs, t);
        hb.nchw_to_rows(xh, r);
        CHECK(bitwise_equal(r.to_vector(), g.values()));
        Guarded back(xs, t, {});
        cb.rows_to_nchw(g.view, back.view);
        CHECK(bitwise_equal(xh.to_vector(), back.values()));
        CHECK(g.guard_intact());
        CHECK(back.guard_intact());
      }
      // Per-channel affine (every combination of scale and shift): the CPU's expression.
      const Tensor sc = host(stored(randoms(xs[1], 67), t), {xs[1]}, t), sh = host(stored(randoms(xs[1], 68), t), {xs[1]}, t);
      for (int mode = 0; mode < 3; ++mode) {
        const Tensor a = mode != 1 ? sc : Tensor(), b = mode != 0 ? sh : Tensor();
        Guarded g(xs, t, {});
        cb.channel_affine(xd, a.defined() ? a.to(kCuda) : Tensor(), b.defined() ? b.to(kCuda) : Tensor(), g.view);
        Tensor r = Tensor::empty(xs, t);
        hb.channel_affine(xh, a, b, r);
        std::vector<double> S(static_cast<std::size_t>(xs.numel()));
        for (std::size_t i = 0; i < S.size(); ++i) S[i] = std::fabs(xv[i]) * 2.0 + 2.0;
        check_elementwise(what_channel(t, xs, mode), t, r.to_vector(), g.values(), S);
        CHECK(g.guard_intact());
      }
      // Per-channel sums (float64 inside, a block reduction): in every schedule order, within
      // the sum bound; beta 0 and 0.5. Finite inputs here (the specials above would make every
      // channel NaN or Inf).
      const std::vector<double> fin = stored(randoms(xs.numel(), 69), t);
      const Tensor fd = host(fin, xs, t).to(kCuda);
      for (double beta : {0.0, 0.5}) {
        const std::vector<double> o = stored(randoms(xs[1], 70), t);
        const std::string what = label("channel_sum", t, xs) + " beta=" + std::to_string(beta);
        bool guards = true;
        const std::vector<double> got = in_all_orders(what, [&] {
          Guarded g({xs[1]}, t, beta == 0.0 ? std::vector<double>() : o);
          cb.channel_sum(fd, beta, g.view);
          guards = guards && g.guard_intact();
          return g.values();
        });
        Tensor r = beta == 0.0 ? Tensor::full({xs[1]}, kNaN, t) : host(o, {xs[1]}, t);
        hb.channel_sum(host(fin, xs, t), beta, r);
        const int64_t len = xs[0] * xs[2] * xs[3];
        std::vector<double> tol(static_cast<std::size_t>(xs[1]));
        for (int64_t c = 0; c < xs[1]; ++c) {
          double S = beta == 0.0 ? 0.0 : std::fabs(beta * o[c]);
          for (int64_t i = 0; i < xs[0]; ++i)
            for (int64_t p = 0; p < xs[2] * xs[3]; ++p) S += std::fabs(fin[(i * xs[1] + c) * xs[2] * xs[3] + p]);
          tol[c] = (2 * unit(t) + 2 * (len + 2) * kU64) * S;
        }
        expect_match(what, r.to_vector(), got, tol);
        CHECK(guards);
      }
    }
}

TEST_CASE("cuda backend: training a small MLP two epochs gives the CPU's weights") {
  REQUIRE_DEVICE();
  for (const char* opt : {"sgd", "adam"}) {
    const int64_t N = 53, D = 12, C = 4;
    std::vector<double> xs = randoms(N * D, 70), ts(N * C, 0.0);
    for (int64_t i = 0; i < N; ++i) ts[i * C + (i * 7) % C] = 1.0;
    nn::TrainConfig cfg;
    cfg.epochs = 2;
    cfg.batch = 16;
    cfg.optimizer = opt;
    cfg.lr = std::string(opt) == "sgd" ? 0.1 : 1e-2;
    cfg.momentum = 0.9;
    cfg.weight_decay = 1e-4;
    cfg.seed = 5;
    cfg.progress = false;
    std::vector<std::vector<double>> weights[2];
    std::vector<double> losses[2];
    for (int dv = 0; dv < 2; ++dv) {
      const Device device = dv == 0 ? Device::cpu() : kCuda;
      nn::Init init;
      init.seed = 11;
      init.device = device;
      nn::Mlp model({D, 16, 8, C}, 0.1, true, init);
      const nn::TrainResult res = nn::train(model, host(xs, Shape{N, D}, DType::f32).to(device),
                                            host(ts, Shape{N, C}, DType::f32).to(device), cfg);
      losses[dv] = res.epoch_loss;
      std::vector<nn::NamedParameter> params;
      params = model.named_parameters();
      for (const auto& p : params) {
        CHECK(p.var->value().device() == device);
        weights[dv].push_back(p.var->value().to_vector());
      }
    }
    REQUIRE(weights[0].size() == weights[1].size());
    // float32 training, 8 steps: GEMMs round differently (BLAS blocking, FMAs), and the
    // differences are carried through the steps; 1e-4 relative to the weight scale is far below
    // what a wrong op would give (a step of lr * gradient ~ 1e-2).
    for (std::size_t i = 0; i < weights[0].size(); ++i) {
      double scale = 0, diff = 0;
      for (std::size_t j = 0; j < weights[0][i].size(); ++j) {
        scale = std::max(scale, std::fabs(weights[0][i][j]));
        diff = std::max(diff, std::fabs(weights[0][i][j] - weights[1][i][j]));
      }
      INFO(opt << " parameter " << i << ": max |cpu - cuda| = " << diff << ", scale " << scale);
      CHECK(diff <= 1e-4 * scale);
    }
    REQUIRE(losses[0].size() == losses[1].size());
    for (std::size_t e = 0; e < losses[0].size(); ++e) CHECK(losses[1][e] == doctest::Approx(losses[0][e]).epsilon(1e-4));
  }
}

TEST_CASE("cuda backend: a small ResNet-9 (conv, BatchNorm, max pooling, residuals) trains as on the CPU") {
  REQUIRE_DEVICE();
  const int64_t N = 12, C = 4;
  const std::vector<double> xs = randoms(N * 3 * 8 * 8, 80);
  std::vector<double> ts(N * C, 0.0);
  for (int64_t i = 0; i < N; ++i) ts[i * C + (i * 5) % C] = 1.0;
  nn::TrainConfig cfg;
  cfg.epochs = 2;
  cfg.batch = 4;
  cfg.optimizer = "adam";
  cfg.lr = 1e-3;
  cfg.seed = 3;
  cfg.progress = false;
  std::vector<std::vector<double>> state[2];
  std::vector<double> losses[2];
  for (int dv = 0; dv < 2; ++dv) {
    const Device device = dv == 0 ? Device::cpu() : kCuda;
    nn::Init init;
    init.seed = 13;
    init.device = device;
    auto model = nn::make_model("resnet9:4-6-6-6-8-8-8-8,classes=4", init);
    const nn::TrainResult res = nn::train(*model, host(xs, Shape{N, 3, 8, 8}, DType::f32).to(device),
                                          host(ts, Shape{N, C}, DType::f32).to(device), cfg);
    losses[dv] = res.epoch_loss;
    for (const auto& p : model->named_parameters()) {
      CHECK(p.var->value().device() == device);
      state[dv].push_back(p.var->value().to_vector());
    }
    for (const auto& b : model->named_buffers()) state[dv].push_back(b.tensor->to_vector());
  }
  REQUIRE(state[0].size() == state[1].size());
  // float32, 6 Adam steps through BatchNorm's batch statistics: as for the MLP above, 1e-4 of
  // each tensor's scale (Adam's first steps move every weight by ~lr = 1e-3).
  for (std::size_t i = 0; i < state[0].size(); ++i) {
    double scale = 0, diff = 0;
    for (std::size_t j = 0; j < state[0][i].size(); ++j) {
      scale = std::max(scale, std::fabs(state[0][i][j]));
      diff = std::max(diff, std::fabs(state[0][i][j] - state[1][i][j]));
    }
    INFO("tensor " << i << ": max |cpu - cuda| = " << diff << ", scale " << scale);
    CHECK(diff <= 1e-4 * std::max(scale, 1e-3));
  }
  for (std::size_t e = 0; e < losses[0].size(); ++e) CHECK(losses[1][e] == doctest::Approx(losses[0][e]).epsilon(1e-4));
}

namespace {

// ---- random projections (attribution hot paths) ------------------------------------------
// The device kernel and the CPU (GEMM-based) path each sum m = in*out (+out) products in float32,
// in different orders: |y_dev - y_cpu| <= 2 (m + 4) u sum|g_r R_r|, per entry from the inputs.

static void case_project_rows() {  // beta 0, 1, 0.5; m = 0; the CPU op equals Projector::project_block
  REQUIRE_DEVICE();
  for (DType dt : {DType::f32, DType::f64}) {
    const double u = dt == DType::f32 ? 5.9604644775390625e-08 : 1.1102230246251565e-16;
    for (int64_t b : {1, 33}) {
      for (int64_t m : {0, 1, 70}) {
        for (double beta : {0.0, 1.0, 0.5}) {
          RandomProjection r;
          r.dim = 129;
          r.seed = 3;
          const int64_t r0 = 5;
          const std::vector<double> gv = randoms(b * m, 1, -1.0, 1.0), yv = randoms(b * r.dim, 2, -1.0, 1.0);
          const Tensor g = Tensor::from_vector(gv, {b, m}, dt, Device::cpu());
          Tensor yc = Tensor::from_vector(yv, {b, r.dim}, dt, Device::cpu());
          Tensor yd = yc.to(kCuda);
          ops::project_rows(g, r0, r, beta, yc);
          ops::project_rows(g.to(kCuda), r0, r, beta, yd);
          // CPU: Projector::project_block is the same code: bitwise.
          attr::ProjectorSpec spec;
          spec.dim = r.dim;
          spec.seed = r.seed;
          const attr::Projector proj(r0 + m + 3, spec);
          Tensor yp = Tensor::from_vector(yv, {b, r.dim}, dt, Device::cpu());
          if (m > 0) {
            proj.project_block(g, r0, beta, yp);
            CHECK(bitwise_equal(yp.to_vector(), yc.to_vector()));
          }
          const double s = 1.0 / std::sqrt(double(r.dim));
          std::vector<double> bound(static_cast<std::size_t>(b * r.dim));
          for (int64_t i = 0; i < b; ++i) {
            double sum = 0;
            for (int64_t j = 0; j < m; ++j) sum += std::fabs(gv[i * m + j]) * s * 1.1;
            for (int64_t c = 0; c < r.dim; ++c)
              bound[i * r.dim + c] = 2.0 * double(m + 4) * u * (sum + std::fabs(beta * yv[i * r.dim + c]));
          }
          INFO(dtype_name(dt) << " b " << b << " m " << m << " beta " << beta);
          expect_match("project_rows", yc.to_vector(), yd.to_vector(), bound);
        }
      }
    }
  }
}

static void case_linear_project() {  // 1, 3 and 20 positions per sample; 1, 2 and 5 cotangent sets; bias
  REQUIRE_DEVICE();
  const double u = 5.9604644775390625e-08;
  for (int64_t l : {1, 3, 20})
  for (bool bias : {true, false}) {
    for (int64_t kk : {1, 2, 5}) {
      const int64_t b = l == 1 ? 37 : 11, in = 23, out = 9, row0 = 13;
      RandomProjection r;
      r.dim = 40;
      r.seed = 11;
      r.kind = kk == 2 ? RandomProjectionKind::gaussian : RandomProjectionKind::rademacher;
      const std::vector<double> av = randoms(b * l * in, 5, -1.0, 1.0);
      const Tensor a = Tensor::from_vector(av, {b * l, in}, DType::f32, Device::cpu());
      std::vector<Tensor> dc, dd, yc, yd;
      std::vector<std::vector<double>> dv;
      for (int64_t k = 0; k < kk; ++k) {
        dv.push_back(randoms(b * l * out, 10 + static_cast<unsigned>(k), -1.0, 1.0));
        dc.push_back(Tensor::from_vector(dv.back(), {b * l, out}, DType::f32, Device::cpu()));
        dd.push_back(dc.back().to(kCuda));
        yc.push_back(Tensor::from_vector(randoms(b * r.dim, 20 + static_cast<unsigned>(k), -1.0, 1.0), {b, r.dim}, DType::f32, Device::cpu()));
      }
      ops::linear_project(a, dc, l, bias, row0, r, yc);
      // The kernel sums each entry over the positions where it loads it and writes each output
      // once: the same bits in every fiber order.
      const Tensor ad = a.to(kCuda);
      in_all_orders("linear_project L=" + std::to_string(l), [&] {
        yd.clear();
        for (int64_t k = 0; k < kk; ++k)
          yd.push_back(Tensor::from_vector(randoms(b * r.dim, 20 + static_cast<unsigned>(k), -1.0, 1.0), {b, r.dim},
                                           DType::f32, kCuda));
        ops::linear_project(ad, dd, l, bias, row0, r, yd);
        std::vector<double> all;
        for (const Tensor& t : yd) {
          const std::vector<double> v = t.to_vector();
          all.insert(all.end(), v.begin(), v.end());
        }
        return all;
      });
      for (int64_t k = 0; k < kk; ++k) {
        // sum over rows |g_r R_r| <= s * 1.1 * sum_l (sum_o |d_lo|)(sum_i |a_li| + bias) (+ |y0|);
        // each gradient entry sums L products and the projection m = in*out (+out) terms.
        const double s = 1.1 * (r.kind == RandomProjectionKind::gaussian ? 6.0 : 1.0) / std::sqrt(double(r.dim));
        std::vector<double> bound(static_cast<std::size_t>(b * r.dim));
        for (int64_t i = 0; i < b; ++i) {
          double mag = 0;
          for (int64_t q = 0; q < l; ++q) {
            double sa = 0, sd = 0;
            for (int64_t c = 0; c < in; ++c) sa += std::fabs(av[(i * l + q) * in + c]);
            for (int64_t o = 0; o < out; ++o) sd += std::fabs(dv[k][(i * l + q) * out + o]);
            mag += sd * (sa + (bias ? 1.0 : 0.0));
          }
          for (int64_t c = 0; c < r.dim; ++c)
            bound[i * r.dim + c] = 2.0 * double(l + in * out + out + 4) * u * (s * mag + 1.0);
        }
        INFO("positions " << l << " bias " << bias << " sets " << kk << " k " << k);
        expect_match("linear_project", yc[k].to_vector(), yd[k].to_vector(), bound);
      }
    }
  }
}

// ---- the op table ------------------------------------------------------------------------
// One entry per case above, naming the backend ops (engine/backend.h) it holds to the CPU
// backend. The harness runs every entry (each a SUBCASE: one failing entry does not hide the
// others), and the coverage check fails when an op declared in engine/backend.h has no entry:
// a new op comes with its case here.

struct OpCase {
  std::vector<std::string> ops;
  const char* name;
  void (*run)();
};

const std::vector<OpCase>& op_table() {
  static const std::vector<OpCase> table = {
    {{"cast"}, "registration, copies, casts and the caching pool", &case_copies_casts_pool},
    {{"fill", "axpby", "mul", "relu", "relu_backward"}, "fill, axpby, mul, relu, relu_backward", &case_elementwise},
    {{"add_row_vector", "add_row_vector_batched", "gather_rows"}, "add_row_vector, gather_rows (plain and batched broadcast)", &case_broadcast_gather},
    {{"dropout_mask", "dropout_mask_batched"}, "dropout masks equal the CPU's bit for bit (plain and batched)", &case_dropout},
    {{"sum", "dot"}, "sum and dot (float64 results), in every schedule order", &case_sum_dot},
    {{"sum_rows", "sum_rows_batched"}, "sum_rows and sum_rows_batched, in every schedule order", &case_sum_rows},
    {{"argmax_rows"}, "argmax_rows (ties, NaN, -0), in every schedule order", &case_argmax_rows},
    {{"softmax", "softmax_xent", "softmax_xent_hvp", "mse"}, "softmax, softmax_xent (loss + dlogits), softmax_xent_hvp, mse", &case_losses},
    {{"gemm", "gemm_batched"}, "gemm and gemm_batched (all transposes, beta, k = 0, shared operands)", &case_gemm},
    {{"syrk"}, "syrk (overwrite and accumulate, N = 0) is exactly symmetric", &case_syrk},
    {{"batched_cholesky_solve"}, "batched_cholesky_solve (float64 solves; errors name k)", &case_cholesky},
    {{"sgd_step", "adam_step"}, "fused sgd_step and adam_step over several steps", &case_optimizers},
    {{"im2col", "col2im", "nchw_to_rows", "rows_to_nchw", "maxpool_gather", "maxpool_scatter", "channel_sum", "channel_affine"}, "image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)", &case_image},
    {{"project_rows"}, "project_rows (beta 0, 1, 0.5; m = 0)", &case_project_rows},
    {{"linear_project"}, "linear_project (1, 3 and 20 positions; 1, 2 and 5 cotangent sets; bias)", &case_linear_project},
  };
  return table;
}

std::string read_source(const std::string& rel) {
  std::ifstream f(std::string(IIF_SOURCE_DIR) + "/" + rel);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("cuda backend: every op of the table against the CPU backend") {
  REQUIRE_DEVICE();
  for (const OpCase& c : op_table()) {
    SUBCASE(c.name) { c.run(); }
  }
}

TEST_CASE("cuda backend: every op declared in engine/backend.h has an entry in the op table") {
  const std::string header = read_source("engine/backend.h");
  REQUIRE(!header.empty());
  // Memory and bookkeeping members, not numerical ops.
  const std::set<std::string> not_ops = {"device", "name", "allocate", "deallocate", "copy_to_host",
                                         "copy_from_host", "copy_on_device", "synchronize"};
  std::set<std::string> declared, covered;
  const std::regex decl(R"(virtual\s+[^;(){}]*?\b([a-z_0-9]+)\s*\()");
  for (auto it = std::sregex_iterator(header.begin(), header.end(), decl); it != std::sregex_iterator(); ++it)
    if (!not_ops.count((*it)[1])) declared.insert((*it)[1]);
  CHECK(declared.size() >= 35);  // the parse found the interface
  for (const OpCase& c : op_table()) covered.insert(c.ops.begin(), c.ops.end());
  for (const std::string& op : declared) {
    INFO("backend op '" << op << "' has no entry in the op table of tests/test_cuda_backend.cpp");
    CHECK(covered.count(op) == 1);
  }
  for (const std::string& op : covered) {
    INFO("op table entry '" << op << "' is not an op of engine/backend.h");
    CHECK(declared.count(op) == 1);
  }
}

#else

TEST_CASE("cuda backend: skipped (built without iif_cuda or iif_cuda_emulated)") {}

#endif
