// The random projection matrix R (M x P) of DESIGN.md section 4 as the engine knows it: which R
// (kind, seed, P) and the host generator of its rows. attribution/projector.h holds THE
// definition (and the identity projection, which needs no generation); this is the part the
// backends need to apply R without attribution/ (engine/backend.h: linear_project,
// project_rows). The CUDA kernels (kernels/projection.cuh) generate the same numbers on the
// device, bit for bit for rademacher.
#pragma once

#include <array>
#include <cstdint>

namespace iif {

enum class RandomProjectionKind { rademacher = 0, gaussian = 1 };

struct RandomProjection {
  RandomProjectionKind kind = RandomProjectionKind::rademacher;
  uint64_t seed = 0;
  int64_t dim = 256;  // P >= 1
};

// Host generator of rows of R (the definition in attribution/projector.h):
//   rademacher: R[r][c] = bit ? -s : +s, bit c % 32 of philox::bits(seed, r, c / 32), s = 1/sqrt(P);
//   gaussian:   R[r][c] = rng::normal(seed, r | 2^63, c) * s.
class RandomProjectionRows {
 public:
  explicit RandomProjectionRows(const RandomProjection& r);
  const RandomProjection& spec() const { return r_; }
  double scale() const { return s_; }
  // dst[j * ld + c] = R[r0 + j][c] for 0 <= j < count, 0 <= c < P (ld >= P, unchecked).
  // Generates each Philox block once and uses the OpenMP threads for large blocks.
  void fill(int64_t r0, int64_t count, float* dst, int64_t ld) const;
  void fill(int64_t r0, int64_t count, double* dst, int64_t ld) const;

 private:
  template <class T>
  void fill_impl(int64_t r0, int64_t count, T* dst, int64_t ld) const;
  RandomProjection r_;
  double s_;
  // Rademacher signs byte by byte: lut[x][k] = (x >> k) & 1 ? -s : s (8 columns per byte).
  std::array<std::array<float, 8>, 256> lut_f_{};
  std::array<std::array<double, 8>, 256> lut_d_{};
};

}  // namespace iif
