// Tests of attribution/hvp.h: the Hessian- and Gauss-Newton-vector products (autodiff's double
// backward) of a model's mean loss against independent oracles: the finite-difference Hessian
// of the autodiff gradient (explicit_hessian), a Gauss-Newton matrix assembled here from
// finite-difference Jacobians of a plain-loop forward pass, the closed form (2/N) X^T X of
// linear regression, and Pearlmutter's R-operator written out by hand for the MLP
// (tests/oracles/r_operator.h).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "attribution/curvature.h"
#include "attribution/hvp.h"
#include "engine/ops.h"
#include "kernels/philox.cuh"
#include "nn/models.h"
#include "nn/trainer.h"
#include "tests/oracles/r_operator.h"

using iif::DType;
using iif::Shape;
using iif::Tensor;
namespace ops = iif::ops;
namespace attr = iif::attr;
namespace nn = iif::nn;
using nn::LossKind;
using Vec = std::vector<double>;

namespace {

constexpr uint64_t kSeed = 0x4E55ULL;
constexpr double kEps64 = std::numeric_limits<double>::epsilon();
constexpr double kMargin = 1e-3;  // no hidden pre-activation closer than this to the ReLU kink

Vec uniform(std::size_t n, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  Vec v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * iif::philox::uniform(kSeed, stream, i);
  return v;
}
double dotv(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
double norm2(const Vec& v) { return std::sqrt(dotv(v, v)); }
double rel_diff(const Vec& a, const Vec& b) {
  Vec d(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return norm2(d) / norm2(b);
}
Vec matvec(const Vec& m, const Vec& v) {
  const std::size_t n = v.size();
  Vec out(m.size() / n, 0.0);
  for (std::size_t i = 0; i < out.size(); ++i)
    for (std::size_t j = 0; j < n; ++j) out[i] += m[i * n + j] * v[j];
  return out;
}

// ---- a plain-loop float64 forward pass of an Mlp, from its flat parameters ------------------
// Layout (hvp.h): per Linear, W (out,in) row-major then b (out). Returns the outputs (C) of one
// sample and, in `pre`, every hidden pre-activation.
struct RefNet {
  std::vector<int64_t> sizes;
  bool bias = true;
  Vec forward(const Vec& theta, const double* x, Vec* pre = nullptr) const {
    Vec a(x, x + sizes[0]);
    std::size_t off = 0;
    for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
      const int64_t in = sizes[l], out = sizes[l + 1];
      Vec z(static_cast<std::size_t>(out), 0.0);
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) z[o] += theta[off + o * in + i] * a[i];
      off += static_cast<std::size_t>(out * in);
      if (bias) {
        for (int64_t o = 0; o < out; ++o) z[o] += theta[off + o];
        off += static_cast<std::size_t>(out);
      }
      if (l + 2 < sizes.size()) {
        if (pre) pre->insert(pre->end(), z.begin(), z.end());
        for (double& v : z) v = v > 0 ? v : 0.0;
      }
      a = z;
    }
    return a;
  }
};

// Per-sample loss and its Hessian with respect to the outputs f (C,C).
double ref_loss(LossKind k, const Vec& f, const double* t, Vec* hess = nullptr) {
  const std::size_t c = f.size();
  if (k == LossKind::mse) {
    double l = 0;
    for (std::size_t j = 0; j < c; ++j) l += (f[j] - t[j]) * (f[j] - t[j]);
    if (hess) {
      hess->assign(c * c, 0.0);
      for (std::size_t j = 0; j < c; ++j) (*hess)[j * c + j] = 2.0;
    }
    return l;
  }
  const double fmax = *std::max_element(f.begin(), f.end());
  double se = 0;
  for (double v : f) se += std::exp(v - fmax);
  const double lse = fmax + std::log(se);
  double l = 0, s = 0;
  Vec p(c);
  for (std::size_t j = 0; j < c; ++j) {
    l -= t[j] * (f[j] - lse);
    s += t[j];
    p[j] = std::exp(f[j] - lse);
  }
  if (hess) {  // (sum t) (diag p - p p^T)
    hess->assign(c * c, 0.0);
    for (std::size_t i = 0; i < c; ++i)
      for (std::size_t j = 0; j < c; ++j) (*hess)[i * c + j] = s * ((i == j ? p[i] : 0.0) - p[i] * p[j]);
  }
  return l;
}

// A small float64 problem: model, inputs X (N, ...) kept away from the ReLU kinks, targets.
struct Problem {
  std::unique_ptr<nn::Model> model;
  RefNet ref;
  Tensor x, t;
  Vec xv, tv, theta;
  int64_t n = 0, m = 0;
};

Problem make_problem(const std::string& spec, LossKind loss, int64_t n, uint64_t stream,
                     const Shape& sample_shape = {}) {
  Problem pb;
  nn::Init init;
  init.seed = stream;
  init.dtype = DType::f64;
  pb.model = nn::make_model(spec, init);
  pb.ref.sizes = dynamic_cast<nn::Mlp&>(*pb.model).sizes();
  pb.ref.bias = pb.model->spec().find("bias=1") != std::string::npos;
  pb.theta = attr::flat_parameters(*pb.model).to_vector();
  pb.m = static_cast<int64_t>(pb.theta.size());
  pb.n = n;
  const int64_t d = pb.ref.sizes.front(), c = pb.ref.sizes.back();
  // Rejection sampling: keep inputs whose hidden pre-activations are all at least kMargin from 0.
  int64_t active = 0, inactive = 0;
  uint64_t counter = 0;
  while (static_cast<int64_t>(pb.xv.size()) < n * d) {
    REQUIRE(counter < 10000);
    const Vec cand = uniform(static_cast<std::size_t>(d), 1000 + stream * 100000 + counter++);
    Vec pre;
    pb.ref.forward(pb.theta, cand.data(), &pre);
    bool ok = true;
    for (double z : pre) ok = ok && std::fabs(z) >= kMargin;
    if (!ok) continue;
    for (double z : pre) (z > 0 ? active : inactive) += 1;
    pb.xv.insert(pb.xv.end(), cand.begin(), cand.end());
  }
  if (pb.ref.sizes.size() > 2) {  // both branches of every ReLU are exercised
    CHECK(active > 0);
    CHECK(inactive > 0);
  }
  if (loss == LossKind::cross_entropy) {
    // Soft targets with row sums in [0.5, 1.5): the CE Hessian's (sum t) factor matters.
    const Vec u = uniform(static_cast<std::size_t>(n * c), 2000 + stream, 0.05, 1.0);
    const Vec w = uniform(static_cast<std::size_t>(n), 3000 + stream, 0.5, 1.5);
    pb.tv = u;
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int64_t j = 0; j < c; ++j) s += u[i * c + j];
      for (int64_t j = 0; j < c; ++j) pb.tv[i * c + j] = u[i * c + j] / s * w[i];
    }
  } else {
    pb.tv = uniform(static_cast<std::size_t>(n * c), 4000 + stream);
  }
  std::vector<int64_t> xs{n, d};
  if (sample_shape.ndim() > 0) {
    xs = {n};
    for (int i = 0; i < sample_shape.ndim(); ++i) xs.push_back(sample_shape[i]);
  }
  pb.x = Tensor::from_vector(pb.xv, Shape(xs), DType::f64);
  pb.t = Tensor::from_vector(pb.tv, {n, c}, DType::f64);
  return pb;
}

