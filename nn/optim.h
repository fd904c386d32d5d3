// Optimizers with PyTorch's update rules: SGD (momentum, dampening, Nesterov, weight decay)
// and Adam (L2 weight decay). State tensors are named after their parameters so a training
// checkpoint can hold them and a run can resume bit for bit.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "nn/module.h"

namespace iif {
namespace nn {

class Optimizer {
 public:
  explicit Optimizer(std::vector<NamedParameter> params) : params_(std::move(params)) {}
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  virtual void set_lr(double lr) = 0;
  void zero_grad();
  // Named state for checkpoints ("<param>.<slot>") and its restoration; restoring a state
  // whose names or shapes do not match throws, naming the tensor.
  virtual std::vector<std::pair<std::string, Tensor>> state() const = 0;
  virtual void load_state(const std::vector<std::pair<std::string, Tensor>>& state) = 0;
  int64_t steps() const { return steps_; }

 protected:
  std::vector<NamedParameter> params_;
  int64_t steps_ = 0;
};

class Sgd final : public Optimizer {
 public:
  Sgd(std::vector<NamedParameter> params, const SgdParams& h);
  void step() override;
  void set_lr(double lr) override { h_.lr = lr; }
  std::vector<std::pair<std::string, Tensor>> state() const override;
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state) override;

 private:
  SgdParams h_;
  std::vector<Tensor> velocity_;
};

class Adam final : public Optimizer {
 public:
  Adam(std::vector<NamedParameter> params, const AdamParams& h);
  void step() override;
  void set_lr(double lr) override { h_.lr = lr; }
  std::vector<std::pair<std::string, Tensor>> state() const override;
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state) override;

 private:
  AdamParams h_;
  std::vector<Tensor> m_, v_;
};

}  // namespace nn
}  // namespace iif
