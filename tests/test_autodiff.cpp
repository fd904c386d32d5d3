// Autodiff: every differentiable op's backward against central finite differences in float64
// (ReLU kinks kept out of reach of the step on purpose), and every op's float32 path against its
// float64 path, forward and backward. Also the graph mechanics: accumulation, reuse, errors.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/autodiff.h"
#include "engine/ops.h"
#include "kernels/philox.cuh"

using namespace iif;

namespace {

// Uniform values in [lo, hi) from a Philox stream, as a float64 tensor.
Tensor rand_tensor(const Shape& s, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  std::vector<double> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = lo + (hi - lo) * philox::uniform(7, stream, i);
  return Tensor::from_vector(v, s, DType::f64);
}

// Moves entries closer than `gap` to zero away from it: the ReLU kink at 0 has no derivative,
// and a central difference straddling it measures the average of two slopes.
Tensor away_from_zero(Tensor t, double gap) {
  std::vector<double> v = t.to_vector();
  for (double& x : v)
    if (std::fabs(x) < gap) x = x < 0 ? x - 2 * gap : x + 2 * gap;
  return Tensor::from_vector(v, t.shape(), DType::f64);
}

using OpFn = std::function<Var(const std::vector<Var>&)>;

// Objective L = <seed, f(inputs)>: its gradient is the backward pass of f with cotangent seed.
double objective(const OpFn& f, const std::vector<Tensor>& inputs, const Tensor& seed) {
  std::vector<Var> vars;
  for (auto& t : inputs) vars.emplace_back(t, false);
  return ops::dot(f(vars).value(), seed);
}

// Analytic gradients of <seed, f(inputs)> for each input.
std::vector<Tensor> analytic(const OpFn& f, const std::vector<Tensor>& inputs, const Tensor& seed,
                             Tensor* out_value = nullptr) {
  std::vector<Var> vars;
  for (auto& t : inputs) vars.emplace_back(t.clone(), true);
  Var out = f(vars);
  if (out_value) *out_value = out.value();
  backward(out, seed.to(out.value().dtype()));
  std::vector<Tensor> g;
  for (auto& v : vars) g.push_back(v.grad());
  return g;
}

// Central differences with step h; truncation error O(h^2 f''') ~ 1e-12 and rounding error
// O(eps64 |f| / h) ~ 1e-10 for h = 1e-6 and |f| ~ 1: a tolerance of 1e-7 leaves a wide margin.
void check_gradients(const OpFn& f, const std::vector<Tensor>& inputs, uint64_t seed_stream) {
  std::vector<Var> probe;
  for (auto& t : inputs) probe.emplace_back(t, false);
  const Shape out_shape = f(probe).shape();
  const Tensor seed = rand_tensor(out_shape, seed_stream);
  const std::vector<Tensor> g = analytic(f, inputs, seed);
  const double h = 1e-6;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    REQUIRE(g[i].defined());
    const std::vector<double> ga = g[i].to_vector();
    std::vector<double> base = inputs[i].to_vector();
    double max_err = 0.0;
    for (std::size_t k = 0; k < base.size(); ++k) {
      std::vector<Tensor> plus = inputs, minus = inputs;
      std::vector<double> vp = base, vm = base;
      vp[k] += h;
      vm[k] -= h;
      plus[i] = Tensor::from_vector(vp, inputs[i].shape(), DType::f64);
      minus[i] = Tensor::from_vector(vm, inputs[i].shape(), DType::f64);
      const double num = (objective(f, plus, seed) - objective(f, minus, seed)) / (2 * h);
      max_err = std::max(max_err, std::fabs(num - ga[k]) / (1.0 + std::fabs(num)));
    }
    INFO("input " << i << " max relative error " << max_err);
    CHECK(max_err < 1e-7);
  }
}

