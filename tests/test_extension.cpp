// The extension point (docs/ARCHITECTURE.md): a user's layer defined in one place
// (examples/layerscale.h: its ops, its layer, its model kind) trains through the normal
// trainer, has Hessian-vector products through its own differentiable backward (against finite
// differences of the gradient), per-sample gradients through the featurizer's generic path
// (against each sample run alone), and is attributed by every method. Nothing outside
// examples/layerscale.h names it.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "attribution/featurizer.h"
#include "attribution/hvp.h"
#include "attribution/iif.h"
#include "attribution/influence.h"
#include "attribution/methods.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "examples/layerscale.h"
#include "nn/models.h"
#include "nn/trainer.h"

using namespace iif;

namespace {

Tensor randn(const Shape& s, uint64_t stream, DType dt = DType::f64) {
  std::vector<double> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = rng::normal(31, stream, i);
  return Tensor::from_vector(v, s, dt);
}

std::unique_ptr<nn::Model> model(DType dt, uint64_t seed) {
  example::register_layerscale_mlp();
  nn::Init init;
  init.dtype = dt;
  init.seed = seed;
  return nn::make_model("layerscale-mlp:6-5-3", init);
}

attr::LabeledSet make_set(int64_t n, uint64_t stream, DType dt) {
  attr::LabeledSet s;
  s.x = randn({n, 2, 3}, stream, dt);
  s.num_classes = 3;
  const std::vector<double> xv = s.x.to_vector();
  for (int64_t i = 0; i < n; ++i) s.labels.push_back((xv[i * 6] > 0) + (xv[i * 6 + 1] > 0.5));
  return s;
}

double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace

TEST_CASE("extension: a registered model with a custom layer trains, clones and names its parameters") {
  auto m = model(DType::f32, 1);
  std::vector<std::string> names;
  for (auto& p : m->named_parameters()) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"layers.1.weight", "layers.1.bias", "layers.2.gamma", "layers.4.weight",
                                          "layers.4.bias"});
  const attr::LabeledSet s = make_set(96, 1, DType::f32);
  nn::TrainConfig c;
  c.epochs = 15;
  c.batch = 16;
  c.lr = 0.05;
  c.progress = false;
  const nn::TrainResult r = nn::train(*m, s.x, ops::one_hot(s.labels, 3, DType::f32, Device::cpu()), c);
  CHECK(r.epoch_loss.back() < 0.7 * r.epoch_loss.front());
  auto copy = m->clone();
  CHECK(copy->spec() == "layerscale-mlp:6-5-3");
  CHECK(copy->named_parameters()[2].var->value().to_vector() == m->named_parameters()[2].var->value().to_vector());
}

TEST_CASE("extension: Hessian-vector products through the custom op's own backward equal finite differences") {
  auto m = model(DType::f64, 2);
  m->named_parameters()[2].var->mutable_value().copy_from(randn({5}, 3));  // gamma away from 0.1
  const attr::LabeledSet s = make_set(11, 4, DType::f64);
  const Tensor t = ops::one_hot(s.labels, 3, DType::f64, Device::cpu());
  const int64_t mm = m->num_parameters();
  const std::vector<double> h = attr::explicit_hessian(*m, s.x, t, nn::LossKind::cross_entropy, 4).to_vector();
  attr::HvpOptions o;
  o.batch = 4;
  for (int r = 0; r < 2; ++r) {
    const Tensor v = randn({mm}, 10 + r);
    const std::vector<double> vv = v.to_vector();
    std::vector<double> ref(static_cast<std::size_t>(mm), 0.0);
    for (int64_t i = 0; i < mm; ++i)
      for (int64_t j = 0; j < mm; ++j) ref[i] += h[static_cast<std::size_t>(i * mm + j)] * vv[j];
    CHECK(rel_diff(attr::hessian_vector_product(*m, s.x, t, nn::LossKind::cross_entropy, v, o).to_vector(), ref) < 1e-6);
  }
}

TEST_CASE("extension: per-sample gradients through the generic path equal each sample run alone") {
  auto m = model(DType::f64, 5);
  const attr::LabeledSet s = make_set(9, 6, DType::f64);
  const Tensor t = ops::one_hot(s.labels, 3, DType::f64, Device::cpu());
  const int64_t mm = m->num_parameters();
  attr::ProjectorSpec eye;
  eye.kind = attr::ProjectionKind::identity;
  const attr::Projector id(mm, eye);
  attr::Featurizer f(*m, id);
  const std::vector<double> got =
      f.exact(s.x, [&](const Tensor& out, int64_t first) { return attr::xent_cotangent(out, t.rows(first, first + out.dim(0))); }, 4)
          .to_vector();
  std::vector<double> want;
  for (int64_t i = 0; i < s.size(); ++i) {
    for (auto& p : m->named_parameters()) p.var->zero_grad();
    m->set_training(false);
    backward(ad::softmax_xent_mean(m->forward(Var(s.x.rows(i, i + 1))), t.rows(i, i + 1)));
    for (auto& p : m->named_parameters())
      for (double e : p.var->grad().to_vector()) want.push_back(e);
  }
  CHECK(rel_diff(got, want) < 1e-13);
}

TEST_CASE("extension: every method attributes the custom model") {
  auto m = model(DType::f32, 7);
  const attr::LabeledSet train = make_set(64, 8, DType::f32), test = make_set(3, 9, DType::f32);
  nn::TrainConfig c;
  c.epochs = 5;
  c.batch = 16;
  c.lr = 0.05;
  c.progress = false;
  nn::train(*m, train.x, ops::one_hot(train.labels, 3, DType::f32, Device::cpu()), c);
  attr::MethodOptions common;
  common.projector.dim = 16;
  common.progress = false;
  std::vector<std::unique_ptr<attr::Method>> methods;
  methods.push_back(attr::make_grad_dot(common, false));
  methods.push_back(attr::make_if_fisher(common));
  methods.push_back(attr::make_tracin(common, {{std::shared_ptr<nn::Model>(m->clone()), 0.05}}));
  methods.push_back(attr::make_trak(common, {}));
  attr::InfluenceOptions io;
  io.common = common;
  io.common.damping = 1.0;  // the Hessian of a briefly trained net is indefinite
  methods.push_back(attr::make_influence(io));
  io.curvature = attr::Curvature::gauss_newton;
  methods.push_back(attr::make_influence(io));
  attr::IifOptions ii;
  ii.common = common;
  ii.K = 2;
  ii.unlearn_epochs = 1;
  methods.push_back(std::make_unique<attr::Iif>(ii));
  for (auto& meth : methods) {
    CAPTURE(meth->name());
    meth->fit(*m, train);
    const Tensor sc = meth->score(test);
    CHECK(sc.shape() == Shape{64, 3});
    bool finite = true, nonzero = false;
    for (double v : sc.to_vector()) {
      finite = finite && std::isfinite(v);
      nonzero = nonzero || v != 0.0;
    }
    CHECK(finite);
    CHECK(nonzero);
  }
}
