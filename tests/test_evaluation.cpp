// Tests of attribution/evaluation.h: ranks, Spearman and ROC AUC on cases worked out by hand
// (and AUC against a plain count over all pairs), LDS subsets, LDS on scores whose predicted
// losses are a known monotone function of the truth, and the resumable on-disk SubsetCache.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "attribution/evaluation.h"

namespace fs = std::filesystem;
namespace eval = iif::eval;

namespace {

// The message of the E that f throws; fails the test (and returns "") if it throws nothing.
template <class E, class F>
std::string thrown_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL_CHECK("expected an exception, none was thrown");
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A fresh, empty directory under the system temp dir, removed when the object dies.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("iif_test_evaluation_" + name + "_" + std::to_string(rd()) + std::to_string(rd()));
    fs::remove_all(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

// AUC by its definition: the fraction of (positive, negative) pairs where the positive scores
// higher, a tie counting one half. O(n_pos n_neg): the oracle for the rank formula.
double auc_by_pairs(const std::vector<double>& s, const std::vector<bool>& pos) {
  double wins = 0.0, pairs = 0.0;
  for (std::size_t i = 0; i < s.size(); ++i)
    for (std::size_t j = 0; j < s.size(); ++j)
      if (pos[i] && !pos[j]) {
        pairs += 1.0;
        wins += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
      }
  return wins / pairs;
}

}  // namespace

// ---- average_ranks --------------------------------------------------------------------------

TEST_CASE("average_ranks: ties share the mean of the ranks they span") {
  using V = std::vector<double>;
  CHECK(eval::average_ranks(V{10, 20, 20, 30}) == V{1, 2.5, 2.5, 4});
  CHECK(eval::average_ranks(V{3, 1, 2}) == V{3, 1, 2});
  // Two ties of two, unsorted: the 1s span ranks 1-2, the 2s ranks 3-4.
  CHECK(eval::average_ranks(V{2, 1, 2, 1}) == V{3.5, 1.5, 3.5, 1.5});
  // All equal: every rank is (1 + n) / 2.
  CHECK(eval::average_ranks(V{5, 5, 5}) == V{2, 2, 2});
  CHECK(eval::average_ranks(V{-0.0, 0.0}) == V{1.5, 1.5});  // -0 == +0
  CHECK(eval::average_ranks(V{7}) == V{1});
  CHECK(eval::average_ranks(V{}).empty());
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(eval::average_ranks(V{inf, -inf, 0}) == V{3, 1, 2});
  const std::string msg = thrown_message<std::invalid_argument>(
      [] { eval::average_ranks({1.0, std::nan(""), 2.0}); });
  CHECK(contains(msg, "x[1]"));
}

TEST_CASE("average_ranks: the ranks sum to n(n+1)/2 and respect the order of the values") {
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> d(0, 9);  // few distinct values: many ties
  std::vector<double> x(1000);
  for (double& v : x) v = d(gen);
  const std::vector<double> r = eval::average_ranks(x);
  double sum = 0.0;
  for (double v : r) sum += v;
  CHECK(sum == 1000.0 * 1001.0 / 2.0);
  for (std::size_t i = 0; i < x.size(); ++i)
    for (std::size_t j = 0; j < 50; ++j) {
      if (x[i] < x[j]) CHECK(r[i] < r[j]);
      if (x[i] == x[j]) CHECK(r[i] == r[j]);
    }
}

// ---- spearman -------------------------------------------------------------------------------

TEST_CASE("spearman: monotone maps give +1 and -1 exactly, whatever their shape") {
  const std::vector<double> a = {0.3, -2.0, 5.0, 1.0, 4.0, 0.0};
  std::vector<double> cube, exp_neg;
  for (double v : a) {
    cube.push_back(v * v * v);
    exp_neg.push_back(-std::exp(v));
  }
  // Identical ranks give cov == var exactly, so these are exact, not approximate.
  CHECK(eval::spearman(a, cube) == 1.0);
  CHECK(eval::spearman(a, exp_neg) == -1.0);
  // Ties on both sides in the same places are still a perfect monotone relation.
  CHECK(eval::spearman({1, 2, 2, 3}, {10, 50, 50, 51}) == 1.0);
}

TEST_CASE("spearman: small cases with ties, worked out by hand") {
  // a = [1, 2, 2, 3], b = [1, 2, 3, 4]
  // ranks: ra = [1, 2.5, 2.5, 4], rb = [1, 2, 3, 4]; both means are 2.5
  // deviations: da = [-1.5, 0, 0, 1.5], db = [-1.5, -0.5, 0.5, 1.5]
  // sum da db = 2.25 + 0 + 0 + 2.25 = 4.5; sum da^2 = 4.5; sum db^2 = 2.25+.25+.25+2.25 = 5
  // rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
  CHECK(eval::spearman({1, 2, 2, 3}, {1, 2, 3, 4}) == doctest::Approx(std::sqrt(0.9)).epsilon(1e-15));
  // a = [3, 1, 2, 2], b = [10, 20, 20, 30]
  // ra = [4, 1, 2.5, 2.5], rb = [1, 2.5, 2.5, 4]; means 2.5
  // da = [1.5, -1.5, 0, 0], db = [-1.5, 0, 0, 1.5]
  // sum da db = -2.25; sum da^2 = 4.5; sum db^2 = 4.5  ->  rho = -2.25 / 4.5 = -0.5
  CHECK(eval::spearman({3, 1, 2, 2}, {10, 20, 20, 30}) == doctest::Approx(-0.5).epsilon(1e-15));
  // Symmetric in its arguments.
  CHECK(eval::spearman({10, 20, 20, 30}, {3, 1, 2, 2}) == doctest::Approx(-0.5).epsilon(1e-15));
}

TEST_CASE("spearman: undefined cases are NaN, mismatched sizes throw") {
  CHECK(std::isnan(eval::spearman({1, 2, 3}, {4, 4, 4})));  // constant side
  CHECK(std::isnan(eval::spearman({2, 2}, {1, 3})));
  CHECK(std::isnan(eval::spearman({1}, {2})));  // n < 2
  CHECK(std::isnan(eval::spearman({}, {})));
  CHECK(std::isnan(eval::spearman({1, 2, 3}, {1, std::nan(""), 3})));  // NaN propagates
  const std::string msg =
      thrown_message<std::invalid_argument>([] { eval::spearman({1, 2, 3}, {1, 2}); });
  CHECK(contains(msg, "3"));
  CHECK(contains(msg, "2"));
}

// ---- roc_auc --------------------------------------------------------------------------------

TEST_CASE("roc_auc: hand cases") {
  // Perfect: every positive above every negative.
  CHECK(eval::roc_auc({0.9, 0.1, 0.8, 0.2}, {true, false, true, false}) == 1.0);
  // Reversed: every positive below every negative.
  CHECK(eval::roc_auc({0.1, 0.9, 0.2, 0.8}, {true, false, true, false}) == 0.0);
  // All tied: every pair counts one half.
  CHECK(eval::roc_auc({3, 3, 3, 3, 3}, {true, false, false, true, false}) == 0.5);
  // Positives {0.9, 0.5}, negatives {0.5, 0.3, 0.1}, interleaved in the input.
  // 0.9 beats all 3 negatives: 3. 0.5 ties 0.5 (1/2) and beats 0.3 and 0.1: 2.5.
  // AUC = (3 + 2.5) / (2 * 3) = 11/12.
  CHECK(eval::roc_auc({0.3, 0.5, 0.9, 0.1, 0.5}, {false, true, true, false, false}) ==
        doctest::Approx(11.0 / 12.0).epsilon(1e-15));
}

TEST_CASE("roc_auc: equals the count over all pairs on random data with many ties") {
  std::mt19937 gen(123);
  std::uniform_int_distribution<int> value(0, 7);
  std::bernoulli_distribution coin(0.3);
  for (int n : {2, 3, 17, 200}) {
    std::vector<double> s(n);
    std::vector<bool> pos(n);
    for (int i = 0; i < n; ++i) {
      s[i] = value(gen);
      pos[i] = coin(gen);
    }
    pos[0] = true;  // at least one of each
    pos[1] = false;
    // Both are sums of halves divided by the same count; rounding of the rank sum (exact
    // half-integers < 2^53) is nil, so only the final division rounds: tolerance 1e-15.
    CHECK(eval::roc_auc(s, pos) == doctest::Approx(auc_by_pairs(s, pos)).epsilon(1e-15));
  }
}

TEST_CASE("roc_auc: no positives or no negatives throws") {
  std::string msg = thrown_message<std::invalid_argument>(
      [] { eval::roc_auc({0.1, 0.2}, {false, false}); });
  CHECK(contains(msg, "0 positives"));
  msg = thrown_message<std::invalid_argument>([] { eval::roc_auc({0.1, 0.2}, {true, true}); });
  CHECK(contains(msg, "0 negatives"));
  msg = thrown_message<std::invalid_argument>([] { eval::roc_auc({0.1, 0.2}, {true}); });
  CHECK(contains(msg, "2 scores"));
  msg = thrown_message<std::invalid_argument>(
      [] { eval::roc_auc({0.1, std::nan("")}, {true, false}); });
  CHECK(contains(msg, "score[1]"));
}

// ---- make_subsets ---------------------------------------------------------------------------

TEST_CASE("make_subsets: exact sizes, distinct in-range members") {
  struct Case {
    int64_t n;
    double alpha;
    std::size_t k;
  };
  // 0.3 * 10 = 3.0000000000000004 -> 3; 0.5 * 5 = 2.5 rounds away from zero -> 3.
  for (const Case& c : {Case{10, 0.3, 3}, Case{5, 0.5, 3}, Case{100, 0.5, 50}, Case{7, 1.0, 7},
                        Case{1, 1.0, 1}, Case{4, 0.2, 1}}) {
    CAPTURE(c.n);
    CAPTURE(c.alpha);
    const eval::Subsets s = eval::make_subsets(c.n, c.alpha, 25, 42);
    REQUIRE(s.size() == 25);
    for (const auto& sub : s) {
      CHECK(sub.size() == c.k);
      const std::set<int64_t> distinct(sub.begin(), sub.end());
      CHECK(distinct.size() == sub.size());
      CHECK(*distinct.begin() >= 0);
      CHECK(*distinct.rbegin() < c.n);
    }
  }
}

TEST_CASE("make_subsets: deterministic per seed, different per m and per seed") {
  const eval::Subsets a = eval::make_subsets(100, 0.5, 10, 7);
  const eval::Subsets b = eval::make_subsets(100, 0.5, 10, 7);
  const eval::Subsets c = eval::make_subsets(100, 0.5, 10, 8);
  CHECK(a == b);
  // C(100, 50) ~ 1e29 possible subsets: a repeat would mean the streams are not independent.
  for (std::size_t m = 1; m < a.size(); ++m) CHECK(a[m] != a[0]);
  for (std::size_t m = 0; m < a.size(); ++m) CHECK(a[m] != c[m]);
  // Subset m depends only on (seed, m): asking for more subsets keeps the first ones.
  const eval::Subsets longer = eval::make_subsets(100, 0.5, 20, 7);
  CHECK(std::equal(a.begin(), a.end(), longer.begin()));
}

TEST_CASE("make_subsets: every index is included with probability alpha") {
  // Per index the count is Binomial(4000, 0.5): sd = sqrt(4000 / 4) ~ 31.6. A 5 sd band
  // fails by chance with probability ~ 20 * 6e-7 per seed (and the seed is fixed).
  const eval::Subsets s = eval::make_subsets(20, 0.5, 4000, 11);
  std::vector<int> count(20, 0);
  for (const auto& sub : s)
    for (int64_t i : sub) ++count[i];
  for (int i = 0; i < 20; ++i) {
    CAPTURE(i);
    CHECK(std::abs(count[i] - 2000) < 5 * 31.7);
  }
}

TEST_CASE("make_subsets: invalid arguments throw and show the values") {
  CHECK(contains(thrown_message<std::invalid_argument>([] { eval::make_subsets(10, 0.0, 5, 1); }),
                 "alpha = 0"));
  CHECK(contains(thrown_message<std::invalid_argument>([] { eval::make_subsets(10, 1.5, 5, 1); }),
                 "alpha = 1.5"));
  CHECK(contains(thrown_message<std::invalid_argument>([] { eval::make_subsets(10, -0.3, 5, 1); }),
                 "alpha = -0.3"));
  CHECK(!thrown_message<std::invalid_argument>([] {
           eval::make_subsets(10, std::nan(""), 5, 1);
         }).empty());
  CHECK(contains(thrown_message<std::invalid_argument>([] { eval::make_subsets(10, 0.5, 0, 1); }),
                 "m = 0"));
  CHECK(contains(thrown_message<std::invalid_argument>([] { eval::make_subsets(10, 0.5, -2, 1); }),
                 "m = -2"));
  // 0.04 * 10 = 0.4 rounds to an empty subset.
  CHECK(contains(thrown_message<std::invalid_argument>([] { eval::make_subsets(10, 0.04, 5, 1); }),
                 "empty"));
}

// ---- predict_subset_losses and lds --------------------------------------------------------

TEST_CASE("predict_subset_losses: sums the rows of the subset's members") {
  // scores (n_train = 3, n_test = 2): row i is [10^i, 2 * 10^i] scaled so sums are readable.
  const std::vector<double> scores = {1, 10, 2, 20, 4, 40};
  const eval::Subsets subsets = {{0, 2}, {1}, {}, {0, 1, 2}};
  const auto pred = eval::predict_subset_losses(scores, 3, 2, subsets);
  const std::vector<std::vector<double>> expected = {{5, 50}, {2, 20}, {0, 0}, {7, 70}};
  CHECK(pred == expected);
}

TEST_CASE("predict_subset_losses: bad shapes and indices throw") {
  const std::vector<double> scores(6, 1.0);
  CHECK(contains(thrown_message<std::invalid_argument>(
                     [&] { eval::predict_subset_losses(scores, 4, 2, {{0}}); }),
                 "6 values"));
  CHECK(contains(thrown_message<std::invalid_argument>(
                     [&] { eval::predict_subset_losses(scores, 3, 2, {{0}, {1, 3}}); }),
                 "subsets[1] holds index 3"));
  CHECK(contains(thrown_message<std::invalid_argument>(
                     [&] { eval::predict_subset_losses(scores, 3, 2, {{-1}}); }),
                 "index -1"));
  CHECK(contains(thrown_message<std::invalid_argument>(
                     [&] { eval::predict_subset_losses(scores, 3, 2, {{2, 0, 2}}); }),
                 "twice"));
}

namespace {

// Random scores (n_train, n_test) and LDS subsets shared by the lds tests.
struct LdsSetup {
  int64_t n_train = 12, n_test = 4;
  std::vector<double> scores;
  eval::Subsets subsets;
  LdsSetup() {
    std::mt19937 gen(5);
    std::normal_distribution<double> d;
    scores.resize(n_train * n_test);
    for (double& s : scores) s = d(gen);
    subsets = eval::make_subsets(n_train, 0.5, 40, 3);
  }
};

}  // namespace

TEST_CASE("lds: truth increasing in the prediction gives 1, a negated score gives -1") {
  const LdsSetup s;
  const auto pred = eval::predict_subset_losses(s.scores, s.n_train, s.n_test, s.subsets);
  // Truth per test column: a different increasing (nonlinear) function of the prediction; the
  // last column is constant, so its correlation is undefined and skipped.
  std::vector<std::vector<double>> truth(pred.size(), std::vector<double>(s.n_test));
  for (std::size_t m = 0; m < pred.size(); ++m) {
    truth[m][0] = pred[m][0] * pred[m][0] * pred[m][0] + 7.0;
    truth[m][1] = std::exp(pred[m][1]);
    truth[m][2] = std::atan(pred[m][2]) - 100.0;
    truth[m][3] = 2.5;
  }
  const eval::LdsResult r = eval::lds(s.scores, s.n_train, s.n_test, s.subsets, truth);
  CHECK(r.n_valid == 3);
  REQUIRE(r.per_test.size() == 4);
  CHECK(r.per_test[0] == 1.0);
  CHECK(r.per_test[1] == 1.0);
  CHECK(r.per_test[2] == 1.0);
  CHECK(std::isnan(r.per_test[3]));
  CHECK(r.lds == 1.0);

  std::vector<double> negated = s.scores;
  for (double& v : negated) v = -v;
  const eval::LdsResult n = eval::lds(negated, s.n_train, s.n_test, s.subsets, truth);
  CHECK(n.n_valid == 3);
  CHECK(n.per_test[0] == -1.0);
  CHECK(std::isnan(n.per_test[3]));
  CHECK(n.lds == -1.0);
}

TEST_CASE("lds: the mean is over the valid test samples only") {
  const LdsSetup s;
  const auto pred = eval::predict_subset_losses(s.scores, s.n_train, s.n_test, s.subsets);
  // Columns 0 and 2 increasing in the prediction (+1), column 1 decreasing (-1), column 3
  // constant (NaN): the mean over the three valid ones is (1 - 1 + 1) / 3 = 1/3.
  std::vector<std::vector<double>> truth(pred.size(), std::vector<double>(s.n_test));
  for (std::size_t m = 0; m < pred.size(); ++m) {
    truth[m][0] = pred[m][0];
    truth[m][1] = -pred[m][1];
    truth[m][2] = 3.0 * pred[m][2];
    truth[m][3] = 0.0;
  }
  const eval::LdsResult r = eval::lds(s.scores, s.n_train, s.n_test, s.subsets, truth);
  CHECK(r.n_valid == 3);
  CHECK(r.lds == doctest::Approx(1.0 / 3.0).epsilon(1e-15));

  // Every column constant: nothing is valid and the LDS is NaN, not 0.
  for (auto& row : truth) std::fill(row.begin(), row.end(), 1.0);
  const eval::LdsResult none = eval::lds(s.scores, s.n_train, s.n_test, s.subsets, truth);
  CHECK(none.n_valid == 0);
  CHECK(std::isnan(none.lds));
}

TEST_CASE("lds: inconsistent dimensions throw with the sizes") {
  const LdsSetup s;
  std::vector<std::vector<double>> truth(s.subsets.size(), std::vector<double>(s.n_test, 0.0));
  auto fewer_rows = truth;
  fewer_rows.pop_back();
  CHECK(contains(thrown_message<std::invalid_argument>([&] {
                   eval::lds(s.scores, s.n_train, s.n_test, s.subsets, fewer_rows);
                 }),
                 "39 rows"));
  auto short_row = truth;
  short_row[5].pop_back();
  CHECK(contains(thrown_message<std::invalid_argument>([&] {
                   eval::lds(s.scores, s.n_train, s.n_test, s.subsets, short_row);
                 }),
                 "true_losses[5] has 3"));
  CHECK(contains(thrown_message<std::invalid_argument>([&] {
                   eval::lds(s.scores, s.n_train, s.n_test + 1, s.subsets, truth);
                 }),
                 "scores hold 48"));
  CHECK(contains(thrown_message<std::invalid_argument>([&] {
                   eval::lds(s.scores, s.n_train, s.n_test, {s.subsets[0]}, {truth[0]});
                 }),
                 "at least 2"));
}

// ---- SubsetCache ----------------------------------------------------------------------------

namespace {

// compute(m) = {m, 2m, m^2}: recognisable, and counts how often each m was computed.
struct CountingCompute {
  std::map<int64_t, int> calls;
  int64_t throw_at = -1;
  std::vector<double> operator()(int64_t m) {
    if (m == throw_at) throw std::runtime_error("killed at " + std::to_string(m));
    ++calls[m];
    const double x = static_cast<double>(m);
    return {x, 2 * x, x * x};
  }
  std::function<std::vector<double>(int64_t)> fn() {
    return [this](int64_t m) { return (*this)(m); };
  }
};

std::vector<double> expected_value(int64_t m) {
  const double x = static_cast<double>(m);
  return {x, 2 * x, x * x};
}

const char kKey[] = R"({"alpha":0.5,"data":{"n_test":3,"n_train":10},"seed":1})";

}  // namespace

TEST_CASE("SubsetCache: fill computes each subset once; a second fill computes nothing") {
  const TempDir dir("fill");
  const fs::path sub = dir.path / "nested" / "cache";  // created, parents too
  CountingCompute c;
  std::vector<std::pair<int64_t, int64_t>> progress;
  {
    eval::SubsetCache cache(sub.string(), kKey);
    CHECK(cache.dir() == sub.string());
    CHECK(fs::exists(sub / "key.json"));
    const auto out = cache.fill(
        5, c.fn(), [&](int64_t done, int64_t total) { progress.emplace_back(done, total); });
    REQUIRE(out.size() == 5);
    for (int64_t m = 0; m < 5; ++m) {
      CHECK(out[m] == expected_value(m));
      CHECK(c.calls[m] == 1);
      CHECK(cache.has(m));
      CHECK(fs::exists(sub / ("subset_" + std::to_string(m) + ".npy")));
      CHECK(cache.get(m) == expected_value(m));
    }
    CHECK(!cache.has(5));
    const std::vector<std::pair<int64_t, int64_t>> expected_progress = {
        {1, 5}, {2, 5}, {3, 5}, {4, 5}, {5, 5}};
    CHECK(progress == expected_progress);
  }
  // Reopen: same key, everything cached.
  CountingCompute again;
  eval::SubsetCache cache(sub.string(), kKey);
  const auto out = cache.fill(5, again.fn());
  CHECK(again.calls.empty());
  for (int64_t m = 0; m < 5; ++m) CHECK(out[m] == expected_value(m));
  // Growing the count computes only the new subsets.
  const auto more = cache.fill(7, again.fn());
  CHECK(again.calls.size() == 2);
  CHECK(again.calls[5] == 1);
  CHECK(again.calls[6] == 1);
  CHECK(more[6] == expected_value(6));
}

TEST_CASE("SubsetCache: an interrupted fill resumes with exactly the missing subsets") {
  const TempDir dir("resume");
  CountingCompute first;
  first.throw_at = 3;
  {
    eval::SubsetCache cache(dir.str(), kKey);
    const std::string msg = thrown_message<std::runtime_error>([&] { cache.fill(6, first.fn()); });
    CHECK(contains(msg, "killed at 3"));
    CHECK(cache.has(0));
    CHECK(cache.has(1));
    CHECK(cache.has(2));
    CHECK(!cache.has(3));
    CHECK(!fs::exists(dir.path / "subset_3.npy"));
  }
  CountingCompute resumed;
  std::vector<int64_t> done_seen;
  eval::SubsetCache cache(dir.str(), kKey);
  const auto out = cache.fill(6, resumed.fn(), [&](int64_t done, int64_t total) {
    CHECK(total == 6);
    done_seen.push_back(done);
  });
  const std::map<int64_t, int> expected_calls = {{3, 1}, {4, 1}, {5, 1}};
  CHECK(resumed.calls == expected_calls);
  // `done` counts the three cached subsets as well.
  CHECK(done_seen == std::vector<int64_t>{4, 5, 6});
  for (int64_t m = 0; m < 6; ++m) CHECK(out[m] == expected_value(m));
}

// compute_many for fill_chunked / fill_groups: each call's indices are recorded in `calls`.
std::function<std::vector<std::vector<double>>(const std::vector<int64_t>&)> recording_many(
    CountingCompute& c, std::vector<std::vector<int64_t>>& calls) {
  return [&c, &calls](const std::vector<int64_t>& ms) {
    calls.push_back(ms);
    std::vector<std::vector<double>> out;
    for (int64_t m : ms) out.push_back(c(m));
    return out;
  };
}

TEST_CASE("SubsetCache: fill_chunked hands out the missing subsets in chunks and resumes") {
  const TempDir dir("chunked");
  CountingCompute c;
  std::vector<std::vector<int64_t>> calls;
  const auto many = recording_many(c, calls);
  {
    eval::SubsetCache cache(dir.str(), kKey);
    cache.put(1, expected_value(1));  // already there: not recomputed
    c.throw_at = 5;                   // "killed" in the second chunk {4, 5, 6}
    CHECK_THROWS_AS(cache.fill_chunked(8, 3, many), std::runtime_error);
    const std::vector<std::vector<int64_t>> first_calls = {{0, 2, 3}, {4, 5, 6}};
    CHECK(calls == first_calls);
    CHECK(cache.has(3));
    CHECK(!cache.has(4));  // a chunk is stored only when its call returns
  }
  calls.clear();
  c.throw_at = -1;
  std::vector<int64_t> done_seen;
  eval::SubsetCache cache(dir.str(), kKey);
  const auto out = cache.fill_chunked(8, 3, many, [&](int64_t done, int64_t) { done_seen.push_back(done); });
  const std::vector<std::vector<int64_t>> resumed_calls = {{4, 5, 6}, {7}};
  CHECK(calls == resumed_calls);
  CHECK(done_seen == std::vector<int64_t>{7, 8});
  for (int64_t m = 0; m < 8; ++m) CHECK(out[m] == expected_value(m));
  CHECK_THROWS_AS(cache.fill_chunked(8, 0, many), std::invalid_argument);
}

TEST_CASE("SubsetCache: fill_groups computes whole groups, in the given order, and resumes") {
  const TempDir dir("groups");
  CountingCompute c;
  std::vector<std::vector<int64_t>> calls;
  const auto many = recording_many(c, calls);
  // Groups that are not runs of consecutive indices, as IIF's groups by predicted class.
  const std::vector<std::vector<int64_t>> groups = {{0, 3, 6}, {1, 4}, {2, 5, 7}};
  {
    eval::SubsetCache cache(dir.str(), kKey);
    cache.put(4, {-1.0, -1.0, -1.0});  // one member of group {1, 4} cached: the group is redone
                                       // whole, and the cached file is kept as it is
    c.throw_at = 2;                   // "killed" in the third group
    CHECK_THROWS_AS(cache.fill_groups(8, groups, many), std::runtime_error);
    const std::vector<std::vector<int64_t>> first_calls = {{0, 3, 6}, {1, 4}, {2, 5, 7}};
    CHECK(calls == first_calls);
    CHECK(cache.has(6));
    CHECK(cache.has(1));
    CHECK(!cache.has(5));
  }
  calls.clear();
  c.throw_at = -1;
  std::vector<int64_t> done_seen;
  eval::SubsetCache cache(dir.str(), kKey);
  const auto out = cache.fill_groups(8, groups, many, [&](int64_t done, int64_t) { done_seen.push_back(done); });
  CHECK(calls == std::vector<std::vector<int64_t>>{{2, 5, 7}});  // only the unfinished group
  CHECK(done_seen == std::vector<int64_t>{8});
  for (int64_t m = 0; m < 8; ++m) CHECK(out[m] == (m == 4 ? std::vector<double>{-1.0, -1.0, -1.0} : expected_value(m)));
  calls.clear();
  cache.fill_groups(8, groups, many);
  CHECK(calls.empty());  // everything read back
  // The groups must partition [0, count).
  CHECK_THROWS_AS(cache.fill_groups(8, {{0, 1, 2, 3}, {4, 5, 6}}, many), std::invalid_argument);
  CHECK_THROWS_AS(cache.fill_groups(8, {{0, 1, 2, 3}, {3, 4, 5, 6, 7}}, many), std::invalid_argument);
  CHECK_THROWS_AS(cache.fill_groups(3, {{0, 1, 2, 3}}, many), std::invalid_argument);
}

TEST_CASE("SubsetCache: a different key throws, naming the directory and the difference") {
  const TempDir dir("key");
  {
    eval::SubsetCache cache(dir.str(), kKey);
    CountingCompute c;
    cache.fill(2, c.fn());
  }
  std::string msg = thrown_message<std::runtime_error>([&] {
    eval::SubsetCache(dir.str(), R"({"alpha":0.3,"data":{"n_test":3,"n_train":10},"seed":1})");
  });
  CHECK(contains(msg, dir.str()));
  CHECK(contains(msg, "/alpha"));
  CHECK(contains(msg, "0.5"));
  CHECK(contains(msg, "0.3"));
  msg = thrown_message<std::runtime_error>([&] {
    eval::SubsetCache(dir.str(), R"({"alpha":0.5,"data":{"n_test":3,"n_train":12},"seed":1})");
  });
  CHECK(contains(msg, "/data/n_train"));
  msg = thrown_message<std::runtime_error>([&] {
    eval::SubsetCache(dir.str(), R"({"alpha":0.5,"data":{"n_test":3,"n_train":10}})");
  });
  CHECK(contains(msg, "/seed"));
  CHECK(contains(msg, "cached key only"));
  // Not JSON: the character offset of the first difference (the 2nd character here).
  msg = thrown_message<std::runtime_error>([&] { eval::SubsetCache(dir.str(), "{x"); });
  CHECK(contains(msg, dir.str()));
  CHECK(contains(msg, "character 1"));
  // The same JSON, formatted differently, is the same key: the cache opens and is reused.
  eval::SubsetCache same(dir.str(),
                         "{ \"seed\": 1, \"data\": {\"n_train\": 10, \"n_test\": 3}, \"alpha\": 0.5 }");
  CHECK(same.has(1));
}

TEST_CASE("SubsetCache: a truncated or corrupt subset file throws naming it") {
  const TempDir dir("corrupt");
  eval::SubsetCache cache(dir.str(), kKey);
  CountingCompute c;
  cache.fill(3, c.fn());
  const fs::path victim = dir.path / "subset_1.npy";
  fs::resize_file(victim, fs::file_size(victim) - 8);  // the last float64 is gone

  CountingCompute after;
  std::string msg = thrown_message<std::runtime_error>([&] { cache.fill(4, after.fn()); });
  CHECK(contains(msg, victim.string()));
  CHECK(contains(msg, "truncated"));
  // Reported before anything was computed (subset 3 was missing), never silently recomputed.
  CHECK(after.calls.empty());
  CHECK(fs::exists(victim));
  msg = thrown_message<std::runtime_error>([&] { cache.get(1); });
  CHECK(contains(msg, victim.string()));

  // Not a .npy at all.
  {
    std::ofstream f(dir.path / "subset_2.npy", std::ios::binary | std::ios::trunc);
    f << "garbage";
  }
  msg = thrown_message<std::runtime_error>([&] { cache.get(2); });
  CHECK(contains(msg, (dir.path / "subset_2.npy").string()));
}

TEST_CASE("SubsetCache: results of different lengths, stray files and empty keys are refused") {
  const TempDir dir("misc");
  {
    eval::SubsetCache cache(dir.str(), kKey);
    CountingCompute c;
    cache.fill(2, c.fn());
    // A compute() whose output length changed: refused before it is stored.
    const std::string msg = thrown_message<std::runtime_error>(
        [&] { cache.fill(3, [](int64_t) { return std::vector<double>{1.0}; }); });
    CHECK(contains(msg, "compute(2) holds 1 values"));
    CHECK(!cache.has(2));
  }
  // Subset files but no key.json: their origin is unknown.
  fs::remove(dir.path / "key.json");
  CHECK(contains(thrown_message<std::runtime_error>([&] { eval::SubsetCache(dir.str(), kKey); }),
                 "no key.json"));
  CHECK(!thrown_message<std::invalid_argument>([&] {
           eval::SubsetCache((dir.path / "other").string(), "");
         }).empty());
}
