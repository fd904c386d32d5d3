// Retraining ground truth for LDS (see ground_truth.h).
#include "attribution/ground_truth.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "engine/ops.h"
#include "engine/progress.h"

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

std::vector<std::vector<double>> subset_losses(const GroundTruthSpec& spec, const LabeledSet& train,
                                               const LabeledSet& test, const eval::Subsets& subsets,
                                               const std::string& subsets_key) {
  const nn::TrainConfig& r = spec.recipe;
  const nlohmann::json key = {
      {"what", "subset test losses"}, {"model", spec.model_spec}, {"epochs", r.epochs},
      {"batch", r.batch}, {"optimizer", r.optimizer}, {"lr", r.lr}, {"momentum", r.momentum},
      {"weight_decay", r.weight_decay}, {"seed", r.seed}, {"runs", spec.runs_per_subset},
      {"train", fingerprint(train.x, train.labels)}, {"test", fingerprint(test.x, test.labels)},
      {"subsets", subsets_key}, {"count", subsets.size()}};
  const Tensor t_test = ops::one_hot(test.labels, test.num_classes, test.x.dtype(), test.x.device());
  auto compute = [&](int64_t m) {
    std::vector<double> mean(static_cast<std::size_t>(test.size()), 0.0);
    LabeledSet sub;
    sub.x = ops::gather_rows(train.x, subsets[m]);
    for (int64_t i : subsets[m]) sub.labels.push_back(train.labels[i]);
    const Tensor t_sub = ops::one_hot(sub.labels, train.num_classes, sub.x.dtype(), sub.x.device());
    for (int run = 0; run < spec.runs_per_subset; ++run) {
      nn::TrainConfig c = r;
      c.seed = r.seed + 1000003ull * static_cast<uint64_t>(m) + static_cast<uint64_t>(run);
      c.progress = false;
      c.resume_path.clear();
      nn::Init init;
      init.seed = c.seed;
      init.dtype = train.x.dtype();
      auto model = nn::make_model(spec.model_spec, init);
      nn::train(*model, sub.x, t_sub, c);
      const Tensor z = nn::predict(*model, test.x);
      Tensor loss = Tensor::empty({z.dim(0)}, z.dtype(), z.device());
      ops::softmax_xent(z, t_test, loss, nullptr);
      const std::vector<double> l = loss.to_vector();
      for (std::size_t j = 0; j < l.size(); ++j) mean[j] += l[j] / spec.runs_per_subset;
    }
    return mean;
  };
  Progress progress("ground truth (subset models)", static_cast<int64_t>(subsets.size()), spec.progress);
  auto report = [&](int64_t done, int64_t) { progress.update(done); };
  std::vector<std::vector<double>> out;
  if (spec.cache_dir.empty()) {
    for (std::size_t m = 0; m < subsets.size(); ++m) {
      out.push_back(compute(static_cast<int64_t>(m)));
      report(static_cast<int64_t>(m + 1), 0);
    }
  } else {
    // One folder per key, so runs with other settings keep their own results side by side.
    const std::string k = key.dump();
    uint64_t h = 1469598103934665603ull;
    for (unsigned char ch : k) h = (h ^ ch) * 1099511628211ull;
    char sub[17];
    std::snprintf(sub, sizeof sub, "%016llx", static_cast<unsigned long long>(h));
    eval::SubsetCache cache(spec.cache_dir + "/" + sub, k);
    out = cache.fill(static_cast<int64_t>(subsets.size()), compute, report);
  }
  progress.finish();
  return out;
}

}  // namespace attr
}  // namespace iif
