// Image layers (NCHW), each defined once here on top of its differentiable ops
// (engine/autodiff.h), so training, checkpoints, double backward and HVPs work for them with no
// other code: Conv2d, BatchNorm2d, MaxPool2d, GlobalMaxPool2d, Scale. Parameters and buffers
// carry PyTorch's names and layouts (Conv2d weight (out, in, kh, kw); BatchNorm2d weight, bias,
// running_mean, running_var, num_batches_tracked).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "nn/module.h"

namespace iif {
namespace nn {

// torch.nn.Conv2d(in, out, kernel, stride, padding, bias): weight (out, in, kh, kw) and bias
// (out) from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in * kh * kw (PyTorch's default).
// Per-sample gradient (attribution): it records the patches a (N*L, in*kh*kw) and the output
// cotangent per position delta (N*L, out), L = OH*OW, and sample b's weight gradient is
// sum over its positions of delta(pos) a(pos)^T (DESIGN.md section 4): a batched GEMM, or,
// projected, fused with R (linear_map: ops::linear_project at OH*OW positions per sample).
class Conv2d final : public ParametricLayer {
 public:
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding, bool bias, const Init& init,
         uint64_t stream);
  Var forward(const Var& x) override;
  std::string kind() const override { return "Conv2d"; }
  void own_parameters(std::vector<NamedParameter>& out) override;
  void per_sample_gradients(const Tensor& a, const Tensor& delta, int64_t s0, int64_t s1,
                            Tensor& out) const override;
  int64_t samples_of(const Tensor& a) const override { return positions_ ? a.dim(0) / positions_ : 0; }
  bool linear_map(const Tensor& a, LinearMap* map) const override;
  const Window2d& window() const { return win_; }
  Var weight, bias;
  int64_t in_channels, out_channels;

 private:
  Window2d win_;
  int64_t positions_ = 0;  // OH*OW of the last recorded batch
};

// torch.nn.BatchNorm2d(channels, eps = 1e-5, momentum = 0.1, affine = True). Training mode
// normalises by the batch's mean and biased variance over (N, H, W) and updates
//   running_mean = (1 - momentum) running_mean + momentum mean,
//   running_var  = (1 - momentum) running_var  + momentum var * M / (M - 1)   (M = N H W),
// num_batches_tracked += 1; evaluation mode uses the running statistics (an affine map per
// channel: the mode attribution uses, where a per-sample gradient is defined).
// Per-sample gradient (attribution, evaluation mode only): it records its input x and output
// cotangent delta (N,C,H,W); sample b's gradient is sum over positions of delta * xhat (weight)
// and of delta (bias), xhat = (x - running_mean) / sqrt(running_var + eps).
class BatchNorm2d final : public ParametricLayer {
 public:
  BatchNorm2d(int64_t channels, const Init& init, double eps = 1e-5, double momentum = 0.1);
  Var forward(const Var& x) override;
  std::string kind() const override { return "BatchNorm2d"; }
  void own_parameters(std::vector<NamedParameter>& out) override;
  void own_buffers(std::vector<NamedBuffer>& out) override;
  void per_sample_gradients(const Tensor& a, const Tensor& delta, int64_t s0, int64_t s1,
                            Tensor& out) const override;
  Var weight, bias;
  Tensor running_mean, running_var, num_batches_tracked;  // num_batches_tracked: 0-d, float
  int64_t channels;
  double eps, momentum;

 private:
  bool recorded_in_training_ = false;
};

// torch.nn.MaxPool2d(kernel, stride = kernel, padding): the first maximum of each window.
class MaxPool2d final : public Module {
 public:
  explicit MaxPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0);
  Var forward(const Var& x) override;
  std::string kind() const override { return "MaxPool2d"; }

 private:
  Window2d win_;
};

// torch.nn.AdaptiveMaxPool2d((1, 1)): the maximum of each channel, (N, C, H, W) -> (N, C, 1, 1).
class GlobalMaxPool2d final : public Module {
 public:
  Var forward(const Var& x) override;
  std::string kind() const override { return "GlobalMaxPool2d"; }
};

// y = factor * x (a constant scale, the "Mul" layer of the Myrtle ResNet-9).
class Scale final : public Module {
 public:
  explicit Scale(double factor) : factor(factor) {}
  Var forward(const Var& x) override;
  std::string kind() const override { return "Scale"; }
  double factor;
};

}  // namespace nn
}  // namespace iif
