// Timings of the attribution kernels (kernels/projection.cuh, fisher.cuh, cholesky.cuh) as JSON
// lines {"what", "size", "seconds", "gflops", "peak_gflops", ...}.
//  - GPU: with CUDA enabled in the build (kernels/kernels.cmake links bench/bench_kernels_gpu.cu
//    and defines IIF_BENCH_KERNELS_GPU) the kernels are timed on the device with CUDA events
//    against the device's peak (cudaGetDeviceProperties); without a device, or without CUDA,
//    one JSON line says that there are no GPU timings.
//  - Emulated: the same kernels on the SIMT emulator (kernels/simt/), at small sizes because the
//    emulator is slow (fibers and barriers cost ~50-100 ns per thread per barrier), next to the
//    CPU backend's op on the same problem. peak_gflops is this machine's sgemm rate: the
//    emulated numbers say what the tests cost, not what a GPU would do.
// Each kernel's output is checked against the CPU op before it is timed (max_rel_err).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"

#if defined(IIF_BENCH_KERNELS_GPU)
// bench/bench_kernels_gpu.cu: prints its own JSON lines (or the "no GPU" line).
void iif_bench_kernels_gpu();
#endif

#if defined(IIF_HAVE_SIMT)

#include "attribution/projector.h"
#include "engine/ops.h"
#include "engine/tensor.h"
#include "kernels/cholesky.cuh"
#include "kernels/fisher.cuh"
#include "kernels/projection.cuh"

