// The autodiff core (graph, topological backward) and its differentiable ops.
#include "engine/autodiff.h"

#include <stdexcept>
#include <string>
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
  return node_->value;
}

Tensor& Var::mutable_value() {
  if (!node_) throw std::logic_error("Var::mutable_value: undefined variable");
  return node_->value;
}

const Tensor& Var::grad() const {
  if (!node_) throw std::logic_error("Var::grad: undefined variable");
  return node_->grad;
}

void Var::zero_grad() {
  if (node_) node_->grad = Tensor();
}

void accumulate_grad(Node& n, Tensor g) {
  if (!n.grad.defined()) {
    n.grad = std::move(g);
  } else {
    ops::axpby(1.0, g, 1.0, n.grad);
  }
}

Var make_op(Tensor value, std::vector<Var> inputs, const char* op,
            std::function<void(Node& self)> bw) {
  Var v;
  v.node_ = std::make_shared<Node>();
  Node& n = *v.node_;
  n.value = std::move(value);
  n.op = op;
  for (const Var& in : inputs) n.requires_grad = n.requires_grad || in.requires_grad();
  if (n.requires_grad) {
    for (Var& in : inputs) n.inputs.push_back(in.node());
    n.backward = std::move(bw);
  }
  return v;
}

namespace {

// Iterative post-order DFS: deep graphs must not overflow the stack.
std::vector<Node*> topo_order(Node* root) {
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<Node*, std::size_t>> stack{{root, 0}};
  seen.insert(root);
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
  return order;  // inputs before the nodes that use them
}

}  // namespace

void backward(const Var& root, const Tensor& seed) {
  if (!root.defined()) throw std::invalid_argument("backward: undefined root");
  if (!root.requires_grad())
    throw std::invalid_argument("backward: the root does not depend on any variable that "
                                "requires a gradient");
  check_same_shape("backward (seed vs root)", seed, root.value());
  std::vector<Node*> order = topo_order(root.node().get());
  for (Node* n : order)
    if (!n->is_leaf()) n->grad = Tensor();
  accumulate_grad(*root.node(), seed.clone());
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* n = *it;
    if (n->is_leaf() || !n->grad.defined() || !n->backward) continue;
    n->backward(*n);
  }
}

void backward(const Var& root) {
  if (root.value().numel() != 1)
    throw std::invalid_argument("backward: root of shape " + root.shape().str() +
                                " is not a scalar; pass a seed cotangent");
  const Tensor& v = root.value();
  backward(root, Tensor::full(v.shape(), 1.0, v.dtype(), v.device()));
}

namespace ad {

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
  return make_op(std::move(y), in, "linear", [](Node& self) {
    Node& xn = *self.inputs[0];
    Node& wn = *self.inputs[1];
    const Tensor& dy = self.grad;
    if (xn.requires_grad) accumulate_grad(xn, ops::matmul(dy, wn.value));  // (B,out)(out,in)
    if (wn.requires_grad) {
      if (wn.grad.defined())
        ops::gemm(true, false, 1.0, dy, xn.value, 1.0, wn.grad);  // dW += dy^T x
      else
        wn.grad = ops::matmul(dy, xn.value, true, false);
    }
    if (self.inputs.size() > 2 && self.inputs[2]->requires_grad) {
      Node& bn = *self.inputs[2];
      if (bn.grad.defined()) {
        ops::sum_rows(dy, 1.0, bn.grad);
      } else {
        bn.grad = Tensor::empty(bn.value.shape(), bn.value.dtype(), bn.value.device());
        ops::sum_rows(dy, 0.0, bn.grad);
      }
    }
  });
}

Var relu(const Var& x) {
  return make_op(ops::relu(x.value()), {x}, "relu", [](Node& self) {
    Node& xn = *self.inputs[0];
    if (xn.grad.defined()) {
      ops::relu_backward(xn.value, self.grad, 1.0, xn.grad);
    } else {
      xn.grad = Tensor::empty(xn.value.shape(), xn.value.dtype(), xn.value.device());
      ops::relu_backward(xn.value, self.grad, 0.0, xn.grad);
    }
  });
}

Var mul_const(const Var& x, const Tensor& mask) {
  return make_op(ops::mul(x.value(), mask), {x}, "mul_const", [mask](Node& self) {
    accumulate_grad(*self.inputs[0], ops::mul(self.grad, mask));
  });
}

Var reshape(const Var& x, const Shape& shape) {
  const Shape in_shape = x.shape();
  return make_op(x.value().reshape(shape), {x}, "reshape", [in_shape](Node& self) {
    accumulate_grad(*self.inputs[0], self.grad.reshape(in_shape).clone());
  });
}

Var softmax_xent_mean(const Var& logits, const Tensor& targets) {
  const Tensor& z = logits.value();
  Tensor loss = Tensor::empty({z.dim(0)}, z.dtype(), z.device());
  Tensor dz = Tensor::empty(z.shape(), z.dtype(), z.device());
  ops::softmax_xent(z, targets, loss, &dz);
  const double b = static_cast<double>(z.dim(0));
  Tensor mean = Tensor::full({1}, b > 0 ? ops::sum(loss) / b : 0.0, z.dtype(), z.device());
  return make_op(std::move(mean), {logits}, "softmax_xent_mean", [dz, b](Node& self) {
    const double s = self.grad.item() / b;
    accumulate_grad(*self.inputs[0], ops::scale(dz, s));
  });
}

Var mse_mean(const Var& pred, const Tensor& target) {
  const Tensor& p = pred.value();
  Tensor loss = Tensor::empty({p.dim(0)}, p.dtype(), p.device());
  Tensor dp = Tensor::empty(p.shape(), p.dtype(), p.device());
  ops::mse(p, target, loss, &dp);
  const double b = static_cast<double>(p.dim(0));
  Tensor mean = Tensor::full({1}, b > 0 ? ops::sum(loss) / b : 0.0, p.dtype(), p.device());
  return make_op(std::move(mean), {pred}, "mse_mean", [dp, b](Node& self) {
    const double s = self.grad.item() / b;
    accumulate_grad(*self.inputs[0], ops::scale(dp, s));
  });
}

Var add_scaled(const Var& a, double sa, const Var& b, double sb) {
  check_same_shape("add_scaled", a.value(), b.value());
  Tensor y = ops::scale(a.value(), sa);
  ops::axpby(sb, b.value(), 1.0, y);
  return make_op(std::move(y), {a, b}, "add_scaled", [sa, sb](Node& self) {
    if (self.inputs[0]->requires_grad) accumulate_grad(*self.inputs[0], ops::scale(self.grad, sa));
    if (self.inputs[1]->requires_grad) accumulate_grad(*self.inputs[1], ops::scale(self.grad, sb));
  });
}

}  // namespace ad
}  // namespace iif
