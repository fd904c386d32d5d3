// The custom-layer example of docs/gpu.md: LayerScale's kernels (kernels/layerscale.cuh) on the
// SIMT emulator, through the layer of examples/layerscale.h on the emulated CUDA backend
// (CTest label cuda-emulated):
//  - forward and dx are one multiplication per entry, as in the CPU reference: bitwise equal;
//  - dgamma sums B products in float64 in a different order than the CPU loop, then rounds
//    once: within 1 ulp of the storage type plus B * 2^-53 relative of sum |dy x|;
//  - every kernel with a barrier gives the same bits in four fiber orders;
//  - the backward against central finite differences of L = sum(w .* layerscale(x, gamma)) in
//    float64 (step 1e-6; the error of a central difference of this bilinear L is rounding only:
//    1e-7 relative);
//  - one SGD step of a model with the layer, on the emulated backend and the CPU, gives equal
//    parameters (within float32 rounding).
#include <doctest/doctest.h>

#if defined(IIF_CUDA_BACKEND) && defined(IIF_CUDA_EMULATED)

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/cuda/cuda_backend.h"
#include "engine/ops.h"
#include "examples/layerscale.h"
#include "kernels/simt/runtime.h"

using namespace iif;

namespace {

const Device kCpu = Device::cpu();

Device dev() {
  cuda::register_backend();
  return cuda::device();
}

std::vector<double> randoms(int64_t n, unsigned seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(-2.0, 2.0);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (double& x : v) x = d(g);
  return v;
}

bool bitwise(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(kCpu), hb = b.to(kCpu);
  return ha.shape() == hb.shape() && std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}

}  // namespace

TEST_CASE("custom layer: LayerScale kernels equal the CPU reference, in every schedule order") {
  for (DType dt : {DType::f32, DType::f64}) {
    const double u = dt == DType::f32 ? 5.9604644775390625e-08 : 1.1102230246251565e-16;
    for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 33}, {300, 37}, {5, 70}}) {
      const Tensor x = Tensor::from_vector(randoms(rows * cols, 1), {rows, cols}, dt, kCpu);
      const Tensor g = Tensor::from_vector(randoms(cols, 2), {cols}, dt, kCpu);
      const Tensor dy = Tensor::from_vector(randoms(rows * cols, 3), {rows, cols}, dt, kCpu);
      Tensor y = Tensor::empty(x.shape(), dt, kCpu), dx = Tensor::empty(x.shape(), dt, kCpu),
             dg = Tensor::empty(g.shape(), dt, kCpu);
      if (dt == DType::f32) {
        example::layerscale_forward_any<float>(x, g, y);
        example::layerscale_backward_any<float>(x, g, dy, &dx, &dg);
      } else {
        example::layerscale_forward_any<double>(x, g, y);
        example::layerscale_backward_any<double>(x, g, dy, &dx, &dg);
      }
      std::vector<Tensor> dgs;
      for (int order = 0; order < 4; ++order) {
        simt::Options o = simt::options();
        o.schedule = order == 0 ? simt::Schedule::forward : order == 1 ? simt::Schedule::reversed : simt::Schedule::random;
        o.seed = static_cast<uint64_t>(order);
        simt::ScopedOptions scope(o);
        const Tensor xd = x.to(dev()), gd = g.to(dev()), dyd = dy.to(dev());
        Tensor yd = Tensor::full(x.shape(), std::nan(""), dt, dev());
        Tensor dxd = Tensor::full(x.shape(), std::nan(""), dt, dev());
        Tensor dgd = Tensor::full(g.shape(), std::nan(""), dt, dev());
        if (dt == DType::f32) {
          example::layerscale_forward_any<float>(xd, gd, yd);
          example::layerscale_backward_any<float>(xd, gd, dyd, &dxd, &dgd);
        } else {
          example::layerscale_forward_any<double>(xd, gd, yd);
          example::layerscale_backward_any<double>(xd, gd, dyd, &dxd, &dgd);
        }
        INFO(dtype_name(dt) << " " << rows << "x" << cols << " order " << order);
        CHECK(bitwise(yd, y));
        CHECK(bitwise(dxd, dx));
        const std::vector<double> a = dgd.to_vector(), b = dg.to_vector(), xv = x.to_vector(), dv = dy.to_vector();
        for (int64_t c = 0; c < cols; ++c) {
          double mag = 0;
          for (int64_t r = 0; r < rows; ++r) mag += std::fabs(xv[r * cols + c] * dv[r * cols + c]);
          CHECK(std::fabs(a[c] - b[c]) <= 2 * u * std::fabs(b[c]) + double(rows) * 1.2e-16 * mag);
        }
        dgs.push_back(dgd);
      }
      for (int order = 1; order < 4; ++order) CHECK(bitwise(dgs[order], dgs[0]));
    }
  }
}

