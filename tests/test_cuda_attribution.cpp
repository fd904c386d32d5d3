// The attribution hot paths on the CUDA backend, run on the emulated build (iif_cuda_emulated,
// CTest label cuda-emulated) and held to the CPU backend:
//  (the backend ops linear_project and project_rows are cases of the op table of
//  tests/test_cuda_backend.cpp);
//  - the projection matrix R generated on the device equals Projector::rows bit for bit
//    (rademacher and gaussian; read back through project_rows of unit vectors, which involves
//    no rounding);
//  - the hand-written syrk and batched Cholesky (IIF_CUDA_LINALG=kernels / cuda::set_linalg)
//    next to the library path (cuBLAS/cuSOLVER; OpenBLAS/LAPACKE on the emulator);
//  - the Featurizer on a device model against the CPU featurizer;
//  - the whole IIF pipeline (train theta*, unlearning, path, featurize, Fisher, solve, score)
//    on a small MNIST case on both backends.
//
// Tolerances (u = 2^-24, float32 storage):
//  - syrk / Cholesky: the bounds of tests/test_kernels_attribution.cpp, loosely: 1e-10 relative
//    to the magnitudes in float64.
//  - featurizer: as the projection ops (tests/test_cuda_backend.cpp), per entry, with
//    sum|g_r R_r| from the exact gradients.
//  - IIF scores: every float op of the pipeline runs on both backends, and float32 GEMMs and
//    float64 reduction trees round differently, so the trained theta*, the unlearned baseline
//    and the path models differ by float32 rounding (the CUDA backend's own test holds a
//    2-epoch MLP to 1e-4 of the weights' scale). Scores pass through a damped P x P solve;
//    they must agree within 1e-4 of the largest |score| (measured here: 1.6e-6; the margin is for
//    FMA contraction on a GPU).
#include <doctest/doctest.h>

#if defined(IIF_CUDA_BACKEND)

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "attribution/featurizer.h"
#include "attribution/iif.h"
#include "attribution/labeled_set.h"
#include "attribution/projector.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/ops.h"
#include "engine/tensor.h"
#include "nn/datasets.h"
#include "nn/models.h"
#include "nn/trainer.h"

using namespace iif;

