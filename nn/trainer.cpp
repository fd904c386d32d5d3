// Mini-batch training loop (see nn/trainer.h).
#include "nn/trainer.h"

#include "engine/profile.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include "engine/ops.h"
#include "engine/progress.h"
#include "engine/rng.h"
#include "nn/checkpoint.h"
#include "nn/optim.h"

namespace iif {
namespace nn {
namespace {

constexpr uint64_t kShuffleStream = 0x5348'0000'0000ull;  // "SH": data order, one per epoch
constexpr uint64_t kDropoutKey = 0xD50F'0000'0000ull;    // dropout seed of epoch e = seed ^ key ^ e

std::unique_ptr<Optimizer> make_optimizer(Model& model, const TrainConfig& c) {
  if (c.optimizer == "sgd") {
    SgdParams h;
    h.lr = c.lr;
    h.momentum = c.momentum;
    h.weight_decay = c.weight_decay;
    return std::make_unique<Sgd>(model.named_parameters(), h);
  }
  if (c.optimizer == "adam") {
    AdamParams h;
    h.lr = c.lr;
    h.weight_decay = c.weight_decay;
    return std::make_unique<Adam>(model.named_parameters(), h);
  }
  throw std::invalid_argument("train: unknown optimizer '" + c.optimizer + "' (expected sgd or adam)");
}

std::string fmt_loss(double l) {
  char b[48];
  std::snprintf(b, sizeof b, "loss %.4f", l);
  return b;
}

}  // namespace

TrainResult train(Model& model, const Tensor& x, const Tensor& t, const TrainConfig& cfg) {
  const int64_t n = x.dim(0);
  if (t.ndim() != 2 || t.dim(0) != n)
    throw std::invalid_argument("train: targets " + t.shape().str() + " do not match inputs " +
                                x.shape().str() + " (expected (N, outputs))");
  if (cfg.batch <= 0 || cfg.epochs < 0)
    throw std::invalid_argument("train: batch must be positive and epochs non-negative");
  if (n == 0) throw std::invalid_argument("train: empty training set");
  auto opt = make_optimizer(model, cfg);

  TrainResult r;
  int start_epoch = 0;
  if (!cfg.resume_path.empty() && std::filesystem::exists(cfg.resume_path)) {
    auto meta = load_checkpoint(cfg.resume_path, model);
    if (meta.count("model") && meta.at("model") != model.spec())
      throw std::runtime_error(cfg.resume_path + ": checkpoint is for model '" + meta.at("model") +
                               "', this run trains '" + model.spec() + "'");
    opt->load_state(load_checkpoint_extra(cfg.resume_path, "optim."));
    start_epoch = meta.count("epoch") ? std::stoi(meta.at("epoch")) : 0;
    r.resumed_from_epoch = start_epoch;
  }

  const int64_t steps_per_epoch = (n + cfg.batch - 1) / cfg.batch;
  Progress progress(cfg.what, int64_t(cfg.epochs - start_epoch) * steps_per_epoch, cfg.progress);
  const auto t0 = std::chrono::steady_clock::now();
  // Training reads no layer recordings (attribution's (a, delta)); recording them would keep the
  // previous step's patches and whole graph alive through each step, and the last step's after
  // training: ~1.5 GB per ResNet-9 at batch 64, 22 GB for TRAK's ensemble of ten.
  const RecordingPause no_recording(model);
  model.set_training(cfg.train_mode);
  int64_t done = 0;
  for (int e = start_epoch; e < cfg.epochs; ++e) {
    profile::Range stage("train epoch");
    model.set_dropout_seed(cfg.seed ^ kDropoutKey ^ static_cast<uint64_t>(e));
    const std::vector<int64_t> order = rng::permutation(n, cfg.seed, kShuffleStream + e);
    double loss_sum = 0.0;
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      const int64_t b0 = s * cfg.batch, b1 = std::min(n, b0 + cfg.batch);
      const std::vector<int64_t> idx(order.begin() + b0, order.begin() + b1);
      Var xb(ops::gather_rows(x, idx));
      const Tensor tb = ops::gather_rows(t, idx);
      Var out = model.forward(xb);
      Var loss = cfg.loss == LossKind::cross_entropy ? ad::softmax_xent_mean(out, tb)
                                                     : ad::mse_mean(out, tb);
      opt->zero_grad();
      backward(loss);
      opt->step();
      const double l = loss.value().item();
      loss_sum += l * static_cast<double>(b1 - b0);
      progress.update(++done, "epoch " + std::to_string(e + 1) + "/" + std::to_string(cfg.epochs) +
                                  "  " + fmt_loss(l));
    }
    r.epoch_loss.push_back(loss_sum / static_cast<double>(n));
    if (cfg.on_epoch_end) {
      model.set_training(false);
      cfg.on_epoch_end(e + 1, model);
      model.set_training(cfg.train_mode);
    }
    const bool last = e + 1 == cfg.epochs;
    if (!cfg.resume_path.empty() && (last || (e + 1 - start_epoch) % cfg.checkpoint_every == 0)) {
      std::vector<std::pair<std::string, Tensor>> extra;
      for (auto& [name, st] : opt->state()) extra.push_back({"optim." + name, st});
      save_checkpoint(cfg.resume_path, model,
                      {{"model", model.spec()}, {"epoch", std::to_string(e + 1)},
                       {"seed", std::to_string(cfg.seed)}},
                      extra);
    }
  }
  model.set_training(false);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.samples_per_second = r.seconds > 0 ? double(n) * (cfg.epochs - start_epoch) / r.seconds : 0.0;
  progress.finish(r.epoch_loss.empty() ? "" : fmt_loss(r.epoch_loss.back()));
  return r;
}

TrainResult train(Model& model, const data::Dataset& d, const TrainConfig& cfg) {
  const Tensor& x = d.images;
  const Tensor t = ops::one_hot(d.labels, d.num_classes, x.dtype(), x.device());
  return train(model, x, t, cfg);
}

Tensor predict(Model& model, const Tensor& x, int64_t batch) {
  // No graph and no recordings: inference holds one layer's activations at a time.
  NoGradGuard no_graph;
  RecordingPause no_recording(model);
  const bool was_training = model.training();
  model.set_training(false);
  const int64_t n = x.dim(0);
  Tensor out;
  for (int64_t b0 = 0; b0 < n; b0 += batch) {
    const int64_t b1 = std::min(n, b0 + batch);
    Var y = model.forward(Var(x.rows(b0, b1)));
    if (!out.defined()) out = Tensor::empty({n, y.value().dim(1)}, y.value().dtype(), y.value().device());
    out.rows(b0, b1).copy_from(y.value());
  }
  model.set_training(was_training);
  return out;
}

double accuracy(Model& model, const data::Dataset& d, int64_t batch) {
  if (d.size() == 0) return 0.0;
  const std::vector<int64_t> pred = ops::argmax_rows(predict(model, d.images, batch));
  int64_t ok = 0;
  for (std::size_t i = 0; i < pred.size(); ++i) ok += pred[i] == d.labels[i];
  return double(ok) / double(pred.size());
}

}  // namespace nn
}  // namespace iif