// The float32 path against the float64 path, forward and backward. Each output is a short
// reduction (depth k <= 64 here) of values of order 1: float32 rounding gives a relative error
// of about k * eps32 = 64 * 6e-8 ~ 4e-6; the bound 1e-4 (absolute + relative) allows 25x that.
void check_f32_matches_f64(const OpFn& f, const std::vector<Tensor>& inputs, uint64_t seed_stream) {
  std::vector<Var> probe;
  for (auto& t : inputs) probe.emplace_back(t, false);
  const Tensor seed = rand_tensor(f(probe).shape(), seed_stream);
  std::vector<Tensor> in32;
  for (auto& t : inputs) in32.push_back(t.to(DType::f32));
  Tensor y64, y32;
  const std::vector<Tensor> g64 = analytic(f, inputs, seed, &y64);
  const std::vector<Tensor> g32 = analytic(f, in32, seed, &y32);
  CHECK(y32.dtype() == DType::f32);
  auto close = [](const Tensor& a32, const Tensor& a64) {
    const auto a = a32.to_vector(), b = a64.to_vector();
    REQUIRE(a.size() == b.size());
    double worst = 0.0;
    for (std::size_t k = 0; k < a.size(); ++k)
      worst = std::max(worst, std::fabs(a[k] - b[k]) / (1.0 + std::fabs(b[k])));
    return worst;
  };
  CHECK(close(y32, y64) < 1e-4);
  for (std::size_t i = 0; i < g64.size(); ++i) {
    INFO("gradient of input " << i);
    CHECK(g32[i].dtype() == DType::f32);
    CHECK(close(g32[i], g64[i]) < 1e-4);
  }
}

// Double backward: with G(x) = grad <seed, f(x)> built with create_graph, the product
// d<G(x), v>/dx (a second reverse pass over G's graph) against central differences of the
// first-order gradient, (G(x + h v) - G(x - h v)) / 2h. Same error budget as check_gradients
// (h = 1e-5 here: the difference is of gradients, one order less smooth than the objective).
void check_second_order(const OpFn& f, const std::vector<Tensor>& inputs, uint64_t seed_stream) {
  std::vector<Var> probe;
  for (auto& t : inputs) probe.emplace_back(t, false);
  const Tensor seed = rand_tensor(f(probe).shape(), seed_stream);
  std::vector<Tensor> dir;
  for (std::size_t i = 0; i < inputs.size(); ++i) dir.push_back(rand_tensor(inputs[i].shape(), seed_stream + 100 + i));

  std::vector<Var> vars;
  for (auto& t : inputs) vars.emplace_back(t.clone(), true);
  const std::vector<Var> g = grad(f(vars), seed, vars, true);
  std::vector<Var> roots, seeds;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (g[i].requires_grad()) {
      roots.push_back(g[i]);
      seeds.push_back(Var(dir[i]));
    }
  std::vector<Tensor> hv;
  if (roots.empty()) {
    for (auto& t : inputs) hv.push_back(Tensor::zeros(t.shape(), DType::f64));
  } else {
    for (const Var& r : grad(roots, seeds, vars, false)) hv.push_back(r.value());
  }

  const double h = 1e-5;
  std::vector<Tensor> plus, minus;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    Tensor p = inputs[i].clone(), m = inputs[i].clone();
    ops::axpby(h, dir[i], 1.0, p);
    ops::axpby(-h, dir[i], 1.0, m);
    plus.push_back(p);
    minus.push_back(m);
  }
  const std::vector<Tensor> gp = analytic(f, plus, seed), gm = analytic(f, minus, seed);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const auto a = hv[i].to_vector(), up = gp[i].to_vector(), dn = gm[i].to_vector();
    double worst = 0.0;
    for (std::size_t k = 0; k < a.size(); ++k) {
      const double num = (up[k] - dn[k]) / (2 * h);
      worst = std::max(worst, std::fabs(num - a[k]) / (1.0 + std::fabs(num)));
    }
    INFO("input " << i << " max relative error of the second derivative " << worst);
    CHECK(worst < 1e-6);
  }
}

void check_op(const OpFn& f, const std::vector<Tensor>& inputs, uint64_t stream) {
  SUBCASE("finite differences (float64)") { check_gradients(f, inputs, stream); }
  SUBCASE("float32 path matches float64 path") { check_f32_matches_f64(f, inputs, stream); }
  SUBCASE("double backward against finite differences of gradients") { check_second_order(f, inputs, stream); }
}

