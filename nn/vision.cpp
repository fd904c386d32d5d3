// Image layers (see nn/vision.h).
#include "nn/vision.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/ops.h"

namespace iif {
namespace nn {

namespace {
void require_nchw(const std::string& layer, const Var& x, int64_t channels) {
  const Shape& s = x.shape();
  if (s.ndim() != 4 || (channels > 0 && s[1] != channels))
    throw std::invalid_argument(layer + ": input of shape " + s.str() + " (expected (N, " +
                                (channels > 0 ? std::to_string(channels) : std::string("C")) + ", H, W))");
}
}  // namespace

Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding, bool with_bias,
               const Init& init, uint64_t stream)
    : in_channels(in), out_channels(out) {
  if (in <= 0 || out <= 0 || kernel <= 0 || stride <= 0 || padding < 0)
    throw std::invalid_argument("Conv2d: channels, kernel and stride must be positive and padding >= 0, got in=" +
                                std::to_string(in) + " out=" + std::to_string(out) + " kernel=" +
                                std::to_string(kernel) + " stride=" + std::to_string(stride) +
                                " padding=" + std::to_string(padding));
  win_.kh = win_.kw = kernel;
  win_.sh = win_.sw = stride;
  win_.ph = win_.pw = padding;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in * kernel * kernel));
  weight = Var(uniform_init({out, in, kernel, kernel}, bound, init, 2 * stream), true);
  if (with_bias) bias = Var(uniform_init({out}, bound, init, 2 * stream + 1), true);
}

Var Conv2d::forward(const Var& x) {
  require_nchw("Conv2d(" + std::to_string(in_channels) + " -> " + std::to_string(out_channels) + ")", x, in_channels);
  Var patches, rows;
  Var y = ad::conv2d(x, weight, bias, win_, &patches, &rows);
  positions_ = win_.out_h(x.shape()[2]) * win_.out_w(x.shape()[3]);
  record(patches.value(), rows);
  return y;
}

void Conv2d::per_sample_gradients(const Tensor& a, const Tensor& delta, int64_t s0, int64_t s1, Tensor& out) const {
  const int64_t b = s1 - s0, l = positions_, k = a.dim(1), o = out_channels;
  const Tensor as = a.rows(s0 * l, s1 * l).reshape({b, l, k}), ds = delta.rows(s0 * l, s1 * l).reshape({b, l, o});
  Tensor gw = Tensor::empty({b, o, k}, a.dtype(), a.device());
  ops::gemm_batched(true, false, 1.0, ds, as, 0.0, gw);  // delta_b^T patches_b
  if (!bias.defined()) {
    out.copy_from(gw.reshape({b, o * k}));
    return;
  }
  Tensor gb = Tensor::empty({b, o, 1}, a.dtype(), a.device());
  ops::gemm_batched(true, false, 1.0, ds, Tensor::full({l, 1}, 1.0, a.dtype(), a.device()), 0.0, gb);
  join_columns(gw.reshape({b, o * k}), gb.reshape({b, o}), out);
}

bool Conv2d::linear_map(const Tensor& a, LinearMap* map) const {
  if (!positions_ || !a.defined() || a.ndim() != 2 || a.dim(0) % positions_ != 0) return false;
  map->in = a.dim(1);
  map->out = out_channels;
  map->positions = positions_;
  map->bias = bias.defined();
  return true;
}

void Conv2d::own_parameters(std::vector<NamedParameter>& out) {
  out.push_back({"weight", &weight});
  if (bias.defined()) out.push_back({"bias", &bias});
}

BatchNorm2d::BatchNorm2d(int64_t c, const Init& init, double eps_, double momentum_)
    : channels(c), eps(eps_), momentum(momentum_) {
  if (c <= 0) throw std::invalid_argument("BatchNorm2d: channels must be positive, got " + std::to_string(c));
  weight = Var(Tensor::full({c}, 1.0, init.dtype, init.device), true);
  bias = Var(Tensor::zeros({c}, init.dtype, init.device), true);
  running_mean = Tensor::zeros({c}, init.dtype, init.device);
  running_var = Tensor::full({c}, 1.0, init.dtype, init.device);
  num_batches_tracked = Tensor::zeros(Shape(), init.dtype, init.device);  // 0-d, as PyTorch's
}

