// Example kernels of the SIMT emulator, written once for nvcc and g++, with their host-side
// launchers. The emulator's tests (tests/test_simt.cpp), its benchmark (bench_simt.cpp) and the
// nvcc compile check (examples.cu) all use this header, so what is tested is what nvcc builds.
// Pointers are device pointers under nvcc and host pointers on the emulator.
#pragma once

#include "kernels/simt/simt.cuh"

namespace simt {
namespace examples {

constexpr unsigned kFull = 0xffffffffu;

// ---- reductions ----------------------------------------------------------------------------

// The sum of v over the block, returned to every thread. s is (kBlock) shared floats and
// kBlock == blockDim.x is a power of 2. The barriers are inside this helper: a fiber must be
// able to suspend below the kernel's own frame.
template <int kBlock>
__device__ float block_reduce_sum(float v, float* s) {
  const int t = threadIdx.x;
  s[t] = v;
  __syncthreads();
  for (int h = kBlock / 2; h > 0; h /= 2) {
    if (t < h) s[t] += s[t + h];
    __syncthreads();
  }
  const float r = s[0];
  __syncthreads();  // the caller may reuse s
  return r;
}

// x is (n); partial is (gridDim.x): partial[b] = the sum of the elements block b visits in a
// grid-stride loop.
template <int kBlock>
__global__ void block_sum_kernel(const float* x, int n, float* partial) {
  __shared__ float s[kBlock];
  float v = 0.0f;
  for (int i = blockIdx.x * kBlock + threadIdx.x; i < n; i += gridDim.x * kBlock) v += x[i];
  const float total = block_reduce_sum<kBlock>(v, s);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// x is (n); partial is (ceil(n / kBlock)): one tree reduction per block. kSync == false leaves
// out the barrier inside the loop: the classic race, kept to show that fiber orders expose it.
template <int kBlock, bool kSync>
__global__ void tree_sum_kernel(const float* x, int n, float* partial) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  const int i = blockIdx.x * kBlock + t;
  s[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int h = kBlock / 2; h > 0; h /= 2) {
    if (t < h) s[t] += s[t + h];
    if (kSync) __syncthreads();
  }
  if (t == 0) partial[blockIdx.x] = s[0];
}

// ---- warp operations -----------------------------------------------------------------------

// x is (n), n = gridDim.x * blockDim.x, blockDim.x a multiple of 32. Per thread i (lane l):
//   xor_sum[i]   = the sum over i's warp (butterfly with __shfl_xor_sync),
//   scan_up[i]   = x over lanes 0..l of the warp (inclusive prefix sum, __shfl_up_sync),
//   scan_down[i] = x over lanes l..31 (inclusive suffix sum, __shfl_down_sync),
//   bcast8[i]    = x of lane 2 of i's group of 8 lanes (__shfl_sync with width 8),
//   up8[i], down8[i] = __shfl_up_sync / __shfl_down_sync by 3 with width 8: x of the lane 3
//                      before / after i within its group of 8, or x[i] itself past the group's edge.
__global__ void warp_ops_kernel(const int* x, int* xor_sum, int* scan_up, int* scan_down, int* bcast8, int* up8,
                                int* down8) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32;
  const int v = x[i];
  int s = v;
  for (int m = 16; m > 0; m /= 2) s += __shfl_xor_sync(kFull, s, m);
  xor_sum[i] = s;
  int up = v;
  for (int d = 1; d < 32; d *= 2) {
    const int o = __shfl_up_sync(kFull, up, d);
    if (lane >= d) up += o;
  }
  scan_up[i] = up;
  int down = v;
  for (int d = 1; d < 32; d *= 2) {
    const int o = __shfl_down_sync(kFull, down, d);
    if (lane + d < 32) down += o;
  }
  scan_down[i] = down;
  bcast8[i] = __shfl_sync(kFull, v, 2, 8);
  up8[i] = __shfl_up_sync(kFull, v, 3, 8);
  down8[i] = __shfl_down_sync(kFull, v, 3, 8);
}

// x is (n), n = gridDim.x * blockDim.x, blockDim.x a multiple of 32; ballot, any, all are
// (n / 32): per warp, the vote over lanes on x > 0 (written by lane 0).
__global__ void vote_kernel(const float* x, unsigned* ballot, int* any, int* all) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int pred = x[i] > 0.0f;
  const unsigned b = __ballot_sync(kFull, pred);
  const int a = __any_sync(kFull, pred);
  const int l = __all_sync(kFull, pred);
  if (threadIdx.x % 32 == 0) {
    const int w = i / 32;
    ballot[w] = b;
    any[w] = a;
    all[w] = l;
  }
}

