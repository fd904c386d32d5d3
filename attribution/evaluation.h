// Evaluation of attribution scores: Spearman rank correlation (ties get average ranks), ROC AUC
// (ties count one half), the linear datamodeling score (LDS, DESIGN.md section 7) and a
// resumable on-disk cache for retraining-based ground truth.
//
// Sign convention (DESIGN.md section 5): S[i][j] is the estimated change in test sample j's loss
// caused by including training sample i; positive = harmful. A subset's predicted loss is
// sum_{i in subset} S[i][j], so a good method correlates positively with the true losses.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace iif {
namespace eval {

// Ranks 1..n with ties replaced by the mean of the ranks they span ([10, 20, 20, 30] ->
// [1, 2.5, 2.5, 4]). O(n log n). Throws std::invalid_argument on NaN.
std::vector<double> average_ranks(const std::vector<double>& x);

// Spearman's rho = Pearson correlation of average ranks. NaN if either side is constant,
// n < 2, or any value is NaN (as scipy's spearmanr; LDS skips those, as dattri does).
// Throws std::invalid_argument if the sizes differ.
double spearman(const std::vector<double>& a, const std::vector<double>& b);

// Area under the ROC curve of `score` for the positives in `is_positive` (higher score = more
// likely positive), ties counted one half (= the Mann-Whitney U statistic / (n_pos n_neg)).
// Throws std::invalid_argument if there are no positives or no negatives, or a score is NaN.
double roc_auc(const std::vector<double>& score, const std::vector<bool>& is_positive);

// Subset membership for LDS: `subsets[m]` lists the training indices of subset m.
using Subsets = std::vector<std::vector<int64_t>>;

// M subsets of exactly round(alpha * n) distinct training indices each, drawn without
// replacement from the counter RNG with (seed, stream = m): reproducible, shared by all methods.
// The size rounds half away from zero. Throws std::invalid_argument unless 0 < alpha <= 1,
// m >= 1 and the size is at least 1.
Subsets make_subsets(int64_t n, double alpha, int64_t m, uint64_t seed);

// Predicted subset losses: pred[m][j] = sum_{i in subsets[m]} scores[i * n_test + j].
// scores is row-major (n_train, n_test). Throws std::invalid_argument on a size mismatch or a
// subset index that is out of range or repeated.
std::vector<std::vector<double>> predict_subset_losses(const std::vector<double>& scores,
                                                       int64_t n_train, int64_t n_test,
                                                       const Subsets& subsets);

struct LdsResult {
  double lds = 0.0;                // mean over test samples of the per-test Spearman (NaN skipped)
  std::vector<double> per_test;    // Spearman for each test sample (NaN where undefined)
  int64_t n_valid = 0;             // test samples with a defined correlation
};

// LDS from scores (n_train, n_test) row-major and true losses[m][j] of the model trained on
// subset m, evaluated on test sample j. Throws std::invalid_argument on inconsistent sizes or
// fewer than 2 subsets. lds is NaN if no test sample has a defined correlation.
LdsResult lds(const std::vector<double>& scores, int64_t n_train, int64_t n_test,
              const Subsets& subsets, const std::vector<std::vector<double>>& true_losses);

// A resumable cache of per-subset results on disk: directory `dir` holds `key.json` (the string
// that determines the results, e.g. the JSON of the data, model, recipe, subsets and seeds) and
// one file `subset_<m>.npy` per finished subset (a float64 vector). Opening a directory whose
// key differs throws std::runtime_error naming the directory and where the keys first differ
// (a JSON pointer when both keys are JSON; keys that are equal as JSON count as the same key).
// Writes are atomic (tmp + rename), so a run killed half way resumes with exactly the finished
// subsets. A corrupt or truncated subset file throws naming the file; it is never silently
// recomputed. The key must not be empty.
// The folder name for a cache key: FNV-1a (64 bit) of the key's text, 16 hex digits. Caches
// with other settings get other folders, side by side under one root.
std::string key_folder(const std::string& key);

class SubsetCache {
 public:
  SubsetCache(std::string dir, std::string key);
  bool has(int64_t m) const;
  std::vector<double> get(int64_t m) const;
  void put(int64_t m, const std::vector<double>& values);
  // Runs compute(m) for every m in [0, count) not yet cached, storing each result as it
  // finishes; `progress(done, count)` is called after each computed subset, `done` counting
  // the cached ones too. Cached entries are read (and checked) before anything is computed.
  // Returns all results in order; they must all have the same length.
  std::vector<std::vector<double>> fill(
      int64_t count, const std::function<std::vector<double>(int64_t)>& compute,
      const std::function<void(int64_t, int64_t)>& progress = nullptr);
  // The same, computing up to `chunk` missing subsets per call: compute_many(ms) returns one
  // result per index in ms (in order); each is stored as soon as its call returns. For work
  // that runs faster in batches (many subset models trained at once).
  std::vector<std::vector<double>> fill_chunked(
      int64_t count, int64_t chunk,
      const std::function<std::vector<std::vector<double>>(const std::vector<int64_t>&)>& compute_many,
      const std::function<void(int64_t, int64_t)>& progress = nullptr);
  // The same with the calls fixed in advance: `groups` partition [0, count), and compute_many(g)
  // runs with the whole group g whenever any of its entries is missing, so each group's results
  // always come from one call (IIF's grouped mode scores a group of test samples together).
  // Only the missing entries are stored; cached members keep their files.
  std::vector<std::vector<double>> fill_groups(
      int64_t count, const std::vector<std::vector<int64_t>>& groups,
      const std::function<std::vector<std::vector<double>>(const std::vector<int64_t>&)>& compute_many,
      const std::function<void(int64_t, int64_t)>& progress = nullptr);
  const std::string& dir() const { return dir_; }

 private:
  // The common part: reads every cached entry, then runs compute_many on each list that
  // calls(missing) returns, storing results as each call returns.
  std::vector<std::vector<double>> fill_calls(
      int64_t count,
      const std::function<std::vector<std::vector<int64_t>>(const std::vector<int64_t>& missing)>& calls,
      const std::function<std::vector<std::vector<double>>(const std::vector<int64_t>&)>& compute_many,
      const std::function<void(int64_t, int64_t)>& progress);
  std::string dir_, key_;
};

}  // namespace eval
}  // namespace iif