TEST_CASE("custom layer: LayerScale's backward matches central finite differences (float64)") {
  const int64_t rows = 6, cols = 9;
  const std::vector<double> xv = randoms(rows * cols, 11), gv = randoms(cols, 12), wv = randoms(rows * cols, 13);
  const Tensor w = Tensor::from_vector(wv, {rows, cols}, DType::f64, dev());
  // L(x, gamma) = sum(w .* y): dL/dy = w, so backward(y, w) gives the gradients.
  auto loss = [&](const std::vector<double>& x, const std::vector<double>& g) {
    const Var y = example::layerscale(Var(Tensor::from_vector(x, {rows, cols}, DType::f64, dev())),
                                      Var(Tensor::from_vector(g, {cols}, DType::f64, dev())));
    return ops::dot(y.value(), w);
  };
  Var x(Tensor::from_vector(xv, {rows, cols}, DType::f64, dev()), true);
  Var g(Tensor::from_vector(gv, {cols}, DType::f64, dev()), true);
  const Var y = example::layerscale(x, g);
  backward(y, w);
  const std::vector<double> gx = x.grad().to_vector(), gg = g.grad().to_vector();
  const double h = 1e-6;
  for (int64_t i = 0; i < rows * cols; i += 5) {
    std::vector<double> p = xv, m = xv;
    p[i] += h;
    m[i] -= h;
    const double fd = (loss(p, gv) - loss(m, gv)) / (2 * h);
    CHECK(gx[i] == doctest::Approx(fd).epsilon(1e-6));
  }
  for (int64_t c = 0; c < cols; ++c) {
    std::vector<double> p = gv, m = gv;
    p[c] += h;
    m[c] -= h;
    const double fd = (loss(xv, p) - loss(xv, m)) / (2 * h);
    CHECK(gg[c] == doctest::Approx(fd).epsilon(1e-6));
  }
}

TEST_CASE("custom layer: one SGD step of a model with LayerScale, emulated CUDA vs CPU") {
  std::vector<std::vector<double>> after;
  for (Device d : {kCpu, dev()}) {
    nn::Init init;
    init.seed = 3;
    init.device = d;
    nn::Sequential m;
    m.add(std::make_unique<nn::Linear>(12, 8, true, init, 0));
    m.add(std::make_unique<example::LayerScale>(8, 0.1, init));
    m.add(std::make_unique<nn::ReLU>());
    m.add(std::make_unique<nn::Linear>(8, 3, true, init, 1));
    const Tensor x = Tensor::from_vector(randoms(20 * 12, 21), {20, 12}, DType::f32, d);
    const Tensor t = ops::one_hot(std::vector<int64_t>(20, 1), 3, DType::f32, d);
    Var loss = ad::softmax_xent_mean(m.forward(Var(x)), t);
    backward(loss);
    std::vector<double> flat;
    for (auto& p : m.named_parameters()) {
      Tensor& v = p.var->mutable_value();
      ops::axpby(-0.1, p.var->grad(), 1.0, v);
      for (double e : v.to_vector()) flat.push_back(e);
    }
    after.push_back(flat);
  }
  REQUIRE(after[0].size() == after[1].size());
  for (std::size_t i = 0; i < after[0].size(); ++i) CHECK(after[1][i] == doctest::Approx(after[0][i]).epsilon(1e-5));
}

#else

TEST_CASE("custom layer: skipped (needs the emulated CUDA backend)") {}

#endif