namespace {

using Clock = std::chrono::steady_clock;
namespace k = iif::kernels;
using iif::DType;
using iif::Tensor;

const char* kNote = "SIMT emulator on the CPU (kernels/simt): small sizes, the emulator is slow; not GPU numbers";

double best_of(int reps, const std::function<void()>& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

std::vector<float> uniform(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

double max_rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    num = std::max(num, std::fabs(got[i] - want[i]));
    den = std::max(den, std::fabs(want[i]));
  }
  return den > 0 ? num / den : num;
}

std::string extra(const std::string& impl, double err) {
  char buf[256];
  std::snprintf(buf, sizeof buf, ", \"impl\": \"%s\", \"max_rel_err\": %.3g, \"note\": \"%s\"", impl.c_str(), err,
                impl == "emulated" ? kNote : "CPU backend op on the same problem (OpenBLAS/LAPACK)");
  return buf;
}

void bench_emulated(iif_bench::JsonLines& out) {
  const int reps = 3;
  // Fused Linear projection, two cotangent sets (IIF's u and v).
  {
    const int b = 64, in = 64, out_f = 64, p = 128;
    const int64_t rows = int64_t(in) * out_f + out_f;
    iif::attr::ProjectorSpec spec;
    spec.dim = p;
    spec.seed = 1;
    const iif::attr::Projector pr(rows, spec);
    const std::vector<float> a = uniform(b * in, 1), d1 = uniform(b * out_f, 2), d2 = uniform(b * out_f, 3);
    std::vector<float> y1(b * p), y2(b * p);
    const float* ds[2] = {d1.data(), d2.data()};
    float* ys[2] = {y1.data(), y2.data()};
    auto run = [&] {
      std::fill(y1.begin(), y1.end(), 0.0f);
      std::fill(y2.begin(), y2.end(), 0.0f);
      k::linear_project<float>(a.data(), ds, ys, 2, b, in, out_f, true, 0, p, k::RKind::rademacher, 1);
    };
    // Reference: the per-sample gradients of cotangent 1 formed on the host, projected by the CPU.
    std::vector<double> g(static_cast<std::size_t>(b) * rows);
    for (int s = 0; s < b; ++s)
      for (int o = 0; o < out_f; ++o) {
        for (int i = 0; i < in; ++i) g[s * rows + o * in + i] = double(d1[s * out_f + o]) * a[s * in + i];
        g[s * rows + int64_t(in) * out_f + o] = d1[s * out_f + o];
      }
    const Tensor gt = Tensor::from_vector(g, {b, rows}, DType::f32);
    Tensor yt = Tensor::zeros({b, p}, DType::f32);
    run();
    pr.project_block(gt, 0, 0.0, yt);
    const double err = max_rel_err(y1, yt.to_vector());
    const double flops = 2.0 * 2 * b * double(rows) * p;
    const std::string size = "B=" + std::to_string(b) + " in=" + std::to_string(in) + " out=" +
                             std::to_string(out_f) + " P=" + std::to_string(p) + " cotangents=2";
    const double t = best_of(reps, run);
    out.add("linear_project", size, t, flops / t / 1e9, extra("emulated", err));
    const double tc = best_of(reps, [&] { pr.project_block(gt, 0, 0.0, yt); });
    out.add("linear_project", size + " (cpu: one cotangent, gradients given)", tc, flops / 2 / tc / 1e9,
            extra("cpu", 0.0));
  }
  // Projection of given gradients.
  {
    const int b = 64, p = 128;
    const int64_t m = 2048;
    iif::attr::ProjectorSpec spec;
    spec.dim = p;
    const iif::attr::Projector pr(m, spec);
    const std::vector<float> g = uniform(b * m, 4);
    std::vector<float> y(b * p);
    auto run = [&] { k::project_rows<float>(g.data(), m, b, m, 0, p, k::RKind::rademacher, 0, 0.0, y.data()); };
    const Tensor gt = Tensor::from_vector(std::vector<double>(g.begin(), g.end()), {b, m}, DType::f32);
    Tensor yt = Tensor::zeros({b, p}, DType::f32);
    run();
    pr.project_block(gt, 0, 0.0, yt);
    const double err = max_rel_err(y, yt.to_vector());
    const double flops = 2.0 * b * double(m) * p;
    const std::string size = "B=" + std::to_string(b) + " M=" + std::to_string(m) + " P=" + std::to_string(p);
    const double t = best_of(reps, run);
    out.add("project_rows", size, t, flops / t / 1e9, extra("emulated", err));
    const double tc = best_of(reps, [&] { pr.project_block(gt, 0, 0.0, yt); });
    out.add("project_rows", size, tc, flops / tc / 1e9, extra("cpu", 0.0));
  }
  // Fisher accumulation (syrk), float32.
  {
    const int n = 1024, p = 128;
    const std::vector<float> u = uniform(static_cast<std::size_t>(n) * p, 5);
    std::vector<float> c(static_cast<std::size_t>(p) * p);
    auto run = [&] { k::syrk<float>(1.0, u.data(), n, p, 0.0, c.data()); };
    const Tensor ut = Tensor::from_vector(std::vector<double>(u.begin(), u.end()), {n, p}, DType::f32);
    Tensor ct = Tensor::zeros({p, p}, DType::f32);
    run();
    iif::ops::syrk(1.0, ut, 0.0, ct);
    const double err = max_rel_err(c, ct.to_vector());
    const double flops = double(n) * p * (p + 1);  // the triangle: N P (P + 1) flops
    const std::string size = "N=" + std::to_string(n) + " P=" + std::to_string(p);
    const double t = best_of(reps, run);
    out.add("syrk", size, t, flops / t / 1e9, extra("emulated", err));
    const double tc = best_of(reps, [&] { iif::ops::syrk(1.0, ut, 0.0, ct); });
    out.add("syrk", size, tc, flops / tc / 1e9, extra("cpu", 0.0));
  }
  // Batched damped Cholesky solves (float32 storage, float64 arithmetic).
  {
    const int kc = 4, p = 64, r = 64;
    std::vector<float> a(static_cast<std::size_t>(kc) * p * p);
    for (int q = 0; q < kc; ++q) {
      const std::vector<float> bm = uniform(static_cast<std::size_t>(p) * p, 10 + q);
      for (int i = 0; i < p; ++i)
        for (int j = 0; j <= i; ++j) {
          double s = 0;
          for (int t = 0; t < p; ++t) s += double(bm[i * p + t]) * bm[j * p + t];
          a[(q * p + i) * p + j] = a[(q * p + j) * p + i] = static_cast<float>(s / p + (i == j ? 0.1 : 0.0));
        }
    }
    const std::vector<double> damping(kc, 0.01);
    const std::vector<float> b0 = uniform(static_cast<std::size_t>(kc) * p * r, 20);
    std::vector<float> b(b0);
    std::vector<int> info(kc);
    std::vector<unsigned char> ws(k::cholesky_workspace_bytes(kc, p, r));
    auto run = [&] {
      b = b0;
      k::batched_cholesky_solve<float>(a.data(), damping.data(), kc, p, b.data(), r, ws.data(), info.data());
    };
    const Tensor at = Tensor::from_vector(std::vector<double>(a.begin(), a.end()), {kc, p, p}, DType::f32);
    const Tensor bt0 = Tensor::from_vector(std::vector<double>(b0.begin(), b0.end()), {kc, p, r}, DType::f32);
    Tensor bt = bt0.clone();
    run();
    iif::ops::batched_cholesky_solve_into(at, damping, bt);
    const double err = max_rel_err(b, bt.to_vector());
    const double flops = kc * (double(p) * p * p / 3 + 2.0 * p * p * r);
    const std::string size = "K=" + std::to_string(kc) + " P=" + std::to_string(p) + " R=" + std::to_string(r);
    const double t = best_of(reps, run);
    out.add("batched_cholesky_solve", size, t, flops / t / 1e9, extra("emulated", err));
    const double tc = best_of(reps, [&] {
      bt.copy_from(bt0);
      iif::ops::batched_cholesky_solve_into(at, damping, bt);
    });
    out.add("batched_cholesky_solve", size, tc, flops / tc / 1e9, extra("cpu", 0.0));
  }
}

}  // namespace

#endif  // IIF_HAVE_SIMT

int main() {
#if defined(IIF_BENCH_KERNELS_GPU)
  iif_bench_kernels_gpu();
#else
  std::printf("{\"what\": \"gpu\", \"size\": \"\", \"seconds\": null, \"gflops\": null, \"peak_gflops\": null, "
              "\"note\": \"no GPU timings: this build has no CUDA (nvcc not enabled), so no GPU was looked for\"}\n");
  std::fflush(stdout);
#endif
#if defined(IIF_HAVE_SIMT)
  iif_bench::JsonLines out;
  out.note_peak(iif_bench::sgemm_gflops(512, 5));
  bench_emulated(out);
  out.note_peak(iif_bench::sgemm_gflops(512, 5));
  out.flush();
#else
  std::printf("{\"what\": \"emulated\", \"note\": \"built without the SIMT emulator (IIF_HAVE_SIMT)\"}\n");
#endif
  return 0;
}
