// Model-batched MLP training (see nn/model_batch.h). Every step mirrors nn::train's graph op for
// op (nn/trainer.cpp, nn/module.cpp, engine/autodiff.cpp), on tensors with a leading model dim.
#include "nn/model_batch.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <stdexcept>

#include "engine/ops.h"
#include "engine/progress.h"
#include "engine/rng.h"

namespace iif {
namespace nn {
namespace {

// The keys nn::train uses (nn/trainer.cpp): data order of epoch e = permutation(n, seed,
// kShuffleStream + e); dropout seed of epoch e = seed ^ kDropoutKey ^ e, with the mask of the
// dropout after Linear i at step s on stream (i << 32) + s (nn::Dropout). If trainer.cpp
// changes them, the bitwise test in tests/test_model_batch.cpp fails.
constexpr uint64_t kShuffleStream = 0x5348'0000'0000ull;
constexpr uint64_t kDropoutKey = 0xD50F'0000'0000ull;

std::vector<Linear*> linears(const Mlp& m) {
  std::vector<Linear*> out;
  for (ParametricLayer* p : const_cast<Mlp&>(m).parametric_layers()) {
    auto* l = dynamic_cast<Linear*>(p);
    if (!l) throw std::invalid_argument("MlpBatch: model " + m.spec() + " holds a non-Linear layer");
    out.push_back(l);
  }
  return out;
}

// Slice k of a (B, ...) tensor as a view of shape (rest...).
Tensor slice(const Tensor& t, int64_t k) {
  std::vector<int64_t> d = t.shape().vec();
  d.erase(d.begin());
  return t.rows(k, k + 1).reshape(Shape(d));
}

// (B, R, C) <-> (B*R, C) views.
Tensor flat(const Tensor& t) { return t.reshape({t.dim(0) * t.dim(1), t.dim(2)}); }

}  // namespace

// Per-step buffers for R rows per model; kept across steps (two sizes at most: full and last).
struct MlpBatch::Work {
  int64_t rows = 0;
  std::vector<Tensor> h;     // h[l] (B,R,s_l): input of Linear l (h[0]: the gathered batch)
  std::vector<Tensor> z;     // z[l] (B,R,s_{l+1}): output of Linear l
  std::vector<Tensor> mask;  // mask[l] (B,R,s_{l+1}): dropout after hidden Linear l
  std::vector<Tensor> g;     // g[l] (B,R,s_{l+1}): dL/dz_l
  std::vector<Tensor> dh;    // dh[l] (B,R,s_l), l >= 1: dL/dh_l
  Tensor t;                  // (B,R,C) targets
  Tensor loss;               // (B*R) per-sample losses
};

MlpBatch::MlpBatch(const std::vector<const Mlp*>& models) {
  if (models.empty() || !models[0]) throw std::invalid_argument("MlpBatch: no models");
  const Mlp& m0 = *models[0];
  sizes_ = m0.sizes();
  dropout_ = m0.dropout();
  count_ = static_cast<int64_t>(models.size());
  const std::vector<Linear*> l0 = linears(m0);
  bias_ = l0.at(0)->bias.defined();
  dtype_ = l0[0]->weight.value().dtype();
  device_ = l0[0]->weight.value().device();
  for (const Mlp* m : models)
    if (!m || m->spec() != m0.spec() || linears(*m)[0]->weight.value().dtype() != dtype_ ||
        linears(*m)[0]->weight.value().device() != device_)
      throw std::invalid_argument("MlpBatch: every model must be " + m0.spec() + " in " +
                                  dtype_name(dtype_) + " on " + device_.str() +
                                  (m ? ", got " + m->spec() : ", got a null model"));
  for (std::size_t l = 0; l + 1 < sizes_.size(); ++l) {
    const int64_t in = sizes_[l], out = sizes_[l + 1];
    w_.push_back(Tensor::empty({count_, out, in}, dtype_, device_));
    b_.push_back(bias_ ? Tensor::empty({count_, out}, dtype_, device_) : Tensor());
    for (int64_t k = 0; k < count_; ++k) {
      Linear& lin = *linears(*models[k])[l];
      slice(w_[l], k).copy_from(lin.weight.value());
      if (bias_) slice(b_[l], k).copy_from(lin.bias.value());
    }
  }
}

void MlpBatch::copy_to(const std::vector<Mlp*>& models) const {
  if (static_cast<int64_t>(models.size()) != count_)
    throw std::invalid_argument("MlpBatch::copy_to: " + std::to_string(models.size()) +
                                " models for a batch of " + std::to_string(count_));
  for (int64_t k = 0; k < count_; ++k) {
    const std::vector<Linear*> ls = linears(*models[k]);
    if (ls.size() != w_.size() || models[k]->sizes() != sizes_)
      throw std::invalid_argument("MlpBatch::copy_to: model " + models[k]->spec() +
                                  " does not have this batch's layer sizes");
    for (std::size_t l = 0; l < w_.size(); ++l) {
      ls[l]->weight.mutable_value().copy_from(slice(w_[l], static_cast<int64_t>(k)));
      if (bias_) ls[l]->bias.mutable_value().copy_from(slice(b_[l], static_cast<int64_t>(k)));
    }
  }
}

MlpBatch::Work MlpBatch::make_work(int64_t r, bool training) const {
  Work w;
  w.rows = r;
  const std::size_t layers = w_.size();
  auto make = [&](int64_t cols) { return Tensor::empty({count_, r, cols}, dtype_, device_); };
  for (std::size_t l = 0; l < layers; ++l) {
    w.h.push_back(l == 0 && !training ? Tensor() : make(sizes_[l]));  // eval: h[0] is the input
    w.z.push_back(make(sizes_[l + 1]));
    const bool hidden = l + 1 < layers;
    w.mask.push_back(training && hidden && dropout_ > 0.0 ? make(sizes_[l + 1]) : Tensor());
    w.g.push_back(training ? make(sizes_[l + 1]) : Tensor());
    w.dh.push_back(training && l > 0 ? make(sizes_[l]) : Tensor());
  }
  if (training) w.t = make(sizes_.back());
  w.loss = Tensor::empty({count_ * r}, dtype_, device_);
  return w;
}

void MlpBatch::forward(Work& w, const Tensor& in0, const std::vector<uint64_t>& drop_seeds,
                       uint64_t call) {
  const std::size_t layers = w_.size();
  std::vector<uint64_t> streams(drop_seeds.size());
  for (std::size_t l = 0; l < layers; ++l) {
    const Tensor& in = l == 0 ? in0 : w.h[l];
    ops::gemm_batched(false, true, 1.0, in, w_[l], 0.0, w.z[l]);  // (B,R,in)(B,out,in)^T
    if (bias_) ops::add_row_vector_batched(b_[l], w.z[l]);
    if (l + 1 == layers) break;
    ops::relu_into(w.z[l], w.h[l + 1]);
    if (!drop_seeds.empty() && w.mask[l].defined()) {
      std::fill(streams.begin(), streams.end(), (static_cast<uint64_t>(l) << 32) + call);
      ops::dropout_mask_batched_into(w.mask[l], dropout_, drop_seeds, streams);
      ops::mul_into(w.h[l + 1], w.mask[l], w.h[l + 1]);
    }
  }
}

std::vector<std::vector<double>> MlpBatch::train(
    const Tensor& x, const Tensor& t, const std::vector<std::vector<int64_t>>& subsets,
    const std::vector<uint64_t>& seeds, const TrainConfig& cfg,
    const std::function<void(int, double)>& on_step) {
  if (static_cast<int64_t>(subsets.size()) != count_ || static_cast<int64_t>(seeds.size()) != count_)
    throw std::invalid_argument("MlpBatch::train: " + std::to_string(subsets.size()) + " subsets and " +
                                std::to_string(seeds.size()) + " seeds for " + std::to_string(count_) +
                                " models (one of each per model)");
  const int64_t n = static_cast<int64_t>(subsets[0].size());
  for (std::size_t k = 0; k < subsets.size(); ++k)
    if (static_cast<int64_t>(subsets[k].size()) != n)
      throw std::invalid_argument("MlpBatch::train: subset " + std::to_string(k) + " has " +
                                  std::to_string(subsets[k].size()) + " samples, subset 0 has " +
                                  std::to_string(n) + "; one batch trains equal sizes only "
                                  "(nn::train_models groups subsets by size)");
  if (n == 0) throw std::invalid_argument("MlpBatch::train: empty subsets");
  if (cfg.batch <= 0 || cfg.epochs < 0)
    throw std::invalid_argument("MlpBatch::train: batch must be positive and epochs non-negative");
  if (!cfg.resume_path.empty() || cfg.on_epoch_end)
    throw std::invalid_argument("MlpBatch::train: resume_path and on_epoch_end are not supported "
                                "(use nn::train for single resumable runs)");
  if (cfg.optimizer != "sgd" && cfg.optimizer != "adam")
    throw std::invalid_argument("MlpBatch::train: unknown optimizer '" + cfg.optimizer +
                                "' (expected sgd or adam)");
  const int64_t in = sizes_.front(), classes = sizes_.back();
  if (x.ndim() < 1 || x.dim(0) == 0 || x.numel() / x.dim(0) != in || t.ndim() != 2 ||
      t.dim(0) != x.dim(0) || t.dim(1) != classes)
    throw std::invalid_argument("MlpBatch::train: inputs " + x.shape().str() + " and targets " +
                                t.shape().str() + " do not fit the model (expected (N, " +
                                std::to_string(in) + ") and (N, " + std::to_string(classes) + "))");
  if (x.dtype() != dtype_ || t.dtype() != dtype_ || x.device() != device_ || t.device() != device_)
    throw std::invalid_argument("MlpBatch::train: inputs and targets must be " +
                                std::string(dtype_name(dtype_)) + " on " + device_.str() +
                                " like the models");
  for (const auto& s : subsets)
    for (int64_t i : s)
      if (i < 0 || i >= x.dim(0))
        throw std::invalid_argument("MlpBatch::train: subset index " + std::to_string(i) +
                                    " outside the " + std::to_string(x.dim(0)) + " training rows");
  const Tensor x2 = x.reshape({x.dim(0), in});
  const std::size_t layers = w_.size();

  // Optimizer state, model-batched; the updates are elementwise, so one fused call per tensor
  // updates all models exactly as nn::Sgd / nn::Adam update each.
  std::vector<Tensor*> params;
  for (std::size_t l = 0; l < layers; ++l) {
    params.push_back(&w_[l]);
    if (bias_) params.push_back(&b_[l]);
  }
  std::vector<Tensor> grads, s1, s2;
  for (Tensor* p : params) {
    grads.push_back(Tensor::empty(p->shape(), dtype_, device_));
    const bool need1 = cfg.optimizer == "adam" || cfg.momentum != 0.0;
    s1.push_back(need1 ? Tensor::zeros(p->shape(), dtype_, device_) : Tensor());
    s2.push_back(cfg.optimizer == "adam" ? Tensor::zeros(p->shape(), dtype_, device_) : Tensor());
  }
  SgdParams sgd;
  sgd.lr = cfg.lr;
  sgd.momentum = cfg.momentum;
  sgd.weight_decay = cfg.weight_decay;
  AdamParams adam;
  adam.lr = cfg.lr;
  adam.weight_decay = cfg.weight_decay;
  int64_t opt_steps = 0;

  const bool drop = cfg.train_mode && dropout_ > 0.0;
  std::map<int64_t, Work> work;  // by rows per model
  std::vector<std::vector<double>> epoch_loss(static_cast<std::size_t>(count_));
  const int64_t steps_per_epoch = (n + cfg.batch - 1) / cfg.batch;
  std::vector<std::vector<int64_t>> order(static_cast<std::size_t>(count_));
  std::vector<uint64_t> drop_seeds(drop ? static_cast<std::size_t>(count_) : 0);
  std::vector<int64_t> idx;
  std::vector<double> loss_sum(static_cast<std::size_t>(count_));
  for (int e = 0; e < cfg.epochs; ++e) {
    for (int64_t k = 0; k < count_; ++k) {
      order[k] = rng::permutation(n, seeds[k], kShuffleStream + static_cast<uint64_t>(e));
      if (drop) drop_seeds[k] = seeds[k] ^ kDropoutKey ^ static_cast<uint64_t>(e);
      loss_sum[k] = 0.0;
    }
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      const int64_t b0 = s * cfg.batch, b1 = std::min(n, b0 + cfg.batch), r = b1 - b0;
      auto it = work.find(r);
      if (it == work.end()) it = work.emplace(r, make_work(r, true)).first;
      Work& w = it->second;
      idx.resize(static_cast<std::size_t>(count_ * r));
      for (int64_t k = 0; k < count_; ++k)
        for (int64_t j = 0; j < r; ++j) idx[k * r + j] = subsets[k][order[k][b0 + j]];
      ops::gather_rows_into(x2, idx, w.h[0]);
      ops::gather_rows_into(t, idx, w.t);

      forward(w, w.h[0], drop_seeds, static_cast<uint64_t>(s));

      // Loss and dL/dz of the last layer: the per-sample op on (B*R, C), then the batch mean's
      // 1/R as ad::softmax_xent_mean / ad::mse_mean apply it.
      Tensor z2 = flat(w.z[layers - 1]), t2 = flat(w.t), g2 = flat(w.g[layers - 1]);
      if (cfg.loss == LossKind::cross_entropy)
        ops::softmax_xent(z2, t2, w.loss, &g2);
      else
        ops::mse(z2, t2, w.loss, &g2);
      ops::axpby(1.0 / static_cast<double>(r), g2, 0.0, g2);

      // Backward, last layer first (ad::linear, ad::mul_const, ad::relu).
      std::size_t gi = grads.size();
      for (std::size_t l = layers; l-- > 0;) {
        if (bias_) ops::sum_rows_batched(w.g[l], 0.0, grads[--gi]);          // db = sum_rows dz
        ops::gemm_batched(true, false, 1.0, w.g[l], w.h[l], 0.0, grads[--gi]);  // dW = dz^T h
        if (l == 0) break;
        ops::gemm_batched(false, false, 1.0, w.g[l], w_[l], 0.0, w.dh[l]);     // dh = dz W
        if (drop) ops::mul_into(w.dh[l], w.mask[l - 1], w.dh[l]);
        ops::relu_backward(w.z[l - 1], w.dh[l], 0.0, w.g[l - 1]);
      }

      if (cfg.optimizer == "sgd") {
        for (std::size_t i = 0; i < params.size(); ++i)
          ops::sgd_step(*params[i], grads[i], s1[i], sgd, opt_steps == 0);
        ++opt_steps;
      } else {
        ++opt_steps;
        for (std::size_t i = 0; i < params.size(); ++i)
          ops::adam_step(*params[i], grads[i], s1[i], s2[i], adam, opt_steps);
      }

      // Per-model step loss as nn::train records it: ops::sum (in double, in order) / R stored
      // in the model's dtype, read back.
      const std::vector<double> l = w.loss.to_vector();
      double mean = 0.0;
      for (int64_t k = 0; k < count_; ++k) {
        double sum = 0.0;
        for (int64_t j = 0; j < r; ++j) sum += l[k * r + j];
        const double q = sum / static_cast<double>(r);
        const double v = dtype_ == DType::f32 ? static_cast<double>(static_cast<float>(q)) : q;
        loss_sum[k] += v * static_cast<double>(r);
        mean += v / static_cast<double>(count_);
      }
      if (on_step) on_step(e, mean);
    }
    for (int64_t k = 0; k < count_; ++k) epoch_loss[k].push_back(loss_sum[k] / static_cast<double>(n));
  }
  return epoch_loss;
}

Tensor MlpBatch::predict(const Tensor& x, int64_t chunk) {
  const int64_t in = sizes_.front(), classes = sizes_.back();
  if (x.ndim() < 1 || (x.dim(0) > 0 && x.numel() / x.dim(0) != in))
    throw std::invalid_argument("MlpBatch::predict: input " + x.shape().str() +
                                " does not fit the model (expected (R, " + std::to_string(in) + "))");
  if (x.dtype() != dtype_ || x.device() != device_)
    throw std::invalid_argument("MlpBatch::predict: input must be " + std::string(dtype_name(dtype_)) +
                                " on " + device_.str() + " like the models");
  if (chunk <= 0) throw std::invalid_argument("MlpBatch::predict: chunk must be positive");
  const int64_t rows = x.dim(0);
  const Tensor x2 = x.reshape({rows, in});
  Tensor out = Tensor::empty({count_, rows, classes}, dtype_, device_);
  std::map<int64_t, Work> work;
  for (int64_t b0 = 0; b0 < rows; b0 += chunk) {
    const int64_t b1 = std::min(rows, b0 + chunk), r = b1 - b0;
    auto it = work.find(r);
    if (it == work.end()) it = work.emplace(r, make_work(r, false)).first;
    Work& w = it->second;
    forward(w, x2.rows(b0, b1), {}, 0);
    const Tensor& z = w.z.back();
    for (int64_t k = 0; k < count_; ++k) slice(out, k).rows(b0, b1).copy_from(slice(z, k));
  }
  return out;
}

std::vector<std::unique_ptr<Model>> train_models(const std::string& spec, const Tensor& x,
                                               const Tensor& targets,
                                               const std::vector<std::vector<int64_t>>& subsets,
                                               const std::vector<uint64_t>& seeds,
                                               const TrainConfig& recipe, int64_t max_models,
                                               std::vector<std::vector<double>>* epoch_loss) {
  if (subsets.size() != seeds.size())
    throw std::invalid_argument("train_models: " + std::to_string(subsets.size()) + " subsets but " +
                                std::to_string(seeds.size()) + " seeds (one per model)");
  if (max_models <= 0) throw std::invalid_argument("train_models: max_models must be positive");
  if (recipe.batch <= 0) throw std::invalid_argument("train_models: batch must be positive");
  std::vector<std::unique_ptr<Model>> models;
  for (uint64_t s : seeds) {
    Init init;
    init.seed = s;
    init.dtype = x.dtype();
    init.device = x.device();
    models.push_back(make_model(spec, init));
  }
  if (epoch_loss) epoch_loss->assign(subsets.size(), {});
  if (!models.empty() && !dynamic_cast<Mlp*>(models[0].get())) {
    // Any other model: one nn::train per subset, under one progress line.
    int64_t total = 0;
    for (const auto& sub : subsets) total += recipe.epochs * ((static_cast<int64_t>(sub.size()) + recipe.batch - 1) / recipe.batch);
    Progress progress(recipe.what + " (" + std::to_string(subsets.size()) + " models)", total, recipe.progress);
    int64_t done = 0;
    for (std::size_t k = 0; k < models.size(); ++k) {
      TrainConfig c = recipe;
      c.seed = seeds[k];
      c.progress = false;
      c.resume_path.clear();
      const int64_t steps = (static_cast<int64_t>(subsets[k].size()) + recipe.batch - 1) / recipe.batch;
      c.on_epoch_end = [&](int e, Model&) {
        done += steps;
        progress.update(done, "model " + std::to_string(k + 1) + "/" + std::to_string(models.size()) +
                                  "  epoch " + std::to_string(e) + "/" + std::to_string(recipe.epochs));
      };
      TrainResult r = train(*models[k], ops::gather_rows(x, subsets[k]), ops::gather_rows(targets, subsets[k]), c);
      if (epoch_loss) (*epoch_loss)[k] = r.epoch_loss;
    }
    progress.finish();
    return models;
  }

  // Batches: equal subset sizes together (in input order), at most max_models each, and as even
  // as possible (100 models at 32 go 25+25+25+25, not 32+32+32+4: a small last batch would
  // leave threads idle, as the batched GEMM runs OpenMP over models).
  std::map<std::size_t, std::vector<std::size_t>> by_size;
  for (std::size_t k = 0; k < subsets.size(); ++k) by_size[subsets[k].size()].push_back(k);
  std::vector<std::vector<std::size_t>> batches;
  for (auto& [size, ks] : by_size) {
    const std::size_t parts = (ks.size() + static_cast<std::size_t>(max_models) - 1) /
                              static_cast<std::size_t>(max_models);
    for (std::size_t p = 0; p < parts; ++p)
      batches.emplace_back(ks.begin() + p * ks.size() / parts, ks.begin() + (p + 1) * ks.size() / parts);
  }

  int64_t total = 0;  // model-steps
  for (const auto& b : batches) {
    const int64_t n = static_cast<int64_t>(subsets[b[0]].size());
    total += static_cast<int64_t>(b.size()) * recipe.epochs * ((n + recipe.batch - 1) / recipe.batch);
  }
  Progress progress(recipe.what + " (" + std::to_string(subsets.size()) + " models, batched)",
                    total, recipe.progress);
  int64_t done = 0, models_done = 0;
  for (const auto& b : batches) {
    std::vector<const Mlp*> in;
    std::vector<Mlp*> out;
    std::vector<std::vector<int64_t>> subs;
    std::vector<uint64_t> sds;
    for (std::size_t k : b) {
      in.push_back(static_cast<const Mlp*>(models[k].get()));
      out.push_back(static_cast<Mlp*>(models[k].get()));
      subs.push_back(subsets[k]);
      sds.push_back(seeds[k]);
    }
    MlpBatch batch(in);
    const int64_t bsize = static_cast<int64_t>(b.size());
    const auto losses = batch.train(x, targets, subs, sds, recipe, [&](int e, double l) {
      done += bsize;
      char note[96];
      std::snprintf(note, sizeof note, "models %lld-%lld  epoch %d/%d  loss %.4f",
                    static_cast<long long>(models_done + 1),
                    static_cast<long long>(models_done + bsize), e + 1, recipe.epochs, l);
      progress.update(done, note);
    });
    batch.copy_to(out);
    for (Mlp* m : out) m->set_training(false);
    if (epoch_loss)
      for (std::size_t i = 0; i < b.size(); ++i) (*epoch_loss)[b[i]] = losses[i];
    models_done += bsize;
  }
  progress.finish();
  for (auto& m : models) m->set_training(false);
  return models;
}

std::vector<std::vector<double>> test_losses(const std::vector<std::unique_ptr<Model>>& models,
                                             const Tensor& x, const Tensor& targets, LossKind loss,
                                             int64_t max_models) {
  if (max_models <= 0) throw std::invalid_argument("test_losses: max_models must be positive");
  if (targets.ndim() != 2 || targets.dim(0) != x.dim(0))
    throw std::invalid_argument("test_losses: targets " + targets.shape().str() +
                                " do not match inputs " + x.shape().str());
  std::vector<std::vector<double>> out;
  const int64_t rows = x.dim(0), classes = targets.dim(1);
  auto losses_of = [&](const Tensor& z, const Tensor& t, int64_t n) {
    Tensor l = Tensor::empty({n}, z.dtype(), z.device());
    if (loss == LossKind::cross_entropy) ops::softmax_xent(z, t, l, nullptr);
    else ops::mse(z, t, l, nullptr);
    return l.to_vector();
  };
  bool all_mlp = true;
  for (const auto& m : models) all_mlp = all_mlp && dynamic_cast<const Mlp*>(m.get());
  if (!all_mlp) {
    // Any other model: nn::predict per model, the same bits as the batched path gives an Mlp.
    for (const auto& m : models) {
      const Tensor z = predict(*m, x);
      if (z.dim(1) != classes)
        throw std::invalid_argument("test_losses: targets have " + std::to_string(classes) +
                                    " columns, model " + m->spec() + " " + std::to_string(z.dim(1)) + " outputs");
      out.push_back(losses_of(z, targets, rows));
    }
    return out;
  }
  for (std::size_t k0 = 0; k0 < models.size(); k0 += static_cast<std::size_t>(max_models)) {
    const std::size_t k1 = std::min(models.size(), k0 + static_cast<std::size_t>(max_models));
    std::vector<const Mlp*> in;
    for (std::size_t k = k0; k < k1; ++k) in.push_back(static_cast<const Mlp*>(models[k].get()));
    MlpBatch batch(in);
    const int64_t b = batch.size();
    const Tensor z = batch.predict(x);  // (b, R, C)
    if (z.dim(2) != classes)
      throw std::invalid_argument("test_losses: targets have " + std::to_string(classes) +
                                  " columns, the models " + std::to_string(z.dim(2)) + " outputs");
    Tensor t = Tensor::empty(z.shape(), z.dtype(), z.device());
    for (int64_t k = 0; k < b; ++k) slice(t, k).copy_from(targets);
    const std::vector<double> v = losses_of(flat(z), flat(t), b * rows);
    for (int64_t k = 0; k < b; ++k)
      out.emplace_back(v.begin() + k * rows, v.begin() + (k + 1) * rows);
  }
  return out;
}

}  // namespace nn
}  // namespace iif
