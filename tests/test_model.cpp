// nn::Model, the one interface downstream code takes: a user's model kind registered once works
// with make_model, clone, checkpoints (buffers included), and the generic subset-model trainer
// (whose fallback must equal nn::train bit for bit); the module-tree traversals name parameters
// and buffers like PyTorch's state_dict.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/safetensors.h"
#include "nn/checkpoint.h"
#include "nn/model_batch.h"
#include "nn/models.h"
#include "nn/trainer.h"

using namespace iif;
namespace fs = std::filesystem;

namespace {

// A layer with a buffer and no parameters: forward is the identity, and it counts the training
// batches it has seen in `seen` (a (1) tensor), the way BatchNorm counts num_batches_tracked.
class Counter final : public nn::Module {
 public:
  explicit Counter(const nn::Init& init) : seen(Tensor::zeros({1}, init.dtype, init.device)) {}
  Var forward(const Var& x) override {
    if (training_) seen = Tensor::full({1}, seen.to(Device::cpu()).item() + 1.0, seen.dtype(), seen.device());
    return x;
  }
  std::string kind() const override { return "Counter"; }
  void own_buffers(std::vector<nn::NamedBuffer>& out) override { out.push_back({"seen", &seen}); }
  Tensor seen;
};

// "tiny:<hidden>": body = Linear(6, h), ReLU, Counter, Linear(h, 3); a model that is not an Mlp.
class Tiny final : public nn::Model {
 public:
  Tiny(int64_t hidden, const nn::Init& init) : hidden_(hidden) {
    body.add(std::make_unique<nn::Linear>(6, hidden, true, init, 0));
    body.add(std::make_unique<nn::ReLU>());
    body.add(std::make_unique<Counter>(init));
    body.add(std::make_unique<nn::Linear>(hidden, 3, true, init, 1));
  }
  Var forward(const Var& x) override { return body.forward(x); }
  std::string kind() const override { return "Tiny"; }
  void own_children(std::vector<std::pair<std::string, nn::Module*>>& out) override { out.push_back({"body", &body}); }
  std::string spec() const override { return "tiny:" + std::to_string(hidden_); }
  nn::Sequential body;

