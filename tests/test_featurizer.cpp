// attribution/featurizer: exact per-sample gradients against samples run alone through the
// autodiff; projected features against exact() R for both kernels, both random kinds, several
// cotangents at once, uneven batches, chunks and tiles; linearity in the target; the batch
// gradient as the mean of the rows; the model's state left as found; the paper's MNIST MLP in
// float32 on real images with a derived tolerance; errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "attribution/featurizer.h"
#include "engine/autodiff.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "nn/datasets.h"
#include "nn/models.h"
#include "nn/vision.h"
#include "projection_oracle.h"
#include "test_util.h"

using namespace iif;
using attr::CotangentFn;
using attr::Featurizer;
using attr::FeaturizerKernel;
using attr::FeaturizerOptions;
using attr::ProjectionKind;
using attr::Projector;
using attr::ProjectorSpec;

using iif_test::error_of;

namespace {

constexpr double kU64 = std::numeric_limits<double>::epsilon() / 2;
constexpr double kU32 = std::numeric_limits<float>::epsilon() / 2;

Tensor randn(const Shape& shape, uint64_t stream, DType dt = DType::f64) {
  std::vector<double> v(static_cast<std::size_t>(shape.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = rng::normal(777, stream, i);
  return Tensor::from_vector(v, shape, dt);
}

std::unique_ptr<nn::Model> small_mlp() {
  nn::Init init;
  init.dtype = DType::f64;
  init.seed = 3;
  return nn::make_model("mlp:12-7-5-3,dropout=0", init);
}

// The data of the small tests: N = 37 inputs of shape (3, 2, 2) (flattened by the model to 12),
// one-hot targets t1 of random labels, soft targets t2 (softmax of noise), Delta = t2 - t1.
struct Problem {
  Tensor x, t1, t2, delta;
  int64_t n = 37;
};
Problem problem() {
  Problem p;
  p.x = randn({p.n, 3, 2, 2}, 1);
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < p.n; ++i) labels.push_back(i * 7 % 3);
  p.t1 = ops::one_hot(labels, 3, DType::f64, Device::cpu());
  p.t2 = ops::softmax(randn({p.n, 3}, 2));
  p.delta = ops::sub(p.t2, p.t1);
  return p;
}

CotangentFn xent_of(const Tensor& t) {
  return [t](const Tensor& out, int64_t first) {
    return attr::xent_cotangent(out, t.rows(first, first + out.dim(0)));
  };
}
CotangentFn mse_of(const Tensor& t) {
  return [t](const Tensor& out, int64_t first) {
    return attr::mse_cotangent(out, t.rows(first, first + out.dim(0)));
  };
}

// The oracle: the sample run alone through the autodiff (a batch of one, so the mean loss is
// that sample's loss) and the parameter gradients read off, in named_parameters() order.
std::vector<double> alone_gradient(nn::Model& m, const Tensor& x, const Tensor& t, bool mse) {
  for (auto& p : m.named_parameters()) p.var->zero_grad();
  Var out = m.forward(Var(x));
  backward(mse ? ad::mse_mean(out, t) : ad::softmax_xent_mean(out, t));
  std::vector<double> g;
  for (auto& p : m.named_parameters()) {
    const std::vector<double> v = p.var->grad().to_vector();
    g.insert(g.end(), v.begin(), v.end());
  }
  for (auto& p : m.named_parameters()) p.var->zero_grad();
  return g;
}


// |got - want| <= tol[i] for every entry; prints the first few misses and the worst ratio.
void check_within(const std::vector<double>& got, const std::vector<double>& want,
                  const std::vector<double>& tol) {
  REQUIRE(got.size() == want.size());
  int bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    worst = std::max(worst, err / (tol[i] + 1e-300));
    if (!(err <= tol[i]) && bad++ < 5)
      MESSAGE("entry " << i << ": got " << got[i] << ", want " << want[i] << ", tolerance " << tol[i]);
  }
  INFO("worst error / tolerance = " << worst);
  CHECK(bad == 0);
}

std::vector<double> scaled(const std::vector<double>& v, double k) {
  std::vector<double> o(v);
  for (double& x : o) x *= k;
  return o;
}

// Largest |entry| of each row, repeated over the row: the scale for row-relative tolerances.
std::vector<double> row_scale(const std::vector<double>& v, int64_t cols, double k) {
  std::vector<double> o(v.size());
  for (std::size_t r = 0; r * cols < v.size(); ++r) {
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s = std::max(s, std::fabs(v[r * cols + c]));
    for (int64_t c = 0; c < cols; ++c) o[r * cols + c] = k * s;
  }
  return o;
}

ProjectorSpec spec(ProjectionKind kind, int64_t dim, uint64_t seed = 5) {
  ProjectorSpec s;
  s.kind = kind;
  s.dim = dim;
  s.seed = seed;
  return s;
}

}  // namespace

