// Reduction kernels of the CUDA backend: sum, dot, column sums (sum_rows, also model-batched)
// and argmax per row. Sums accumulate in float64 (as the CPU backend does) and are
// deterministic: every reduction tree is fixed by the launch shape, never by thread timing
// (no atomics), so a result does not change from run to run or between schedule orders on the
// emulator. The order differs from the CPU's sequential one, so sums agree with the CPU within
// float64 rounding (then one rounding to the storage type).
// Block reductions: warp shuffles (__shfl_xor_sync) within each warp, then one value per warp
// through shared memory and a __syncthreads. Block sizes are multiples of 32.
#pragma once

#include <cstdint>

#include "kernels/elementwise.cuh"
#include "kernels/simt/simt.cuh"

namespace iif {
namespace kernels {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kReduceThreads = 256;  // threads of the 1-D reduction blocks
constexpr int kReducePartials = 256;  // blocks of the first pass of sum/dot (at most)

// The sum of v over the warp, returned to every lane (butterfly: every lane adds the same two
// numbers in the same order at each step, so all lanes get the same bits).
__device__ __forceinline__ double warp_sum(double v) {
  for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(kFullMask, v, m);
  return v;
}
// The largest non-NaN v over the warp (fmax ignores NaN; -inf if all are NaN or -inf).
__device__ __forceinline__ double warp_max(double v) {
  for (int m = 16; m > 0; m /= 2) v = fmax(v, __shfl_xor_sync(kFullMask, v, m));
  return v;
}

// The sum of v over the block, valid in thread 0 (blockDim.x = kBlock, a multiple of 32).
// warp_part is (kBlock / 32) shared doubles. Ends with a barrier, so warp_part may be reused.
template <int kBlock>
__device__ double block_sum(double v, double* warp_part) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (warp == 0) {
    total = lane < kBlock / 32 ? warp_part[lane] : 0.0;
    total = warp_sum(total);
  }
  __syncthreads();
  return total;
}

// First pass of sum (y == nullptr) or dot (y != nullptr): x, y (n); partial (gridDim.x):
// partial[b] = sum over the grid-stride elements block b visits of x[i] (* y[i]), in float64.
template <class T, int kBlock>
__global__ void sum_partial_kernel(const T* x, const T* y, std::int64_t n, double* partial) {
  __shared__ double warp_part[kBlock / 32];
  double v = 0.0;
  if (y) {
    IIF_GRID_STRIDE(i, n) v += static_cast<double>(x[i]) * static_cast<double>(y[i]);
  } else {
    IIF_GRID_STRIDE(i, n) v += static_cast<double>(x[i]);
  }
  const double total = block_sum<kBlock>(v, warp_part);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// Second pass, one block: out[0] = sum of partial (m).
template <int kBlock>
__global__ void sum_final_kernel(const double* partial, int m, double* out) {
  __shared__ double warp_part[kBlock / 32];
  double v = 0.0;
  for (int i = threadIdx.x; i < m; i += kBlock) v += partial[i];
  const double total = block_sum<kBlock>(v, warp_part);
  if (threadIdx.x == 0) out[0] = total;
}

// Column sums: x (batch, rows, cols), out (batch, cols):
//   out[k][c] = sum_r x[k][r][c] + beta * out[k][c]      (beta_zero: out is not read)
// Blocks of 32 x kRowsPerBlock threads, grid (ceil(cols / 32), min(batch, 65535)), problems
// k = blockIdx.y, blockIdx.y + gridDim.y, ...: thread (tx, ty) sums column c = 32 blockIdx.x + tx
// over the rows ty, ty + kRowsPerBlock, ... (reads coalesced along c), then thread ty = 0 adds
// the kRowsPerBlock partial sums in order.
constexpr int kRowsPerBlock = 8;
template <class T>
__global__ void sum_rows_kernel(const T* x, std::int64_t batch, std::int64_t rows, std::int64_t cols,
                                double beta, bool beta_zero, T* out) {
  __shared__ double part[kRowsPerBlock][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(32) + tx;
  for (std::int64_t k = blockIdx.y; k < batch; k += gridDim.y) {  // the same trip count for the block
    const T* xk = x + k * rows * cols;
    double v = 0.0;
    if (c < cols)
      for (std::int64_t r = ty; r < rows; r += kRowsPerBlock) v += static_cast<double>(xk[r * cols + c]);
    part[ty][tx] = v;
    __syncthreads();
    if (ty == 0 && c < cols) {
      double s = 0.0;
      for (int j = 0; j < kRowsPerBlock; ++j) s += part[j][tx];
      T* o = out + k * cols + c;
      *o = static_cast<T>(s + (beta_zero ? 0.0 : beta * static_cast<double>(*o)));
    }
    __syncthreads();  // part is rewritten by the next problem
  }
}

// Index of the largest entry of each row of x (rows, cols), first one on ties, with the CPU
// backend's sequential semantics `if (x[c] > x[best]) best = c` from best = 0: NaN entries are
// never chosen, and a NaN in column 0 makes the answer 0. One block of kBlock threads per row.
// (value, index) pairs are combined by "larger value, then smaller index", an exact selection,
// so any reduction tree gives the same answer.
struct ArgBest {
  double v;
  std::int64_t i;  // -1: no non-NaN entry seen
};
__device__ __forceinline__ ArgBest arg_better(ArgBest a, ArgBest b) {
  if (b.i < 0) return a;
  if (a.i < 0) return b;
  if (a.v > b.v) return a;
  if (b.v > a.v) return b;
  return a.i < b.i ? a : b;
}
__device__ __forceinline__ ArgBest warp_arg_best(ArgBest a) {
  for (int m = 16; m > 0; m /= 2) {
    ArgBest o;
    o.v = __shfl_xor_sync(kFullMask, a.v, m);
    o.i = __shfl_xor_sync(kFullMask, a.i, m);
    a = arg_better(a, o);
  }
  return a;
}
template <class T, int kBlock>
__global__ void argmax_rows_kernel(const T* x, std::int64_t cols, std::int64_t* out) {
  __shared__ double wv[kBlock / 32];
  __shared__ std::int64_t wi[kBlock / 32];
  const std::int64_t r = blockIdx.x;
  const T* xr = x + r * cols;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  ArgBest a{0.0, -1};
  for (std::int64_t c = threadIdx.x; c < cols; c += kBlock) {
    const double v = static_cast<double>(xr[c]);
    if (v == v) a = arg_better(a, ArgBest{v, c});  // skips NaN
  }
  a = warp_arg_best(a);
  if (lane == 0) {
    wv[warp] = a.v;
    wi[warp] = a.i;
  }
  __syncthreads();
  if (warp == 0) {
    ArgBest b = lane < kBlock / 32 ? ArgBest{wv[lane], wi[lane]} : ArgBest{0.0, -1};
    b = warp_arg_best(b);
    if (lane == 0) {
      const double x0 = cols > 0 ? static_cast<double>(xr[0]) : 0.0;
      out[r] = (b.i < 0 || x0 != x0) ? 0 : b.i;
    }
  }
}

// ---- launchers -------------------------------------------------------------------------

// partial: kReducePartials doubles of scratch; out: 1 double (device).
template <class T>
void sum_or_dot(const T* x, const T* y, std::int64_t n, double* partial, double* out, stream_t s) {
  const unsigned blocks = grid_for(n, kReduceThreads, kReducePartials);
  simt::launch(sum_partial_kernel<T, kReduceThreads>, blocks, kReduceThreads, 0, s, x, y, n, partial);
  simt::launch(sum_final_kernel<kReduceThreads>, 1, kReduceThreads, 0, s,
               static_cast<const double*>(partial), static_cast<int>(blocks), out);
}

template <class T>
void sum_rows(const T* x, std::int64_t batch, std::int64_t rows, std::int64_t cols, double beta,
              T* out, stream_t s) {
  if (batch == 0 || cols == 0) return;
  const dim3 grid(static_cast<unsigned>((cols + 31) / 32),
                  static_cast<unsigned>(batch < 65535 ? batch : 65535));
  simt::launch(sum_rows_kernel<T>, grid, dim3(32, kRowsPerBlock), 0, s, x, batch, rows, cols, beta,
               beta == 0.0, out);
}

constexpr int kArgmaxThreads = 128;
template <class T>
void argmax_rows(const T* x, std::int64_t rows, std::int64_t cols, std::int64_t* out, stream_t s) {
  if (rows == 0) return;
  simt::launch(argmax_rows_kernel<T, kArgmaxThreads>, static_cast<unsigned>(rows), kArgmaxThreads,
               0, s, x, cols, out);
}

}  // namespace kernels
}  // namespace iif
