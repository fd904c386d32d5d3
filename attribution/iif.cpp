// Integrated Influence (see iif.h for the algorithm and the equations it implements).
#include "attribution/iif.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <stdexcept>

#include "attribution/curvature.h"
#include "attribution/dense.h"
#include "attribution/featurizer.h"
#include "attribution/hvp.h"
#include "attribution/influence.h"
#include "engine/autodiff.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/progress.h"
#include "engine/rng.h"
#include "nn/optim.h"
#include "nn/trainer.h"

namespace iif {
namespace attr {
namespace {

constexpr uint64_t kUnlearnStream = 0x554E'0000'0000ull;  // "UN"
constexpr uint64_t kPathSeed = 0x5041'5448ull;            // "PATH"

Tensor one_hot(const LabeledSet& s, DType dt) { return ops::one_hot(s.labels, s.num_classes, dt, s.x.device()); }

// Mean hard-label cross-entropy of each sample (N) at the model's parameters.
std::vector<double> per_sample_loss(nn::Model& m, const LabeledSet& s, int64_t batch) {
  const Tensor z = nn::predict(m, s.x, batch);
  Tensor loss = Tensor::empty({z.dim(0)}, z.dtype(), z.device());
  ops::softmax_xent(z, one_hot(s, z.dtype()), loss, nullptr);
  return loss.to_vector();
}

// Baseline by unlearning (eq. 12): SGD on lambda * L_train(batch) - direction * L_test(group),
// dropout off. -L_test is unbounded below (a ReLU network can raise a loss without limit, and its
// gradient grows with the weights), so the paper's fixed "E_u epochs" diverges for most MNIST test
// samples at lr 0.01. With stop_at_chance the raising direction stops once the mean test loss
// reaches log C (the model is no better than chance on z: "unlearned"), E_u epochs at most.
// Returns the number of SGD steps taken.
int64_t unlearn(nn::Model& m, const LabeledSet& train, const LabeledSet& group, const IifOptions& o) {
  profile::Range range("iif unlearning");
  const int64_t n = train.size();
  const Tensor t_train = one_hot(train, train.x.dtype());
  const Tensor t_test = one_hot(group, group.x.dtype());
  SgdParams h;
  h.lr = o.unlearn_lr;
  nn::Sgd opt(m.named_parameters(), h);
  m.set_training(false);
  const double chance_loss = o.unlearn_stop_factor * std::log(static_cast<double>(group.num_classes));
  int64_t steps = 0;
  for (int e = 0; e < o.unlearn_epochs; ++e) {
    const std::vector<int64_t> order = rng::permutation(n, o.seed, kUnlearnStream + e);
    for (int64_t b0 = 0; b0 < n; b0 += o.sgd_batch) {
      const std::vector<int64_t> idx(order.begin() + b0, order.begin() + std::min(n, b0 + o.sgd_batch));
      Var l_train = ad::softmax_xent_mean(m.forward(Var(ops::gather_rows(train.x, idx))),
                                          ops::gather_rows(t_train, idx));
      Var l_test = ad::softmax_xent_mean(m.forward(Var(group.x)), t_test);
      if (o.unlearn_stop_at_chance && o.baseline_direction > 0 && l_test.value().item() >= chance_loss)
        return steps;
      Var obj = ad::add_scaled(l_train, o.lambda, l_test, -static_cast<double>(o.baseline_direction));
      opt.zero_grad();
      backward(obj);
      opt.step();
      ++steps;
    }
  }
  return steps;
}

// Throws, naming the stage and what to change, if the model's parameters are not all finite.
void require_finite(nn::Model& m, const std::string& stage, const std::string& advice) {
  for (auto& p : m.named_parameters()) {
    const double s = ops::dot(p.var->value(), p.var->value());
    if (!std::isfinite(s))
      throw std::runtime_error("iif: " + stage + " produced non-finite parameters in '" + p.name + "'; " + advice);
  }
}

}  // namespace

Iif::Iif(const IifOptions& o) : o_(o) {
  if (o.K < 1) throw std::invalid_argument("iif: K must be >= 1, got " + std::to_string(o.K));
  if (o.group_size < 1) throw std::invalid_argument("iif: group size must be >= 1");
  if (o.baseline_direction != 1 && o.baseline_direction != -1)
    throw std::invalid_argument("iif: baseline direction must be +1 or -1");
}

std::string Iif::name() const { return o_.group_size == 1 ? "iif" : "iif-grouped"; }

void Iif::fit(nn::Model& model, const LabeledSet& train) {
  model_ = &model;
  train_ = train;
  ProjectorSpec spec = o_.common.projector;
  if (o_.curvature != PathCurvature::fisher) spec.kind = ProjectionKind::identity;  // exact gradients
  proj_ = std::make_unique<Projector>(model.num_parameters(), spec);
}

Tensor Iif::path_targets(const std::vector<double>& ybar, int k) const {
  const int64_t n = train_.size(), c = train_.num_classes;
  const double t = double(k) / double(o_.K);
  std::vector<double> r(static_cast<std::size_t>(n * c), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = train_.labels[i];
    if (o_.targets == PathTargets::true_class) {
      r[i * c + y] = t + (1.0 - t) * ybar[i * c + y];
    } else {
      for (int64_t j = 0; j < c; ++j) r[i * c + j] = (1.0 - t) * ybar[i * c + j] + (j == y ? t : 0.0);
    }
  }
  return Tensor::from_vector(r, {n, c}, train_.x.dtype(), train_.x.device());
}

Tensor Iif::integrate(const std::vector<double>& ybar,
                      const std::function<Tensor(nn::Model&)>& test_features, int64_t n_test) {
  const int64_t n = train_.size();
  // Path models theta_K = theta*, theta_k = one epoch from theta_{k+1} on rho(t_k) (eq. 16).
  std::vector<std::unique_ptr<nn::Model>> path(static_cast<std::size_t>(o_.K + 1));
  path[o_.K] = model_->clone();
  for (int k = o_.K - 1; k >= 0; --k) {
    profile::Range range("iif path model");
    path[k] = path[k + 1]->clone();
    nn::TrainConfig c;
    c.epochs = 1;
    c.batch = o_.sgd_batch;
    c.lr = o_.path_lr;
    c.momentum = 0.0;
    c.seed = o_.seed ^ (kPathSeed + static_cast<uint64_t>(k));
    c.progress = false;
    c.train_mode = false;
    nn::train(*path[k], train_.x, path_targets(ybar, k), c);
    require_finite(*path[k], "path model " + std::to_string(k) + " (eq. 16)", "lower --path-lr");
  }

  // Self-influence needs only the diagonal: one column, s[i] = sum_k -(1/N) v_i . w_i.
  Tensor s = Tensor::zeros({n, diagonal_ ? 1 : n_test}, DType::f64);
  Tensor w_prev;  // Hessian path: the previous step's solutions (T, M), CG's warm start
  for (int k = 1; k <= o_.K; ++k) {
    nn::Model& m = *path[k];
    const Tensor rho = path_targets(ybar, k), rho_prev = path_targets(ybar, k - 1);
    if (o_.curvature != PathCurvature::fisher) {
      // w_j = (H_k + d I)^{-1} g_j by CG, then S += -(1/N) V W^T with v_i = grad l(f(x_i), Delta_i^k)
      // exact (the cross-entropy gradient is linear in the target: the cotangent of Delta).
      profile::Range range("iif hessian step");
      const Tensor g = test_features(m).to(DType::f64);  // (T, M)
      HvpOptions h;
      h.batch = o_.common.batch;
      h.curvature = o_.curvature == PathCurvature::hessian ? Curvature::hessian : Curvature::gauss_newton;
      const CurvatureOperator op(m, train_.x, rho, nn::LossKind::cross_entropy, h);
      const int64_t t = g.dim(0), mm = g.dim(1);
      Tensor w = Tensor::empty({t, mm}, DType::f64);
      std::unique_ptr<CurvatureOperator> gn;  // the fallback for a solve that meets negative curvature
      for (int64_t j = 0; j < t; ++j) {
        const Tensor b = g.rows(j, j + 1).reshape({mm}).clone();
        double res = 0;
        const Tensor x0 = w_prev.defined() ? w_prev.rows(j, j + 1).reshape({mm}) : Tensor();
        const auto solve = [&](const CurvatureOperator& c) {
          const LinearOperator a = [&](const Tensor& vec) { return c.apply(vec, o_.hessian_damping); };
          return conjugate_gradient(a, b, o_.cg_iters, 1e-6, nullptr, &res, x0);
        };
        Tensor x;
        try {
          x = solve(op);
        } catch (const std::runtime_error&) {
          // The damped Hessian of the path loss is indefinite along a CG direction (the path
          // targets are soft, so its first-order terms do not vanish): solve this test sample
          // with the Gauss-Newton matrix of the same loss, which is positive semi-definite.
          if (o_.curvature != PathCurvature::hessian) throw;
          if (!gn) {
            HvpOptions hg = h;
            hg.curvature = Curvature::gauss_newton;
            gn = std::make_unique<CurvatureOperator>(m, train_.x, rho, nn::LossKind::cross_entropy, hg);
          }
          x = solve(*gn);
          ++gauss_newton_fallbacks_;
        }
        worst_cg_residual_ = std::max(worst_cg_residual_, res);
        w.rows(j, j + 1).copy_from(x.reshape({1, mm}));
      }
      const Tensor delta = ops::sub(rho, rho_prev);
      s = ops::add(s, exact_gradient_products(m, train_.x, [&](const Tensor& out, int64_t first) {
        return xent_cotangent(out, delta.rows(first, first + out.dim(0)));
      }, w, -1.0 / double(n)));
      w_prev = w;
      continue;
    }
    Tensor u, v;
    if (o_.targets == PathTargets::true_class) {
      // u_i = rho_i phi_i and v_i = (rho_i - rho_prev_i) phi_i with phi the hard-label gradient.
      const Tensor phi = loss_gradient_features(m, train_, *proj_, o_.common.batch, false);
      const std::vector<double> rv = rho.to_vector(), pv = rho_prev.to_vector();
      std::vector<double> a(static_cast<std::size_t>(n)), d(static_cast<std::size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t at = i * train_.num_classes + train_.labels[i];
        a[i] = rv[at];
        d[i] = rv[at] - pv[at];
      }
      u = scale_rows(phi, a);
      v = scale_rows(phi, d);
    } else {
      const Tensor delta = ops::sub(rho, rho_prev);
      Featurizer f(m, *proj_);
      CotangentFn cu = [&](const Tensor& out, int64_t first) {
        return xent_cotangent(out, rho.rows(first, first + out.dim(0)));
      };
      CotangentFn cv = [&](const Tensor& out, int64_t first) {
        return xent_cotangent(out, delta.rows(first, first + out.dim(0)));
      };
      std::vector<Tensor> uv = f.project(train_.x, {cu, cv}, o_.common.batch, false);
      u = uv[0].to(DType::f64);
      v = uv[1].to(DType::f64);
    }
    FisherAccumulator acc(u.dim(1), DType::f64);
    acc.add(u);
    const Tensor fisher = acc.finalize();
    const Tensor g = test_features(m);  // (T, P) f64
    const Tensor w = damped_solve(fisher, relative_damping(fisher, o_.common.damping), transpose(g));
    if (diagonal_) {
      const std::vector<double> q = diagonal_of_product(v, w);
      std::vector<double> sv = s.to_vector();
      for (int64_t i = 0; i < n; ++i) sv[i] -= q[i] / double(n);
      s = Tensor::from_vector(sv, s.shape(), DType::f64);
    } else {
      ops::gemm(false, false, -1.0 / double(n), v, w, 1.0, s);  // S += -(1/N) V F^{-1} G^T
    }
  }
  path_front_ = std::move(path[0]);
  return s;
}

Tensor Iif::score_group(const LabeledSet& group) {
  auto baseline = model_->clone();
  if (!o_.baseline_is_model) {
    unlearn_steps_.push_back(unlearn(*baseline, train_, group, o_));
    require_finite(*baseline, "the unlearning (eq. 12)", "lower --unlearn-lr, raise --lambda or use fewer --unlearn-epochs");
  }
  const std::vector<double> ybar = ops::softmax(nn::predict(*baseline, train_.x, o_.common.batch)).to_vector();
  diagonal_ = false;
  Tensor s = integrate(ybar, [&](nn::Model& m) {
    return loss_gradient_features(m, group, *proj_, o_.common.batch, false);
  }, group.size());
  // Completeness diagnostic: the gap the scores should sum to (eq. 1).
  const std::vector<double> l_star = per_sample_loss(*model_, group, o_.common.batch);
  const std::vector<double> l_zero = per_sample_loss(*path_front_, group, o_.common.batch);
  for (std::size_t j = 0; j < l_star.size(); ++j) loss_gap_.push_back(l_star[j] - l_zero[j]);
  return s;
}

std::vector<std::vector<int64_t>> Iif::groups(const LabeledSet& test) const {
  if (!model_) throw std::logic_error("iif: groups() called before fit()");
  const int64_t t = test.size();
  std::vector<std::vector<int64_t>> groups;
  if (o_.group_by_class && o_.group_size > 1) {
    const std::vector<int64_t> pred = ops::argmax_rows(nn::predict(*model_, test.x, o_.common.batch));
    for (int64_t c = 0; c < test.num_classes; ++c) {
      std::vector<int64_t> members;
      for (int64_t j = 0; j < t; ++j)
        if (pred[j] == c) members.push_back(j);
      // Split a class of m members into ceil(m / group_size) groups of near-equal size.
      const int64_t m = static_cast<int64_t>(members.size());
      const int64_t parts = (m + o_.group_size - 1) / o_.group_size;
      for (int64_t p = 0; p < parts; ++p)
        groups.emplace_back(members.begin() + p * m / parts, members.begin() + (p + 1) * m / parts);
    }
  } else {
    for (int64_t j0 = 0; j0 < t; j0 += o_.group_size) {
      groups.emplace_back();
      for (int64_t j = j0; j < std::min(t, j0 + o_.group_size); ++j) groups.back().push_back(j);
    }
  }
  return groups;
}

Tensor Iif::score(const LabeledSet& test) {
  if (!model_) throw std::logic_error("iif: score() called before fit()");
  const int64_t t = test.size(), n = train_.size();
  loss_gap_.clear();
  unlearn_steps_.clear();
  worst_cg_residual_ = 0.0;
  gauss_newton_fallbacks_ = 0;
  const std::vector<std::vector<int64_t>> grouping = groups(test);
  std::vector<double> ov(static_cast<std::size_t>(n * t), 0.0);
  std::vector<double> gap(static_cast<std::size_t>(t), 0.0);  // loss_gap_ in test-sample order
  Progress progress(name() + " (test samples)", t, o_.common.progress);
  int64_t done = 0;
  for (const std::vector<int64_t>& members : grouping) {
    LabeledSet g;
    g.x = ops::gather_rows(test.x, members);
    for (int64_t j : members) g.labels.push_back(test.labels[static_cast<std::size_t>(j)]);
    g.num_classes = test.num_classes;
    const std::vector<double> sg = score_group(g).to_vector();
    const int64_t gs = static_cast<int64_t>(members.size());
    for (int64_t q = 0; q < gs; ++q) gap[members[q]] = loss_gap_[loss_gap_.size() - gs + q];
    for (int64_t i = 0; i < n; ++i)
      for (int64_t q = 0; q < gs; ++q) ov[i * t + members[q]] = sg[i * gs + q];
    done += gs;
    progress.update(done);
  }
  progress.finish();
  if (gauss_newton_fallbacks_ > 0 && o_.common.progress)
    std::fprintf(stderr, "iif: %lld of %lld Hessian-path solves met negative curvature and used the Gauss-Newton matrix\n",
                 (long long)gauss_newton_fallbacks_, (long long)(t * o_.K));
  loss_gap_ = std::move(gap);
  return Tensor::from_vector(ov, {n, t}, DType::f64);
}

std::vector<double> Iif::self_influence() {
  if (!model_) throw std::logic_error("iif: self_influence() called before fit()");
  if (o_.curvature != PathCurvature::fisher)
    throw std::invalid_argument("iif: self-influence with a Hessian path would take N CG solves per path step; "
                                "use the Fisher path curvature (--path-curvature fisher)");
  const int64_t n = train_.size(), c = train_.num_classes;
  // Per-sample baselines (paper 3.3): theta'_i = theta* + eta_b grad l_i(theta*), ybar_i = f(x_i; theta'_i).
  ProjectorSpec identity;
  identity.kind = ProjectionKind::identity;
  const Projector exact_proj(model_->num_parameters(), identity);
  Featurizer exact_f(*model_, exact_proj);
  const Tensor t = one_hot(train_, train_.x.dtype());
  std::vector<double> ybar(static_cast<std::size_t>(n * c));
  auto probe = model_->clone();
  auto params = probe->named_parameters();
  // Exact gradients of `chunk` samples at a time, float64: at most 1 GB (ResNet-9: 20 samples).
  const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 30) / (8 * model_->num_parameters()), 1, 64);
  Progress baselines("iif: per-sample baselines", n, o_.common.progress);
  for (int64_t b0 = 0; b0 < n; b0 += chunk) {
    const int64_t b1 = std::min(n, b0 + chunk);
    const Tensor g = exact_f.exact(train_.x.rows(b0, b1), [&](const Tensor& out, int64_t first) {
      return xent_cotangent(out, t.rows(b0 + first, b0 + first + out.dim(0)));
    }, chunk);
    for (int64_t i = b0; i < b1; ++i) {
      probe->copy_parameters_from(*model_);
      const Tensor gi = g.rows(i - b0, i - b0 + 1);
      int64_t off = 0;
      for (auto& p : params) {
        Tensor& w = p.var->mutable_value();
        const Tensor slice = gi.reshape({gi.numel()}).rows(off, off + w.numel()).reshape(w.shape());
        ops::axpby(o_.self_baseline_lr, slice.to(w.dtype()), 1.0, w);
        off += w.numel();
      }
      const std::vector<double> p = ops::softmax(nn::predict(*probe, train_.x.rows(i, i + 1), 1)).to_vector();
      for (int64_t j = 0; j < c; ++j) ybar[i * c + j] = p[j];
    }
    baselines.update(b1);
  }
  baselines.finish();
  diagonal_ = true;
  const Tensor s = integrate(ybar, [&](nn::Model& m) {
    return loss_gradient_features(m, train_, *proj_, o_.common.batch, false);
  }, n);
  diagonal_ = false;
  const std::vector<double> sv = s.to_vector();
  std::vector<double> out(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = sv[i];
  return out;
}

}  // namespace attr
}  // namespace iif
