// Fisher accumulation, damped Cholesky solves, conjugate gradient and LiSSA (see curvature.h).
#include "attribution/curvature.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/ops.h"
#include "engine/profile.h"

namespace iif {
namespace attr {
namespace {

double norm(const Tensor& x) { return std::sqrt(ops::dot(x, x)); }

void check_same_as(const char* what, const Tensor& got, const Tensor& like) {
  if (!got.defined() || got.shape() != like.shape() || got.dtype() != like.dtype())
    throw std::invalid_argument(std::string(what) + ": the operator returned " +
                                (got.defined() ? got.shape().str() + " " + dtype_name(got.dtype())
                                               : std::string("an undefined tensor")) +
                                " for an argument of " + like.shape().str() + " " +
                                dtype_name(like.dtype()) + " (it must keep shape and dtype)");
}

}  // namespace

// ---- Fisher --------------------------------------------------------------------------------

FisherAccumulator::FisherAccumulator(int64_t p, DType dtype, Device device) : p_(p) {
  if (p < 0) throw std::invalid_argument("FisherAccumulator: dimension must be >= 0, got " + std::to_string(p));
  sum_ = Tensor::zeros({p, p}, dtype, device);
}

void FisherAccumulator::add(const Tensor& u) {
  if (!u.defined() || u.ndim() != 2 || u.dim(1) != p_)
    throw std::invalid_argument("FisherAccumulator::add: expected rows (B, " + std::to_string(p_) +
                                "), got " + (u.defined() ? u.shape().str() : "an undefined tensor"));
  profile::Range stage("fisher");
  if (u.device() == sum_.device()) {
    ops::syrk(1.0, u.to(sum_.dtype()), 1.0, sum_);  // accumulate mode: sum += U^T U
  } else {
    // Rows on another device: U^T U there (the backend's syrk), then only the P x P partial
    // sum crosses to the accumulator's device.
    Tensor part = Tensor::empty({p_, p_}, sum_.dtype(), u.device());
    ops::syrk(1.0, u.to(sum_.dtype()), 0.0, part);
    ops::axpby(1.0, part.to(sum_.device()), 1.0, sum_);
  }
  n_ += u.dim(0);
}

Tensor FisherAccumulator::finalize() const {
  profile::Range stage("fisher");
  if (n_ == 0) throw std::logic_error("FisherAccumulator::finalize: no rows were added");
  return ops::scale(sum_, 1.0 / static_cast<double>(n_));
}

// ---- direct solves -------------------------------------------------------------------------

Tensor damped_solve(const Tensor& f, double damping, const Tensor& rhs) {
  if (!f.defined() || f.ndim() != 2 || f.dim(0) != f.dim(1))
    throw std::invalid_argument("damped_solve: F must be square (P,P), got " +
                                (f.defined() ? f.shape().str() : std::string("an undefined tensor")));
  if (!rhs.defined() || rhs.ndim() < 1 || rhs.ndim() > 2 || rhs.dim(0) != f.dim(0))
    throw std::invalid_argument("damped_solve: right-hand side " +
                                (rhs.defined() ? rhs.shape().str() : std::string("(undefined)")) +
                                " does not fit F " + f.shape().str() + " (expected (P,R) or (P))");
  profile::Range stage("solve");
  const Tensor b = rhs.ndim() == 1 ? rhs.reshape({rhs.dim(0), 1}) : rhs;
  // A right-hand side on another device than F is copied to F's (explicit: P x R).
  Tensor x = ops::batched_cholesky_solve(f, damping, b.to(f.device()).to(f.dtype()));
  return x.reshape(rhs.shape());
}

Tensor batched_damped_solve(const Tensor& f, const std::vector<double>& damping, const Tensor& rhs) {
  if (!f.defined() || f.ndim() != 3)
    throw std::invalid_argument("batched_damped_solve: F must be (K,P,P), got " +
                                (f.defined() ? f.shape().str() : std::string("an undefined tensor")));
  if (!rhs.defined()) throw std::invalid_argument("batched_damped_solve: undefined right-hand side");
  profile::Range stage("solve");
  return ops::batched_cholesky_solve(f, damping, rhs.to(f.device()).to(f.dtype()));
}

Tensor batched_damped_solve(const Tensor& f, double damping, const Tensor& rhs) {
  if (!f.defined() || f.ndim() != 3)
    throw std::invalid_argument("batched_damped_solve: F must be (K,P,P), got " +
                                (f.defined() ? f.shape().str() : std::string("an undefined tensor")));
  return batched_damped_solve(f, std::vector<double>(static_cast<std::size_t>(f.dim(0)), damping), rhs);
}

// ---- conjugate gradient --------------------------------------------------------------------

Tensor conjugate_gradient(const LinearOperator& apply_a, const Tensor& b, int max_iter,
                          double rel_tol, int* iters, double* rel_residual, const Tensor& x0) {
  if (!b.defined()) throw std::invalid_argument("conjugate_gradient: undefined right-hand side");
  if (!apply_a) throw std::invalid_argument("conjugate_gradient: empty operator callback");
  if (max_iter < 0 || !(rel_tol >= 0.0))
    throw std::invalid_argument("conjugate_gradient: max_iter must be >= 0 and rel_tol >= 0, got " +
                                std::to_string(max_iter) + " and " + std::to_string(rel_tol));
  Tensor x = Tensor::zeros(b.shape(), b.dtype(), b.device());
  const double bnorm = norm(b);
  if (!std::isfinite(bnorm))
    throw std::runtime_error("conjugate_gradient: the right-hand side holds NaN or Inf");
  int it = 0;
  double rel = bnorm > 0.0 ? 1.0 : 0.0;
  Tensor r = b.clone();  // r = b - A x0
  if (x0.defined() && bnorm > 0.0 && max_iter > 0) {
    if (x0.shape() != b.shape())
      throw std::invalid_argument("conjugate_gradient: the start x0 must have the right-hand side's shape");
    x.copy_from(x0.to(b.dtype()));
    const Tensor ax = apply_a(x);
    check_same_as("conjugate_gradient", ax, x);
    ++it;
    ops::axpby(-1.0, ax, 1.0, r);
    rel = norm(r) / bnorm;
    if (!std::isfinite(rel)) throw std::runtime_error("conjugate_gradient: NaN or Inf in A x0");
  }
  if (bnorm > 0.0) {
    Tensor p = r.clone();
    double rr = ops::dot(r, r);
    while (it < max_iter && rel > rel_tol) {
      const Tensor ap = apply_a(p);
      check_same_as("conjugate_gradient", ap, p);
      ++it;
      const double pap = ops::dot(p, ap);
      if (!std::isfinite(pap))
        throw std::runtime_error("conjugate_gradient: NaN or Inf in A p at iteration " + std::to_string(it));
      if (pap <= 0.0)
        throw std::runtime_error("conjugate_gradient: p^T A p = " + std::to_string(pap) +
                                 " <= 0 at iteration " + std::to_string(it) +
                                 ": the operator is not positive definite; add damping or use the "
                                 "Gauss-Newton matrix");
      const double alpha = rr / pap;
      ops::axpby(alpha, p, 1.0, x);    // x += alpha p
      ops::axpby(-alpha, ap, 1.0, r);  // r -= alpha A p
      const double rr_new = ops::dot(r, r);
      rel = std::sqrt(rr_new) / bnorm;
      ops::axpby(1.0, r, rr_new / rr, p);  // p = r + beta p
      rr = rr_new;
    }
  }
  if (iters) *iters = it;
  if (rel_residual) *rel_residual = rel;
  return x;
}

// ---- LiSSA ---------------------------------------------------------------------------------

Tensor lissa(const IndexedHvp& hvp, const Tensor& b, double damping, double scale, int depth,
             int repeats, double* last_rel_change) {
  if (!b.defined()) throw std::invalid_argument("lissa: undefined right-hand side");
  if (!hvp) throw std::invalid_argument("lissa: empty hvp callback");
  if (!(scale > 0.0) || !std::isfinite(scale) || !std::isfinite(damping) || depth < 0 || repeats < 1)
    throw std::invalid_argument("lissa: need scale > 0, finite damping, depth >= 0 and repeats >= 1; "
                                "got scale " + std::to_string(scale) + ", damping " +
                                std::to_string(damping) + ", depth " + std::to_string(depth) +
                                ", repeats " + std::to_string(repeats));
  const double bnorm = norm(b);
  if (!std::isfinite(bnorm)) throw std::runtime_error("lissa: the right-hand side holds NaN or Inf");
  Tensor sum = Tensor::zeros(b.shape(), b.dtype(), b.device());
  double change = 0.0;
  for (int rep = 0; rep < repeats; ++rep) {
    Tensor h = b.clone();
    for (int t = 1; t <= depth; ++t) {
      const Tensor hv = hvp(h, rep, t);
      check_same_as("lissa", hv, h);
      // h_t = b + (1 - damping) h_{t-1} - hv / scale, formed as
      // next = b - hv/scale; next += (1 - damping) h  (so the step h_t - h_{t-1} is available)
      Tensor next = b.clone();
      ops::axpby(-1.0 / scale, hv, 1.0, next);
      ops::axpby(1.0 - damping, h, 1.0, next);
      const double hn = norm(next);
      if (!std::isfinite(hn) || hn > 1e6 * static_cast<double>(t + 1) * bnorm)
        throw std::runtime_error(
            "lissa: the recursion diverged at repeat " + std::to_string(rep) + ", step " +
            std::to_string(t) + " (||h|| = " + std::to_string(hn) + ", ||b|| = " +
            std::to_string(bnorm) + "); it converges only if 0 < damping + lambda/scale < 2 for "
            "every eigenvalue lambda of the Hessian: use a larger scale (and damping > 0 for an "
            "indefinite Hessian)");
      if (t == depth) {
        Tensor step = ops::sub(next, h);
        change = hn > 0.0 ? norm(step) / hn : 0.0;
      }
      h = std::move(next);
    }
    ops::axpby(1.0, h, 1.0, sum);
  }
  if (last_rel_change) *last_rel_change = change;
  return ops::scale(sum, 1.0 / (scale * static_cast<double>(repeats)));
}

Tensor lissa(const LinearOperator& hvp, const Tensor& b, double damping, double scale, int depth,
             int repeats, double* last_rel_change) {
  if (!hvp) throw std::invalid_argument("lissa: empty hvp callback");
  return lissa(IndexedHvp([&hvp](const Tensor& v, int, int) { return hvp(v); }), b, damping, scale,
               depth, repeats, last_rel_change);
}

}  // namespace attr
}  // namespace iif
