// Loss kernels of the CUDA backend: softmax, softmax cross-entropy with soft targets (loss and
// dlogits in one pass), its Hessian-vector product with respect to the logits, and squared
// error. One warp per row (kWarpsPerBlock rows per block); each lane walks the columns
// lane, lane + 32, ... and the row's max and sums are warp reductions (__shfl_xor_sync) in
// float64, the precision the CPU backend computes them in. Results are rounded once to the
// storage type. No __syncthreads: a warp whose row is past the end exits as a whole.
//
// Shapes: Z (logits), T (targets), D (direction), P (pred) and every output are (rows, cols);
// loss is (rows).
#pragma once

#include <cstdint>

#include "kernels/reduce.cuh"
#include "kernels/simt/simt.cuh"

namespace iif {
namespace kernels {

constexpr int kWarpsPerBlock = 8;

// log sum_c exp(z_c), the stable way: zmax = the largest non-NaN z (as std::max in the CPU
// backend, a NaN never becomes the max; it still makes the sum NaN), then
// zmax + log(sum exp(z - zmax)).
template <class T>
__device__ double row_log_sum_exp(const T* z, std::int64_t cols, int lane) {
  double zmax = -HUGE_VAL;
  for (std::int64_t c = lane; c < cols; c += 32) zmax = fmax(zmax, static_cast<double>(z[c]));
  zmax = warp_max(zmax);
  double s = 0.0;
  for (std::int64_t c = lane; c < cols; c += 32) s += exp(static_cast<double>(z[c]) - zmax);
  s = warp_sum(s);
  return zmax + log(s);
}

// probs(b,:) = softmax(Z(b,:))
template <class T>
__global__ void softmax_kernel(const T* z, T* probs, std::int64_t rows, std::int64_t cols) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // the whole warp
  const T* zr = z + r * cols;
  const double lse = row_log_sum_exp(zr, cols, lane);
  for (std::int64_t c = lane; c < cols; c += 32)
    probs[r * cols + c] = static_cast<T>(exp(static_cast<double>(zr[c]) - lse));
}

// loss(b) = -sum_{c: T(b,c) != 0} T(b,c) (Z(b,c) - lse_b)
// dZ(b,c) = (sum_c T(b,c)) exp(Z(b,c) - lse_b) - T(b,c)       (when dz != nullptr)
template <class T>
__global__ void softmax_xent_kernel(const T* z, const T* t, T* loss, T* dz, std::int64_t rows,
                                    std::int64_t cols) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const T* zr = z + r * cols;
  const T* tr = t + r * cols;
  const double lse = row_log_sum_exp(zr, cols, lane);
  double l = 0.0, tsum = 0.0;
  for (std::int64_t c = lane; c < cols; c += 32) {
    const double tc = static_cast<double>(tr[c]);
    tsum += tc;
    if (tc != 0.0) l -= tc * (static_cast<double>(zr[c]) - lse);
  }
  l = warp_sum(l);
  tsum = warp_sum(tsum);
  if (lane == 0) loss[r] = static_cast<T>(l);
  if (dz)
    for (std::int64_t c = lane; c < cols; c += 32)
      dz[r * cols + c] = static_cast<T>(tsum * exp(static_cast<double>(zr[c]) - lse) -
                                        static_cast<double>(tr[c]));
}

// out(b,:) = s (p .* D(b,:) - p (p . D(b,:))), p = softmax(Z(b,:)), s = sum_c T(b,c).
// out may alias D: each lane reads its D entries into the reduction before the warp-wide
// shuffle, and writes out[c] only after reading D[c] itself.
template <class T>
__global__ void softmax_xent_hvp_kernel(const T* z, const T* t, const T* d, T* out,
                                        std::int64_t rows, std::int64_t cols) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const T* zr = z + r * cols;
  const double lse = row_log_sum_exp(zr, cols, lane);
  double s = 0.0, pd = 0.0;
  for (std::int64_t c = lane; c < cols; c += 32) {
    s += static_cast<double>(t[r * cols + c]);
    pd += exp(static_cast<double>(zr[c]) - lse) * static_cast<double>(d[r * cols + c]);
  }
  s = warp_sum(s);
  pd = warp_sum(pd);
  for (std::int64_t c = lane; c < cols; c += 32) {
    const double pc = exp(static_cast<double>(zr[c]) - lse);
    out[r * cols + c] = static_cast<T>(s * pc * (static_cast<double>(d[r * cols + c]) - pd));
  }
}

// loss(b) = sum_c (P(b,c) - T(b,c))^2;  dP = 2 (P - T)   (when dp != nullptr)
template <class T>
__global__ void mse_kernel(const T* p, const T* t, T* loss, T* dp, std::int64_t rows,
                           std::int64_t cols) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  double l = 0.0;
  for (std::int64_t c = lane; c < cols; c += 32) {
    const double d = static_cast<double>(p[r * cols + c]) - static_cast<double>(t[r * cols + c]);
    l += d * d;
    if (dp) dp[r * cols + c] = static_cast<T>(2.0 * d);
  }
  l = warp_sum(l);
  if (lane == 0) loss[r] = static_cast<T>(l);
}

// ---- launchers -------------------------------------------------------------------------

inline unsigned row_blocks(std::int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

template <class T>
void softmax(const T* z, T* probs, std::int64_t rows, std::int64_t cols, stream_t s) {
  if (rows > 0)
    simt::launch(softmax_kernel<T>, row_blocks(rows), 32 * kWarpsPerBlock, 0, s, z, probs, rows, cols);
}
template <class T>
void softmax_xent(const T* z, const T* t, T* loss, T* dz, std::int64_t rows, std::int64_t cols,
                  stream_t s) {
  if (rows > 0)
    simt::launch(softmax_xent_kernel<T>, row_blocks(rows), 32 * kWarpsPerBlock, 0, s, z, t, loss,
                 dz, rows, cols);
}
template <class T>
void softmax_xent_hvp(const T* z, const T* t, const T* d, T* out, std::int64_t rows,
                      std::int64_t cols, stream_t s) {
  if (rows > 0)
    simt::launch(softmax_xent_hvp_kernel<T>, row_blocks(rows), 32 * kWarpsPerBlock, 0, s, z, t, d,
                 out, rows, cols);
}
template <class T>
void mse(const T* p, const T* t, T* loss, T* dp, std::int64_t rows, std::int64_t cols, stream_t s) {
  if (rows > 0)
    simt::launch(mse_kernel<T>, row_blocks(rows), 32 * kWarpsPerBlock, 0, s, p, t, loss, dp, rows,
                 cols);
}

}  // namespace kernels
}  // namespace iif
