// Evaluation of attribution scores (see attribution/evaluation.h): average ranks, Spearman,
// ROC AUC by Mann-Whitney, LDS subsets and predictions, and the resumable subset cache.
#include "attribution/evaluation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <system_error>

#include <nlohmann/json.hpp>

#include "engine/npy.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace iif {
namespace eval {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string num(double x) {  // shortest form that reads back as x ("0.3", not "0.300000")
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  for (int prec = 1; prec <= 17; ++prec) {
    char b[32];
    std::snprintf(b, sizeof b, "%.*g", prec, x);
    if (std::strtod(b, nullptr) == x) return b;
  }
  return buf;
}

}  // namespace

// ---- ranks and correlations ---------------------------------------------------------------

std::vector<double> average_ranks(const std::vector<double>& x) {
  const std::size_t n = x.size();
  for (std::size_t i = 0; i < n; ++i)
    if (std::isnan(x[i]))
      throw std::invalid_argument("average_ranks: x[" + std::to_string(i) +
                                  "] is NaN; NaN has no rank");
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
  std::vector<double> r(n);
  for (std::size_t i = 0; i < n;) {
    std::size_t j = i + 1;
    while (j < n && x[order[j]] == x[order[i]]) ++j;
    // Sorted positions i..j-1 hold ranks i+1..j; each gets their mean.
    const double rank = 0.5 * (static_cast<double>(i + 1) + static_cast<double>(j));
    for (std::size_t k = i; k < j; ++k) r[order[k]] = rank;
    i = j;
  }
  return r;
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size())
    throw std::invalid_argument("spearman: the two sides have " + std::to_string(a.size()) +
                                " and " + std::to_string(b.size()) + " values; they must match");
  const std::size_t n = a.size();
  if (n < 2) return kNaN;
  // Like scipy's spearmanr (nan_policy='propagate', what dattri calls): NaN in, NaN out, and
  // LDS then skips the test sample.
  for (std::size_t i = 0; i < n; ++i)
    if (std::isnan(a[i]) || std::isnan(b[i])) return kNaN;
  const std::vector<double> ra = average_ranks(a), rb = average_ranks(b);
  double ma = 0.0, mb = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    ma += ra[i];
    mb += rb[i];
  }
  ma /= static_cast<double>(n);
  mb /= static_cast<double>(n);
  double cov = 0.0, va = 0.0, vb = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double da = ra[i] - ma, db = rb[i] - mb;
    cov += da * db;
    va += da * da;
    vb += db * db;
  }
  // A constant side has all ranks equal to their mean, so its deviations are exactly 0.
  if (va == 0.0 || vb == 0.0) return kNaN;
  // sqrt(va * vb) rather than sqrt(va) * sqrt(vb): with identical ranks va == vb and
  // sqrt(fl(va * va)) == va exactly, so a perfectly monotone pair gives exactly 1.
  const double rho = cov / std::sqrt(va * vb);
  return std::max(-1.0, std::min(1.0, rho));
}

double roc_auc(const std::vector<double>& score, const std::vector<bool>& is_positive) {
  if (score.size() != is_positive.size())
    throw std::invalid_argument("roc_auc: " + std::to_string(score.size()) + " scores but " +
                                std::to_string(is_positive.size()) + " labels; they must match");
  int64_t n_pos = 0;
  for (std::size_t i = 0; i < score.size(); ++i) {
    if (std::isnan(score[i]))
      throw std::invalid_argument("roc_auc: score[" + std::to_string(i) +
                                  "] is NaN; every sample needs a score to be ranked");
    n_pos += is_positive[i] ? 1 : 0;
  }
  const int64_t n_neg = static_cast<int64_t>(score.size()) - n_pos;
  if (n_pos == 0 || n_neg == 0)
    throw std::invalid_argument("roc_auc: " + std::to_string(n_pos) + " positives and " +
                                std::to_string(n_neg) +
                                " negatives; the AUC needs at least one of each");
  // Mann-Whitney: U = (sum of the positives' average ranks) - n_pos (n_pos + 1) / 2 counts the
  // (positive, negative) pairs ordered correctly, a tie counting one half; AUC = U / (n_pos n_neg).
  const std::vector<double> r = average_ranks(score);
  double rank_sum = 0.0;
  for (std::size_t i = 0; i < r.size(); ++i)
    if (is_positive[i]) rank_sum += r[i];
  const double np = static_cast<double>(n_pos), nn = static_cast<double>(n_neg);
  const double u = rank_sum - np * (np + 1.0) / 2.0;
  return u / (np * nn);
}

// ---- LDS ----------------------------------------------------------------------------------

