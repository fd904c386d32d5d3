// Tests of the Philox-4x32 block function (published known answers), the keyed streams of
// kernels/philox.cuh, and the host helpers of engine/rng.h (bounded draws, permutations,
// subsets, normals).
//
// Statistical checks use fixed seeds, so they are deterministic; each bound is 5 standard
// deviations of the statistic (CLT), or the chi-square quantile with upper tail 1e-6, so a
// correct generator would fail for fewer than one seed in a million, and the defects each check
// targets (modulo bias, off-by-one shuffles) fail it by a wide margin.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <set>
#include <stdexcept>
#include <vector>

#include "engine/rng.h"
#include "kernels/philox.cuh"

using iif::philox::U32x4;

namespace {

struct Kat {
  U32x4 ctr;
  uint32_t k0, k1;
  U32x4 expected;
};

void check_kat(const Kat& k, int rounds) {
  const U32x4 out = rounds == 10 ? iif::philox::block<10>(k.ctr, k.k0, k.k1)
                                 : iif::philox::block<7>(k.ctr, k.k0, k.k1);
  for (int i = 0; i < 4; ++i) {
    INFO("rounds " << rounds << " word " << i);
    CHECK(out.v[i] == k.expected.v[i]);
  }
}

// Chi-square statistic of observed counts against equal expected counts.
double chi_square_uniform(const std::vector<int64_t>& counts, double total) {
  const double e = total / static_cast<double>(counts.size());
  double chi2 = 0.0;
  for (int64_t c : counts) chi2 += (c - e) * (c - e) / e;
  return chi2;
}

}  // namespace

