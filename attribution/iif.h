// Integrated Influence (paper eqs. 9-17, Algorithm 1; DESIGN.md section 5) for classifiers.
//
// For a group of test samples z (one sample in exact mode):
//  1. baseline by unlearning: theta' = E_u epochs of SGD (lr eta_u) from theta* on
//     -L_test(z; theta) + lambda * L_train(D; theta)                                  (eq. 12)
//  2. baseline targets ybar_i = softmax f(x_i; theta')                                  (eq. 13)
//  3. path targets rho_i(t_k), k = 0..K: the linear path (eq. 15); for classification the
//     true-class form of appendix E: rho_i(t)[c_i] = t + (1 - t) ybar_i[c_i], others 0
//  4. path models theta_K = theta*, theta_k = one SGD epoch (lr eta) from theta_{k+1} on
//     targets rho(t_k)                                                                 (eq. 16)
//  5. at each theta_k, k = 1..K, with the projector A:
//       u_i = A^T grad l(f(x_i), rho_i(t_k)),  F_k = (1/N) sum u u^T + damping I       (eq. 31)
//       v_i = A^T grad l(f(x_i), Delta_i^k),   Delta_i^k = rho_i(t_k) - rho_i(t_{k-1})
//       g   = A^T grad L_test(z; theta_k)
//       S[i][z] += -(1/N) g^T F_k^{-1} v_i                                             (eq. 10, 17)
// The soft-target cross-entropy gradient is linear in the target, so v_i is J_i Delta_i^k.
// In the true-class form rho and Delta are multiples of the one-hot label, so u_i and v_i are
// both multiples of one vector (the hard-label loss gradient): one featurisation per step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attribution/methods.h"

namespace iif {
namespace attr {

enum class PathTargets {
  true_class,  // appendix E (default for classification)
  full_soft,   // eq. 15 on whole probability vectors (two cotangents per sample)
};

// The curvature inverted at each path model (step 5).
enum class PathCurvature {
  // The paper's eq. 31: the Fisher of the path loss on projected gradients (P = the projector's
  // dimension), relative damping common.damping, one Cholesky solve per step.
  fisher,
  // A departure from the paper: the full (unprojected) Hessian, or Gauss-Newton matrix, of the
  // path loss L(theta_k; rho(t_k)) = (1/N) sum_i l(f(x_i; theta_k), rho_i(t_k)), applied by
  // conjugate gradient with Hessian-vector products (absolute damping hessian_damping, cg_iters
  // products per test sample and step, warm-started from the previous step's solution); the
  // scores then use exact per-sample gradients (no projection). A solve that meets negative
  // curvature (the path loss has soft targets, so H_k may be indefinite) is redone with the
  // Gauss-Newton matrix, and counted.
  hessian,
  gauss_newton,
};

struct IifOptions {
  MethodOptions common;
  int K = 5;                    // path steps (the paper leaves K open)
  double lambda = 0.5;          // unlearning regulariser (paper Table 6: MNIST 0.5)
  int unlearn_epochs = 5;       // E_u (paper: 5 epochs of SGD): the most the unlearning runs
  // Stop raising the test loss once it reaches log C (chance level); see unlearn() in iif.cpp:
  // without it the unbounded objective diverges for most MNIST test samples.
  bool unlearn_stop_at_chance = true;
  // The test loss at which the raising direction stops, in units of the chance loss log C
  // (1 = chance level). Larger values unlearn further (more training samples forgotten).
  double unlearn_stop_factor = 1.0;
  double unlearn_lr = 0.01;     // eta_u (paper: not stated; the training lr)
  double path_lr = 0.01;        // eta in eq. 16 (paper: not stated; the training lr)
  int64_t sgd_batch = 64;       // mini-batch of the unlearning and path epochs
  PathTargets targets = PathTargets::true_class;
  PathCurvature curvature = PathCurvature::fisher;
  int cg_iters = 10;              // Hessian path: CG products per test sample and path step
  double hessian_damping = 0.01;  // Hessian path: absolute damping (as IF-CG's)
  // Test samples sharing one unlearning and one path (1 = exact mode, the reference).
  int64_t group_size = 1;
  // How grouped mode forms its groups: false = consecutive test samples; true = test samples
  // theta* predicts to be of the same class, at most group_size per group (the unlearning of a
  // same-class group resembles that of each member more than a mixed group's does).
  bool group_by_class = false;
  // Direction of the unlearning (paper 3.2): +1 raises the test loss (eq. 12: the baseline that
  // finds proponents), -1 lowers it (lambda L_train + L_test: the baseline for opponents).
  int baseline_direction = +1;
  // Baseline override (tests, Lemma 2.5): use ybar = f(x; theta*) instead of unlearning.
  bool baseline_is_model = false;
  // Self-influence baseline step: theta'_i = theta* + eta_b grad l_i(theta*) (paper 3.3).
  double self_baseline_lr = 0.01;
  uint64_t seed = 0;
};

class Iif final : public Method {
 public:
  explicit Iif(const IifOptions& o);
  std::string name() const override;
  void fit(nn::Model& model, const LabeledSet& train) override;
  Tensor score(const LabeledSet& test) override;
  std::vector<double> self_influence() override;
  // The groups score() forms, as lists of test-sample indices (one per sample in exact mode).
  // A group is scored the same whether the other groups are in the test set or not: scoring
  // the samples of one group alone gives its columns of score(test).
  std::vector<std::vector<int64_t>> groups(const LabeledSet& test) const;

  // Completeness diagnostics of the last score() call: L_test(theta*) - L_test(theta_0) per
  // test sample (in test order), theta_0 the first path model of its group (a proxy for
  // theta(Gamma(0))).
  const std::vector<double>& last_loss_gap() const { return loss_gap_; }
  // SGD steps each group's unlearning took in the last score() call.
  const std::vector<int64_t>& last_unlearn_steps() const { return unlearn_steps_; }
  // Hessian path: the largest relative CG residual of the last score() call.
  double last_worst_cg_residual() const { return worst_cg_residual_; }
  // Hessian path: solves of the last score() call that met negative curvature and were redone
  // with the Gauss-Newton matrix of the same path loss.
  int64_t last_gauss_newton_fallbacks() const { return gauss_newton_fallbacks_; }

 private:
  // Scores (N, group) for one group of test samples, accumulated along one path.
  Tensor score_group(const LabeledSet& group);
  // Path targets rho(t_k) (N, C) from baseline probabilities ybar (N, C).
  Tensor path_targets(const std::vector<double>& ybar, int k) const;
  // Integrates along the path given baseline probabilities; `test_features` returns the test
  // gradients (T, P) at a path model (P = M, exact, for a Hessian path); returns (N, T).
  Tensor integrate(const std::vector<double>& ybar,
                   const std::function<Tensor(nn::Model&)>& test_features, int64_t n_test);

  IifOptions o_;
  nn::Model* model_ = nullptr;
  LabeledSet train_;
  std::unique_ptr<Projector> proj_;
  std::vector<double> loss_gap_;
  std::vector<int64_t> unlearn_steps_;
  bool diagonal_ = false;                  // integrate() for self-influence
  std::unique_ptr<nn::Model> path_front_;    // theta_0 of the last path
  double worst_cg_residual_ = 0.0;         // Hessian path: the worst relative CG residual
  int64_t gauss_newton_fallbacks_ = 0;     // Hessian path: solves that fell back to Gauss-Newton
};

}  // namespace attr
}  // namespace iif
