// A test oracle: Hessian- and Gauss-Newton-vector products of a chain MLP's mean loss by
// Pearlmutter's R-operator, written out by hand for Linear, ReLU, Flatten and Dropout (evaluation
// mode). The engine forms these products by autodiff's double backward for any model
// (attribution/hvp.h); this independent derivation is what they are held to on the MLP
// (tests/test_hvp.cpp) and what bench_engine compares their speed with. Header-only, not part of
// the library.
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
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

#include "attribution/hvp.h"
#include "engine/ops.h"
#include "nn/models.h"

namespace iif {
namespace oracle {
namespace rop_detail {

enum class StepKind { linear, relu, identity, flatten };

struct Step {
  StepKind kind;
  nn::Linear* lin = nullptr;
  int64_t w_off = -1, b_off = -1;  // offsets of W and b in the flat vector (-1: no bias)
};


// The model's leaves as a chain of steps, each Linear with its W and b offsets in the flat
// vector (named_parameters() order). Throws std::invalid_argument for anything else.
struct Plan {
  std::vector<Step> steps;
  int64_t m = 0;
  DType dtype = DType::f32;
};

inline Plan chain_plan(nn::Model& model) {
  Plan plan;
  std::vector<std::pair<Var, int64_t>> offsets;
  for (const auto& p : model.named_parameters()) {
    offsets.push_back({*p.var, plan.m});
    plan.m += p.var->value().numel();
    plan.dtype = p.var->value().dtype();
  }
  const auto offset_of = [&](const Var& v) {
    for (const auto& o : offsets)
      if (o.first.node() == v.node()) return o.second;
    throw std::logic_error("r_operator: a layer's parameter is not among the model's");
  };
  std::vector<nn::Module*> leaves;
  model.visit([&](const std::string& prefix, nn::Module& l) {
    std::vector<std::pair<std::string, nn::Module*>> kids;
    l.own_children(kids);
    if (kids.empty()) leaves.push_back(&l);
    else if (&l != &model && typeid(l) != typeid(nn::Sequential))  // a Residual, say
      throw std::invalid_argument("r_operator: container " + prefix + " (" + l.kind() +
                                  ") is not a chain of Sequential layers");
  });
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    nn::Module& l = *leaves[i];
    Step s;
    if (auto* lin = dynamic_cast<nn::Linear*>(&l)) {
      s.kind = StepKind::linear;
      s.lin = lin;
      s.w_off = offset_of(lin->weight);
      if (lin->bias.defined()) s.b_off = offset_of(lin->bias);
    } else if (dynamic_cast<nn::ReLU*>(&l)) {
      s.kind = StepKind::relu;
    } else if (dynamic_cast<nn::Dropout*>(&l)) {
      s.kind = StepKind::identity;  // evaluation mode
    } else if (dynamic_cast<nn::Flatten*>(&l)) {
      s.kind = StepKind::flatten;
    } else {
      throw std::invalid_argument("r_operator: layer " + std::to_string(i) + " (" + l.kind() +
                                  ") is not Linear, ReLU, Dropout or Flatten");
    }
    plan.steps.push_back(s);
  }
  return plan;
}

// A (rows, cols) view of flat[off, off + rows*cols).
inline Tensor block(const Tensor& flat, int64_t off, int64_t rows, int64_t cols) {
  return flat.rows(off, off + rows * cols).reshape({rows, cols});
}
inline Tensor block(const Tensor& flat, int64_t off, int64_t n) { return flat.rows(off, off + n); }

inline Tensor flatten2d(const Tensor& x) {
  const int64_t b = x.ndim() ? x.dim(0) : 0;
  return x.ndim() == 2 ? x : x.reshape({b, b ? x.numel() / b : 0});
}

inline Tensor relu_mask(const Tensor& z, const Tensor& dy) {  // 1[z > 0] .* dy
  Tensor out = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
  ops::relu_backward(z, dy, 0.0, out);
  return out;
}


// What the products at fixed parameters share, for one batch: every step's input (for a ReLU,
// its pre-activation), the outputs, the targets and, for the Hessian, the cotangent dL/dz at
// each Linear's output (already divided by N). Computed once; reused by every product.
struct BatchCache {
  std::vector<Tensor> in;     // in[s]: the input of step s
  Tensor out, targets;        // f (B, outputs) and t (B, outputs)
  std::vector<Tensor> delta;  // delta[s]: dL/d(output of Linear step s); undefined otherwise / for G
};

inline BatchCache forward_batch(const Plan& plan, const Tensor& xb, const Tensor& tb, nn::LossKind loss,
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
inline void rop_batch(const Plan& plan, const BatchCache& c, nn::LossKind loss, const Tensor& v, double inv_n,
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

}  // namespace rop_detail

// The products at fixed parameters and data with the forward pass (and, for H, the first-order
// backward chain) cached per batch, as attr::CurvatureOperator; apply(v) sums the batches'
// contributions in float64 and returns v's dtype and shape.
class ROperator {
 public:
  ROperator(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
            attr::Curvature curvature = attr::Curvature::hessian, int64_t batch = 256)
      : plan_(rop_detail::chain_plan(model)), loss_(loss), gn_(curvature == attr::Curvature::gauss_newton) {
    const int64_t n = x.dim(0);
    inv_n_ = 1.0 / static_cast<double>(n);
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
      const int64_t b1 = std::min(n, b0 + batch);
      batches_.push_back(rop_detail::forward_batch(plan_, x.rows(b0, b1).to(plan_.dtype), t.rows(b0, b1).to(plan_.dtype),
                                                   loss, inv_n_, gn_));
    }
  }
  Tensor apply(const Tensor& v) const {
    if (v.numel() != plan_.m) throw std::invalid_argument("r_operator: vector of the wrong size");
    const Tensor vm = v.reshape({plan_.m}).to(plan_.dtype);
    Tensor part = Tensor::empty({plan_.m}, plan_.dtype, vm.device());
    Tensor total = Tensor::zeros({plan_.m}, DType::f64, vm.device());
    for (const rop_detail::BatchCache& c : batches_) {
      rop_detail::rop_batch(plan_, c, loss_, vm, inv_n_, gn_, part);
      ops::axpby(1.0, part.to(DType::f64), 1.0, total);
    }
    return total.to(v.dtype()).reshape(v.shape());
  }

 private:
  rop_detail::Plan plan_;
  nn::LossKind loss_;
  bool gn_;
  double inv_n_ = 0;
  std::vector<rop_detail::BatchCache> batches_;
};

// One product, as attr::hessian_vector_product.
inline Tensor r_operator_product(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                                 const Tensor& v, attr::Curvature curvature = attr::Curvature::hessian,
                                 int64_t batch = 256) {
  return ROperator(model, x, t, loss, curvature, batch).apply(v);
}

}  // namespace oracle
}  // namespace iif
