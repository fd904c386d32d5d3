// The on-the-fly random projection (see projector.h for the definition of R).
#include "attribution/projector.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/philox.cuh"

namespace iif {
namespace attr {

namespace {

constexpr uint64_t kGaussianStreamBit = uint64_t{1} << 63;

void check_same_device(const char* what, const Tensor& g, const Tensor& y) {
  if (g.device() != y.device())
    throw std::invalid_argument(std::string(what) + ": g on " + g.device().str() + " but y on " +
                                y.device().str() + " (one device for both)");
}

// y(B,P) *= beta, with beta = 0 meaning "overwrite" (BLAS semantics: old NaNs do not survive).
template <class T>
void scale_inplace(Tensor& y, double beta) {
  T* p = y.data<T>();
  const int64_t n = y.numel();
  if (beta == 0.0) {
    std::fill(p, p + n, T(0));
  } else if (beta != 1.0) {
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(beta * p[i]);
  }
}

// y[:, r0 + j] += g[:, j]: the identity projection of a block of rows.
template <class T>
void add_columns(const Tensor& g, int64_t r0, Tensor& y) {
  const int64_t b = g.dim(0), m = g.dim(1), p = y.dim(1);
  const T* gp = g.data<T>();
  T* yp = y.data<T>();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < m; ++j) yp[i * p + r0 + j] += gp[i * m + j];
}

}  // namespace

const char* projection_kind_name(ProjectionKind kind) {
  switch (kind) {
    case ProjectionKind::identity: return "identity";
    case ProjectionKind::rademacher: return "rademacher";
    case ProjectionKind::gaussian: return "gaussian";
  }
  return "unknown";
}

namespace {
RandomProjection engine_spec(int64_t m, const ProjectorSpec& spec) {
  RandomProjection r;
  r.kind = spec.kind == ProjectionKind::gaussian ? RandomProjectionKind::gaussian
                                                 : RandomProjectionKind::rademacher;
  r.seed = spec.seed;
  r.dim = spec.kind == ProjectionKind::identity ? std::max<int64_t>(m, 1) : std::max<int64_t>(spec.dim, 1);
  return r;
}
}  // namespace

Projector::Projector(int64_t input_dim, ProjectorSpec spec)
    : m_(input_dim), spec_(spec), gen_(engine_spec(input_dim, spec)) {
  if (input_dim < 1)
    throw std::invalid_argument("Projector: input dimension M must be >= 1, got " +
                                std::to_string(input_dim));
  if (spec.kind == ProjectionKind::identity) {
    p_ = m_;
    s_ = 1.0;
  } else {
    if (spec.dim < 1)
      throw std::invalid_argument("Projector: projection dimension P must be >= 1, got " +
                                  std::to_string(spec.dim) + " (kind " +
                                  projection_kind_name(spec.kind) + ")");
    p_ = spec.dim;
    s_ = 1.0 / std::sqrt(static_cast<double>(p_));
  }
}

RandomProjection Projector::random_projection() const {
  if (spec_.kind == ProjectionKind::identity)
    throw std::logic_error("Projector::random_projection: the identity projection has no random R");
  return gen_.spec();
}

void Projector::check_rows(const char* what, int64_t r0, int64_t count) const {
  if (r0 < 0 || count < 0 || r0 + count > m_)
    throw std::invalid_argument(std::string(what) + ": rows [" + std::to_string(r0) + ", " +
                                std::to_string(r0 + count) + ") are outside R's " +
                                std::to_string(m_) + " rows (M x P = (" + std::to_string(m_) +
                                ", " + std::to_string(p_) + "))");
}

double Projector::entry(int64_t r, int64_t c) const {
  if (r < 0 || r >= m_ || c < 0 || c >= p_)
    throw std::out_of_range("Projector::entry: (" + std::to_string(r) + ", " + std::to_string(c) +
                            ") is outside R of shape (" + std::to_string(m_) + ", " +
                            std::to_string(p_) + ")");
  switch (spec_.kind) {
    case ProjectionKind::identity: return r == c ? 1.0 : 0.0;
    case ProjectionKind::rademacher: {
      const uint32_t w = philox::bits(spec_.seed, static_cast<uint64_t>(r),
                                      static_cast<uint64_t>(c) / 32);
      return ((w >> (c % 32)) & 1u) ? -s_ : s_;
    }
    case ProjectionKind::gaussian:
      return rng::normal(spec_.seed, static_cast<uint64_t>(r) | kGaussianStreamBit,
                         static_cast<uint64_t>(c)) * s_;
  }
  return 0.0;
}

template <class T>
void Projector::fill(int64_t r0, int64_t count, T* dst, int64_t ld) const {
  const int64_t p = p_;
  if (spec_.kind == ProjectionKind::identity) {
    const bool par = count * p >= (int64_t{1} << 15);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t j = 0; j < count; ++j) {
      T* d = dst + j * ld;
      std::fill(d, d + p, T(0));
      d[r0 + j] = T(1);
    }
  } else {
    gen_.fill(r0, count, dst, ld);  // engine/projection.cpp: the Rademacher / Gaussian rows
  }
}