double ref_mean_loss(const Problem& pb, LossKind k, const Vec& theta) {
  const int64_t d = pb.ref.sizes.front(), c = pb.ref.sizes.back();
  double s = 0;
  for (int64_t i = 0; i < pb.n; ++i)
    s += ref_loss(k, pb.ref.forward(theta, &pb.xv[i * d]), &pb.tv[i * c]);
  return s / pb.n;
}

Vec hvp(Problem& pb, LossKind k, const Vec& v, attr::Curvature cur = attr::Curvature::hessian,
        int64_t batch = 256) {
  attr::HvpOptions o;
  o.batch = batch;
  o.curvature = cur;
  return attr::hessian_vector_product(*pb.model, pb.x, pb.t, k, Tensor::from_vector(v, {pb.m}, DType::f64), o)
      .to_vector();
}

const char* loss_name(LossKind k) { return k == LossKind::mse ? "mse" : "cross-entropy"; }

}  // namespace

TEST_CASE("flat_gradient equals central differences of a plain-loop loss") {
  for (LossKind k : {LossKind::cross_entropy, LossKind::mse}) {
    CAPTURE(loss_name(k));
    Problem pb = make_problem("mlp:5-4-3,dropout=0", k, 10, 1);
    const Vec g = attr::flat_gradient(*pb.model, pb.x, pb.t, k, 3).to_vector();
    // Central differences with h = cbrt(eps) ~ 6e-6: error ~ h^2 |L'''| / 6 + eps |L| / h
    // ~ 1e-11 for O(1) losses and derivatives; 1e-8 relative (norm-wise) leaves room.
    const double h = std::cbrt(kEps64);
    Vec fd(pb.theta.size());
    for (std::size_t j = 0; j < fd.size(); ++j) {
      Vec tp = pb.theta, tm = pb.theta;
      tp[j] += h;
      tm[j] -= h;
      fd[j] = (ref_mean_loss(pb, k, tp) - ref_mean_loss(pb, k, tm)) / (tp[j] - tm[j]);
    }
    CHECK(rel_diff(g, fd) < 1e-8);
    // Parameters untouched and no gradient left behind.
    CHECK(attr::flat_parameters(*pb.model).to_vector() == pb.theta);
    for (auto& p : pb.model->named_parameters()) CHECK_FALSE(p.var->grad().defined());
  }
}

