// Influence functions with exact Hessian-vector products (see influence.h).
#include "attribution/influence.h"

#include <stdexcept>

#include "attribution/curvature.h"
#include "attribution/dense.h"
#include "attribution/featurizer.h"
#include "engine/ops.h"
#include "engine/progress.h"
#include "engine/rng.h"

namespace iif {
namespace attr {
namespace {

class Influence final : public Method {
 public:
  explicit Influence(const InfluenceOptions& o) : o_(o) {}

  std::string name() const override {
    return o_.solver == IhvpSolver::cg ? "if-cg" : o_.solver == IhvpSolver::lissa ? "if-lissa" : "if-explicit";
  }

  void fit(nn::Model& model, const LabeledSet& train) override {
    curvature_op_.reset();
    model_ = &model;
    train_ = train;
    targets_ = ops::one_hot(train.labels, train.num_classes, train.x.dtype(), train.x.device());
    ProjectorSpec id;
    id.kind = ProjectionKind::identity;
    proj_ = std::make_unique<Projector>(model.num_parameters(), id);
    if (o_.solver == IhvpSolver::explicit_matrix) {
      if (model.num_parameters() > o_.max_explicit_params)
        throw std::invalid_argument("if-explicit: the model has " + std::to_string(model.num_parameters()) +
                                    " parameters; an explicit Hessian is for at most " +
                                    std::to_string(o_.max_explicit_params) + " (use if-cg or if-lissa)");
      HvpOptions h;
      h.curvature = o_.curvature;
      hessian_ = curvature_matrix(model, train.x, targets_, nn::LossKind::cross_entropy, h);
    }
  }

  Tensor score(const LabeledSet& test) override {
    require_fit();
    const Tensor g_test = gradients(test);                // (T, M)
    const Tensor x = inverse_hvp(g_test);                 // (T, M): rows (H + d)^{-1} g_j
    return exact_gradient_products(*model_, train_.x, [&](const Tensor& out, int64_t first) {
      return xent_cotangent(out, targets_.rows(first, first + out.dim(0)));
    }, x, -1.0 / double(train_.size()));
  }

  std::vector<double> self_influence() override {
    require_fit();
    const int64_t n = train_.size();
    std::vector<double> out(static_cast<std::size_t>(n));
    Featurizer f(*model_, *proj_);
    Progress progress(name() + " self-influence", n, o_.common.progress);
    const int64_t chunk = 64;
    for (int64_t b0 = 0; b0 < n; b0 += chunk) {
      const int64_t b1 = std::min(n, b0 + chunk);
      const Tensor gi = train_gradients(f, b0, b1);
      const Tensor x = inverse_hvp(gi);
      const std::vector<double> gv = gi.to_vector(), xv = x.to_vector();
      const int64_t m = gi.dim(1);
      for (int64_t i = b0; i < b1; ++i) {
        double d = 0;
        for (int64_t k = 0; k < m; ++k) d += gv[(i - b0) * m + k] * xv[(i - b0) * m + k];
        out[i] = -d / double(n);
      }
      progress.update(b1);
    }
    progress.finish();
    return out;
  }

  // Diagnostics of the last CG solves: the worst relative residual reached.
  double worst_residual = 0.0;

 private:
  void require_fit() const {
    if (!model_) throw std::logic_error(name() + ": score() or self_influence() called before fit()");
  }

  Tensor gradients(const LabeledSet& s) {
    const Tensor t = ops::one_hot(s.labels, s.num_classes, s.x.dtype(), s.x.device());
    Featurizer f(*model_, *proj_);
    return f.exact(s.x, [&](const Tensor& out, int64_t first) {
      return xent_cotangent(out, t.rows(first, first + out.dim(0)));
    }).to(DType::f64);
  }

  Tensor train_gradients(Featurizer& f, int64_t b0, int64_t b1) {
    return f.exact(train_.x.rows(b0, b1), [&](const Tensor& out, int64_t first) {
      return xent_cotangent(out, targets_.rows(b0 + first, b0 + first + out.dim(0)));
    }).to(DType::f64);
  }