void Projector::fill_rows(int64_t r0, int64_t count, float* dst, int64_t ld) const {
  check_rows("Projector::fill_rows", r0, count);
  if (ld < p_)
    throw std::invalid_argument("Projector::fill_rows: row stride " + std::to_string(ld) +
                                " is smaller than P = " + std::to_string(p_));
  fill(r0, count, dst, ld);
}

void Projector::fill_rows(int64_t r0, int64_t count, double* dst, int64_t ld) const {
  check_rows("Projector::fill_rows", r0, count);
  if (ld < p_)
    throw std::invalid_argument("Projector::fill_rows: row stride " + std::to_string(ld) +
                                " is smaller than P = " + std::to_string(p_));
  fill(r0, count, dst, ld);
}

Tensor Projector::rows(int64_t r0, int64_t count, DType dtype) const {
  check_rows("Projector::rows", r0, count);
  Tensor t = Tensor::empty({count, p_}, dtype);
  if (count == 0) return t;
  if (dtype == DType::f32) fill(r0, count, t.data<float>(), p_);
  else fill(r0, count, t.data<double>(), p_);
  return t;
}

void Projector::project_block(const Tensor& g, int64_t r0, double beta, Tensor& y) const {
  check_ndim("Projector::project_block (g)", g, 2);
  check_ndim("Projector::project_block (y)", y, 2);
  const int64_t b = g.dim(0), m = g.dim(1);
  if (y.dim(0) != b || y.dim(1) != p_)
    throw std::invalid_argument("Projector::project_block: g " + g.shape().str() + " and y " +
                                y.shape().str() + " do not fit (expected y of shape (" +
                                std::to_string(b) + ", " + std::to_string(p_) + "))");
  check_rows("Projector::project_block", r0, m);
  check_same_dtype("Projector::project_block (g vs y)", g, y);
  check_same_device("Projector::project_block", g, y);
  if (g.device() != Device::cpu()) {
    if (b == 0) return;
    if (spec_.kind != ProjectionKind::identity) {
      ops::project_rows(g, r0, gen_.spec(), beta, y);  // R generated on the device
      return;
    }
    // Identity on a device: through the host (explicit copies; for small models only).
    Tensor yh = y.to(Device::cpu());
    project_block(g.to(Device::cpu()), r0, beta, yh);
    y.copy_from(yh);
    return;
  }
  const DType dt = g.dtype();
  const bool f32 = dt == DType::f32;

  if (b == 0) return;
  if (m == 0 || spec_.kind == ProjectionKind::identity) {
    if (f32) scale_inplace<float>(y, beta); else scale_inplace<double>(y, beta);
    if (m > 0) {
      if (f32) add_columns<float>(g, r0, y); else add_columns<double>(g, r0, y);
    }
    return;
  }

  // Tile of R: tr rows x P. If g must be split, its column tile (b x tr) is copied into a
  // contiguous buffer (ops::gemm takes contiguous operands), so it is bounded too.
  const int64_t esz = static_cast<int64_t>(dtype_size(dt));
  const int64_t budget = static_cast<int64_t>(tile_bytes_);
  int64_t tr = std::max<int64_t>(1, budget / (p_ * esz));
  const bool split = tr < m;
  if (split) tr = std::max<int64_t>(1, std::min(tr, budget / (b * esz)));
  tr = std::min(tr, m);
  Tensor rt = Tensor::empty({tr * p_}, dt);
  Tensor gt = split ? Tensor::empty({b * tr}, dt) : Tensor();
  for (int64_t j0 = 0; j0 < m; j0 += tr) {
    const int64_t n = std::min(tr, m - j0);
    Tensor r_tile = rt.rows(0, n * p_).reshape({n, p_});
    if (f32) fill(r0 + j0, n, r_tile.data<float>(), p_);
    else fill(r0 + j0, n, r_tile.data<double>(), p_);
    const double bt = j0 == 0 ? beta : 1.0;
    if (!split) {
      ops::gemm(false, false, 1.0, g, r_tile, bt, y);
      continue;
    }
    Tensor g_tile = gt.rows(0, b * n).reshape({b, n});
    const char* src = static_cast<const char*>(g.raw());
    char* dst = static_cast<char*>(g_tile.raw());
    for (int64_t i = 0; i < b; ++i)
      std::memcpy(dst + i * n * esz, src + (i * m + j0) * esz, static_cast<std::size_t>(n * esz));
    ops::gemm(false, false, 1.0, g_tile, r_tile, bt, y);
  }
}

Tensor Projector::project(const Tensor& g) const {
  check_ndim("Projector::project (g)", g, 2);
  if (g.dim(1) != m_)
    throw std::invalid_argument("Projector::project: g of shape " + g.shape().str() +
                                " does not have M = " + std::to_string(m_) + " columns");
  Tensor y = Tensor::zeros({g.dim(0), p_}, g.dtype(), g.device());
  project_block(g, 0, 0.0, y);
  return y;
}

}  // namespace attr
}  // namespace iif