namespace {

const Device kCpu = Device::cpu();

bool have_device() {
  static const bool ok = [] {
    const bool a = cuda::available();
    if (a) cuda::register_backend();
    else std::printf("no CUDA device: test_cuda_attribution skipped\n");
    return a;
  }();
  return ok;
}
#define REQUIRE_DEVICE() \
  if (!have_device()) return

std::vector<double> randoms(int64_t n, unsigned seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (double& x : v) x = d(g);
  return v;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ha = a.to(kCpu), hb = b.to(kCpu);
  return std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}

// Restores the library path when a test switches to the hand-written kernels.
struct LinalgScope {
  cuda::Linalg saved = cuda::linalg();
  explicit LinalgScope(cuda::Linalg l) { cuda::set_linalg(l); }
  ~LinalgScope() { cuda::set_linalg(saved); }
};

// Checks |x - y| <= bound[e] per entry; reports the worst ratio.
void check_within(const std::vector<double>& x, const std::vector<double>& y,
                  const std::vector<double>& bound, const std::string& what) {
  REQUIRE(x.size() == y.size());
  double worst = 0.0;
  std::size_t bad = 0;
  for (std::size_t e = 0; e < x.size(); ++e) {
    const double err = std::fabs(x[e] - y[e]);
    worst = std::max(worst, bound[e] > 0 ? err / bound[e] : (err > 0 ? 1e300 : 0.0));
    if (!(err <= bound[e])) ++bad;
  }
  INFO(what << ": worst error / bound = " << worst);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("cuda attribution: R generated on the device equals Projector::rows bit for bit") {
  REQUIRE_DEVICE();
  for (auto kind : {attr::ProjectionKind::rademacher, attr::ProjectionKind::gaussian}) {
    for (int64_t p : {1, 32, 130}) {
      const int64_t m = 37, r0 = 11, rows = 19;
      attr::ProjectorSpec spec;
      spec.kind = kind;
      spec.dim = p;
      spec.seed = 7;
      const attr::Projector proj(m, spec);
      for (DType dt : {DType::f32, DType::f64}) {
        // g = [I_rows]: y = R[r0 : r0 + rows, :] exactly (one nonzero term per output).
        std::vector<double> eye(static_cast<std::size_t>(rows * rows), 0.0);
        for (int64_t i = 0; i < rows; ++i) eye[i * rows + i] = 1.0;
        const Tensor g = Tensor::from_vector(eye, {rows, rows}, dt, cuda::device());
        Tensor y = Tensor::full({rows, p}, std::nan(""), dt, cuda::device());
        proj.project_block(g, r0, 0.0, y);
        INFO(attr::projection_kind_name(kind) << " P " << p << " " << dtype_name(dt));
        CHECK(bitwise_equal(y, proj.rows(r0, rows, dt)));
        // The CPU backend's op gives the same bits.
        Tensor yc = Tensor::full({rows, p}, std::nan(""), dt, kCpu);
        ops::project_rows(g.to(kCpu), r0, proj.random_projection(), 0.0, yc);
        CHECK(bitwise_equal(yc, proj.rows(r0, rows, dt)));
      }
    }
  }
}

TEST_CASE("cuda attribution: hand-written syrk and batched Cholesky next to the library path") {
  REQUIRE_DEVICE();
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f32 ? 2e-5 : 1e-11;
    const int64_t n = 45, p = 70;
    const Tensor u = Tensor::from_vector(randoms(n * p, 31), {n, p}, dt, kCpu);
    std::vector<double> c0 = randoms(p * p, 32);
    for (int64_t i = 0; i < p; ++i)
      for (int64_t j = 0; j < i; ++j) c0[i * p + j] = c0[j * p + i];
    for (double beta : {0.0, 1.0}) {
      Tensor cc = Tensor::from_vector(c0, {p, p}, dt, kCpu);
      ops::syrk(0.5, u, beta, cc);
      for (cuda::Linalg l : {cuda::Linalg::library, cuda::Linalg::kernels}) {
        LinalgScope scope(l);
        Tensor cd = Tensor::from_vector(c0, {p, p}, dt, cuda::device());
        ops::syrk(0.5, u.to(cuda::device()), beta, cd);
        const std::vector<double> x = cd.to_vector(), y = cc.to_vector();
        double worst = 0;
        bool symmetric = true;
        for (int64_t i = 0; i < p; ++i)
          for (int64_t j = 0; j < p; ++j) {
            worst = std::max(worst, std::fabs(x[i * p + j] - y[i * p + j]));
            symmetric = symmetric && x[i * p + j] == x[j * p + i];
          }
        INFO(std::string(cuda::linalg_name(l)) << " " << dtype_name(dt) << " beta " << beta);
        CHECK(symmetric);
        CHECK(worst <= tol * 30);
      }
    }
    // K = 3 damped solves, one matrix not positive definite in a second batch.
    const int64_t kc = 3, r = 5, q = 12;
    std::vector<double> av(static_cast<std::size_t>(kc * q * q)), bv = randoms(kc * q * r, 41);
    for (int64_t k = 0; k < kc; ++k) {
      const std::vector<double> m = randoms(q * q, 50 + static_cast<unsigned>(k));
      for (int64_t i = 0; i < q; ++i)
        for (int64_t j = 0; j < q; ++j) {
          double s = 0;
          for (int64_t t = 0; t < q; ++t) s += m[i * q + t] * m[j * q + t];
          av[(k * q + i) * q + j] = s;
        }
    }
    const std::vector<double> damping = {0.1, 0.01, 1.0};
    const Tensor a = Tensor::from_vector(av, {kc, q, q}, dt, kCpu);
    const Tensor bc = ops::batched_cholesky_solve(a, damping, Tensor::from_vector(bv, {kc, q, r}, dt, kCpu));
    for (cuda::Linalg l : {cuda::Linalg::library, cuda::Linalg::kernels}) {
      LinalgScope scope(l);
      const Tensor bd = ops::batched_cholesky_solve(a.to(cuda::device()), damping,
                                                    Tensor::from_vector(bv, {kc, q, r}, dt, cuda::device()));
      const std::vector<double> x = bd.to_vector(), y = bc.to_vector();
      double worst = 0, scale = 0;
      for (std::size_t e = 0; e < x.size(); ++e) {
        worst = std::max(worst, std::fabs(x[e] - y[e]));
        scale = std::max(scale, std::fabs(y[e]));
      }
      INFO(std::string(cuda::linalg_name(l)) << " " << dtype_name(dt) << ": max error " << worst << " of " << scale);
      CHECK(worst <= (dt == DType::f32 ? 1e-6 : 1e-9) * scale);
      // Not positive definite: -I, damping 0.5 -> the error names k = 1.
      std::vector<double> bad = av;
      for (int64_t i = 0; i < q; ++i)
        for (int64_t j = 0; j < q; ++j) bad[(q + i) * q + j] = i == j ? -1.0 : 0.0;
      const Tensor abad = Tensor::from_vector(bad, {kc, q, q}, dt, cuda::device());
      try {
        ops::batched_cholesky_solve(abad, {0.5, 0.5, 0.5}, Tensor::from_vector(bv, {kc, q, r}, dt, cuda::device()));
        FAIL("no error for a matrix that is not positive definite");
      } catch (const std::runtime_error& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find("matrix k = 1 of 3") != std::string::npos);
      }
    }
  }
}

namespace {

std::unique_ptr<nn::Model> small_mlp(Device dev, uint64_t seed, const std::string& spec = "mlp:784-16-10,dropout=0.1") {
  nn::Init init;
  init.seed = seed;
  init.device = dev;
  return nn::make_model(spec, init);
}

attr::LabeledSet mnist(data::Split split, int64_t n, Device dev) {
  const data::Dataset d = data::load_mnist(std::string(IIF_SOURCE_DIR) + "/data/mnist", split, n);
  attr::LabeledSet s;
  s.x = d.images.to(dev);
  s.labels = d.labels;
  s.num_classes = d.num_classes;
  return s;
}

}  // namespace

