// Grad-Dot/Cos, IF on projected gradients with the Fisher, TracIn and TRAK (see methods.h).
#include "attribution/methods.h"

#include <cmath>
#include <stdexcept>

#include "attribution/curvature.h"
#include "attribution/dense.h"
#include "attribution/featurizer.h"
#include "engine/ops.h"
#include "nn/trainer.h"

namespace iif {
namespace attr {
namespace {

void require_fitted(bool fitted, const std::string& name) {
  if (!fitted) throw std::logic_error(name + ": score() or self_influence() called before fit()");
}

Tensor one_hot_targets(const LabeledSet& s, DType dt) {
  return ops::one_hot(s.labels, s.num_classes, dt, s.x.device());
}

// Cotangent of the TRAK margin m = log p_c - log(1 - p_c) with respect to the logits:
// dm/dz = (e_c - p) / (1 - p_c). p_c is clamped away from 1 so a perfectly fitted sample gives a
// large but finite gradient (the Q = 1 - p factor then makes its score vanish, as in TRAK).
Tensor margin_cotangent(const Tensor& logits, const Tensor& onehot) {
  Tensor p = ops::softmax(logits);
  std::vector<double> pv = p.to_vector(), tv = onehot.to_vector();
  const int64_t b = logits.dim(0), c = logits.dim(1);
  for (int64_t r = 0; r < b; ++r) {
    double pc = 0;
    for (int64_t k = 0; k < c; ++k) pc += pv[r * c + k] * tv[r * c + k];
    const double inv = 1.0 / std::max(1.0 - pc, 1e-12);
    for (int64_t k = 0; k < c; ++k) pv[r * c + k] = (tv[r * c + k] - pv[r * c + k]) * inv;
  }
  return Tensor::from_vector(pv, logits.shape(), logits.dtype(), logits.device());
}

// (1 - p_true) for every sample, at the model's parameters.
std::vector<double> one_minus_p(nn::Model& model, const LabeledSet& s, int64_t batch) {
  const std::vector<double> p = ops::softmax(nn::predict(model, s.x, batch)).to_vector();
  std::vector<double> q(s.labels.size());
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = 1.0 - p[i * s.num_classes + s.labels[i]];
  return q;
}

Tensor features_with(nn::Model& model, const LabeledSet& set, const Projector& proj, int64_t batch,
                     bool progress, bool margin) {
  const Tensor t = one_hot_targets(set, set.x.dtype());
  Featurizer f(model, proj);
  CotangentFn cot = [&](const Tensor& out, int64_t first) {
    const Tensor tb = t.rows(first, first + out.dim(0));
    return margin ? margin_cotangent(out, tb) : xent_cotangent(out, tb);
  };
  // The features are formed on the model's device (per-sample gradients never leave it); the
  // (N, P) result comes to the host, where the methods' float64 algebra runs (explicit copy).
  return f.project(set.x, {cot}, batch, progress).at(0).to(DType::f64).to(Device::cpu());
}

// ---- Grad-Dot / Grad-Cos ----------------------------------------------------------------------
class GradDot final : public Method {
 public:
  GradDot(const MethodOptions& o, bool cosine) : o_(o), cosine_(cosine) {}
  std::string name() const override { return cosine_ ? "grad-cos" : "grad-dot"; }
  void fit(nn::Model& model, const LabeledSet& train) override {
    model_ = &model;
    proj_ = std::make_unique<Projector>(model.num_parameters(), o_.projector);
    phi_ = loss_gradient_features(model, train, *proj_, o_.batch, o_.progress);
    if (cosine_) phi_ = normalize_rows(phi_);
  }
  Tensor score(const LabeledSet& test) override {
    require_fitted(model_ != nullptr, name());
    Tensor g = loss_gradient_features(*model_, test, *proj_, o_.batch, false);
    if (cosine_) g = normalize_rows(g);
    Tensor s = ops::matmul(phi_, g, false, true);  // (N, T)
    return ops::scale(s, -1.0);
  }
  std::vector<double> self_influence() override {
    require_fitted(model_ != nullptr, name());
    std::vector<double> out = row_norms_squared(phi_);
    for (double& x : out) x = -x;
    return out;
  }

