// Attribution methods on small neural networks: the paper's identities (IIF with K = 1 and the
// model's own predictions as baseline equals IF, Lemma 2.5 / Corollary 2.6), each method against
// an independent computation from exact per-sample gradients, the shared sign convention, and
// mislabel detection better than chance on real MNIST.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "attribution/evaluation.h"
#include "attribution/iif.h"
#include "attribution/influence.h"
#include "attribution/methods.h"
#include "engine/autodiff.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/philox.cuh"
#include "nn/datasets.h"
#include "nn/trainer.h"

using namespace iif;

namespace {

// A small float64 classification problem and a model trained on it.
struct Problem {
  attr::LabeledSet train, test;
  std::unique_ptr<nn::Model> model;
};

Problem make_problem(int64_t n = 40, int64_t t = 6) {
  Problem p;
  const int64_t d = 6, c = 3;
  auto gen = [&](int64_t rows, uint64_t stream, attr::LabeledSet& s) {
    std::vector<double> x(rows * d);
    for (int64_t i = 0; i < rows * d; ++i) x[i] = 2.0 * philox::uniform(3, stream, i) - 1.0;
    s.x = Tensor::from_vector(x, {rows, d}, DType::f64);
    for (int64_t i = 0; i < rows; ++i) s.labels.push_back((x[i * d] + x[i * d + 1] > 0 ? 1 : 0) + (x[i * d + 2] > 0.6 ? 1 : 0));
    s.num_classes = c;
  };
  gen(n, 1, p.train);
  gen(t, 2, p.test);
  nn::Init init;
  init.dtype = DType::f64;
  init.seed = 4;
  p.model = nn::make_model("mlp:6-8-3,dropout=0", init);
  nn::TrainConfig cfg;
  cfg.epochs = 30;
  cfg.batch = 8;
  cfg.lr = 0.05;
  cfg.progress = false;
  nn::train(*p.model, p.train.x, ops::one_hot(p.train.labels, c, DType::f64, Device::cpu()), cfg);
  return p;
}

// Exact per-sample loss gradients, one sample at a time through the autodiff (independent of
// the featurizer): (N, M).
std::vector<std::vector<double>> exact_grads(nn::Model& m, const attr::LabeledSet& s) {
  std::vector<std::vector<double>> g;
  for (int64_t i = 0; i < s.size(); ++i) {
    for (auto& p : m.named_parameters()) p.var->zero_grad();
    Var out = m.forward(Var(s.x.rows(i, i + 1)));
    backward(ad::softmax_xent_mean(out, ops::one_hot({s.labels[i]}, s.num_classes, DType::f64, Device::cpu())));
    std::vector<double> row;
    for (auto& p : m.named_parameters()) {
      const auto v = p.var->grad().to_vector();
      row.insert(row.end(), v.begin(), v.end());
    }
    g.push_back(row);
  }
  for (auto& p : m.named_parameters()) p.var->zero_grad();
  return g;
}

double dotv(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Solves A x = b by Gaussian elimination without pivoting (A symmetric positive definite).
std::vector<double> solve_dense(std::vector<double> a, std::vector<double> b) {
  const int64_t m = static_cast<int64_t>(b.size());
  for (int64_t col = 0; col < m; ++col)
    for (int64_t r = col + 1; r < m; ++r) {
      const double k = a[r * m + col] / a[col * m + col];
      for (int64_t c2 = col; c2 < m; ++c2) a[r * m + c2] -= k * a[col * m + c2];
      b[r] -= k * b[col];
    }
  for (int64_t r = m - 1; r >= 0; --r) {
    for (int64_t c2 = r + 1; c2 < m; ++c2) b[r] -= a[r * m + c2] * b[c2];
    b[r] /= a[r * m + r];
  }
  return b;
}

attr::MethodOptions exact_options() {
  attr::MethodOptions o;
  o.projector.kind = attr::ProjectionKind::identity;
  o.progress = false;
  o.batch = 7;  // does not divide N
  return o;
}

void check_close(const Tensor& a, const Tensor& b, double tol) {
  REQUIRE(a.shape() == b.shape());
  const auto x = a.to_vector(), y = b.to_vector();
  double scale = 0, worst = 0;
  for (double v : y) scale = std::max(scale, std::fabs(v));
  for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::fabs(x[i] - y[i]));
  INFO("max abs difference " << worst << " on values up to " << scale);
  CHECK(worst <= tol * (1.0 + scale));
}

}  // namespace