Tensor soft_targets(int64_t rows, int64_t cols, uint64_t stream) {
  // Arbitrary non-negative weights, rows not normalised, one row all zero.
  std::vector<double> v = rand_tensor({rows, cols}, stream, 0.0, 1.0).to_vector();
  for (int64_t c = 0; c < cols; ++c) v[c] = 0.0;
  return Tensor::from_vector(v, {rows, cols}, DType::f64);
}

}  // namespace

TEST_CASE("linear: y = x W^T + b") {
  const OpFn f = [](const std::vector<Var>& v) { return ad::linear(v[0], v[1], v[2]); };
  check_op(f, {rand_tensor({5, 7}, 1), rand_tensor({3, 7}, 2), rand_tensor({3}, 3)}, 4);
}

TEST_CASE("linear without bias, batch of one") {
  const OpFn f = [](const std::vector<Var>& v) { return ad::linear(v[0], v[1], Var()); };
  check_op(f, {rand_tensor({1, 4}, 5), rand_tensor({6, 4}, 6)}, 7);
}

TEST_CASE("relu (kinks kept out of the finite-difference step)") {
  const OpFn f = [](const std::vector<Var>& v) { return ad::relu(v[0]); };
  check_op(f, {away_from_zero(rand_tensor({6, 9}, 8), 1e-3)}, 9);
}

TEST_CASE("mul_const (dropout's masked product)") {
  const Tensor mask = ops::dropout_mask({4, 5}, DType::f64, Device::cpu(), 0.3, 11, 0);
  const OpFn f = [mask](const std::vector<Var>& v) {
    return ad::mul_const(v[0], mask.to(v[0].value().dtype()));
  };
  check_op(f, {rand_tensor({4, 5}, 10)}, 12);
}

TEST_CASE("reshape (flatten)") {
  const OpFn f = [](const std::vector<Var>& v) { return ad::reshape(v[0], {2, 12}); };
  check_op(f, {rand_tensor({2, 3, 2, 2}, 13)}, 14);
}

TEST_CASE("softmax cross-entropy with soft targets, batch mean") {
  const Tensor t = soft_targets(6, 10, 15);
  const OpFn f = [t](const std::vector<Var>& v) {
    return ad::softmax_xent_mean(v[0], t.to(v[0].value().dtype()));
  };
  check_op(f, {rand_tensor({6, 10}, 16, -3.0, 3.0)}, 17);
}

TEST_CASE("mse, batch mean") {
  const Tensor t = rand_tensor({5, 3}, 18);
  const OpFn f = [t](const std::vector<Var>& v) { return ad::mse_mean(v[0], t.to(v[0].value().dtype())); };
  check_op(f, {rand_tensor({5, 3}, 19)}, 20);
}

TEST_CASE("add_scaled: sa * a + sb * b") {
  const OpFn f = [](const std::vector<Var>& v) { return ad::add_scaled(v[0], 0.5, v[1], -1.5); };
  check_op(f, {rand_tensor({3, 4}, 28), rand_tensor({3, 4}, 29)}, 30);
}

TEST_CASE("a two-layer network end to end") {
  const Tensor t = soft_targets(4, 3, 21);
  const OpFn f = [t](const std::vector<Var>& v) {
    Var h = ad::relu(ad::linear(v[0], v[1], v[2]));
    return ad::softmax_xent_mean(ad::linear(h, v[3], v[4]), t.to(v[0].value().dtype()));
  };
  // Pre-activations must stay away from the kink: shift the first bias so none is near zero.
  const Tensor x = rand_tensor({4, 5}, 22), w1 = rand_tensor({6, 5}, 23);
  Tensor pre = ops::matmul(x, w1, false, true);
  std::vector<double> b1 = rand_tensor({6}, 24).to_vector();
  auto p = pre.to_vector();
  for (int j = 0; j < 6; ++j) {
    double closest = 1e9;
    for (int i = 0; i < 4; ++i) closest = std::min(closest, std::fabs(p[i * 6 + j] + b1[j]));
    if (closest < 1e-3) b1[j] += 0.01;
  }
  check_op(f, {x, w1, Tensor::from_vector(b1, {6}, DType::f64), rand_tensor({3, 6}, 25), rand_tensor({3}, 26)},
           27);
}

