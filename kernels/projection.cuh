// Projection kernels of the CUDA backend, written once for nvcc and the SIMT emulator
// (kernels/simt/simt.cuh): per-sample gradients of a Linear layer fused with the random
// projection, and the projection of given gradients. R (M x P) is generated in the kernel from
// (seed, row, column) with Philox, the same R as attribution/projector.h bit for bit; neither an
// N x M gradient matrix nor an M x P block of R ever exists in global memory.
// Pointers are device pointers under nvcc and host pointers on the emulator.
// Tests: tests/test_kernels_attribution.cpp. nvcc check: kernels/attribution_kernels.cu.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/philox.cuh"
#include "kernels/stream.cuh"

namespace iif {
namespace kernels {


// Which R (attribution/projector.h is THE definition; identity needs no kernel).
enum class RKind : int { rademacher = 0, gaussian = 1 };

namespace proj {

constexpr int kTB = 32;          // samples per block tile
constexpr int kTP = 128;         // projected columns per block tile: one Philox block of signs per row
constexpr int kTK = 16;          // rows of R (parameters) per step
constexpr int kThreadsX = 32;    // thread (x, y) owns columns x + 32 j and samples y + 8 i of the tile
constexpr int kThreadsY = 8;
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kSeg = 16;         // R entries generated per task (half a Philox word)
constexpr int kMaxCotangents = 4;
constexpr uint64_t kGaussianStreamBit = uint64_t{1} << 63;

// R[row][c0 .. c0 + kSeg - 1] into dst (0 past column P - 1), c0 a multiple of kSeg, by
// projector.h's definition:
//   rademacher: bit c % 32 of philox::bits(seed, row, c / 32), set = -s, clear = +s, with s the
//     float64 1/sqrt(P) rounded to T (the CPU's lookup table holds exactly that);
//   gaussian: Box-Muller on words 2c, 2c + 1 of stream row | 2^63, times s in float64, rounded
//     to T. Same expression as Projector::fill; equal bits up to the device's log/cos (CUDA's
//     double log and cos are within 1-2 ulp of glibc's, so a float32 entry very rarely differs).
template <class T>
__device__ __forceinline__ void r_segment(int kind, uint64_t seed, uint64_t row, int c0, int p, double s,
                                          T* dst) {
  if (kind == static_cast<int>(RKind::rademacher)) {
    const uint32_t w = philox::bits(seed, row, static_cast<uint64_t>(c0 / 32));
    const int shift = c0 % 32;
    const T pos = static_cast<T>(s), neg = static_cast<T>(-s);
    for (int j = 0; j < kSeg; ++j) dst[j] = c0 + j < p ? (((w >> (shift + j)) & 1u) ? neg : pos) : T(0);
  } else {
    const double kPi = 3.14159265358979323846;
    for (int j = 0; j < kSeg; j += 2) {
      const int c = c0 + j;  // even: columns c and c + 1 share Philox block c / 2
      if (c >= p) {
        dst[j] = T(0);
        dst[j + 1] = T(0);
        continue;
      }
      const philox::U32x4 w = philox::words(seed, row | kGaussianStreamBit, static_cast<uint64_t>(c / 2));
      for (int h = 0; h < 2; ++h) {
        if (c + h >= p) {
          dst[j + h] = T(0);
          continue;
        }
        const double u1 = (w.v[2 * h] + 0.5) / 4294967296.0;
        const double u2 = w.v[2 * h + 1] / 4294967296.0;
        const double z = sqrt(-2.0 * log(u1)) * cos(2.0 * kPi * u2);
        dst[j + h] = static_cast<T>(z * s);
      }
    }
  }
}

// The per-sample gradient entries of a linear map at L = positions places per sample (a Linear
// layer: L = 1; a convolution: its output pixels, a = im2col patches): row r < out * in of the
// layer is weight (o, i) = (r / in, r % in) with entry sum_l d[bL + l, o] * a[bL + l, i]; rows
// out * in .. out * in + out - 1 are the bias, entry sum_l d[bL + l, o]. Each entry is summed
// over l in ascending order by the thread that loads it (a fixed order: no schedule dependence;
// with L = 1 it is the one product). K cotangent sets share the activations.
template <class T, int K>
struct LinearGradSource {
  const T* a;     // (B * L, in)
  const T* d[K];  // (B * L, out) each
  int in, out, positions;
  int64_t weight_rows;  // out * in
  __device__ __forceinline__ void load(int b, int64_t r, T (&g)[K]) const {
    const int64_t first = static_cast<int64_t>(b) * positions;
    if (r < weight_rows) {
      const int o = static_cast<int>(r / in);
      const int i = static_cast<int>(r - static_cast<int64_t>(o) * in);
      for (int k = 0; k < K; ++k) {
        T acc = d[k][first * out + o] * a[first * in + i];
        for (int q = 1; q < positions; ++q) acc += d[k][(first + q) * out + o] * a[(first + q) * in + i];
        g[k] = acc;
      }
    } else {
      const int o = static_cast<int>(r - weight_rows);
      for (int k = 0; k < K; ++k) {
        T acc = d[k][first * out + o];
        for (int q = 1; q < positions; ++q) acc += d[k][(first + q) * out + o];
        g[k] = acc;
      }
    }
  }
};

// Given gradients: entry (b, r) = g[b * ldg + r].
template <class T>
struct GivenGradSource {
  const T* g;
  int64_t ldg;
  __device__ __forceinline__ void load(int b, int64_t r, T (&v)[1]) const {
    v[0] = g[static_cast<int64_t>(b) * ldg + r];
  }
};

// Everything a projection block needs besides its gradient source.
template <class T, int K>
struct ProjectTarget {
  T* y[K];        // (B, P) each, row stride ldy
  int64_t ldy;
  int batch, p;
  int64_t rows;   // rows of R used: r0 .. r0 + rows - 1
  int64_t r0;
  uint64_t seed;
  int kind;       // RKind
  double scale;   // 1 / sqrt(P) in float64 (computed on the host, as the CPU projector does)
  double beta;    // y = G R + beta y; beta == 0 does not read y
};

// Grid: ceil(P / kTP) x ceil(B / kTB) blocks of 256 threads; each block walks all `rows` rows
// of the layer (no split over rows, so no atomics and a fixed summation order). A GPU is
// therefore only filled when B is large: the featurizer's chunks of 2048 samples give 64 sample
// tiles per 128 columns. R is regenerated once per sample tile (M P / 128 Philox blocks per tile
// against 2 kTB M P flops: generation is a few percent of the work).
//
// One block: the (kTB x kTP) tile (blockIdx.y, blockIdx.x) of every y[k] = G_k R + beta y[k].
// Per step of kTK rows of R: the R tile is generated into shared memory from Philox, the
// gradient tiles G_k (kTB x kTK) are formed in shared memory from the source, and each thread
// accumulates its 4 x 4 outputs per cotangent in registers, over the rows in ascending order.
// Outputs are written once at the end, so the result does not depend on the fiber schedule.
template <class T, int K, class Source>
__device__ void project_tile(const Source& src, const ProjectTarget<T, K>& t) {
  __shared__ T rs[kTK][kTP];
  __shared__ T gs[K][kTB][kTK];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kThreadsX + tx;
  const int b0 = blockIdx.y * kTB;
  const int p0 = blockIdx.x * kTP;
  T acc[K][4][4];
  for (int k = 0; k < K; ++k)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[k][i][j] = T(0);

  for (int64_t k0 = 0; k0 < t.rows; k0 += kTK) {
    const int kend = static_cast<int>(t.rows - k0 < kTK ? t.rows - k0 : kTK);
    // R tile: kTK rows x (kTP / kSeg) segments; zeros past row `rows` and column P.
    for (int e = tid; e < kTK * (kTP / kSeg); e += kThreads) {
      const int row = e / (kTP / kSeg);
      const int c = (e % (kTP / kSeg)) * kSeg;
      T* dst = &rs[row][c];
      if (row < kend && p0 + c < t.p) {
        r_segment<T>(t.kind, t.seed, static_cast<uint64_t>(t.r0 + k0 + row), p0 + c, t.p, t.scale, dst);
      } else {
        for (int j = 0; j < kSeg; ++j) dst[j] = T(0);
      }
    }
    // Gradient tiles.
    for (int e = tid; e < kTB * kTK; e += kThreads) {
      const int b = e / kTK, kk = e % kTK;
      T g[K];
      if (b0 + b < t.batch && kk < kend) {
        src.load(b0 + b, k0 + kk, g);
      } else {
        for (int k = 0; k < K; ++k) g[k] = T(0);
      }
      for (int k = 0; k < K; ++k) gs[k][b][kk] = g[k];
    }
    __syncthreads();
    for (int kk = 0; kk < kend; ++kk) {
      T r[4];
      for (int j = 0; j < 4; ++j) r[j] = rs[kk][tx + kThreadsX * j];
      for (int k = 0; k < K; ++k)
        for (int i = 0; i < 4; ++i) {
          const T g = gs[k][ty + kThreadsY * i][kk];
          for (int j = 0; j < 4; ++j) acc[k][i][j] += g * r[j];
        }
    }
    __syncthreads();  // the next step overwrites rs and gs
  }
  const T beta = static_cast<T>(t.beta);
  for (int i = 0; i < 4; ++i) {
    const int b = b0 + ty + kThreadsY * i;
    if (b >= t.batch) continue;
    for (int j = 0; j < 4; ++j) {
      const int c = p0 + tx + kThreadsX * j;
      if (c >= t.p) continue;
      for (int k = 0; k < K; ++k) {
        T* y = t.y[k] + static_cast<int64_t>(b) * t.ldy + c;
        *y = t.beta == 0.0 ? acc[k][i][j] : beta * *y + acc[k][i][j];
      }
    }
  }
}

// Fused per-sample gradient and projection of one Linear layer (see linear_project below).
template <class T, int K>
__global__ void __launch_bounds__(kThreads) linear_project_kernel(LinearGradSource<T, K> src, ProjectTarget<T, K> t) {
  project_tile<T, K>(src, t);
}

// Projection of given gradients (see project_rows below).
template <class T>
__global__ void __launch_bounds__(kThreads) project_rows_kernel(GivenGradSource<T> src, ProjectTarget<T, 1> t) {
  project_tile<T, 1>(src, t);
}

inline void check_grid(const char* what, int batch, int p) {
  if (batch < 0 || p < 1)
    throw std::invalid_argument(std::string(what) + ": need batch >= 0 and P >= 1, got batch " +
                                std::to_string(batch) + ", P " + std::to_string(p));
  if ((batch + kTB - 1) / kTB > 65535)
    throw std::invalid_argument(std::string(what) + ": batch " + std::to_string(batch) +
                                " needs more than 65535 sample tiles of " + std::to_string(kTB) +
                                "; split it");
}

inline double scale_of(int p) { return 1.0 / std::sqrt(static_cast<double>(p)); }

template <class T, int K>
void launch_linear(const T* a, const T* const* d, T* const* y, int batch, int positions, int in, int out, bool bias,
                   int64_t r0, int p, RKind kind, uint64_t seed, stream_t stream) {
  LinearGradSource<T, K> src{};
  ProjectTarget<T, K> t{};
  src.a = a;
  for (int k = 0; k < K; ++k) {
    src.d[k] = d[k];
    t.y[k] = y[k];
  }
  src.in = in;
  src.out = out;
  src.positions = positions;
  src.weight_rows = static_cast<int64_t>(in) * out;
  t.ldy = p;
  t.batch = batch;
  t.p = p;
  t.rows = src.weight_rows + (bias ? out : 0);
  t.r0 = r0;
  t.seed = seed;
  t.kind = static_cast<int>(kind);
  t.scale = scale_of(p);
  t.beta = 1.0;
  const dim3 grid((p + kTP - 1) / kTP, (batch + kTB - 1) / kTB);
  simt::launch(linear_project_kernel<T, K>, grid, dim3(kThreadsX, kThreadsY), 0, stream, src, t);
}

}  // namespace proj

// ---- launchers -------------------------------------------------------------------------------

// Projected per-sample gradients of a linear map at `positions` places per sample (a Linear
// layer: 1; a convolution: its output pixels), for `count` cotangent sets at once
// (1 <= count <= 4; IIF's u and v are count = 2: the R tile and the activations are shared):
//   a (batch * L, in) inputs; d[k] (batch * L, out) output cotangents; y[k] (batch, P), L = positions:
//   y[k][b, c] += sum_{o, i} (sum_l d[k][bL + l, o] a[bL + l, i]) R[r0 + o * in + i, c]
//                 (+ sum_o (sum_l d[k][bL + l, o]) R[r0 + out * in + o, c] if bias).
// The layer's parameters are rows r0 .. of R in the CPU featurizer's order (featurizer.h): the
// weight (out, in) row-major, then the bias. `d` and `y` are host arrays of `count` device
// pointers. R is the projector's (kind, seed, P). Accumulates (y += ...), so the layers of a
// model are added one launch after another. batch == 0 does nothing. Each gradient entry is
// summed over the L positions where it is loaded: right for the small L of late conv layers;
// a tiled formation for large L is the next step (docs/gpu.md).
template <class T>
void linear_project(const T* a, const T* const* d, T* const* y, int count, int batch, int positions, int in, int out,
                    bool bias, int64_t r0, int p, RKind kind, uint64_t seed, stream_t stream = nullptr) {
  proj::check_grid("linear_project", batch, p);
  if (in < 1 || out < 1 || r0 < 0 || positions < 1 || static_cast<int64_t>(in) * out > (int64_t{1} << 40))
    throw std::invalid_argument("linear_project: bad layer shape in " + std::to_string(in) + ", out " +
                                std::to_string(out) + ", positions " + std::to_string(positions) + ", r0 " +
                                std::to_string(r0));
  if (batch == 0) return;
  switch (count) {
    case 1: proj::launch_linear<T, 1>(a, d, y, batch, positions, in, out, bias, r0, p, kind, seed, stream); break;
    case 2: proj::launch_linear<T, 2>(a, d, y, batch, positions, in, out, bias, r0, p, kind, seed, stream); break;
    case 3: proj::launch_linear<T, 3>(a, d, y, batch, positions, in, out, bias, r0, p, kind, seed, stream); break;
    case 4: proj::launch_linear<T, 4>(a, d, y, batch, positions, in, out, bias, r0, p, kind, seed, stream); break;
    default:
      throw std::invalid_argument("linear_project: " + std::to_string(count) +
                                  " cotangent sets; 1 to 4 per launch (launch again for more)");
  }
}

// The same for a Linear layer (one position per sample).
template <class T>
void linear_project(const T* a, const T* const* d, T* const* y, int count, int batch, int in, int out, bool bias,
                    int64_t r0, int p, RKind kind, uint64_t seed, stream_t stream = nullptr) {
  linear_project<T>(a, d, y, count, batch, 1, in, out, bias, r0, p, kind, seed, stream);
}

// One cotangent set: y (batch, P) += the projection of the per-sample gradients d (batch, out) x a.
template <class T>
void linear_project(const T* a, const T* d, T* y, int batch, int in, int out, bool bias, int64_t r0, int p,
                    RKind kind, uint64_t seed, stream_t stream = nullptr) {
  const T* ds[1] = {d};
  T* ys[1] = {y};
  linear_project<T>(a, ds, ys, 1, batch, in, out, bias, r0, p, kind, seed, stream);
}

// Projection of given gradients (Projector::project_block):
//   g (batch, m) with row stride ldg >= m, column j = parameter row r0 + j;  y (batch, P):
//   y = g R[r0 : r0 + m, :] + beta * y     (beta == 0: y is not read).
// Any P >= 1 and m >= 0 (m == 0 gives y = beta * y).
template <class T>
void project_rows(const T* g, int64_t ldg, int batch, int64_t m, int64_t r0, int p, RKind kind, uint64_t seed,
                  double beta, T* y, stream_t stream = nullptr) {
  proj::check_grid("project_rows", batch, p);
  if (m < 0 || r0 < 0 || ldg < m)
    throw std::invalid_argument("project_rows: need m >= 0, r0 >= 0, ldg >= m; got m " + std::to_string(m) +
                                ", r0 " + std::to_string(r0) + ", ldg " + std::to_string(ldg));
  if (batch == 0) return;
  proj::GivenGradSource<T> src{g, ldg};
  proj::ProjectTarget<T, 1> t{};
  t.y[0] = y;
  t.ldy = p;
  t.batch = batch;
  t.p = p;
  t.rows = m;
  t.r0 = r0;
  t.seed = seed;
  t.kind = static_cast<int>(kind);
  t.scale = proj::scale_of(p);
  t.beta = beta;
  const dim3 grid((p + proj::kTP - 1) / proj::kTP, (batch + proj::kTB - 1) / proj::kTB);
  simt::launch(proj::project_rows_kernel<T>, grid, dim3(proj::kThreadsX, proj::kThreadsY), 0, stream, src, t);
}

}  // namespace kernels
}  // namespace iif
