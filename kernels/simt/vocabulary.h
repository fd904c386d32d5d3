// The CUDA vocabulary for kernel source compiled by g++ on the SIMT emulator: qualifiers,
// dim3 and vector types, the built-in index variables, barriers, warp intrinsics, atomics and
// the maths intrinsics kernels commonly use. Include kernels/simt/simt.cuh, not this file.
#pragma once

#if defined(__CUDACC__)
#error "kernels/simt/vocabulary.h is the host emulator's; under nvcc include kernels/simt/simt.cuh"
#endif

#include <cstdint>
#include <cstring>
#include <math.h>  // expf, sqrtf, fmaxf, ... in the global namespace, as CUDA has them
#include <type_traits>

// ---- qualifiers ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ __attribute__((always_inline)) inline
// Empty, not noinline: libstdc++ writes __attribute__((__noinline__)) and would break.
#define __noinline__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// A fiber never leaves the OS thread that runs its block, and a worker runs one block at a
// time, so a thread_local (static at block scope) is exactly one copy per running block.
#define __shared__ thread_local

// ---- dim3 and the vector types ------------------------------------------------------------
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
using uint3 = dim3;

struct __align__(8) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(16) double2 { double x, y; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace simt {
namespace detail {

// Where a barrier or warp operation was written: errors name it.
struct Site {
  const char* file;
  int line;
};

struct BlockCoords {
  dim3 block_idx, block_dim, grid_dim;
};
struct FiberCoords {
  dim3 thread_idx;
  const BlockCoords* block;
};
// The fiber running on this OS thread (null outside a kernel). initial-exec: one load, no
// __tls_get_addr call per threadIdx read; valid because this library is never dlopen'd.
extern __thread FiberCoords* t_fiber __attribute__((tls_model("initial-exec")));

enum class WarpKind : std::uint8_t { sync, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot };
enum class BarrierKind : std::uint8_t { plain, count, all, any };

// Out of line on purpose: the call is an optimisation barrier, so shared memory written by
// other fibers is re-read after it.
int barrier(Site site, BarrierKind kind, int pred);
std::uint64_t warp_op(Site site, WarpKind kind, unsigned mask, std::uint64_t value, int param, int width);
unsigned active_mask();
void* dynamic_shared();

template <class T>
std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "warp shuffles move trivially copyable values of at most 8 bytes");
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(std::uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// The call site of a barrier or warp intrinsic; the macros below build one per call.
struct At {
  Site site;
  void syncthreads() const { barrier(site, BarrierKind::plain, 1); }
  int syncthreads_count(int p) const { return barrier(site, BarrierKind::count, p); }
  int syncthreads_and(int p) const { return barrier(site, BarrierKind::all, p); }
  int syncthreads_or(int p) const { return barrier(site, BarrierKind::any, p); }
  void syncwarp(unsigned mask = 0xffffffffu) const { warp_op(site, WarpKind::sync, mask, 0, 0, 32); }
  template <class T>
  T shfl(unsigned mask, T v, int src, int width = 32) const {
    return from_bits<T>(warp_op(site, WarpKind::shfl_idx, mask, to_bits(v), src, width));
  }
  template <class T>
  T shfl_up(unsigned mask, T v, unsigned delta, int width = 32) const {
    return from_bits<T>(warp_op(site, WarpKind::shfl_up, mask, to_bits(v), int(delta), width));
  }
  template <class T>
  T shfl_down(unsigned mask, T v, unsigned delta, int width = 32) const {
    return from_bits<T>(warp_op(site, WarpKind::shfl_down, mask, to_bits(v), int(delta), width));
  }
  template <class T>
  T shfl_xor(unsigned mask, T v, int lane_mask, int width = 32) const {
    return from_bits<T>(warp_op(site, WarpKind::shfl_xor, mask, to_bits(v), lane_mask, width));
  }
  unsigned ballot(unsigned mask, int pred) const {
    return unsigned(warp_op(site, WarpKind::ballot, mask, pred != 0, 0, 32));
  }
  int any(unsigned mask, int pred) const { return ballot(mask, pred) != 0u; }
  int all(unsigned mask, int pred) const { return ballot(mask, pred) == mask; }
};

}  // namespace detail
}  // namespace simt

// ---- built-in variables: the current fiber's coordinates ---------------------------------
#define threadIdx (::simt::detail::t_fiber->thread_idx)
#define blockIdx (::simt::detail::t_fiber->block->block_idx)
#define blockDim (::simt::detail::t_fiber->block->block_dim)
#define gridDim (::simt::detail::t_fiber->block->grid_dim)
static constexpr int warpSize = 32;

// ---- barriers and warp intrinsics (object-like macros so __LINE__ is the caller's) --------
#define SIMT_AT_ ::simt::detail::At{{__FILE__, __LINE__}}
#define __syncthreads SIMT_AT_.syncthreads
#define __syncthreads_count SIMT_AT_.syncthreads_count
#define __syncthreads_and SIMT_AT_.syncthreads_and
#define __syncthreads_or SIMT_AT_.syncthreads_or
#define __syncwarp SIMT_AT_.syncwarp
#define __shfl_sync SIMT_AT_.shfl
#define __shfl_up_sync SIMT_AT_.shfl_up
#define __shfl_down_sync SIMT_AT_.shfl_down
#define __shfl_xor_sync SIMT_AT_.shfl_xor
#define __ballot_sync SIMT_AT_.ballot
#define __any_sync SIMT_AT_.any
#define __all_sync SIMT_AT_.all
// The lanes of this warp that have not exited (the emulator has no notion of divergence).
inline unsigned __activemask() { return ::simt::detail::active_mask(); }

// Fibers of a block share an OS thread and switch only at barriers and warp ops, so a block
// fence is a compiler barrier; other blocks run on other OS threads.
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- atomics (relaxed, as CUDA's are; float/double through a compare-and-swap loop) -------
#define SIMT_ATOMIC_INT_(T)                                                                     \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }          \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }          \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }        \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }          \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }            \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }          \
  inline T atomicCAS(T* p, T compare, T v) {                                                    \
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);     \
    return compare;                                                                             \
  }                                                                                             \
  inline T atomicMax(T* p, T v) {                                                               \
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                               \
    while (old < v &&                                                                           \
           !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                           \
    return old;                                                                                 \
  }                                                                                             \
  inline T atomicMin(T* p, T v) {                                                               \
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                               \
    while (v < old &&                                                                           \
           !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                           \
    return old;                                                                                 \
  }
SIMT_ATOMIC_INT_(int)
SIMT_ATOMIC_INT_(unsigned int)
SIMT_ATOMIC_INT_(unsigned long long)
SIMT_ATOMIC_INT_(long long)
#undef SIMT_ATOMIC_INT_

#define SIMT_ATOMIC_FLOAT_(T)                                                                        \
  inline T atomicAdd(T* p, T v) {                                                                    \
    T old;                                                                                           \
    __atomic_load(p, &old, __ATOMIC_RELAXED);                                                        \
    T next = old + v;                                                                                \
    while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {   \
      next = old + v;                                                                                \
    }                                                                                                \
    return old;                                                                                      \
  }                                                                                                  \
  inline T atomicExch(T* p, T v) {                                                                   \
    T old;                                                                                           \
    __atomic_exchange(p, &v, &old, __ATOMIC_RELAXED);                                                \
    return old;                                                                                      \
  }
SIMT_ATOMIC_FLOAT_(float)
SIMT_ATOMIC_FLOAT_(double)
#undef SIMT_ATOMIC_FLOAT_

// CUDA's wrap-around increment/decrement.
inline unsigned atomicInc(unsigned* p, unsigned limit) {
  unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, old >= limit ? 0u : old + 1u, true,
                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
  unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, (old == 0u || old > limit) ? limit : old - 1u,
                                      true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

// ---- maths and bit intrinsics -------------------------------------------------------------
// Rounding-mode intrinsics are the default round-to-nearest here; __fmaf_rn is a true fused
// multiply-add (fmaf rounds once), so it matches the GPU bit for bit.
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
// The fast approximations are computed exactly here: results differ from a GPU's in the
// last bits, so tests of kernels using them need a tolerance.
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
inline int __float2int_rn(float x) { return int(nearbyintf(x)); }
inline int __float2int_rz(float x) { return int(x); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
template <class T>
inline T __ldg(const T* p) { return *p; }

// CUDA's global min/max overloads (device code calls them unqualified).
#define SIMT_MINMAX_(T)                                  \
  inline T min(T a, T b) { return b < a ? b : a; }       \
  inline T max(T a, T b) { return a < b ? b : a; }
SIMT_MINMAX_(int)
SIMT_MINMAX_(unsigned int)
SIMT_MINMAX_(long long)
SIMT_MINMAX_(unsigned long long)
#undef SIMT_MINMAX_
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
