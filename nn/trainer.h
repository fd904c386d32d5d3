// The seeded, deterministic mini-batch trainer. Data order is a Philox permutation keyed by
// (seed, epoch) and dropout masks are keyed by (seed, epoch, call), so the same seed and the
// same thread count give bit-identical weights, and a run resumed from an epoch checkpoint
// continues exactly as if it had never stopped.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "nn/datasets.h"
#include "nn/models.h"

namespace iif {
namespace nn {

enum class LossKind { cross_entropy, mse };

struct TrainConfig {
  int epochs = 50;
  int64_t batch = 64;
  std::string optimizer = "sgd";  // "sgd" | "adam"
  double lr = 0.01;
  double momentum = 0.9;
  double weight_decay = 0.0;
  uint64_t seed = 0;
  LossKind loss = LossKind::cross_entropy;
  bool progress = true;
  // false: dropout off during training (IIF's unlearning and path epochs use the deterministic loss).
  bool train_mode = true;
  std::string what = "train";  // label of the progress line
  // Resumable training: if set, a checkpoint with optimizer state is written every
  // `checkpoint_every` epochs (and at the end), and an existing one is resumed from.
  std::string resume_path;
  int checkpoint_every = 1;
  // Called after each epoch with the 1-based epoch number (TracIn keeps checkpoints this way).
  std::function<void(int epoch, Model& model)> on_epoch_end;
};

struct TrainResult {
  std::vector<double> epoch_loss;  // mean training loss of each epoch run in this call
  double seconds = 0.0;
  double samples_per_second = 0.0;
  int resumed_from_epoch = 0;
};

// Trains on inputs X (N, ...) with targets T (N, C): soft class weights for cross-entropy,
// values for MSE. Model, X and T must share a device and dtype.
TrainResult train(Model& model, const Tensor& inputs, const Tensor& targets, const TrainConfig& cfg);

// Classification convenience: one-hot targets from the labels.
TrainResult train(Model& model, const data::Dataset& data, const TrainConfig& cfg);

// Logits (N, C) in evaluation mode, in batches.
Tensor predict(Model& model, const Tensor& inputs, int64_t batch = 1000);
double accuracy(Model& model, const data::Dataset& data, int64_t batch = 1000);

}  // namespace nn
}  // namespace iif
