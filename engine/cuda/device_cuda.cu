// The CUDA device layer (engine/cuda/device.h): CUDA runtime, a caching allocator, one
// non-blocking stream, events, cuBLAS, cuSOLVER (float64 potrf/potrs per matrix) and CUB's
// device radix sort. Every status is checked; a failure throws std::runtime_error naming the
// call and the status. Only APIs present in CUDA 11.8 are used (no cublasGetStatusName, which
// 11.8 has but older toolkits do not: the names are spelled out below).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cuda/caching_pool.h"
#include "engine/cuda/device.h"

namespace iif {
namespace cuda {
namespace dev {
namespace {

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_<unknown>";
  }
}

const char* cusolver_status_name(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_MAPPING_ERROR: return "CUSOLVER_STATUS_MAPPING_ERROR";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_<unknown>";
  }
}

void check(cudaError_t e, const char* call) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorName(e) + ": " +
                             cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* call) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(call) + " failed: " + cublas_status_name(s));
}
void check(cusolverStatus_t s, const char* call) {
  if (s != CUSOLVER_STATUS_SUCCESS)
    throw std::runtime_error(std::string(call) + " failed: " + cusolver_status_name(s));
}
// The call's text is its name in the message.
#define IIF_CHECK(call) check((call), #call)

// Lazily created on first use and never destroyed: tensors may be freed during static
// destruction, after any static context would be gone.
struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
};

Context& ctx() {
  static Context* c = [] {
    if (device_count() == 0)
      throw std::runtime_error("CUDA backend: no CUDA device is available (cudaGetDeviceCount = 0)");
    auto* x = new Context;
    IIF_CHECK(cudaSetDevice(0));
    IIF_CHECK(cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking));
    IIF_CHECK(cublasCreate(&x->blas));
    IIF_CHECK(cublasSetStream(x->blas, x->stream));
    // No TF32 for float32 GEMMs: results are held to the CPU backend's float32 rounding.
    IIF_CHECK(cublasSetMathMode(x->blas, CUBLAS_DEFAULT_MATH));
    IIF_CHECK(cusolverDnCreate(&x->solver));
    IIF_CHECK(cusolverDnSetStream(x->solver, x->stream));
    return x;
  }();
  return *c;
}

void* raw_alloc(std::size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // clears the sticky-free error state of this failed allocation
    return nullptr;
  }
  check(e, "cudaMalloc");
  return p;
}
void raw_free(void* p) { IIF_CHECK(cudaFree(p)); }

auto& pool() {
  static auto* p = make_pool(&raw_alloc, &raw_free);
  return *p;
}

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

// A device buffer from the pool for the duration of a scope.
struct Scratch {
  void* p = nullptr;
  std::size_t n = 0;
  explicit Scratch(std::size_t bytes) : p(allocate(bytes)), n(bytes) {}
  ~Scratch() { deallocate(p, n); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

__global__ void iota_kernel(std::int64_t* v, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    v[i] = i;
}

}  // namespace

int device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // no device / no driver: not an error for this query
    return 0;
  }
  return n;
}

std::string description() {
  if (device_count() == 0) return "CUDA (no device)";
  cudaDeviceProp p;
  IIF_CHECK(cudaGetDeviceProperties(&p, 0));
  return std::string("CUDA ") + p.name + " sm_" + std::to_string(p.major) + std::to_string(p.minor) +
         ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB";
}
bool emulated() { return false; }
void* stream() { return ctx().stream; }
void synchronize() { IIF_CHECK(cudaStreamSynchronize(ctx().stream)); }

void* allocate(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  ctx();
  return pool().allocate(bytes);
}
void deallocate(void* p, std::size_t) { pool().deallocate(p); }
void release_cached() {
  if (device_count() == 0) return;
  synchronize();
  pool().release_cached();
}
PoolStats pool_stats() { return pool().stats(); }