Subsets make_subsets(int64_t n, double alpha, int64_t m, uint64_t seed) {
  if (!(alpha > 0.0 && alpha <= 1.0))
    throw std::invalid_argument("make_subsets: alpha = " + num(alpha) +
                                " must be in (0, 1] (the fraction of the " + std::to_string(n) +
                                " training samples in each subset)");
  if (m < 1)
    throw std::invalid_argument("make_subsets: m = " + std::to_string(m) +
                                " subsets; at least 1 is needed (LDS needs at least 2)");
  if (n < 1)
    throw std::invalid_argument("make_subsets: n = " + std::to_string(n) +
                                " training samples; at least 1 is needed");
  // Half away from zero (std::llround), e.g. alpha = 0.5, n = 5 gives 3.
  const int64_t k = static_cast<int64_t>(std::llround(alpha * static_cast<double>(n)));
  if (k < 1)
    throw std::invalid_argument("make_subsets: alpha = " + num(alpha) + " of n = " +
                                std::to_string(n) +
                                " rounds to an empty subset; raise alpha or n");
  Subsets s(static_cast<std::size_t>(m));
  for (int64_t i = 0; i < m; ++i)
    s[i] = rng::sample_without_replacement(n, k, seed, static_cast<uint64_t>(i));
  return s;
}

namespace {

void check_scores(const char* what, const std::vector<double>& scores, int64_t n_train,
                  int64_t n_test, const Subsets& subsets) {
  if (n_train < 0 || n_test < 0)
    throw std::invalid_argument(std::string(what) + ": n_train = " + std::to_string(n_train) +
                                " and n_test = " + std::to_string(n_test) +
                                " must be non-negative");
  if (static_cast<int64_t>(scores.size()) != n_train * n_test)
    throw std::invalid_argument(std::string(what) + ": scores hold " +
                                std::to_string(scores.size()) + " values; expected n_train x "
                                "n_test = " + std::to_string(n_train) + " x " +
                                std::to_string(n_test) + " = " +
                                std::to_string(n_train * n_test) + " (row-major, train by test)");
  // A duplicate index would count a sample twice; last_seen[i] = the last subset holding i.
  std::vector<int64_t> last_seen(static_cast<std::size_t>(n_train), -1);
  for (std::size_t m = 0; m < subsets.size(); ++m)
    for (int64_t i : subsets[m]) {
      if (i < 0 || i >= n_train)
        throw std::invalid_argument(std::string(what) + ": subsets[" + std::to_string(m) +
                                    "] holds index " + std::to_string(i) +
                                    ", outside [0, n_train = " + std::to_string(n_train) + ")");
      if (last_seen[i] == static_cast<int64_t>(m))
        throw std::invalid_argument(std::string(what) + ": subsets[" + std::to_string(m) +
                                    "] holds index " + std::to_string(i) +
                                    " twice; subset members must be distinct");
      last_seen[i] = static_cast<int64_t>(m);
    }
}

std::vector<std::vector<double>> predict_unchecked(const std::vector<double>& scores,
                                                   int64_t n_test, const Subsets& subsets) {
  // pred is (M, n_test); scores is (n_train, n_test): add whole rows, which are contiguous.
  std::vector<std::vector<double>> pred(subsets.size(),
                                        std::vector<double>(static_cast<std::size_t>(n_test)));
  for (std::size_t m = 0; m < subsets.size(); ++m) {
    double* out = pred[m].data();
    for (int64_t i : subsets[m]) {
      const double* row = scores.data() + i * n_test;
      for (int64_t j = 0; j < n_test; ++j) out[j] += row[j];
    }
  }
  return pred;
}

}  // namespace

std::vector<std::vector<double>> predict_subset_losses(const std::vector<double>& scores,
                                                       int64_t n_train, int64_t n_test,
                                                       const Subsets& subsets) {
  check_scores("predict_subset_losses", scores, n_train, n_test, subsets);
  return predict_unchecked(scores, n_test, subsets);
}

