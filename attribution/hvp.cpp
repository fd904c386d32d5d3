// Hessian- and Gauss-Newton-vector products of a model's mean training loss by autodiff's
// double backward, the flat gradient, and the finite-difference Hessian oracle (see hvp.h).
//
// Hessian: g = grad L_b (create_graph), then H v = d<g, v>/dtheta: one reverse pass over the
// gradient's graph, seeded with v. Gauss-Newton: with u a dummy cotangent of the outputs,
// J^T u = grad(f, seed u) (create_graph) is linear in u, so d<J^T u, v>/du = J v (forward mode
// from two reverse passes); then H_f J v in closed form and one reverse pass gives J^T H_f J v.
// Both create-graph passes are lazy (engine/autodiff.h): the Hessian never reads grad L and
// Gauss-Newton never reads J^T u, so the weight-gradient GEMMs that would form them (and, for
// Gauss-Newton, the whole cotangent chain of u = 0) are never run; the last pass adds each
// parameter's product straight into its block of the result (grad_into). On the MNIST MLP this
// does the GEMMs of Pearlmutter's R-operator written out by hand, at its speed (bench_engine's
// hvp_* rows against the *_r_operator_oracle ones; tests/oracles/r_operator.h holds that oracle).
#include "attribution/hvp.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autodiff.h"
#include "engine/ops.h"

