// Hessian- and Gauss-Newton-vector products of an Mlp's mean training loss by the R-operator,
// the flat gradient, and the finite-difference Hessian oracle (see hvp.h).
//
// The R-operator (Pearlmutter 1994, "Fast exact multiplication by the Hessian"): for any
// quantity q(theta) of the forward or backward pass, R{q} = d/dr q(theta + r v) at r = 0. Then
// R{grad L} = H v. Applying R to every line of the forward pass and of the backward pass gives
// two extra passes of the same cost (forward-over-reverse). For one batch of B samples, with
// V_W, V_b the blocks of v belonging to a Linear layer's W (out,in) and b (out):
//
// Forward, Linear:  z = a W^T + b                       (B,out)
//                   R{z} = R{a} W^T + a V_W^T + V_b                                   (F1)
// Forward, ReLU:    y = relu(z),  R{y} = 1[z > 0] .* R{z}                              (F2)
// Loss gradient at the output f, per sample (divided by N: L is a mean over the dataset):
//   cross-entropy:  g = (sum_c t_c) p - t,  p = softmax(f)
//                   R{g} = (sum_c t_c) (diag(p) - p p^T) R{f}                          (L1)
//   squared error:  g = 2 (f - t),  R{g} = 2 R{f}                                      (L2)
// Backward, Linear (delta = dL/dz (B,out), layer input a (B,in)):
//   dW = delta^T a                 R{dW} = R{delta}^T a + delta^T R{a}                 (B1)
//   db = sum_b delta               R{db} = sum_b R{delta}                              (B2)
//   da = delta W                   R{da} = R{delta} W + delta V_W                      (B3)
// Backward, ReLU:   dz = 1[z > 0] .* dy,   R{dz} = 1[z > 0] .* R{dy}                   (B4)
//   (the mask's derivative is zero almost everywhere: ReLU has no second-order term).
// Flatten is a reshape and Dropout in evaluation mode the identity: R passes through both.
//
// Gauss-Newton: G v = J^T H_f J v. (F1, F2) give R{f} = J v, (L1, L2) give H_f J v, and the
// backward pass of that cotangent is J^T (.): (B1)-(B3) without their delta terms. Dropping
// them is exactly dropping the network's own curvature, so G needs no first-order delta at all.
#include "attribution/hvp.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

#include "engine/autodiff.h"
#include "engine/ops.h"

