// The image layers (nn/vision.h) and ResNet-9 (nn/resnet.h): PyTorch names, shapes and
// initialisation; BatchNorm2d's batch statistics and running averages against closed forms;
// gradients of every layer in both modes against finite differences; Hessian-vector products of
// a small ResNet-9 (residual branches, BatchNorm, max pooling) from double backward against
// finite differences of its gradient; checkpoints with buffers and the errors of bad ones;
// training on real CIFAR-10 records.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "attribution/hvp.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "kernels/philox.cuh"
#include "nn/checkpoint.h"
#include "nn/datasets.h"
#include "nn/resnet.h"
#include "nn/trainer.h"
#include "nn/vision.h"

using namespace iif;
namespace fs = std::filesystem;

namespace {

Tensor rand_tensor(const Shape& s, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  std::vector<double> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = lo + (hi - lo) * philox::uniform(17, stream, i);
  return Tensor::from_vector(v, s, DType::f64);
}

double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

// Central differences of <seed, module(x)> in every parameter and in x, against backward.
void check_module_gradients(nn::Module& m, const Tensor& x, uint64_t stream, double tol = 1e-7) {
  Var xv(x.clone(), true);
  const Tensor seed = rand_tensor(m.forward(Var(x)).shape(), stream);
  for (auto& p : m.named_parameters()) p.var->zero_grad();
  Var y = m.forward(xv);
  backward(y, seed);
  auto objective = [&]() { return ops::dot(m.forward(Var(x)).value(), seed); };
  const double h = 1e-6;
  std::vector<std::pair<std::string, std::pair<Tensor*, Tensor>>> targets;
  for (auto& p : m.named_parameters()) targets.push_back({p.name, {&p.var->mutable_value(), p.var->grad()}});
  Tensor xc = x;  // entries of x are perturbed in place through this alias
  targets.push_back({"input", {&xc, xv.grad()}});
  for (auto& [name, tg] : targets) {
    Tensor& t = *tg.first;
    REQUIRE(tg.second.defined());
    const std::vector<double> g = tg.second.to_vector();
    std::vector<double> v = t.to_vector();
    double worst = 0;
    for (std::size_t k = 0; k < v.size(); ++k) {
      const double keep = v[k];
      v[k] = keep + h;
      t.copy_from(Tensor::from_vector(v, t.shape(), DType::f64));
      const double up = objective();
      v[k] = keep - h;
      t.copy_from(Tensor::from_vector(v, t.shape(), DType::f64));
      const double dn = objective();
      v[k] = keep;
      t.copy_from(Tensor::from_vector(v, t.shape(), DType::f64));
      const double num = (up - dn) / (2 * h);
      worst = std::max(worst, std::fabs(num - g[k]) / (1.0 + std::fabs(num)));
    }
    INFO(name << " max relative error " << worst);
    CHECK(worst < tol);
  }
}

std::string tmp_path(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("iif_test_vision_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return (d / name).string();
}

nn::Init f64_init(uint64_t seed) {
  nn::Init i;
  i.seed = seed;
  i.dtype = DType::f64;
  return i;
}

}  // namespace

TEST_CASE("Conv2d: PyTorch layout, initialisation bound and gradients") {
  nn::Conv2d c(3, 4, 3, 2, 1, true, f64_init(1), 0);
  std::vector<std::string> names;
  for (auto& p : c.named_parameters()) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"weight", "bias"});
  CHECK(c.weight.shape() == Shape{4, 3, 3, 3});
  const double bound = 1.0 / std::sqrt(27.0);
  for (double w : c.weight.value().to_vector()) CHECK(std::fabs(w) <= bound);
  CHECK(c.forward(Var(rand_tensor({2, 3, 5, 6}, 1))).shape() == Shape{2, 4, 3, 3});
  CHECK_THROWS_AS(c.forward(Var(rand_tensor({2, 2, 5, 6}, 1))), std::invalid_argument);
  check_module_gradients(c, rand_tensor({2, 3, 5, 4}, 2), 3);
}