namespace iif {
namespace attr {
namespace {

// The parameters in named_parameters() order: each one's place in the flat vector (M entries),
// their dtype and device: what the products and every argument check read.
struct Params {
  std::vector<Var> vars;
  std::vector<int64_t> offsets;
  int64_t m = 0;
  DType dtype = DType::f32;
  Device device;
  int64_t offset_of(const Var& v) const {
    for (std::size_t i = 0; i < vars.size(); ++i)
      if (vars[i].node() == v.node()) return offsets[i];
    throw std::logic_error("hvp: a layer's parameter is not among the model's");
  }
};

Params params_of(nn::Model& model, const char* what) {
  Params a;
  for (const auto& p : model.named_parameters()) {
    a.vars.push_back(*p.var);
    a.offsets.push_back(a.m);
    a.m += p.var->value().numel();
  }
  if (a.vars.empty()) throw std::invalid_argument(std::string(what) + ": the model has no parameters");
  a.dtype = a.vars[0].value().dtype();
  a.device = a.vars[0].value().device();
  return a;
}

void check_data(const char* what, const Params& layout, const Tensor& x, const Tensor& t) {
  if (!x.defined() || !t.defined())
    throw std::invalid_argument(std::string(what) + ": undefined inputs or targets");
  if (x.ndim() < 1 || t.ndim() != 2 || t.dim(0) != x.dim(0))
    throw std::invalid_argument(std::string(what) + ": targets " + t.shape().str() +
                                " do not match inputs " + x.shape().str() + " (expected (N, outputs))");
  if (x.dim(0) == 0) throw std::invalid_argument(std::string(what) + ": empty dataset");
  if (x.device() != layout.device || t.device() != layout.device)
    throw std::invalid_argument(std::string(what) + ": data and model live on different devices (" +
                                x.device().str() + ", " + t.device().str() + ", " + layout.device.str() + ")");
}

// v must hold one value per parameter, on the model's device; the batch must be positive.
void check_vector(const char* what, const Params& layout, const Tensor& v) {
  if (!v.defined() || v.numel() != layout.m)
    throw std::invalid_argument(std::string(what) + ": the vector has " +
                                (v.defined() ? std::to_string(v.numel()) : std::string("no")) +
                                " elements; the model has " + std::to_string(layout.m) + " parameters");
  if (v.device() != layout.device)
    throw std::invalid_argument(std::string(what) + ": vector on " + v.device().str() + ", model on " +
                                layout.device.str());
}
void check_batch(const char* what, int64_t batch) {
  if (batch <= 0)
    throw std::invalid_argument(std::string(what) + ": batch must be positive, got " + std::to_string(batch));
}

// One batch's graph: outputs f with their graph to the parameters, and (Hessian) the batch's
// share of grad L or (Gauss-Newton) J^T u, each with its own graph.
struct AdBatch {
  Var out;
  Tensor targets;
  std::vector<Var> g;  // Hessian: d(L_b)/d theta_p, differentiable
  Var u;               // Gauss-Newton: the dummy cotangent (B, outputs)
  std::vector<Var> ju; // Gauss-Newton: J^T u, differentiable in u
};

// Runs the model in evaluation mode without touching its recorded activations or its training
// flag (both restored on exit, also on an exception).
struct EvalScope {
  nn::Model& m;
  bool was_training;
  nn::RecordingPause no_recording;
  explicit EvalScope(nn::Model& model) : m(model), was_training(model.training()), no_recording(model) {
    m.set_training(false);
  }
  ~EvalScope() { m.set_training(was_training); }
};

AdBatch ad_batch(nn::Model& model, const Params& a, const Tensor& xb, const Tensor& tb, nn::LossKind loss,
                 double inv_n, bool gauss_newton) {
  AdBatch b;
  b.out = model.forward(Var(xb));
  b.targets = tb;
  if (!gauss_newton) {
    Var l = loss == nn::LossKind::cross_entropy ? ad::softmax_xent_mean(b.out, tb) : ad::mse_mean(b.out, tb);
    const Tensor seed = Tensor::full({1}, static_cast<double>(xb.dim(0)) * inv_n, a.dtype, a.device);
    b.g = grad(l, seed, a.vars, true, true);  // lazy: grad L itself is never read
  } else {
    const Tensor& f = b.out.value();
    b.u = Var(Tensor::zeros(f.shape(), f.dtype(), f.device()), true);
    b.ju = grad({b.out}, {b.u}, a.vars, true, true);
  }
  return b;
}

// part (M) = this batch's share of C v.
void ad_apply(const Params& a, const AdBatch& b, nn::LossKind loss, const Tensor& vm, double inv_n, Tensor& part) {
  std::vector<Var> roots, seeds;
  const std::vector<Var>& from = b.g.empty() ? b.ju : b.g;
  for (std::size_t p = 0; p < a.vars.size(); ++p) {
    if (!from[p].requires_grad()) continue;  // no path to the parameters (or to u)
    const Tensor& pv = a.vars[p].value();
    roots.push_back(from[p]);
    seeds.push_back(Var(vm.rows(a.offsets[p], a.offsets[p] + pv.numel()).reshape(pv.shape())));
  }
  // The products are formed in place in part's blocks (grad_into: no copy of M values).
  ops::fill(part, 0.0);
  std::vector<Tensor> blocks;
  for (std::size_t p = 0; p < a.vars.size(); ++p) {
    const Tensor& pv = a.vars[p].value();
    blocks.push_back(part.rows(a.offsets[p], a.offsets[p] + pv.numel()).reshape(pv.shape()));
  }
  if (b.g.empty()) {
    // J v, then H_f J v / N, then J^T of it.
    const Tensor jv = roots.empty() ? Tensor::zeros(b.out.shape(), a.dtype, a.device)
                                    : grad(roots, seeds, {b.u}, false)[0].value();
    const Tensor hjv = loss == nn::LossKind::cross_entropy
                           ? ops::scale(ops::softmax_xent_hvp(b.out.value(), b.targets, jv), inv_n)
                           : ops::scale(jv, 2.0 * inv_n);
    grad_into({b.out}, {Var(hjv)}, a.vars, blocks);
  } else if (!roots.empty()) {
    grad_into(roots, seeds, a.vars, blocks);
  }
}

}  // namespace

Tensor flat_parameters(nn::Model& model) {
  const auto params = model.named_parameters();
  if (params.empty()) throw std::invalid_argument("flat_parameters: the model has no parameters");
  const Tensor& first = params[0].var->value();
  Tensor theta = Tensor::empty({model.num_parameters()}, first.dtype(), first.device());
  int64_t off = 0;
  for (const auto& p : params) {
    const int64_t n = p.var->value().numel();
    theta.rows(off, off + n).copy_from(p.var->value());
    off += n;
  }
  return theta;
}

void set_flat_parameters(nn::Model& model, const Tensor& theta) {
  const int64_t m = model.num_parameters();
  if (!theta.defined() || theta.numel() != m)
    throw std::invalid_argument("set_flat_parameters: expected " + std::to_string(m) +
                                " values, got " + (theta.defined() ? theta.shape().str() : "none"));
  const Tensor flat = theta.reshape({m});
  int64_t off = 0;
  for (const auto& p : model.named_parameters()) {
    const int64_t n = p.var->value().numel();
    p.var->mutable_value().copy_from(flat.rows(off, off + n));
    off += n;
  }
}

Tensor hessian_vector_product(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                              const Tensor& v, const HvpOptions& opt) {
  const Params a = params_of(model, "hessian_vector_product");
  check_data("hessian_vector_product", a, x, t);
  check_vector("hessian_vector_product", a, v);
  check_batch("hessian_vector_product", opt.batch);
  const Tensor vm = v.reshape({a.m}).to(a.dtype);
  const int64_t n = x.dim(0);
  const double inv_n = 1.0 / static_cast<double>(n);
  Tensor part = Tensor::empty({a.m}, a.dtype, a.device);
  Tensor total = Tensor::zeros({a.m}, DType::f64, a.device);
  EvalScope scope(model);
  for (int64_t b0 = 0; b0 < n; b0 += opt.batch) {
    const int64_t b1 = std::min(n, b0 + opt.batch);
    const AdBatch b = ad_batch(model, a, x.rows(b0, b1).to(a.dtype), t.rows(b0, b1).to(a.dtype), loss, inv_n,
                               opt.curvature == Curvature::gauss_newton);
    ad_apply(a, b, loss, vm, inv_n, part);
    ops::axpby(1.0, part.to(DType::f64), 1.0, total);
  }
  return total.to(v.dtype());
}

struct CurvatureOperator::State {
  Params layout;
  std::vector<AdBatch> batches;
  nn::LossKind loss;
  double inv_n;
};

CurvatureOperator::CurvatureOperator(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                                     const HvpOptions& opt)
    : st_(std::make_shared<State>()) {
  st_->layout = params_of(model, "CurvatureOperator");
  check_data("CurvatureOperator", st_->layout, x, t);
  check_batch("CurvatureOperator", opt.batch);
  st_->loss = loss;
  st_->inv_n = 1.0 / static_cast<double>(x.dim(0));
  EvalScope scope(model);
  const DType dt = st_->layout.dtype;
  for (int64_t b0 = 0; b0 < x.dim(0); b0 += opt.batch) {
    const int64_t b1 = std::min(x.dim(0), b0 + opt.batch);
    st_->batches.push_back(ad_batch(model, st_->layout, x.rows(b0, b1).to(dt), t.rows(b0, b1).to(dt), loss,
                                    st_->inv_n, opt.curvature == Curvature::gauss_newton));
  }
}

int64_t CurvatureOperator::dim() const { return st_->layout.m; }

Tensor CurvatureOperator::apply(const Tensor& v) const {
  const Params& layout = st_->layout;
  check_vector("CurvatureOperator", layout, v);
  const Tensor vm = v.reshape({layout.m}).to(layout.dtype);
  Tensor part = Tensor::empty({layout.m}, layout.dtype, layout.device);
  Tensor total = Tensor::zeros({layout.m}, DType::f64, layout.device);
  for (const AdBatch& b : st_->batches) {
    ad_apply(layout, b, st_->loss, vm, st_->inv_n, part);
    ops::axpby(1.0, part.to(DType::f64), 1.0, total);
  }
  return total.to(v.dtype()).reshape(v.shape());
}

Tensor CurvatureOperator::apply(const Tensor& v, double damping) const {
  Tensor out = apply(v);
  ops::axpby(damping, v, 1.0, out);
  return out;
}

Tensor gauss_newton_vector_product(nn::Model& model, const Tensor& x, const Tensor& t,
                                   nn::LossKind loss, const Tensor& v, int64_t batch) {
  HvpOptions o;
  o.batch = batch;
  o.curvature = Curvature::gauss_newton;
  return hessian_vector_product(model, x, t, loss, v, o);
}

Tensor curvature_matrix(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                        const HvpOptions& opt) {
  const int64_t m = model.num_parameters();
  const Device dev = params_of(model, "curvature_matrix").device;
  Tensor c = Tensor::empty({m, m}, DType::f64, dev);
  std::vector<double> e(static_cast<std::size_t>(m), 0.0);
  for (int64_t j = 0; j < m; ++j) {
    e[j] = 1.0;
    // Row j of the symmetric matrix = column j = C e_j.
    c.rows(j, j + 1).copy_from(
        hessian_vector_product(model, x, t, loss, Tensor::from_vector(e, {m}, DType::f64, dev), opt));
    e[j] = 0.0;
  }
  return c;
}

Tensor flat_gradient(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                     int64_t batch) {
  const Params layout = params_of(model, "flat_gradient");
  check_data("flat_gradient", layout, x, t);
  if (batch <= 0)
    throw std::invalid_argument("flat_gradient: batch must be positive, got " + std::to_string(batch));
  const auto params = model.named_parameters();
  std::vector<Tensor> saved;
  for (const auto& p : params) {
    saved.push_back(p.var->grad());
    p.var->zero_grad();
  }
  const bool was_training = model.training();
  model.set_training(false);
  const int64_t n = x.dim(0);
  try {
    // Leaves accumulate over backward calls: seeding each batch's mean loss with B/N sums to
    // the gradient of the mean over all N samples.
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
      const int64_t b1 = std::min(n, b0 + batch);
      Var out = model.forward(Var(x.rows(b0, b1).to(layout.dtype)));
      const Tensor tb = t.rows(b0, b1).to(layout.dtype);
      Var l = loss == nn::LossKind::cross_entropy ? ad::softmax_xent_mean(out, tb) : ad::mse_mean(out, tb);
      backward(l, Tensor::full({1}, static_cast<double>(b1 - b0) / static_cast<double>(n), layout.dtype,
                               layout.device));
    }
  } catch (...) {
    model.set_training(was_training);
    for (std::size_t i = 0; i < params.size(); ++i) params[i].var->node()->grad = saved[i];
    throw;
  }
  model.set_training(was_training);
  Tensor g = Tensor::empty({layout.m}, layout.dtype, layout.device);
  int64_t off = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor& pv = params[i].var->value();
    const Tensor& pg = params[i].var->grad();
    Tensor dst = g.rows(off, off + pv.numel());
    if (pg.defined())
      dst.copy_from(pg);
    else
      ops::fill(dst, 0.0);  // a parameter the loss does not reach
    off += pv.numel();
    params[i].var->node()->grad = saved[i];
  }
  return g;
}

