// Retraining ground truth for LDS (see ground_truth.h).
#include "attribution/ground_truth.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <nlohmann/json.hpp>

#include "engine/ops.h"
#include "engine/progress.h"
#include "nn/model_batch.h"

namespace iif {
namespace attr {

std::string fingerprint(const Tensor& x, const std::vector<int64_t>& labels) {
  const Tensor h = x.to(Device::cpu());
  uint64_t f = 1469598103934665603ull;
  auto mix = [&](const unsigned char* p, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) f = (f ^ p[i]) * 1099511628211ull;
  };
  mix(static_cast<const unsigned char*>(h.raw()), h.nbytes());
  mix(reinterpret_cast<const unsigned char*>(labels.data()), labels.size() * sizeof(int64_t));
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(f));
  return buf;
}

nlohmann::json recipe_key(const nn::TrainConfig& r) {
  return {{"epochs", r.epochs},   {"batch", r.batch},       {"optimizer", r.optimizer},
          {"lr", r.lr},           {"momentum", r.momentum}, {"weight_decay", r.weight_decay},
          {"seed", r.seed}};
}

std::vector<std::vector<double>> subset_losses(const GroundTruthSpec& spec, const LabeledSet& train,
                                               const LabeledSet& test, const eval::Subsets& subsets,
                                               const std::string& subsets_key) {
  const nn::TrainConfig& r = spec.recipe;
  nlohmann::json key = {
      {"what", "subset test losses"}, {"model", spec.model_spec}, {"runs", spec.runs_per_subset},
      {"train", fingerprint(train.x, train.labels)}, {"test", fingerprint(test.x, test.labels)},
      {"subsets", subsets_key}, {"count", subsets.size()},
      // Trained by nn::train_models (one BLAS thread's rounding, whatever the thread count).
      {"trainer", "batched"}};
  key.update(recipe_key(r));  // flat, as before: the cache folders of earlier runs keep their names
  const Tensor t_test = ops::one_hot(test.labels, test.num_classes, test.x.dtype(), test.x.device());
  const Tensor t_train =
      ops::one_hot(train.labels, train.num_classes, train.x.dtype(), train.x.device());
  const int runs = spec.runs_per_subset;
  if (runs < 1)
    throw std::invalid_argument("subset_losses: runs_per_subset = " + std::to_string(runs) +
                                " must be at least 1");
  // Subsets ms, every run of each: one model per (m, run), trained together.
  auto compute_many = [&](const std::vector<int64_t>& ms) {
    std::vector<std::vector<int64_t>> rows;
    std::vector<uint64_t> seeds;
    for (int64_t m : ms)
      for (int run = 0; run < runs; ++run) {
        rows.push_back(subsets[static_cast<std::size_t>(m)]);
        seeds.push_back(r.seed + 1000003ull * static_cast<uint64_t>(m) + static_cast<uint64_t>(run));
      }
    nn::TrainConfig c = r;
    c.progress = false;
    c.resume_path.clear();
    const auto models = nn::train_models(spec.model_spec, train.x, t_train, rows, seeds, c,
                                         spec.models_per_batch);
    const auto losses = nn::test_losses(models, test.x, t_test);
    std::vector<std::vector<double>> mean(ms.size(),
                                          std::vector<double>(static_cast<std::size_t>(test.size()), 0.0));
    for (std::size_t q = 0; q < ms.size(); ++q)
      for (int run = 0; run < runs; ++run) {
        const auto& l = losses[q * static_cast<std::size_t>(runs) + static_cast<std::size_t>(run)];
        for (std::size_t j = 0; j < l.size(); ++j) mean[q][j] += l[j] / runs;
      }
    return mean;
  };
  // Models per call: a multiple of the runs, about models_per_batch in all.
  const int64_t chunk = std::max<int64_t>(1, spec.models_per_batch / runs);
  Progress progress("ground truth (subset models)", static_cast<int64_t>(subsets.size()), spec.progress);
  auto report = [&](int64_t done, int64_t) { progress.update(done); };
  std::vector<std::vector<double>> out;
  if (spec.cache_dir.empty()) {
    for (std::size_t s = 0; s < subsets.size(); s += static_cast<std::size_t>(chunk)) {
      std::vector<int64_t> ms;
      for (std::size_t m = s; m < std::min(subsets.size(), s + static_cast<std::size_t>(chunk)); ++m)
        ms.push_back(static_cast<int64_t>(m));
      for (auto& v : compute_many(ms)) out.push_back(std::move(v));
      report(static_cast<int64_t>(out.size()), 0);
    }
  } else {
    // One folder per key, so runs with other settings keep their own results side by side.
    const std::string k = key.dump();
    eval::SubsetCache cache(spec.cache_dir + "/" + eval::key_folder(k), k);
    out = cache.fill_chunked(static_cast<int64_t>(subsets.size()), chunk, compute_many, report);
  }
  progress.finish();
  return out;
}

}  // namespace attr
}  // namespace iif