LdsResult lds(const std::vector<double>& scores, int64_t n_train, int64_t n_test,
              const Subsets& subsets, const std::vector<std::vector<double>>& true_losses) {
  check_scores("lds", scores, n_train, n_test, subsets);
  if (subsets.size() < 2)
    throw std::invalid_argument("lds: " + std::to_string(subsets.size()) +
                                " subsets; a rank correlation over subsets needs at least 2");
  if (true_losses.size() != subsets.size())
    throw std::invalid_argument("lds: true_losses has " + std::to_string(true_losses.size()) +
                                " rows but there are " + std::to_string(subsets.size()) +
                                " subsets; expected one row of n_test losses per subset");
  for (std::size_t m = 0; m < true_losses.size(); ++m)
    if (static_cast<int64_t>(true_losses[m].size()) != n_test)
      throw std::invalid_argument("lds: true_losses[" + std::to_string(m) + "] has " +
                                  std::to_string(true_losses[m].size()) +
                                  " losses; expected n_test = " + std::to_string(n_test));
  const auto pred = predict_unchecked(scores, n_test, subsets);
  const std::size_t n_sub = subsets.size();
  LdsResult r;
  r.per_test.assign(static_cast<std::size_t>(n_test), kNaN);
  std::vector<double> truth(n_sub), predicted(n_sub);
  double sum = 0.0;
  for (int64_t j = 0; j < n_test; ++j) {
    for (std::size_t m = 0; m < n_sub; ++m) {
      truth[m] = true_losses[m][j];
      predicted[m] = pred[m][j];
    }
    const double rho = spearman(truth, predicted);
    r.per_test[j] = rho;
    if (!std::isnan(rho)) {
      sum += rho;
      ++r.n_valid;
    }
  }
  r.lds = r.n_valid > 0 ? sum / static_cast<double>(r.n_valid) : kNaN;
  return r;
}

// ---- SubsetCache --------------------------------------------------------------------------

namespace {

const char kKeyFile[] = "key.json";

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("SubsetCache: cannot read " + p.string());
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_text_atomic(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    f.flush();
    if (!f) throw std::runtime_error("SubsetCache: cannot write " + tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw std::runtime_error("SubsetCache: cannot rename " + tmp.string() + " to " + p.string() +
                             ": " + ec.message());
  }
}

std::string clip(const std::string& s, std::size_t max = 80) {
  return s.size() <= max ? s : s.substr(0, max) + "...";
}

// The JSON pointer and both values at the first place (depth first, object keys in sorted
// order) where a and b differ; nullopt if equal.
std::optional<std::string> first_json_difference(const nlohmann::json& a,
                                                 const nlohmann::json& b,
                                                 const std::string& path) {
  const std::string where = path.empty() ? "/" : path;
  if (a.is_object() && b.is_object()) {
    auto ia = a.begin();
    auto ib = b.begin();
    for (; ia != a.end() && ib != b.end(); ++ia, ++ib) {
      if (ia.key() != ib.key()) {
        // The smaller key is present on its side only (both sides iterate in sorted order).
        if (ia.key() < ib.key())
          return path + "/" + ia.key() + ": present in the cached key only (" +
                 clip(ia.value().dump()) + ")";
        return path + "/" + ib.key() + ": present in this run's key only (" +
               clip(ib.value().dump()) + ")";
      }
      if (auto d = first_json_difference(ia.value(), ib.value(), path + "/" + ia.key())) return d;
    }
    if (ia != a.end())
      return path + "/" + ia.key() + ": present in the cached key only (" +
             clip(ia.value().dump()) + ")";
    if (ib != b.end())
      return path + "/" + ib.key() + ": present in this run's key only (" +
             clip(ib.value().dump()) + ")";
    return std::nullopt;
  }
  if (a.is_array() && b.is_array()) {
    const std::size_t n = std::min(a.size(), b.size());
    for (std::size_t i = 0; i < n; ++i)
      if (auto d = first_json_difference(a[i], b[i], path + "/" + std::to_string(i))) return d;
    if (a.size() != b.size())
      return where + ": cached array has " + std::to_string(a.size()) +
             " elements, this run's has " + std::to_string(b.size());
    return std::nullopt;
  }
  if (a == b) return std::nullopt;
  return where + ": cached " + clip(a.dump()) + ", this run " + clip(b.dump());
}

// Where two keys first differ: as JSON when both parse (a JSON pointer and both values),
// otherwise by character offset with a little text of each.
std::string describe_difference(const std::string& cached, const std::string& current) {
  const auto a = nlohmann::json::parse(cached, nullptr, /*allow_exceptions=*/false);
  const auto b = nlohmann::json::parse(current, nullptr, /*allow_exceptions=*/false);
  if (!a.is_discarded() && !b.is_discarded())
    if (auto d = first_json_difference(a, b, "")) return "at " + *d;
  std::size_t i = 0;
  while (i < cached.size() && i < current.size() && cached[i] == current[i]) ++i;
  const std::size_t from = i > 20 ? i - 20 : 0;
  return "at character " + std::to_string(i) + ": cached \"" + clip(cached.substr(from), 60) +
         "\", this run \"" + clip(current.substr(from), 60) + "\"";
}

// True if the keys mean the same: equal JSON when both parse (so a change in how a JSON
// library formats numbers or spaces does not throw away finished results), else equal bytes.
bool same_key(const std::string& cached, const std::string& current) {
  if (cached == current) return true;
  const auto a = nlohmann::json::parse(cached, nullptr, false);
  const auto b = nlohmann::json::parse(current, nullptr, false);
  return !a.is_discarded() && !b.is_discarded() && a == b;
}

}  // namespace

