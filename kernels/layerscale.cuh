// LayerScale (Touvron et al. 2021, "Going deeper with image transformers"): y = x * gamma,
// x (B, C), gamma (C) a learned per-feature scale. The worked example of docs/gpu.md ("adding a
// custom layer with its own kernel"): forward and backward kernels, written once for nvcc and
// the SIMT emulator (kernels/simt/simt.cuh). The layer using them is examples/layerscale.h;
// tests/test_custom_layer.cpp holds them to a CPU reference and to finite differences.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/stream.cuh"

namespace iif {
namespace kernels {


namespace layerscale {

constexpr int kThreads = 256;
constexpr int kColsPerBlock = 32;  // dgamma: block (32, 8) sums 32 columns over all rows
constexpr int kRowLanes = 8;

// y[b, c] = x[b, c] * gamma[c]  (grid-stride over the B*C entries)
template <class T>
__global__ void forward_kernel(const T* x, const T* gamma, T* y, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = x[i] * gamma[i % cols];
}

// dx[b, c] = dy[b, c] * gamma[c]
template <class T>
__global__ void backward_x_kernel(const T* dy, const T* gamma, T* dx, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dx[i] = dy[i] * gamma[i % cols];
}

// dgamma[c] = sum_b dy[b, c] x[b, c] (+ beta * dgamma[c]), in float64. Block (32, 8) owns 32
// columns: lane (tx, ty) sums rows ty, ty + 8, ... in ascending order, then the 8 partials of a
// column are added in a fixed tree in shared memory. No atomics: the same bits in every
// schedule and on every launch.
template <class T>
__global__ void backward_gamma_kernel(const T* dy, const T* x, T* dgamma, int64_t rows, int64_t cols, double beta) {
  __shared__ double part[kRowLanes][kColsPerBlock];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColsPerBlock + tx;
  double s = 0.0;
  if (c < cols)
    for (int64_t b = ty; b < rows; b += kRowLanes)
      s += static_cast<double>(dy[b * cols + c]) * static_cast<double>(x[b * cols + c]);
  part[ty][tx] = s;
  __syncthreads();
  for (int h = kRowLanes / 2; h > 0; h /= 2) {
    if (ty < h) part[ty][tx] += part[ty + h][tx];
    __syncthreads();
  }
  if (ty == 0 && c < cols)
    dgamma[c] = static_cast<T>(beta == 0.0 ? part[0][tx] : part[0][tx] + beta * static_cast<double>(dgamma[c]));
}

inline unsigned blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  if (b > 1024) b = 1024;  // grid-stride: a GPU is full, the emulator makes few fibers
  return static_cast<unsigned>(b);
}

inline void check(const char* what, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 1)
    throw std::invalid_argument(std::string(what) + ": need rows >= 0 and cols >= 1, got " +
                                std::to_string(rows) + " x " + std::to_string(cols));
}

}  // namespace layerscale

// ---- launchers (device pointers under nvcc, host pointers on the emulator) -------------------

// y (rows, cols) = x * gamma broadcast over rows.
template <class T>
void layerscale_forward(const T* x, const T* gamma, T* y, int64_t rows, int64_t cols, stream_t stream = nullptr) {
  layerscale::check("layerscale_forward", rows, cols);
  if (rows == 0) return;
  simt::launch(layerscale::forward_kernel<T>, layerscale::blocks_for(rows * cols), layerscale::kThreads, 0, stream,
               x, gamma, y, rows, cols);
}

// dx = dy * gamma (if dx is non-null);  dgamma = sum over rows of dy * x + beta * dgamma
// (if dgamma is non-null; beta == 0 does not read it).
template <class T>
void layerscale_backward(const T* x, const T* gamma, const T* dy, T* dx, T* dgamma, double beta, int64_t rows,
                         int64_t cols, stream_t stream = nullptr) {
  layerscale::check("layerscale_backward", rows, cols);
  if (dx && rows > 0)
    simt::launch(layerscale::backward_x_kernel<T>, layerscale::blocks_for(rows * cols), layerscale::kThreads, 0,
                 stream, dy, gamma, dx, rows, cols);
  if (dgamma) {
    const unsigned blocks = static_cast<unsigned>((cols + layerscale::kColsPerBlock - 1) / layerscale::kColsPerBlock);
    simt::launch(layerscale::backward_gamma_kernel<T>, blocks, dim3(layerscale::kColsPerBlock, layerscale::kRowLanes),
                 0, stream, dy, x, dgamma, rows, cols, beta);
  }
}

}  // namespace kernels
}  // namespace iif
