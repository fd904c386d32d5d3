// Reverse-mode automatic differentiation. Each op creates a Node that holds its value, its
// inputs and a backward closure capturing only what the gradient needs. backward() visits the
// graph in reverse topological order. Leaves (parameters) accumulate gradients across calls
// until zero_grad(); every intermediate node's gradient is reset at the start of a backward
// pass and kept afterwards, so a layer can read its output cotangent (DESIGN.md section 4).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace iif {

struct Node {
  Tensor value;
  Tensor grad;  // undefined until a backward pass reaches this node
  bool requires_grad = false;
  std::vector<std::shared_ptr<Node>> inputs;
  // Reads self.grad and accumulates into the inputs' gradients (those that require them).
  std::function<void(Node& self)> backward;
  const char* op = "leaf";
  bool is_leaf() const { return inputs.empty(); }
};

class Var {
 public:
  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false);

  bool defined() const { return static_cast<bool>(node_); }
  const Tensor& value() const;
  Tensor& mutable_value();  // for in-place parameter updates (optimizers, checkpoint loads)
  const Tensor& grad() const;  // undefined Tensor if no gradient reached this node
  bool requires_grad() const { return node_ && node_->requires_grad; }
  const Shape& shape() const { return value().shape(); }
  void zero_grad();  // drops the gradient (the next backward allocates it anew)
  const std::shared_ptr<Node>& node() const { return node_; }

 private:
  friend Var make_op(Tensor, std::vector<Var>, const char*, std::function<void(Node&)>);
  std::shared_ptr<Node> node_;
};

// Adds g to n.grad (taking g as the gradient if n has none yet; g must not be used afterwards).
void accumulate_grad(Node& n, Tensor g);

// Creates the node of an op. requires_grad is set if any input requires it; the closure is
// dropped otherwise (inference keeps no graph).
Var make_op(Tensor value, std::vector<Var> inputs, const char* op,
            std::function<void(Node& self)> backward);

// Backpropagates `seed` (same shape as root) through the graph that produced root.
void backward(const Var& root, const Tensor& seed);
// For a scalar (one-element) root: seed 1.
void backward(const Var& root);

// ---- differentiable ops (shapes in comments) ---------------------------------------------
namespace ad {
// y(B,out) = x(B,in) W(out,in)^T + b(out)   (b may be undefined)
Var linear(const Var& x, const Var& w, const Var& b);
Var relu(const Var& x);
// y = x * mask (mask a constant, e.g. a dropout mask already scaled by 1/(1-p))
Var mul_const(const Var& x, const Tensor& mask);
Var reshape(const Var& x, const Shape& shape);
// mean over the batch of the soft-target softmax cross-entropy: logits(B,C), targets(B,C)
Var softmax_xent_mean(const Var& logits, const Tensor& targets);
// mean over the batch of sum_c (pred - target)^2: pred(B,C), target(B,C)
Var mse_mean(const Var& pred, const Tensor& target);
// sa * a + sb * b (same shapes), e.g. an objective lambda * L_train - L_test
Var add_scaled(const Var& a, double sa, const Var& b, double sb);
}  // namespace ad

}  // namespace iif
