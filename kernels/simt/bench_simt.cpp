// Timings of the host SIMT emulator, as JSON lines: the cost of one context switch (fcontext,
// boost::context::fiber, ucontext), of one __syncthreads per thread, and of a GEMM-like and
// two reduction kernels against plain C++ loops doing the same arithmetic (one worker thread).
// Every kernel's output is checked against its loop before it is timed.
#include <ucontext.h>

#include <boost/context/detail/fcontext.hpp>
#include <boost/context/fiber.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "kernels/simt/examples.cuh"

namespace bctx = boost::context::detail;
namespace ex = simt::examples;

namespace {

double seconds(const std::function<void()>& fn, int reps) {
  fn();  // warm up (stacks mapped, caches filled)
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// ---- raw switches ---------------------------------------------------------------------------

constexpr long kSwitchRounds = 2000000;

void fcontext_body(bctx::transfer_t t) {
  for (;;) t = bctx::jump_fcontext(t.fctx, nullptr);
}

double fcontext_switch_ns() {
  std::vector<char> stack(64 * 1024);
  bctx::fcontext_t f = bctx::make_fcontext(stack.data() + stack.size(), stack.size(), &fcontext_body);
  const double s = seconds([&] {
    for (long i = 0; i < kSwitchRounds; ++i) f = bctx::jump_fcontext(f, nullptr).fctx;
  }, 5);
  return s / (2.0 * kSwitchRounds) * 1e9;
}

double fiber_switch_ns() {
  namespace bc = boost::context;
  bc::fiber f{[](bc::fiber&& caller) {
    for (;;) caller = std::move(caller).resume();
    return std::move(caller);
  }};
  const double s = seconds([&] {
    for (long i = 0; i < kSwitchRounds; ++i) f = std::move(f).resume();
  }, 5);
  return s / (2.0 * kSwitchRounds) * 1e9;
}

ucontext_t g_main_uc, g_fiber_uc;
void ucontext_body() {
  for (;;) swapcontext(&g_fiber_uc, &g_main_uc);
}

double ucontext_switch_ns() {
  static std::vector<char> stack(64 * 1024);
  getcontext(&g_fiber_uc);
  g_fiber_uc.uc_stack.ss_sp = stack.data();
  g_fiber_uc.uc_stack.ss_size = stack.size();
  g_fiber_uc.uc_link = nullptr;
  makecontext(&g_fiber_uc, &ucontext_body, 0);
  const long rounds = kSwitchRounds / 20;
  const double s = seconds([&] {
    for (long i = 0; i < rounds; ++i) swapcontext(&g_main_uc, &g_fiber_uc);
  }, 3);
  return s / (2.0 * rounds) * 1e9;
}

// ---- kernels --------------------------------------------------------------------------------

__global__ void barrier_loop_kernel(int iters, int* out) {
  __shared__ int s[256];
  int acc = 0;
  for (int i = 0; i < iters; ++i) {
    s[threadIdx.x] = i + threadIdx.x;
    __syncthreads();
    acc += s[(threadIdx.x + 1) % blockDim.x];
    __syncthreads();
  }
  out[threadIdx.x] = acc;
}

void fail(const char* what) {
  std::fprintf(stderr, "bench_simt: %s\n", what);
  std::exit(1);
}

}  // namespace

int main() {
  simt::Options opt;
  opt.workers = 1;  // overhead per core: compare one worker with one plain loop
  simt::set_options(opt);

  std::printf("{\"bench\":\"switch\",\"impl\":\"fcontext\",\"ns\":%.2f}\n", fcontext_switch_ns());
  std::printf("{\"bench\":\"switch\",\"impl\":\"boost_fiber\",\"ns\":%.2f}\n", fiber_switch_ns());
  std::printf("{\"bench\":\"switch\",\"impl\":\"ucontext\",\"ns\":%.2f}\n", ucontext_switch_ns());

  {  // __syncthreads: per thread and barrier (two switches plus the scheduler's bookkeeping)
    const int iters = 2000, threads = 256;
    std::vector<int> out(threads);
    const double s = seconds([&] { simt::launch(barrier_loop_kernel, 1, threads, 0, 0, iters, out.data()); }, 3);
    const simt::LaunchStats st = simt::last_launch_stats();
    std::printf("{\"bench\":\"syncthreads\",\"threads\":%d,\"barriers\":%d,\"ns_per_thread_barrier\":%.2f,"
                "\"resumes\":%llu}\n",
                threads, 2 * iters, s / (2.0 * iters * threads) * 1e9, (unsigned long long)st.resumes);
  }

  {  // GEMM-like: 16x16-tiled kernel against the plain i-j-k loop
    const int M = 256, N = 256, K = 256;
    std::mt19937 g(1);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<float> A(M * K), B(K * N), C(M * N), R(M * N);
    for (float& v : A) v = d(g);
    for (float& v : B) v = d(g);
    auto loop = [&] {
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
          float acc = 0.0f;
          for (int k = 0; k < K; ++k) acc += A[i * K + k] * B[k * N + j];
          R[i * N + j] = acc;
        }
    };
    const double t_loop = seconds(loop, 3);
    ex::gemm_tiled(A.data(), B.data(), C.data(), M, N, K);
    for (int i = 0; i < M * N; ++i) {
      if (C[i] != R[i]) fail("gemm_tiled differs from the loop");
    }
    const double t_emu = seconds([&] { ex::gemm_tiled(A.data(), B.data(), C.data(), M, N, K); }, 3);
    std::printf("{\"bench\":\"gemm_tiled\",\"M\":%d,\"N\":%d,\"K\":%d,\"loop_ms\":%.3f,\"emulated_ms\":%.3f,"
                "\"ratio\":%.2f}\n",
                M, N, K, t_loop * 1e3, t_emu * 1e3, t_emu / t_loop);
  }