TEST_CASE("Grad-Dot and Grad-Cos equal -g_test . g_i from exact per-sample gradients") {
  Problem p = make_problem();
  const auto gi = exact_grads(*p.model, p.train), gt = exact_grads(*p.model, p.test);
  for (bool cosine : {false, true}) {
    auto m = attr::make_grad_dot(exact_options(), cosine);
    m->fit(*p.model, p.train);
    const auto s = m->score(p.test).to_vector();
    const auto self = m->self_influence();
    const int64_t t = p.test.size();
    for (int64_t i = 0; i < p.train.size(); ++i) {
      for (int64_t j = 0; j < t; ++j) {
        double want = -dotv(gi[i], gt[j]);
        if (cosine) want /= std::sqrt(dotv(gi[i], gi[i]) * dotv(gt[j], gt[j]));
        CHECK(s[i * t + j] == doctest::Approx(want).epsilon(1e-9));
      }
      CHECK(self[i] == doctest::Approx(cosine ? -1.0 : -dotv(gi[i], gi[i])).epsilon(1e-9));
    }
  }
}

TEST_CASE("TracIn with one checkpoint and lr 1 equals Grad-Dot") {
  Problem p = make_problem();
  auto gd = attr::make_grad_dot(exact_options(), false);
  gd->fit(*p.model, p.train);
  auto tr = attr::make_tracin(exact_options(), {{std::shared_ptr<nn::Model>(p.model->clone()), 1.0}});
  tr->fit(*p.model, p.train);
  check_close(tr->score(p.test), gd->score(p.test), 1e-12);
}

TEST_CASE("Lemma 2.5 / Corollary 2.6: IIF with K = 1 and baseline f(x; theta*) equals IF") {
  Problem p = make_problem();
  attr::IifOptions o;
  o.common = exact_options();
  o.common.damping = 1e-2;
  o.K = 1;
  o.baseline_is_model = true;
  o.targets = attr::PathTargets::full_soft;  // the lemma's linear path on whole target vectors
  attr::Iif iif(o);
  iif.fit(*p.model, p.train);
  auto inf = attr::make_if_fisher(o.common);
  inf->fit(*p.model, p.train);
  check_close(iif.score(p.test), inf->score(p.test), 1e-9);
  SUBCASE("and with a random projection") {
    o.common.projector.kind = attr::ProjectionKind::rademacher;
    o.common.projector.dim = 16;
    attr::Iif iif_p(o);
    iif_p.fit(*p.model, p.train);
    auto inf_p = attr::make_if_fisher(o.common);
    inf_p->fit(*p.model, p.train);
    check_close(iif_p.score(p.test), inf_p->score(p.test), 1e-9);
  }
}

TEST_CASE("Lemma 2.5 with the Hessian path: IIF with K = 1 and baseline f(x; theta*) equals IF (CG)") {
  // With the baseline theta* itself and K = 1 the only path model is theta*, whose path loss is
  // the training loss: the Hessian path's CG solve is IF-CG's, and v_i the plain loss gradient.
  Problem p = make_problem();
  for (attr::PathCurvature c : {attr::PathCurvature::hessian, attr::PathCurvature::gauss_newton}) {
    CAPTURE(static_cast<int>(c));
    attr::IifOptions o;
    o.common = exact_options();
    o.K = 1;
    o.baseline_is_model = true;
    o.targets = attr::PathTargets::full_soft;
    o.curvature = c;
    o.cg_iters = 7;  // stopped early on purpose: both must take the same 7 CG steps
    o.hessian_damping = 0.05;
    attr::Iif iif(o);
    iif.fit(*p.model, p.train);
    attr::InfluenceOptions io;
    io.common = exact_options();
    io.common.damping = 0.05;
    io.cg_iters = 7;
    io.curvature = c == attr::PathCurvature::hessian ? attr::Curvature::hessian : attr::Curvature::gauss_newton;
    auto inf = attr::make_influence(io);
    inf->fit(*p.model, p.train);
    check_close(iif.score(p.test), inf->score(p.test), 1e-9);
    CHECK(iif.last_worst_cg_residual() > 0.0);
  }
}

