// Elementwise and broadcast kernels of the CUDA backend (engine/cuda/cuda_backend.cu), written
// once for nvcc and the SIMT emulator (kernels/simt/). Each computes, per element, exactly the
// expression of the CPU backend (engine/cpu/cpu_backend.cpp) in the same precision, so on the
// emulator the results are bitwise equal to the CPU's; nvcc may contract a*b+c into an FMA, so
// on a GPU they agree within an ulp or two.
// All kernels are 1-D grid-stride loops over int64 indices (any n, any grid); none uses a
// barrier or a warp operation. Pointers are device pointers (host pointers on the emulator).
#pragma once

#include <cstdint>

#include "kernels/stream.cuh"

namespace iif {
namespace kernels {


constexpr int kThreads = 256;  // threads per block of the 1-D kernels

// Blocks for a grid-stride loop over n items: enough to fill a GPU, capped so the emulator
// does not create a fiber per element of a large tensor.
inline unsigned grid_for(std::int64_t n, int threads = kThreads, std::int64_t cap = 1024) {
  std::int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<unsigned>(b);
}

#define IIF_GRID_STRIDE(i, n)                                                             \
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; \
       i < (n); i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)

// x (n) = v
template <class T>
__global__ void fill_kernel(T* x, std::int64_t n, T v) {
  IIF_GRID_STRIDE(i, n) x[i] = v;
}

// dst (n) = src (n) converted (round to nearest)
template <class S, class D>
__global__ void cast_kernel(const S* src, D* dst, std::int64_t n) {
  IIF_GRID_STRIDE(i, n) dst[i] = static_cast<D>(src[i]);
}

// y (n) = a x + b y; with b_zero, y = a x (y is not read: NaN in y does not propagate)
template <class T>
__global__ void axpby_kernel(T a, const T* x, T b, bool b_zero, T* y, std::int64_t n) {
  if (b_zero) {
    IIF_GRID_STRIDE(i, n) y[i] = a * x[i];
  } else {
    IIF_GRID_STRIDE(i, n) y[i] = a * x[i] + b * y[i];
  }
}

// out (n) = a (n) * b (n); out may alias a or b
template <class T>
__global__ void mul_kernel(const T* a, const T* b, T* out, std::int64_t n) {
  IIF_GRID_STRIDE(i, n) out[i] = a[i] * b[i];
}

// y (n) = max(x, 0): NaN propagates (!(x <= 0) keeps it), -0 maps to +0
template <class T>
__global__ void relu_kernel(const T* x, T* y, std::int64_t n) {
  IIF_GRID_STRIDE(i, n) y[i] = !(x[i] <= T(0)) ? x[i] : T(0);
}

// dx (n) = dy (x > 0) + beta dx; with beta_zero, dx is not read
template <class T>
__global__ void relu_backward_kernel(const T* x, const T* dy, T beta, bool beta_zero, T* dx,
                                     std::int64_t n) {
  IIF_GRID_STRIDE(i, n) {
    const T g = x[i] > T(0) ? dy[i] : T(0);
    dx[i] = beta_zero ? g : g + beta * dx[i];
  }
}

// y (batch, rows, cols) += v (batch, cols) broadcast over rows (batch = 1: the unbatched op)
template <class T>
__global__ void add_row_vector_kernel(const T* v, T* y, std::int64_t batch, std::int64_t rows,
                                      std::int64_t cols) {
  const std::int64_t n = batch * rows * cols;
  IIF_GRID_STRIDE(i, n) {
    const std::int64_t c = i % cols, k = i / (rows * cols);
    y[i] += v[k * cols + c];
  }
}

// dst (n_index, row) = src (., row)[index[i]]: whole rows of `row` elements
template <class T>
__global__ void gather_rows_kernel(const T* src, const std::int64_t* index, T* dst,
                                   std::int64_t n_index, std::int64_t row) {
  const std::int64_t n = n_index * row;
  IIF_GRID_STRIDE(i, n) {
    const std::int64_t r = i / row, c = i % row;
    dst[i] = src[index[r] * row + c];
  }
}

// c (p, p) row-major: lower triangle := upper triangle (c[i][j] = c[j][i] for i > j)
template <class T>
__global__ void mirror_upper_kernel(T* c, std::int64_t p) {
  const std::int64_t n = p * p;
  IIF_GRID_STRIDE(e, n) {
    const std::int64_t i = e / p, j = e % p;
    if (i > j) c[e] = c[j * p + i];
  }
}

// The float64 workspace of a damped Cholesky solve: w (K, P, P) = a (K, P, P) + damping[k] I,
// and nonfinite[k] = 1 if a_k holds NaN/Inf (nonfinite is zeroed by the caller; several threads
// may store the same 1, which is benign).
template <class T>
__global__ void damped_f64_kernel(const T* a, const double* damping, double* w, int* nonfinite,
                                  std::int64_t K, std::int64_t P) {
  const std::int64_t n = K * P * P;
  IIF_GRID_STRIDE(e, n) {
    const std::int64_t k = e / (P * P), ij = e % (P * P);
    double v = static_cast<double>(a[e]);
    if (!(v - v == 0.0)) nonfinite[k] = 1;  // NaN or +-Inf
    if (ij / P == ij % P) v += damping[k];
    w[e] = v;
  }
}

// Batched transpose with conversion: src (K, R, C) row-major -> dst (K, C, R) row-major, i.e.
// dst_k = src_k^T. Used to move row-major right-hand sides into LAPACK's column-major layout
// and back.
template <class S, class D>
__global__ void transpose_batched_kernel(const S* src, D* dst, std::int64_t K, std::int64_t R,
                                         std::int64_t C) {
  const std::int64_t n = K * R * C;
  IIF_GRID_STRIDE(e, n) {  // e indexes dst: (k, c, r)
    const std::int64_t k = e / (R * C), cr = e % (R * C), c = cr / R, r = cr % R;
    dst[e] = static_cast<D>(src[k * R * C + r * C + c]);
  }
}

// ---- launchers -------------------------------------------------------------------------

template <class T>
void fill(T* x, std::int64_t n, T v, stream_t s) {
  if (n > 0) simt::launch(fill_kernel<T>, grid_for(n), kThreads, 0, s, x, n, v);
}
template <class S, class D>
void cast(const S* src, D* dst, std::int64_t n, stream_t s) {
  if (n > 0) simt::launch(cast_kernel<S, D>, grid_for(n), kThreads, 0, s, src, dst, n);
}
template <class T>
void axpby(T a, const T* x, T b, bool b_zero, T* y, std::int64_t n, stream_t s) {
  if (n > 0) simt::launch(axpby_kernel<T>, grid_for(n), kThreads, 0, s, a, x, b, b_zero, y, n);
}
template <class T>
void mul(const T* a, const T* b, T* out, std::int64_t n, stream_t s) {
  if (n > 0) simt::launch(mul_kernel<T>, grid_for(n), kThreads, 0, s, a, b, out, n);
}
template <class T>
void relu(const T* x, T* y, std::int64_t n, stream_t s) {
  if (n > 0) simt::launch(relu_kernel<T>, grid_for(n), kThreads, 0, s, x, y, n);
}
template <class T>
void relu_backward(const T* x, const T* dy, T beta, bool beta_zero, T* dx, std::int64_t n,
                   stream_t s) {
  if (n > 0)
    simt::launch(relu_backward_kernel<T>, grid_for(n), kThreads, 0, s, x, dy, beta, beta_zero, dx, n);
}
template <class T>
void add_row_vector(const T* v, T* y, std::int64_t batch, std::int64_t rows, std::int64_t cols,
                    stream_t s) {
  const std::int64_t n = batch * rows * cols;
  if (n > 0)
    simt::launch(add_row_vector_kernel<T>, grid_for(n), kThreads, 0, s, v, y, batch, rows, cols);
}
template <class T>
void gather_rows(const T* src, const std::int64_t* index, T* dst, std::int64_t n_index,
                 std::int64_t row, stream_t s) {
  const std::int64_t n = n_index * row;
  if (n > 0)
    simt::launch(gather_rows_kernel<T>, grid_for(n), kThreads, 0, s, src, index, dst, n_index, row);
}
template <class T>
void mirror_upper(T* c, std::int64_t p, stream_t s) {
  if (p > 1) simt::launch(mirror_upper_kernel<T>, grid_for(p * p), kThreads, 0, s, c, p);
}
template <class T>
void damped_f64(const T* a, const double* damping, double* w, int* nonfinite, std::int64_t K,
                std::int64_t P, stream_t s) {
  const std::int64_t n = K * P * P;
  if (n > 0)
    simt::launch(damped_f64_kernel<T>, grid_for(n), kThreads, 0, s, a, damping, w, nonfinite, K, P);
}
template <class S, class D>
void transpose_batched(const S* src, D* dst, std::int64_t K, std::int64_t R, std::int64_t C,
                       stream_t s) {
  const std::int64_t n = K * R * C;
  if (n > 0)
    simt::launch(transpose_batched_kernel<S, D>, grid_for(n), kThreads, 0, s, src, dst, K, R, C);
}

}  // namespace kernels
}  // namespace iif
