// Fused optimizer updates of the CUDA backend, PyTorch semantics, one grid-stride pass over the
// parameters. Per element they are the CPU backend's expressions in the storage type T (the
// host computes the same scalar constants), so on the emulator the updates are bitwise equal
// to the CPU's; nvcc may contract multiply-adds into FMAs (an ulp or two on a GPU).
// Shapes: param, grad, velocity, m, v all (n).
#pragma once

#include <cstdint>

#include "kernels/elementwise.cuh"
#include "kernels/simt/simt.cuh"

namespace iif {
namespace kernels {

__device__ __forceinline__ float sqrt_t(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_t(double x) { return sqrt(x); }

// SGD: d = g + wd p (has_wd); with momentum (vel != nullptr): v = first ? d : mu v + damp d,
// d = nesterov ? d + mu v : v; then p -= lr d.
template <class T>
__global__ void sgd_step_kernel(T* p, const T* g, T* vel, std::int64_t n, T lr, T mu, T wd, T damp,
                                bool has_wd, bool nesterov, bool first) {
  IIF_GRID_STRIDE(i, n) {
    T d = g[i];
    if (has_wd) d += wd * p[i];
    if (vel) {
      vel[i] = first ? d : mu * vel[i] + damp * d;
      d = nesterov ? d + mu * vel[i] : vel[i];
    }
    p[i] -= lr * d;
  }
}

// Adam (L2 weight decay added to the gradient): d = g + wd p; m = b1 m + (1 - b1) d;
// v = b2 v + (1 - b2) d^2; p -= step m / (sqrt(v) / sq + eps), with step = lr / (1 - b1^t)
// and sq = sqrt(1 - b2^t) computed on the host in float64 and rounded to T (as the CPU does).
template <class T>
__global__ void adam_step_kernel(T* p, const T* g, T* m, T* v, std::int64_t n, T b1, T b2, T step,
                                 T sq, T eps, T wd) {
  IIF_GRID_STRIDE(i, n) {
    const T d = g[i] + wd * p[i];
    m[i] = b1 * m[i] + (T(1) - b1) * d;
    v[i] = b2 * v[i] + (T(1) - b2) * d * d;
    p[i] -= step * m[i] / (sqrt_t(v[i]) / sq + eps);
  }
}

template <class T>
void sgd_step(T* p, const T* g, T* vel, std::int64_t n, T lr, T mu, T wd, T damp, bool has_wd,
              bool nesterov, bool first, stream_t s) {
  if (n > 0)
    simt::launch(sgd_step_kernel<T>, grid_for(n), kThreads, 0, s, p, g, vel, n, lr, mu, wd, damp,
                 has_wd, nesterov, first);
}
template <class T>
void adam_step(T* p, const T* g, T* m, T* v, std::int64_t n, T b1, T b2, T step, T sq, T eps, T wd,
               stream_t s) {
  if (n > 0)
    simt::launch(adam_step_kernel<T>, grid_for(n), kThreads, 0, s, p, g, m, v, n, b1, b2, step, sq,
                 eps, wd);
}

}  // namespace kernels
}  // namespace iif
