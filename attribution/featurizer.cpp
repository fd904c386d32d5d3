// Projected per-sample gradients from recorded (a, delta) (see featurizer.h).
#include "attribution/featurizer.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "engine/autodiff.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/progress.h"
#include "nn/module.h"

namespace iif {
namespace attr {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Evaluation mode, and the caller's accumulated parameter gradients set aside, for the scope:
// the featurizer's backward passes must leave the model as they found it.
class ModelScope {
 public:
  explicit ModelScope(nn::Model& m) : m_(m), was_training_(m.training()) {
    m.set_training(false);
    for (auto& p : m.named_parameters()) {
      saved_.emplace_back(p.var, p.var->grad());
      p.var->zero_grad();
    }
  }
  ~ModelScope() {
    for (auto& [var, grad] : saved_) var->node()->grad = grad;
    m_.set_training(was_training_);
  }
  ModelScope(const ModelScope&) = delete;
  ModelScope& operator=(const ModelScope&) = delete;

 private:
  nn::Model& m_;
  bool was_training_;
  std::vector<std::pair<Var*, Tensor>> saved_;
};

// 2 GB: the most exact() (and an identity projection) may return, counted in float64.
constexpr double kExactLimitBytes = 2.0 * 1024 * 1024 * 1024;

void check_exact_size(const char* what, int64_t n, int64_t m) {
  const double bytes = double(n) * double(m) * 8.0;
  if (bytes > kExactLimitBytes)
    throw std::invalid_argument(std::string(what) + ": exact per-sample gradients of " +
                                std::to_string(n) + " samples x " + std::to_string(m) +
                                " parameters need " + std::to_string(bytes / 1e9) +
                                " GB as float64, over the 2 GB limit; project them instead "
                                "(ProjectionKind::rademacher) or pass fewer samples");
}

// y (b, m) columns [col0, col0 + g.dim(1)) = g (b, rows); both on the host, one dtype.
void write_columns(const Tensor& g, int64_t col0, int64_t m, Tensor& y) {
  const int64_t b = g.dim(0), r = g.dim(1);
  if (g.dtype() == DType::f32) {
    for (int64_t s = 0; s < b; ++s)
      std::copy(g.data<float>() + s * r, g.data<float>() + (s + 1) * r, y.data<float>() + s * m + col0);
  } else {
    for (int64_t s = 0; s < b; ++s)
      std::copy(g.data<double>() + s * r, g.data<double>() + (s + 1) * r, y.data<double>() + s * m + col0);
  }
}

// y(B, M) rows = the exact per-sample gradients of layer l written at its rows of R.
template <class T>
void write_exact(const Tensor& a, const Tensor& d, int64_t in, int64_t out, int64_t weight_row,
                 int64_t bias_row, Tensor& y) {
  const int64_t b = a.dim(0), m = y.dim(1);
  const T* ap = a.data<T>();
  const T* dp = d.data<T>();
  T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (b * in * out >= (int64_t{1} << 16))
  for (int64_t s = 0; s < b; ++s) {
    const T* ar = ap + s * in;
    const T* dr = dp + s * out;
    T* yr = yp + s * m;
    for (int64_t o = 0; o < out; ++o) {
      T* w = yr + weight_row + o * in;
      const T dv = dr[o];
      for (int64_t i = 0; i < in; ++i) w[i] = dv * ar[i];
      if (bias_row >= 0) yr[bias_row + o] = dv;
    }
  }
}

// Factored kernel, per sample b of the tile: y[b, :] += sum_{j<u} d[b, o0 + j] t[b, j*P : (j+1)*P]
// with t (ns, u*P) the products a_b^T R_o for units o0 .. o0 + u - 1.
template <class T>
void contract(const Tensor& d, int64_t o0, int64_t u, const Tensor& t, int64_t p, Tensor& y) {
  const int64_t ns = t.dim(0), out = d.dim(1);
  const T* dp = d.data<T>();
  const T* tp = t.data<T>();
  T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (ns * u * p >= (int64_t{1} << 15))
  for (int64_t s = 0; s < ns; ++s) {
    T* yr = yp + s * p;
    const T* dr = dp + s * out + o0;
    const T* tr = tp + s * u * p;
    for (int64_t j = 0; j < u; ++j) {
      const T dv = dr[j];
      const T* tj = tr + j * p;
      for (int64_t c = 0; c < p; ++c) yr[c] += dv * tj[c];
    }
  }
}

// Gradient-tile kernel: g(ns, m) = entries r0 .. r0 + m - 1 of each sample's weight gradient
// vec(delta a^T) (row r = o * in + i within the layer).
template <class T>
void form_gradient_tile(const Tensor& a, const Tensor& d, int64_t r0, Tensor& g) {
  const int64_t ns = g.dim(0), m = g.dim(1), in = a.dim(1), out = d.dim(1);
  const T* ap = a.data<T>();
  const T* dp = d.data<T>();
  T* gp = g.data<T>();
#pragma omp parallel for schedule(static) if (ns * m >= (int64_t{1} << 15))
  for (int64_t s = 0; s < ns; ++s) {
    const T* ar = ap + s * in;
    const T* dr = dp + s * out;
    T* gr = gp + s * m;
    int64_t o = r0 / in, i = r0 % in;
    for (int64_t j = 0; j < m; ++j) {
      gr[j] = dr[o] * ar[i];
      if (++i == in) {
        i = 0;
        ++o;
      }
    }
  }
}

// A (rows, cols) view of the front of a flat buffer.
Tensor front(const Tensor& flat, int64_t rows, int64_t cols) {
  return flat.rows(0, rows * cols).reshape({rows, cols});
}

}  // namespace

const char* featurizer_kernel_name(FeaturizerKernel k) {
  return k == FeaturizerKernel::factored ? "factored" : "gradient_tile";
}

Tensor xent_cotangent(const Tensor& logits, const Tensor& targets) {
  check_ndim("xent_cotangent (logits)", logits, 2);
  check_same_shape("xent_cotangent (logits vs targets)", logits, targets);
  Tensor loss = Tensor::empty({logits.dim(0)}, logits.dtype(), logits.device());
  Tensor dz = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  ops::softmax_xent(logits, targets, loss, &dz);
  return dz;
}

Tensor mse_cotangent(const Tensor& outputs, const Tensor& targets) {
  check_ndim("mse_cotangent (outputs)", outputs, 2);
  check_same_shape("mse_cotangent (outputs vs targets)", outputs, targets);
  Tensor loss = Tensor::empty({outputs.dim(0)}, outputs.dtype(), outputs.device());
  Tensor dp = Tensor::empty(outputs.shape(), outputs.dtype(), outputs.device());
  ops::mse(outputs, targets, loss, &dp);
  return dp;
}

Featurizer::Featurizer(nn::Model& model, const Projector& proj, FeaturizerOptions options)
    : model_(model), proj_(proj), opt_(options) {
  if (opt_.chunk < 1)
    throw std::invalid_argument("Featurizer: chunk must be >= 1, got " + std::to_string(opt_.chunk));
  // Row of R where each parameter tensor starts: named_parameters() order, row-major.
  std::map<const Var*, int64_t> first_row;
  const auto params = model.named_parameters();
  if (params.empty()) throw std::invalid_argument("Featurizer: the model has no parameters");
  dtype_ = params[0].var->value().dtype();
  device_ = params[0].var->value().device();
  for (const auto& p : params) {
    first_row[p.var] = m_;
    m_ += p.var->value().numel();
  }
  int64_t covered = 0;
  for (nn::ParametricLayer* pl : model.parametric_layers()) {
    auto* lin = dynamic_cast<nn::Linear*>(pl);
    if (!lin) {
      std::vector<nn::NamedParameter> own;
      pl->own_parameters(own);
      if (own.empty()) continue;
      Layer l{pl, 0, 0, -1, -1};
      l.generic = true;
      l.first_row = first_row.at(own[0].var);
      for (const auto& q : own) {
        if (first_row.at(q.var) != l.first_row + l.rows)
          throw std::logic_error("Featurizer: the parameters of layer " + pl->kind() + " are not consecutive");
        l.rows += q.var->value().numel();
      }
      covered += l.rows;
      layers_.push_back(l);
      continue;
    }
    Layer l{pl, lin->in_features, lin->out_features, first_row.at(&lin->weight), -1};
    covered += l.in * l.out;
    if (lin->bias.defined()) {
      l.bias_row = first_row.at(&lin->bias);
      covered += l.out;
    }
    layers_.push_back(l);
  }
  if (covered != m_)
    throw std::invalid_argument("Featurizer: the parametric layers hold " + std::to_string(covered) +
                                " of the model's " + std::to_string(m_) + " parameters (a parameter outside "
                                "every nn::ParametricLayer has no per-sample gradient)");
  if (proj.input_dim() != m_)
    throw std::invalid_argument("Featurizer: the projector's input dimension " +
                                std::to_string(proj.input_dim()) + " is not the model's " +
                                std::to_string(m_) + " parameters (" + model.spec() + ")");
}

void Featurizer::check_inputs(const char* what, const Tensor& x, int64_t batch) const {
  if (!x.defined() || x.ndim() < 2)
    throw std::invalid_argument(std::string(what) + ": inputs must be (N, ...), got " +
                                (x.defined() ? x.shape().str() : std::string("undefined")));
  if (x.dtype() != dtype_)
    throw std::invalid_argument(std::string(what) + ": inputs are " + dtype_name(x.dtype()) +
                                " but the model is " + dtype_name(dtype_));
  if (x.device() != device_)
    throw std::invalid_argument(std::string(what) + ": inputs on " + x.device().str() +
                                " but the model on " + device_.str() + " (move one with .to())");
  if (batch < 1)
    throw std::invalid_argument(std::string(what) + ": batch must be >= 1, got " +
                                std::to_string(batch));
}

int64_t Featurizer::fitted_batch(const Tensor& x, const std::vector<CotangentFn>& cots, int64_t batch) {
  const int64_t probe = std::min<int64_t>({batch, x.dim(0), 4});
  if (opt_.pass_bytes == 0 || probe < 1 || batch <= probe) return batch;
  double bytes = 0;
  int64_t samples = 1;
  if (std::none_of(layers_.begin(), layers_.end(), [](const Layer& L) { return L.generic; })) {
    // Linear layers only: (in + K out) entries per sample, known without a pass.
    for (const Layer& L : layers_)
      bytes += double(L.in + static_cast<int64_t>(cots.size()) * L.out) * double(dtype_size(dtype_));
  } else {  // what a few samples record (a convolution's patches depend on the image size)
    std::vector<Tensor> a(layers_.size());
    std::vector<std::vector<Tensor>> d(layers_.size(), std::vector<Tensor>(cots.size()));
    sweep_batch(x.rows(0, probe), 0, cots, a, d);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      bytes += double(a[l].nbytes());
      for (const Tensor& t : d[l]) bytes += double(t.nbytes());
    }
    samples = probe;
  }
  const double per_sample = FeaturizerOptions::kPassFactor * bytes / double(samples);
  return std::clamp<int64_t>(static_cast<int64_t>(double(opt_.pass_bytes) / std::max(per_sample, 1.0)), 1, batch);
}