 private:
  int64_t hidden_;
};

void register_tiny() {
  nn::register_model(
      "tiny",
      [](const nn::ModelSpec& s, const nn::Init& init) -> std::unique_ptr<nn::Model> {
        if (s.arg.empty()) throw std::invalid_argument("model spec '" + s.text + "': use tiny:<hidden>");
        return std::make_unique<Tiny>(std::stoll(s.arg), init);
      },
      "tiny:<hidden>");
}

std::string tmp_path(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("iif_test_model_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return (d / name).string();
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

bool same_state(nn::Model& a, nn::Model& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  auto ba = a.named_buffers(), bb = b.named_buffers();
  if (pa.size() != pb.size() || ba.size() != bb.size()) return false;
  for (std::size_t i = 0; i < pa.size(); ++i)
    if (pa[i].name != pb[i].name || !same_bits(pa[i].var->value(), pb[i].var->value())) return false;
  for (std::size_t i = 0; i < ba.size(); ++i)
    if (ba[i].name != bb[i].name || !same_bits(*ba[i].tensor, *bb[i].tensor)) return false;
  return true;
}

}  // namespace

TEST_CASE("module-tree traversals: PyTorch names for parameters and buffers, mode and seeds") {
  register_tiny();
  auto m = nn::make_model("tiny:5", {});
  std::vector<std::string> names, buffers;
  for (auto& p : m->named_parameters()) names.push_back(p.name);
  for (auto& b : m->named_buffers()) buffers.push_back(b.name);
  CHECK(names == std::vector<std::string>{"body.0.weight", "body.0.bias", "body.3.weight", "body.3.bias"});
  CHECK(buffers == std::vector<std::string>{"body.2.seen"});
  CHECK(m->num_parameters() == 6 * 5 + 5 + 5 * 3 + 3);
  CHECK(m->parametric_layers().size() == 2);
  std::vector<std::string> visited;
  m->visit([&](const std::string& prefix, nn::Module& mod) { visited.push_back(prefix + mod.kind()); });
  CHECK(visited == std::vector<std::string>{"Tiny", "body.Sequential", "body.0.Linear", "body.1.ReLU",
                                            "body.2.Counter", "body.3.Linear"});
  m->set_training(false);
  m->visit([&](const std::string&, nn::Module& mod) { CHECK(!mod.training()); });
  m->set_training(true);
  m->visit([&](const std::string&, nn::Module& mod) { CHECK(mod.training()); });
}

TEST_CASE("register_model: a user's kind builds through make_model; unknown kinds list every usage") {
  register_tiny();
  auto m = nn::make_model("tiny:4", {});
  CHECK(m->spec() == "tiny:4");
  CHECK(dynamic_cast<Tiny*>(m.get()) != nullptr);
  std::string msg;
  try {
    nn::make_model("resnet50", {});
  } catch (const std::invalid_argument& e) {
    msg = e.what();
  }
  CHECK(msg.find("unknown model 'resnet50'") != std::string::npos);
  CHECK(msg.find("tiny:<hidden>") != std::string::npos);
  CHECK(msg.find("mlp") != std::string::npos);
  CHECK_THROWS_AS(nn::register_model("bad:kind", nullptr, ""), std::invalid_argument);
  CHECK_THROWS_AS(nn::make_model("mlp,dropout", {}), std::invalid_argument);
}

TEST_CASE("clone and copy_parameters_from carry parameters and buffers, dtype, device and mode") {
  register_tiny();
  nn::Init init;
  init.seed = 3;
  init.dtype = DType::f64;
  auto m = nn::make_model("tiny:5", init);
  static_cast<Tiny&>(*m).body.forward(Var(Tensor::zeros({2, 6}, DType::f64)));  // seen = 1
  m->set_training(false);
  auto c = m->clone();
  CHECK(c->dtype() == DType::f64);
  CHECK(!c->training());
  CHECK(same_state(*m, *c));
  CHECK(c->named_buffers()[0].tensor->to(Device::cpu()).item() == 1.0);
  auto fresh = nn::make_model("tiny:5", init);
  CHECK(!same_state(*m, *fresh));
  fresh->copy_parameters_from(*m);
  CHECK(same_state(*m, *fresh));
  auto other = nn::make_model("tiny:6", init);
  CHECK_THROWS_AS(other->copy_parameters_from(*m), std::invalid_argument);
}

TEST_CASE("checkpoints hold buffers; one missing or of the wrong shape is named and loads nothing") {
  register_tiny();
  nn::Init init;
  init.seed = 5;
  auto m = nn::make_model("tiny:5", init);
  *m->named_buffers()[0].tensor = Tensor::full({1}, 7.0);
  const std::string path = tmp_path("tiny.safetensors");
  nn::save_checkpoint(path, *m, {{"model", m->spec()}});
  init.seed = 6;
  auto loaded = nn::make_model("tiny:5", init);
  CHECK(!same_state(*m, *loaded));
  nn::load_checkpoint(path, *loaded);
  CHECK(same_state(*m, *loaded));

  // The same file without the buffer, and with a buffer of another shape.
  const safetensors::File f = safetensors::load(path);
  std::vector<std::pair<std::string, Tensor>> without, wrong;
  for (auto& [n, t] : f.tensors) {
    if (n != "body.2.seen") without.push_back({n, t});
    wrong.push_back({n, n == "body.2.seen" ? Tensor::zeros({2}) : t});
  }
  const std::string p1 = tmp_path("no_buffer.safetensors"), p2 = tmp_path("bad_buffer.safetensors");
  safetensors::save(p1, without, f.metadata);
  safetensors::save(p2, wrong, f.metadata);
  auto target = nn::make_model("tiny:5", init);
  auto before = target->clone();
  auto error_of = [&](const std::string& p) {
    try {
      nn::load_checkpoint(p, *target);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string e1 = error_of(p1), e2 = error_of(p2);
  CHECK(e1.find(p1) != std::string::npos);
  CHECK(e1.find("'body.2.seen' of shape (1,)") != std::string::npos);
  CHECK(e1.find("missing") != std::string::npos);
  CHECK(e2.find("'body.2.seen' has shape (2,) but the model expects (1,)") != std::string::npos);
  CHECK(same_state(*target, *before));  // nothing was written by either failed load
  fs::remove_all(fs::path(path).parent_path());
}

TEST_CASE("train_models and test_losses on a model that is not an Mlp equal nn::train bit for bit") {
  register_tiny();
  const int64_t n = 40;
  std::vector<double> xv(static_cast<std::size_t>(n * 6));
  for (std::size_t i = 0; i < xv.size(); ++i) xv[i] = rng::normal(9, 1, i);
  const Tensor x = Tensor::from_vector(xv, {n, 6});
  std::vector<int64_t> labels(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) labels[static_cast<std::size_t>(i)] = (xv[static_cast<std::size_t>(i * 6)] > 0) + (xv[static_cast<std::size_t>(i * 6 + 1)] > 0);
  const Tensor t = ops::one_hot(labels, 3, DType::f32, Device::cpu());
  nn::TrainConfig cfg;
  cfg.epochs = 3;
  cfg.batch = 8;
  cfg.progress = false;
  const std::vector<std::vector<int64_t>> subsets{{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22},
                                                   {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29}};
  const std::vector<uint64_t> seeds{11, 12};
  std::vector<std::vector<double>> epoch_loss;
  const auto models = nn::train_models("tiny:5", x, t, subsets, seeds, cfg, 16, &epoch_loss);
  REQUIRE(models.size() == 2);
  for (std::size_t k = 0; k < 2; ++k) {
    nn::Init init;
    init.seed = seeds[k];
    auto alone = nn::make_model("tiny:5", init);
    nn::TrainConfig c = cfg;
    c.seed = seeds[k];
    const nn::TrainResult r = nn::train(*alone, ops::gather_rows(x, subsets[k]), ops::gather_rows(t, subsets[k]), c);
    CHECK(same_state(*alone, *models[k]));
    CHECK(r.epoch_loss == epoch_loss[k]);
    CHECK(models[k]->named_buffers()[0].tensor->item() == double(cfg.epochs * ((subsets[k].size() + 7) / 8)));
  }
  const auto losses = nn::test_losses(models, x, t);
  for (std::size_t k = 0; k < 2; ++k) {
    Tensor l = Tensor::empty({n});
    ops::softmax_xent(nn::predict(*models[k], x), t, l, nullptr);
    CHECK(losses[k] == l.to_vector());
  }
}
