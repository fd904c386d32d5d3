// Host generation of rows of the random projection R (see engine/projection.h). This is the
// code attribution/projector.cpp used to hold; Projector now delegates here, so the bits are
// unchanged.
#include "engine/projection.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/philox.cuh"

namespace iif {

namespace {
constexpr uint64_t kGaussianStreamBit = uint64_t{1} << 63;
}

RandomProjectionRows::RandomProjectionRows(const RandomProjection& r) : r_(r) {
  if (r.dim < 1)
    throw std::invalid_argument("RandomProjection: P must be >= 1, got " + std::to_string(r.dim));
  s_ = 1.0 / std::sqrt(static_cast<double>(r.dim));
  for (int x = 0; x < 256; ++x)
    for (int k = 0; k < 8; ++k) {
      lut_d_[x][k] = ((x >> k) & 1) ? -s_ : s_;
      lut_f_[x][k] = static_cast<float>(lut_d_[x][k]);
    }
}

template <class T>
void RandomProjectionRows::fill_impl(int64_t r0, int64_t count, T* dst, int64_t ld) const {
  const int64_t p = r_.dim;
  const uint64_t seed = r_.seed;
  // Parallel only when the block is worth waking the threads for.
  const bool par = count * p >= (int64_t{1} << 15);
  if (r_.kind == RandomProjectionKind::rademacher) {
    const std::array<T, 8>* lut;
    if constexpr (std::is_same_v<T, float>) lut = lut_f_.data(); else lut = lut_d_.data();
    const int64_t blocks = (p + 127) / 128;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t j = 0; j < count; ++j) {
      T* d = dst + j * ld;
      const uint64_t stream = static_cast<uint64_t>(r0 + j);
      for (int64_t b = 0; b < blocks; ++b) {
        const philox::U32x4 w = philox::words(seed, stream, static_cast<uint64_t>(b));
        for (int q = 0; q < 4; ++q) {
          uint32_t x = w.v[q];
          for (int64_t c = b * 128 + q * 32, k = 0; k < 4 && c < p; ++k, c += 8, x >>= 8)
            std::memcpy(d + c, lut[x & 255u].data(), std::min<int64_t>(8, p - c) * sizeof(T));
        }
      }
    }
  } else {
    // Inlines rng::normal so one Philox block serves two columns: column c reads words 2c and
    // 2c + 1, i.e. words 0,1 (c even) or 2,3 (c odd) of block c / 2. Same expression, same bits
    // (tests compare with rng::normal).
    const double kPi = 3.14159265358979323846;
    const double s = s_;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t j = 0; j < count; ++j) {
      T* d = dst + j * ld;
      const uint64_t stream = static_cast<uint64_t>(r0 + j) | kGaussianStreamBit;
      for (int64_t c = 0; c < p; c += 2) {
        const philox::U32x4 w = philox::words(seed, stream, static_cast<uint64_t>(c / 2));
        for (int64_t h = 0; h < 2 && c + h < p; ++h) {
          const double u1 = (w.v[2 * h] + 0.5) / 4294967296.0;
          const double u2 = w.v[2 * h + 1] / 4294967296.0;
          const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
          d[c + h] = static_cast<T>(z * s);
        }
      }
    }
  }
}

void RandomProjectionRows::fill(int64_t r0, int64_t count, float* dst, int64_t ld) const {
  fill_impl(r0, count, dst, ld);
}
void RandomProjectionRows::fill(int64_t r0, int64_t count, double* dst, int64_t ld) const {
  fill_impl(r0, count, dst, ld);
}

}  // namespace iif