 private:
  static Tensor normalize_rows(const Tensor& a) {
    std::vector<double> s = row_norms_squared(a);
    for (double& x : s) x = x > 0 ? 1.0 / std::sqrt(x) : 0.0;
    return scale_rows(a, s);
  }
  MethodOptions o_;
  bool cosine_;
  nn::Model* model_ = nullptr;
  std::unique_ptr<Projector> proj_;
  Tensor phi_;
};

// ---- IF with the projected Fisher --------------------------------------------------------------
class IfFisher final : public Method {
 public:
  explicit IfFisher(const MethodOptions& o) : o_(o) {}
  std::string name() const override { return "if-fisher"; }
  void fit(nn::Model& model, const LabeledSet& train) override {
    model_ = &model;
    proj_ = std::make_unique<Projector>(model.num_parameters(), o_.projector);
    phi_ = loss_gradient_features(model, train, *proj_, o_.batch, o_.progress);
    FisherAccumulator acc(phi_.dim(1), DType::f64);
    acc.add(phi_);
    fisher_ = acc.finalize();
    damping_ = relative_damping(fisher_, o_.damping);
  }
  Tensor score(const LabeledSet& test) override {
    require_fitted(model_ != nullptr, name());
    const Tensor g = loss_gradient_features(*model_, test, *proj_, o_.batch, false);  // (T, P)
    const Tensor w = damped_solve(fisher_, damping_, transpose(g));                   // (P, T)
    return ops::scale(ops::matmul(phi_, w), -1.0 / double(phi_.dim(0)));
  }
  std::vector<double> self_influence() override {
    require_fitted(model_ != nullptr, name());
    std::vector<double> q = diagonal_of_product(phi_, damped_solve(fisher_, damping_, transpose(phi_)));
    for (double& x : q) x *= -1.0 / double(phi_.dim(0));
    return q;
  }

 private:
  MethodOptions o_;
  nn::Model* model_ = nullptr;
  std::unique_ptr<Projector> proj_;
  Tensor phi_, fisher_;
  double damping_ = 0;
};

// ---- TracIn ------------------------------------------------------------------------------------
class TracIn final : public Method {
 public:
  TracIn(const MethodOptions& o, std::vector<TracInCheckpoint> c) : o_(o), ckpts_(std::move(c)) {
    if (ckpts_.empty()) throw std::invalid_argument("tracin: no checkpoints given");
  }
  std::string name() const override { return "tracin"; }
  void fit(nn::Model&, const LabeledSet& train) override {
    proj_ = std::make_unique<Projector>(ckpts_[0].model->num_parameters(), o_.projector);
    phi_.clear();
    for (auto& c : ckpts_) phi_.push_back(loss_gradient_features(*c.model, train, *proj_, o_.batch, o_.progress));
  }
  Tensor score(const LabeledSet& test) override {
    require_fitted(!phi_.empty(), name());
    Tensor s = Tensor::zeros({phi_[0].dim(0), test.size()}, DType::f64);
    for (std::size_t c = 0; c < ckpts_.size(); ++c) {
      const Tensor g = loss_gradient_features(*ckpts_[c].model, test, *proj_, o_.batch, false);
      ops::gemm(false, true, -ckpts_[c].lr, phi_[c], g, 1.0, s);
    }
    return s;
  }
  std::vector<double> self_influence() override {
    require_fitted(!phi_.empty(), name());
    std::vector<double> out(static_cast<std::size_t>(phi_[0].dim(0)), 0.0);
    for (std::size_t c = 0; c < ckpts_.size(); ++c) {
      const std::vector<double> sq = row_norms_squared(phi_[c]);
      for (std::size_t i = 0; i < out.size(); ++i) out[i] -= ckpts_[c].lr * sq[i];
    }
    return out;
  }