// ---- atomics -------------------------------------------------------------------------------

// x is (n). Every element, visited once in a grid-stride loop, adds to the totals:
// fsum += x[i] (float CAS loop), dsum += x[i] (double), count += 1, imax = max(imax, key[i]);
// exactly one thread claims `first` (atomicCAS from -1) and counts itself in claims.
__global__ void atomics_kernel(const float* x, const int* key, int n, float* fsum, double* dsum, int* count,
                               int* imax, int* first, int* claims) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    atomicAdd(fsum, x[i]);
    atomicAdd(dsum, static_cast<double>(x[i]));
    atomicAdd(count, 1);
    atomicMax(imax, key[i]);
    if (atomicCAS(first, -1, i) == -1) atomicAdd(claims, 1);
  }
}

// x is (blockDim.x); out is (3): __syncthreads_count, _and and _or of x[t] > 0 (block 0 writes).
__global__ void barrier_votes_kernel(const float* x, int* out) {
  const int pred = x[threadIdx.x] > 0.0f;
  const int count = __syncthreads_count(pred);
  const int all = __syncthreads_and(pred);
  const int any = __syncthreads_or(pred);
  if (threadIdx.x == 0) {
    out[0] = count;
    out[1] = all;
    out[2] = any;
  }
}

// flags is (gridDim.x) zeros; done is (gridDim.x). Thread 0 of every block raises its flag,
// then waits (at most max_spins polls) until every block's flag is up: it completes only if
// all blocks of the grid run at the same time (on the emulator: on different worker threads).
// done[b] = 1 if block b saw all flags, 0 if it gave up.
__global__ void handshake_kernel(int* flags, int* done, long long max_spins) {
  if (threadIdx.x == 0) {
    atomicExch(&flags[blockIdx.x], 1);
    int seen = 0;
    for (long long spin = 0; spin < max_spins && seen < static_cast<int>(gridDim.x); ++spin) {
      seen = 0;
      for (unsigned b = 0; b < gridDim.x; ++b) seen += atomicAdd(&flags[b], 0);
    }
    done[blockIdx.x] = seen == static_cast<int>(gridDim.x);
  }
  __syncthreads();
}

// ---- dynamic shared memory, 2-D and 3-D indexing ------------------------------------------

// x, y are (n): each block reverses its chunk of blockDim.x elements (the last chunk may be
// short) through dynamic shared memory: blockDim.x floats, then blockDim.x ints.
__global__ void reverse_chunks_kernel(const float* x, int n, float* y, int* src_index) {
  SIMT_DYNAMIC_SHARED(unsigned char, smem);
  float* vals = reinterpret_cast<float*>(smem);
  int* idx = reinterpret_cast<int*>(smem + blockDim.x * sizeof(float));
  const int t = threadIdx.x;
  const int base = blockIdx.x * blockDim.x;
  const int len = min(static_cast<int>(blockDim.x), n - base);
  if (t < len) {
    vals[t] = x[base + t];
    idx[t] = base + t;
  }
  __syncthreads();
  if (t < len) {
    y[base + t] = vals[len - 1 - t];
    src_index[base + t] = idx[len - 1 - t];
  }
}

// out is (gridDim * blockDim threads, 6): the thread's threadIdx.{x,y,z} and blockIdx.{x,y,z},
// stored at its global linear index (x fastest, blocks after threads).
__global__ void coords_kernel(int* out) {
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int g = b * blockDim.x * blockDim.y * blockDim.z + t;
  out[6 * g + 0] = threadIdx.x;
  out[6 * g + 1] = threadIdx.y;
  out[6 * g + 2] = threadIdx.z;
  out[6 * g + 3] = blockIdx.x;
  out[6 * g + 4] = blockIdx.y;
  out[6 * g + 5] = blockIdx.z;
}