void copy_to_host(void* dst, const void* src, std::size_t n) {
  if (!n) return;
  IIF_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, ctx().stream));
  IIF_CHECK(cudaStreamSynchronize(ctx().stream));
}
void copy_from_host(void* dst, const void* src, std::size_t n) {
  if (!n) return;
  // From pageable memory the call returns once the host buffer has been staged.
  IIF_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, ctx().stream));
}
void copy_on_device(void* dst, const void* src, std::size_t n) {
  if (!n) return;
  IIF_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, ctx().stream));
}
void memset_zero(void* dst, std::size_t n) {
  if (!n) return;
  IIF_CHECK(cudaMemsetAsync(dst, 0, n, ctx().stream));
}

Event::Event() {
  cudaEvent_t e = nullptr;
  IIF_CHECK(cudaEventCreate(&e));
  h_ = e;
}
Event::~Event() {
  const cudaError_t e = cudaEventDestroy(static_cast<cudaEvent_t>(h_));
  if (e != cudaSuccess)  // a destructor must not throw: report instead
    std::fprintf(stderr, "iif cuda: cudaEventDestroy failed: %s\n", cudaGetErrorName(e));
}
void Event::record() { IIF_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(h_), ctx().stream)); }
void Event::synchronize() { IIF_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(h_))); }
float Event::elapsed_ms_since(const Event& start) {
  synchronize();
  float ms = 0.0f;
  IIF_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.h_),
                                 static_cast<cudaEvent_t>(h_)));
  return ms;
}

void gemm(Real type, bool ta, bool tb, int m, int n, int k, double alpha, const void* a, int lda,
          const void* b, int ldb, double beta, void* c, int ldc) {
  cublasHandle_t h = ctx().blas;
  if (type == Real::f32) {
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    IIF_CHECK(cublasSgemm(h, op(ta), op(tb), m, n, k, &al, static_cast<const float*>(a), lda,
                          static_cast<const float*>(b), ldb, &be, static_cast<float*>(c), ldc));
  } else {
    IIF_CHECK(cublasDgemm(h, op(ta), op(tb), m, n, k, &alpha, static_cast<const double*>(a), lda,
                          static_cast<const double*>(b), ldb, &beta, static_cast<double*>(c), ldc));
  }
}

void gemm_strided_batched(Real type, bool ta, bool tb, int m, int n, int k, double alpha,
                          const void* a, int lda, std::int64_t sa, const void* b, int ldb,
                          std::int64_t sb, double beta, void* c, int ldc, std::int64_t sc,
                          int batch) {
  cublasHandle_t h = ctx().blas;
  if (type == Real::f32) {
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    IIF_CHECK(cublasSgemmStridedBatched(h, op(ta), op(tb), m, n, k, &al,
                                        static_cast<const float*>(a), lda, sa,
                                        static_cast<const float*>(b), ldb, sb, &be,
                                        static_cast<float*>(c), ldc, sc, batch));
  } else {
    IIF_CHECK(cublasDgemmStridedBatched(h, op(ta), op(tb), m, n, k, &alpha,
                                        static_cast<const double*>(a), lda, sa,
                                        static_cast<const double*>(b), ldb, sb, &beta,
                                        static_cast<double*>(c), ldc, sc, batch));
  }
}