TEST_CASE("HVP equals the finite-difference Hessian times v") {
  // explicit_hessian: central differences of the autodiff gradient with h_j = cbrt(eps) *
  // max(1, |theta_j|) ~ 6e-6; per entry the error is ~ (h^2/6)|g'''| + eps |g| / h ~ 1e-10 for
  // O(1) derivatives, so H v is off by ~1e-9 relative: the bound 1e-6 is three orders above it.
  // No ReLU pattern can flip: a step moves a pre-activation by at most h (||x||_1 + 1) (times
  // the next layer's weights, all < 1) < 1e-4, below the 1e-3 margin of the inputs.
  struct Case {
    const char* spec;
    Shape sample;  // non-empty: inputs (N, ...) that the Mlp flattens
  };
  const std::vector<Case> cases = {{"mlp:5-4-3,dropout=0", {}},
                                   {"mlp:5-4-3,dropout=0,bias=0", {}},
                                   {"mlp:6-5-4-3,dropout=0", {1, 2, 3}}};
  uint64_t stream = 10;
  for (const Case& cs : cases) {
    for (LossKind k : {LossKind::cross_entropy, LossKind::mse}) {
      CAPTURE(cs.spec);
      CAPTURE(loss_name(k));
      Problem pb = make_problem(cs.spec, k, 10, stream++, cs.sample);
      const Tensor hfd = attr::explicit_hessian(*pb.model, pb.x, pb.t, k, 4);
      REQUIRE(hfd.shape() == Shape{pb.m, pb.m});
      const Vec hm = hfd.to_vector();
      for (int r = 0; r < 3; ++r) {
        const Vec v = uniform(static_cast<std::size_t>(pb.m), 500 + stream * 10 + r);
        const Vec got = hvp(pb, k, v);
        const Vec ref = matvec(hm, v);
        CAPTURE(r);
        CHECK(rel_diff(got, ref) < 1e-6);
        // Batching is a memory knob only: 3 per batch (N = 10, a ragged last batch) agrees to
        // rounding (sums of 10 terms in a different order).
        CHECK(rel_diff(hvp(pb, k, v, attr::Curvature::hessian, 3), got) < 1e-13);
        // The operator with the forward pass cached gives the same products, for H and for G.
        for (attr::Curvature cv : {attr::Curvature::hessian, attr::Curvature::gauss_newton}) {
          attr::HvpOptions o;
          o.curvature = cv;
          o.batch = 3;
          const attr::CurvatureOperator op(*pb.model, pb.x, pb.t, k, o);
          CHECK(op.dim() == pb.m);
          const Vec cached = op.apply(Tensor::from_vector(v, {pb.m}, DType::f64)).to_vector();
          CHECK(rel_diff(cached, hvp(pb, k, v, cv, 3)) < 1e-13);
          if (cv == attr::Curvature::hessian) CHECK(rel_diff(cached, ref) < 1e-6);
        }
      }
      // The parameters are untouched.
      CHECK(attr::flat_parameters(*pb.model).to_vector() == pb.theta);
    }
  }
}

