// Image layers (see nn/vision.h).
#include "nn/vision.h"

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
  return ad::conv2d(x, weight, bias, win_);
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
    return ad::channel_affine(x, scale, shift);
  }
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