TEST_CASE("cuda attribution: the featurizer on a device model equals the CPU featurizer") {
  REQUIRE_DEVICE();
  const attr::LabeledSet xs = mnist(data::Split::train, 40, kCpu);
  auto cpu = small_mlp(kCpu, 3, "mlp:784-12-7-10,dropout=0.1");
  auto dev = small_mlp(cuda::device(), 3, "mlp:784-12-7-10,dropout=0.1");
  dev->copy_parameters_from(*cpu);
  for (auto kind : {attr::ProjectionKind::rademacher, attr::ProjectionKind::identity}) {
    attr::ProjectorSpec spec;
    spec.kind = kind;
    spec.dim = 48;
    const attr::Projector proj(cpu->num_parameters(), spec);
    const Tensor tc = ops::one_hot(xs.labels, 10, DType::f32, kCpu);
    const Tensor td = tc.to(cuda::device());
    auto cot = [](const Tensor& t) {
      return [t](const Tensor& out, int64_t first) {
        return attr::xent_cotangent(out, t.rows(first, first + out.dim(0)));
      };
    };
    auto half = [](const Tensor& t) {  // a second cotangent set: half the targets
      return [t](const Tensor& out, int64_t first) {
        return ops::scale(attr::xent_cotangent(out, t.rows(first, first + out.dim(0))), 0.5);
      };
    };
    attr::Featurizer fc(*cpu, proj), fd(*dev, proj);
    const std::vector<Tensor> yc = fc.project(xs.x, {cot(tc), half(tc)}, 16);
    const std::vector<Tensor> yd = fd.project(xs.x.to(cuda::device()), {cot(td), half(td)}, 16);
    REQUIRE(yd.size() == 2);
    // The bound of the projections, with sum_r |g_r R_r| <= s sum_r |g_r| from the exact gradients.
    const Tensor g = fc.exact(xs.x, cot(tc), 16);
    const std::vector<double> gv = g.to_vector();
    const int64_t n = g.dim(0), m = g.dim(1), p = proj.output_dim();
    for (int k = 0; k < 2; ++k) {
      CHECK(yd[k].device() == cuda::device());
      std::vector<double> bound(static_cast<std::size_t>(n * p));
      for (int64_t i = 0; i < n; ++i) {
        double sum = 0;
        for (int64_t j = 0; j < m; ++j) sum += std::fabs(gv[i * m + j]);
        for (int64_t c = 0; c < p; ++c)
          bound[i * p + c] = 2.0 * double(m + 4) * 5.9604644775390625e-08 * 1.1 * sum * proj.scale() + 1e-30;
      }
      INFO(attr::projection_kind_name(kind) << " cotangent " << k);
      if (kind == attr::ProjectionKind::identity) CHECK(bitwise_equal(yd[k], yc[k]));  // same host loops
      else check_within(yd[k].to_vector(), yc[k].to_vector(), bound, "featurizer");
    }
  }
}

TEST_CASE("cuda attribution: IIF on a small MNIST case, emulated CUDA backend vs CPU backend") {
  REQUIRE_DEVICE();
  // 200 train, 4 test, MLP 784-16-10, P = 32, K = 2: theta* trained 3 epochs on each backend
  // from the same initial weights, then the whole IIF pipeline on each.
  std::vector<Tensor> scores;
  std::vector<std::vector<double>> gaps;
  for (Device dev : {kCpu, cuda::device()}) {
    const attr::LabeledSet train = mnist(data::Split::train, 200, dev);
    const attr::LabeledSet test = mnist(data::Split::test, 4, dev);
    auto model = small_mlp(dev, 5);
    nn::TrainConfig c;
    c.epochs = 3;
    c.batch = 32;
    c.lr = 0.05;
    c.progress = false;
    nn::train(*model, train.x, ops::one_hot(train.labels, 10, DType::f32, dev), c);
    attr::IifOptions o;
    o.common.projector.dim = 32;
    o.common.progress = false;
    o.K = 2;
    o.unlearn_epochs = 2;
    attr::Iif method(o);
    method.fit(*model, train);
    const Tensor s = method.score(test);
    CHECK(s.device() == kCpu);
    scores.push_back(s);
    gaps.push_back(method.last_loss_gap());
  }
  const std::vector<double> a = scores[0].to_vector(), b = scores[1].to_vector();
  REQUIRE(a.size() == b.size());
  double worst = 0, scale = 0;
  for (std::size_t e = 0; e < a.size(); ++e) {
    worst = std::max(worst, std::fabs(a[e] - b[e]));
    scale = std::max(scale, std::fabs(a[e]));
  }
  MESSAGE("IIF scores, CUDA (emulated) vs CPU: max |difference| " << worst << " of max |score| " << scale);
  CHECK(scale > 0);
  CHECK(worst <= 1e-4 * scale);
  for (std::size_t j = 0; j < gaps[0].size(); ++j) CHECK(gaps[1][j] == doctest::Approx(gaps[0][j]).epsilon(2e-3));
}

#else

TEST_CASE("cuda attribution: skipped (built without iif_cuda or iif_cuda_emulated)") {}

#endif