std::string key_folder(const std::string& key) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : key) h = (h ^ ch) * 1099511628211ull;
  char sub[17];
  std::snprintf(sub, sizeof sub, "%016llx", static_cast<unsigned long long>(h));
  return sub;
}

SubsetCache::SubsetCache(std::string dir, std::string key)
    : dir_(std::move(dir)), key_(std::move(key)) {
  if (dir_.empty()) throw std::invalid_argument("SubsetCache: the directory name is empty");
  if (key_.empty())
    throw std::invalid_argument("SubsetCache: " + dir_ +
                                ": the key is empty; pass everything that determines the "
                                "results (e.g. the JSON of data, model, recipe, subsets, seeds)");
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec || !fs::is_directory(dir_))
    throw std::runtime_error("SubsetCache: cannot create the directory " + dir_ +
                             (ec ? ": " + ec.message() : ": a file of that name exists"));
  const fs::path key_path = fs::path(dir_) / kKeyFile;
  if (fs::exists(key_path)) {
    const std::string cached = read_text(key_path);
    if (!same_key(cached, key_))
      throw std::runtime_error(
          "SubsetCache: the directory " + dir_ + " caches results for a different key; they "
          "first differ " + describe_difference(cached, key_) + ". Use another directory, or "
          "delete " + dir_ + " to recompute.");
    return;
  }
  // No key yet: subset files here would be of unknown origin (the key is written first).
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("subset_", 0) == 0 && e.path().extension() == ".npy")
      throw std::runtime_error("SubsetCache: the directory " + dir_ + " holds " + name +
                               " but no " + kKeyFile +
                               ", so what it was computed from is unknown; delete it or use "
                               "another directory");
  }
  write_text_atomic(key_path, key_);
}

namespace {
std::string subset_path(const std::string& dir, int64_t m) {
  if (m < 0)
    throw std::invalid_argument("SubsetCache: subset index " + std::to_string(m) +
                                " must be non-negative");
  return (fs::path(dir) / ("subset_" + std::to_string(m) + ".npy")).string();
}
}  // namespace

bool SubsetCache::has(int64_t m) const { return fs::exists(subset_path(dir_, m)); }

std::vector<double> SubsetCache::get(int64_t m) const {
  const std::string path = subset_path(dir_, m);
  Tensor t;
  try {
    t = npy::load(path);
  } catch (const std::exception& e) {
    throw std::runtime_error("SubsetCache: cache entry " + path +
                             " is corrupt or truncated (" + e.what() +
                             "); delete it to recompute that subset");
  }
  if (t.dtype() != DType::f64 || t.ndim() != 1)
    throw std::runtime_error("SubsetCache: cache entry " + path + " holds a " +
                             dtype_name(t.dtype()) + " array of shape " + t.shape().str() +
                             "; expected a float64 vector. Delete it to recompute that subset");
  return t.to_vector();
}

void SubsetCache::put(int64_t m, const std::vector<double>& values) {
  const std::string path = subset_path(dir_, m);
  npy::save(path, Tensor::from_vector(values, Shape{static_cast<int64_t>(values.size())},
                                      DType::f64));
}

std::vector<std::vector<double>> SubsetCache::fill(
    int64_t count, const std::function<std::vector<double>(int64_t)>& compute,
    const std::function<void(int64_t, int64_t)>& progress) {
  if (!compute) throw std::invalid_argument("SubsetCache::fill: compute is empty");
  return fill_chunked(
      count, 1,
      [&](const std::vector<int64_t>& ms) {
        return std::vector<std::vector<double>>{compute(ms.at(0))};
      },
      progress);
}

std::vector<std::vector<double>> SubsetCache::fill_chunked(
    int64_t count, int64_t chunk,
    const std::function<std::vector<std::vector<double>>(const std::vector<int64_t>&)>& compute_many,
    const std::function<void(int64_t, int64_t)>& progress) {
  if (chunk < 1)
    throw std::invalid_argument("SubsetCache::fill: chunk = " + std::to_string(chunk) +
                                " must be at least 1");
  return fill_calls(count, [&](const std::vector<int64_t>& missing) {
    std::vector<std::vector<int64_t>> calls;
    for (std::size_t s = 0; s < missing.size(); s += static_cast<std::size_t>(chunk))
      calls.emplace_back(missing.begin() + static_cast<std::ptrdiff_t>(s),
                         missing.begin() + static_cast<std::ptrdiff_t>(
                                               std::min(missing.size(), s + static_cast<std::size_t>(chunk))));
    return calls;
  }, compute_many, progress);
}