TEST_CASE("matmul, every transpose") {
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      CAPTURE(ta);
      CAPTURE(tb);
      const OpFn f = [ta, tb](const std::vector<Var>& v) { return ad::matmul(v[0], v[1], ta, tb); };
      const Shape sa = ta ? Shape{4, 3} : Shape{3, 4}, sb = tb ? Shape{5, 4} : Shape{4, 5};
      check_op(f, {rand_tensor(sa, 40 + ta), rand_tensor(sb, 42 + tb)}, 44);
    }
}

TEST_CASE("sum_rows and broadcast_rows") {
  check_op([](const std::vector<Var>& v) { return ad::sum_rows(v[0]); }, {rand_tensor({5, 3}, 45)}, 46);
  check_op([](const std::vector<Var>& v) { return ad::broadcast_rows(v[0], 4); }, {rand_tensor({3}, 47)}, 48);
}

TEST_CASE("scale, add, relu_mask") {
  check_op([](const std::vector<Var>& v) { return ad::scale(v[0], -2.5); }, {rand_tensor({2, 3}, 49)}, 50);
  check_op([](const std::vector<Var>& v) { return ad::add(v[0], v[1]); }, {rand_tensor({2, 3}, 51), rand_tensor({2, 3}, 52)},
           53);
  const Tensor x = rand_tensor({3, 4}, 54);
  check_op([x](const std::vector<Var>& v) { return ad::relu_mask(x.to(v[0].value().dtype()), v[0]); },
           {rand_tensor({3, 4}, 55)}, 56);
}

TEST_CASE("a residual network's loss: double backward through linear, relu, add and the cross-entropy") {
  const Tensor t = soft_targets(4, 3, 57);
  const OpFn f = [t](const std::vector<Var>& v) {
    Var h = ad::relu(ad::linear(v[0], v[1], v[2]));
    Var r = ad::add(h, ad::linear(ad::relu(ad::linear(h, v[3], Var())), v[4], Var()));
    return ad::softmax_xent_mean(ad::linear(r, v[5], Var()), t.to(v[0].value().dtype()));
  };
  // Random weights; the kinks are far from every pre-activation at these seeds (checked by the
  // first-order finite differences of the same inputs as well).
  check_op(f, {rand_tensor({4, 5}, 58), rand_tensor({6, 5}, 59), rand_tensor({6}, 60), rand_tensor({6, 6}, 61),
               rand_tensor({6, 6}, 62), rand_tensor({3, 6}, 63)},
           64);
}