std::vector<int> cholesky_solve_f64(int n, int nrhs, double* a, double* b, int batch) {
  std::vector<int> info(static_cast<std::size_t>(batch), 0);
  if (batch == 0 || n == 0) return info;
  cusolverDnHandle_t h = ctx().solver;
  int lwork = 0;
  IIF_CHECK(cusolverDnDpotrf_bufferSize(h, CUBLAS_FILL_MODE_UPPER, n, a, n, &lwork));
  Scratch work(static_cast<std::size_t>(lwork > 0 ? lwork : 1) * sizeof(double));
  // potrs rewrites its info, so the factorisation's and the solve's are kept apart.
  Scratch infos(2 * static_cast<std::size_t>(batch) * sizeof(int));
  int* f_info = static_cast<int*>(infos.p);
  int* s_info = f_info + batch;
  IIF_CHECK(cudaMemsetAsync(infos.p, 0, infos.n, ctx().stream));
  for (int k = 0; k < batch; ++k) {
    double* ak = a + static_cast<std::int64_t>(k) * n * n;
    IIF_CHECK(cusolverDnDpotrf(h, CUBLAS_FILL_MODE_UPPER, n, ak, n, static_cast<double*>(work.p),
                               lwork, f_info + k));
    if (nrhs > 0)
      IIF_CHECK(cusolverDnDpotrs(h, CUBLAS_FILL_MODE_UPPER, n, nrhs, ak, n,
                                 b + static_cast<std::int64_t>(k) * n * nrhs, n, s_info + k));
  }
  std::vector<int> host(2 * static_cast<std::size_t>(batch));
  copy_to_host(host.data(), infos.p, infos.n);
  for (int k = 0; k < batch; ++k) info[k] = host[k] != 0 ? host[k] : host[batch + k];
  return info;
}

namespace {
template <class T>
void radix_desc(const T* kin, T* kout, const std::int64_t* vin, std::int64_t* vout, int n) {
  std::size_t bytes = 0;
  IIF_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, bytes, kin, kout, vin, vout, n, 0,
                                                      static_cast<int>(sizeof(T) * 8), ctx().stream));
  Scratch tmp(bytes > 0 ? bytes : 1);
  IIF_CHECK(cub::DeviceRadixSort::SortPairsDescending(tmp.p, bytes, kin, kout, vin, vout, n, 0,
                                                      static_cast<int>(sizeof(T) * 8), ctx().stream));
}
}  // namespace

void sort_pairs_descending(Real type, const void* keys_in, void* keys_out,
                           const std::int64_t* values_in, std::int64_t* values_out, std::int64_t n) {
  if (n <= 0) return;
  if (n > INT_MAX)
    throw std::invalid_argument("sort_pairs_descending: n = " + std::to_string(n) +
                                " exceeds the int range of cub::DeviceRadixSort");
  const int ni = static_cast<int>(n);
  Scratch iota(values_in ? 0 : static_cast<std::size_t>(n) * sizeof(std::int64_t));
  if (!values_in) {
    const int blocks = static_cast<int>(std::min<std::int64_t>((n + 255) / 256, 4096));
    iota_kernel<<<blocks, 256, 0, ctx().stream>>>(static_cast<std::int64_t*>(iota.p), n);
    IIF_CHECK(cudaGetLastError());
    values_in = static_cast<const std::int64_t*>(iota.p);
  }
  if (type == Real::f32)
    radix_desc(static_cast<const float*>(keys_in), static_cast<float*>(keys_out), values_in,
               values_out, ni);
  else
    radix_desc(static_cast<const double*>(keys_in), static_cast<double*>(keys_out), values_in,
               values_out, ni);
}

void top_k(Real type, const void* keys, std::int64_t n, std::int64_t k, void* keys_out,
           std::int64_t* index_out) {
  if (k < 0 || k > n)
    throw std::invalid_argument("top_k: k = " + std::to_string(k) + " is outside [0, " +
                                std::to_string(n) + "]");
  if (k == 0) return;
  const std::size_t es = type == Real::f32 ? 4 : 8;
  Scratch ks(static_cast<std::size_t>(n) * es);
  Scratch idx(static_cast<std::size_t>(n) * sizeof(std::int64_t));
  sort_pairs_descending(type, keys, ks.p, nullptr, static_cast<std::int64_t*>(idx.p), n);
  copy_on_device(keys_out, ks.p, static_cast<std::size_t>(k) * es);
  copy_on_device(index_out, idx.p, static_cast<std::size_t>(k) * sizeof(std::int64_t));
}

}  // namespace dev
}  // namespace cuda
}  // namespace iif
