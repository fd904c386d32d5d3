// nn: the paper's MLP (size and PyTorch names), layer recordings for per-sample gradients,
// dropout, the trainer against a closed-form gradient step, bit-identical reruns, resumed runs,
// checkpoints (roundtrip and refusal of shapes that do not fit), and real MNIST learning.
#include <doctest/doctest.h>

#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "engine/ops.h"
#include "engine/safetensors.h"
#include "kernels/philox.cuh"
#include "nn/checkpoint.h"
#include "nn/datasets.h"
#include "nn/models.h"
#include "nn/trainer.h"

using namespace iif;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("iif_test_nn_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return (d / name).string();
}

bool bitwise_equal(nn::Module& a, nn::Module& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  if (pa.size() != pb.size()) return false;
  for (std::size_t i = 0; i < pa.size(); ++i) {
    const Tensor &x = pa[i].var->value(), &y = pb[i].var->value();
    if (x.shape() != y.shape() || std::memcmp(x.raw(), y.raw(), x.nbytes()) != 0) return false;
  }
  return true;
}

std::string data_dir(const char* name) { return std::string(IIF_SOURCE_DIR) + "/data/" + name; }

}  // namespace

TEST_CASE("the paper's MNIST MLP: 109,386 parameters named like torch.nn.Sequential") {
  auto m = nn::make_model("mlp", {});
  CHECK(m->num_parameters() == 109386);  // 784*128+128 + 128*64+64 + 64*10+10
  std::vector<std::string> names;
  for (auto& p : m->named_parameters()) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"layers.0.weight", "layers.0.bias", "layers.3.weight",
                                          "layers.3.bias", "layers.6.weight", "layers.6.bias"});
  CHECK(m->named_parameters()[0].var->shape() == Shape{128, 784});
  CHECK(m->parametric_layers().size() == 3);
  CHECK(m->spec() == nn::make_model(m->spec(), {})->spec());
  CHECK_THROWS_AS(nn::make_model("mlp:784-x-10", {}), std::invalid_argument);
  CHECK_THROWS_AS(nn::make_model("resnet50", {}), std::invalid_argument);
  CHECK_THROWS_AS(nn::make_model("mlp,dropout=abc", {}), std::invalid_argument);
}

TEST_CASE("initialisation follows torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in))") {
  nn::Init init;
  init.seed = 3;
  auto m = nn::make_model("mlp", init);
  const auto w = m->named_parameters()[0].var->value().to_vector();
  const double bound = 1.0 / std::sqrt(784.0);
  double mx = 0, var = 0;
  for (double x : w) {
    mx = std::max(mx, std::fabs(x));
    var += x * x;
  }
  var /= double(w.size());
  CHECK(mx <= bound);
  // Variance of U(-b, b) is b^2/3; with 100,352 draws its relative standard error is ~0.4%.
  CHECK(var == doctest::Approx(bound * bound / 3).epsilon(0.02));
  auto other = nn::make_model("mlp", {});  // seed 0
  CHECK_FALSE(bitwise_equal(*m, *other));
}

TEST_CASE("linear layers record activations and cotangents: dW = delta^T a") {
  nn::Init init;
  init.dtype = DType::f64;
  auto m = nn::make_model("mlp:6-5-3,dropout=0", init);
  std::vector<double> xv(4 * 6);
  for (std::size_t i = 0; i < xv.size(); ++i) xv[i] = philox::uniform(1, 2, i) - 0.5;
  Var x(Tensor::from_vector(xv, {4, 6}, DType::f64));
  Var loss = ad::softmax_xent_mean(m->forward(x), ops::one_hot({0, 1, 2, 0}, 3, DType::f64, Device::cpu()));
  backward(loss);
  for (nn::ParametricLayer* l : m->parametric_layers()) {
    auto* lin = dynamic_cast<nn::Linear*>(l);
    REQUIRE(lin);
    const Tensor& a = l->input_activations();
    const Tensor& delta = l->output_cotangents();
    REQUIRE(delta.defined());
    CHECK(a.dim(0) == 4);
    CHECK(delta.shape() == Shape{4, lin->out_features});
    // The summed per-sample gradients delta_b a_b^T are the batch gradient.
    const auto dw = ops::matmul(delta, a, true, false).to_vector(), g = lin->weight.grad().to_vector();
    for (std::size_t k = 0; k < g.size(); ++k) CHECK(dw[k] == doctest::Approx(g[k]).epsilon(1e-12));
  }
}

TEST_CASE("dropout: identity in evaluation, masks keyed by seed in training") {
  nn::Dropout d(0.5, 9, 0);
  Var x(Tensor::full({50, 40}, 1.0));
  d.set_training(false);
  CHECK(d.forward(x).value().to_vector() == x.value().to_vector());
  d.set_training(true);
  const auto a = d.forward(x).value().to_vector();
  const auto b = d.forward(x).value().to_vector();  // next call: a new mask
  CHECK(a != b);
  int64_t kept = 0;
  for (double v : a) {
    CHECK((v == 0.0 || v == 2.0));
    kept += v != 0.0;
  }
  // 2000 Bernoulli(0.5) draws: standard deviation 22.4; allow 5 sigma.
  CHECK(std::abs(kept - 1000) < 112);
  d.reseed(9);
  CHECK(d.forward(x).value().to_vector() == a);
}