Tensor explicit_hessian(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                        int64_t batch, double rel_step) {
  if (rel_step < 0.0 || !std::isfinite(rel_step))
    throw std::invalid_argument("explicit_hessian: rel_step must be >= 0 (0 = automatic)");
  const double h_rel = rel_step > 0.0 ? rel_step : std::cbrt(std::numeric_limits<double>::epsilon());
  nn::Init init;
  init.dtype = DType::f64;
  init.device = params_of(model, "explicit_hessian").device;
  auto m64 = nn::make_model(model.spec(), init);
  m64->copy_parameters_from(model);
  const Tensor x64 = x.to(DType::f64), t64 = t.to(DType::f64);
  const Tensor theta = flat_parameters(*m64).to(Device::cpu());
  const std::vector<double> th = theta.to_vector();
  const int64_t m = static_cast<int64_t>(th.size());
  std::vector<double> hess(static_cast<std::size_t>(m * m));
  std::vector<double> probe = th;
  for (int64_t j = 0; j < m; ++j) {
    const double h = h_rel * std::max(1.0, std::fabs(th[j]));
    probe[j] = th[j] + h;
    set_flat_parameters(*m64, Tensor::from_vector(probe, {m}, DType::f64));
    const std::vector<double> gp = flat_gradient(*m64, x64, t64, loss, batch).to_vector();
    probe[j] = th[j] - h;
    set_flat_parameters(*m64, Tensor::from_vector(probe, {m}, DType::f64));
    const std::vector<double> gm = flat_gradient(*m64, x64, t64, loss, batch).to_vector();
    probe[j] = th[j];
    // (theta_j + h) - (theta_j - h) is not exactly 2h in floating point: divide by the step
    // actually taken.
    const double step = (th[j] + h) - (th[j] - h);
    for (int64_t i = 0; i < m; ++i) hess[i * m + j] = (gp[i] - gm[i]) / step;
  }
  return Tensor::from_vector(hess, {m, m}, DType::f64, init.device);
}

}  // namespace attr
}  // namespace iif