  // Rows of G (R, M) -> rows of (H + damping I)^{-1} G^T, transposed back: (R, M) float64.
  Tensor inverse_hvp(const Tensor& g) {
    const int64_t r = g.dim(0), m = g.dim(1);
    if (o_.solver == IhvpSolver::explicit_matrix) {
      // H symmetric: solve H X = G^T, X (M, R); return X^T.
      const Tensor xt = damped_solve(hessian_, o_.common.damping, transpose(g));
      return transpose(xt);
    }
    HvpOptions h;
    h.curvature = o_.curvature;
    Tensor out = Tensor::empty({r, m}, DType::f64);
    for (int64_t j = 0; j < r; ++j) {
      const Tensor b = g.rows(j, j + 1).reshape({m}).clone();
      Tensor x;
      if (o_.solver == IhvpSolver::cg) {
        if (!curvature_op_) curvature_op_ = std::make_unique<CurvatureOperator>(*model_, train_.x, targets_, nn::LossKind::cross_entropy, h);
        const LinearOperator a = [&](const Tensor& v) { return curvature_op_->apply(v, o_.common.damping); };
        int iters = 0;
        double res = 0;
        x = conjugate_gradient(a, b, o_.cg_iters, o_.cg_tol, &iters, &res);
        worst_residual = std::max(worst_residual, res);
      } else {
        const int64_t n = train_.size();
        const IndexedHvp hv = [&](const Tensor& v, int repeat, int step) {
          if (o_.lissa_batch <= 0 || o_.lissa_batch >= n)
            return hessian_vector_product(*model_, train_.x, targets_, nn::LossKind::cross_entropy, v, h);
          const std::vector<int64_t> idx = rng::sample_without_replacement(
              n, o_.lissa_batch, o_.seed, static_cast<uint64_t>(repeat) * 1000003ull + static_cast<uint64_t>(step));
          return hessian_vector_product(*model_, ops::gather_rows(train_.x, idx), ops::gather_rows(targets_, idx),
                                        nn::LossKind::cross_entropy, v, h);
        };
        // LiSSA's fixed point is (H + damping * scale)^{-1} b: pass damping / scale so that
        // --damping means the same Tikhonov term for every solver.
        x = lissa(hv, b, o_.common.damping / o_.lissa_scale, o_.lissa_scale, o_.lissa_depth, o_.lissa_repeats);
      }
      out.rows(j, j + 1).copy_from(x.reshape({1, m}));
    }
    return out;
  }

  InfluenceOptions o_;
  nn::Model* model_ = nullptr;
  LabeledSet train_;
  Tensor targets_, hessian_;
  std::unique_ptr<Projector> proj_;
  std::unique_ptr<CurvatureOperator> curvature_op_;  // CG: the forward pass at theta*, built once
};

}  // namespace

std::unique_ptr<Method> make_influence(const InfluenceOptions& o) { return std::make_unique<Influence>(o); }

Tensor exact_gradient_products(nn::Model& model, const Tensor& x, const CotangentFn& cot, const Tensor& w,
                               double scale, int64_t chunk) {
  const int64_t n = x.dim(0), m = model.num_parameters();
  if (w.ndim() != 2 || w.dim(1) != m)
    throw std::invalid_argument("exact_gradient_products: W must be (R, " + std::to_string(m) + ")");
  if (chunk < 1) throw std::invalid_argument("exact_gradient_products: chunk must be >= 1");
  ProjectorSpec id;
  id.kind = ProjectionKind::identity;
  const Projector proj(m, id);
  Featurizer f(model, proj);
  const Tensor w64 = w.to(DType::f64);
  Tensor s = Tensor::zeros({n, w.dim(0)}, DType::f64);
  for (int64_t b0 = 0; b0 < n; b0 += chunk) {
    const int64_t b1 = std::min(n, b0 + chunk);
    const Tensor g = f.exact(x.rows(b0, b1), [&](const Tensor& out, int64_t first) {
      return cot(out, b0 + first);
    }, chunk).to(DType::f64);  // (B, M)
    Tensor sb = s.rows(b0, b1);
    ops::gemm(false, true, scale, g, w64, 0.0, sb);
  }
  return s;
}

}  // namespace attr
}  // namespace iif