TEST_CASE("the Hessian is symmetric: v^T H w = w^T H v") {
  for (LossKind k : {LossKind::cross_entropy, LossKind::mse}) {
    CAPTURE(loss_name(k));
    Problem pb = make_problem("mlp:6-5-4-3,dropout=0", k, 12, 40);
    const Vec v = uniform(static_cast<std::size_t>(pb.m), 41), w = uniform(static_cast<std::size_t>(pb.m), 42);
    const Vec hv = hvp(pb, k, v), hw = hvp(pb, k, w);
    // Two different computations of the same number, each summing M products of terms formed
    // by O(10)-deep float64 chains: |difference| <= ~M * 10 eps ||v|| ||H|| ||w||; 1e-12 covers it.
    CHECK(std::fabs(dotv(v, hw) - dotv(w, hv)) <= 1e-12 * norm2(v) * norm2(hw));
  }
}

TEST_CASE("Gauss-Newton product: equals J^T H_f J from finite-difference Jacobians, PSD, differs from H") {
  for (LossKind k : {LossKind::cross_entropy, LossKind::mse}) {
    CAPTURE(loss_name(k));
    Problem pb = make_problem("mlp:5-4-3,dropout=0", k, 8, 50);
    const int64_t d = pb.ref.sizes.front(), c = pb.ref.sizes.back(), m = pb.m;
    // Oracle: G = (1/N) sum_i J_i^T H_i J_i, J_i (C,M) by central differences of the plain
    // forward pass (error ~ eps^(2/3) ~ 1e-10 per entry, as for explicit_hessian), H_i in closed form.
    const double h = std::cbrt(kEps64);
    Vec g(static_cast<std::size_t>(m * m), 0.0);
    for (int64_t i = 0; i < pb.n; ++i) {
      Vec jac(static_cast<std::size_t>(c * m));
      for (int64_t j = 0; j < m; ++j) {
        Vec tp = pb.theta, tm = pb.theta;
        tp[j] += h;
        tm[j] -= h;
        const Vec fp = pb.ref.forward(tp, &pb.xv[i * d]), fm = pb.ref.forward(tm, &pb.xv[i * d]);
        for (int64_t o = 0; o < c; ++o) jac[o * m + j] = (fp[o] - fm[o]) / (tp[j] - tm[j]);
      }
      Vec hf;
      ref_loss(k, pb.ref.forward(pb.theta, &pb.xv[i * d]), &pb.tv[i * c], &hf);
      for (int64_t a = 0; a < m; ++a)
        for (int64_t b = 0; b < m; ++b) {
          double s = 0;
          for (int64_t o = 0; o < c; ++o)
            for (int64_t q = 0; q < c; ++q) s += jac[o * m + a] * hf[o * c + q] * jac[q * m + b];
          g[a * m + b] += s / pb.n;
        }
    }
    for (int r = 0; r < 3; ++r) {
      const Vec v = uniform(static_cast<std::size_t>(m), 60 + r);
      const Vec gv = hvp(pb, k, v, attr::Curvature::gauss_newton);
      CHECK(rel_diff(gv, matvec(g, v)) < 1e-6);
      CHECK(rel_diff(attr::gauss_newton_vector_product(*pb.model, pb.x, pb.t, k,
                                                       Tensor::from_vector(v, {m}, DType::f64), 3).to_vector(),
                     gv) < 1e-13);
      // At random parameters the loss gradient is far from 0, so the dropped terms matter.
      CHECK(rel_diff(gv, hvp(pb, k, v)) > 1e-2);
    }
    // PSD: v^T G v >= 0 up to rounding (a few eps times ||v|| ||G v||).
    for (int r = 0; r < 20; ++r) {
      const Vec v = uniform(static_cast<std::size_t>(m), 70 + r);
      const Vec gv = hvp(pb, k, v, attr::Curvature::gauss_newton);
      CHECK(dotv(v, gv) >= -1e-14 * norm2(v) * norm2(gv));
    }
    // Stronger: the whole matrix. G (rank <= N*C < M, so singular) plus a damping of 1e-10 ||G||,
    // far above its rounding (~M eps ||G||), has a Cholesky factor; the exact Hessian does not,
    // even with that damping: it is indefinite at these parameters (the dropped first-order
    // terms couple layers without a matching diagonal).
    attr::HvpOptions o;
    o.curvature = attr::Curvature::gauss_newton;
    const Tensor gm = attr::curvature_matrix(*pb.model, pb.x, pb.t, k, o);
    o.curvature = attr::Curvature::hessian;
    const Tensor hm = attr::curvature_matrix(*pb.model, pb.x, pb.t, k, o);
    const double tiny = 1e-10 * std::sqrt(ops::dot(gm, gm));
    const Tensor rhs = Tensor::zeros({m, 1}, DType::f64);
    CHECK_NOTHROW(attr::damped_solve(gm, tiny, rhs));
    CHECK_THROWS_AS(attr::damped_solve(hm, tiny, rhs), std::runtime_error);
  }
}