Var BatchNorm2d::forward(const Var& x) {
  require_nchw("BatchNorm2d(" + std::to_string(channels) + ")", x, channels);
  const Shape& s = x.shape();
  if (!training_) {
    // Evaluation: y = x * scale + shift, scale = gamma / sqrt(running_var + eps),
    // shift = beta - running_mean * scale: affine in x, differentiable in gamma and beta.
    const Var inv = ad::rsqrt(Var(running_var), eps);
    const Var scale = ad::mul(weight, inv);
    const Var shift = ad::add_scaled(bias, 1.0, ad::mul(scale, Var(running_mean)), -1.0);
    Var y = ad::channel_affine(x, scale, shift);
    recorded_in_training_ = false;
    record(x.value(), y);
    return y;
  }
  recorded_in_training_ = true;
  record(x.value(), Var());
  const int64_t m = s[0] * s[2] * s[3];
  if (m < 2)
    throw std::invalid_argument("BatchNorm2d: training needs more than one value per channel, got input " + s.str());
  const double inv_m = 1.0 / static_cast<double>(m);
  const Var mean = ad::scale(ad::channel_sum(x), inv_m);
  const Var xc = ad::channel_add(x, ad::scale(mean, -1.0));
  const Var var = ad::scale(ad::channel_sum(ad::mul(xc, xc)), inv_m);
  const Var inv = ad::rsqrt(var, eps);
  {
    // Running statistics (no gradient): the unbiased variance, as PyTorch keeps.
    const double unbias = static_cast<double>(m) / static_cast<double>(m - 1);
    ops::axpby(momentum, mean.value(), 1.0 - momentum, running_mean);
    ops::axpby(momentum * unbias, var.value(), 1.0 - momentum, running_var);
    ops::axpby(1.0, Tensor::full(Shape(), 1.0, num_batches_tracked.dtype(), num_batches_tracked.device()), 1.0,
               num_batches_tracked);
  }
  return ad::channel_affine(xc, ad::mul(weight, inv), bias);
}

void BatchNorm2d::per_sample_gradients(const Tensor& a, const Tensor& delta, int64_t s0, int64_t s1,
                                       Tensor& out) const {
  if (recorded_in_training_)
    throw std::logic_error("BatchNorm2d: per-sample gradients are defined in evaluation mode (running statistics); "
                           "the last batch ran in training mode");
  const int64_t b = s1 - s0, c = channels, hw = a.numel() / std::max<int64_t>(a.dim(0) * c, 1);
  std::vector<double> inv = running_var.to_vector(), mean = running_mean.to_vector();
  for (std::size_t i = 0; i < inv.size(); ++i) {
    inv[i] = 1.0 / std::sqrt(inv[i] + eps);
    mean[i] = -mean[i] * inv[i];
  }
  const Tensor xs = a.rows(s0, s1), ds = delta.rows(s0, s1);
  const Tensor xhat = ops::channel_affine(xs, Tensor::from_vector(inv, {c}, a.dtype(), a.device()),
                                          Tensor::from_vector(mean, {c}, a.dtype(), a.device()));
  // Sums over each (sample, channel) plane: (b*c, hw) x ones (hw, 1).
  const Tensor ones = Tensor::full({hw, 1}, 1.0, a.dtype(), a.device());
  const Tensor gg = ops::matmul(ops::mul(ds, xhat).reshape({b * c, hw}), ones);
  const Tensor gb = ops::matmul(ds.reshape({b * c, hw}), ones);
  join_columns(gg.reshape({b, c}), gb.reshape({b, c}), out);
}

void BatchNorm2d::own_parameters(std::vector<NamedParameter>& out) {
  out.push_back({"weight", &weight});
  out.push_back({"bias", &bias});
}

void BatchNorm2d::own_buffers(std::vector<NamedBuffer>& out) {
  out.push_back({"running_mean", &running_mean});
  out.push_back({"running_var", &running_var});
  out.push_back({"num_batches_tracked", &num_batches_tracked});
}

MaxPool2d::MaxPool2d(int64_t kernel, int64_t stride, int64_t padding) {
  if (kernel <= 0 || stride < 0 || padding < 0 || 2 * padding > kernel)
    throw std::invalid_argument("MaxPool2d: kernel " + std::to_string(kernel) + " stride " + std::to_string(stride) +
                                " padding " + std::to_string(padding) +
                                " (expected kernel >= 1, stride >= 0 (0: the kernel), padding <= kernel / 2)");
  win_.kh = win_.kw = kernel;
  win_.sh = win_.sw = stride == 0 ? kernel : stride;
  win_.ph = win_.pw = padding;
}

Var MaxPool2d::forward(const Var& x) {
  require_nchw("MaxPool2d", x, 0);
  return ad::maxpool2d(x, win_);
}

Var GlobalMaxPool2d::forward(const Var& x) {
  require_nchw("GlobalMaxPool2d", x, 0);
  Window2d w;
  w.kh = x.shape()[2];
  w.kw = x.shape()[3];
  return ad::maxpool2d(x, w);
}

Var Scale::forward(const Var& x) { return ad::scale(x, factor); }

}  // namespace nn
}  // namespace iif