TEST_CASE("exact() rows equal the gradient of each sample run alone through the autodiff") {
  auto model = small_mlp();
  const Problem pb = problem();
  const int64_t m = model->num_parameters();
  REQUIRE(m == 12 * 7 + 7 + 7 * 5 + 5 + 5 * 3 + 3);
  const Projector pr(m, spec(ProjectionKind::rademacher, 16));
  Featurizer f(*model, pr);
  struct Case {
    const char* name;
    Tensor t;
    bool mse;
  };
  for (const Case& c : {Case{"CE, one-hot", pb.t1, false}, Case{"CE, target difference", pb.delta, false},
                        Case{"MSE", pb.t2, true}}) {
    const std::string case_name = c.name;
    CAPTURE(case_name);
    const Tensor g = f.exact(pb.x, c.mse ? mse_of(c.t) : xent_of(c.t), 8);  // 8 does not divide 37
    REQUIRE(g.shape() == Shape{pb.n, m});
    std::vector<double> want;
    for (int64_t i = 0; i < pb.n; ++i) {
      const std::vector<double> gi = alone_gradient(*model, pb.x.rows(i, i + 1), c.t.rows(i, i + 1), c.mse);
      want.insert(want.end(), gi.begin(), gi.end());
    }
    // Same float64 arithmetic in a different batch shape: the BLAS may sum in another order.
    // Each entry is a product of sums of depth <= 12 through 3 layers, so 64 u of the row's
    // largest entry bounds the difference; any bookkeeping error (wrong row, wrong sample,
    // a 1/B factor) is of the order of the entries themselves.
    check_within(g.to_vector(), want, row_scale(want, m, 64 * kU64));
  }
}

TEST_CASE("project() equals exact() R: both kernels, both kinds, two cotangents, uneven batches, chunks and tiles") {
  auto model = small_mlp();
  const Problem pb = problem();
  const int64_t m = model->num_parameters();
  const std::vector<CotangentFn> cots{xent_of(pb.t1), xent_of(pb.delta)};
  for (FeaturizerKernel kernel : {FeaturizerKernel::factored, FeaturizerKernel::gradient_tile})
    for (ProjectionKind kind : {ProjectionKind::rademacher, ProjectionKind::gaussian})
      for (int64_t p : {1, 130})
        for (int tiles = 0; tiles < 2; ++tiles) {
          const std::string kernel_name = attr::featurizer_kernel_name(kernel);
          CAPTURE(kernel_name);
          const std::string kind_name = attr::projection_kind_name(kind);
          CAPTURE(kind_name);
          CAPTURE(p);
          CAPTURE(tiles);
          const Projector pr(m, spec(kind, p));
          FeaturizerOptions o;
          o.kernel = kernel;
          if (tiles) {  // chunks of 16 (batches of 8 inside; 37 = 16 + 16 + 5), tiles of 2 rows
            o.chunk = 16;
            o.tile_bytes = std::size_t(2 * p * 8);
          }
          Featurizer f(*model, pr, o);
          const std::vector<Tensor> y = f.project(pb.x, cots, 8);
          REQUIRE(y.size() == 2);
          for (std::size_t k = 0; k < 2; ++k) {
            CAPTURE(k);
            REQUIRE(y[k].shape() == Shape{pb.n, p});
            CHECK(y[k].dtype() == DType::f64);
            std::vector<double> want, mag;
            iif_test::project_oracle(pr, f.exact(pb.x, cots[k], 8), want, mag);
            // Same (a, delta) as exact() (same batches). Any summation of the M products plus
            // the rounding of each gradient entry (or of delta times a^T R) and of R: depth <= M + 4.
            check_within(y[k].to_vector(), want, scaled(mag, (m + 4) * kU64));
          }
        }
}