TEST_CASE("linear regression with MSE: H = G = (2/N) X^T X") {
  const int64_t n = 9, d = 4;
  Problem pb = make_problem("linear:4", LossKind::mse, n, 80);
  REQUIRE(pb.m == d);
  Vec ref(static_cast<std::size_t>(d * d), 0.0), mass(ref.size(), 0.0);
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = 0; b < d; ++b)
      for (int64_t i = 0; i < n; ++i) {
        ref[a * d + b] += 2.0 / n * pb.xv[i * d + a] * pb.xv[i * d + b];
        mass[a * d + b] += 2.0 / n * std::fabs(pb.xv[i * d + a] * pb.xv[i * d + b]);
      }
  attr::HvpOptions o;
  o.batch = 4;
  const Vec h = attr::curvature_matrix(*pb.model, pb.x, pb.t, LossKind::mse, o).to_vector();
  o.curvature = attr::Curvature::gauss_newton;
  const Vec g = attr::curvature_matrix(*pb.model, pb.x, pb.t, LossKind::mse, o).to_vector();
  // Exact up to rounding: each entry is a sum of N products scaled by 2/N, (N + 3) roundings on
  // terms of total magnitude `mass` (x2 for the oracle's own rounding).
  for (std::size_t i = 0; i < ref.size(); ++i) {
    CAPTURE(i);
    CHECK(std::fabs(h[i] - ref[i]) <= 2.0 * (n + 3) * kEps64 * mass[i]);
    CHECK(std::fabs(g[i] - ref[i]) <= 2.0 * (n + 3) * kEps64 * mass[i]);
  }
}

TEST_CASE("dropout is off: a dropout model in training mode gives the dropout-free products") {
  Problem pb = make_problem("mlp:5-4-3,dropout=0", LossKind::cross_entropy, 10, 90);
  nn::Init init;
  init.seed = 90;
  init.dtype = DType::f64;
  auto with_dropout = nn::make_model("mlp:5-4-3,dropout=0.5", init);  // same parameters (same seed)
  with_dropout->set_training(true);
  const Vec v = uniform(static_cast<std::size_t>(pb.m), 91);
  const Tensor vt = Tensor::from_vector(v, {pb.m}, DType::f64);
  CHECK(attr::hessian_vector_product(*with_dropout, pb.x, pb.t, LossKind::cross_entropy, vt).to_vector() ==
        hvp(pb, LossKind::cross_entropy, v));
  CHECK(with_dropout->training());  // the flag is left as it was
}

