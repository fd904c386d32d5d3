// Many small MLPs of one spec trained at once (the subset models of LDS, DESIGN.md section 7):
// parameters stored model-batched, W_l (B, out, in) and b_l (B, out), one batched GEMM per layer
// for all B models, each model with its own subset, data order, dropout masks and seed. Model k
// reproduces what nn::train gives for it alone bit for bit when nn::train's OpenBLAS runs on one
// thread (OMP_NUM_THREADS=1; tests/test_model_batch.cpp). Threaded OpenBLAS rounds differently,
// so with more threads nn::train's own bits depend on the thread count and differ from these by
// rounding; the batched results are the same for every thread count and every batching.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "nn/models.h"
#include "nn/trainer.h"

namespace iif {
namespace nn {

// B MLPs of one spec (nn::Mlp: Linear / ReLU / Dropout), parameters stacked along a model dim.
// Forward and backward are written out for this fixed layer set (no autodiff graph): per layer
//   z_l = h_l W_l^T + b_l          h_l (B,R,in_l), W_l (B,out_l,in_l), z_l (B,R,out_l)
//   h_{l+1} = relu(z_l) * mask_l   (hidden layers; mask_l is the dropout mask, or none)
// and the cross-entropy (or MSE) of z_{L-1} per model, the same op sequence nn::train's graph
// runs, so every slice gets the same bits.
class MlpBatch {
 public:
  // Stacks the parameters of `models` (at least one; same spec, dtype and device).
  explicit MlpBatch(const std::vector<const Mlp*>& models);
  int64_t size() const { return count_; }
  const std::vector<int64_t>& sizes() const { return sizes_; }
  // Writes model k's parameters into *models[k] (same spec).
  void copy_to(const std::vector<Mlp*>& models) const;
  // W_l (B, out, in) and b_l (B, out) (undefined without bias), l = 0 .. layers-1.
  const Tensor& weight(int l) const { return w_.at(static_cast<std::size_t>(l)); }
  const Tensor& bias(int l) const { return b_.at(static_cast<std::size_t>(l)); }

  // Trains model k on rows subsets[k] of X (N, ...) and targets T (N, C), exactly as
  //   nn::train(model_k, gather_rows(X, subsets[k]), gather_rows(T, subsets[k]), cfg with
  //             cfg.seed = seeds[k])
  // would (data order, dropout masks, optimizer; cfg.seed itself is not used). Every subset must
  // have the same size: ragged last batches of different lengths are not supported here
  // (train_models groups subsets by size). resume_path and on_epoch_end are not supported.
  // on_step(epoch, mean over models of the step's loss) runs after every optimizer step.
  // Returns epoch_loss[k][e], as nn::TrainResult::epoch_loss of model k.
  std::vector<std::vector<double>> train(
      const Tensor& x, const Tensor& targets, const std::vector<std::vector<int64_t>>& subsets,
      const std::vector<uint64_t>& seeds, const TrainConfig& cfg,
      const std::function<void(int epoch, double loss)>& on_step = nullptr);

  // Outputs (B, R, C) of every model for one input X (R, ...) shared by all, in evaluation mode,
  // in chunks of `chunk` rows (with nn::predict's chunk the bits equal nn::predict's).
  Tensor predict(const Tensor& x, int64_t chunk = 1000);

 private:
  struct Work;
  // Forward of all layers into w; in0 is (B,R,in) or (R,in) shared; dropout from `drop_seeds`
  // with call index `call` when non-empty.
  void forward(Work& w, const Tensor& in0, const std::vector<uint64_t>& drop_seeds, uint64_t call);
  Work make_work(int64_t rows, bool training) const;

  std::vector<int64_t> sizes_;
  double dropout_ = 0.0;
  bool bias_ = true;
  int64_t count_ = 0;
  DType dtype_ = DType::f32;
  Device device_;
  std::vector<Tensor> w_, b_;
};

// The generic "train these subset models" call. For an Mlp spec the fast path below; for any
// other model a correct fallback: one nn::train per subset, same seeds and recipe.
// Trains one model per subset: model k has nn::Init seed seeds[k] (so the same initial weights
// as nn::make_model(spec, {seeds[k], x.dtype(), x.device()})) and trains on rows subsets[k] of
// (X, targets) with TrainConfig seed seeds[k] and the rest of `recipe`: the model nn::train would
// give with one BLAS thread, bit for bit (see the top of this file). Subsets of equal size are
// trained together, up to `max_models` at a time (bench_subset_training: B = 4 to 16 ran alike on
// this 2-core machine, B = 32 up to 1.3x slower per model, likely because 32 models' weights,
// gradients and momentum, 1.3 MB each for the MNIST MLP, stream from L3 at every step; keep B at
// least the thread count, the batched GEMM runs OpenMP over models). Subsets of different sizes
// go in different batches (a size held by one subset alone trains as a batch of one: correct, not
// faster). One progress line (recipe.progress, label recipe.what) with an ETA covers all of them.
// If epoch_loss is non-null it receives (*epoch_loss)[k][e] as nn::TrainResult::epoch_loss.
std::vector<std::unique_ptr<Model>> train_models(const std::string& spec, const Tensor& x,
                                               const Tensor& targets,
                                               const std::vector<std::vector<int64_t>>& subsets,
                                               const std::vector<uint64_t>& seeds,
                                               const TrainConfig& recipe, int64_t max_models = 16,
                                               std::vector<std::vector<double>>* epoch_loss = nullptr);

// losses[k][j] = the loss of sample j of (X (R, ...), targets (R, C)) under models[k] in
// evaluation mode: softmax cross-entropy (or summed squared error) of its outputs, the same bits
// as ops::softmax_xent(nn::predict(*models[k], X), targets) (or ops::mse). Models are run
// `max_models` at a time through MlpBatch::predict when they are Mlps, one nn::predict each
// otherwise.
std::vector<std::vector<double>> test_losses(const std::vector<std::unique_ptr<Model>>& models,
                                             const Tensor& x, const Tensor& targets,
                                             LossKind loss = LossKind::cross_entropy,
                                             int64_t max_models = 32);

}  // namespace nn
}  // namespace iif