namespace iif {
namespace attr {
namespace {

enum class StepKind { linear, relu, identity, flatten };

struct Step {
  StepKind kind;
  nn::Linear* lin = nullptr;
  int64_t w_off = -1, b_off = -1;  // offsets of W and b in the flat vector (-1: no bias)
};

// The parameters in named_parameters() order: each one's place in the flat vector (M entries),
// their dtype and device. Both ways of forming products (the R-operator plan and autodiff) and
// every argument check read this one layout.
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

// The model's layers as a list of steps, with each Linear's place in the flat vector.
struct Plan {
  Params layout;
  std::vector<Step> steps;
};

// The R-operator plan of a chain model, or nothing (with the reason in *why) when the model is
// not a chain of the layers the plan is written for.
std::optional<Plan> chain_plan(nn::Model& model, const char* what, std::string* why) {
  Plan plan;
  plan.layout = params_of(model, what);
  // The plan is a chain: the leaves of the module tree in forward order, under the root and
  // Sequential containers only (a residual branch cannot be written as a chain).
  std::vector<nn::Module*> leaves;
  std::string refusal;
  model.visit([&](const std::string& prefix, nn::Module& l) {
    std::vector<std::pair<std::string, nn::Module*>> kids;
    l.own_children(kids);
    if (kids.empty()) leaves.push_back(&l);
    else if (&l != &model && typeid(l) != typeid(nn::Sequential) && refusal.empty())  // a Residual, say
      refusal = std::string(what) + ": container " + prefix + " (" + l.kind() +
                ") is not supported; the R-operator is written for a chain of Sequential layers";
  });
  for (std::size_t i = 0; i < leaves.size() && refusal.empty(); ++i) {
    nn::Module& l = *leaves[i];
    Step s;
    if (auto* lin = dynamic_cast<nn::Linear*>(&l)) {
      s.kind = StepKind::linear;
      s.lin = lin;
      s.w_off = plan.layout.offset_of(lin->weight);
      if (lin->bias.defined()) s.b_off = plan.layout.offset_of(lin->bias);
    } else if (dynamic_cast<nn::ReLU*>(&l)) {
      s.kind = StepKind::relu;
    } else if (dynamic_cast<nn::Dropout*>(&l)) {
      s.kind = StepKind::identity;  // evaluation mode
    } else if (dynamic_cast<nn::Flatten*>(&l)) {
      s.kind = StepKind::flatten;
    } else {
      refusal = std::string(what) + ": layer " + std::to_string(i) + " (" + l.kind() +
                ") is not supported; the R-operator is written for Linear, ReLU, Dropout and Flatten";
      break;
    }
    plan.steps.push_back(s);
  }
  if (!refusal.empty()) {
    if (why) *why = refusal;
    return std::nullopt;
  }
  return plan;
}

// A (rows, cols) view of flat[off, off + rows*cols).
Tensor block(const Tensor& flat, int64_t off, int64_t rows, int64_t cols) {
  return flat.rows(off, off + rows * cols).reshape({rows, cols});
}
Tensor block(const Tensor& flat, int64_t off, int64_t n) { return flat.rows(off, off + n); }

Tensor flatten2d(const Tensor& x) {
  const int64_t b = x.ndim() ? x.dim(0) : 0;
  return x.ndim() == 2 ? x : x.reshape({b, b ? x.numel() / b : 0});
}

Tensor relu_mask(const Tensor& z, const Tensor& dy) {  // 1[z > 0] .* dy
  Tensor out = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
  ops::relu_backward(z, dy, 0.0, out);
  return out;
}

void check_data(const char* what, const Params& plan, const Tensor& x, const Tensor& t) {
  if (!x.defined() || !t.defined())
    throw std::invalid_argument(std::string(what) + ": undefined inputs or targets");
  if (x.ndim() < 1 || t.ndim() != 2 || t.dim(0) != x.dim(0))
    throw std::invalid_argument(std::string(what) + ": targets " + t.shape().str() +
                                " do not match inputs " + x.shape().str() + " (expected (N, outputs))");
  if (x.dim(0) == 0) throw std::invalid_argument(std::string(what) + ": empty dataset");
  if (x.device() != plan.device || t.device() != plan.device)
    throw std::invalid_argument(std::string(what) + ": data and model live on different devices (" +
                                x.device().str() + ", " + t.device().str() + ", " + plan.device.str() + ")");
}

// v must hold one value per parameter, on the model's device; the batch must be positive.
void check_vector(const char* what, const Params& plan, const Tensor& v) {
  if (!v.defined() || v.numel() != plan.m)
    throw std::invalid_argument(std::string(what) + ": the vector has " +
                                (v.defined() ? std::to_string(v.numel()) : std::string("no")) +
                                " elements; the model has " + std::to_string(plan.m) + " parameters");
  if (v.device() != plan.device)
    throw std::invalid_argument(std::string(what) + ": vector on " + v.device().str() + ", model on " +
                                plan.device.str());
}
void check_batch(const char* what, int64_t batch) {
  if (batch <= 0)
    throw std::invalid_argument(std::string(what) + ": batch must be positive, got " + std::to_string(batch));
}

// What the products at fixed parameters share, for one batch: every step's input (for a ReLU,
// its pre-activation), the outputs, the targets and, for the Hessian, the cotangent dL/dz at
// each Linear's output (already divided by N). Computed once; reused by every product.
struct BatchCache {
  std::vector<Tensor> in;     // in[s]: the input of step s
  Tensor out, targets;        // f (B, outputs) and t (B, outputs)
  std::vector<Tensor> delta;  // delta[s]: dL/d(output of Linear step s); undefined otherwise / for G
};

BatchCache forward_batch(const Plan& plan, const Tensor& xb, const Tensor& tb, nn::LossKind loss,
                         double inv_n, bool gauss_newton) {
  const std::size_t n_steps = plan.steps.size();
  BatchCache c;
  c.in.resize(n_steps);
  c.delta.resize(n_steps);
  Tensor a = flatten2d(xb);
  for (std::size_t s = 0; s < n_steps; ++s) {
    const Step& st = plan.steps[s];
    c.in[s] = a;
    switch (st.kind) {
      case StepKind::linear: {
        const nn::Linear& l = *st.lin;
        if (a.ndim() != 2 || a.dim(1) != l.in_features)
          throw std::invalid_argument("hessian_vector_product: layer input " + a.shape().str() +
                                      " does not fit Linear(" + std::to_string(l.in_features) +
                                      " -> " + std::to_string(l.out_features) + ")");
        Tensor z = ops::matmul(a, l.weight.value(), false, true);
        if (st.b_off >= 0) ops::add_row_vector(l.bias.value(), z);
        a = std::move(z);
        break;
      }
      case StepKind::relu: a = ops::relu(a); break;
      case StepKind::flatten: a = flatten2d(a); break;
      case StepKind::identity: break;
    }
  }
  if (a.shape() != tb.shape())
    throw std::invalid_argument("hessian_vector_product: model outputs " + a.shape().str() +
                                " do not match targets " + tb.shape().str());
  c.out = a;
  c.targets = tb;
  if (gauss_newton) return c;
  // The first-order backward chain (B1-B4 without R): delta at each Linear's output.
  Tensor delta = Tensor::empty(a.shape(), a.dtype(), a.device());
  Tensor per_sample = Tensor::empty({a.dim(0)}, a.dtype(), a.device());
  if (loss == nn::LossKind::cross_entropy) ops::softmax_xent(a, tb, per_sample, &delta);
  else ops::mse(a, tb, per_sample, &delta);
  delta = ops::scale(delta, inv_n);
  std::size_t first_linear = n_steps;
  for (std::size_t s = 0; s < n_steps && first_linear == n_steps; ++s)
    if (plan.steps[s].kind == StepKind::linear) first_linear = s;
  for (std::size_t s = n_steps; s-- > first_linear;) {
    const Step& st = plan.steps[s];
    if (st.kind == StepKind::linear) {
      c.delta[s] = delta;
      if (s > first_linear) delta = ops::matmul(delta, st.lin->weight.value());
    } else if (st.kind == StepKind::relu) {
      delta = relu_mask(c.in[s], delta);
    } else if (st.kind == StepKind::flatten) {
      delta = delta.reshape(c.in[s].shape());
    }
  }
  return c;
}

// One batch's contribution to C v (C = H or G of the mean loss over N samples, inv_n = 1/N),
// written into `out` (M), overwriting it: the R-forward and R-backward passes over a cached
// forward pass.
void rop_batch(const Plan& plan, const BatchCache& c, nn::LossKind loss, const Tensor& v, double inv_n,
               bool gauss_newton, Tensor& out) {
  const std::size_t n_steps = plan.steps.size();
  std::vector<Tensor> rin(n_steps);  // each step's R{input}; undefined = 0
  Tensor ra;
  // ---- R-forward (F1, F2)
  for (std::size_t s = 0; s < n_steps; ++s) {
    const Step& st = plan.steps[s];
    rin[s] = ra;
    switch (st.kind) {
      case StepKind::linear: {
        const nn::Linear& l = *st.lin;
        const Tensor vw = block(v, st.w_off, l.out_features, l.in_features);
        Tensor rz = ops::matmul(c.in[s], vw, false, true);                           // a V_W^T
        if (ra.defined()) ops::gemm(false, true, 1.0, ra, l.weight.value(), 1.0, rz);  // + R{a} W^T
        if (st.b_off >= 0) ops::add_row_vector(block(v, st.b_off, l.out_features), rz);  // + V_b
        ra = std::move(rz);
        break;
      }
      case StepKind::relu:
        if (ra.defined()) ra = relu_mask(c.in[s], ra);
        break;
      case StepKind::flatten:
        if (ra.defined()) ra = flatten2d(ra);
        break;
      case StepKind::identity:
        break;
    }
  }
  if (!ra.defined()) ra = Tensor::zeros(c.out.shape(), c.out.dtype(), c.out.device());

  // ---- R of the loss gradient (L1, L2), divided by N
  Tensor rdelta = loss == nn::LossKind::cross_entropy ? ops::softmax_xent_hvp(c.out, c.targets, ra)
                                                      : ops::scale(ra, 2.0);
  rdelta = ops::scale(rdelta, inv_n);

  // ---- R-backward (B1-B4)
  std::size_t first_linear = n_steps;
  for (std::size_t s = 0; s < n_steps; ++s)
    if (plan.steps[s].kind == StepKind::linear) {
      first_linear = s;
      break;
    }
  for (std::size_t s = n_steps; s-- > 0;) {
    const Step& st = plan.steps[s];
    switch (st.kind) {
      case StepKind::linear: {
        const nn::Linear& l = *st.lin;
        Tensor dw = block(out, st.w_off, l.out_features, l.in_features);
        ops::gemm(true, false, 1.0, rdelta, c.in[s], 0.0, dw);  // R{delta}^T a
        if (!gauss_newton && rin[s].defined())
          ops::gemm(true, false, 1.0, c.delta[s], rin[s], 1.0, dw);  // + delta^T R{a}
        if (st.b_off >= 0) {
          Tensor db = block(out, st.b_off, l.out_features);
          ops::sum_rows(rdelta, 0.0, db);
        }
        if (s > first_linear) {  // the cotangents of the layer input are needed further down
          Tensor rda = ops::matmul(rdelta, l.weight.value());  // R{delta} W
          if (!gauss_newton) {
            const Tensor vw = block(v, st.w_off, l.out_features, l.in_features);
            ops::gemm(false, false, 1.0, c.delta[s], vw, 1.0, rda);  // + delta V_W
          }
          rdelta = std::move(rda);
        }
        break;
      }
      case StepKind::relu:
        if (s > first_linear) rdelta = relu_mask(c.in[s], rdelta);
        break;
      case StepKind::flatten:
        if (s > first_linear) rdelta = rdelta.reshape(c.in[s].shape());
        break;
      case StepKind::identity:
        break;
    }
  }
}

// ---- the same products from autodiff's double backward: any model of differentiable ops ----
//
// Hessian: g = grad L_b (create_graph), then H v = d<g, v>/dtheta: one reverse pass over the
// gradient's graph, seeded with v. Gauss-Newton: with u a dummy cotangent of the outputs,
// J^T u = grad(f, seed u) (create_graph) is linear in u, so d<J^T u, v>/du = J v (forward mode
// from two reverse passes); then H_f J v in closed form and one reverse pass gives J^T H_f J v.

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
    b.g = grad(l, seed, a.vars, true);
  } else {
    const Tensor& f = b.out.value();
    b.u = Var(Tensor::zeros(f.shape(), f.dtype(), f.device()), true);
    b.ju = grad({b.out}, {b.u}, a.vars, true);
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
  std::vector<Var> res;
  if (b.g.empty()) {
    // J v, then H_f J v / N, then J^T of it.
    const Tensor jv = roots.empty() ? Tensor::zeros(b.out.shape(), a.dtype, a.device)
                                    : grad(roots, seeds, {b.u}, false)[0].value();
    const Tensor hjv = loss == nn::LossKind::cross_entropy
                           ? ops::scale(ops::softmax_xent_hvp(b.out.value(), b.targets, jv), inv_n)
                           : ops::scale(jv, 2.0 * inv_n);
    res = grad({b.out}, {Var(hjv)}, a.vars, false);
  } else if (!roots.empty()) {
    res = grad(roots, seeds, a.vars, false);
  }
  for (std::size_t p = 0; p < a.vars.size(); ++p) {
    Tensor dst = part.rows(a.offsets[p], a.offsets[p] + a.vars[p].value().numel());
    if (res.empty()) ops::fill(dst, 0.0);
    else dst.copy_from(res[p].value().reshape({dst.numel()}));
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

namespace {
// The plan to use for `method`: none for autodiff (also when `automatic` meets a model the plan
// cannot express); r_operator without a plan is an error naming the layer.
std::optional<Plan> plan_for(nn::Model& model, HvpMethod method, const char* what) {
  if (method == HvpMethod::autodiff) return std::nullopt;
  std::string why;
  std::optional<Plan> plan = chain_plan(model, what, &why);
  if (!plan && method == HvpMethod::r_operator) throw std::invalid_argument(why);
  return plan;
}
}  // namespace

Tensor hessian_vector_product(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                              const Tensor& v, const HvpOptions& opt) {
  const std::optional<Plan> chain = plan_for(model, opt.method, "hessian_vector_product");
  if (!chain) {
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
  const Plan& plan = *chain;
  check_data("hessian_vector_product", plan.layout, x, t);
  check_vector("hessian_vector_product", plan.layout, v);
  check_batch("hessian_vector_product", opt.batch);
  const Tensor vm = v.reshape({plan.layout.m}).to(plan.layout.dtype);
  const int64_t n = x.dim(0);
  const double inv_n = 1.0 / static_cast<double>(n);
  const bool gn = opt.curvature == Curvature::gauss_newton;
  Tensor part = Tensor::empty({plan.layout.m}, plan.layout.dtype, plan.layout.device);
  Tensor total = Tensor::zeros({plan.layout.m}, DType::f64, plan.layout.device);
  for (int64_t b0 = 0; b0 < n; b0 += opt.batch) {
    const int64_t b1 = std::min(n, b0 + opt.batch);
    const BatchCache c = forward_batch(plan, x.rows(b0, b1).to(plan.layout.dtype), t.rows(b0, b1).to(plan.layout.dtype),
                                       loss, inv_n, gn);
    rop_batch(plan, c, loss, vm, inv_n, gn, part);
    ops::axpby(1.0, part.to(DType::f64), 1.0, total);
  }
  return total.to(v.dtype());
}

struct CurvatureOperator::State {
  Plan plan;
  std::vector<BatchCache> batches;
  std::vector<AdBatch> ad_batches;
  nn::LossKind loss;
  double inv_n;
  bool gauss_newton;
};

CurvatureOperator::CurvatureOperator(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                                     const HvpOptions& opt)
    : st_(std::make_shared<State>()) {
  std::optional<Plan> chain = plan_for(model, opt.method, "CurvatureOperator");
  if (!chain) {
    st_->plan.layout = params_of(model, "CurvatureOperator");  // no steps: products by autodiff
    check_data("CurvatureOperator", st_->plan.layout, x, t);
    check_batch("CurvatureOperator", opt.batch);
    st_->loss = loss;
    st_->inv_n = 1.0 / static_cast<double>(x.dim(0));
    st_->gauss_newton = opt.curvature == Curvature::gauss_newton;
    EvalScope scope(model);
    for (int64_t b0 = 0; b0 < x.dim(0); b0 += opt.batch) {
      const int64_t b1 = std::min(x.dim(0), b0 + opt.batch);
      const DType dt = st_->plan.layout.dtype;
      st_->ad_batches.push_back(ad_batch(model, st_->plan.layout, x.rows(b0, b1).to(dt), t.rows(b0, b1).to(dt), loss,
                                         st_->inv_n, st_->gauss_newton));
    }
    return;
  }
  st_->plan = std::move(*chain);
  check_data("CurvatureOperator", st_->plan.layout, x, t);
  check_batch("CurvatureOperator", opt.batch);
  const int64_t n = x.dim(0);
  st_->loss = loss;
  st_->inv_n = 1.0 / static_cast<double>(n);
  st_->gauss_newton = opt.curvature == Curvature::gauss_newton;
  for (int64_t b0 = 0; b0 < n; b0 += opt.batch) {
    const int64_t b1 = std::min(n, b0 + opt.batch);
    st_->batches.push_back(forward_batch(st_->plan, x.rows(b0, b1).to(st_->plan.layout.dtype),
                                         t.rows(b0, b1).to(st_->plan.layout.dtype), loss, st_->inv_n,
                                         st_->gauss_newton));
  }
}

int64_t CurvatureOperator::dim() const { return st_->plan.layout.m; }

Tensor CurvatureOperator::apply(const Tensor& v) const {
  const Params& layout = st_->plan.layout;
  check_vector("CurvatureOperator", layout, v);
  const Tensor vm = v.reshape({layout.m}).to(layout.dtype);
  Tensor part = Tensor::empty({layout.m}, layout.dtype, layout.device);
  Tensor total = Tensor::zeros({layout.m}, DType::f64, layout.device);
  for (const BatchCache& c : st_->batches) {
    rop_batch(st_->plan, c, st_->loss, vm, st_->inv_n, st_->gauss_newton, part);
    ops::axpby(1.0, part.to(DType::f64), 1.0, total);
  }
  for (const AdBatch& b : st_->ad_batches) {
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
  const Params plan = params_of(model, "flat_gradient");
  check_data("flat_gradient", plan, x, t);
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
      Var out = model.forward(Var(x.rows(b0, b1).to(plan.dtype)));
      const Tensor tb = t.rows(b0, b1).to(plan.dtype);
      Var l = loss == nn::LossKind::cross_entropy ? ad::softmax_xent_mean(out, tb) : ad::mse_mean(out, tb);
      backward(l, Tensor::full({1}, static_cast<double>(b1 - b0) / static_cast<double>(n), plan.dtype,
                               plan.device));
    }
  } catch (...) {
    model.set_training(was_training);
    for (std::size_t i = 0; i < params.size(); ++i) params[i].var->node()->grad = saved[i];
    throw;
  }
  model.set_training(was_training);
  Tensor g = Tensor::empty({plan.m}, plan.dtype, plan.device);
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