TEST_CASE("IIF with the Hessian path: more CG products approach the converged solve") {
  // K = 3 with a real unlearning: the warm-started solves along the path converge to the same
  // scores as a long solve, and the self-influence refuses the N solves per step.
  Problem p = make_problem(30, 3);
  attr::IifOptions o;
  o.common = exact_options();
  o.K = 3;
  o.unlearn_epochs = 1;
  o.curvature = attr::PathCurvature::gauss_newton;
  o.hessian_damping = 0.05;
  auto run = [&](int iters) {
    o.cg_iters = iters;
    attr::Iif m(o);
    m.fit(*p.model, p.train);
    return m.score(p.test).to_vector();
  };
  const std::vector<double> ref = run(400), few = run(3), more = run(12);
  auto dist = [&](const std::vector<double>& a) {
    double d = 0, n = 0;
    for (std::size_t i = 0; i < a.size(); ++i) d += (a[i] - ref[i]) * (a[i] - ref[i]), n += ref[i] * ref[i];
    return std::sqrt(d / n);
  };
  CHECK(dist(more) < dist(few));
  CHECK(dist(more) < 0.1);
  attr::Iif m(o);
  m.fit(*p.model, p.train);
  CHECK_THROWS_AS(m.self_influence(), std::invalid_argument);
}

TEST_CASE("IIF with the Hessian path: a solve that meets negative curvature falls back to Gauss-Newton") {
  // Full soft path targets far from the model's outputs (a long unlearning, no stop) give the
  // path loss large first-order terms, and with almost no damping its Hessian is indefinite.
  Problem p = make_problem(30, 3);
  attr::IifOptions o;
  o.common = exact_options();
  o.K = 2;
  o.targets = attr::PathTargets::full_soft;
  o.unlearn_stop_at_chance = false;
  o.unlearn_epochs = 20;
  o.unlearn_lr = 0.2;
  o.hessian_damping = 1e-8;
  o.cg_iters = 60;
  o.curvature = attr::PathCurvature::hessian;
  attr::Iif h(o);
  h.fit(*p.model, p.train);
  const std::vector<double> sh = h.score(p.test).to_vector();
  // Every solve (3 test samples x K steps) meets negative curvature here.
  REQUIRE(h.last_gauss_newton_fallbacks() == 3 * o.K);
  for (double x : sh) CHECK(std::isfinite(x));
  o.curvature = attr::PathCurvature::gauss_newton;
  attr::Iif g(o);
  g.fit(*p.model, p.train);
  const std::vector<double> sg = g.score(p.test).to_vector();
  // So the scores are those of the Gauss-Newton path, solve for solve (same warm starts).
  CHECK(g.last_gauss_newton_fallbacks() == 0);
  check_close(Tensor::from_vector(sh, {30, 3}, DType::f64), Tensor::from_vector(sg, {30, 3}, DType::f64), 1e-12);
}

