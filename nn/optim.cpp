// SGD and Adam (see nn/optim.h); the updates themselves are fused backend ops.
#include "nn/optim.h"

#include <map>
#include <stdexcept>

#include "engine/ops.h"

namespace iif {
namespace nn {

void Optimizer::zero_grad() {
  for (auto& p : params_) p.var->zero_grad();
}

namespace {
Tensor zeros_like(const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); }

void restore(const std::vector<std::pair<std::string, Tensor>>& state, const std::string& name,
             Tensor& dst) {
  for (auto& [n, t] : state)
    if (n == name) {
      if (t.shape() != dst.shape())
        throw std::invalid_argument("optimizer state '" + name + "' has shape " + t.shape().str() +
                                    ", the parameter needs " + dst.shape().str());
      dst.copy_from(t);
      return;
    }
  throw std::invalid_argument("optimizer state '" + name + "' is missing from the checkpoint");
}

double step_count(const std::vector<std::pair<std::string, Tensor>>& state) {
  for (auto& [n, t] : state)
    if (n == "step") return t.item();
  throw std::invalid_argument("optimizer state 'step' is missing from the checkpoint");
}
}  // namespace

Sgd::Sgd(std::vector<NamedParameter> params, const SgdParams& h) : Optimizer(std::move(params)), h_(h) {
  for (auto& p : params_) velocity_.push_back(h_.momentum != 0.0 ? zeros_like(p.var->value()) : Tensor());
}

void Sgd::step() {
  for (std::size_t i = 0; i < params_.size(); ++i) {
    Var& v = *params_[i].var;
    if (!v.grad().defined()) continue;  // no gradient reached it: leave it (and its state) alone
    ops::sgd_step(v.mutable_value(), v.grad(), velocity_[i], h_, steps_ == 0);
  }
  ++steps_;
}

std::vector<std::pair<std::string, Tensor>> Sgd::state() const {
  std::vector<std::pair<std::string, Tensor>> s;
  s.push_back({"step", Tensor::full({1}, static_cast<double>(steps_), DType::f64)});
  if (h_.momentum != 0.0)
    for (std::size_t i = 0; i < params_.size(); ++i) s.push_back({params_[i].name + ".momentum", velocity_[i]});
  return s;
}

void Sgd::load_state(const std::vector<std::pair<std::string, Tensor>>& state) {
  steps_ = static_cast<int64_t>(step_count(state));
  if (h_.momentum != 0.0)
    for (std::size_t i = 0; i < params_.size(); ++i) restore(state, params_[i].name + ".momentum", velocity_[i]);
}

Adam::Adam(std::vector<NamedParameter> params, const AdamParams& h) : Optimizer(std::move(params)), h_(h) {
  for (auto& p : params_) {
    m_.push_back(zeros_like(p.var->value()));
    v_.push_back(zeros_like(p.var->value()));
  }
}

void Adam::step() {
  ++steps_;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    Var& v = *params_[i].var;
    if (!v.grad().defined()) continue;
    ops::adam_step(v.mutable_value(), v.grad(), m_[i], v_[i], h_, steps_);
  }
}

std::vector<std::pair<std::string, Tensor>> Adam::state() const {
  std::vector<std::pair<std::string, Tensor>> s;
  s.push_back({"step", Tensor::full({1}, static_cast<double>(steps_), DType::f64)});
  for (std::size_t i = 0; i < params_.size(); ++i) {
    s.push_back({params_[i].name + ".exp_avg", m_[i]});
    s.push_back({params_[i].name + ".exp_avg_sq", v_[i]});
  }
  return s;
}

void Adam::load_state(const std::vector<std::pair<std::string, Tensor>>& state) {
  steps_ = static_cast<int64_t>(step_count(state));
  for (std::size_t i = 0; i < params_.size(); ++i) {
    restore(state, params_[i].name + ".exp_avg", m_[i]);
    restore(state, params_[i].name + ".exp_avg_sq", v_[i]);
  }
}

}  // namespace nn
}  // namespace iif