void Featurizer::sweep_batch(const Tensor& xb, int64_t first, const std::vector<CotangentFn>& cots,
                             std::vector<Tensor>& a, std::vector<std::vector<Tensor>>& d) {
  const int64_t nb = xb.dim(0);
  Var out = model_.forward(Var(xb));
  const Tensor& ov = out.value();
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    a[l] = layers_[l].layer->input_activations();
    if (layers_[l].generic) {
      if (!a[l].defined() || layers_[l].layer->samples_of(a[l]) != nb)
        throw std::logic_error("Featurizer: layer " + layers_[l].layer->kind() +
                               " did not record its input for this batch");
      continue;
    }
    if (!a[l].defined() || a[l].shape() != Shape{nb, layers_[l].in})
      throw std::logic_error("Featurizer: layer " + std::to_string(l) +
                             " did not record its input for this batch");
  }
  for (std::size_t k = 0; k < cots.size(); ++k) {
    const Tensor ct = cots[k](ov, first);
    if (!ct.defined())
      throw std::invalid_argument("Featurizer: cotangent function " + std::to_string(k) +
                                  " returned an undefined tensor");
    check_same_shape("Featurizer (cotangent vs model outputs)", ct, ov);
    check_same_dtype("Featurizer (cotangent vs model outputs)", ct, ov);
    // The layers' output cotangents and nothing else: no parameter gradient is formed (a third
    // of a backward pass's GEMMs) and none accumulates.
    std::vector<Var> wrt;
    for (const Layer& L : layers_) wrt.push_back(L.layer->recorded_output());
    grad({out}, {Var(ct)}, wrt, false);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      d[l][k] = layers_[l].layer->output_cotangents();
      if (layers_[l].generic) {
        if (!d[l][k].defined())
          throw std::logic_error("Featurizer: no output cotangent recorded for layer " + layers_[l].layer->kind());
        continue;
      }
      if (!d[l][k].defined() || d[l][k].shape() != Shape{nb, layers_[l].out})
        throw std::logic_error("Featurizer: no output cotangent recorded for layer " +
                               std::to_string(l));
    }
  }
}