 private:
  MethodOptions o_;
  std::vector<TracInCheckpoint> ckpts_;
  std::unique_ptr<Projector> proj_;
  std::vector<Tensor> phi_;
};

// ---- TRAK --------------------------------------------------------------------------------------
class Trak final : public Method {
 public:
  Trak(const MethodOptions& o, std::vector<std::shared_ptr<nn::Model>> e) : o_(o), ensemble_(std::move(e)) {}
  std::string name() const override { return "trak"; }
  void fit(nn::Model& model, const LabeledSet& train) override {
    models_.clear();
    if (ensemble_.empty()) models_.push_back(&model);
    for (auto& m : ensemble_) models_.push_back(m.get());
    proj_ = std::make_unique<Projector>(models_[0]->num_parameters(), o_.projector);
    per_model_.clear();
    for (nn::Model* m : models_) {
      PerModel pm;
      pm.phi = features_with(*m, train, *proj_, o_.batch, o_.progress, true);
      pm.q = one_minus_p(*m, train, o_.batch);
      // Phi^T Phi (no 1/N: TRAK's kernel), damped relative to its mean diagonal.
      FisherAccumulator acc(pm.phi.dim(1), DType::f64);
      acc.add(pm.phi);
      pm.kernel = ops::scale(acc.finalize(), double(pm.phi.dim(0)));
      pm.damping = relative_damping(pm.kernel, o_.damping);
      per_model_.push_back(std::move(pm));
    }
  }
  Tensor score(const LabeledSet& test) override {
    require_fitted(!per_model_.empty(), name());
    const int64_t n = per_model_[0].phi.dim(0), t = test.size();
    Tensor tau = Tensor::zeros({n, t}, DType::f64);
    for (std::size_t m = 0; m < models_.size(); ++m) {
      const PerModel& pm = per_model_[m];
      const Tensor g = features_with(*models_[m], test, *proj_, o_.batch, false, true);
      const Tensor w = damped_solve(pm.kernel, pm.damping, transpose(g));  // (P, T)
      std::vector<double> s = ops::matmul(pm.phi, w).to_vector();        // (N, T)
      std::vector<double> acc = tau.to_vector();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < t; ++j) acc[i * t + j] += s[i * t + j] * pm.q[i] / double(models_.size());
      tau = Tensor::from_vector(acc, {n, t}, DType::f64);
    }
    return ops::scale(tau, -1.0);
  }
  std::vector<double> self_influence() override {
    require_fitted(!per_model_.empty(), name());
    std::vector<double> out(static_cast<std::size_t>(per_model_[0].phi.dim(0)), 0.0);
    for (const PerModel& pm : per_model_) {
      const std::vector<double> q = diagonal_of_product(pm.phi, damped_solve(pm.kernel, pm.damping, transpose(pm.phi)));
      for (std::size_t i = 0; i < out.size(); ++i) out[i] -= q[i] * pm.q[i] / double(per_model_.size());
    }
    return out;
  }

 private:
  struct PerModel {
    Tensor phi, kernel;
    std::vector<double> q;
    double damping = 0;
  };
  MethodOptions o_;
  std::vector<std::shared_ptr<nn::Model>> ensemble_;
  std::vector<nn::Model*> models_;
  std::unique_ptr<Projector> proj_;
  std::vector<PerModel> per_model_;
};

}  // namespace

Tensor loss_gradient_features(nn::Model& model, const LabeledSet& set, const Projector& proj,
                              int64_t batch, bool progress) {
  return features_with(model, set, proj, batch, progress, false);
}

std::unique_ptr<Method> make_grad_dot(const MethodOptions& o, bool cosine) {
  return std::make_unique<GradDot>(o, cosine);
}
std::unique_ptr<Method> make_if_fisher(const MethodOptions& o) { return std::make_unique<IfFisher>(o); }
std::unique_ptr<Method> make_tracin(const MethodOptions& o, std::vector<TracInCheckpoint> c) {
  return std::make_unique<TracIn>(o, std::move(c));
}
std::unique_ptr<Method> make_trak(const MethodOptions& o, std::vector<std::shared_ptr<nn::Model>> e) {
  return std::make_unique<Trak>(o, std::move(e));
}

}  // namespace attr
}  // namespace iif