TEST_CASE("one sample and no samples") {
  auto model = small_mlp();
  const Problem pb = problem();
  const int64_t m = model->num_parameters();
  const Projector pr(m, spec(ProjectionKind::rademacher, 9));
  Featurizer f(*model, pr);
  const Tensor y1 = f.project(pb.x.rows(3, 4), {xent_of(pb.t1.rows(3, 4))}, 256).at(0);
  std::vector<double> want, mag;
  iif_test::project_oracle(pr, f.exact(pb.x.rows(3, 4), xent_of(pb.t1.rows(3, 4)), 256), want, mag);
  check_within(y1.to_vector(), want, scaled(mag, (m + 4) * kU64));
  const std::vector<Tensor> y0 = f.project(pb.x.rows(0, 0), {xent_of(pb.t1), xent_of(pb.t2)}, 8);
  REQUIRE(y0.size() == 2);
  CHECK(y0[1].shape() == Shape{0, 9});
  CHECK(f.exact(pb.x.rows(0, 0), xent_of(pb.t1), 8).shape() == Shape{0, m});
}

TEST_CASE("identity projection returns exact() itself") {
  auto model = small_mlp();
  const Problem pb = problem();
  const Projector eye(model->num_parameters(), spec(ProjectionKind::identity, 0));
  Featurizer f(*model, eye);
  const Tensor y = f.project(pb.x, {xent_of(pb.t1)}, 5).at(0);
  const Tensor g = f.exact(pb.x, xent_of(pb.t1), 5);
  REQUIRE(y.shape() == g.shape());
  CHECK(std::memcmp(y.raw(), g.raw(), g.nbytes()) == 0);
}

TEST_CASE("features are linear in the target, and the mean of the rows is the batch gradient") {
  auto model = small_mlp();
  const Problem pb = problem();
  const int64_t m = model->num_parameters(), p = 24;
  const Projector pr(m, spec(ProjectionKind::rademacher, p));
  Featurizer f(*model, pr);
  const Tensor sum_t = ops::add(pb.t1, pb.t2);
  const std::vector<Tensor> y = f.project(pb.x, {xent_of(pb.t1), xent_of(pb.t2), xent_of(sum_t)}, 10);
  const std::vector<double> y1 = y[0].to_vector(), y2 = y[1].to_vector(), y12 = y[2].to_vector();
  std::vector<double> want(y1.size()), scale(y1.size());
  for (std::size_t i = 0; i < y1.size(); ++i) want[i] = y1[i] + y2[i];
  // Linear exactly, up to float64 rounding (~1e-16 relative through a few dozen operations);
  // a nonlinearity in the target would show at O(1) relative. 1e-12 of the row's scale.
  check_within(y12, want, row_scale(want, p, 1e-12));

  // Sum over samples of the exact rows = N x the gradient of the mean loss over the batch.
  const Tensor g = f.exact(pb.x, xent_of(pb.t1), 6);
  const std::vector<double> gv = g.to_vector();
  std::vector<double> col_sum(static_cast<std::size_t>(m), 0.0), col_abs(static_cast<std::size_t>(m), 0.0);
  for (int64_t i = 0; i < pb.n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      col_sum[j] += gv[i * m + j];
      col_abs[j] += std::fabs(gv[i * m + j]);
    }
  for (auto& q : model->named_parameters()) q.var->zero_grad();
  Var out = model->forward(Var(pb.x));
  backward(ad::softmax_xent_mean(out, pb.t1));
  std::vector<double> batch;
  for (auto& q : model->named_parameters()) {
    const std::vector<double> v = q.var->grad().to_vector();
    for (double x : v) batch.push_back(x * double(pb.n));
    q.var->zero_grad();
  }
  // Sums of N = 37 per-sample terms in two orders (plus the 1/N and x N): 64 u of sum |g_i|.
  check_within(col_sum, batch, scaled(col_abs, 64 * kU64));
}