TEST_CASE("double backward: mechanics and refusals") {
  SUBCASE("d/dx of grad of sum x^3-like: the Hessian of mse is 2/B I") {
    Var x(Tensor::from_vector(std::vector<double>{1, -2, 3}, {1, 3}, DType::f64), true);
    const Var l = ad::mse_mean(x, Tensor::zeros({1, 3}, DType::f64));
    const std::vector<Var> g = grad(l, Tensor::full({1}, 1.0, DType::f64), {x}, true);
    CHECK(g[0].value().to_vector() == std::vector<double>{2, -4, 6});
    CHECK(g[0].requires_grad());
    CHECK_FALSE(x.grad().defined());  // grad() returns, it does not accumulate into leaves
    const Tensor v = Tensor::from_vector(std::vector<double>{1, 0, -1}, {1, 3}, DType::f64);
    const std::vector<Var> hv = grad({g[0]}, {Var(v)}, {x}, false);
    CHECK(hv[0].value().to_vector() == std::vector<double>{2, 0, -2});
  }
  SUBCASE("an input the root does not reach gets zeros") {
    Var x(Tensor::full({2}, 1.0, DType::f64), true), y(Tensor::full({2}, 1.0, DType::f64), true);
    const std::vector<Var> g = grad(ad::scale(x, 3.0), Tensor::full({2}, 1.0, DType::f64), {x, y}, false);
    CHECK(g[0].value().to_vector() == std::vector<double>{3, 3});
    CHECK(g[1].value().to_vector() == std::vector<double>{0, 0});
  }
  SUBCASE("a first-order op refuses create_graph, naming itself") {
    Var x(Tensor::full({2}, 1.0, DType::f64), true);
    Var y = make_first_order_op(x.value().clone(), {x}, "my_kernel", [](Node& self) {
      accumulate_grad(*self.inputs[0], self.grad.clone());
    });
    CHECK(grad(y, Tensor::full({2}, 1.0, DType::f64), {x}, false)[0].value().to_vector() == std::vector<double>{1, 1});
    try {
      grad(y, Tensor::full({2}, 1.0, DType::f64), {x}, true);
      FAIL("expected an exception");
    } catch (const std::logic_error& e) {
      CHECK(std::string(e.what()).find("my_kernel") != std::string::npos);
    }
  }
  SUBCASE("NoGradGuard: no graph inside the scope") {
    Var x(Tensor::full({2}, 1.0, DType::f64), true);
    {
      NoGradGuard guard;
      CHECK_FALSE(ad::scale(x, 2.0).requires_grad());
    }
    CHECK(ad::scale(x, 2.0).requires_grad());
  }
}

TEST_CASE("graph mechanics") {
  SUBCASE("a variable used twice accumulates both contributions") {
    Var x(Tensor::from_vector(std::vector<double>{1, 2, 3}, {1, 3}, DType::f64), true);
    Var y = ad::mse_mean(ad::reshape(x, {1, 3}), Tensor::zeros({1, 3}, DType::f64));
    Var w(Tensor::from_vector(std::vector<double>{1, 1, 1}, {1, 3}, DType::f64), true);
    // L = |x|^2 + x.w  =>  dL/dx = 2x + w
    Var z = ad::linear(x, w, Var());
    backward(y);
    backward(z);
    CHECK(x.grad().to_vector() == std::vector<double>{3, 5, 7});
  }
  SUBCASE("leaf gradients accumulate across backward calls until zero_grad") {
    Var x(Tensor::from_vector(std::vector<double>{2}, {1, 1}, DType::f64), true);
    backward(ad::mse_mean(x, Tensor::zeros({1, 1}, DType::f64)));
    backward(ad::mse_mean(x, Tensor::zeros({1, 1}, DType::f64)));
    CHECK(x.grad().item() == doctest::Approx(8.0));
    x.zero_grad();
    CHECK_FALSE(x.grad().defined());
  }
  SUBCASE("intermediate gradients are reset per pass and readable after it") {
    Var x(Tensor::from_vector(std::vector<double>{1, -2}, {1, 2}, DType::f64), true);
    Var h = ad::relu(x);
    Var l = ad::mse_mean(h, Tensor::zeros({1, 2}, DType::f64));
    backward(l);
    backward(l);
    CHECK(h.grad().to_vector() == std::vector<double>{2, 0});  // not 4: reset, not accumulated
  }
  SUBCASE("no graph without a variable that requires a gradient") {
    Var x(Tensor::zeros({2, 2}, DType::f64), false);
    Var y = ad::relu(x);
    CHECK_FALSE(y.requires_grad());
    CHECK_THROWS_AS(backward(y, Tensor::zeros({2, 2}, DType::f64)), std::invalid_argument);
  }
  SUBCASE("non-scalar root needs a seed; seed shape must match") {
    Var x(Tensor::zeros({2, 2}, DType::f64), true);
    Var y = ad::relu(x);
    CHECK_THROWS_AS(backward(y), std::invalid_argument);
    CHECK_THROWS_AS(backward(y, Tensor::zeros({4}, DType::f64)), std::invalid_argument);
  }
  SUBCASE("shape errors name both shapes") {
    Var x(Tensor::zeros({2, 3}, DType::f64), true), w(Tensor::zeros({4, 5}, DType::f64), true);
    try {
      ad::linear(x, w, Var());
      FAIL("expected an exception");
    } catch (const std::invalid_argument& e) {
      const std::string m = e.what();
      CHECK(m.find("(2, 3)") != std::string::npos);
      CHECK(m.find("(4, 5)") != std::string::npos);
    }
  }
}

