// Reverse-mode automatic differentiation with double backward. Each op creates a Node that holds
// its value, its inputs and a backward function that maps the cotangent of the output to the
// cotangents of the inputs *with differentiable ops*, so a gradient can itself be differentiated
// (grad(..., create_graph = true), as torch.autograd.grad): that is how Hessian-vector products
// come from autodiff for any model built of these ops.
//
// Passes visit the graph in reverse topological order. Leaves (parameters) accumulate gradients
// across backward() calls until zero_grad(); every intermediate node's gradient is reset at the
// start of a pass and kept afterwards, so a layer can read its output cotangent (DESIGN.md
// section 4). Several passes with different seed cotangents may run over one forward graph.
// Ops record a graph only while grad mode is on (NoGradGuard turns it off for a scope) and
// some input requires a gradient; a first-order pass runs its backward functions with grad mode
// off, so it records nothing and computes the same arithmetic a hand-written backward would.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "engine/backend.h"
#include "engine/tensor.h"

namespace iif {

struct Node;
class Var;

// The backward of an op: given its node and the cotangent gy of its output, returns one
// cotangent per input (undefined where the input needs none), written with ad:: ops.
using BackwardFn = std::function<std::vector<Var>(Node& self, const Var& gy)>;
// A first-order backward written on tensors (a custom kernel, say): reads self.grad and calls
// accumulate_grad on the inputs. A pass with create_graph refuses such a node, naming its op.
using TensorBackwardFn = std::function<void(Node& self)>;

struct Node {
  // The value: read it through Var::value() or get(), which compute a deferred one (below).
  Tensor value;
  // A value left to be computed when first read, or added straight into a sum. Inside a pass
  // the matrix products and broadcasts that backward functions form are deferred: a first-order
  // pass then adds each into the gradient it joins in the same kernel (a GEMM with beta 1, no
  // temporary), and a lazy create-graph pass (grad(..., lazy)) never computes the ones nobody
  // reads (an HVP differentiates grad L's graph but never reads grad L: a layer's weight-gradient
  // GEMM is skipped). deferred(nullptr) returns the value; deferred(&acc) adds it into acc (same
  // shape, a tensor nothing else refers to) and returns acc. The thunk holds what it reads.
  std::function<Tensor(Tensor* acc)> deferred;
  Shape deferred_shape;
  const Tensor& get() {
    if (deferred) {
      value = deferred(nullptr);
      deferred = nullptr;
    }
    return value;
  }
  const Shape& shape() const { return deferred ? deferred_shape : value.shape(); }
  Tensor grad;  // undefined until a backward pass reaches this node
  bool requires_grad = false;
  std::vector<std::shared_ptr<Node>> inputs;
  BackwardFn backward;                 // differentiable backward, or
  TensorBackwardFn tensor_backward;    // a first-order one
  const char* op = "leaf";
  // Set by the running pass: whether a gradient of this node is wanted (false for nodes that
  // lead to no variable a grad() call asked for, which it therefore skips).
  bool wanted = true;
  bool is_leaf() const { return inputs.empty(); }
  // Whether a backward function should form the gradient of input i.
  bool wants(std::size_t i) const { return inputs[i]->requires_grad && inputs[i]->wanted; }
};

class Var {
 public:
  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false);
  // The variable of an existing node (an op's input inside its backward function).
  static Var of(std::shared_ptr<Node> node);

  bool defined() const { return static_cast<bool>(node_); }
  const Tensor& value() const;
  Tensor& mutable_value();  // for in-place parameter updates (optimizers, checkpoint loads)
  const Tensor& grad() const;  // undefined Tensor if no gradient reached this node
  bool requires_grad() const { return node_ && node_->requires_grad; }
  const Shape& shape() const;  // without computing a deferred value
  void zero_grad();  // drops the gradient (the next backward allocates it anew)
  const std::shared_ptr<Node>& node() const { return node_; }

 private:
  std::shared_ptr<Node> node_;
};

// Grad mode (per thread, on by default): off, ops record no graph.
bool grad_mode_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Adds g to n's gradient in the running pass (or to n.grad outside a pass); for first-order
// backward functions. g must not be modified afterwards.
void accumulate_grad(Node& n, Tensor g);

// Creates the node of an op. It records its inputs and backward function when grad mode is on
// and some input requires a gradient; otherwise the value is all that is kept.
Var make_op(Tensor value, std::vector<Var> inputs, const char* op, BackwardFn backward);
// The same for an op whose backward is first-order only (see TensorBackwardFn).
Var make_first_order_op(Tensor value, std::vector<Var> inputs, const char* op, TensorBackwardFn backward);

// Backpropagates `seed` (same shape as root) through the graph that produced root; leaves
// accumulate into their grad.
void backward(const Var& root, const Tensor& seed);
// For a scalar (one-element) root: seed 1.
void backward(const Var& root);
// Several roots at once, root k seeded with seeds[k] (a vector-Jacobian product of a tuple):
// with the roots the gradients of a loss made by grad(..., create_graph = true) and the seeds a
// direction v, the leaves receive H v.
void backward(const std::vector<Var>& roots, const std::vector<Tensor>& seeds);

