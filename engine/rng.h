// Host-side random helpers on top of the keyed Philox streams of kernels/philox.cuh:
// unbiased bounded integers, permutations, sampling without replacement, standard normals.
// Everything is a pure function of (seed, stream), so a seed reproduces the same shuffles.
#pragma once

#include <cstdint>
#include <vector>

namespace iif {
namespace rng {

// An integer uniform in [0, range), range in [1, 2^32], by Lemire's multiply-shift with
// rejection (Lemire, "Fast random integer generation in an interval", 2019), so there is no
// modulo bias. Reads 32-bit words bits(seed, stream, index), bits(.., index + 1), ... and
// advances `index` past every word it used (usually one; more after a rejection).
uint32_t bounded(uint64_t range, uint64_t seed, uint64_t stream, uint64_t& index);

// A uniformly random permutation of 0..n-1 (Fisher-Yates), 0 <= n <= 2^32.
std::vector<int64_t> permutation(int64_t n, uint64_t seed, uint64_t stream);

// k distinct values of 0..n-1, uniform over all k-subsets (Floyd's algorithm), sorted ascending.
std::vector<int64_t> sample_without_replacement(int64_t n, int64_t k, uint64_t seed,
                                                uint64_t stream);

// A standard normal by Box-Muller in double from the two words w0 = bits(seed, stream, 2*index)
// and w1 = bits(seed, stream, 2*index + 1) (one Philox block holds both):
//   u1 = (w0 + 0.5) / 2^32 in (0, 1), never 0, so the log is finite;
//   u2 = w1 / 2^32 in [0, 1);
//   z  = sqrt(-2 ln u1) * cos(2 pi u2).
// With 32 bits in u1, |z| <= sqrt(-2 ln(0.5 / 2^32)) ~ 6.77: the tail beyond is cut off
// (probability ~1e-11). A stream used for normals should not also be read by bits()/uniform().
double normal(uint64_t seed, uint64_t stream, uint64_t index);

}  // namespace rng
}  // namespace iif