void Featurizer::project_chunk(const std::vector<Tensor>& a,
                               const std::vector<std::vector<Tensor>>& d, std::vector<Tensor>& y) {
  const int64_t n = y.empty() ? 0 : y[0].dim(0), p = proj_.output_dim();
  const int64_t esz = static_cast<int64_t>(dtype_size(dtype_));
  const int64_t budget = static_cast<int64_t>(opt_.tile_bytes);
  const bool f32 = dtype_ == DType::f32;
  const std::size_t kk = y.size();
  auto fill = [&](int64_t r0, int64_t count, Tensor& dst, int64_t offset, int64_t ld) {
    if (f32) proj_.fill_rows(r0, count, dst.data<float>() + offset, ld);
    else proj_.fill_rows(r0, count, dst.data<double>() + offset, ld);
  };
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    if (L.generic) continue;  // projected per batch (project_generic)
    if (opt_.kernel == FeaturizerKernel::factored) {
      // Tile: units o0 .. o0 + u - 1, R laid out (in, u x P): column block j is R_{o0 + j}.
      const int64_t units = std::clamp<int64_t>(budget / (L.in * p * esz), 1, L.out);
      const int64_t rows_t = std::clamp<int64_t>(budget / (units * p * esz), 1, n);
      const Tensor r_buf = Tensor::empty({L.in * units * p}, dtype_);
      const Tensor t_buf = Tensor::empty({rows_t * units * p}, dtype_);
      for (int64_t o0 = 0; o0 < L.out; o0 += units) {
        const int64_t u = std::min(units, L.out - o0);
        Tensor rt = front(r_buf, L.in, u * p);
        auto t0 = Clock::now();
        for (int64_t j = 0; j < u; ++j) fill(L.weight_row + (o0 + j) * L.in, L.in, rt, j * p, u * p);
        timing_.generate += since(t0);
        t0 = Clock::now();
        for (int64_t s0 = 0; s0 < n; s0 += rows_t) {
          const int64_t s1 = std::min(n, s0 + rows_t);
          Tensor tt = front(t_buf, s1 - s0, u * p);
          ops::gemm(false, false, 1.0, a[l].rows(s0, s1), rt, 0.0, tt);  // (ns,in)(in,u*P)
          for (std::size_t k = 0; k < kk; ++k) {
            Tensor ys = y[k].rows(s0, s1);
            if (f32) contract<float>(d[l][k].rows(s0, s1), o0, u, tt, p, ys);
            else contract<double>(d[l][k].rows(s0, s1), o0, u, tt, p, ys);
          }
        }
        timing_.project += since(t0);
      }
    } else {
      // Tile: m consecutive weight rows of R (m, P) and the gradient entries G (ns, m).
      const int64_t total = L.in * L.out;
      const int64_t rows_r = std::clamp<int64_t>(budget / (p * esz), 1, total);
      const int64_t rows_s = std::clamp<int64_t>(budget / (rows_r * esz), 1, n);
      const Tensor r_buf = Tensor::empty({rows_r * p}, dtype_);
      const Tensor g_buf = Tensor::empty({rows_s * rows_r}, dtype_);
      for (int64_t r0 = 0; r0 < total; r0 += rows_r) {
        const int64_t m = std::min(rows_r, total - r0);
        Tensor rt = front(r_buf, m, p);
        auto t0 = Clock::now();
        fill(L.weight_row + r0, m, rt, 0, p);
        timing_.generate += since(t0);
        t0 = Clock::now();
        for (int64_t s0 = 0; s0 < n; s0 += rows_s) {
          const int64_t s1 = std::min(n, s0 + rows_s);
          Tensor g = front(g_buf, s1 - s0, m);
          for (std::size_t k = 0; k < kk; ++k) {
            if (f32) form_gradient_tile<float>(a[l].rows(s0, s1), d[l][k].rows(s0, s1), r0, g);
            else form_gradient_tile<double>(a[l].rows(s0, s1), d[l][k].rows(s0, s1), r0, g);
            Tensor ys = y[k].rows(s0, s1);
            ops::gemm(false, false, 1.0, g, rt, 1.0, ys);  // (ns,m)(m,P)
          }
        }
        timing_.project += since(t0);
      }
    }
    if (L.bias_row >= 0) {  // the bias gradient is delta itself: Y += delta R_bias
      auto t0 = Clock::now();
      const Tensor rb = proj_.rows(L.bias_row, L.out, dtype_);
      timing_.generate += since(t0);
      t0 = Clock::now();
      for (std::size_t k = 0; k < kk; ++k) ops::gemm(false, false, 1.0, d[l][k], rb, 1.0, y[k]);
      timing_.project += since(t0);
    }
  }
}

