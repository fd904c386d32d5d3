// The autodiff core (graph, topological backward) and its differentiable ops.
#include "engine/autodiff.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "engine/ops.h"

namespace iif {

Var::Var(Tensor value, bool requires_grad) {
  node_ = std::make_shared<Node>();
  node_->value = std::move(value);
  node_->requires_grad = requires_grad;
}

const Tensor& Var::value() const {
  if (!node_) throw std::logic_error("Var::value: undefined variable");
  return node_->get();
}

Tensor& Var::mutable_value() {
  if (!node_) throw std::logic_error("Var::mutable_value: undefined variable");
  node_->get();
  return node_->value;
}

const Shape& Var::shape() const {
  if (!node_) throw std::logic_error("Var::shape: undefined variable");
  return node_->shape();
}

const Tensor& Var::grad() const {
  if (!node_) throw std::logic_error("Var::grad: undefined variable");
  return node_->grad;
}

void Var::zero_grad() {
  if (node_) node_->grad = Tensor();
}

Var Var::of(std::shared_ptr<Node> node) {
  Var v;
  v.node_ = std::move(node);
  return v;
}

namespace {

thread_local bool g_grad_mode = true;

// sum += g. A tensor may be shared with another node's gradient (a reshape view, an add's two
// inputs, a seed the caller holds), so it is written in place only when nothing else refers to
// it: into the sum, else into g, else into a new tensor. All three round alike (x + y).
void accumulate(Tensor& sum, Tensor g) {
  if (!sum.defined()) sum = std::move(g);
  else if (sum.sole_owner()) ops::axpby(1.0, g, 1.0, sum);
  else if (g.sole_owner()) {
    ops::axpby(1.0, sum, 1.0, g);
    sum = std::move(g);
  } else {
    sum = ops::add(sum, g);
  }
}

// The same for a variable: a deferred value that nothing else holds is added straight into a
// sum that nothing else refers to (Node::deferred).
// Whether v's value can be formed straight into a sum: deferred, and nothing else holds it.
bool fusable(const Var& v) { return v.node()->deferred && v.node().use_count() == 1; }

void accumulate(Tensor& sum, Var v) {
  if (sum.defined() && sum.sole_owner() && fusable(v)) {
    v.node()->deferred(&sum);
    return;
  }
  Tensor g = v.value();
  v = Var();
  accumulate(sum, std::move(g));
}

// One running pass: the gradient of each node reached so far.
struct Pass {
  bool create_graph = false;
  bool lazy = false;              // create_graph: the products nobody reads are never computed
  bool accumulate_leaves = true;  // backward(): into leaf.grad (kept across passes); grad(): returned
  std::unordered_map<Node*, Var> g;
  std::unordered_map<Node*, Tensor> into;  // grad_into(): leaves whose gradient is added in place here