std::vector<std::vector<double>> SubsetCache::fill_groups(
    int64_t count, const std::vector<std::vector<int64_t>>& groups,
    const std::function<std::vector<std::vector<double>>(const std::vector<int64_t>&)>& compute_many,
    const std::function<void(int64_t, int64_t)>& progress) {
  std::vector<int> seen(static_cast<std::size_t>(std::max<int64_t>(count, 0)), 0);
  for (const auto& g : groups)
    for (int64_t m : g) {
      if (m < 0 || m >= count)
        throw std::invalid_argument("SubsetCache::fill_groups: index " + std::to_string(m) + " is outside [0, " +
                                    std::to_string(count) + ")");
      if (seen[static_cast<std::size_t>(m)]++)
        throw std::invalid_argument("SubsetCache::fill_groups: index " + std::to_string(m) + " is in two groups");
    }
  for (int64_t m = 0; m < count; ++m)
    if (!seen[static_cast<std::size_t>(m)])
      throw std::invalid_argument("SubsetCache::fill_groups: index " + std::to_string(m) + " is in no group");
  return fill_calls(count, [&](const std::vector<int64_t>& missing) {
    std::vector<bool> is_missing(static_cast<std::size_t>(count), false);
    for (int64_t m : missing) is_missing[static_cast<std::size_t>(m)] = true;
    std::vector<std::vector<int64_t>> calls;
    for (const auto& g : groups)
      if (std::any_of(g.begin(), g.end(), [&](int64_t m) { return is_missing[static_cast<std::size_t>(m)]; }))
        calls.push_back(g);
    return calls;
  }, compute_many, progress);
}

std::vector<std::vector<double>> SubsetCache::fill_calls(
    int64_t count,
    const std::function<std::vector<std::vector<int64_t>>(const std::vector<int64_t>& missing)>& calls,
    const std::function<std::vector<std::vector<double>>(const std::vector<int64_t>&)>& compute_many,
    const std::function<void(int64_t, int64_t)>& progress) {
  if (count < 0)
    throw std::invalid_argument("SubsetCache::fill: count = " + std::to_string(count) +
                                " must be non-negative");
  if (!compute_many) throw std::invalid_argument("SubsetCache::fill: compute is empty");
  std::vector<std::vector<double>> out(static_cast<std::size_t>(count));
  std::vector<bool> cached(static_cast<std::size_t>(count));
  // Every subset is evaluated on the same samples, so every entry has the length of the first
  // one seen; a mismatch means a stale or foreign file, or a compute() whose output changed.
  int64_t ref = -1;
  std::string ref_what;
  auto check_length = [&](int64_t m, const std::string& what) {
    const int64_t len = static_cast<int64_t>(out[m].size());
    if (ref < 0) {
      ref = len;
      ref_what = what;
    } else if (len != ref) {
      throw std::runtime_error("SubsetCache: " + what + " holds " + std::to_string(len) +
                               " values but " + ref_what + " holds " + std::to_string(ref) +
                               "; every subset must give one value per test sample");
    }
  };
  int64_t done = 0;
  // Cached entries first, so a corrupt file is reported before any long computation starts.
  std::vector<int64_t> missing;
  for (int64_t m = 0; m < count; ++m) {
    if ((cached[m] = has(m))) {
      out[m] = get(m);
      check_length(m, subset_path(dir_, m));
      ++done;
    } else {
      missing.push_back(m);
    }
  }
  // `done` counts cached entries too, so a resumed run's progress reads done / count overall.
  for (const std::vector<int64_t>& ms : calls(missing)) {
    std::vector<std::vector<double>> got = compute_many(ms);
    if (got.size() != ms.size())
      throw std::logic_error("SubsetCache::fill: compute returned " + std::to_string(got.size()) +
                             " results for " + std::to_string(ms.size()) + " subsets");
    for (std::size_t q = 0; q < ms.size(); ++q) {
      const int64_t m = ms[q];
      if (cached[m]) continue;  // a cached member of a recomputed group: the file stays as written
      out[m] = std::move(got[q]);
      check_length(m, "compute(" + std::to_string(m) + ")");
      put(m, out[m]);
      ++done;
    }
    if (progress) progress(done, count);
  }
  return out;
}

}  // namespace eval
}  // namespace iif