TEST_CASE("a float32 model gives the float64 products to float32 accuracy") {
  Problem pb = make_problem("mlp:5-4-3,dropout=0", LossKind::cross_entropy, 10, 100);
  nn::Init init;
  init.dtype = DType::f32;
  auto m32 = nn::make_model(pb.model->spec(), init);
  m32->copy_parameters_from(*pb.model);
  pb.model->copy_parameters_from(*m32);  // the float64 model holds the float32-rounded values
  const Vec v = uniform(static_cast<std::size_t>(pb.m), 101);
  const Tensor v64 = Tensor::from_vector(v, {pb.m}, DType::f64);
  const Tensor r32 = attr::hessian_vector_product(*m32, pb.x.to(DType::f32), pb.t.to(DType::f32),
                                                  LossKind::cross_entropy, v64);
  CHECK(r32.dtype() == DType::f64);  // the result follows v's dtype
  // About six float32 stages (GEMMs of depth <= 10, softmax, masks) between inputs and result:
  // ~60 roundings of eps32 = 1.2e-7 each on O(1) terms, amplified by cancellation in the sums
  // (terms of both signs, ~10x): ~1e-4. Bound 3e-4.
  CHECK(rel_diff(r32.to_vector(), hvp(pb, LossKind::cross_entropy, v)) < 3e-4);
}

TEST_CASE("CG and LiSSA on Gauss-Newton products solve the damped system of the full matrix") {
  Problem pb = make_problem("mlp:5-4-3,dropout=0", LossKind::cross_entropy, 10, 110);
  attr::HvpOptions o;
  o.curvature = attr::Curvature::gauss_newton;
  const Tensor gmat = attr::curvature_matrix(*pb.model, pb.x, pb.t, LossKind::cross_entropy, o);
  const double lambda = 0.05;
  const Tensor b = Tensor::from_vector(uniform(static_cast<std::size_t>(pb.m), 111), {pb.m}, DType::f64);
  const Vec ref = attr::damped_solve(gmat, lambda, b).to_vector();
  auto apply = [&](const Tensor& v) {
    Tensor out = attr::gauss_newton_vector_product(*pb.model, pb.x, pb.t, LossKind::cross_entropy, v);
    ops::axpby(lambda, v, 1.0, out);
    return out;
  };
  int iters = 0;
  double rel = 1;
  const Tensor x = attr::conjugate_gradient(apply, b, 500, 1e-12, &iters, &rel);
  CHECK(rel <= 1e-12);
  // Forward error <= cond * residual; cond <= (||G|| + lambda) / lambda < 1e3 here.
  CHECK(rel_diff(x.to_vector(), ref) < 1e-8);
  // LiSSA with damping' * scale = lambda; scale above ||G||: rho = 1 - lambda/scale.
  const double gnorm = std::sqrt(ops::dot(gmat, gmat));  // Frobenius >= spectral norm
  const double scale = 1.1 * gnorm, damping = lambda / scale;
  const int depth = static_cast<int>(std::ceil(30.0 * scale / lambda));  // rho^depth <= e^-30
  auto hv = [&](const Tensor& v) {
    return attr::gauss_newton_vector_product(*pb.model, pb.x, pb.t, LossKind::cross_entropy, v);
  };
  const Tensor xl = attr::lissa(hv, b, damping, scale, std::min(depth, 20000));
  CHECK(rel_diff(xl.to_vector(), ref) < 1e-8);
}

TEST_CASE("HVP argument checks") {
  Problem pb = make_problem("mlp:5-4-3,dropout=0", LossKind::mse, 6, 120);
  const Tensor v = Tensor::zeros({pb.m + 1}, DType::f64);
  CHECK_THROWS_AS(attr::hessian_vector_product(*pb.model, pb.x, pb.t, LossKind::mse, v), std::invalid_argument);
  const Tensor ok = Tensor::zeros({pb.m}, DType::f64);
  CHECK_THROWS_AS(attr::hessian_vector_product(*pb.model, pb.x, Tensor::zeros({6, 4}, DType::f64), LossKind::mse, ok),
                  std::invalid_argument);
  CHECK_THROWS_AS(attr::hessian_vector_product(*pb.model, pb.x, Tensor::zeros({5, 3}, DType::f64), LossKind::mse, ok),
                  std::invalid_argument);
  attr::HvpOptions o;
  o.batch = 0;
  CHECK_THROWS_AS(attr::hessian_vector_product(*pb.model, pb.x, pb.t, LossKind::mse, ok, o), std::invalid_argument);
  CHECK_THROWS_AS(attr::set_flat_parameters(*pb.model, ok.rows(0, 3)), std::invalid_argument);
}

