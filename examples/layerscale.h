// A custom layer with its own kernels: LayerScale, y = x * gamma (kernels/layerscale.cuh).
// The pattern of docs/gpu.md: an nn::Module whose forward computes its value with a kernel on
// the CUDA backend (a loop on the CPU backend) and records one autodiff node (make_first_order_op) whose
// backward closure calls the backward kernel. Used by examples/custom_layer.cpp and
// tests/test_custom_layer.cpp.
//
// The kernel launches are compiled where this header is included: by g++ for the SIMT emulator
// (link iif_cuda_emulated), or by nvcc for a GPU (include it from a .cu file, link iif_cuda).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autodiff.h"
#include "engine/backend.h"
#include "engine/tensor.h"
#include "kernels/layerscale.cuh"
#include "nn/module.h"

namespace iif {
namespace example {

// The stream of the CUDA backend's device layer, for launches that must be ordered with the
// backend's own work. The emulator ignores streams (launches are synchronous); on a GPU pass
// iif::cuda::dev::stream() (engine/cuda/device.h) instead.
inline kernels::stream_t backend_stream() { return nullptr; }

// y = x * gamma: x (B, C), gamma (C). `on_device` chooses the kernel; the CPU loop is the
// reference the kernel is tested against.
template <class T>
void layerscale_forward_any(const Tensor& x, const Tensor& gamma, Tensor& y) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (x.device().kind == DeviceKind::cuda) {
    kernels::layerscale_forward<T>(x.data<T>(), gamma.data<T>(), y.data<T>(), rows, cols, backend_stream());
    return;
  }
  const T* xp = x.data<T>();
  const T* gp = gamma.data<T>();
  T* yp = y.data<T>();
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t c = 0; c < cols; ++c) yp[b * cols + c] = xp[b * cols + c] * gp[c];
}

// dx = dy * gamma, dgamma = sum_b dy x (float64 sums, then rounded), either may be undefined.
template <class T>
void layerscale_backward_any(const Tensor& x, const Tensor& gamma, const Tensor& dy, Tensor* dx, Tensor* dgamma) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (x.device().kind == DeviceKind::cuda) {
    kernels::layerscale_backward<T>(x.data<T>(), gamma.data<T>(), dy.data<T>(), dx ? dx->data<T>() : nullptr,
                                    dgamma ? dgamma->data<T>() : nullptr, 0.0, rows, cols, backend_stream());
    return;
  }
  const T* xp = x.data<T>();
  const T* gp = gamma.data<T>();
  const T* dp = dy.data<T>();
  if (dx)
    for (int64_t i = 0; i < rows * cols; ++i) dx->data<T>()[i] = dp[i] * gp[i % cols];
  if (dgamma)
    for (int64_t c = 0; c < cols; ++c) {
      double s = 0.0;
      for (int64_t b = 0; b < rows; ++b) s += double(dp[b * cols + c]) * double(xp[b * cols + c]);
      dgamma->data<T>()[c] = static_cast<T>(s);
    }
}

// The differentiable op: one node, backward = the backward kernel.
inline Var layerscale(const Var& x, const Var& gamma) {
  const Tensor& xv = x.value();
  const Tensor& gv = gamma.value();
  if (xv.ndim() != 2 || gv.ndim() != 1 || gv.dim(0) != xv.dim(1) || xv.dtype() != gv.dtype() ||
      xv.device() != gv.device())
    throw std::invalid_argument("layerscale: x " + xv.shape().str() + " and gamma " + gv.shape().str() +
                                " (expected (B, C) and (C), one dtype and device)");
  Tensor y = Tensor::empty(xv.shape(), xv.dtype(), xv.device());
  if (xv.dtype() == DType::f32) layerscale_forward_any<float>(xv, gv, y);
  else layerscale_forward_any<double>(xv, gv, y);
  // The closure keeps what the gradient needs: x and gamma (by value: tensors share storage).
  return make_first_order_op(y, {x, gamma}, "layerscale", [xv, gv](Node& self) {
    Node& nx = *self.inputs[0];
    Node& ng = *self.inputs[1];
    Tensor dx, dg;
    if (nx.requires_grad) dx = Tensor::empty(xv.shape(), xv.dtype(), xv.device());
    if (ng.requires_grad) dg = Tensor::empty(gv.shape(), gv.dtype(), gv.device());
    if (xv.dtype() == DType::f32)
      layerscale_backward_any<float>(xv, gv, self.grad, dx.defined() ? &dx : nullptr, dg.defined() ? &dg : nullptr);
    else
      layerscale_backward_any<double>(xv, gv, self.grad, dx.defined() ? &dx : nullptr, dg.defined() ? &dg : nullptr);
    if (dx.defined()) accumulate_grad(nx, dx);
    if (dg.defined()) accumulate_grad(ng, dg);
  });
}

// The module: gamma initialised to `init_value` (LayerScale's small constant, e.g. 0.1).
class LayerScale final : public nn::Module {
 public:
  LayerScale(int64_t features, double init_value, const nn::Init& init)
      : gamma(Tensor::full({features}, init_value, init.dtype, init.device), true) {}
  Var forward(const Var& x) override { return layerscale(x, gamma); }
  std::string kind() const override { return "LayerScale"; }
  void own_parameters(std::vector<nn::NamedParameter>& out) override {
    out.push_back({"gamma", &gamma});
  }
  Var gamma;
};

}  // namespace example
}  // namespace iif
