// Engine benchmarks, one JSON line each: this machine's OpenBLAS sgemm GFLOP/s (the peak the
// rest is compared against), the MNIST MLP's training and inference throughput, and the
// Hessian- / Gauss-Newton-vector products over 5000 training images (IF-CG's and the Hessian
// IIF path's inner step) at several batch sizes, beside the R-operator test oracle's.
//   usage: bench_engine [--data-dir data/mnist] [--quick]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "attribution/hvp.h"
#include "bench/bench_util.h"
#include "engine/rng.h"
#include "engine/ops.h"
#include "nn/datasets.h"
#include "nn/models.h"
#include "nn/trainer.h"
#include "tests/oracles/r_operator.h"

using namespace iif;
using Clock = std::chrono::steady_clock;

namespace {

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "data/mnist";
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--data-dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: bench_engine [--data-dir DIR] [--quick]\n");
      return 2;
    }
  }
  iif_bench::JsonLines out;
  for (int n : {256, 1024, 2048}) {
    if (quick && n > 1024) break;
    double s = 0;
    const double g = iif_bench::sgemm_gflops(n, n >= 2048 ? 3 : 10, &s);
    out.note_peak(g);
    out.add("sgemm_openblas", std::to_string(n) + "x" + std::to_string(n) + "x" + std::to_string(n), s, g);
  }

  // MLP training: flops per sample ~ 6 x weights (forward 2, input and weight gradients 2 + 2).
  const auto train = data::load_mnist(dir, data::Split::train, 5000);
  auto model = nn::make_model("mlp", {});
  int64_t weights = 0;
  for (auto& p : model->named_parameters())
    if (p.var->value().ndim() == 2) weights += p.var->value().numel();
  nn::TrainConfig c;
  c.epochs = quick ? 1 : 3;
  c.progress = false;
  const auto r = nn::train(*model, train, c);
  out.add("mlp_train_sgd_batch64", "784-128-64-10 x " + std::to_string(train.size()) + " x " + std::to_string(c.epochs) + " epochs",
       r.seconds, r.samples_per_second * 6.0 * double(weights) / 1e9,
       ", \"samples_per_second\": " + std::to_string(r.samples_per_second));

  // Inference in batches of 1000.
  const auto t0 = Clock::now();
  const int reps = quick ? 2 : 10;
  for (int i = 0; i < reps; ++i) nn::predict(*model, train.images, 1000);
  const double si = std::chrono::duration<double>(Clock::now() - t0).count();
  const double sps = double(train.size()) * reps / si;
  out.add("mlp_predict_batch1000", "784-128-64-10 x " + std::to_string(train.size()), si / reps,
          sps * 2.0 * double(weights) / 1e9, ", \"samples_per_second\": " + std::to_string(sps));
  // Curvature-vector products of the mean loss over all training images. Flops per sample, per
  // Linear layer of w weights: the first layer 3 GEMMs (forward, R-forward, weight product),
  // every other layer 8 for the Hessian (forward 1, R-forward 2, backward 5) and 5 for
  // Gauss-Newton (no delta terms), 2 w flops each.
  {
    int64_t w_first = -1, w_rest = 0;
    for (auto& p : model->named_parameters())
      if (p.var->value().ndim() == 2) (w_first < 0 ? w_first : w_rest) += p.var->value().numel();
    const Tensor t = ops::one_hot(train.labels, 10, DType::f32, Device::cpu());
    std::vector<double> vv(static_cast<std::size_t>(model->num_parameters()));
    for (std::size_t i = 0; i < vv.size(); ++i) vv[i] = rng::normal(7, 0, i);
    const Tensor v = Tensor::from_vector(vv, {model->num_parameters()}, DType::f64);
    // Each twice: the engine's products (autodiff's double backward) and the hand-written
    // R-operator of the test oracle (rows *_r_operator_oracle), with the same nominal flop count,
    // so their GFLOP/s compare as speeds.
    for (bool oracle : {false, true})
      for (attr::Curvature cv : {attr::Curvature::hessian, attr::Curvature::gauss_newton}) {
        const bool h = cv == attr::Curvature::hessian;
        const std::string suffix = oracle ? "_r_operator_oracle" : "";
        for (int64_t b : {int64_t(256), int64_t(1000), train.size()}) {
          attr::HvpOptions o;
          o.batch = b;
          o.curvature = cv;
          const int reps = quick ? 1 : 3;
          const double best = iif_bench::best_seconds(reps, [&] {
            if (oracle) oracle::r_operator_product(*model, train.images, t, nn::LossKind::cross_entropy, v, cv, b);
            else attr::hessian_vector_product(*model, train.images, t, nn::LossKind::cross_entropy, v, o);
          });
          const double flops = 2.0 * double(train.size()) * double(3 * w_first + (h ? 8 : 5) * w_rest);
          const std::string size = "784-128-64-10 x " + std::to_string(train.size()) + ", batch " + std::to_string(b);
          out.add((h ? "hvp_hessian" : "hvp_gauss_newton") + suffix, size, best, flops / best / 1e9);
          // The same products with the forward pass cached (CurvatureOperator, what CG uses): the
          // flops of the last passes only, 2 w per GEMM (first layer 2, others 6 for H and 4 for G).
          double best_op = 0;
          if (oracle) {
            const oracle::ROperator op(*model, train.images, t, nn::LossKind::cross_entropy, cv, b);
            best_op = iif_bench::best_seconds(reps, [&] { op.apply(v); });
          } else {
            const attr::CurvatureOperator op(*model, train.images, t, nn::LossKind::cross_entropy, o);
            best_op = iif_bench::best_seconds(reps, [&] { op.apply(v); });
          }
          const double flops_op = 2.0 * double(train.size()) * double(2 * w_first + (h ? 6 : 4) * w_rest);
          out.add((h ? "hvp_hessian_cached_forward" : "hvp_gauss_newton_cached_forward") + suffix, size, best_op,
                  flops_op / best_op / 1e9, ", \"speedup_vs_uncached\": " + std::to_string(best / best_op));
        }
      }
  }
  out.note_peak(iif_bench::sgemm_gflops(1024, 10));
  out.flush();
  return 0;
}
