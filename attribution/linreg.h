// The paper's linear-regression experiment (section 3.1, appendix C; DESIGN.md section 7):
// synthetic data, closed-form least squares, IF / TracIn / IIF / datamodel scores and the LDS
// protocol, in float64 with plain std::vector<double> (d is 10: nothing here needs a Tensor).
//
// Model and losses. f(x; theta) = x^T theta (no intercept), l(f, y) = (f - y)^2,
// L_train = (1/N) sum_i l_i, L_test(z) = (xhat^T theta - yhat)^2 for one test point and
// sum_{j in g} (x_j^T theta - y_j)^2 for a group g of test points. With A = X^T X:
//   theta* = A^{-1} X^T y,   H = d^2 L_train / d theta^2 = (2/N) A   (the exact Hessian).
//
// Sign convention (DESIGN.md section 5): S[i][j] = estimated change in test loss j caused by
// including training sample i; positive = harmful. Scores are row-major (n_train, n_test),
// S[i * n_test + j], the layout eval::lds takes.
//
// The derivations (IIF's closed forms, the completeness error (r* - r')^2 / K, why K does not
// change LDS here) are in docs/linreg.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attribution/evaluation.h"

namespace iif {
namespace attr {
namespace linreg {

// ---- data -----------------------------------------------------------------------------------

enum class NoiseKind { gaussian, laplace };

// How a noise level sigma becomes a Laplace(0, b) scale. DESIGN.md section 7: b = sigma (std
// sqrt(2) sigma) fits the paper's Table 4 best; b = sigma / sqrt(2) (std = sigma) does not.
enum class LaplaceScale { b_is_sigma, std_is_sigma };

struct DataSpec {
  int64_t n = 100;       // training samples
  int64_t d = 10;        // features
  int64_t n_test = 10;   // test points per trial, all sharing the trial's w
  NoiseKind train_noise = NoiseKind::gaussian;
  NoiseKind test_noise = NoiseKind::gaussian;
  double sigma_n = 1.0;  // training noise level
  double sigma_s = 1.0;  // test noise level
  LaplaceScale laplace_scale = LaplaceScale::b_is_sigma;
};

// One trial's data: x ~ N(0, I), w ~ N(0, I), y = x^T w + noise.
struct Problem {
  int64_t n = 0, d = 0, n_test = 0;
  std::vector<double> x;       // (n, d) row-major
  std::vector<double> y;       // (n)
  std::vector<double> x_test;  // (n_test, d)
  std::vector<double> y_test;  // (n_test)
  std::vector<double> w;       // (d) the true weights
};

// Draws trial `trial` of `spec` from the counter RNG keyed by `seed`. Every draw has its own
// stream (trial, purpose), and the noise is a standard draw times its scale, so specs that
// differ only in noise levels or kinds share x, w, the test inputs and the underlying draws
// (common random numbers across the columns of a table). Throws std::invalid_argument on
// n < d (least squares needs full column rank), d < 1, n_test < 1 or a negative sigma.
Problem make_problem(const DataSpec& spec, uint64_t seed, uint64_t trial);

// A standard Laplace(0, 1) draw: inverse CDF of a 32-bit uniform in (0, 1).
double standard_laplace(uint64_t seed, uint64_t stream, uint64_t index);

// ---- least squares --------------------------------------------------------------------------

// The least-squares fit of a Problem on all its training samples.
struct Fit {
  int64_t n = 0, d = 0;
  std::vector<double> gram;      // A = X^T X (d, d)
  std::vector<double> chol;      // lower Cholesky factor of A, column-major (LAPACK)
  std::vector<double> theta;     // theta* (d)
  std::vector<double> residual;  // e_i = f(x_i; theta*) - y_i (n)
  double gram_max_eig = 0.0;     // largest eigenvalue of A (for relative learning rates)
  // A^{-1} b (d).
  std::vector<double> solve(const std::vector<double>& b) const;
};

// Closed-form least squares theta* = (X^T X)^{-1} X^T y by Cholesky of the Gram matrix.
// Throws std::runtime_error if X^T X is not positive definite (rank-deficient X).
Fit fit_least_squares(const Problem& p);

// theta = argmin ||X_S theta - t_S||^2 over the rows S of x (n, d): the refit of a subset.
// rows empty = all rows. Throws std::runtime_error if X_S^T X_S is singular.
std::vector<double> least_squares(const std::vector<double>& x, const std::vector<double>& t,
                                  int64_t n, int64_t d, const std::vector<int64_t>& rows = {});

// losses[m][j] = (x_test_j^T theta_{S_m} - y_test_j)^2, theta_{S_m} the least-squares refit on
// subset m (a d x d solve per subset). Parallel over subsets (OpenMP) unless called inside a
// parallel region.
std::vector<std::vector<double>> subset_test_losses(const Problem& p,
                                                    const eval::Subsets& subsets);

// ---- test groups ----------------------------------------------------------------------------

// A test "sample" that IIF unlearns and LDS scores: one test point (the paper's protocol) or a
// group whose loss is the sum of its points' losses (an investigation variant).
using Groups = std::vector<std::vector<int64_t>>;
Groups singleton_groups(int64_t n_test);
// Columns of per-test-point scores (n, n_test) summed per group: (n, groups.size()). All the
// methods but IIF are linear in the test gradient, so this is their score for a group.
std::vector<double> group_scores(const std::vector<double>& scores, int64_t n, int64_t n_test,
                                 const Groups& groups);
// Per-subset losses summed per group: [m][g].
std::vector<std::vector<double>> group_losses(const std::vector<std::vector<double>>& losses,
                                              const Groups& groups);

// ---- methods (scores (n, n_test) row-major) -------------------------------------------------

// IF = -(1/N) g_test^T H^{-1} grad l_i at theta*, grad l_i = 2 e_i x_i, g_test = 2 r* xhat,
// H = (2/N) A. Equals -2 r*_j e_i x_i^T A^{-1} xhat_j.
std::vector<double> influence_function(const Problem& p, const Fit& fit);

// TracIn, final checkpoint only: -lr * g_test . grad l_i at theta* (= IF with H = I up to the
// factor N, which no rank correlation sees). DESIGN.md section 7: this reproduces the paper.
std::vector<double> tracin_final(const Problem& p, const Fit& fit, double lr = 1.0);

// TracIn over a gradient-descent trajectory: theta_0 = 0, theta_{c+1} = theta_c - lr grad
// L_train(theta_c) (full batch, one epoch per step), S = -sum_{c<steps} lr g_test(theta_c) .
// grad l_i(theta_c). An option; DESIGN.md found it does not match the paper.
struct TracInTrajectory {
  int64_t steps = 100;
  double lr = 0.1;
};
std::vector<double> tracin_trajectory(const Problem& p, const TracInTrajectory& o);

enum class Unlearning {
  closed_form,       // the stationary point of the unlearning objective (exact)
  gradient_descent,  // E_u full-batch GD steps from theta* (the paper's "a few epochs")
};
enum class PathModels {
  closed_form,  // theta_k = least squares on the targets rho(t_k) (eq. 2, exact)
  sgd_epoch,    // eq. 16: theta_K = theta*, theta_k = one SGD epoch from theta_{k+1}
};
enum class Curvature {
  hessian,  // the exact H = (2/N) X^T X (the paper's linear-regression setting)
  fisher,   // appendix E, eq. 31: F_k = (1/N) sum_i u_i u_i^T, u_i = grad l(f(x_i; theta_k), rho_i(t_k))
};
enum class OnIndefinite {
  throw_error,  // throw std::runtime_error naming the group, mu and the critical mu
  flag,         // compute anyway (closed form: a saddle point) and set IifResult::indefinite
};

struct IifOptions {
  int64_t K = 10;  // path steps (eq. 10, 15)
  // Unlearning (eq. 12): theta' = argmin -sum_{j in g} r_j(theta)^2 + mu ||X theta - y||^2,
  // r_j = x_j^T theta - y_j. This is the paper's -L_test + lambda L_train times 1 / c_test with
  // mu = lambda c_train / c_test, where L_train = c_train ||X theta - y||^2 and L_test =
  // c_test sum r^2; with the mean MSE above (c_train = 1/N, c_test = 1): lambda = mu N.
  // The objective is convex iff mu > mu_crit = lambda_max(X_g A^{-1} X_g^T) (for one test
  // point: its leverage h = xhat^T A^{-1} xhat, typically ~ d/N). The paper's lambda = 1 on the
  // mean MSE (mu = 1/N) is indefinite for almost every test point; mu = 1 (lambda = 1 on a
  // sum of squares) is convex whenever h < 1. See docs/linreg.md for the default.
  double mu = 1.0;
  Unlearning unlearning = Unlearning::closed_form;
  int64_t unlearn_epochs = 5;   // E_u (gradient_descent)
  // GD step on the objective above, relative to the training part's curvature:
  // lr = unlearn_lr_rel / (2 mu lambda_max(A)). (GD on the paper's objective with lambda = mu N
  // and lr eta is GD on this one with the same eta, since c_test = 1.)
  double unlearn_lr_rel = 0.5;
  PathModels path = PathModels::closed_form;
  double path_lr = 0.1;         // eta of eq. 16 (sgd_epoch), on the mean MSE
  int64_t path_batch = 0;       // sgd_epoch mini-batch; 0 = N (one full-batch step = eq. 16)
  uint64_t path_seed = 0;       // sgd_epoch shuffles (only when path_batch < N)
  OnIndefinite on_indefinite = OnIndefinite::throw_error;
  Curvature curvature = Curvature::hessian;
  // fisher only: F_k + damping * (trace(F_k) / d) I, relative like attribution/methods.h.
  double fisher_damping = 1e-3;
  // Lemma 2.5 / Corollary 2.6: baseline targets f(x_i; theta*) instead of unlearning.
  bool baseline_is_model = false;
};

struct IifResult {
  std::vector<double> scores;      // (n, groups) row-major
  std::vector<double> loss_star;   // L_test(g; theta*) per group
  std::vector<double> loss_base;   // L_test(g; theta(Gamma(0))), the least-squares fit of ybar
  std::vector<double> score_sum;   // sum_i S[i][g]; completeness: ~ loss_star - loss_base
  std::vector<double> mu_crit;     // lambda_max(X_g A^{-1} X_g^T): convex iff mu > mu_crit
  std::vector<char> indefinite;    // 1 where the unlearning objective is not positive definite
  int64_t n_indefinite = 0;
};

// Integrated Influence (eqs. 9-16, Algorithm 1) for each test group (empty = one group per
// test point). For group g:
//  1. theta' by unlearning (eq. 12), or theta* if baseline_is_model;
//  2. ybar_i = f(x_i; theta') (eq. 13);
//  3. rho_i(t_k) = (k/K) y_i + (1 - k/K) ybar_i, k = 0..K (eq. 15);
//  4. theta_k: least squares on rho(t_k), or eq. 16 (one SGD epoch from theta_{k+1});
//  5. S[i][g] = sum_{k=1..K} -(1/N) G(t_k)^T H^{-1} J_i Delta_i^k (eq. 10) with
//     G(t_k) = grad L_test(g; theta_k) = 2 X_g^T r_g(theta_k), H = (2/N) A (exact, the same at
//     every t for least squares; or the Fisher F_k of appendix E) and J_i Delta_i^k = d^2 l_i / d theta d rho * Delta_i^k =
//     -2 x_i Delta_i^k, Delta_i^k = rho_i(t_k) - rho_i(t_{k-1}) (eq. 8).
// Throws std::invalid_argument on K < 1, mu <= 0 or bad groups, and std::runtime_error on an
// indefinite unlearning objective when on_indefinite = throw_error.
IifResult integrated_influence(const Problem& p, const Fit& fit, const IifOptions& o,
                               const Groups& groups = {});

// The unlearned parameters theta' of one group (step 1 above) and whether the objective is
// indefinite (the closed form is then a saddle). Exposed for tests and diagnostics.
struct Unlearned {
  std::vector<double> theta;
  double mu_crit = 0.0;
  bool indefinite = false;
};
Unlearned unlearn(const Problem& p, const Fit& fit, const std::vector<int64_t>& group,
                  const IifOptions& o);

// ---- datamodel (Ilyas et al. 2022) ----------------------------------------------------------

struct DatamodelOptions {
  double holdout = 0.2;  // fraction of the subsets held out to choose the ridge penalty
  // Ridge penalties tried (on the centred membership Gram matrix, whose diagonal is about
  // M alpha (1 - alpha)). Chosen per test column by held-out mean squared error.
  std::vector<double> ridge_grid = {1e-6, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4};
};

struct Datamodel {
  std::vector<double> scores;     // (n, n_cols): the fitted per-sample effects beta
  std::vector<double> intercept;  // (n_cols)
  std::vector<double> ridge;      // chosen penalty per column
};

// Fits losses[m][j] ~ b_j + sum_{i in subsets[m]} beta_ij by ridge regression, the penalty
// chosen per column j on the last `holdout` fraction of the subsets, then refitted on all.
// S[i][j] = beta_ij (the change in loss from including i: the methods' sign convention).
// Throws std::invalid_argument on inconsistent sizes or fewer than 10 subsets.
Datamodel fit_datamodel(const eval::Subsets& subsets,
                        const std::vector<std::vector<double>>& losses, int64_t n,
                        const DatamodelOptions& o = {});

// ---- the LDS protocol (DESIGN.md section 7) -------------------------------------------------

struct Protocol {
  int64_t subsets = 5000;     // M subsets per trial for LDS
  double alpha = 0.3;         // subset size alpha N, without replacement
  int64_t dm_subsets = 5000;  // the datamodel's own training subsets (a different seed)
  uint64_t seed = 0;
};

// Seeds of the LDS subsets and of the datamodel's subsets for a trial (different streams).
uint64_t lds_subset_seed(uint64_t seed, uint64_t trial);
uint64_t datamodel_subset_seed(uint64_t seed, uint64_t trial);

// Everything retraining-based for one trial: the LDS subsets and their true test losses, and
// the datamodel fitted on its own disjoint-seed subsets.
struct TrialTruth {
  eval::Subsets subsets;
  std::vector<std::vector<double>> losses;     // [m][j] on the LDS subsets
  eval::Subsets dm_subsets;                    // the datamodel's training subsets
  std::vector<std::vector<double>> dm_losses;  // [m][j] on those
  Datamodel datamodel;                         // fitted per test point
};
TrialTruth trial_truth(const Problem& p, const Protocol& proto, uint64_t trial,
                       const DatamodelOptions& dm = {});

// Short names for options on the command line and in JSON.
const char* noise_name(NoiseKind k);  // "gaussian" / "laplace"

}  // namespace linreg
}  // namespace attr
}  // namespace iif