TEST_CASE("IIF grouped by class: each group is scored as the same-class test samples alone") {
  Problem p = make_problem(40, 9);
  attr::IifOptions o;
  o.common = exact_options();
  o.common.damping = 1e-2;
  o.K = 2;
  o.unlearn_epochs = 1;
  o.group_size = 2;
  o.group_by_class = true;
  attr::Iif grouped(o);
  grouped.fit(*p.model, p.train);
  const std::vector<double> s = grouped.score(p.test).to_vector();
  const std::vector<double> gap = grouped.last_loss_gap();
  REQUIRE(gap.size() == 9);
  // By hand: the members of each predicted class, split into groups of at most 2 in test order
  // (a class of m members into ceil(m/2) near-equal parts), each group scored on its own.
  const std::vector<int64_t> pred = ops::argmax_rows(nn::predict(*p.model, p.test.x));
  attr::Iif alone(o);
  alone.fit(*p.model, p.train);
  int64_t covered = 0, groups = 0;
  const std::vector<std::vector<int64_t>> listed = grouped.groups(p.test);  // what table2 caches by
  for (int64_t c = 0; c < 3; ++c) {
    std::vector<int64_t> members;
    for (int64_t j = 0; j < 9; ++j)
      if (pred[j] == c) members.push_back(j);
    const int64_t m = static_cast<int64_t>(members.size()), parts = (m + 1) / 2;
    for (int64_t q = 0; q < parts; ++q) {
      const std::vector<int64_t> g(members.begin() + q * m / parts, members.begin() + (q + 1) * m / parts);
      CHECK(g.size() <= 2);
      CHECK(std::find(listed.begin(), listed.end(), g) != listed.end());
      // The group scored alone by the same grouped method: its columns of the whole run.
      attr::LabeledSet part;
      part.x = ops::gather_rows(p.test.x, g);
      for (int64_t j : g) part.labels.push_back(p.test.labels[j]);
      part.num_classes = 3;
      attr::IifOptions whole = o;
      whole.group_size = static_cast<int64_t>(g.size());
      whole.group_by_class = false;
      attr::Iif one(whole);
      one.fit(*p.model, p.train);
      const std::vector<double> sg = one.score(part).to_vector();
      for (int64_t i = 0; i < 40; ++i)
        for (std::size_t r = 0; r < g.size(); ++r) CHECK(s[i * 9 + g[r]] == sg[i * g.size() + r]);
      for (std::size_t r = 0; r < g.size(); ++r) CHECK(gap[g[r]] == one.last_loss_gap()[r]);
      const std::vector<double> sa = alone.score(part).to_vector();
      for (std::size_t k = 0; k < sa.size(); ++k) CHECK(sa[k] == sg[k]);
      covered += static_cast<int64_t>(g.size());
      ++groups;
    }
  }
  CHECK(covered == 9);
  CHECK(listed.size() == static_cast<std::size_t>(groups));
  CHECK(grouped.last_unlearn_steps().size() == static_cast<std::size_t>(groups));
}

TEST_CASE("IF-Fisher equals -(1/N) g_test^T (F + damping)^-1 g_i from exact gradients") {
  Problem p = make_problem(30, 4);
  const auto gi = exact_grads(*p.model, p.train), gt = exact_grads(*p.model, p.test);
  const int64_t n = p.train.size(), m = static_cast<int64_t>(gi[0].size());
  // F = (1/N) sum g g^T, damping relative to its mean diagonal; solve by Gauss-Jordan here.
  std::vector<double> f(m * m, 0.0);
  for (auto& g : gi)
    for (int64_t a = 0; a < m; ++a)
      for (int64_t b = 0; b < m; ++b) f[a * m + b] += g[a] * g[b] / double(n);
  double tr = 0;
  for (int64_t a = 0; a < m; ++a) tr += f[a * m + a];
  const double damp = 1e-2 * tr / double(m);
  for (int64_t a = 0; a < m; ++a) f[a * m + a] += damp;
  std::vector<std::vector<double>> w;  // F^{-1} g_test for each test sample
  for (auto& g : gt) w.push_back(solve_dense(f, g));
  auto o = exact_options();
  o.damping = 1e-2;
  auto inf = attr::make_if_fisher(o);
  inf->fit(*p.model, p.train);
  const auto s = inf->score(p.test).to_vector();
  const int64_t t = p.test.size();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < t; ++j) CHECK(s[i * t + j] == doctest::Approx(-dotv(gi[i], w[j]) / n).epsilon(1e-7));
}

