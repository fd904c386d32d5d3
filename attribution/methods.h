// The attribution methods behind one interface: fit once on the training set, then score any
// test set, or score every training sample against itself (self-influence).
//
// Sign convention (DESIGN.md section 5), shared by every method: S[i][j] is the estimated change
// in test sample j's loss caused by including training sample i. Positive = harmful (opponent),
// negative = helpful (proponent). L_train is a mean over the N training samples.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attribution/labeled_set.h"
#include "attribution/projector.h"
#include "engine/tensor.h"
#include "nn/models.h"

namespace iif {
namespace attr {

struct MethodOptions {
  ProjectorSpec projector;   // dimension P, kind, seed; identity = exact gradients
  int64_t batch = 256;       // featurisation batch
  // Damping added to curvature matrices, relative to their mean diagonal entry:
  // F + damping * (trace(F) / P) I. Relative so one default suits any model and P.
  double damping = 1e-3;
  bool progress = true;
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // Per-training-set work (features, curvature). `model` is theta*, trained on `train`.
  virtual void fit(nn::Model& model, const LabeledSet& train) = 0;
  // Scores (n_train, n_test) float64 on the CPU.
  virtual Tensor score(const LabeledSet& test) = 0;
  // S[i][i] for every training sample i (test sample = the training sample itself).
  virtual std::vector<double> self_influence() = 0;
};

// Projected gradients of the per-sample cross-entropy loss (hard labels) at the model's current
// parameters: (N, P). The building block of Grad-Dot/Cos, IF-Fisher and TracIn.
Tensor loss_gradient_features(nn::Model& model, const LabeledSet& set, const Projector& proj,
                              int64_t batch, bool progress = false);

// -g_test . g_i (cosine = false) or -cos(g_test, g_i) (cosine = true).
std::unique_ptr<Method> make_grad_dot(const MethodOptions& o, bool cosine);

// Influence function on projected gradients with the Fisher in place of the Hessian:
// S = -(1/N) g_test^T (F + damping)^{-1} g_i,  F = (1/N) sum_i g_i g_i^T.
std::unique_ptr<Method> make_if_fisher(const MethodOptions& o);

// TracIn over checkpoints: S = -sum_c lr_c g_i(theta_c) . g_test(theta_c). The checkpoints are
// models saved during training with the learning rate in force; fit() ignores its model.
struct TracInCheckpoint {
  std::shared_ptr<nn::Model> model;
  double lr;
};
std::unique_ptr<Method> make_tracin(const MethodOptions& o, std::vector<TracInCheckpoint> ckpts);

// TRAK (Park et al. 2023) with an ensemble of models (e.g. each trained on a random half):
// phi = A^T grad m, m = log(p / (1 - p)) of the true class, Q_i = 1 - p_i,
// tau = mean over models of phi_test^T (Phi^T Phi + damping)^{-1} phi_i Q_i;  S = -tau.
// fit()'s model is ignored when an ensemble is given; with none, the fitted model alone is used.
std::unique_ptr<Method> make_trak(const MethodOptions& o, std::vector<std::shared_ptr<nn::Model>> ensemble);

}  // namespace attr
}  // namespace iif