// ---- against the hand-written R-operator, and on models it cannot express -------------------

namespace {

Vec hvp_of(nn::Model& m, const Tensor& x, const Tensor& t, LossKind k, const Vec& v, attr::Curvature cur,
           int64_t batch = 4) {
  attr::HvpOptions o;
  o.batch = batch;
  o.curvature = cur;
  return attr::hessian_vector_product(m, x, t, k, Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, DType::f64), o)
      .to_vector();
}
Vec rop_of(nn::Model& m, const Tensor& x, const Tensor& t, LossKind k, const Vec& v, attr::Curvature cur,
           int64_t batch) {
  return iif::oracle::r_operator_product(m, x, t, k, Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, DType::f64),
                                         cur, batch)
      .to_vector();
}

// "resmlp:<d>-<h>-<c>": Linear(d,h), ReLU, Residual(Linear(h,h), ReLU, Linear(h,h)), ReLU,
// Linear(h,c): a residual branch, which the R-operator plan cannot express.
class ResMlp final : public nn::Model {
 public:
  ResMlp(int64_t d, int64_t h, int64_t c, const nn::Init& init) : d_(d), h_(h), c_(c) {
    layers.add(std::make_unique<nn::Linear>(d, h, true, init, 0));
    layers.add(std::make_unique<nn::ReLU>());
    auto res = std::make_unique<nn::Residual>();
    res->add(std::make_unique<nn::Linear>(h, h, true, init, 1));
    res->add(std::make_unique<nn::ReLU>());
    res->add(std::make_unique<nn::Linear>(h, h, false, init, 2));
    layers.add(std::move(res));
    layers.add(std::make_unique<nn::ReLU>());
    layers.add(std::make_unique<nn::Linear>(h, c, true, init, 3));
  }
  iif::Var forward(const iif::Var& x) override { return layers.forward(x); }
  std::string kind() const override { return "ResMlp"; }
  void own_children(std::vector<std::pair<std::string, nn::Module*>>& out) override { out.push_back({"layers", &layers}); }
  std::string spec() const override {
    return "resmlp:" + std::to_string(d_) + "-" + std::to_string(h_) + "-" + std::to_string(c_);
  }
  nn::Sequential layers;

 private:
  int64_t d_, h_, c_;
};

void register_resmlp() {
  nn::register_model(
      "resmlp",
      [](const nn::ModelSpec& s, const nn::Init& init) -> std::unique_ptr<nn::Model> {
        int d = 0, h = 0, c = 0;
        if (std::sscanf(s.arg.c_str(), "%d-%d-%d", &d, &h, &c) != 3) throw std::invalid_argument("resmlp:<d>-<h>-<c>");
        return std::make_unique<ResMlp>(d, h, c, init);
      },
      "resmlp:<d>-<h>-<c>");
}

}  // namespace

TEST_CASE("the products (double backward) equal the hand-written R-operator's on the MLP") {
  // Two computations of the same products in float64, the same GEMMs in different orders:
  // agreement to ~1e-15 relative is expected; 1e-12 leaves room.
  struct Case {
    const char* spec;
    Shape sample;
  };
  const std::vector<Case> cases = {{"mlp:5-4-3,dropout=0", {}},
                                   {"mlp:5-4-3,dropout=0,bias=0", {}},
                                   {"mlp:6-5-4-3,dropout=0.2", {1, 2, 3}}};
  uint64_t stream = 70;
  for (const Case& cs : cases)
    for (LossKind k : {LossKind::cross_entropy, LossKind::mse})
      for (attr::Curvature cv : {attr::Curvature::hessian, attr::Curvature::gauss_newton}) {
        CAPTURE(cs.spec);
        CAPTURE(loss_name(k));
        CAPTURE(static_cast<int>(cv));
        Problem pb = make_problem(cs.spec, k, 10, stream++, cs.sample);
        pb.model->set_training(true);  // products are taken in evaluation mode whatever the flag
        const Vec v = uniform(static_cast<std::size_t>(pb.m), 700 + stream);
        const Vec ref = rop_of(*pb.model, pb.x, pb.t, k, v, cv, 3);
        const Vec got = hvp_of(*pb.model, pb.x, pb.t, k, v, cv, 3);
        CHECK(rel_diff(got, ref) < 1e-12);
        attr::HvpOptions o;
        o.batch = 4;
        o.curvature = cv;
        const attr::CurvatureOperator op(*pb.model, pb.x, pb.t, k, o);
        for (int r = 0; r < 2; ++r) {  // the cached graph serves several products
          const Vec w = uniform(static_cast<std::size_t>(pb.m), 800 + stream * 10 + r);
          CHECK(rel_diff(op.apply(Tensor::from_vector(w, {pb.m}, DType::f64)).to_vector(),
                         rop_of(*pb.model, pb.x, pb.t, k, w, cv, 5)) < 1e-12);
        }
        CHECK(pb.model->training());
        CHECK(attr::flat_parameters(*pb.model).to_vector() == pb.theta);
      }
}