TEST_CASE("sign convention: removing the most helpful samples raises the test loss") {
  // Retrain without the 5 most negative (helpful) and, separately, the 5 most positive (harmful)
  // training samples of one test point under IF-Fisher; the first must raise the test loss more.
  Problem p = make_problem(60, 1);
  auto o = exact_options();
  o.damping = 1e-2;
  auto inf = attr::make_if_fisher(o);
  inf->fit(*p.model, p.train);
  const auto s = inf->score(p.test).to_vector();
  std::vector<int64_t> order(s.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] < s[b]; });
  auto loss_without = [&](const std::vector<int64_t>& drop) {
    std::vector<int64_t> keep;
    for (int64_t i = 0; i < p.train.size(); ++i)
      if (std::find(drop.begin(), drop.end(), i) == drop.end()) keep.push_back(i);
    std::vector<int64_t> labels;
    for (int64_t i : keep) labels.push_back(p.train.labels[i]);
    nn::Init init;
    init.dtype = DType::f64;
    init.seed = 4;
    auto m = nn::make_model("mlp:6-8-3,dropout=0", init);
    nn::TrainConfig cfg;
    cfg.epochs = 30;
    cfg.batch = 8;
    cfg.lr = 0.05;
    cfg.progress = false;
    nn::train(*m, ops::gather_rows(p.train.x, keep), ops::one_hot(labels, 3, DType::f64, Device::cpu()), cfg);
    Tensor z = nn::predict(*m, p.test.x);
    Tensor l = Tensor::empty({1}, DType::f64);
    ops::softmax_xent(z, ops::one_hot(p.test.labels, 3, DType::f64, Device::cpu()), l, nullptr);
    return l.item();
  };
  const double without_helpful = loss_without({order.begin(), order.begin() + 5});
  const double without_harmful = loss_without({order.end() - 5, order.end()});
  CHECK(without_helpful > without_harmful);
}

TEST_CASE("mislabel detection on real MNIST: IIF self-influence beats chance") {
  auto d = data::load_mnist(std::string(IIF_SOURCE_DIR) + "/data/mnist", data::Split::train, 300);
  attr::LabeledSet train;
  train.x = d.images;
  train.labels = d.labels;
  std::vector<bool> flipped(train.labels.size(), false);
  for (int64_t i : rng::sample_without_replacement(300, 30, 9, 0)) {
    train.labels[i] = (train.labels[i] + 1 + i % 9) % 10;
    flipped[i] = true;
  }
  nn::Init init;
  init.seed = 1;
  auto model = nn::make_model("mlp:784-32-10", init);
  nn::TrainConfig cfg;
  cfg.epochs = 15;
  cfg.progress = false;
  nn::train(*model, train.x, ops::one_hot(train.labels, 10, DType::f32, Device::cpu()), cfg);
  attr::IifOptions o;
  o.common.projector.dim = 64;
  o.common.progress = false;
  o.K = 3;
  attr::Iif iif(o);
  iif.fit(*model, train);
  const auto self = iif.self_influence();
  std::vector<double> score;
  for (double v : self) score.push_back(-v);
  // 30 positives among 300: a random ranking has AUC 0.5 with standard deviation ~0.06.
  CHECK(eval::roc_auc(score, flipped) > 0.75);
}

TEST_CASE("IF with the Hessian: explicit, CG and LiSSA agree with a finite-difference Hessian") {
  Problem p = make_problem(30, 3);
  const auto gi = exact_grads(*p.model, p.train), gt = exact_grads(*p.model, p.test);
  const int64_t n = p.train.size(), m = static_cast<int64_t>(gi[0].size());
  const Tensor t = ops::one_hot(p.train.labels, 3, DType::f64, Device::cpu());
  // The oracle: central differences of the gradient (independent of the R-operator code).
  std::vector<double> h = attr::explicit_hessian(*p.model, p.train.x, t, nn::LossKind::cross_entropy).to_vector();
  for (int64_t a = 0; a < m; ++a)
    for (int64_t b = 0; b < a; ++b) h[a * m + b] = h[b * m + a] = 0.5 * (h[a * m + b] + h[b * m + a]);
  const double damping = 0.5;  // large enough that H + damping I is positive definite here
  for (int64_t a = 0; a < m; ++a) h[a * m + a] += damping;
  std::vector<double> want(n * gt.size());
  for (std::size_t j = 0; j < gt.size(); ++j) {
    const auto w = solve_dense(h, gt[j]);
    for (int64_t i = 0; i < n; ++i) want[i * gt.size() + j] = -dotv(gi[i], w) / double(n);
  }
  const Tensor expected = Tensor::from_vector(want, {n, static_cast<int64_t>(gt.size())}, DType::f64);

  attr::InfluenceOptions o;
  o.common = exact_options();
  o.common.damping = damping;
  SUBCASE("explicit") {
    o.solver = attr::IhvpSolver::explicit_matrix;
    auto m1 = attr::make_influence(o);
    m1->fit(*p.model, p.train);
    // FD Hessian entries carry ~1e-10 error: 1e-7 relative leaves a wide margin.
    check_close(m1->score(p.test), expected, 1e-7);
  }
  SUBCASE("conjugate gradient, run to convergence") {
    o.solver = attr::IhvpSolver::cg;
    o.cg_iters = 500;
    o.cg_tol = 1e-12;
    auto m2 = attr::make_influence(o);
    m2->fit(*p.model, p.train);
    check_close(m2->score(p.test), expected, 1e-7);
  }
  SUBCASE("LiSSA, full-batch products, deep recursion") {
    o.solver = attr::IhvpSolver::lissa;
    o.lissa_batch = 0;
    o.lissa_scale = 20.0;
    o.lissa_depth = 3000;
    auto m3 = attr::make_influence(o);
    m3->fit(*p.model, p.train);
    // Contraction rate <= 1 - damping/scale = 0.975: after 3000 steps the error is ~1e-33.
    check_close(m3->score(p.test), expected, 1e-7);
  }
  SUBCASE("self-influence is the diagonal of the train-vs-train scores") {
    o.solver = attr::IhvpSolver::explicit_matrix;
    auto m4 = attr::make_influence(o);
    m4->fit(*p.model, p.train);
    const auto self = m4->self_influence();
    const auto s = m4->score(p.train).to_vector();
    for (int64_t i = 0; i < n; ++i) CHECK(self[i] == doctest::Approx(s[i * n + i]).epsilon(1e-9));
  }
}