TEST_CASE("deferred values: lazy create-graph passes, fused sums, grad_into") {
  // A two-layer network whose weights feed several sums: each leaf and each hidden cotangent
  // gets contributions from a GEMM, a broadcast bias and a ReLU mask, so every deferred op and
  // every fused accumulation (GEMM with beta 1, relu_backward and sum_rows with beta 1) runs.
  const Tensor t = soft_targets(5, 3, 201);
  std::vector<Var> p = {Var(rand_tensor({4, 6}, 202), true), Var(rand_tensor({4}, 203), true),
                        Var(rand_tensor({3, 4}, 204), true), Var(rand_tensor({3}, 205), true)};
  const Var x(rand_tensor({5, 6}, 206));
  const auto loss = [&] {
    const Var h = ad::relu(ad::linear(x, p[0], p[1]));
    const Var r = ad::add(h, ad::relu(ad::linear(h, ad::matmul(p[2], p[2], true, false), Var())));
    return ad::softmax_xent_mean(ad::linear(r, p[2], p[3]), t);
  };
  const Tensor one = Tensor::full({1}, 1.0, DType::f64);
  const std::vector<Var> eager = grad(loss(), one, p, true, false);
  const std::vector<Var> lazy = grad(loss(), one, p, true, true);
  std::vector<Tensor> seeds;
  for (std::size_t i = 0; i < p.size(); ++i) seeds.push_back(rand_tensor(p[i].shape(), 210 + i));
  std::vector<Var> sv;
  for (const Tensor& s : seeds) sv.push_back(Var(s));
  // The second derivatives first, before any lazy value is read: the lazy graph serves them.
  const std::vector<Var> hv_eager = grad(eager, sv, p, false), hv_lazy = grad(lazy, sv, p, false);
  for (std::size_t i = 0; i < p.size(); ++i) {
    CAPTURE(i);
    CHECK(lazy[i].shape() == p[i].shape());  // known without computing the value
    // The same arithmetic in the same order: bit-identical.
    CHECK(hv_lazy[i].value().to_vector() == hv_eager[i].value().to_vector());
    CHECK(lazy[i].value().to_vector() == eager[i].value().to_vector());  // computed on read
  }
  // grad_into adds into the caller's tensors (here holding 1s), in place, without a copy.
  std::vector<Tensor> into;
  for (const Var& v : p) into.push_back(Tensor::full(v.shape(), 1.0, DType::f64));
  const Tensor alias = into[0];  // a second handle: grad_into writes through whatever refers to it
  grad_into(eager, sv, p, into);
  for (std::size_t i = 0; i < p.size(); ++i) {
    const std::vector<double> got = into[i].to_vector(), ref = hv_eager[i].value().to_vector();
    for (std::size_t j = 0; j < got.size(); ++j) CHECK(got[j] == doctest::Approx(ref[j] + 1.0).epsilon(1e-14));
  }
  CHECK(alias.to_vector() == into[0].to_vector());
  std::vector<Tensor> wrong = {Tensor::zeros({4, 5}, DType::f64), into[1], into[2], into[3]};
  CHECK_THROWS_AS(grad_into(eager, sv, p, wrong), std::invalid_argument);
  // The seeds the caller holds are never written by the sums they join.
  for (std::size_t i = 0; i < seeds.size(); ++i) CHECK(seeds[i].to_vector() == sv[i].value().to_vector());
}