// C (M, N) = A (M, K) * B (K, N), row-major. Blocks of kTile x kTile threads (threadIdx.x
// along N, threadIdx.y along M), a 2-D grid of ceil(N / kTile) x ceil(M / kTile) blocks;
// both operands staged through shared tiles. Accumulates over k in ascending order.
template <int kTile>
__global__ void gemm_tiled_kernel(const float* A, const float* B, float* C, int M, int N, int K) {
  __shared__ float As[kTile][kTile];
  __shared__ float Bs[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.y * kTile + ty;
  const int col = blockIdx.x * kTile + tx;
  float acc = 0.0f;
  for (int k0 = 0; k0 < K; k0 += kTile) {
    As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.0f;
    Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : 0.0f;
    __syncthreads();
    const int kend = min(kTile, K - k0);
    for (int k = 0; k < kend; ++k) acc += As[ty][k] * Bs[k][tx];
    __syncthreads();
  }
  if (row < M && col < N) C[row * N + col] = acc;
}

// ---- deliberately wrong kernels: the emulator must report them, not hang ------------------

// Threads at or past n return before the barrier the others wait at.
__global__ void early_exit_kernel(const float* x, int n, float* y) {
  __shared__ float s[1024];
  const int t = threadIdx.x;
  if (t >= n) return;
  s[t] = x[t];
  __syncthreads();
  y[t] = s[n - 1 - t];
}

// Even and odd threads wait at different __syncthreads.
__global__ void split_barrier_kernel(float* y) {
  if (threadIdx.x % 2 == 0) {
    y[threadIdx.x] = 1.0f;
    __syncthreads();
  } else {
    y[threadIdx.x] = 2.0f;
    __syncthreads();
  }
}

// The upper half-warp exits while the lower half shuffles with a full mask.
__global__ void shfl_exited_kernel(float* y) {
  if (threadIdx.x >= 16) return;
  y[threadIdx.x] = __shfl_xor_sync(kFull, 1.0f, 1);
}

// The lower half-warp shuffles with a full mask while the upper half waits at a barrier.
__global__ void warp_vs_barrier_kernel(float* y) {
  float v = 1.0f;
  if (threadIdx.x < 16) v = __shfl_xor_sync(kFull, v, 1);
  __syncthreads();
  y[threadIdx.x] = v;
}

// ---- launchers -----------------------------------------------------------------------------

constexpr int kSumBlock = 256;
constexpr int kGemmTile = 16;

inline void block_sum(const float* x, int n, float* partial, int blocks) {
  simt::launch(block_sum_kernel<kSumBlock>, blocks, kSumBlock, 0, 0, x, n, partial);
}
inline int tree_sum_blocks(int n) { return (n + kSumBlock - 1) / kSumBlock; }
template <bool kSync>
void tree_sum(const float* x, int n, float* partial) {
  simt::launch(tree_sum_kernel<kSumBlock, kSync>, tree_sum_blocks(n), kSumBlock, 0, 0, x, n, partial);
}
inline void warp_ops(const int* x, int blocks, int threads, int* xor_sum, int* scan_up, int* scan_down,
                     int* bcast8, int* up8, int* down8) {
  simt::launch(warp_ops_kernel, blocks, threads, 0, 0, x, xor_sum, scan_up, scan_down, bcast8, up8, down8);
}
inline void vote(const float* x, int blocks, int threads, unsigned* ballot, int* any, int* all) {
  simt::launch(vote_kernel, blocks, threads, 0, 0, x, ballot, any, all);
}
inline void atomics(const float* x, const int* key, int n, int blocks, int threads, float* fsum, double* dsum,
                    int* count, int* imax, int* first, int* claims) {
  simt::launch(atomics_kernel, blocks, threads, 0, 0, x, key, n, fsum, dsum, count, imax, first, claims);
}
inline void reverse_chunks(const float* x, int n, int threads, float* y, int* src_index) {
  const std::size_t smem = threads * (sizeof(float) + sizeof(int));
  simt::launch(reverse_chunks_kernel, (n + threads - 1) / threads, threads, smem, 0, x, n, y, src_index);
}
inline void coords(dim3 grid, dim3 block, int* out) { simt::launch(coords_kernel, grid, block, 0, 0, out); }
inline void gemm_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
  const dim3 grid((N + kGemmTile - 1) / kGemmTile, (M + kGemmTile - 1) / kGemmTile);
  simt::launch(gemm_tiled_kernel<kGemmTile>, grid, dim3(kGemmTile, kGemmTile), 0, 0, A, B, C, M, N, K);
}
inline void barrier_votes(const float* x, int threads, int* out) {
  simt::launch(barrier_votes_kernel, 1, threads, 0, 0, x, out);
}
inline void handshake(int* flags, int* done, int blocks, long long max_spins) {
  simt::launch(handshake_kernel, blocks, 64, 0, 0, flags, done, max_spins);
}
inline void early_exit(const float* x, int n, int threads, float* y) {
  simt::launch(early_exit_kernel, 1, threads, 0, 0, x, n, y);
}
inline void split_barrier(float* y, int threads) { simt::launch(split_barrier_kernel, 1, threads, 0, 0, y); }
inline void shfl_exited(float* y) { simt::launch(shfl_exited_kernel, 1, 32, 0, 0, y); }
inline void warp_vs_barrier(float* y) { simt::launch(warp_vs_barrier_kernel, 1, 32, 0, 0, y); }

}  // namespace examples
}  // namespace simt
