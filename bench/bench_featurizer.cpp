// Featurizer benchmarks, one JSON line each: projected per-sample gradients of the MNIST MLP
// (784-128-64-10, float32, P = 256) on real images, for both kernels and one or two cotangents,
// against this machine's OpenBLAS sgemm rate; R generation timed on its own; and the direct
// route (materialise exact gradients, then project) as a baseline.
// Flops counted: 2 M P per sample per cotangent (the GEMM of a formed gradient with R).
//   usage: bench_featurizer [--data-dir data/mnist] [--n 2000] [--proj-dim 256] [--quick]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "attribution/featurizer.h"
#include "bench/bench_util.h"
#include "attribution/projector.h"
#include "engine/ops.h"
#include "nn/datasets.h"
#include "nn/models.h"

using namespace iif;
using Clock = std::chrono::steady_clock;

namespace {

iif_bench::JsonLines g_out;

void emit(const std::string& what, const std::string& size, double seconds, double gflops,
          const std::string& extra = "") {
  g_out.add(what, size, seconds, gflops, extra);
}


double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "data/mnist";
  int64_t n = 2000, p = 256;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--data-dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--n" && i + 1 < argc) n = std::stoll(argv[++i]);
    else if (a == "--proj-dim" && i + 1 < argc) p = std::stoll(argv[++i]);
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: bench_featurizer [--data-dir DIR] [--n N] [--proj-dim P] [--quick]\n");
      return 2;
    }
  }
  if (quick) n = std::min<int64_t>(n, 1000);
  const int reps = quick ? 1 : 3;

  // The sgemm rate is measured before, between and after the featurizer runs; the best counts.
  auto measure_peak = [&] { g_out.note_peak(iif_bench::sgemm_gflops(1024, 10)); };
  measure_peak();

  const auto data = data::load_mnist(dir, data::Split::train, n);
  nn::Init init;
  init.seed = 1;
  auto model = nn::make_model("mlp", init);
  const int64_t m = model->num_parameters();
  attr::ProjectorSpec ps;
  ps.dim = p;
  const attr::Projector proj(m, ps);
  const std::string shape = "784-128-64-10 (M=" + std::to_string(m) + ") P=" + std::to_string(p);

  // R generation alone: all M rows once, in 8 MiB tiles, float32.
  {
    const int64_t rows = std::max<int64_t>(1, (int64_t{8} << 20) / (p * 4));
    std::vector<float> buf(static_cast<std::size_t>(rows * p));
    double best = 1e30;
    for (int r = 0; r < 2 * reps; ++r) {
      const auto t0 = Clock::now();
      for (int64_t r0 = 0; r0 < m; r0 += rows) proj.fill_rows(r0, std::min(rows, m - r0), buf.data(), p);
      best = std::min(best, seconds_since(t0));
    }
    emit("projector_generate_rademacher_f32", std::to_string(m) + "x" + std::to_string(p), best, 0.0,
         ", \"entries_per_second\": " + num(double(m) * double(p) / best));
  }

  const Tensor t1 = ops::one_hot(data.labels, 10, DType::f32, Device::cpu());
  const Tensor t2 = ops::scale(t1, 0.5);
  auto cot = [](const Tensor& t) -> attr::CotangentFn {
    return [t](const Tensor& out, int64_t first) {
      return attr::xent_cotangent(out, t.rows(first, first + out.dim(0)));
    };
  };

  struct Variant {
    attr::FeaturizerKernel kernel;
    int64_t chunk;
    std::size_t tile;
    int k;
  };
  std::vector<Variant> variants;
  for (auto kernel : {attr::FeaturizerKernel::factored, attr::FeaturizerKernel::gradient_tile})
    for (int k : {1, 2}) variants.push_back({kernel, 2048, std::size_t(8) << 20, k});
  if (!quick) {
    // Tile size and chunk (R generated once per chunk) for the default kernel, one cotangent.
    for (std::size_t tile : {std::size_t(1) << 20, std::size_t(32) << 20})
      variants.push_back({attr::FeaturizerKernel::factored, 2048, tile, 1});
    variants.push_back({attr::FeaturizerKernel::factored, 256, std::size_t(8) << 20, 1});
  }

  {  // warm-up: threads, page faults
    attr::Featurizer f(*model, proj);
    f.project(data.images.rows(0, std::min<int64_t>(n, 256)), {cot(t1)}, 256);
  }
  for (const Variant& v : variants) {
    attr::FeaturizerOptions o;
    o.kernel = v.kernel;
    o.chunk = v.chunk;
    o.tile_bytes = v.tile;
    attr::Featurizer f(*model, proj, o);
    std::vector<attr::CotangentFn> cots{cot(t1)};
    if (v.k == 2) cots.push_back(cot(t2));
    // Best of `reps` runs (other work on the machine only ever slows a run down).
    double s = 1e30;
    attr::Featurizer::Timing tm;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      f.project(data.images, cots, 256);
      const double sr = seconds_since(t0);
      if (sr < s) {
        s = sr;
        tm = f.last_timing();
      }
    }
    const double flops = double(n) * v.k * 2.0 * double(m) * double(p);
    emit(std::string("featurize_") + attr::featurizer_kernel_name(v.kernel) + "_k" + std::to_string(v.k),
         shape + " x " + std::to_string(n) + " chunk=" + std::to_string(v.chunk) +
             " tile=" + std::to_string(v.tile >> 20) + "MiB",
         s, flops / s / 1e9,
         ", \"samples_per_second\": " + num(double(n) / s) + ", \"cotangents\": " +
             std::to_string(v.k) + ", \"autodiff_s\": " + num(tm.autodiff) +
             ", \"generate_s\": " + num(tm.generate) + ", \"project_s\": " + num(tm.project));
    measure_peak();
  }

  // Baseline: materialise the exact (B, M) gradients, then project them with one big GEMM
  // (Projector::project). Needs B x M memory, which the featurizer avoids.
  {
    const int64_t b = std::min<int64_t>(n, 512);
    attr::Featurizer f(*model, proj);
    const Tensor x = data.images.rows(0, b);
    double s_exact = 1e30, s_proj = 1e30;
    Tensor g;
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      g = f.exact(x, cot(t1), 256);
      s_exact = std::min(s_exact, seconds_since(t0));
      t0 = Clock::now();
      const Tensor y = proj.project(g);
      s_proj = std::min(s_proj, seconds_since(t0));
    }
    const double s = s_exact + s_proj;
    emit("exact_then_project_k1", shape + " x " + std::to_string(b), s,
         double(b) * 2.0 * double(m) * double(p) / s / 1e9,
         ", \"samples_per_second\": " + num(double(b) / s) + ", \"exact_s\": " + num(s_exact) +
             ", \"project_s\": " + num(s_proj) + ", \"gradient_bytes\": " + num(double(g.nbytes())));
  }
  measure_peak();
  g_out.add("sgemm_openblas", "1024x1024x1024", 2.0 * 1024 * 1024 * 1024 / g_out.peak() / 1e9, g_out.peak());
  g_out.flush();
  return 0;
}
