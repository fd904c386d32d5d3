// Philox-4x32-10 counter-based RNG (Salmon et al., SC'11) and the engine's keyed streams:
// value = f(seed, stream, index). Header-only, compiled by g++ and nvcc alike, so a seed gives
// the same bits on every device (no state, no dependence on the launch configuration).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define IIF_HD __host__ __device__ __forceinline__
#else
#define IIF_HD inline
#endif

namespace iif {
namespace philox {

struct U32x4 {
  uint32_t v[4];
};

constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kW1 = 0xBB67AE85u;  // sqrt(3) - 1

IIF_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// The Philox-4x32 block function with R rounds (10 is the standard, Crush-resistant choice).
template <int R = 10>
IIF_HD U32x4 block(U32x4 ctr, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < R; ++r) {
    if (r > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, ctr.v[0], hi0, lo0);
    mulhilo(kM1, ctr.v[2], hi1, lo1);
    U32x4 n;
    n.v[0] = hi1 ^ ctr.v[1] ^ k0;
    n.v[1] = lo1;
    n.v[2] = hi0 ^ ctr.v[3] ^ k1;
    n.v[3] = lo0;
    ctr = n;
  }
  return ctr;
}

// Four 32-bit words for block `b` of stream `stream` under key `seed`.
IIF_HD U32x4 words(uint64_t seed, uint64_t stream, uint64_t b) {
  U32x4 c;
  c.v[0] = static_cast<uint32_t>(b);
  c.v[1] = static_cast<uint32_t>(b >> 32);
  c.v[2] = static_cast<uint32_t>(stream);
  c.v[3] = static_cast<uint32_t>(stream >> 32);
  return block<10>(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The index-th 32-bit value of stream `stream`: word (index % 4) of block (index / 4).
IIF_HD uint32_t bits(uint64_t seed, uint64_t stream, uint64_t index) {
  const U32x4 w = words(seed, stream, index >> 2);
  return w.v[index & 3u];
}

// Uniform in [0, 1) with 24 random bits (exactly representable in float32).
IIF_HD float uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  return static_cast<float>(bits(seed, stream, index) >> 8) * (1.0f / 16777216.0f);
}

// +1 or -1 with equal probability (the top bit).
IIF_HD float rademacher(uint64_t seed, uint64_t stream, uint64_t index) {
  return (bits(seed, stream, index) & 0x80000000u) ? -1.0f : 1.0f;
}

}  // namespace philox
}  // namespace iif