TEST_CASE("sums never write through a tensor another gradient or the caller holds") {
  // add's backward hands the same cotangent to both inputs, reshape's a view of it: the sums
  // at x must not be formed in place in either, nor in the caller's seed.
  Var x(Tensor::from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2}, DType::f64), true);
  const Var z = ad::add(x, x);
  const Var y = ad::add(ad::add(z, ad::reshape(ad::reshape(z, {4}), {2, 2})), x);
  const Tensor seed = Tensor::from_vector(std::vector<double>{1, 10, 100, 1000}, {2, 2}, DType::f64);
  backward(y, seed);
  CHECK(x.grad().to_vector() == std::vector<double>{5, 50, 500, 5000});
  CHECK(seed.to_vector() == std::vector<double>{1, 10, 100, 1000});
  CHECK(z.grad().to_vector() == std::vector<double>{2, 20, 200, 2000});
}

// ---- images (NCHW) ------------------------------------------------------------------------

namespace {

Window2d window(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Window2d w;
  w.kh = kh;
  w.kw = kw;
  w.sh = sh;
  w.sw = sw;
  w.ph = ph;
  w.pw = pw;
  return w;
}

// A direct convolution in plain loops: the independent oracle of conv2d.
std::vector<double> direct_conv(const Tensor& x, const Tensor& w, const Tensor& b, const Window2d& win) {
  const auto xv = x.to_vector(), wv = w.to_vector();
  const auto bv = b.defined() ? b.to_vector() : std::vector<double>();
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), wd = x.dim(3), o = w.dim(0);
  const int64_t oh = win.out_h(h), ow = win.out_w(wd);
  std::vector<double> y(static_cast<std::size_t>(n * o * oh * ow));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t f = 0; f < o; ++f)
      for (int64_t a = 0; a < oh; ++a)
        for (int64_t bb = 0; bb < ow; ++bb) {
          double s = bv.empty() ? 0.0 : bv[f];
          for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t p = 0; p < win.kh; ++p)
              for (int64_t q = 0; q < win.kw; ++q) {
                const int64_t yy = a * win.sh - win.ph + p, xx = bb * win.sw - win.pw + q;
                if (yy < 0 || yy >= h || xx < 0 || xx >= wd) continue;
                s += xv[((i * c + ch) * h + yy) * wd + xx] * wv[((f * c + ch) * win.kh + p) * win.kw + q];
              }
          y[((i * o + f) * oh + a) * ow + bb] = s;
        }
  return y;
}

}  // namespace

TEST_CASE("conv2d equals a direct convolution; im2col/col2im and the pooling pair are adjoint") {
  struct Case {
    Shape x, w;
    Window2d win;
    bool bias;
  };
  const std::vector<Case> cases = {{{2, 3, 5, 5}, {4, 3, 3, 3}, window(3, 3, 1, 1, 1, 1), false},
                                   {{1, 2, 7, 6}, {3, 2, 3, 3}, window(3, 3, 2, 2, 1, 1), true},
                                   {{2, 1, 4, 5}, {2, 1, 3, 2}, window(3, 2, 2, 1, 1, 0), true},
                                   {{3, 2, 3, 3}, {5, 2, 1, 1}, window(1, 1, 1, 1, 0, 0), false}};
  uint64_t stream = 200;
  for (const Case& c : cases) {
    const Tensor x = rand_tensor(c.x, stream++), w = rand_tensor(c.w, stream++);
    const Tensor b = c.bias ? rand_tensor({c.w[0]}, stream++) : Tensor();
    const Var y = ad::conv2d(Var(x), Var(w), c.bias ? Var(b) : Var(), c.win);
    CHECK(y.shape() == Shape{c.x[0], c.w[0], c.win.out_h(c.x[2]), c.win.out_w(c.x[3])});
    const auto ref = direct_conv(x, w, b, c.win), got = y.value().to_vector();
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(ref[i] - got[i]));
    CHECK(worst < 1e-13);
    // <im2col(x), k> = <x, col2im(k)>
    const Tensor cols = ops::im2col(x, c.win);
    const Tensor k = rand_tensor(cols.shape(), stream++);
    CHECK(ops::dot(cols, k) == doctest::Approx(ops::dot(x, ops::col2im(k, c.win, x.shape()))).epsilon(1e-12));
  }
  const Tensor x = rand_tensor({2, 3, 6, 5}, 230), g = rand_tensor({2, 3, 6, 5}, 231);
  for (const Window2d& w : {window(2, 2, 2, 2, 0, 0), window(3, 3, 2, 2, 1, 1), window(6, 5, 1, 1, 0, 0)}) {
    const Tensor sel = ops::maxpool_gather(x, g, w);
    const Tensor gy = rand_tensor(sel.shape(), 232);
    CHECK(ops::dot(sel, gy) == doctest::Approx(ops::dot(g, ops::maxpool_scatter(x, gy, w))).epsilon(1e-12));
  }
  // The pooled values are the window maxima; ties go to the first position (row-major).
  const Tensor t = Tensor::from_vector(std::vector<double>{1, 5, 5, 2, 0, -1, 3, 3, -2}, {1, 1, 3, 3}, DType::f64);
  const Tensor gsel = Tensor::from_vector(std::vector<double>{10, 11, 12, 13, 14, 15, 16, 17, 18}, {1, 1, 3, 3}, DType::f64);
  CHECK(ops::maxpool_gather(t, t, window(3, 3, 1, 1, 0, 0)).to_vector() == std::vector<double>{5});
  CHECK(ops::maxpool_gather(t, gsel, window(3, 3, 1, 1, 0, 0)).to_vector() == std::vector<double>{11});
  CHECK(ops::maxpool_gather(t, t, window(2, 2, 1, 1, 0, 0)).to_vector() == std::vector<double>{5, 5, 3, 3});
}

