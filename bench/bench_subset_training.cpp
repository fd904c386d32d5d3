// Subset-model training throughput for LDS ground truth, one JSON line each: the MNIST MLP recipe
// (784-128-64-10, dropout 0.1, SGD 0.01/0.9, batch 64) on 2500-image subsets of 5000 MNIST
// training images, one model at a time through nn::train versus B models at once through
// nn::train_models (B = 8, 16, 32); plus the two ways of running the batched GEMM on the CPU.
// Runs a few epochs and extrapolates models/s to the recipe's 50 epochs (time is linear in the
// epoch count: every epoch is the same work); lines say "extrapolated_to_50_epochs".
//   usage: bench_subset_training [--data-dir data/mnist] [--epochs 2] [--quick]
#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "nn/datasets.h"
#include "nn/model_batch.h"
#include "nn/models.h"
#include "nn/trainer.h"

using namespace iif;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string num(double v) {
  char b[48];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

// The batched GEMM of the MLP's first layer, C_k (64,128) = X_k (64,784) W_k (128,784)^T for
// k < B: (a) ops::gemm_batched (OpenMP over k, one single-threaded sgemm each); (b) a serial
// loop over k of threaded sgemm calls. Best of `reps`, GFLOP/s.
void bench_gemm_strategies(iif_bench::JsonLines& out, int64_t batch, int reps) {
  const int64_t m = 64, n = 128, k = 784;
  const Tensor a = Tensor::full({batch, m, k}, 0.5), b = Tensor::full({batch, n, k}, 0.25);
  Tensor c = Tensor::zeros({batch, m, n});
  const double flop = 2.0 * double(batch * m * n * k);
  double best_a = 1e30, best_b = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    ops::gemm_batched(false, true, 1.0, a, b, 0.0, c);
    best_a = std::min(best_a, since(t0));
    t0 = Clock::now();
    for (int64_t i = 0; i < batch; ++i)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f,
                  a.data<float>() + i * m * k, int(k), b.data<float>() + i * n * k, int(k), 0.0f,
                  c.data<float>() + i * m * n, int(n));
    best_b = std::min(best_b, since(t0));
  }
  const std::string size = std::to_string(batch) + " x (64x784 * 784x128)";
  out.add("gemm_batched_omp_over_k", size, best_a, flop / best_a / 1e9);
  out.add("gemm_serial_loop_threaded_sgemm", size, best_b, flop / best_b / 1e9);
}

}  // namespace

int run(int argc, char** argv) {
  std::string dir = "data/mnist";
  int epochs = 2;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--data-dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--epochs" && i + 1 < argc) epochs = std::stoi(argv[++i]);
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: bench_subset_training [--data-dir DIR] [--epochs E] [--quick]\n");
      return 2;
    }
  }
  if (quick) epochs = 1;
  iif_bench::JsonLines out;
  out.note_peak(iif_bench::sgemm_gflops(1024, 10));

  for (int64_t b : {8, 32}) bench_gemm_strategies(out, b, quick ? 3 : 10);

  // dattri's MNIST benchmark: 5000 training images, subsets of half.
  const auto train = data::load_mnist(dir, data::Split::train, 5000);
  const Tensor x = train.images;
  const Tensor t = ops::one_hot(train.labels, 10, x.dtype(), x.device());
  const int64_t n = train.size(), sub = n / 2;
  const std::string spec = "mlp";  // 784-128-64-10, dropout 0.1
  int64_t weights = 0;
  for (auto& p : nn::make_model(spec, {})->named_parameters())
    if (p.var->value().ndim() == 2) weights += p.var->value().numel();
  nn::TrainConfig recipe;  // SGD 0.01 / 0.9, batch 64, the paper's recipe
  recipe.epochs = epochs;
  recipe.progress = false;
  auto subsets_for = [&](int64_t count) {
    std::vector<std::vector<int64_t>> s;
    std::vector<uint64_t> seeds;
    for (int64_t m = 0; m < count; ++m) {
      std::vector<int64_t> p = rng::permutation(n, 42 + static_cast<uint64_t>(m), 0);
      p.resize(static_cast<std::size_t>(sub));
      s.push_back(p);
      seeds.push_back(1000003ull * static_cast<uint64_t>(m));
    }
    return std::make_pair(s, seeds);
  };
  // One line per configuration: GFLOP/s = 6 x weights x samples / s (forward 2, input gradient
  // 2, weight gradient 2; the first layer's input gradient is not formed, so this slightly
  // overstates the work: 784*128*2 of the 6*109184 flops per sample, 30%, are never done).
  const double flop_per_model = 6.0 * double(weights) * double(sub) * epochs;
  auto report = [&](const std::string& what, int64_t models, double s, double baseline_mps) {
    const double mps = double(models) / s;
    out.add(what, std::to_string(models) + " models x " + std::to_string(sub) + " images x " +
                      std::to_string(epochs) + " epochs",
            s, flop_per_model * double(models) / s / 1e9,
            ", \"models_per_second\": " + num(mps) + ", \"models_per_second_50_epochs\": " +
                num(mps * epochs / 50.0) + ", \"extrapolated_to_50_epochs\": true" +
                ", \"seconds_per_model_50_epochs\": " + num(50.0 / epochs / mps) +
                (baseline_mps > 0 ? ", \"speedup_vs_one_at_a_time\": " + num(mps / baseline_mps) : ""));
    return mps;
  };

  // Best of `reps` runs of each (other work on a shared machine only ever slows a run down).
  const int reps = quick ? 1 : 3;
  auto best_of = [&](const std::function<void()>& f) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      f();
      best = std::min(best, since(t0));
    }
    return best;
  };

  // One at a time through nn::train (threaded OpenBLAS inside each GEMM, as ground_truth does),
  // then the same on one thread: the per-core rate.
  const int64_t singles = quick ? 2 : 4;
  const auto [s1, seeds1] = subsets_for(singles);
  auto one_at_a_time = [&, &s1 = s1, &seeds1 = seeds1] {
    for (int64_t m = 0; m < singles; ++m) {
      nn::Init init;
      init.seed = seeds1[m];
      auto model = nn::make_model(spec, init);
      nn::TrainConfig c = recipe;
      c.seed = seeds1[m];
      nn::train(*model, ops::gather_rows(x, s1[m]), ops::gather_rows(t, s1[m]), c);
    }
  };
  const double base = report("subset_models_one_at_a_time_nn_train", singles, best_of(one_at_a_time), 0.0);
  {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    report("subset_models_one_at_a_time_nn_train_1_thread", singles, best_of(one_at_a_time), base);
    omp_set_num_threads(saved);
  }

  // B models at once through nn::train_models (max_models = B: one batch).
  for (int64_t b : {4, 8, 16, 32}) {
    if (quick && b > 8) break;
    const auto [s, seeds] = subsets_for(b);
    const double sec = best_of([&, &s = s, &seeds = seeds] { nn::train_models(spec, x, t, s, seeds, recipe, b); });
    report("subset_models_batched_B" + std::to_string(b), b, sec, base);
  }
  out.note_peak(iif_bench::sgemm_gflops(1024, 10));
  out.flush();
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_subset_training: %s\n", e.what());
    return 1;
  }
}
