// Curvature matrices and the solvers that apply their (damped) inverses: the Fisher accumulated
// in chunks, damped Cholesky solves (one or a batch of K matrices), conjugate gradient and LiSSA
// for operators available only as matrix-vector products (Hessian-vector products, attribution/hvp.h).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/tensor.h"

namespace iif {
namespace attr {

// F = (1/N) sum_i u_i u_i^T over rows u_i added in any number of chunks (DESIGN.md section 5,
// IIF step 5 and IF-Fisher). Chunks are accumulated with the syrk op in `dtype` (float64 by
// default: N rank-one terms summed in float32 lose about N * 6e-8 relative). add() converts
// float32 chunks to the accumulator's dtype.
class FisherAccumulator {
 public:
  explicit FisherAccumulator(int64_t p, DType dtype = DType::f64, Device device = Device::cpu());
  // u (B, P), B >= 0, on the accumulator's device.
  void add(const Tensor& u);
  // (P, P): the sum divided by count(). Throws std::logic_error if no rows were added.
  Tensor finalize() const;
  // sum_i u_i u_i^T, not normalised (P, P).
  const Tensor& sum() const { return sum_; }
  int64_t count() const { return n_; }
  int64_t dim() const { return p_; }

 private:
  int64_t p_ = 0, n_ = 0;
  Tensor sum_;
};

// (F + damping I)^{-1} rhs by Cholesky, F (P,P) symmetric, rhs (P,R) or (P); the result has
// rhs's shape and F's dtype (rhs is converted). Factorised in float64 whatever the dtype.
// Throws std::runtime_error (suggesting a larger damping) if F + damping I is not positive definite.
Tensor damped_solve(const Tensor& f, double damping, const Tensor& rhs);
// K systems at once: F (K,P,P), rhs (K,P,R) -> (K,P,R); one damping for all or one per matrix.
// The error of a matrix that is not positive definite names its index k.
Tensor batched_damped_solve(const Tensor& f, double damping, const Tensor& rhs);
Tensor batched_damped_solve(const Tensor& f, const std::vector<double>& damping, const Tensor& rhs);

// A symmetric linear operator given by its product with a vector (any fixed shape; the result
// has the argument's shape and dtype), e.g. v -> H v + damping v.
using LinearOperator = std::function<Tensor(const Tensor&)>;

// Solves A x = b for a symmetric positive-definite A by conjugate gradient (Hestenes & Stiefel
// 1952) from x0 = 0, or from a given start x0 (a warm start: b's shape; its product A x0 counts
// as one of the max_iter products). A tensor b of any shape is one vector (a (P,R) b is solved as one
// block-diagonal system, not R separate ones). Stops when ||b - A x|| <= rel_tol ||b|| (the
// recurrence residual) or after max_iter products with A. It does not throw on non-convergence
// (dattri's IF-CG runs 10 iterations by design): *iters and *rel_residual report what happened,
// so a caller can tell "converged" (rel_residual <= rel_tol) from "stopped". Throws
// std::runtime_error if a search direction has p^T A p <= 0 (A is not positive definite: add
// damping or use the Gauss-Newton matrix) or a NaN/Inf appears.
Tensor conjugate_gradient(const LinearOperator& apply_a, const Tensor& b, int max_iter,
                          double rel_tol, int* iters = nullptr, double* rel_residual = nullptr,
                          const Tensor& x0 = Tensor());

// LiSSA (Agarwal, Bullins & Hazan 2017, as used for influence functions by Koh & Liang 2017),
// in the parametrisation of Koh & Liang's get_inverse_hvp_lissa and of dattri's ihvp_lissa
// (dattri/func/ihvp.py), which agree:
//   h_0 = b,   h_t = b + (1 - damping) h_{t-1} - hvp(h_{t-1}) / scale,   t = 1..depth,
//   result = mean over `repeats` independent runs of h_depth / scale.
// For a fixed H the fixed point is h = (damping I + H/scale)^{-1} b, so the result tends to
//   (H + damping * scale * I)^{-1} b
// i.e. the effective Tikhonov damping is damping * scale, NOT damping. The error shrinks like
// rho^depth, rho = max |1 - damping - lambda_i(H)/scale|: it converges iff every eigenvalue
// satisfies 0 < damping + lambda_i/scale < 2 (scale > lambda_max / (2 - damping), and
// damping > -lambda_min / scale for an indefinite H).
// Stochastic LiSSA: let hvp multiply by the Hessian of a freshly sampled mini-batch at each call;
// the indexed form passes (repeat, step), step = 1..depth, so sampling can be keyed by them
// and the result is reproducible. b may have any shape; hvp must return b's shape and dtype.
// Throws std::runtime_error, suggesting a larger scale, when the recursion diverges: NaN/Inf, or
// ||h_t|| > 1e6 (t+1) ||b||, which a contracting recursion never reaches (||h_t|| <= (t+1) ||b||
// when rho <= 1). *last_rel_change (if given) is ||h_depth - h_{depth-1}|| / ||h_depth||
// of the last repeat: the caller's convergence check.
using IndexedHvp = std::function<Tensor(const Tensor& v, int repeat, int step)>;
Tensor lissa(const LinearOperator& hvp, const Tensor& b, double damping, double scale, int depth,
             int repeats = 1, double* last_rel_change = nullptr);
Tensor lissa(const IndexedHvp& hvp, const Tensor& b, double damping, double scale, int depth,
             int repeats = 1, double* last_rel_change = nullptr);

}  // namespace attr
}  // namespace iif