TEST_CASE("conv2d: gradients and double backward against finite differences") {
  const OpFn f = [](const std::vector<Var>& v) { return ad::conv2d(v[0], v[1], v[2], window(3, 3, 2, 1, 1, 1)); };
  check_op(f, {rand_tensor({2, 2, 5, 4}, 240), rand_tensor({3, 2, 3, 3}, 241), rand_tensor({3}, 242)}, 243);
}

TEST_CASE("conv2d followed by relu and a second conv: second derivatives in the weights") {
  const OpFn f = [](const std::vector<Var>& v) {
    Var h = ad::relu(ad::conv2d(v[0], v[1], Var(), window(3, 3, 1, 1, 1, 1)));
    return ad::conv2d(h, v[2], Var(), window(2, 2, 2, 2, 0, 0));
  };
  check_op(f, {rand_tensor({1, 2, 4, 4}, 244), rand_tensor({3, 2, 3, 3}, 245),
               rand_tensor({2, 3, 2, 2}, 246)},
           247);
}

TEST_CASE("maxpool2d and global max pooling (distinct values: no tie within a step)") {
  check_op([](const std::vector<Var>& v) { return ad::maxpool2d(v[0], window(2, 2, 2, 2, 0, 0)); },
           {rand_tensor({2, 3, 4, 5}, 250)}, 251);
  check_op([](const std::vector<Var>& v) { return ad::maxpool2d(v[0], window(4, 5, 1, 1, 0, 0)); },
           {rand_tensor({2, 3, 4, 5}, 252)}, 253);
}

TEST_CASE("per-channel ops: sum, broadcast, mul, add; elementwise mul") {
  check_op([](const std::vector<Var>& v) { return ad::channel_sum(v[0]); }, {rand_tensor({2, 3, 2, 2}, 260)}, 261);
  check_op([](const std::vector<Var>& v) { return ad::channel_broadcast(v[0], {2, 3, 2, 2}); }, {rand_tensor({3}, 262)},
           263);
  check_op([](const std::vector<Var>& v) { return ad::channel_mul(v[0], v[1]); },
           {rand_tensor({2, 3, 2, 2}, 264), rand_tensor({3}, 265)}, 266);
  check_op([](const std::vector<Var>& v) { return ad::channel_add(v[0], v[1]); },
           {rand_tensor({2, 3, 2}, 267), rand_tensor({3}, 268)}, 269);
  check_op([](const std::vector<Var>& v) { return ad::mul(v[0], v[1]); }, {rand_tensor({3, 4}, 270), rand_tensor({3, 4}, 271)},
           272);
}
