// The emulated device layer (engine/cuda/device.h): "device" memory is host memory, the
// kernels run on the SIMT emulator (kernels/simt/), BLAS is OpenBLAS, Cholesky is LAPACKE and
// sorting is std::stable_sort. Column-major contract, exactly as device_cuda.cu.
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cuda/caching_pool.h"
#include "engine/cuda/device.h"

namespace iif {
namespace cuda {
namespace dev {
namespace {

void* raw_alloc(std::size_t bytes) { return std::aligned_alloc(256, bytes); }
void raw_free(void* p) { std::free(p); }

auto& pool() {
  static auto* p = make_pool(&raw_alloc, &raw_free);
  return *p;
}

CBLAS_TRANSPOSE op(bool t) { return t ? CblasTrans : CblasNoTrans; }

}  // namespace

int device_count() { return 1; }
std::string description() { return "emulated (host memory, OpenBLAS, LAPACKE, SIMT emulator)"; }
bool emulated() { return true; }
void* stream() { return nullptr; }
void synchronize() {}

#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer every tensor is its own exact-size heap block, so a kernel reading or
// writing past the end of a buffer is reported (the pool's rounding and reuse would hide it).
void* allocate(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = std::malloc(bytes);
  if (!p) throw std::bad_alloc();
  return p;
}
void deallocate(void* p, std::size_t) { std::free(p); }
#else
void* allocate(std::size_t bytes) { return pool().allocate(bytes); }
void deallocate(void* p, std::size_t) { pool().deallocate(p); }
#endif
void release_cached() { pool().release_cached(); }
PoolStats pool_stats() { return pool().stats(); }

void copy_to_host(void* dst, const void* src, std::size_t n) {
  if (n) std::memmove(dst, src, n);
}
void copy_from_host(void* dst, const void* src, std::size_t n) {
  if (n) std::memmove(dst, src, n);
}
void copy_on_device(void* dst, const void* src, std::size_t n) {
  if (n) std::memmove(dst, src, n);
}
void memset_zero(void* dst, std::size_t n) {
  if (n) std::memset(dst, 0, n);
}

Event::Event() = default;
Event::~Event() = default;
void Event::record() {
  host_ms_ = std::chrono::duration<double, std::milli>(
                 std::chrono::steady_clock::now().time_since_epoch())
                 .count();
}
void Event::synchronize() {}
float Event::elapsed_ms_since(const Event& start) {
  return static_cast<float>(host_ms_ - start.host_ms_);
}

void gemm(Real type, bool ta, bool tb, int m, int n, int k, double alpha, const void* a, int lda,
          const void* b, int ldb, double beta, void* c, int ldc) {
  if (type == Real::f32)
    cblas_sgemm(CblasColMajor, op(ta), op(tb), m, n, k, static_cast<float>(alpha),
                static_cast<const float*>(a), lda, static_cast<const float*>(b), ldb,
                static_cast<float>(beta), static_cast<float*>(c), ldc);
  else
    cblas_dgemm(CblasColMajor, op(ta), op(tb), m, n, k, alpha, static_cast<const double*>(a), lda,
                static_cast<const double*>(b), ldb, beta, static_cast<double*>(c), ldc);
}

void gemm_strided_batched(Real type, bool ta, bool tb, int m, int n, int k, double alpha,
                          const void* a, int lda, std::int64_t sa, const void* b, int ldb,
                          std::int64_t sb, double beta, void* c, int ldc, std::int64_t sc,
                          int batch) {
  const std::size_t es = type == Real::f32 ? 4 : 8;
  for (int i = 0; i < batch; ++i)
    gemm(type, ta, tb, m, n, k, alpha, static_cast<const char*>(a) + i * sa * es, lda,
         static_cast<const char*>(b) + i * sb * es, ldb, beta, static_cast<char*>(c) + i * sc * es,
         ldc);
}

std::vector<int> cholesky_solve_f64(int n, int nrhs, double* a, double* b, int batch) {
  std::vector<int> info(static_cast<std::size_t>(batch), 0);
  for (int k = 0; k < batch; ++k) {
    double* ak = a + static_cast<std::int64_t>(k) * n * n;
    lapack_int f = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', n, ak, n);
    if (f == 0 && nrhs > 0)
      f = LAPACKE_dpotrs(LAPACK_COL_MAJOR, 'U', n, nrhs, ak, n,
                         b + static_cast<std::int64_t>(k) * n * nrhs, n);
    info[k] = static_cast<int>(f);
  }
  return info;
}

namespace {
template <class T>
void sort_desc(const T* keys_in, T* keys_out, const std::int64_t* vin, std::int64_t* vout,
               std::int64_t n) {
  std::vector<std::int64_t> perm(static_cast<std::size_t>(n));
  std::iota(perm.begin(), perm.end(), std::int64_t{0});
  std::stable_sort(perm.begin(), perm.end(),
                   [&](std::int64_t x, std::int64_t y) { return keys_in[x] > keys_in[y]; });
  std::vector<T> kk(static_cast<std::size_t>(n));
  std::vector<std::int64_t> vv(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    kk[i] = keys_in[perm[i]];
    vv[i] = vin ? vin[perm[i]] : perm[i];
  }
  std::copy(kk.begin(), kk.end(), keys_out);
  std::copy(vv.begin(), vv.end(), vout);
}
}  // namespace

void sort_pairs_descending(Real type, const void* keys_in, void* keys_out,
                           const std::int64_t* values_in, std::int64_t* values_out, std::int64_t n) {
  if (n <= 0) return;
  if (type == Real::f32)
    sort_desc(static_cast<const float*>(keys_in), static_cast<float*>(keys_out), values_in,
              values_out, n);
  else
    sort_desc(static_cast<const double*>(keys_in), static_cast<double*>(keys_out), values_in,
              values_out, n);
}

void top_k(Real type, const void* keys, std::int64_t n, std::int64_t k, void* keys_out,
           std::int64_t* index_out) {
  if (k < 0 || k > n)
    throw std::invalid_argument("top_k: k = " + std::to_string(k) + " is outside [0, " +
                                std::to_string(n) + "]");
  if (k == 0) return;
  const std::size_t es = type == Real::f32 ? 4 : 8;
  std::vector<char> ks(static_cast<std::size_t>(n) * es);
  std::vector<std::int64_t> idx(static_cast<std::size_t>(n));
  sort_pairs_descending(type, keys, ks.data(), nullptr, idx.data(), n);
  std::memcpy(keys_out, ks.data(), static_cast<std::size_t>(k) * es);
  std::memcpy(index_out, idx.data(), static_cast<std::size_t>(k) * sizeof(std::int64_t));
}

}  // namespace dev
}  // namespace cuda
}  // namespace iif