// Random123 tests/kat_vectors (D. E. Shaw Research, github.com/DEShawResearch/random123),
// lines "philox4x32 R  CTR[4]  KEY[2]  EXPECTED[4]" for R = 10 and R = 7.
TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
  check_kat({{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}}, 10);
  check_kat({{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff,
             {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}}, 10);
  check_kat({{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0,
             {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}}, 10);
}

TEST_CASE("philox4x32-7 matches the Random123 known-answer vectors (round count is honoured)") {
  check_kat({{{0, 0, 0, 0}}, 0, 0, {{0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48}}}, 7);
  check_kat({{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff,
             {{0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662}}}, 7);
  check_kat({{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0,
             {{0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}}}, 7);
}

TEST_CASE("keyed streams: counter = (block, stream), key = seed, in that word order") {
  // The layout is the cross-device contract: CUDA kernels rebuild it from the same header.
  const uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull;
  const uint64_t b = 0x1122334455667788ull;
  const U32x4 w = iif::philox::words(seed, stream, b);
  const U32x4 ref = iif::philox::block<10>(
      {{0x55667788u, 0x11223344u, 0x76543210u, 0xfedcba98u}}, 0x89abcdefu, 0x01234567u);
  for (int i = 0; i < 4; ++i) CHECK(w.v[i] == ref.v[i]);
}

TEST_CASE("bits(seed, stream, i) is word i % 4 of words(seed, stream, i / 4)") {
  const uint64_t seed = 42, stream = 3;
  for (uint64_t i : {0ull, 1ull, 2ull, 3ull, 4ull, 5ull, 1023ull, (1ull << 34) + 2, ~0ull}) {
    INFO("index " << i);
    CHECK(iif::philox::bits(seed, stream, i) == iif::philox::words(seed, stream, i / 4).v[i % 4]);
  }
}

TEST_CASE("different seeds, streams and high index bits give different sequences") {
  auto seq = [](uint64_t seed, uint64_t stream, uint64_t start) {
    std::vector<uint32_t> v;
    for (uint64_t i = 0; i < 64; ++i) v.push_back(iif::philox::bits(seed, stream, start + i));
    return v;
  };
  const auto base = seq(1, 0, 0);
  CHECK(seq(1, 0, 0) == base);                       // deterministic
  CHECK(seq(2, 0, 0) != base);                       // seed, low word
  CHECK(seq(1 + (1ull << 32), 0, 0) != base);        // seed, high word
  CHECK(seq(1, 1, 0) != base);                       // stream, low word
  CHECK(seq(1, 1ull << 32, 0) != base);              // stream, high word
  CHECK(seq(1, 0, 4ull << 32) != base);              // index beyond 2^32 blocks
  // No two of 64 consecutive words collide (chance ~ 64^2 / 2^33 for an ideal generator).
  CHECK(std::set<uint32_t>(base.begin(), base.end()).size() == base.size());
}

TEST_CASE("uniform() lies in [0, 1) with mean 1/2 and variance 1/12") {
  const int n = 100000;
  double sum = 0.0, sum_sq = 0.0;
  float lo = 1.0f, hi = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float u = iif::philox::uniform(7, 11, i);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
    sum_sq += (u - 0.5) * (u - 0.5);
  }
  CHECK(lo >= 0.0f);
  CHECK(hi < 1.0f);
  // sd of the mean = sqrt(1/12 / n) = 9.1e-4; 5 sd = 4.6e-3.
  CHECK(std::abs(sum / n - 0.5) < 5.0 * std::sqrt(1.0 / 12.0 / n));
  // Var[(U - 1/2)^2] = 1/80 - 1/144 = 1/180, so sd of the variance estimate = sqrt(1/180 / n).
  CHECK(std::abs(sum_sq / n - 1.0 / 12.0) < 5.0 * std::sqrt(1.0 / 180.0 / n));
  // uniform() is the top 24 bits of the word times 2^-24 (exact in float32).
  CHECK(iif::philox::uniform(7, 11, 0) * 16777216.0f ==
        static_cast<float>(iif::philox::bits(7, 11, 0) >> 8));
}

TEST_CASE("rademacher() is +-1 and balanced within a binomial bound") {
  const int n = 100000;
  int64_t plus = 0;
  for (int i = 0; i < n; ++i) {
    const float r = iif::philox::rademacher(5, 9, i);
    REQUIRE((r == 1.0f || r == -1.0f));
    plus += r > 0;
  }
  // plus ~ Binomial(n, 1/2): sd = sqrt(n) / 2 = 158.
  CHECK(std::abs(plus - n / 2.0) < 5.0 * std::sqrt(n) / 2.0);
}

TEST_CASE("rng::bounded has no modulo bias and advances the index past rejected words") {
  // range r = 3 * 2^30: 2^32 mod r = 2^30, so a plain `word % r` would put probability 1/2 on
  // [0, 2^30) instead of 1/3, and multiply-shift without rejection would put 1/2 on
  // multiples of 3 (floor(3x/4) hits them twice). A quarter of the words are rejected.
  const uint64_t r = 3ull << 30;
  const int n = 100000;
  uint64_t index = 0;
  int64_t low = 0, mult3 = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t x = iif::rng::bounded(r, 17, 0, index);
    REQUIRE(x < r);
    low += x < (1u << 30);
    mult3 += x % 3 == 0;
  }
  const double sd = std::sqrt(1.0 / 3.0 * 2.0 / 3.0 / n);  // binomial proportion, p = 1/3
  CHECK(std::abs(static_cast<double>(low) / n - 1.0 / 3.0) < 5.0 * sd);
  CHECK(std::abs(static_cast<double>(mult3) / n - 1.0 / 3.0) < 5.0 * sd);
  // Words per draw ~ Geometric(3/4): mean 4/3, variance (1/4) / (3/4)^2 = 4/9.
  CHECK(std::abs(static_cast<double>(index) / n - 4.0 / 3.0) < 5.0 * std::sqrt(4.0 / 9.0 / n));

  uint64_t i0 = 5;
  CHECK(iif::rng::bounded(1, 1, 2, i0) == 0u);
  CHECK(i0 == 6);
  uint64_t i1 = 5;
  CHECK(iif::rng::bounded(1ull << 32, 1, 2, i1) == iif::philox::bits(1, 2, 5));
  uint64_t i2 = 0;
  CHECK_THROWS_AS(iif::rng::bounded(0, 1, 2, i2), std::invalid_argument);
  CHECK_THROWS_AS(iif::rng::bounded((1ull << 32) + 1, 1, 2, i2), std::invalid_argument);
}

TEST_CASE("permutation: a deterministic permutation of 0..n-1") {
  CHECK(iif::rng::permutation(0, 1, 0).empty());
  CHECK(iif::rng::permutation(1, 1, 0) == std::vector<int64_t>{0});
  const auto p = iif::rng::permutation(1000, 123, 4);
  std::vector<int64_t> sorted = p, iota(1000);
  std::sort(sorted.begin(), sorted.end());
  std::iota(iota.begin(), iota.end(), 0);
  CHECK(sorted == iota);
  CHECK(p != iota);
  CHECK(iif::rng::permutation(1000, 123, 4) == p);
  CHECK(iif::rng::permutation(1000, 124, 4) != p);
  CHECK(iif::rng::permutation(1000, 123, 5) != p);
  CHECK_THROWS_AS(iif::rng::permutation(-1, 1, 0), std::invalid_argument);
}

TEST_CASE("permutation: all 3! orders and every first/last value equally likely") {
  // All 6 orders of 3 elements: an off-by-one in Fisher-Yates (Sattolo's algorithm) reaches
  // only the 2 cyclic ones. Chi-square with 5 dof; P(chi2 > 35.89) = 1e-6.
  const int trials = 60000;
  std::map<std::vector<int64_t>, int64_t> orders;
  for (int t = 0; t < trials; ++t) ++orders[iif::rng::permutation(3, 99, t)];
  REQUIRE(orders.size() == 6);
  std::vector<int64_t> counts;
  for (const auto& kv : orders) counts.push_back(kv.second);
  CHECK(chi_square_uniform(counts, trials) < 35.89);

  // First and last positions of n = 10: chi-square with 9 dof; P(chi2 > 44.81) = 1e-6.
  const int n = 10, trials10 = 20000;
  std::vector<int64_t> first(n, 0), last(n, 0);
  for (int t = 0; t < trials10; ++t) {
    const auto p = iif::rng::permutation(n, 7, t);
    ++first[p[0]];
    ++last[p[n - 1]];
  }
  CHECK(chi_square_uniform(first, trials10) < 44.81);
  CHECK(chi_square_uniform(last, trials10) < 44.81);
}

TEST_CASE("sample_without_replacement: sorted distinct subsets, all equally likely") {
  CHECK(iif::rng::sample_without_replacement(10, 0, 1, 0).empty());
  std::vector<int64_t> all(10);
  std::iota(all.begin(), all.end(), 0);
  CHECK(iif::rng::sample_without_replacement(10, 10, 1, 0) == all);
  const auto s = iif::rng::sample_without_replacement(100000, 500, 3, 1);
  REQUIRE(s.size() == 500);
  CHECK(std::is_sorted(s.begin(), s.end()));
  CHECK(std::adjacent_find(s.begin(), s.end()) == s.end());
  CHECK(s.front() >= 0);
  CHECK(s.back() < 100000);
  CHECK(iif::rng::sample_without_replacement(100000, 500, 3, 1) == s);
  CHECK(iif::rng::sample_without_replacement(100000, 500, 3, 2) != s);
  CHECK_THROWS_AS(iif::rng::sample_without_replacement(5, 6, 1, 0), std::invalid_argument);
  CHECK_THROWS_AS(iif::rng::sample_without_replacement(5, -1, 1, 0), std::invalid_argument);

  // All C(5, 2) = 10 subsets: chi-square with 9 dof; P(chi2 > 44.81) = 1e-6.
  const int trials = 20000;
  std::map<std::vector<int64_t>, int64_t> subsets;
  for (int t = 0; t < trials; ++t) ++subsets[iif::rng::sample_without_replacement(5, 2, 8, t)];
  REQUIRE(subsets.size() == 10);
  std::vector<int64_t> counts;
  for (const auto& kv : subsets) counts.push_back(kv.second);
  CHECK(chi_square_uniform(counts, trials) < 44.81);
}

TEST_CASE("normal: the documented Box-Muller mapping, mean 0, variance 1, P(|z| < 1)") {
  // The mapping written in engine/rng.h, from the two words of the stream.
  const double w0 = iif::philox::bits(3, 4, 10), w1 = iif::philox::bits(3, 4, 11);
  const double expected = std::sqrt(-2.0 * std::log((w0 + 0.5) / 4294967296.0)) *
                          std::cos(2.0 * 3.14159265358979323846 * w1 / 4294967296.0);
  CHECK(iif::rng::normal(3, 4, 5) == expected);

  const int n = 100000;
  double sum = 0.0, sum_sq = 0.0;
  int64_t inside = 0;
  for (int i = 0; i < n; ++i) {
    const double z = iif::rng::normal(21, 2, i);
    REQUIRE(std::isfinite(z));
    REQUIRE(std::abs(z) < 6.78);  // the documented cut-off of 32-bit u1
    sum += z;
    sum_sq += z * z;
    inside += std::abs(z) < 1.0;
  }
  const double mean = sum / n;
  CHECK(std::abs(mean) < 5.0 / std::sqrt(n));                     // sd of the mean = 1/sqrt(n)
  CHECK(std::abs(sum_sq / n - 1.0) < 5.0 * std::sqrt(2.0 / n));  // Var[z^2] = 2
  const double p = 0.6826894921370859;                            // erf(1 / sqrt(2))
  CHECK(std::abs(static_cast<double>(inside) / n - p) < 5.0 * std::sqrt(p * (1 - p) / n));
}