  void add(Node& n, Var v) {
    if (n.is_leaf() && accumulate_leaves) {
      accumulate(n.grad, std::move(v));
      return;
    }
    if (n.is_leaf() && !into.empty()) {
      auto it = into.find(&n);
      if (it != into.end()) {  // the caller's tensor: written in place whoever else refers to it
        if (fusable(v)) v.node()->deferred(&it->second);
        else ops::axpby(1.0, v.value(), 1.0, it->second);
        return;
      }
    }
    Var& slot = g[&n];
    if (!slot.defined()) {
      slot = std::move(v);
    } else if (create_graph) {
      slot = ad::add(slot, v);
    } else {
      // A first-order pass records nothing: the slot's Var is this pass's alone.
      Tensor sum = slot.value();
      slot = Var();
      accumulate(sum, std::move(v));
      slot = Var(std::move(sum));
    }
  }
};

thread_local Pass* g_pass = nullptr;

}  // namespace

bool grad_mode_enabled() { return g_grad_mode; }
NoGradGuard::NoGradGuard() : previous_(g_grad_mode) { g_grad_mode = false; }
NoGradGuard::~NoGradGuard() { g_grad_mode = previous_; }

void accumulate_grad(Node& n, Tensor g) {
  if (g_pass) g_pass->add(n, Var(std::move(g)));
  else accumulate(n.grad, std::move(g));
}

namespace {
// The node of an op: it records its inputs (and so will run a backward function) only while
// grad mode is on and some input requires a gradient.
Var new_node(Tensor value, const std::vector<Var>& inputs, const char* op) {
  auto node = std::make_shared<Node>();
  node->value = std::move(value);
  node->op = op;
  if (g_grad_mode)
    for (const Var& in : inputs) node->requires_grad = node->requires_grad || in.requires_grad();
  if (node->requires_grad)
    for (const Var& in : inputs) node->inputs.push_back(in.node());
  return Var::of(std::move(node));
}
}  // namespace

Var make_op(Tensor value, std::vector<Var> inputs, const char* op, BackwardFn bw) {
  Var v = new_node(std::move(value), inputs, op);
  if (v.requires_grad()) v.node()->backward = std::move(bw);
  return v;
}

Var make_first_order_op(Tensor value, std::vector<Var> inputs, const char* op, TensorBackwardFn bw) {
  Var v = new_node(std::move(value), inputs, op);
  if (v.requires_grad()) v.node()->tensor_backward = std::move(bw);
  return v;
}

namespace {
// An op whose value may be deferred (Node::deferred): inside a first-order pass, and inside a lazy
// create-graph pass; otherwise computed now.
Var make_deferrable_op(const Shape& shape, std::function<Tensor(Tensor*)> compute, std::vector<Var> inputs,
                       const char* op, BackwardFn bw) {
  const bool defer = g_pass && (!g_pass->create_graph || g_pass->lazy);
  Var v = new_node(defer ? Tensor() : compute(nullptr), inputs, op);
  if (defer) {
    v.node()->deferred = std::move(compute);
    v.node()->deferred_shape = shape;
  }
  if (!v.requires_grad()) return v;
  v.node()->backward = std::move(bw);
  return v;
}
}  // namespace

namespace {

// Iterative post-order DFS from every root: deep graphs must not overflow the stack.
std::vector<Node*> topo_order(const std::vector<Node*>& roots) {
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  for (Node* root : roots) {
    if (!seen.insert(root).second) continue;
    std::vector<std::pair<Node*, std::size_t>> stack{{root, 0}};
    while (!stack.empty()) {
      auto& [n, i] = stack.back();
      if (i < n->inputs.size()) {
        Node* c = n->inputs[i++].get();
        if (c->requires_grad && seen.insert(c).second) stack.push_back({c, 0});
      } else {
        order.push_back(n);
        stack.pop_back();
      }
    }
  }
  return order;  // inputs before the nodes that use them
}

void run(Pass& p, const std::vector<Var>& roots, const std::vector<Var>& seeds,
         const std::vector<Var>* wrt = nullptr) {
  if (roots.size() != seeds.size())
    throw std::invalid_argument("backward: " + std::to_string(roots.size()) + " roots but " +
                                std::to_string(seeds.size()) + " seeds");
  std::vector<Node*> rn;
  for (std::size_t k = 0; k < roots.size(); ++k) {
    const Var& r = roots[k];
    if (!r.defined()) throw std::invalid_argument("backward: undefined root");
    if (!r.requires_grad())
      throw std::invalid_argument("backward: the root does not depend on any variable that "
                                  "requires a gradient");
    if (!seeds[k].defined()) throw std::invalid_argument("backward: undefined seed");
    if (seeds[k].shape() != r.shape())
      throw std::invalid_argument("backward (seed vs root): shapes " + seeds[k].shape().str() + " and " +
                                  r.shape().str() + " must be equal");
    rn.push_back(r.node().get());
  }
  const std::vector<Node*> order = topo_order(rn);
  for (Node* n : order)
    if (!n->is_leaf()) n->grad = Tensor();
  // With wrt given, only nodes from which some wrt variable is reachable are wanted (inputs
  // come before their users in `order`, so one sweep decides it).
  std::unordered_set<Node*> targets;
  if (wrt)
    for (const Var& w : *wrt) targets.insert(w.node().get());
  for (Node* n : order) {
    if (!wrt) {
      n->wanted = true;
      continue;
    }
    bool w = targets.count(n) > 0;
    for (std::size_t i = 0; i < n->inputs.size() && !w; ++i) w = n->inputs[i]->requires_grad && n->inputs[i]->wanted;
    n->wanted = w;
  }
  struct Restore {  // leave every node wanted for later passes
    const std::vector<Node*>& order;
    ~Restore() {
      for (Node* n : order) n->wanted = true;
    }
  } restore{order};
  // The pass is current for accumulate_grad; grad mode is on only while building a graph.
  struct Scope {
    Pass* outer;
    bool mode;
    Scope(Pass* p, bool on) : outer(g_pass), mode(g_grad_mode) { g_pass = p; g_grad_mode = on; }
    ~Scope() { g_pass = outer; g_grad_mode = mode; }
  } scope(&p, p.create_graph);
  for (std::size_t k = 0; k < roots.size(); ++k) p.add(*rn[k], seeds[k]);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* n = *it;
    if (n->is_leaf()) continue;
    auto gi = p.g.find(n);
    if (gi == p.g.end()) continue;
    const Var gy = gi->second;
    if (!p.lazy || !gy.node()->deferred) n->grad = gy.value();  // (a lazy pass computes nothing for it)
    if (n->backward) {
      std::vector<Var> gin = n->backward(*n, gy);
      for (std::size_t i = 0; i < gin.size() && i < n->inputs.size(); ++i) {
        Node& in = *n->inputs[i];
        if (!gin[i].defined() || !n->wants(i)) continue;
        if (gin[i].shape() != in.shape())
          throw std::logic_error(std::string("backward of op '") + n->op + "': gradient of input " +
                                 std::to_string(i) + " has shape " + gin[i].shape().str() +
                                 " but the input " + in.shape().str());
        p.add(in, std::move(gin[i]));  // (moved: a deferred value nothing else holds can be fused)
      }
    } else if (n->tensor_backward) {
      if (p.create_graph)
        throw std::logic_error(std::string("grad with create_graph: op '") + n->op +
                               "' has a first-order backward only (make_first_order_op); write its "
                               "backward with differentiable ops (make_op) to differentiate it twice");
      n->tensor_backward(*n);
    }
  }
}

}  // namespace