TEST_CASE("one full-batch SGD step equals the closed-form least-squares gradient step") {
  // Linear regression without intercept: L(w) = (1/N) sum_i (x_i.w - y_i)^2,
  // grad = (2/N) X^T (X w - y). One epoch with batch = N and no momentum is one such step.
  const int64_t n = 8, d = 3;
  std::vector<double> xv(n * d), yv(n);
  for (int64_t i = 0; i < n * d; ++i) xv[i] = philox::uniform(4, 0, i) - 0.5;
  for (int64_t i = 0; i < n; ++i) yv[i] = philox::uniform(4, 1, i);
  const Tensor x = Tensor::from_vector(xv, {n, d}, DType::f64), y = Tensor::from_vector(yv, {n, 1}, DType::f64);
  nn::Init init;
  init.dtype = DType::f64;
  auto m = nn::make_model("linear:3", init);
  const std::vector<double> w0 = m->named_parameters()[0].var->value().to_vector();  // a copy
  nn::TrainConfig c;
  c.epochs = 1;
  c.batch = n;
  c.lr = 0.1;
  c.momentum = 0.0;
  c.loss = nn::LossKind::mse;
  c.progress = false;
  nn::train(*m, x, y, c);
  const auto w1 = m->named_parameters()[0].var->value().to_vector();
  for (int64_t j = 0; j < d; ++j) {
    double g = 0;
    for (int64_t i = 0; i < n; ++i) {
      double r = -yv[i];
      for (int64_t k = 0; k < d; ++k) r += xv[i * d + k] * w0[k];
      g += 2.0 / n * xv[i * d + j] * r;
    }
    CHECK(w1[j] == doctest::Approx(w0[j] - 0.1 * g).epsilon(1e-12));
  }
}

TEST_CASE("training on real MNIST: deterministic, resumable, and it learns") {
  const auto train_set = data::load_mnist(data_dir("mnist"), data::Split::train, 1000);
  const auto test_set = data::load_mnist(data_dir("mnist"), data::Split::test, 500);
  nn::TrainConfig c;
  c.epochs = 4;
  c.progress = false;
  c.seed = 5;

  SUBCASE("same seed, same thread count: bit-identical weights") {
    nn::Init init;
    init.seed = 5;
    auto a = nn::make_model("mlp", init), b = nn::make_model("mlp", init);
    const auto ra = nn::train(*a, train_set, c);
    nn::train(*b, train_set, c);
    REQUIRE(ra.epoch_loss.size() == 4);
    CHECK(ra.epoch_loss.back() < 0.5 * ra.epoch_loss.front());
    CHECK(bitwise_equal(*a, *b));
    // ... and a different seed trains a different model.
    auto other = nn::make_model("mlp", init);
    nn::TrainConfig c2 = c;
    c2.seed = 6;
    nn::train(*other, train_set, c2);
    CHECK_FALSE(bitwise_equal(*a, *other));
    // It learned: chance is 0.1. (Four epochs on 1000 images is far from the recipe's final
    // accuracy, which `make demo` reports; this only shows the loop descends and generalises.)
    CHECK(nn::accuracy(*a, test_set) > 0.6);
  }

  SUBCASE("interrupted after 2 epochs and resumed equals an uninterrupted run") {
    nn::Init init;
    init.seed = 5;
    auto full = nn::make_model("mlp", init);
    nn::train(*full, train_set, c);
    const std::string state = tmp_path("resume.safetensors");
    fs::remove(state);
    auto part = nn::make_model("mlp", init);
    nn::TrainConfig c1 = c;
    c1.epochs = 2;
    c1.resume_path = state;
    nn::train(*part, train_set, c1);  // "killed" here: only the state file survives
    auto resumed = nn::make_model("mlp", init);
    nn::TrainConfig c2 = c;
    c2.resume_path = state;
    const auto r = nn::train(*resumed, train_set, c2);
    CHECK(r.resumed_from_epoch == 2);
    CHECK(r.epoch_loss.size() == 2);
    CHECK(bitwise_equal(*full, *resumed));
    fs::remove(state);
  }
}

TEST_CASE("checkpoints: roundtrip, and refusal of tensors that do not fit the model") {
  nn::Init init;
  init.seed = 1;
  auto a = nn::make_model("mlp", init);
  const std::string path = tmp_path("ckpt.safetensors");
  nn::save_checkpoint(path, *a, {{"model", a->spec()}});
  auto b = nn::make_model("mlp", {});
  CHECK_FALSE(bitwise_equal(*a, *b));
  const auto meta = nn::load_checkpoint(path, *b);
  CHECK(bitwise_equal(*a, *b));
  CHECK(meta.at("model") == a->spec());
  CHECK(nn::checkpoint_model_spec(path) == a->spec());

  SUBCASE("a model with other layer sizes") {
    auto wrong = nn::make_model("mlp:784-256-64-10", {});
    try {
      nn::load_checkpoint(path, *wrong);
      FAIL("expected an exception");
    } catch (const std::runtime_error& e) {
      const std::string m = e.what();
      CHECK(m.find(path) != std::string::npos);
      CHECK(m.find("layers.0.weight") != std::string::npos);
      CHECK(m.find("(128, 784)") != std::string::npos);
      CHECK(m.find("(256, 784)") != std::string::npos);
    }
  }
  SUBCASE("a model with more layers than the file holds") {
    auto deeper = nn::make_model("mlp:784-128-64-10-10", {});
    CHECK_THROWS_WITH_AS(nn::load_checkpoint(path, *deeper), doctest::Contains("layers.9.weight"),
                         std::runtime_error);
  }
  SUBCASE("a file that is not a checkpoint") {
    const std::string bad = tmp_path("bad.safetensors");
    { std::ofstream(bad) << "not a safetensors file"; }
    CHECK_THROWS_WITH_AS(nn::load_checkpoint(bad, *b), doctest::Contains(bad.c_str()), std::runtime_error);
  }
}
