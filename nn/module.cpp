// Module, Linear, Dropout, Flatten and Sequential (see nn/module.h).
#include "nn/module.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/ops.h"
#include "kernels/philox.cuh"

namespace iif {
namespace nn {

void Module::visit(const std::function<void(const std::string&, Module&)>& fn) {
  // Iterative pre-order walk; a stack of (prefix, module) with children pushed in reverse.
  std::vector<std::pair<std::string, Module*>> stack{{"", this}};
  std::vector<std::pair<std::string, Module*>> kids;
  while (!stack.empty()) {
    auto [prefix, m] = stack.back();
    stack.pop_back();
    fn(prefix, *m);
    kids.clear();
    m->own_children(kids);
    for (auto it = kids.rbegin(); it != kids.rend(); ++it)
      stack.push_back({prefix + it->first + ".", it->second});
  }
}

std::vector<NamedParameter> Module::named_parameters() {
  std::vector<NamedParameter> out, own;
  visit([&](const std::string& prefix, Module& m) {
    own.clear();
    m.own_parameters(own);
    for (auto& p : own) out.push_back({prefix + p.name, p.var});
  });
  return out;
}

std::vector<NamedBuffer> Module::named_buffers() {
  std::vector<NamedBuffer> out, own;
  visit([&](const std::string& prefix, Module& m) {
    own.clear();
    m.own_buffers(own);
    for (auto& b : own) out.push_back({prefix + b.name, b.tensor});
  });
  return out;
}

std::vector<ParametricLayer*> Module::parametric_layers() {
  std::vector<ParametricLayer*> out;
  visit([&](const std::string&, Module& m) {
    if (auto* p = dynamic_cast<ParametricLayer*>(&m)) out.push_back(p);
  });
  return out;
}

int64_t Module::num_parameters() {
  int64_t n = 0;
  for (auto& p : named_parameters()) n += p.var->value().numel();
  return n;
}

void Module::set_training(bool on) {
  visit([on](const std::string&, Module& m) { m.training_ = on; });
}

void Module::set_dropout_seed(uint64_t seed) {
  visit([seed](const std::string&, Module& m) { m.reseed(seed); });
}

const Tensor& ParametricLayer::output_cotangents() const {
  static const Tensor kNone;
  return last_output_.defined() ? last_output_.grad() : kNone;
}

void ParametricLayer::record(const Tensor& input, const Var& output) {
  if (!recording_) return;
  last_input_ = input;
  last_output_ = output;
}

Tensor uniform_init(const Shape& shape, double bound, const Init& init, uint64_t stream) {
  std::vector<double> v(static_cast<std::size_t>(shape.numel()));
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = bound * (2.0 * philox::uniform(init.seed, stream, i) - 1.0);
  return Tensor::from_vector(v, shape, init.dtype, init.device);
}

Linear::Linear(int64_t in, int64_t out, bool with_bias, const Init& init, uint64_t stream)
    : in_features(in), out_features(out) {
  if (in <= 0 || out <= 0)
    throw std::invalid_argument("Linear: features must be positive, got in=" + std::to_string(in) +
                                " out=" + std::to_string(out));
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = Var(uniform_init({out, in}, bound, init, 2 * stream), true);
  if (with_bias) bias = Var(uniform_init({out}, bound, init, 2 * stream + 1), true);
}

Var Linear::forward(const Var& x) {
  if (x.value().ndim() != 2 || x.value().dim(1) != in_features)
    throw std::invalid_argument("Linear(" + std::to_string(in_features) + " -> " +
                                std::to_string(out_features) + "): input of shape " +
                                x.shape().str() + " (expected (batch, " +
                                std::to_string(in_features) + "))");
  Var y = ad::linear(x, weight, bias);
  record(x.value(), y);
  return y;
}

void Linear::own_parameters(std::vector<NamedParameter>& out) {
  out.push_back({"weight", &weight});
  if (bias.defined()) out.push_back({"bias", &bias});
}

void Linear::per_sample_gradients(const Tensor& a, const Tensor& delta, int64_t s0, int64_t s1,
                                  Tensor& out) const {
  // Weight entry (o, i) is delta[o] a[i] (delta^T a per sample: a batched outer product), then
  // the bias, delta itself.
  const int64_t b = s1 - s0, in = in_features, o = out_features, w = o * in;
  const Tensor as = a.rows(s0, s1), ds = delta.rows(s0, s1);
  Tensor g = out.reshape({b, out.numel() / std::max<int64_t>(b, 1)});
  Tensor gw = Tensor::empty({b, o, in}, a.dtype(), a.device());
  ops::gemm_batched(false, false, 1.0, ds.reshape({b, o, 1}), as.reshape({b, 1, in}), 0.0, gw);
  if (bias.defined()) join_columns(gw.reshape({b, w}), ds, g);
  else g.copy_from(gw.reshape({b, w}));
}

void join_columns(const Tensor& w, const Tensor& v, Tensor& out) {
  const int64_t b = w.dim(0), p = w.numel() / std::max<int64_t>(b, 1), q = v.numel() / std::max<int64_t>(b, 1);
  const std::vector<double> wv = w.to_vector(), vv = v.to_vector();
  std::vector<double> j(static_cast<std::size_t>(b * (p + q)));
  for (int64_t s = 0; s < b; ++s) {
    std::copy(wv.begin() + s * p, wv.begin() + (s + 1) * p, j.begin() + s * (p + q));
    std::copy(vv.begin() + s * q, vv.begin() + (s + 1) * q, j.begin() + s * (p + q) + p);
  }
  out.copy_from(Tensor::from_vector(j, {b, p + q}, out.dtype(), out.device()));
}

Dropout::Dropout(double p, uint64_t seed, uint64_t tag) : p_(p), seed_(seed), tag_(tag) {
  if (!(p >= 0.0 && p < 1.0))
    throw std::invalid_argument("Dropout: p must be in [0, 1), got " + std::to_string(p));
}

Var Dropout::forward(const Var& x) {
  if (!training_ || p_ == 0.0) return x;
  const Tensor& v = x.value();
  Tensor mask = ops::dropout_mask(v.shape(), v.dtype(), v.device(), p_, seed_,
                                  (tag_ << 32) + calls_++);
  return ad::mul_const(x, mask);
}

Var Flatten::forward(const Var& x) {
  const Shape& s = x.shape();
  if (s.ndim() < 1) throw std::invalid_argument("Flatten: scalar input");
  const int64_t b = s[0];
  return ad::reshape(x, {b, b ? s.numel() / b : 0});
}

Var Sequential::forward(const Var& x) {
  Var h = x;
  for (auto& c : children_) h = c->forward(h);
  return h;
}

Var Residual::forward(const Var& x) {
  Var y = Sequential::forward(x);
  if (y.shape() != x.shape())
    throw std::invalid_argument("Residual: the branch maps " + x.shape().str() + " to " + y.shape().str() +
                                " (expected the same shape)");
  return ad::add(x, y);
}

void Sequential::own_children(std::vector<std::pair<std::string, Module*>>& out) {
  for (std::size_t i = 0; i < children_.size(); ++i) out.push_back({std::to_string(i), children_[i].get()});
}

}  // namespace nn
}  // namespace iif