TEST_CASE("the featurizer leaves the model's mode and accumulated gradients as it found them") {
  auto model = small_mlp();
  const Problem pb = problem();
  Var out = model->forward(Var(pb.x));
  backward(ad::softmax_xent_mean(out, pb.t2));
  std::vector<std::vector<double>> before;
  for (auto& q : model->named_parameters()) before.push_back(q.var->grad().to_vector());
  model->set_training(true);
  const Projector pr(model->num_parameters(), spec(ProjectionKind::rademacher, 8));
  Featurizer f(*model, pr);
  f.project(pb.x, {xent_of(pb.t1), xent_of(pb.delta)}, 8);
  f.exact(pb.x, xent_of(pb.t1), 8);
  CHECK(model->training());
  std::size_t i = 0;
  for (auto& q : model->named_parameters()) CHECK(q.var->grad().to_vector() == before[i++]);
}

// The paper's MLP (784-128-64-10, 109,386 parameters) in float32 on 64 real MNIST images.
// Tolerance of the factored kernel, derived: for P = 256, R's entries +-1/16 are exact in
// float32, and each output y_c = sum over layers, units o and inputs i of delta_o a_i R_(o,i),c
// is computed as: a_i R (exact: a power-of-two scale), a GEMM sum over i (depth <= in <= 784),
// one product with delta_o, one addition per unit into y (sum of out over layers = 202), and a
// bias GEMM per layer accumulated into y (depth <= out + 1 each). So the summation depth is
// h <= 2 + max(in) + 2 sum(out) + #layers, and |error| <= h u sum_j |g_j| |R_jc| (Higham 3.5,
// u = 2^-24), plus u sum_j |g_j||R_jc| for the rounding of the float32 exact() entries the float64
// reference starts from. A wrong row of R would be off by ~|g| / 16, orders of magnitude above.
TEST_CASE("paper MLP on MNIST in float32: projected features equal exact() R in float64") {
  const auto data = data::load_mnist(std::string(IIF_SOURCE_DIR) + "/data/mnist", data::Split::train, 64);
  nn::Init init;
  init.seed = 11;
  auto model = nn::make_model("mlp", init);  // dropout 0.1: off in the featurizer's eval mode
  const int64_t m = model->num_parameters(), p = 256;
  REQUIRE(m == 109386);
  const Tensor t = ops::one_hot(data.labels, 10, DType::f32, Device::cpu());
  const Projector pr(m, spec(ProjectionKind::rademacher, p, 42));
  Featurizer f(*model, pr);
  const Tensor y = f.project(data.images, {xent_of(t)}, 24).at(0);  // 24 does not divide 64
  REQUIRE(y.shape() == Shape{64, p});
  CHECK(y.dtype() == DType::f32);
  const Tensor g = f.exact(data.images, xent_of(t), 24);
  CHECK(g.dtype() == DType::f32);

  // Reference: float64 projection of the float32 exact gradients (Projector::project, held to
  // a plain-loop oracle in test_projector), and per row sum_j |g_j| |R_jc| = |g|_1 / 16.
  const Tensor g64 = g.to(DType::f64);
  const std::vector<double> want = pr.project(g64).to_vector();
  const std::vector<double> gv = g64.to_vector();
  const std::vector<int64_t> sizes{784, 128, 64, 10};
  int64_t max_in = 0, sum_out = 0;
  for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
    max_in = std::max(max_in, sizes[l]);
    sum_out += sizes[l + 1];
  }
  const double h = 2.0 + double(max_in) + 2.0 * double(sum_out) + 3.0;
  std::vector<double> tol(want.size());
  for (int64_t i = 0; i < 64; ++i) {
    double l1 = 0;
    for (int64_t j = 0; j < m; ++j) l1 += std::fabs(gv[i * m + j]);
    for (int64_t c = 0; c < p; ++c) tol[i * p + c] = (h + 1.0) * kU32 * l1 / 16.0;
  }
  check_within(y.to_vector(), want, tol);
  // The bound is not vacuous: it is far below the features themselves.
  double max_tol = 0, rms = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    max_tol = std::max(max_tol, tol[i]);
    rms += want[i] * want[i];
  }
  rms = std::sqrt(rms / double(want.size()));
  MESSAGE("largest tolerance " << max_tol << " against features of rms " << rms);
  CHECK(max_tol < 0.05 * rms);
}