void backward(const Var& root, const Tensor& seed) { backward(std::vector<Var>{root}, {seed}); }

void backward(const std::vector<Var>& roots, const std::vector<Tensor>& seeds) {
  std::vector<Var> sv;
  for (const Tensor& t : seeds) sv.push_back(Var(t));  // never written: the caller holds it
  Pass p;
  run(p, roots, sv);
}

void backward(const Var& root) {
  if (!root.defined()) throw std::invalid_argument("backward: undefined root");
  if (root.value().numel() != 1)
    throw std::invalid_argument("backward: root of shape " + root.shape().str() +
                                " is not a scalar; pass a seed cotangent");
  const Tensor& v = root.value();
  backward(root, Tensor::full(v.shape(), 1.0, v.dtype(), v.device()));
}

std::vector<Var> grad(const Var& root, const Tensor& seed, const std::vector<Var>& wrt, bool create_graph,
                      bool lazy) {
  return grad(std::vector<Var>{root}, std::vector<Var>{Var(seed)}, wrt, create_graph, lazy);
}

std::vector<Var> grad(const std::vector<Var>& roots, const std::vector<Var>& seeds, const std::vector<Var>& wrt,
                      bool create_graph, bool lazy) {
  Pass p;
  p.create_graph = create_graph;
  p.lazy = create_graph && lazy;
  p.accumulate_leaves = false;
  run(p, roots, seeds, &wrt);
  std::vector<Var> out;
  for (const Var& w : wrt) {
    if (!w.defined()) throw std::invalid_argument("grad: undefined variable in wrt");
    auto it = p.g.find(w.node().get());
    if (it != p.g.end()) out.push_back(it->second);
    else out.push_back(Var(Tensor::zeros(w.shape(), w.value().dtype(), w.value().device())));
  }
  return out;
}

