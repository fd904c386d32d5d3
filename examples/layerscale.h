// A custom layer with its own kernels: LayerScale, y = x * gamma (kernels/layerscale.cuh).
// The pattern of docs/gpu.md and docs/ARCHITECTURE.md ("the extension point"): the layer's ops
// (forward kernel; backward written with the layer's own ops, so it differentiates twice), the
// layer (a ParametricLayer: its parameters and how a sample's gradient of them is formed), and a
// model kind registered with nn::register_model. Nothing else in the engine names it. Used by examples/custom_layer.cpp and
// tests/test_custom_layer.cpp.
//
// The kernel launches are compiled where this header is included: by g++ for the SIMT emulator
// (link iif_cuda_emulated), or by nvcc for a GPU (include it from a .cu file, link iif_cuda).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autodiff.h"
#include "engine/backend.h"
#include "engine/tensor.h"
#include "kernels/layerscale.cuh"
#include "engine/ops.h"
#include "nn/models.h"
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

Var layerscale_param_grad(const Var& dy, const Var& x);

// The differentiable op y = x * gamma: forward by the kernel; its backward is written with this
// layer's own ops (dx = layerscale(dy, gamma), dgamma = layerscale_param_grad(dy, x)), so it
// differentiates again: HVPs (IF-CG, LiSSA, IIF's Hessian path) work through the layer.
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
  return make_op(y, {x, gamma}, "layerscale", [](Node& self, const Var& gy) -> std::vector<Var> {
    const Var xi = Var::of(self.inputs[0]), gi = Var::of(self.inputs[1]);
    return {self.wants(0) ? layerscale(gy, gi) : Var(), self.wants(1) ? layerscale_param_grad(gy, xi) : Var()};
  });
}

// dgamma (C) = sum_b dy x, by the backward kernel; bilinear, so its own derivatives are
// layerscale(x, g) (in dy) and layerscale(dy, g) (in x).
inline Var layerscale_param_grad(const Var& dy, const Var& x) {
  const Tensor& dv = dy.value();
  const Tensor& xv = x.value();
  Tensor dg = Tensor::empty({xv.dim(1)}, xv.dtype(), xv.device());
  const Tensor ones = Tensor::full({xv.dim(1)}, 1.0, xv.dtype(), xv.device());
  if (xv.dtype() == DType::f32) layerscale_backward_any<float>(xv, ones, dv, nullptr, &dg);
  else layerscale_backward_any<double>(xv, ones, dv, nullptr, &dg);
  return make_op(dg, {dy, x}, "layerscale_param_grad", [](Node& self, const Var& g) -> std::vector<Var> {
    const Var di = Var::of(self.inputs[0]), xi = Var::of(self.inputs[1]);
    return {self.wants(0) ? layerscale(xi, g) : Var(), self.wants(1) ? layerscale(di, g) : Var()};
  });
}

// The layer: gamma initialised to `init_value` (LayerScale's small constant, e.g. 0.1). A
// parametric layer: it records x and the cotangent of y, and sample b's gradient of gamma is
// dy_b .* x_b.
class LayerScale final : public nn::ParametricLayer {
 public:
  LayerScale(int64_t features, double init_value, const nn::Init& init)
      : gamma(Tensor::full({features}, init_value, init.dtype, init.device), true) {}
  Var forward(const Var& x) override {
    Var y = layerscale(x, gamma);
    record(x.value(), y);
    return y;
  }
  std::string kind() const override { return "LayerScale"; }
  void own_parameters(std::vector<nn::NamedParameter>& out) override { out.push_back({"gamma", &gamma}); }
  void per_sample_gradients(const Tensor& a, const Tensor& delta, int64_t s0, int64_t s1, Tensor& out) const override {
    out.copy_from(ops::mul(delta.rows(s0, s1), a.rows(s0, s1)));
  }
  Var gamma;
};

// "layerscale-mlp:<in>-<hidden>-<classes>": Flatten, Linear(in, hidden), LayerScale(hidden, 0.1),
// ReLU, Linear(hidden, classes). Registering it (once, before make_model sees the spec) is all
// the rest of the engine needs: training, checkpoints, cloning and every attribution method.
class LayerScaleMlp final : public nn::Model {
 public:
  LayerScaleMlp(int64_t in, int64_t hidden, int64_t classes, const nn::Init& init) : in_(in), hidden_(hidden), classes_(classes) {
    layers.add(std::make_unique<nn::Flatten>());
    layers.add(std::make_unique<nn::Linear>(in, hidden, true, init, 0));
    layers.add(std::make_unique<LayerScale>(hidden, 0.1, init));
    layers.add(std::make_unique<nn::ReLU>());
    layers.add(std::make_unique<nn::Linear>(hidden, classes, true, init, 1));
  }
  Var forward(const Var& x) override { return layers.forward(x); }
  std::string kind() const override { return "LayerScaleMlp"; }
  void own_children(std::vector<std::pair<std::string, nn::Module*>>& out) override { out.push_back({"layers", &layers}); }
  std::string spec() const override {
    return "layerscale-mlp:" + std::to_string(in_) + "-" + std::to_string(hidden_) + "-" + std::to_string(classes_);
  }
  nn::Sequential layers;

 private:
  int64_t in_, hidden_, classes_;
};

inline void register_layerscale_mlp() {
  nn::register_model(
      "layerscale-mlp",
      [](const nn::ModelSpec& s, const nn::Init& init) -> std::unique_ptr<nn::Model> {
        long long in = 0, hidden = 0, classes = 0;
        char extra = 0;
        if (std::sscanf(s.arg.c_str(), "%lld-%lld-%lld%c", &in, &hidden, &classes, &extra) != 3 || in <= 0 ||
            hidden <= 0 || classes <= 0)
          throw std::invalid_argument("model spec '" + s.text + "': use layerscale-mlp:<in>-<hidden>-<classes>");
        return std::make_unique<LayerScaleMlp>(in, hidden, classes, init);
      },
      "layerscale-mlp:<in>-<hidden>-<classes>");
}

}  // namespace example
}  // namespace iif