TEST_CASE("BatchNorm2d: batch statistics, running averages, evaluation mode, gradients") {
  nn::BatchNorm2d bn(3, f64_init(0));
  std::vector<std::string> names, buffers;
  for (auto& p : bn.named_parameters()) names.push_back(p.name);
  for (auto& b : bn.named_buffers()) buffers.push_back(b.name);
  CHECK(names == std::vector<std::string>{"weight", "bias"});
  CHECK(buffers == std::vector<std::string>{"running_mean", "running_var", "num_batches_tracked"});

  const Tensor x = rand_tensor({4, 3, 2, 3}, 10, -2.0, 3.0);
  const std::vector<double> xv = x.to_vector();
  const int64_t m = 4 * 2 * 3;
  // Closed forms per channel: mean, biased and unbiased variance.
  std::vector<double> mean(3, 0), var(3, 0);
  for (int64_t i = 0; i < x.numel(); ++i) mean[(i / 6) % 3] += xv[static_cast<std::size_t>(i)] / m;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double d = xv[static_cast<std::size_t>(i)] - mean[(i / 6) % 3];
    var[(i / 6) % 3] += d * d / m;
  }
  const std::vector<double> y = bn.forward(Var(x)).value().to_vector();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int c = (i / 6) % 3;
    CHECK(y[static_cast<std::size_t>(i)] ==
          doctest::Approx((xv[static_cast<std::size_t>(i)] - mean[c]) / std::sqrt(var[c] + 1e-5)).epsilon(1e-12));
  }
  const std::vector<double> rm = bn.running_mean.to_vector(), rv = bn.running_var.to_vector();
  for (int c = 0; c < 3; ++c) {
    CHECK(rm[c] == doctest::Approx(0.1 * mean[c]).epsilon(1e-12));
    CHECK(rv[c] == doctest::Approx(0.9 + 0.1 * var[c] * m / (m - 1)).epsilon(1e-12));
  }
  CHECK(bn.num_batches_tracked.item() == 1.0);

  // Evaluation: the running statistics, an affine map per channel.
  bn.weight.mutable_value().copy_from(rand_tensor({3}, 11, 0.5, 1.5));
  bn.bias.mutable_value().copy_from(rand_tensor({3}, 12));
  bn.set_training(false);
  const std::vector<double> ye = bn.forward(Var(x)).value().to_vector();
  const std::vector<double> g = bn.weight.value().to_vector(), b = bn.bias.value().to_vector();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int c = (i / 6) % 3;
    CHECK(ye[static_cast<std::size_t>(i)] ==
          doctest::Approx(g[c] * (xv[static_cast<std::size_t>(i)] - rm[c]) / std::sqrt(rv[c] + 1e-5) + b[c]).epsilon(1e-12));
  }
  CHECK(bn.num_batches_tracked.item() == 1.0);  // evaluation does not count
  SUBCASE("gradients, evaluation mode") { check_module_gradients(bn, x, 13); }
  SUBCASE("gradients, training mode (batch statistics are differentiated too)") {
    bn.set_training(true);
    check_module_gradients(bn, x, 14, 1e-6);
  }
}

TEST_CASE("MaxPool2d and GlobalMaxPool2d: shapes and gradients") {
  nn::MaxPool2d p(2);
  CHECK(p.forward(Var(rand_tensor({2, 3, 5, 4}, 20))).shape() == Shape{2, 3, 2, 2});
  check_module_gradients(p, rand_tensor({2, 3, 4, 4}, 21), 22);
  nn::GlobalMaxPool2d g;
  CHECK(g.forward(Var(rand_tensor({2, 3, 5, 4}, 23))).shape() == Shape{2, 3, 1, 1});
  check_module_gradients(g, rand_tensor({2, 3, 3, 4}, 24), 25);
  CHECK_THROWS_AS(nn::MaxPool2d(2, 2, 2), std::invalid_argument);
}