TEST_CASE("featurizer errors say what is wrong") {
  auto model = small_mlp();
  const Problem pb = problem();
  const int64_t m = model->num_parameters();
  const Projector wrong(m + 1, spec(ProjectionKind::rademacher, 4));
  const std::string e1 = error_of([&] { Featurizer f(*model, wrong); });
  CHECK(e1.find(std::to_string(m)) != std::string::npos);
  const Projector pr(m, spec(ProjectionKind::rademacher, 4));
  Featurizer f(*model, pr);
  CHECK_THROWS_AS(f.project(pb.x, {}, 8), std::invalid_argument);
  CHECK_THROWS_AS(f.project(pb.x, {xent_of(pb.t1)}, 0), std::invalid_argument);
  CHECK_THROWS_AS(f.project(pb.x.to(DType::f32), {xent_of(pb.t1)}, 8), std::invalid_argument);
  const CotangentFn bad_shape = [](const Tensor& out, int64_t) {
    return Tensor::zeros({out.dim(0), 4}, DType::f64);
  };
  const std::string e2 = error_of([&] { f.project(pb.x, {bad_shape}, 8); });
  CHECK(e2.find("(8, 4)") != std::string::npos);
  CHECK(e2.find("(8, 3)") != std::string::npos);
  FeaturizerOptions o;
  o.chunk = 0;
  CHECK_THROWS_AS(Featurizer(*model, pr, o), std::invalid_argument);

  // exact() refuses N x M x 8 bytes over 2 GB before doing any work: 2500 x 109,386 x 8 = 2.19 GB.
  auto big = nn::make_model("mlp", {});
  const Projector pbig(big->num_parameters(), spec(ProjectionKind::rademacher, 4));
  Featurizer fb(*big, pbig);
  const Tensor x = Tensor::zeros({2500, 784}, DType::f32);
  const std::string e3 = error_of([&] { fb.exact(x, xent_of(Tensor::zeros({2500, 10}, DType::f32)), 256); });
  CHECK(e3.find("2 GB") != std::string::npos);
  CHECK(e3.find("2500") != std::string::npos);
}

// ---- the generic path: any nn::ParametricLayer (Conv2d, BatchNorm2d, a user's layer) ---------