void grad_into(const std::vector<Var>& roots, const std::vector<Var>& seeds, const std::vector<Var>& wrt,
               std::vector<Tensor>& into) {
  if (into.size() != wrt.size())
    throw std::invalid_argument("grad_into: " + std::to_string(wrt.size()) + " variables but " +
                                std::to_string(into.size()) + " output tensors");
  Pass p;
  p.accumulate_leaves = false;
  for (std::size_t i = 0; i < wrt.size(); ++i) {
    if (!wrt[i].defined()) throw std::invalid_argument("grad_into: undefined variable in wrt");
    const Tensor& w = wrt[i].value();
    if (!into[i].defined() || into[i].shape() != w.shape() || into[i].dtype() != w.dtype() ||
        into[i].device() != w.device())
      throw std::invalid_argument("grad_into: output " + std::to_string(i) + " must be a " +
                                  std::string(dtype_name(w.dtype())) + " tensor of shape " + w.shape().str() +
                                  " on " + w.device().str());
    if (wrt[i].node()->is_leaf()) p.into.emplace(wrt[i].node().get(), into[i]);
  }
  run(p, roots, seeds, &wrt);
  for (std::size_t i = 0; i < wrt.size(); ++i) {  // a non-leaf's gradient ends in its slot
    if (wrt[i].node()->is_leaf()) continue;
    auto it = p.g.find(wrt[i].node().get());
    if (it != p.g.end()) ops::axpby(1.0, it->second.value(), 1.0, into[i]);
  }
}