TEST_CASE("autodiff Hessian products of a residual network equal finite differences of its gradient") {
  // explicit_hessian (central differences of flat_gradient, error ~1e-9 relative; see the R-operator
  // test above) on a model the R-operator plan refuses. Inputs of scale 1 and weights U(-1/sqrt(in),
  // 1/sqrt(in)): a step moves a pre-activation by < 1e-4, below the margin kept from every kink.
  register_resmlp();
  nn::Init init;
  init.seed = 3;
  init.dtype = DType::f64;
  for (LossKind k : {LossKind::cross_entropy, LossKind::mse}) {
    CAPTURE(loss_name(k));
    auto m = nn::make_model("resmlp:4-5-3", init);
    const int64_t n = 9, mm = m->num_parameters();
    // Rejection sampling: keep inputs whose every ReLU input (the first layer's output, the
    // branch's hidden pre-activation, and the sum after the branch) is at least kMargin from 0.
    ResMlp& rm = static_cast<ResMlp&>(*m);
    auto& res = dynamic_cast<nn::Residual&>(rm.layers[2]);
    Vec xv;
    uint64_t counter = 0;
    while (static_cast<int64_t>(xv.size()) < n * 4) {
      REQUIRE(counter < 10000);
      const Vec cand = uniform(4, 900 + counter++);
      const iif::Var z1 = rm.layers[0].forward(iif::Var(Tensor::from_vector(cand, {1, 4}, DType::f64)));
      const iif::Var h = rm.layers[1].forward(z1);
      const iif::Var zb = res[0].forward(h);
      const iif::Var r = res.forward(h);
      bool ok = true;
      for (const iif::Var* z : {&z1, &zb, &r})
        for (double e : z->value().to_vector()) ok = ok && std::fabs(e) >= kMargin;
      if (ok) xv.insert(xv.end(), cand.begin(), cand.end());
    }
    const Tensor x = Tensor::from_vector(xv, {n, 4}, DType::f64);
    const Tensor t = k == LossKind::mse ? Tensor::from_vector(uniform(static_cast<std::size_t>(n * 3), 901), {n, 3}, DType::f64)
                                        : ops::one_hot({0, 1, 2, 0, 1, 2, 0, 1, 2}, 3, DType::f64, iif::Device::cpu());

    const Vec hm = attr::explicit_hessian(*m, x, t, k, 4).to_vector();
    attr::HvpOptions o;
    o.batch = 4;
    const attr::CurvatureOperator op(*m, x, t, k, o);
    for (int r = 0; r < 3; ++r) {
      const Vec v = uniform(static_cast<std::size_t>(mm), 950 + r);
      const Vec ref = matvec(hm, v);
      CHECK(rel_diff(hvp_of(*m, x, t, k, v, attr::Curvature::hessian), ref) < 1e-6);
      CHECK(rel_diff(op.apply(Tensor::from_vector(v, {mm}, DType::f64)).to_vector(), ref) < 1e-6);
    }
    // The hand-written R-operator cannot express the branch, and says so.
    CHECK_THROWS_AS(rop_of(*m, x, t, k, Vec(static_cast<std::size_t>(mm), 0.0), attr::Curvature::hessian, 4),
                    std::invalid_argument);
  }
}