TEST_CASE("Lemma 2.5 on a small ResNet (conv, BatchNorm, max pooling, a residual branch): IIF with K = 1 equals IF") {
  // resnet9 with 2-4 channels on 8x8 images, float64, trained a few epochs (BatchNorm's running
  // statistics move off their defaults), attributed in evaluation mode. Exact gradients (the
  // identity projector) and projected ones (P = 16: the fused conv projection).
  nn::Init init;
  init.dtype = DType::f64;
  init.seed = 6;
  auto model = nn::make_model("resnet9:2-3-3-3-4-4-4-4,classes=3,dropout=0", init);
  auto images = [](int64_t rows, uint64_t stream, attr::LabeledSet& s) {
    std::vector<double> x(static_cast<std::size_t>(rows * 3 * 8 * 8));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = 2.0 * philox::uniform(5, stream, i) - 1.0;
    s.x = Tensor::from_vector(x, {rows, 3, 8, 8}, DType::f64);
    for (int64_t i = 0; i < rows; ++i) s.labels.push_back((x[i * 192] > 0 ? 1 : 0) + (x[i * 192 + 70] > 0.5 ? 1 : 0));
    s.num_classes = 3;
  };
  attr::LabeledSet train, test;
  images(24, 1, train);
  images(5, 2, test);
  nn::TrainConfig cfg;
  cfg.epochs = 3;
  cfg.batch = 8;
  cfg.lr = 0.05;
  cfg.progress = false;
  nn::train(*model, train.x, ops::one_hot(train.labels, 3, DType::f64, Device::cpu()), cfg);
  model->set_training(false);
  attr::IifOptions o;
  o.common = exact_options();
  o.common.damping = 1e-2;
  o.K = 1;
  o.baseline_is_model = true;
  o.targets = attr::PathTargets::full_soft;
  for (attr::ProjectionKind kind : {attr::ProjectionKind::identity, attr::ProjectionKind::rademacher}) {
    CAPTURE(static_cast<int>(kind));
    o.common.projector.kind = kind;
    o.common.projector.dim = 16;
    attr::Iif iif(o);
    iif.fit(*model, train);
    auto inf = attr::make_if_fisher(o.common);
    inf->fit(*model, train);
    const Tensor si = iif.score(test), sf = inf->score(test);
    check_close(si, sf, 1e-9);
    double biggest = 0;  // scores of O(1e-3..1) at these sizes: the identity is not 0 = 0
    for (double v : sf.to_vector()) biggest = std::max(biggest, std::fabs(v));
    CHECK(biggest > 1e-4);
  }
}
