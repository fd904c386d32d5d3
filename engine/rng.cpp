// Host-side random helpers (see engine/rng.h): bounded draws, shuffles, subsets, normals.
#include "engine/rng.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <unordered_set>

#include "kernels/philox.cuh"

namespace iif {
namespace rng {

namespace {
constexpr uint64_t kTwo32 = uint64_t{1} << 32;

void check_n(const char* what, int64_t n) {
  if (n < 0 || static_cast<uint64_t>(n) > kTwo32)
    throw std::invalid_argument(std::string(what) + ": n = " + std::to_string(n) +
                                " must be in [0, 2^32] (draws are 32-bit)");
}
}  // namespace

uint32_t bounded(uint64_t range, uint64_t seed, uint64_t stream, uint64_t& index) {
  if (range == 0 || range > kTwo32)
    throw std::invalid_argument("rng::bounded: range " + std::to_string(range) +
                                " must be in [1, 2^32]");
  if (range == kTwo32) return philox::bits(seed, stream, index++);
  const uint32_t r = static_cast<uint32_t>(range);
  uint64_t m = static_cast<uint64_t>(philox::bits(seed, stream, index++)) * r;
  uint32_t low = static_cast<uint32_t>(m);
  if (low < r) {
    // threshold = 2^32 mod r: rejecting low < threshold leaves exactly floor(2^32 / r)
    // words for every output value.
    const uint32_t threshold = static_cast<uint32_t>(-r) % r;
    while (low < threshold) {
      m = static_cast<uint64_t>(philox::bits(seed, stream, index++)) * r;
      low = static_cast<uint32_t>(m);
    }
  }
  return static_cast<uint32_t>(m >> 32);
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed, uint64_t stream) {
  check_n("rng::permutation", n);
  std::vector<int64_t> p(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  uint64_t index = 0;
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = bounded(static_cast<uint64_t>(i) + 1, seed, stream, index);
    std::swap(p[i], p[j]);
  }
  return p;
}

std::vector<int64_t> sample_without_replacement(int64_t n, int64_t k, uint64_t seed,
                                                uint64_t stream) {
  check_n("rng::sample_without_replacement", n);
  if (k < 0 || k > n)
    throw std::invalid_argument("rng::sample_without_replacement: k = " + std::to_string(k) +
                                " must be in [0, n = " + std::to_string(n) + "]");
  // Floyd: after the step for j, the set is a uniform (k - n + j + 1)-subset of 0..j.
  std::unordered_set<int64_t> chosen;
  chosen.reserve(static_cast<std::size_t>(k));
  uint64_t index = 0;
  for (int64_t j = n - k; j < n; ++j) {
    const int64_t t = bounded(static_cast<uint64_t>(j) + 1, seed, stream, index);
    chosen.insert(chosen.count(t) ? j : t);
  }
  std::vector<int64_t> out(chosen.begin(), chosen.end());
  std::sort(out.begin(), out.end());
  return out;
}

double normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const double kPi = 3.14159265358979323846;
  const double u1 = (philox::bits(seed, stream, 2 * index) + 0.5) / 4294967296.0;
  const double u2 = philox::bits(seed, stream, 2 * index + 1) / 4294967296.0;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
}

}  // namespace rng
}  // namespace iif
