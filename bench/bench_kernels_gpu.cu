// GPU timings of the attribution kernels for bench/bench_kernels.cpp, built by nvcc only when
// CUDA is enabled (kernels/kernels.cmake). Times each launcher with CUDA events (best of 5 after
// a warm-up) and reports GFLOP/s against the device's peak from cudaGetDeviceProperties and
// cudaDeviceGetAttribute (FP32 for the float32 kernels, FP64 for the Cholesky solves). Without
// a device it prints one JSON line saying so.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cholesky.cuh"
#include "kernels/fisher.cuh"
#include "kernels/projection.cuh"

namespace {

namespace k = iif::kernels;

#define IIF_CUDA_OK(call)                                                                       \
  do {                                                                                          \
    const cudaError_t e_ = (call);                                                              \
    if (e_ != cudaSuccess) {                                                                    \
      std::printf("{\"what\": \"gpu\", \"note\": \"%s failed: %s\"}\n", #call, cudaGetErrorString(e_)); \
      return;                                                                                   \
    }                                                                                           \
  } while (0)

// FP32 lanes per SM by compute capability (CUDA C Programming Guide, arithmetic throughput).
int fp32_per_sm(int major, int minor) {
  if (major == 7) return 64;
  if (major == 8) return minor == 0 ? 64 : 128;
  return 128;  // 9.x, 10.x, 12.x
}
// FP64 : FP32 throughput ratio.
double fp64_ratio(int major, int minor) {
  if ((major == 8 && minor == 0) || major == 9 || (major == 10 && minor == 0)) return 0.5;
  if (major == 7 && minor == 0) return 0.5;
  return 1.0 / 64;
}

struct Device {
  std::string name;
  double peak32 = 0, peak64 = 0;
};

double time_ms(cudaStream_t s, const std::function<void()>& launch) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  launch();  // warm-up
  cudaStreamSynchronize(s);
  float best = 1e30f;
  for (int r = 0; r < 5; ++r) {
    cudaEventRecord(a, s);
    launch();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    best = ms < best ? ms : best;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

void line(const Device& d, const char* what, const std::string& size, double ms, double flops, bool fp64) {
  const double s = ms / 1e3;
  std::printf("{\"what\": \"%s\", \"size\": \"%s\", \"seconds\": %.6f, \"gflops\": %.3f, \"peak_gflops\": %.1f, "
              "\"impl\": \"gpu\", \"device\": \"%s\", \"peak\": \"%s\"}\n",
              what, size.c_str(), s, flops / s / 1e9, fp64 ? d.peak64 : d.peak32, d.name.c_str(),
              fp64 ? "fp64" : "fp32");
}

}  // namespace

void iif_bench_kernels_gpu() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("{\"what\": \"gpu\", \"size\": \"\", \"seconds\": null, \"gflops\": null, \"peak_gflops\": null, "
                "\"note\": \"no GPU found (cudaGetDeviceCount: %s, %d devices): no GPU timings\"}\n",
                e == cudaSuccess ? "ok" : cudaGetErrorString(e), count);
    std::fflush(stdout);
    cudaGetLastError();  // clear the sticky error state
    return;
  }
  Device dev;
  cudaDeviceProp prop;
  IIF_CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  int khz = 0;
  IIF_CUDA_OK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  dev.name = prop.name;
  dev.peak32 = 2.0 * prop.multiProcessorCount * fp32_per_sm(prop.major, prop.minor) * (khz * 1e3) / 1e9;
  dev.peak64 = dev.peak32 * fp64_ratio(prop.major, prop.minor);
  cudaStream_t s;
  IIF_CUDA_OK(cudaStreamCreate(&s));

  auto alloc = [](std::size_t bytes) {
    void* p = nullptr;
    cudaMalloc(&p, bytes);
    cudaMemset(p, 0, bytes);
    return p;
  };
  {  // IIF's featurisation of the MNIST MLP's first layer: 784 -> 128, P = 256, 2 cotangents.
    const int b = 2048, in = 784, out = 128, p = 256;
    float* a = static_cast<float*>(alloc(sizeof(float) * b * in));
    float* d[2] = {static_cast<float*>(alloc(sizeof(float) * b * out)), static_cast<float*>(alloc(sizeof(float) * b * out))};
    float* y[2] = {static_cast<float*>(alloc(sizeof(float) * b * p)), static_cast<float*>(alloc(sizeof(float) * b * p))};
    const float* dc[2] = {d[0], d[1]};
    const double ms = time_ms(s, [&] {
      k::linear_project<float>(a, dc, y, 2, b, in, out, true, 0, p, k::RKind::rademacher, 1, s);
    });
    line(dev, "linear_project", "B=2048 in=784 out=128 P=256 cotangents=2", ms,
         2.0 * 2 * b * (double(in) * out + out) * p, false);
    cudaFree(a);
    for (int c = 0; c < 2; ++c) {
      cudaFree(d[c]);
      cudaFree(y[c]);
    }
  }
  {
    const int b = 2048, p = 256;
    const int64_t m = 16384;
    float* g = static_cast<float*>(alloc(sizeof(float) * b * m));
    float* y = static_cast<float*>(alloc(sizeof(float) * b * p));
    const double ms = time_ms(s, [&] { k::project_rows<float>(g, m, b, m, 0, p, k::RKind::rademacher, 0, 0.0, y, s); });
    line(dev, "project_rows", "B=2048 M=16384 P=256", ms, 2.0 * b * double(m) * p, false);
    cudaFree(g);
    cudaFree(y);
  }
  {
    const int n = 60000, p = 256;
    float* u = static_cast<float*>(alloc(sizeof(float) * n * p));
    float* c = static_cast<float*>(alloc(sizeof(float) * p * p));
    const double ms = time_ms(s, [&] { k::syrk<float>(1.0, u, n, p, 1.0, c, s); });
    line(dev, "syrk", "N=60000 P=256", ms, double(n) * p * (p + 1), false);
    cudaFree(u);
    cudaFree(c);
  }
  {
    const int kc = 16, p = 256, r = 1024;
    std::vector<float> ah(static_cast<std::size_t>(kc) * p * p, 0.0f);
    for (int q = 0; q < kc; ++q)
      for (int i = 0; i < p; ++i) ah[(static_cast<std::size_t>(q) * p + i) * p + i] = 1.0f + 0.01f * i;
    float* a = static_cast<float*>(alloc(sizeof(float) * ah.size()));
    cudaMemcpy(a, ah.data(), sizeof(float) * ah.size(), cudaMemcpyHostToDevice);
    float* b = static_cast<float*>(alloc(sizeof(float) * kc * p * r));
    std::vector<double> damp(kc, 0.01);
    double* dd = static_cast<double*>(alloc(sizeof(double) * kc));
    cudaMemcpy(dd, damp.data(), sizeof(double) * kc, cudaMemcpyHostToDevice);
    int* info = static_cast<int*>(alloc(sizeof(int) * kc));
    void* ws = alloc(k::cholesky_workspace_bytes(kc, p, r));
    const double ms = time_ms(s, [&] { k::batched_cholesky_solve<float>(a, dd, kc, p, b, r, ws, info, s); });
    line(dev, "batched_cholesky_solve", "K=16 P=256 R=1024", ms, kc * (double(p) * p * p / 3 + 2.0 * p * p * r), true);
    cudaFree(a);
    cudaFree(b);
    cudaFree(dd);
    cudaFree(info);
    cudaFree(ws);
  }
  cudaStreamDestroy(s);
  std::fflush(stdout);
}