// The gradients of root (seeded with `seed`, same shape) with respect to `wrt`, returned rather
// than accumulated (leaves' grad untouched; an unreached input gives zeros). With create_graph
// they carry their own graph and can be differentiated again. With `lazy` (and create_graph)
// the matrix products of the pass are computed when their value is first read (Node::deferred):
// a caller that only differentiates the results again skips them. Their inputs must then not be
// changed in place (a parameter update, say) before the values are read.
std::vector<Var> grad(const Var& root, const Tensor& seed, const std::vector<Var>& wrt, bool create_graph,
                      bool lazy = false);
// Several roots, root k seeded with seeds[k]. A seed may itself require a gradient: with
// create_graph the result is then differentiable in the seed too (J^T u, whose derivative in u
// gives the Jacobian-vector product J v: forward mode from two reverse passes).
std::vector<Var> grad(const std::vector<Var>& roots, const std::vector<Var>& seeds, const std::vector<Var>& wrt,
                      bool create_graph, bool lazy = false);
// First-order grad() whose results are added into into[k] (the shape, dtype and device of
// wrt[k]; written in place, whatever else refers to them) rather than returned: a variable's
// gradient is formed where the caller wants it (a deferred GEMM runs with beta 1 into it), no
// copy. An unreached variable leaves its tensor as it was.
void grad_into(const std::vector<Var>& roots, const std::vector<Var>& seeds, const std::vector<Var>& wrt,
               std::vector<Tensor>& into);

// ---- differentiable ops (shapes in comments) ---------------------------------------------
namespace ad {
// y(B,out) = x(B,in) W(out,in)^T + b(out)   (b may be undefined)
Var linear(const Var& x, const Var& w, const Var& b);
// op(A) op(B), 2-D
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
// (B,N) -> (N): the sum of the rows
Var sum_rows(const Var& x);
// (N) -> (rows,N): v repeated on every row
Var broadcast_rows(const Var& v, int64_t rows);
Var relu(const Var& x);
// gy * (x > 0) for a constant x: ReLU's backward, itself linear in gy
Var relu_mask(const Tensor& x, const Var& gy);
// y = x * mask (mask a constant, e.g. a dropout mask already scaled by 1/(1-p))
Var mul_const(const Var& x, const Tensor& mask);
Var reshape(const Var& x, const Shape& shape);
Var scale(const Var& x, double s);
Var add(const Var& a, const Var& b);
// mean over the batch of the soft-target softmax cross-entropy: logits(B,C), targets(B,C)
Var softmax_xent_mean(const Var& logits, const Tensor& targets);
// mean over the batch of sum_c (pred - target)^2: pred(B,C), target(B,C)
Var mse_mean(const Var& pred, const Tensor& target);
// sa * a + sb * b (same shapes), e.g. an objective lambda * L_train - L_test
Var add_scaled(const Var& a, double sa, const Var& b, double sb);
// a * b elementwise (same shapes)
Var mul(const Var& a, const Var& b);

// ---- images (NCHW) ----
// x (N,C,H,W) -> patches (N*OH*OW, C*kh*kw) and its adjoint (to an image of shape x_shape)
Var im2col(const Var& x, const Window2d& w);
Var col2im(const Var& cols, const Window2d& w, const Shape& x_shape);
// (N,C,H,W) <-> (N*H*W, C)
Var nchw_to_rows(const Var& x);
Var rows_to_nchw(const Var& rows, const Shape& x_shape);
// y (N,O,OH,OW) = conv(x (N,C,H,W), w (O,C,kh,kw)) + b (O) (b may be undefined), as
// torch.nn.functional.conv2d: im2col, then one GEMM over every output position (a Linear on
// the patches), then back to NCHW.
// With `patches`/`rows` non-null they receive the im2col patches (N*OH*OW, C*kh*kw) and the
// Linear's output (N*OH*OW, O): a layer records them for per-sample gradients.
Var conv2d(const Var& x, const Var& w, const Var& b, const Window2d& win, Var* patches = nullptr,
           Var* rows = nullptr);
// Max pooling (the first maximum of each window; windows of only padding give 0).
Var maxpool2d(const Var& x, const Window2d& w);
// g at the argmaxes of the constant x's windows, and its adjoint (linear in g / gy)
Var maxpool_select(const Tensor& x, const Var& g, const Window2d& w);
Var maxpool_route(const Tensor& x, const Var& gy, const Window2d& w);
// Per channel of x (N,C,...): the sum over N and positions (C); v (C) repeated to shape;
// x * s(c); x + b(c).
Var channel_sum(const Var& x);
Var channel_broadcast(const Var& v, const Shape& shape);
Var channel_mul(const Var& x, const Var& s);
Var channel_add(const Var& x, const Var& b);
// x * s(c) + b(c) in one pass (s and b both defined)
Var channel_affine(const Var& x, const Var& s, const Var& b);
// (v + eps)^(-1/2) elementwise, for a small vector (computed on the host)
Var rsqrt(const Var& v, double eps);
}  // namespace ad

}  // namespace iif
