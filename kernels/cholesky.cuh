// Batched damped Cholesky solves of the CUDA backend, written once for nvcc and the SIMT
// emulator: the batched_cholesky_solve op of engine/backend.h,
//   B_k <- (A_k + damping[k] I)^{-1} B_k,   A (K, P, P), B (K, P, R), k < K,
// factorised and solved in float64 whatever the storage type T (a float32 result is the float64
// solution rounded once). One block factorises one matrix (in shared memory when it fits, in a
// global workspace otherwise); the solves are spread over RHS tiles x matrices.
// Pointers are device pointers under nvcc and host pointers on the emulator.
// Tests: tests/test_kernels_attribution.cpp. nvcc check: kernels/attribution_kernels.cu.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cholesky_info.h"
#include "kernels/stream.cuh"

namespace iif {
namespace kernels {


namespace chol {

constexpr int kThreads = 256;
constexpr int kRhsTile = 32;          // RHS columns per solve block (fewer if P is large)
constexpr int kMaxSolveBlocks = 64;   // solve blocks per matrix (each loops over its RHS tiles)
constexpr std::size_t kDefaultSharedBytes = 48 * 1024;  // CUDA's limit without an opt-in
// info[k] codes and kNonFinite: kernels/cholesky_info.h.

// x is finite (not NaN, not +-Inf); the build uses no fast-math.
__device__ __forceinline__ bool finite(double x) { return x - x == 0.0; }

// Block k: W = lower triangle of A_k (row-major, i >= j) + damping[k] I in float64, factorised
// in place into L (W = L L^T, right-looking, one column per step: 3 barriers per column), then
// L's lower triangle is copied to l_out + k P^2 (if W was in shared memory). Every entry is
// updated by one thread in a fixed order, so the bits do not depend on the schedule.
// Shared memory: P^2 doubles when `in_shared`, else W is l_out + k P^2 itself.
template <class T>
__global__ void __launch_bounds__(kThreads) factor_kernel(const T* a, const double* damping, int p, int in_shared,
                                                          double* l_out, int* info) {
  SIMT_DYNAMIC_SHARED(double, smem);
  __shared__ int s_fail;
  const int k = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
  const std::size_t pp = static_cast<std::size_t>(p) * p;
  const T* ak = a + k * pp;
  double* lk = l_out + k * pp;
  double* w = in_shared ? smem : lk;
  const double dk = damping[k];
  int bad = 0;
  for (std::size_t e = tid; e < pp; e += nt) {
    const int i = static_cast<int>(e / p), j = static_cast<int>(e % p);
    const double v = static_cast<double>(ak[e]);
    if (!finite(v)) bad = 1;
    if (j <= i) w[e] = i == j ? v + dk : v;
  }
  if (__syncthreads_or(bad)) {
    if (tid == 0) info[k] = kNonFinite;
    return;
  }
  for (int j = 0; j < p; ++j) {
    if (tid == 0) {
      const double d = w[static_cast<std::size_t>(j) * p + j];
      if (d > 0.0) {  // false for NaN as well
        w[static_cast<std::size_t>(j) * p + j] = sqrt(d);
        s_fail = 0;
      } else {
        s_fail = j + 1;
      }
    }
    __syncthreads();
    const int fail = s_fail;  // read by all before the next write (two barriers away)
    if (fail) {
      if (tid == 0) info[k] = fail;
      return;
    }
    const double ljj = w[static_cast<std::size_t>(j) * p + j];
    for (int i = j + 1 + tid; i < p; i += nt) w[static_cast<std::size_t>(i) * p + j] /= ljj;
    __syncthreads();
    // Trailing update of the lower triangle: W[i][c] -= L[i][j] L[c][j], j < c <= i.
    const int n = p - j - 1;
    const int64_t nn = static_cast<int64_t>(n) * n;
    for (int64_t e = tid; e < nn; e += nt) {
      const int ii = static_cast<int>(e / n), cc = static_cast<int>(e % n);
      if (cc > ii) continue;
      const std::size_t i = static_cast<std::size_t>(j + 1 + ii), c = static_cast<std::size_t>(j + 1 + cc);
      w[i * p + c] -= w[i * p + j] * w[c * p + j];
    }
    __syncthreads();
  }
  if (in_shared) {
    for (std::size_t e = tid; e < pp; e += nt) {
      if (static_cast<int>(e % p) <= static_cast<int>(e / p)) lk[e] = w[e];
    }
  }
  if (tid == 0) info[k] = 0;
}

// Block (x, k): for each RHS tile of `tr` columns it owns (tiles x, x + gridDim.x, ...), of
// matrix k with info[k] == 0: X = B_k[:, tile] in float64, forward substitution L Y = X, back
// substitution L^T X = Y (column-oriented: 2 barriers per row of L, the rows of the tile in
// parallel), then B_k[:, tile] = X rounded to T. Matrices that failed are left untouched.
// X (P x tr doubles) lives in shared memory when `in_shared`, else in x_ws (one slice per block).
template <class T>
__global__ void __launch_bounds__(kThreads) solve_kernel(const double* l, const int* info, int p, int r, int tr,
                                                         int in_shared, double* x_ws, T* b) {
  SIMT_DYNAMIC_SHARED(double, smem);
  const int k = blockIdx.y, tid = threadIdx.x, nt = blockDim.x;
  if (info[k] != 0) return;  // the whole block, before any barrier
  const std::size_t pp = static_cast<std::size_t>(p) * p;
  const double* lk = l + k * pp;
  T* bk = b + static_cast<std::size_t>(k) * p * r;
  double* x = in_shared ? smem
                        : x_ws + (static_cast<std::size_t>(k) * gridDim.x + blockIdx.x) * p * static_cast<std::size_t>(tr);
  for (int c0 = blockIdx.x * tr; c0 < r; c0 += gridDim.x * tr) {
    const int nc = r - c0 < tr ? r - c0 : tr;
    for (int e = tid; e < p * nc; e += nt) {
      const int i = e / nc, c = e % nc;
      x[static_cast<std::size_t>(i) * tr + c] = static_cast<double>(bk[static_cast<std::size_t>(i) * r + c0 + c]);
    }
    __syncthreads();
    for (int j = 0; j < p; ++j) {  // L Y = X
      const double ljj = lk[static_cast<std::size_t>(j) * p + j];
      for (int c = tid; c < nc; c += nt) x[static_cast<std::size_t>(j) * tr + c] /= ljj;
      __syncthreads();
      for (int e = tid; e < (p - j - 1) * nc; e += nt) {
        const int i = j + 1 + e / nc, c = e % nc;
        x[static_cast<std::size_t>(i) * tr + c] -=
            lk[static_cast<std::size_t>(i) * p + j] * x[static_cast<std::size_t>(j) * tr + c];
      }
      __syncthreads();
    }
    for (int j = p - 1; j >= 0; --j) {  // L^T X = Y
      const double ljj = lk[static_cast<std::size_t>(j) * p + j];
      for (int c = tid; c < nc; c += nt) x[static_cast<std::size_t>(j) * tr + c] /= ljj;
      __syncthreads();
      for (int e = tid; e < j * nc; e += nt) {
        const int i = e / nc, c = e % nc;
        x[static_cast<std::size_t>(i) * tr + c] -=
            lk[static_cast<std::size_t>(j) * p + i] * x[static_cast<std::size_t>(j) * tr + c];
      }
      __syncthreads();
    }
    for (int e = tid; e < p * nc; e += nt) {
      const int i = e / nc, c = e % nc;
      bk[static_cast<std::size_t>(i) * r + c0 + c] = static_cast<T>(x[static_cast<std::size_t>(i) * tr + c]);
    }
    __syncthreads();  // the next tile overwrites x
  }
}

// How a launch is laid out (the same numbers for the workspace size and the launch).
struct Plan {
  bool factor_in_shared = false;
  bool x_in_shared = false;
  int tr = 1;            // RHS columns per tile
  int solve_blocks = 0;  // per matrix
  std::size_t factor_smem = 0, solve_smem = 0;
  std::size_t l_bytes = 0, x_bytes = 0;  // workspace: L (K P^2 doubles), then X slices
};

inline Plan plan(int k_count, int p, int r, std::size_t shared_bytes) {
  Plan pl;
  const std::size_t pp8 = static_cast<std::size_t>(p) * p * sizeof(double);
  pl.factor_in_shared = pp8 <= shared_bytes;
  pl.factor_smem = pl.factor_in_shared ? pp8 : 0;
  const std::size_t col8 = static_cast<std::size_t>(p) * sizeof(double);
  const std::size_t fit = col8 > 0 ? shared_bytes / col8 : 0;
  const int want = r < kRhsTile ? (r > 0 ? r : 1) : kRhsTile;
  pl.x_in_shared = fit >= 1;
  pl.tr = pl.x_in_shared ? static_cast<int>(fit < static_cast<std::size_t>(want) ? fit : want) : want;
  pl.solve_smem = pl.x_in_shared ? col8 * pl.tr : 0;
  const int tiles = r > 0 ? (r + pl.tr - 1) / pl.tr : 0;
  pl.solve_blocks = tiles < kMaxSolveBlocks ? tiles : kMaxSolveBlocks;
  pl.l_bytes = static_cast<std::size_t>(k_count) * pp8;
  pl.x_bytes = pl.x_in_shared ? 0 : static_cast<std::size_t>(k_count) * pl.solve_blocks * col8 * pl.tr;
  return pl;
}

}  // namespace chol

// Bytes of device workspace batched_cholesky_solve needs (16-byte aligned): the factors L
// (K P^2 doubles), plus the solves' float64 RHS tiles when a P x 1 tile exceeds shared_bytes.
inline std::size_t cholesky_workspace_bytes(int k_count, int p, int r,
                                            std::size_t shared_bytes = chol::kDefaultSharedBytes) {
  const chol::Plan pl = chol::plan(k_count, p, r, shared_bytes);
  return pl.l_bytes + pl.x_bytes;
}

// The batched_cholesky_solve op of engine/backend.h:
//   a (K, P, P) symmetric (only the lower triangle, i >= j, is read; every entry is checked for
//   NaN/Inf), damping (K) doubles, b (K, P, R) overwritten by (A_k + damping[k] I)^{-1} B_k,
//   workspace: cholesky_workspace_bytes(K, P, R, shared_bytes) bytes, info (K) ints:
//   0, or the order of the first leading minor of A_k + damping[k] I that is not positive
//   definite (LAPACK potrf's info), or chol::kNonFinite. B_k of a failed k is left as it was.
// The caller copies info to the host and calls throw_on_cholesky_info (the CPU backend's
// errors). `shared_bytes` bounds the dynamic shared memory per block (tests pass 0 to force
// the global-workspace path at small P).
template <class T>
void batched_cholesky_solve(const T* a, const double* damping, int k_count, int p, T* b, int r, void* workspace,
                            int* info, stream_t stream = nullptr,
                            std::size_t shared_bytes = chol::kDefaultSharedBytes) {
  if (k_count < 0 || p < 0 || r < 0)
    throw std::invalid_argument("batched_cholesky_solve: need K, P, R >= 0, got K " + std::to_string(k_count) +
                                ", P " + std::to_string(p) + ", R " + std::to_string(r));
  if (k_count == 0 || p == 0) return;
  if (k_count > 65535)
    throw std::invalid_argument("batched_cholesky_solve: K = " + std::to_string(k_count) +
                                " matrices exceed one launch's 65535; split the batch");
  const chol::Plan pl = chol::plan(k_count, p, r, shared_bytes);
  double* l = static_cast<double*>(workspace);
  double* x_ws = reinterpret_cast<double*>(static_cast<char*>(workspace) + pl.l_bytes);
  simt::launch(chol::factor_kernel<T>, static_cast<unsigned>(k_count), chol::kThreads, pl.factor_smem, stream, a,
               damping, p, pl.factor_in_shared ? 1 : 0, l, info);
  if (r == 0) return;
  simt::launch(chol::solve_kernel<T>, dim3(pl.solve_blocks, k_count), chol::kThreads, pl.solve_smem, stream, l,
               static_cast<const int*>(info), p, r, pl.tr, pl.x_in_shared ? 1 : 0, x_ws, b);
}

}  // namespace kernels
}  // namespace iif