void Featurizer::project_generic(const std::vector<Tensor>& a, const std::vector<std::vector<Tensor>>& d,
                                 const std::vector<Tensor>& y) {
  const bool identity = proj_.kind() == ProjectionKind::identity;
  const int64_t esz = static_cast<int64_t>(dtype_size(dtype_));
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    if (!L.generic) continue;
    nn::ParametricLayer::LinearMap map;
    if (!identity && L.layer->linear_map(a[l], &map)) {
      // A linear map at `positions` rows per sample (Conv2d): its per-sample gradients are
      // fused with R, never formed; every cotangent set in one call (they share R's tiles).
      const auto t0 = Clock::now();
      ops::linear_project(a[l], d[l], map.positions, map.bias, L.first_row, proj_.random_projection(), y);
      timing_.project += since(t0);
      continue;
    }
    const int64_t nb = L.layer->samples_of(a[l]);
    const int64_t sub = std::clamp<int64_t>(static_cast<int64_t>(opt_.tile_bytes) / std::max<int64_t>(L.rows * esz, 1), 1,
                                            std::max<int64_t>(nb, 1));
    for (std::size_t k = 0; k < y.size(); ++k)
      for (int64_t s0 = 0; s0 < nb; s0 += sub) {
        const int64_t s1 = std::min(nb, s0 + sub);
        auto t0 = Clock::now();
        Tensor g = Tensor::empty({s1 - s0, L.rows}, dtype_, a[l].device());
        L.layer->per_sample_gradients(a[l], d[l][k], s0, s1, g);
        timing_.autodiff += since(t0);
        t0 = Clock::now();
        Tensor ys = y[k].rows(s0, s1);
        if (identity) {
          // Exact gradients: columns first_row .. + rows of y (host memory).
          const Tensor gh = g.to(Device::cpu());
          const int64_t m = ys.dim(1);
          write_columns(gh, L.first_row, m, ys);
        } else {
          ops::project_rows(g, L.first_row, proj_.random_projection(), 1.0, ys);
        }
        timing_.project += since(t0);
      }
  }
}