TEST_CASE("generic layers: a ResNet-9's exact and projected per-sample gradients equal each sample run alone") {
  // resnet9 in float64, evaluation mode (BatchNorm on running statistics set away from their
  // defaults): its Conv2d and BatchNorm2d layers go through per_sample_gradients, the Linear
  // through the fused path. The oracle is each sample alone through the autodiff.
  nn::Init init;
  init.dtype = DType::f64;
  init.seed = 4;
  auto m = nn::make_model("resnet9:2-3-3-3-4-4-4-4,classes=3,dropout=0", init);
  uint64_t stream = 50;
  for (auto& b : m->named_buffers()) {
    if (b.name.find("running_mean") != std::string::npos) b.tensor->copy_from(randn(b.tensor->shape(), stream++));
    if (b.name.find("running_var") != std::string::npos) {
      std::vector<double> v = randn(b.tensor->shape(), stream++).to_vector();
      for (double& e : v) e = 0.5 + e * e;
      b.tensor->copy_from(Tensor::from_vector(v, b.tensor->shape(), DType::f64));
    }
  }
  m->set_training(false);
  const int64_t n = 5;
  const Tensor x = randn({n, 3, 8, 8}, 60);
  const Tensor t = ops::softmax(randn({n, 3}, 61));
  const int64_t mm = m->num_parameters();
  ProjectorSpec eye;
  eye.kind = ProjectionKind::identity;
  const Projector id(mm, eye);
  FeaturizerOptions o;
  o.tile_bytes = 4096;  // several sub-batches per generic layer
  Featurizer f(*m, id, o);
  const std::vector<double> got = f.exact(x, xent_of(t), 2).to_vector();
  std::vector<double> want;
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<double> g = alone_gradient(*m, x.rows(i, i + 1), t.rows(i, i + 1), false);
    want.insert(want.end(), g.begin(), g.end());
  }
  std::vector<double> tol(want.size());
  for (std::size_t i = 0; i < want.size(); ++i) tol[i] = 1e-12 * (1.0 + std::fabs(want[i]));
  check_within(got, want, tol);

  // Projected: R^T g from project() equals the exact gradients times R's rows.
  ProjectorSpec spec;
  spec.dim = 16;
  spec.seed = 9;
  const Projector r(mm, spec);
  Featurizer fp(*m, r, o);
  const std::vector<double> proj = fp.project(x, {xent_of(t)}, 3).at(0).to_vector();
  const Tensor rm = r.rows(0, mm, DType::f64);
  const std::vector<double> ref = ops::matmul(Tensor::from_vector(got, {n, mm}, DType::f64), rm).to_vector();
  std::vector<double> tol2(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) tol2[i] = 1e-10 * (1.0 + std::fabs(ref[i]));
  check_within(proj, ref, tol2);
}

TEST_CASE("generic layers: per-sample gradients need evaluation-mode BatchNorm and every parameter in a layer") {
  auto m = nn::make_model("resnet9:2-3-3-3-4-4-4-4,classes=3", {});
  m->set_training(true);
  m->forward(Var(randn({2, 3, 8, 8}, 70, DType::f32)));
  bool threw = false;
  for (nn::ParametricLayer* l : m->parametric_layers())
    if (l->kind() == "BatchNorm2d") {
      Tensor g = Tensor::empty({1, 2 * 2});
      try {
        l->per_sample_gradients(l->input_activations(), l->input_activations(), 0, 1, g);
      } catch (const std::logic_error& e) {
        threw = std::string(e.what()).find("evaluation mode") != std::string::npos;
      }
      break;
    }
  CHECK(threw);
}

// ---- the fused projection of a convolution's per-sample gradients ---------------------------