  {  // reductions: block_sum (grid-stride + tree in a helper) and tree_sum against a loop
    const int n = 1 << 20, blocks = 64;
    std::vector<float> x(n);
    for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i % 7 - 3);
    std::vector<float> partial(std::max(blocks, ex::tree_sum_blocks(n)));
    volatile float sink = 0.0f;
    const double t_loop = seconds([&] {
      float s = 0.0f;
      for (int i = 0; i < n; ++i) s += x[i];
      sink = s;
    }, 5);
    double ref = 0.0;
    for (float v : x) ref += v;
    auto total = [&](int count) {
      double s = 0.0;
      for (int b = 0; b < count; ++b) s += partial[b];
      return s;
    };
    ex::block_sum(x.data(), n, partial.data(), blocks);
    if (total(blocks) != ref) fail("block_sum differs from the loop");
    const double t_block = seconds([&] { ex::block_sum(x.data(), n, partial.data(), blocks); }, 5);
    ex::tree_sum<true>(x.data(), n, partial.data());
    if (total(ex::tree_sum_blocks(n)) != ref) fail("tree_sum differs from the loop");
    const double t_tree = seconds([&] { ex::tree_sum<true>(x.data(), n, partial.data()); }, 3);
    std::printf("{\"bench\":\"reduction\",\"kernel\":\"block_sum\",\"n\":%d,\"blocks\":%d,\"loop_ms\":%.3f,"
                "\"emulated_ms\":%.3f,\"ratio\":%.2f}\n",
                n, blocks, t_loop * 1e3, t_block * 1e3, t_block / t_loop);
    std::printf("{\"bench\":\"reduction\",\"kernel\":\"tree_sum\",\"n\":%d,\"blocks\":%d,\"loop_ms\":%.3f,"
                "\"emulated_ms\":%.3f,\"ratio\":%.2f}\n",
                n, ex::tree_sum_blocks(n), t_loop * 1e3, t_tree * 1e3, t_tree / t_loop);
    (void)sink;
  }
  return 0;
}
