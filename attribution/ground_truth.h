// Retraining ground truth for LDS (DESIGN.md section 7): a model trained from scratch on each
// subset with the same recipe, its per-test-sample loss recorded; cached on disk keyed by
// everything that determines it, and resumable (each finished subset is a file).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attribution/evaluation.h"
#include "attribution/labeled_set.h"
#include "nn/trainer.h"

namespace iif {
namespace attr {

struct GroundTruthSpec {
  std::string model_spec;     // as nn::make_model accepts
  nn::TrainConfig recipe;     // epochs, batch, optimizer, lr, ... (seed: base of per-run seeds)
  int runs_per_subset = 1;    // models per subset, losses averaged (R in DESIGN.md)
  std::string cache_dir;      // empty: no cache; results go to <cache_dir>/<hash of the key>/
  bool progress = true;
  // Subset models trained at once (nn::train_models: one batched GEMM per layer for all of them).
  // Results do not depend on it, nor on the thread count.
  int64_t models_per_batch = 8;
};

// A fingerprint (FNV-1a, 64 bit, hex) of a tensor's bytes and a label vector: part of cache keys.
std::string fingerprint(const Tensor& x, const std::vector<int64_t>& labels);
// The settings of a training recipe that determine what it trains (epochs, batch, optimizer,
// lr, momentum, weight decay, seed), as JSON: the one piece every cache key of a trained model
// embeds (subset models, theta*, the scores of the methods).
nlohmann::json recipe_key(const nn::TrainConfig& r);

// losses[m][j] = mean over runs of the cross-entropy of test sample j under the model trained on
// subsets[m]. Run r of subset m uses seed recipe.seed + 1000003 * m + r (init, order, dropout).
// The models are trained models_per_batch at a time by nn::train_models: each is the model
// nn::train gives for that subset and seed with one BLAS thread, bit for bit.
std::vector<std::vector<double>> subset_losses(const GroundTruthSpec& spec, const LabeledSet& train,
                                               const LabeledSet& test, const eval::Subsets& subsets,
                                               const std::string& subsets_key);

}  // namespace attr
}  // namespace iif