TEST_CASE("conv: the fused projection (ops::linear_project at L positions) equals R^T times the exact per-sample gradient") {
  // A strided, padded convolution whose sizes divide no tile: 3 -> 5 channels, 3x3 kernel,
  // stride 2, padding 1, on 7x9 images (L = 4 x 5 = 20 positions), batch 6, P = 37 (and a second
  // cotangent set, and a bias). The patches are the layer's own im2col; the cotangents random.
  // Oracle: sample b's gradient formed the slow way in float64, g_b(o, i) = sum_l d(bL+l, o)
  // a(bL+l, i) (and sum_l d(bL+l, o) for the bias), times R's rows in float64.
  // Bound per output (b, c): both sums, over the L positions and over the m = out*in (+out)
  // rows, are formed in the storage type T (the op: GEMMs accumulating in T), so
  // |y - y_ref| <= (L + m + 2) u_T sum_r |R(r, c)| sum_l |d a|_r, the classical bound for
  // nested sums (gamma_L + gamma_m, one rounding for the final accumulation into y).
  for (DType dt : {DType::f32, DType::f64}) {
    for (bool bias : {false, true}) {
      for (ProjectionKind kind : {ProjectionKind::rademacher, ProjectionKind::gaussian}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(bias);
        nn::Init init;
        init.dtype = dt;
        init.seed = 12;
        nn::Conv2d conv(3, 5, 3, 2, 1, bias, init, 0);
        const int64_t b = 6, h = 7, w = 9;
        const Var out = conv.forward(Var(randn({b, 3, h, w}, 70, dt)));
        const int64_t l = out.shape()[2] * out.shape()[3];
        REQUIRE(l == 20);
        const Tensor a = conv.input_activations();  // (b*L, 27)
        const int64_t in = a.dim(1), o = 5, m = o * in + (bias ? o : 0);
        std::vector<Tensor> d = {randn({b * l, o}, 71, dt), randn({b * l, o}, 72, dt)};
        ProjectorSpec spec;
        spec.kind = kind;
        spec.dim = 37;
        spec.seed = 3;
        const int64_t row0 = 11;
        const Projector proj(row0 + m + 4, spec);
        std::vector<Tensor> y = {Tensor::zeros({b, 37}, dt), Tensor::zeros({b, 37}, dt)};
        nn::ParametricLayer::LinearMap map;
        REQUIRE(conv.linear_map(a, &map));
        CHECK(map.positions == l);
        CHECK(map.in == in);
        ops::linear_project(a, d, map.positions, map.bias, row0, proj.random_projection(), y);

        const std::vector<double> av = a.to_vector(), rv = proj.rows(row0, m, DType::f64).to_vector();
        const double u = dt == DType::f32 ? 5.9604644775390625e-08 : 1.1102230246251565e-16;
        for (std::size_t k = 0; k < d.size(); ++k) {
          const std::vector<double> dv = d[k].to_vector(), got = y[k].to_vector();
          std::vector<double> want(static_cast<std::size_t>(b * 37), 0.0), tol(want.size(), 0.0);
          for (int64_t s = 0; s < b; ++s)
            for (int64_t r = 0; r < m; ++r) {
              const int64_t oo = r < o * in ? r / in : r - o * in, ii = r < o * in ? r % in : -1;
              double g = 0, mag = 0;
              for (int64_t q = 0; q < l; ++q) {
                const double t = dv[(s * l + q) * o + oo] * (ii >= 0 ? av[(s * l + q) * in + ii] : 1.0);
                g += t;
                mag += std::fabs(t);
              }
              for (int64_t c = 0; c < 37; ++c) {
                want[s * 37 + c] += g * rv[r * 37 + c];
                tol[s * 37 + c] += mag * std::fabs(rv[r * 37 + c]);
              }
            }
          for (double& t : tol) t *= double(l + m + 2) * u;
          CAPTURE(k);
          check_within(got, want, tol);
        }
      }
    }
  }
}

TEST_CASE("a pass's batch is lowered to fit pass_bytes; the features do not depend on it") {
  // A small float64 ResNet-9 in evaluation mode, 10 images of 8x8: with the default budget the
  // requested batch (10) fits; with a budget below one sample's recordings every pass holds one
  // image. The projected features agree to rounding (per-sample gradients do not depend on the
  // batch in evaluation mode; only GEMM sizes change).
  nn::Init init;
  init.dtype = DType::f64;
  init.seed = 8;
  auto m = nn::make_model("resnet9:2-3-3-3-4-4-4-4,classes=3,dropout=0", init);
  m->set_training(false);
  const int64_t n = 10;
  const Tensor x = randn({n, 3, 8, 8}, 90);
  const Tensor t = ops::softmax(randn({n, 3}, 91));
  ProjectorSpec spec;
  spec.dim = 12;
  spec.seed = 4;
  const Projector r(m->num_parameters(), spec);
  FeaturizerOptions roomy, tight;
  tight.pass_bytes = 1;
  Featurizer fr(*m, r, roomy), ft(*m, r, tight);
  const std::vector<double> a = fr.project(x, {xent_of(t)}, n).at(0).to_vector();
  CHECK(fr.last_batch() == n);
  const std::vector<double> b = ft.project(x, {xent_of(t)}, n).at(0).to_vector();
  CHECK(ft.last_batch() == 1);
  std::vector<double> tol(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) tol[i] = 1e-12 * (1.0 + std::fabs(a[i]));
  check_within(b, a, tol);
}