TEST_CASE("ResNet-9: the paper's channels, 6,573,130 parameters, PyTorch names") {
  auto m = nn::make_model("resnet9", {});
  // convs 3x3 (no bias) + BatchNorm (weight, bias) + Linear(512, 10)
  const std::vector<int64_t> c{3, 64, 128, 128, 128, 256, 512, 512, 512};
  int64_t expect = 0;
  for (int i = 0; i < 8; ++i) expect += c[i] * c[i + 1] * 9 + 2 * c[i + 1];
  expect += 512 * 10 + 10;
  CHECK(m->num_parameters() == expect);
  CHECK(expect == 6573130);
  auto p = m->named_parameters();
  CHECK(p.front().name == "0.0.weight");
  CHECK(p[1].name == "0.1.weight");
  CHECK(p.back().name == "12.bias");
  std::vector<std::string> buf;
  for (auto& b : m->named_buffers()) buf.push_back(b.name);
  CHECK(buf.size() == 8 * 3);
  CHECK(buf[0] == "0.1.running_mean");
  CHECK(std::find(buf.begin(), buf.end(), "3.1.1.num_batches_tracked") != buf.end());
  CHECK(std::find(buf.begin(), buf.end(), "8.0.1.running_var") != buf.end());
  CHECK(m->spec() == "resnet9:64-128-128-128-256-512-512-512,classes=10,dropout=0.1");
  CHECK(nn::make_model(m->spec(), {})->spec() == m->spec());
  CHECK_THROWS_AS(nn::make_model("resnet9:8-8-8", {}), std::invalid_argument);
  CHECK_THROWS_AS(nn::make_model("resnet9:8-16-8-8-8-8-8-8", {}), std::invalid_argument);  // c4 != c2
  CHECK_THROWS_AS(nn::make_model("resnet9,width=3", {}), std::invalid_argument);
  auto small = nn::make_model("resnet9:4-8-8-8-8-8-8-8", {});
  CHECK(small->forward(Var(Tensor::zeros({2, 3, 32, 32}))).shape() == Shape{2, 10});
}

TEST_CASE("ResNet-9 Hessian-vector products (double backward) equal finite differences of its gradient") {
  // A tiny ResNet-9 in float64, evaluation mode (BatchNorm on its running statistics, which are
  // set away from their defaults), 3 images of 8x8: explicit_hessian's central differences
  // (error ~1e-9 relative) against autodiff's H v. A step of ~6e-6 in one parameter flipping a
  // ReLU or a max-pool argmax would make a column wrong by O(1): the 1e-5 bound would catch it.
  auto m = nn::make_model("resnet9:2-3-2-3-2-2-3-2,classes=4,dropout=0", f64_init(5));
  uint64_t s = 30;
  for (auto& b : m->named_buffers()) {
    if (b.name.find("running_mean") != std::string::npos) b.tensor->copy_from(rand_tensor(b.tensor->shape(), s++, -0.3, 0.3));
    if (b.name.find("running_var") != std::string::npos) b.tensor->copy_from(rand_tensor(b.tensor->shape(), s++, 0.5, 2.0));
  }
  for (auto& p : m->named_parameters())
    if (p.name.find(".1.weight") != std::string::npos) p.var->mutable_value().copy_from(rand_tensor(p.var->shape(), s++, 0.5, 1.5));
  m->set_training(false);
  const Tensor x = rand_tensor({3, 3, 8, 8}, 40, -2.0, 2.0);
  const Tensor t = ops::one_hot({0, 3, 1}, 4, DType::f64, Device::cpu());
  const int64_t mm = m->num_parameters();
  const std::vector<double> h = attr::explicit_hessian(*m, x, t, nn::LossKind::cross_entropy, 2).to_vector();
  attr::HvpOptions o;
  o.batch = 2;
  const attr::CurvatureOperator op(*m, x, t, nn::LossKind::cross_entropy, o);
  for (int r = 0; r < 2; ++r) {
    const Tensor v = rand_tensor({mm}, 50 + r);
    const std::vector<double> vv = v.to_vector();
    std::vector<double> ref(static_cast<std::size_t>(mm), 0.0);
    for (int64_t i = 0; i < mm; ++i)
      for (int64_t j = 0; j < mm; ++j) ref[i] += h[static_cast<std::size_t>(i * mm + j)] * vv[j];
    CHECK(rel_diff(op.apply(v).to_vector(), ref) < 1e-5);
    CHECK(rel_diff(attr::hessian_vector_product(*m, x, t, nn::LossKind::cross_entropy, v, o).to_vector(), ref) < 1e-5);
  }
  // Gauss-Newton: symmetric positive semi-definite.
  o.curvature = attr::Curvature::gauss_newton;
  const attr::CurvatureOperator gn(*m, x, t, nn::LossKind::cross_entropy, o);
  const Tensor v = rand_tensor({mm}, 60), w = rand_tensor({mm}, 61);
  const double vgw = ops::dot(v, gn.apply(w)), wgv = ops::dot(w, gn.apply(v));
  CHECK(vgw == doctest::Approx(wgv).epsilon(1e-10));
  CHECK(ops::dot(v, gn.apply(v)) >= 0.0);
}