void Featurizer::project_on_device(const std::vector<Tensor>& a,
                                   const std::vector<std::vector<Tensor>>& d,
                                   const std::vector<Tensor>& y) {
  const RandomProjection rp = proj_.random_projection();
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    if (L.generic) continue;  // project_generic
    // The kernel takes the bias rows right after the weight rows (named_parameters() order);
    // anything else projects the bias as given gradients (delta itself) at its own rows.
    const bool bias_follows = L.bias_row >= 0 && L.bias_row == L.weight_row + L.in * L.out;
    ops::linear_project(a[l], d[l], 1, bias_follows, L.weight_row, rp, y);
    if (L.bias_row >= 0 && !bias_follows)
      for (std::size_t k = 0; k < y.size(); ++k) {
        Tensor yk = y[k];
        ops::project_rows(d[l][k], L.bias_row, rp, 1.0, yk);
      }
  }
}

std::vector<Tensor> Featurizer::project(const Tensor& x, const std::vector<CotangentFn>& cots,
                                        int64_t batch, bool progress) {
  profile::Range stage("featurize");
  check_inputs("Featurizer::project", x, batch);
  if (cots.empty())
    throw std::invalid_argument("Featurizer::project: no cotangent functions given");
  const int64_t n = x.dim(0), p = proj_.output_dim();
  const std::size_t kk = cots.size(), nl = layers_.size();
  const bool identity = proj_.kind() == ProjectionKind::identity;
  if (identity) check_exact_size("Featurizer::project (identity projector)", n, m_);
  timing_ = {};

  const bool on_cpu = device_ == Device::cpu();
  // Identity on a device: the exact gradients are written on the host (explicit copies of
  // a, delta and the (N, M) result; identity is for small models) and moved at the end.
  std::vector<Tensor> y;
  for (std::size_t k = 0; k < kk; ++k)
    y.push_back(Tensor::zeros({n, p}, dtype_, identity ? Device::cpu() : device_));
  ModelScope scope(model_);
  batch = fitted_batch(x, cots, batch);  // (evaluation mode: the probe changes nothing)
  last_batch_ = batch;
  Progress prog("featurize", n, progress);
  std::vector<Tensor> a(nl);
  std::vector<std::vector<Tensor>> d(nl, std::vector<Tensor>(kk));

  if (identity) {  // R = I: the exact gradients, written in place
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
      const int64_t b1 = std::min(n, b0 + batch);
      auto t0 = Clock::now();
      sweep_batch(x.rows(b0, b1), b0, cots, a, d);
      if (!on_cpu)
        for (std::size_t l = 0; l < nl; ++l) {
          a[l] = a[l].to(Device::cpu());
          for (std::size_t k = 0; k < kk; ++k) d[l][k] = d[l][k].to(Device::cpu());
        }
      timing_.autodiff += since(t0);
      t0 = Clock::now();
      for (std::size_t k = 0; k < kk; ++k) {
        Tensor yb = y[k].rows(b0, b1);
        for (std::size_t l = 0; l < nl; ++l) {
          const Layer& L = layers_[l];
          if (L.generic) continue;
          if (dtype_ == DType::f32)
            write_exact<float>(a[l], d[l][k], L.in, L.out, L.weight_row, L.bias_row, yb);
          else
            write_exact<double>(a[l], d[l][k], L.in, L.out, L.weight_row, L.bias_row, yb);
        }
      }
      std::vector<Tensor> yb(kk);
      for (std::size_t k = 0; k < kk; ++k) yb[k] = y[k].rows(b0, b1);
      project_generic(a, d, yb);
      timing_.project += since(t0);
      prog.update(b1);
    }
    prog.finish();
    if (!on_cpu)
      for (Tensor& t : y) t = t.to(device_);
    return y;
  }

  if (!on_cpu) {
    // A device backend: per batch, the fused per-sample-gradient projection of every layer
    // (engine/backend.h linear_project; R generated on the device), straight into y's rows.
    // Nothing of size N x M, and no (a, delta), ever reaches the host.
    std::vector<Tensor> vy(kk);
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
      const int64_t b1 = std::min(n, b0 + batch);
      auto t0 = Clock::now();
      sweep_batch(x.rows(b0, b1), b0, cots, a, d);
      timing_.autodiff += since(t0);
      t0 = Clock::now();
      for (std::size_t k = 0; k < kk; ++k) vy[k] = y[k].rows(b0, b1);
      project_on_device(a, d, vy);
      project_generic(a, d, vy);
      timing_.project += since(t0);
      prog.update(b1);
    }
    prog.finish();
    return y;
  }

  // Gather (a, delta) of `chunk` samples, then project them with one generation of R.
  const int64_t chunk = std::min(opt_.chunk, std::max<int64_t>(n, 1));
  std::vector<Tensor> ca(nl);
  std::vector<std::vector<Tensor>> cd(nl, std::vector<Tensor>(kk));
  for (std::size_t l = 0; l < nl; ++l) {
    if (layers_[l].generic) continue;
    ca[l] = Tensor::empty({chunk, layers_[l].in}, dtype_);
    for (std::size_t k = 0; k < kk; ++k) cd[l][k] = Tensor::empty({chunk, layers_[l].out}, dtype_);
  }
  std::vector<Tensor> va(nl), vy(kk);
  std::vector<std::vector<Tensor>> vd(nl, std::vector<Tensor>(kk));
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t c1 = std::min(n, c0 + chunk);
    for (int64_t b0 = c0; b0 < c1; b0 += batch) {
      const int64_t b1 = std::min(c1, b0 + batch);
      const auto t0 = Clock::now();
      sweep_batch(x.rows(b0, b1), b0, cots, a, d);
      for (std::size_t l = 0; l < nl; ++l) {
        if (layers_[l].generic) continue;
        ca[l].rows(b0 - c0, b1 - c0).copy_from(a[l]);
        for (std::size_t k = 0; k < kk; ++k) cd[l][k].rows(b0 - c0, b1 - c0).copy_from(d[l][k]);
      }
      timing_.autodiff += since(t0);
      std::vector<Tensor> yb(kk);
      for (std::size_t k = 0; k < kk; ++k) yb[k] = y[k].rows(b0, b1);
      project_generic(a, d, yb);  // times itself
    }
    for (std::size_t l = 0; l < nl; ++l) {
      if (layers_[l].generic) continue;
      va[l] = ca[l].rows(0, c1 - c0);
      for (std::size_t k = 0; k < kk; ++k) vd[l][k] = cd[l][k].rows(0, c1 - c0);
    }
    for (std::size_t k = 0; k < kk; ++k) vy[k] = y[k].rows(c0, c1);
    project_chunk(va, vd, vy);
    prog.update(c1);
  }
  prog.finish();
  return y;
}

Tensor Featurizer::exact(const Tensor& x, const CotangentFn& cot, int64_t batch) {
  check_inputs("Featurizer::exact", x, batch);
  check_exact_size("Featurizer::exact", x.dim(0), m_);
  ProjectorSpec identity;
  identity.kind = ProjectionKind::identity;
  const Projector eye(m_, identity);
  Featurizer f(model_, eye, opt_);
  std::vector<Tensor> y = f.project(x, {cot}, batch, false);
  timing_ = f.timing_;
  return y.at(0);
}

}  // namespace attr
}  // namespace iif
