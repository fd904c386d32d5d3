// Fisher / Gram accumulation of the CUDA backend, written once for nvcc and the SIMT emulator:
// the syrk op of engine/backend.h, C (P x P) = alpha U^T U + beta C with U (N x P), tiled in
// shared memory. Pointers are device pointers under nvcc and host pointers on the emulator.
// Tests: tests/test_kernels_attribution.cpp. nvcc check: kernels/attribution_kernels.cu.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/stream.cuh"

namespace iif {
namespace kernels {


namespace fisher {

constexpr int kT = 64;   // C tile (kT x kT) per block
constexpr int kTN = 16;  // rows of U per step
constexpr int kThreadsX = 16;  // thread (x, y) owns C entries (y + 16 a, x + 16 c), a, c < 4
constexpr int kThreadsY = 16;
constexpr int kThreads = kThreadsX * kThreadsY;

// Block -> tile (bi, bj) of the upper triangle, bi <= bj, numbered row by row.
__device__ __forceinline__ void upper_tile(int t, int tiles, int& bi, int& bj) {
  bi = 0;
  while (t >= tiles - bi) {
    t -= tiles - bi;
    ++bi;
  }
  bj = bi + t;
}

// One block per upper tile (bi, bj) of C: acc = sum_n U[n, i] U[n, j] over the tile, the rows
// of U in ascending order (staged kTN at a time in shared memory), then
//   C[i, j] = C[j, i] = alpha acc + beta C[i, j]     for i <= j
// reading only the upper triangle of C (beta == 0: C is not read). Entries of the lower
// triangle are written only as mirrors, so the result is exactly symmetric, and every entry is
// written by exactly one thread: no dependence on the schedule, no atomics.
template <class T>
__global__ void __launch_bounds__(kThreads) syrk_kernel(const T* u, int n, int p, T alpha, T beta, T* c) {
  __shared__ T ua[kTN][kT];
  __shared__ T ub[kTN][kT];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kThreadsX + tx;
  int bi, bj;
  upper_tile(blockIdx.x, (p + kT - 1) / kT, bi, bj);
  const int i0 = bi * kT, j0 = bj * kT;
  T acc[4][4];
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b) acc[a][b] = T(0);
  for (int n0 = 0; n0 < n; n0 += kTN) {
    const int nend = n - n0 < kTN ? n - n0 : kTN;
    for (int e = tid; e < kTN * kT; e += kThreads) {
      const int r = e / kT, col = e % kT;
      const bool row_ok = r < nend;
      const int64_t base = static_cast<int64_t>(n0 + r) * p;
      ua[r][col] = row_ok && i0 + col < p ? u[base + i0 + col] : T(0);
      ub[r][col] = row_ok && j0 + col < p ? u[base + j0 + col] : T(0);
    }
    __syncthreads();
    for (int r = 0; r < nend; ++r) {
      T x[4], y[4];
      for (int a = 0; a < 4; ++a) x[a] = ua[r][ty + kThreadsY * a];
      for (int b = 0; b < 4; ++b) y[b] = ub[r][tx + kThreadsX * b];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) acc[a][b] += x[a] * y[b];
    }
    __syncthreads();
  }
  for (int a = 0; a < 4; ++a) {
    const int i = i0 + ty + kThreadsY * a;
    if (i >= p) continue;
    for (int b = 0; b < 4; ++b) {
      const int j = j0 + tx + kThreadsX * b;
      if (j >= p || j < i) continue;
      const int64_t ij = static_cast<int64_t>(i) * p + j, ji = static_cast<int64_t>(j) * p + i;
      T v;
      if (n == 0) {  // C = beta C (no alpha * 0 term: an infinite alpha would make NaN)
        v = beta == T(0) ? T(0) : beta * c[ij];
      } else {
        v = alpha * acc[a][b];
        if (beta != T(0)) v += beta * c[ij];
      }
      c[ij] = v;
      c[ji] = v;
    }
  }
}

}  // namespace fisher

// C (P, P) = alpha U^T U + beta C, U (N, P) row-major: the syrk contract of engine/backend.h.
// The whole symmetric C is written (both triangles, exactly symmetric). With beta != 0 only C's
// upper triangle is read (C must be symmetric on entry); with beta == 0 C is not read (it may
// hold NaN). N == 0 gives C = beta C. Accumulates in T (float32 sums of N rank-one terms lose
// about N * 6e-8 relative: attribution/curvature.h accumulates the Fisher in float64).
// Deterministic: the same bits for every launch and schedule.
template <class T>
void syrk(double alpha, const T* u, int n, int p, double beta, T* c, stream_t stream = nullptr) {
  if (n < 0 || p < 0)
    throw std::invalid_argument("syrk: need N >= 0 and P >= 0, got N " + std::to_string(n) + ", P " +
                                std::to_string(p));
  if (p == 0) return;
  const int64_t tiles = (p + fisher::kT - 1) / fisher::kT;
  const int64_t blocks = tiles * (tiles + 1) / 2;
  if (blocks > 2147483647)
    throw std::invalid_argument("syrk: P = " + std::to_string(p) + " is too large for one grid");
  simt::launch(fisher::syrk_kernel<T>, static_cast<unsigned>(blocks), dim3(fisher::kThreadsX, fisher::kThreadsY),
               0, stream, u, n, p, static_cast<T>(alpha), static_cast<T>(beta), c);
}

}  // namespace kernels
}  // namespace iif