TEST_CASE("ResNet-9 checkpoints: buffers round-trip; a missing buffer or a wrong conv shape is named") {
  auto a = nn::make_model("resnet9:4-8-8-8-8-8-8-8", {});
  a->forward(Var(rand_tensor({2, 3, 8, 8}, 70).to(DType::f32)));  // training mode: running stats move
  const std::string path = tmp_path("r9.safetensors");
  nn::save_checkpoint(path, *a, {{"model", a->spec()}});
  nn::Init i1;
  i1.seed = 9;
  auto b = nn::make_model(a->spec(), i1);
  nn::load_checkpoint(path, *b);
  auto ba = a->named_buffers(), bb = b->named_buffers();
  for (std::size_t k = 0; k < ba.size(); ++k) CHECK(ba[k].tensor->to_vector() == bb[k].tensor->to_vector());
  CHECK(a->named_parameters()[0].var->value().to_vector() == b->named_parameters()[0].var->value().to_vector());

  const safetensors::File f = safetensors::load(path);
  std::vector<std::pair<std::string, Tensor>> without, wrong;
  for (auto& [n, t] : f.tensors) {
    if (n != "3.1.1.running_var") without.push_back({n, t});
    wrong.push_back({n, n == "4.0.weight" ? Tensor::zeros({8, 8, 5, 5}) : t});
  }
  const std::string p1 = tmp_path("no_var.safetensors"), p2 = tmp_path("bad_conv.safetensors");
  safetensors::save(p1, without, f.metadata);
  safetensors::save(p2, wrong, f.metadata);
  auto error_of = [&](const std::string& p) {
    try {
      nn::load_checkpoint(p, *b);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string e1 = error_of(p1), e2 = error_of(p2);
  CHECK(e1.find(p1) != std::string::npos);
  CHECK(e1.find("'3.1.1.running_var' of shape (8,)") != std::string::npos);
  CHECK(e2.find("'4.0.weight' has shape (8, 8, 5, 5) but the model expects (8, 8, 3, 3)") != std::string::npos);
  fs::remove_all(fs::path(path).parent_path());
}

TEST_CASE("a small ResNet-9 learns the shipped CIFAR-10 records (training loss falls)") {
  const data::Dataset d = data::load_cifar10(std::string(IIF_SOURCE_DIR) + "/data/cifar10", data::Split::train, 64);
  auto m = nn::make_model("resnet9:8-16-16-16-16-16-16-16", {});
  nn::TrainConfig c;
  c.epochs = 6;
  c.batch = 16;
  c.optimizer = "adam";
  c.lr = 3e-3;
  c.progress = false;
  const nn::TrainResult r = nn::train(*m, d, c);
  REQUIRE(r.epoch_loss.size() == 6);
  CHECK(std::isfinite(r.epoch_loss.back()));
  CHECK(r.epoch_loss.back() < 0.8 * r.epoch_loss.front());
}
