// Exact Hessian-vector products (and Gauss-Newton-vector products) of the mean training loss of
// an nn::Model with respect to all its parameters, from autodiff's double backward: any model
// whose layers are differentiable ops (residual branches, BatchNorm, pooling); plus the flat
// gradient and a finite-difference Hessian used as an independent oracle in tests. (Pearlmutter's
// R-operator, written out by hand for the MLP, is the test oracle the products are held to:
// tests/oracles/r_operator.h.)
//
// Flat parameter vectors follow named_parameters() order, each tensor flattened row-major:
// for an Mlp, [layers.0.weight (out,in), layers.0.bias (out), layers.2.weight, ...]; their
// length M is model.num_parameters(). The loss is L(theta) = (1/N) sum_i l(f(x_i; theta), t_i)
// with l the soft-target cross-entropy or the squared error summed over outputs (nn::LossKind,
// the trainer's losses), over the whole dataset (X (N,...), T (N,C)), evaluated in batches.
// Dropout is off and BatchNorm uses its running statistics (evaluation mode) whatever the
// model's training flag.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/tensor.h"
#include "nn/models.h"
#include "nn/trainer.h"

namespace iif {
namespace attr {

enum class Curvature {
  // d^2 L / d theta^2: the exact Hessian.
  hessian,
  // The generalized Gauss-Newton matrix G = (1/N) sum_i J_i^T H_i J_i, J_i = d f(x_i) / d theta,
  // H_i = d^2 l / d f^2 (Schraudolph 2002): the Hessian without the terms of the network's own
  // second derivatives. Positive semi-definite for both losses.
  gauss_newton,
};

struct HvpOptions {
  int64_t batch = 256;  // samples per pass (memory only: the result does not depend on it)
  Curvature curvature = Curvature::hessian;
};

// Flat parameters (M) in the model's dtype, and their inverse (converting dtype as needed).
Tensor flat_parameters(nn::Model& model);
void set_flat_parameters(nn::Model& model, const Tensor& theta);

// H v (or G v): v has M elements (any shape, any dtype); the result is (M) in v's dtype. The
// passes run in the model's dtype (X and T are converted per batch) and the batch contributions
// are summed in float64. Does not touch the model's parameters, gradients or recorded activations.
// Throws std::invalid_argument for a v of the wrong size or mismatched X/T; std::logic_error
// names an op of the model whose backward is first-order only (make_first_order_op).
Tensor hessian_vector_product(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                              const Tensor& v, const HvpOptions& opt = {});
// The same with Curvature::gauss_newton: G v.
Tensor gauss_newton_vector_product(nn::Model& model, const Tensor& x, const Tensor& t,
                                   nn::LossKind loss, const Tensor& v, int64_t batch = 256);

// The same products at fixed parameters and data, as an operator: the forward pass and the
// gradient's graph are recorded once here and reused, so each apply() costs only the last
// reverse pass (about 30% less than hessian_vector_product for the MNIST MLP; bench_engine's
// *_cached_forward rows). It holds every batch's graph (activations: N x the layer widths) and
// refers to the model's weights: the parameters must not change while it is in use. apply(v)
// has v's shape and dtype.
class CurvatureOperator {
 public:
  CurvatureOperator(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                    const HvpOptions& opt = {});
  Tensor apply(const Tensor& v) const;
  // (C + damping I) v: the damped operator that CG inverts.
  Tensor apply(const Tensor& v, double damping) const;
  int64_t dim() const;

 private:
  struct State;
  std::shared_ptr<State> st_;
};

// The whole (M,M) float64 curvature matrix from M exact products with unit vectors (column j =
// C e_j). For small models only (linear regression, tests); exact up to rounding.
Tensor curvature_matrix(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                        const HvpOptions& opt = {});

// grad L (M) in the model's dtype, by a first-order pass of the engine's autodiff (the oracle
// explicit_hessian differentiates numerically). The parameters' accumulated gradients are saved and restored; the
// layers' recorded activations are overwritten.
Tensor flat_gradient(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                     int64_t batch = 256);

// The (M,M) float64 Hessian by central differences of flat_gradient on a float64 copy of the
// model: column j = (g(theta + h_j e_j) - g(theta - h_j e_j)) / (2 h_j), with
// h_j = rel_step * max(1, |theta_j|). rel_step = 0 picks cbrt(eps64) ~ 6.1e-6, which balances
// the truncation error (h^2/6) |g'''| against the rounding error eps |g| / h (error ~ eps^(2/3)).
// Not symmetrised. 2M gradient evaluations: for small models and tests. The ReLU kinks are not
// smoothed over: a pre-activation within ~h |input| of 0 makes a column wrong.
Tensor explicit_hessian(nn::Model& model, const Tensor& x, const Tensor& t, nn::LossKind loss,
                        int64_t batch = 256, double rel_step = 0.0);

}  // namespace attr
}  // namespace iif
