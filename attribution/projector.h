// Random projections R in R^{M x P}, generated on the fly from (seed, row, column) and never
// stored whole: the map g (M) -> R^T g (P) every attribution method applies to per-sample
// gradients (DESIGN.md section 4). Rows are parameter indices, columns projected coordinates.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "engine/projection.h"
#include "engine/tensor.h"

namespace iif {
namespace attr {

enum class ProjectionKind { identity, rademacher, gaussian };
const char* projection_kind_name(ProjectionKind kind);  // "identity", "rademacher", "gaussian"

struct ProjectorSpec {
  ProjectionKind kind = ProjectionKind::rademacher;
  int64_t dim = 256;  // P; ignored by identity, whose P is M
  uint64_t seed = 0;
};

// THE definition of R. Every backend (the CUDA kernels included) must reproduce it; tests pin it
// against kernels/philox.cuh and engine/rng.h directly.
//
//   s = 1 / sqrt(P), computed in double (float32 tiles hold float(s * sign) or float(z * s)).
//
//   rademacher (default):  R[r][c] = bit ? -s : +s,
//       bit = (philox::bits(seed, stream = r, index = c / 32) >> (c % 32)) & 1   (LSB first).
//     philox::bits reads word index % 4 of Philox block index / 4, so one Philox-4x32-10 block
//     (seed, stream r, block b) holds the signs of columns 128 b .. 128 b + 127 of row r:
//     column c is bit c % 32 of word (c / 32) % 4 of block c / 128. Bit-exact on every device.
//
//   gaussian:  R[r][c] = rng::normal(seed, stream = r | 2^63, index = c) * s   (double),
//     i.e. Box-Muller on words 2c and 2c + 1 of stream r | 2^63; the top stream bit keeps these
//     streams apart from the Rademacher ones. Exact up to libm: log and cos are not correctly
//     rounded, so another math library may differ in the last bit.
//
//   identity:  R = I (P = M), for exact gradients of small models.
//
// Entries have mean 0 and variance 1/P, so E[R R^T] = I and R^T preserves inner products in
// expectation (Johnson-Lindenstrauss; tests/test_projector.cpp states the bound).
class Projector {
 public:
  // M = input_dim >= 1 (the number of parameters); throws std::invalid_argument for P < 1.
  Projector(int64_t input_dim, ProjectorSpec spec);

  int64_t input_dim() const { return m_; }   // M
  int64_t output_dim() const { return p_; }  // P
  ProjectionKind kind() const { return spec_.kind; }
  const ProjectorSpec& spec() const { return spec_; }
  double scale() const { return s_; }  // 1/sqrt(P) (1 for identity)

  // R[r][c] in double, by the definition above (one entry at a time: for tests and the record).
  double entry(int64_t r, int64_t c) const;

  // The block R[r0 : r0 + count, :] as a (count, P) CPU tensor of the given dtype.
  Tensor rows(int64_t r0, int64_t count, DType dtype = DType::f32) const;

  // The same block written into host memory with row stride ld >= P:
  //   dst[j * ld + c] = R[r0 + j][c]   for 0 <= j < count, 0 <= c < P.
  // Generates each Philox block once (128 columns of a row) and uses the OpenMP threads.
  // A stride lets callers lay several row blocks side by side (the featurizer's factored tiles).
  void fill_rows(int64_t r0, int64_t count, float* dst, int64_t ld) const;
  void fill_rows(int64_t r0, int64_t count, double* dst, int64_t ld) const;

  // y(B,P) = g(B,m) R[r0 : r0 + m, :] + beta * y, where column j of g is parameter row r0 + j.
  // R is generated tile by tile (at most tile_bytes() per tile of R, and per copied tile of g
  // when g is split) and multiplied with ops::gemm. g and y of one dtype and one device. On a
  // device other than the CPU the backend's project_rows op runs (R generated on the device,
  // never stored; engine/backend.h), except for the identity projection, which goes through
  // the host (explicit copies of g and y: it is for small models).
  void project_block(const Tensor& g, int64_t r0, double beta, Tensor& y) const;

  // R^T applied to every row: g(B,M) -> (B,P).
  Tensor project(const Tensor& g) const;

  // (kind, seed, P) for the backend ops; throws std::logic_error for the identity projection.
  RandomProjection random_projection() const;

  // Bound on one generated tile in project_block (default 8 MiB; tests shrink it to force
  // several tiles). At least one row is always generated.
  void set_tile_bytes(std::size_t bytes) { tile_bytes_ = bytes; }
  std::size_t tile_bytes() const { return tile_bytes_; }

 private:
  template <class T>
  void fill(int64_t r0, int64_t count, T* dst, int64_t ld) const;
  void check_rows(const char* what, int64_t r0, int64_t count) const;

  int64_t m_, p_;
  ProjectorSpec spec_;
  double s_;
  std::size_t tile_bytes_ = std::size_t(8) << 20;
  // The host generator of R's rows (engine/projection.h; unused by identity).
  RandomProjectionRows gen_;
};

}  // namespace attr
}  // namespace iif