namespace ad {

namespace {
// A(2-D) checks shared by matmul and linear.
int64_t rows_of(const Shape& s, bool trans) { return trans ? s[1] : s[0]; }
int64_t cols_of(const Shape& s, bool trans) { return trans ? s[0] : s[1]; }
}  // namespace

Var matmul(const Var& a, const Var& b, bool ta, bool tb) {
  const Shape &sa = a.shape(), &sb = b.shape();
  for (const Shape* s : {&sa, &sb})
    if (s->ndim() != 2)
      throw std::invalid_argument(std::string("matmul (") + (s == &sa ? "a" : "b") +
                                  "): expected a 2-D tensor, got shape " + s->str());
  if (cols_of(sa, ta) != rows_of(sb, tb))
    throw std::invalid_argument("matmul: " + sa.str() + (ta ? "^T" : "") + " times " + sb.str() +
                                (tb ? "^T" : "") + " do not fit");
  return make_deferrable_op(Shape{rows_of(sa, ta), cols_of(sb, tb)},
                 [a, b, ta, tb](Tensor* acc) {
                   if (!acc) return ops::matmul(a.value(), b.value(), ta, tb);
                   ops::gemm(ta, tb, 1.0, a.value(), b.value(), 1.0, *acc);
                   return *acc;
                 },
                 {a, b}, "matmul",
                 [ta, tb](Node& self, const Var& gy) -> std::vector<Var> {
                   const Var a = Var::of(self.inputs[0]), b = Var::of(self.inputs[1]);
                   Var da, db;
                   const bool need_a = self.wants(0), need_b = self.wants(1);
                   if (!ta && !tb) {  // y = A B
                     if (need_a) da = matmul(gy, b, false, true);
                     if (need_b) db = matmul(a, gy, true, false);
                   } else if (!ta && tb) {  // y = A B^T
                     if (need_a) da = matmul(gy, b, false, false);
                     if (need_b) db = matmul(gy, a, true, false);
                   } else if (ta && !tb) {  // y = A^T B
                     if (need_a) da = matmul(b, gy, false, true);
                     if (need_b) db = matmul(a, gy, false, false);
                   } else {  // y = A^T B^T
                     if (need_a) da = matmul(b, gy, true, true);
                     if (need_b) db = matmul(gy, a, true, true);
                   }
                   return {da, db};
                 });
}

Var sum_rows(const Var& x) {
  const Shape& sx = x.shape();
  if (sx.ndim() != 2) throw std::invalid_argument("sum_rows: expected a 2-D tensor, got shape " + sx.str());
  const int64_t rows = sx[0];
  return make_deferrable_op(
      Shape{sx[1]},
      [x](Tensor* acc) {
        const Tensor& v = x.value();
        if (acc) {
          ops::sum_rows(v, 1.0, *acc);
          return *acc;
        }
        Tensor out = Tensor::empty({v.dim(1)}, v.dtype(), v.device());
        ops::sum_rows(v, 0.0, out);
        return out;
      },
      {x}, "sum_rows", [rows](Node&, const Var& gy) -> std::vector<Var> { return {broadcast_rows(gy, rows)}; });
}

Var broadcast_rows(const Var& v, int64_t rows) {
  if (v.shape().ndim() != 1)
    throw std::invalid_argument("broadcast_rows: expected a 1-D tensor, got shape " + v.shape().str());
  return make_deferrable_op(
      Shape{rows, v.shape()[0]},
      [v, rows](Tensor* acc) {  // (added into a sum: the bias term of an HVP, one pass)
        if (acc) {
          ops::add_row_vector(v.value(), *acc);
          return *acc;
        }
        Tensor y = Tensor::zeros({rows, v.value().dim(0)}, v.value().dtype(), v.value().device());
        ops::add_row_vector(v.value(), y);
        return y;
      },
      {v}, "broadcast_rows", [](Node&, const Var& gy) -> std::vector<Var> { return {sum_rows(gy)}; });
}

Var linear(const Var& x, const Var& w, const Var& b) {
  check_ndim("linear (input)", x.value(), 2);
  check_ndim("linear (weight)", w.value(), 2);
  if (x.value().dim(1) != w.value().dim(1))
    throw std::invalid_argument("linear: input " + x.shape().str() + " does not fit weight " +
                                w.shape().str() + " (expected input columns = weight columns)");
  Tensor y = ops::matmul(x.value(), w.value(), false, true);
  if (b.defined()) ops::add_row_vector(b.value(), y);
  std::vector<Var> in{x, w};
  if (b.defined()) in.push_back(b);
  return make_op(std::move(y), in, "linear", [](Node& self, const Var& gy) -> std::vector<Var> {
    const Var x = Var::of(self.inputs[0]), w = Var::of(self.inputs[1]);
    std::vector<Var> g(self.inputs.size());
    if (self.wants(0)) g[0] = matmul(gy, w);               // (B,out)(out,in)
    if (self.wants(1)) g[1] = matmul(gy, x, true, false);  // dy^T x
    if (g.size() > 2 && self.wants(2)) g[2] = sum_rows(gy);
    return g;
  });
}

Var relu(const Var& x) {
  return make_op(ops::relu(x.value()), {x}, "relu", [](Node& self, const Var& gy) -> std::vector<Var> {
    // The mask is constant in x: ReLU's second derivative is zero away from the kink.
    return {relu_mask(self.inputs[0]->get(), gy)};
  });
}

Var relu_mask(const Tensor& x, const Var& gy) {
  if (x.shape() != gy.shape())
    throw std::invalid_argument("relu_mask: shapes " + x.shape().str() + " and " + gy.shape().str() +
                                " must be equal");
  return make_deferrable_op(
      x.shape(),
      [x, gy](Tensor* acc) {
        if (acc) {
          ops::relu_backward(x, gy.value(), 1.0, *acc);
          return *acc;
        }
        Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
        ops::relu_backward(x, gy.value(), 0.0, dx);
        return dx;
      },
      {gy}, "relu_mask", [x](Node&, const Var& g) -> std::vector<Var> { return {relu_mask(x, g)}; });
}

Var mul_const(const Var& x, const Tensor& mask) {
  return make_op(ops::mul(x.value(), mask), {x}, "mul_const", [mask](Node&, const Var& gy) -> std::vector<Var> {
    return {mul_const(gy, mask)};
  });
}

Var reshape(const Var& x, const Shape& shape) {
  const Shape in_shape = x.shape();
  if (shape.numel() != in_shape.numel())
    throw std::invalid_argument("reshape: cannot view " + in_shape.str() + " as " + shape.str());
  const auto bw = [in_shape](Node&, const Var& gy) -> std::vector<Var> { return {reshape(gy, in_shape)}; };
  if (x.node()->deferred)  // stays deferred (a conv's weight gradient, say)
    return make_deferrable_op(
        shape,
        [x, shape](Tensor* acc) {
          if (!acc) return x.value().reshape(shape);
          Tensor view = acc->reshape(x.shape());  // shares acc's storage: add x's value into it
          x.node()->deferred ? (void)x.node()->deferred(&view) : ops::axpby(1.0, x.value(), 1.0, view);
          return *acc;
        },
        {x}, "reshape", bw);
  return make_op(x.value().reshape(shape), {x}, "reshape", bw);
}

Var scale(const Var& x, double s) {
  return make_deferrable_op(
      x.shape(),
      [x, s](Tensor* acc) {
        if (!acc) return ops::scale(x.value(), s);
        ops::axpby(s, x.value(), 1.0, *acc);
        return *acc;
      },
      {x}, "scale", [s](Node&, const Var& gy) -> std::vector<Var> { return {scale(gy, s)}; });
}

Var add(const Var& a, const Var& b) {
  check_same_shape("add", a.value(), b.value());
  return make_op(ops::add(a.value(), b.value()), {a, b}, "add",
                 [](Node& self, const Var& gy) -> std::vector<Var> {
                   return {self.wants(0) ? gy : Var(), self.wants(1) ? gy : Var()};
                 });
}

namespace {

// The scale of a loss's backward: its seed must be a constant (a loss is the end of a graph).
double loss_seed(const Var& gy, const char* op) {
  if (gy.requires_grad())
    throw std::logic_error(std::string(op) + ": the cotangent of a loss must be a constant");
  return gy.value().item();
}

// The cross-entropy's logit gradient (B,C) as an op of the logits: value dz (computed by the
// forward), backward the logit Hessian times the cotangent (symmetric). Its own derivative in
// the logits (a third derivative of the loss) is not implemented and throws if asked for.
Var xent_logit_grad(const Var& logits, const Tensor& targets, const Tensor& dz) {
  return make_op(dz, {logits}, "softmax_xent_grad", [targets](Node& self, const Var& g) -> std::vector<Var> {
    if (g.requires_grad() || grad_mode_enabled())
      throw std::logic_error("softmax_xent: third derivatives of the cross-entropy are not implemented");
    return {Var(ops::softmax_xent_hvp(self.inputs[0]->get(), targets, g.value()))};
  });
}

// The squared error's gradient 2 (p - t) as an op of p: its derivative is 2 times the cotangent.
Var mse_pred_grad(const Var& pred, const Tensor& dp) {
  return make_op(dp, {pred}, "mse_grad", [](Node&, const Var& g) -> std::vector<Var> { return {scale(g, 2.0)}; });
}

}  // namespace

Var softmax_xent_mean(const Var& logits, const Tensor& targets) {
  const Tensor& z = logits.value();
  Tensor loss = Tensor::empty({z.dim(0)}, z.dtype(), z.device());
  Tensor dz = Tensor::empty(z.shape(), z.dtype(), z.device());
  ops::softmax_xent(z, targets, loss, &dz);
  const double b = static_cast<double>(z.dim(0));
  Tensor mean = Tensor::full({1}, b > 0 ? ops::sum(loss) / b : 0.0, z.dtype(), z.device());
  return make_op(std::move(mean), {logits}, "softmax_xent_mean",
                 [dz, targets, b](Node& self, const Var& gy) -> std::vector<Var> {
                   const double s = loss_seed(gy, "softmax_xent_mean") / b;
                   return {scale(xent_logit_grad(Var::of(self.inputs[0]), targets, dz), s)};
                 });
}

Var mse_mean(const Var& pred, const Tensor& target) {
  const Tensor& p = pred.value();
  Tensor loss = Tensor::empty({p.dim(0)}, p.dtype(), p.device());
  Tensor dp = Tensor::empty(p.shape(), p.dtype(), p.device());
  ops::mse(p, target, loss, &dp);
  const double b = static_cast<double>(p.dim(0));
  Tensor mean = Tensor::full({1}, b > 0 ? ops::sum(loss) / b : 0.0, p.dtype(), p.device());
  return make_op(std::move(mean), {pred}, "mse_mean", [dp, b](Node& self, const Var& gy) -> std::vector<Var> {
    const double s = loss_seed(gy, "mse_mean") / b;
    return {scale(mse_pred_grad(Var::of(self.inputs[0]), dp), s)};
  });
}

Var add_scaled(const Var& a, double sa, const Var& b, double sb) {
  check_same_shape("add_scaled", a.value(), b.value());
  Tensor y = ops::scale(a.value(), sa);
  ops::axpby(sb, b.value(), 1.0, y);
  return make_op(std::move(y), {a, b}, "add_scaled", [sa, sb](Node& self, const Var& gy) -> std::vector<Var> {
    std::vector<Var> g(2);
    if (self.wants(0)) g[0] = scale(gy, sa);
    if (self.wants(1)) g[1] = scale(gy, sb);
    return g;
  });
}

Var mul(const Var& a, const Var& b) {
  check_same_shape("mul", a.value(), b.value());
  return make_op(ops::mul(a.value(), b.value()), {a, b}, "mul", [](Node& self, const Var& gy) -> std::vector<Var> {
    std::vector<Var> g(2);
    if (self.wants(0)) g[0] = mul(gy, Var::of(self.inputs[1]));
    if (self.wants(1)) g[1] = mul(gy, Var::of(self.inputs[0]));
    return g;
  });
}

Var im2col(const Var& x, const Window2d& w) {
  const Shape s = x.shape();
  return make_op(ops::im2col(x.value(), w), {x}, "im2col", [w, s](Node&, const Var& gy) -> std::vector<Var> {
    return {col2im(gy, w, s)};
  });
}

Var col2im(const Var& cols, const Window2d& w, const Shape& x_shape) {
  return make_op(ops::col2im(cols.value(), w, x_shape), {cols}, "col2im", [w](Node&, const Var& gy) -> std::vector<Var> {
    return {im2col(gy, w)};
  });
}

Var nchw_to_rows(const Var& x) {
  const Shape s = x.shape();
  return make_op(ops::nchw_to_rows(x.value()), {x}, "nchw_to_rows", [s](Node&, const Var& gy) -> std::vector<Var> {
    return {rows_to_nchw(gy, s)};
  });
}

Var rows_to_nchw(const Var& rows, const Shape& x_shape) {
  return make_op(ops::rows_to_nchw(rows.value(), x_shape), {rows}, "rows_to_nchw",
                 [](Node&, const Var& gy) -> std::vector<Var> { return {nchw_to_rows(gy)}; });
}

Var conv2d(const Var& x, const Var& w, const Var& b, const Window2d& win, Var* patches, Var* rows) {
  const Shape& xs = x.shape();
  const Shape& ws = w.shape();
  if (xs.ndim() != 4 || ws.ndim() != 4 || ws[1] != xs[1] || ws[2] != win.kh || ws[3] != win.kw)
    throw std::invalid_argument("conv2d: input " + xs.str() + " and weight " + ws.str() + " with a " +
                                std::to_string(win.kh) + "x" + std::to_string(win.kw) +
                                " window (expected (N, C, H, W) and (O, C, kh, kw))");
  const Var cols = im2col(x, win);
  const Var y = linear(cols, reshape(w, {ws[0], ws[1] * ws[2] * ws[3]}), b);
  if (patches) *patches = cols;
  if (rows) *rows = y;
  return rows_to_nchw(y, {xs[0], ws[0], win.out_h(xs[2]), win.out_w(xs[3])});
}

Var maxpool_select(const Tensor& x, const Var& g, const Window2d& w) {
  return make_op(ops::maxpool_gather(x, g.value(), w), {g}, "maxpool_select", [x, w](Node&, const Var& gy) -> std::vector<Var> {
    return {maxpool_route(x, gy, w)};
  });
}

Var maxpool_route(const Tensor& x, const Var& gy, const Window2d& w) {
  return make_op(ops::maxpool_scatter(x, gy.value(), w), {gy}, "maxpool_route", [x, w](Node&, const Var& g) -> std::vector<Var> {
    return {maxpool_select(x, g, w)};
  });
}

Var maxpool2d(const Var& x, const Window2d& w) {
  // The argmax pattern is constant in x (a max is piecewise linear): the pooled value is x
  // itself selected at it, so the derivative routes back to the same positions.
  return maxpool_select(x.value(), x, w);
}

Var channel_sum(const Var& x) {
  const Shape s = x.shape();
  return make_op(ops::channel_sum(x.value()), {x}, "channel_sum", [s](Node&, const Var& gy) -> std::vector<Var> {
    return {channel_broadcast(gy, s)};
  });
}

Var channel_broadcast(const Var& v, const Shape& shape) {
  if (shape.ndim() < 2 || v.shape() != Shape{shape[1]})
    throw std::invalid_argument("channel_broadcast: vector " + v.shape().str() + " to shape " + shape.str());
  const Tensor zero = Tensor::zeros(shape, v.value().dtype(), v.value().device());
  return make_op(ops::channel_affine(zero, Tensor(), v.value()), {v}, "channel_broadcast",
                 [](Node&, const Var& gy) -> std::vector<Var> { return {channel_sum(gy)}; });
}

Var channel_mul(const Var& x, const Var& s) {
  return make_op(ops::channel_affine(x.value(), s.value(), Tensor()), {x, s}, "channel_mul",
                 [](Node& self, const Var& gy) -> std::vector<Var> {
                   std::vector<Var> g(2);
                   if (self.wants(0)) g[0] = channel_mul(gy, Var::of(self.inputs[1]));
                   if (self.wants(1)) g[1] = channel_sum(mul(gy, Var::of(self.inputs[0])));
                   return g;
                 });
}

Var channel_add(const Var& x, const Var& b) {
  return make_op(ops::channel_affine(x.value(), Tensor(), b.value()), {x, b}, "channel_add",
                 [](Node& self, const Var& gy) -> std::vector<Var> {
                   return {self.wants(0) ? gy : Var(), self.wants(1) ? channel_sum(gy) : Var()};
                 });
}

Var channel_affine(const Var& x, const Var& s, const Var& b) {
  return make_op(ops::channel_affine(x.value(), s.value(), b.value()), {x, s, b}, "channel_affine",
                 [](Node& self, const Var& gy) -> std::vector<Var> {
                   std::vector<Var> g(3);
                   if (self.wants(0)) g[0] = channel_mul(gy, Var::of(self.inputs[1]));
                   if (self.wants(1)) g[1] = channel_sum(mul(gy, Var::of(self.inputs[0])));
                   if (self.wants(2)) g[2] = channel_sum(gy);
                   return g;
                 });
}

Var rsqrt(const Var& v, double eps) {
  std::vector<double> r = v.value().to_vector();
  for (double& e : r) e = 1.0 / std::sqrt(e + eps);
  Tensor out = Tensor::from_vector(r, v.shape(), v.value().dtype(), v.value().device());
  return make_op(std::move(out), {v}, "rsqrt", [eps](Node& self, const Var& gy) -> std::vector<Var> {
    // d/dv (v + eps)^(-1/2) = -1/2 r^3, r recomputed as an op so that it differentiates again.
    const Var r = rsqrt(Var::of(self.inputs[0]), eps);
    return {scale(mul(gy, mul(r, mul(r, r))), -0.5)};
  });
}

}  // namespace ad
}  // namespace iif
