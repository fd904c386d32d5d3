// Influence functions with the exact Hessian of the training loss (Koh & Liang 2017):
//   S[i][j] = -(1/N) grad L_test(z_j)^T (H + damping I)^{-1} grad l_i      at theta*,
// with H the Hessian of the mean training loss (or the Gauss-Newton matrix), through
// Hessian-vector products (attribution/hvp.h). Three solvers:
//   explicit: the whole M x M matrix and a Cholesky solve (small models only),
//   cg:       conjugate gradient per test gradient (dattri: 10 iterations),
//   lissa:    the stochastic LiSSA recursion (see curvature.h for its damping convention).
// The damping here is absolute (H may be indefinite; dattri searches it on a grid).
#pragma once

#include "attribution/featurizer.h"
#include "attribution/hvp.h"
#include "attribution/methods.h"

namespace iif {
namespace attr {

enum class IhvpSolver { explicit_matrix, cg, lissa };

struct InfluenceOptions {
  MethodOptions common;       // projector ignored: exact gradients; common.damping is absolute
  IhvpSolver solver = IhvpSolver::cg;
  Curvature curvature = Curvature::hessian;
  int cg_iters = 10;          // dattri's max_iter
  double cg_tol = 1e-6;
  double lissa_scale = 50.0;  // must exceed the largest eigenvalue of H (over 2)
  int lissa_depth = 1000;
  int lissa_repeats = 1;
  int64_t lissa_batch = 64;   // mini-batch of each stochastic HVP (0: the full training set)
  int64_t max_explicit_params = 5000;
  uint64_t seed = 0;
};

std::unique_ptr<Method> make_influence(const InfluenceOptions& o);

// scale * G W^T (N, R) float64, G (N, M) the exact per-sample gradients of the model at the rows
// of x under the cotangent `cot` (first_row counts from x's first row), W (R, M). G is formed
// `chunk` rows at a time and never held whole. The scoring step of IF with the Hessian and of
// IIF with a Hessian path.
Tensor exact_gradient_products(nn::Model& model, const Tensor& x, const CotangentFn& cot, const Tensor& w,
                               double scale, int64_t chunk = 256);

}  // namespace attr
}  // namespace iif
