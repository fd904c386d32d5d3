// The CUDA backend's device layer: ONE contract, two implementations.
//   device_cuda.cu      CUDA runtime, a caching allocator, one stream, events, cuBLAS,
//                       cuSOLVER (float64 potrf/potrs per matrix), CUB device radix sort.
//   device_emulated.cpp host memory (the SIMT emulator runs kernels on it), OpenBLAS cblas,
//                       LAPACKE, std::stable_sort on the radix-sort key order.
// The backend (engine/cuda/cuda_backend.cu) calls only this header and the kernels, so the
// same orchestration code runs on a GPU and, in CI, on the CPU.
//
// Conventions (identical in both implementations):
// - Linear algebra is COLUMN-major, as cuBLAS/cuSOLVER; leading dimensions as BLAS.
// - Every operation is ordered on the layer's one stream. Calls returning host values
//   (copy_to_host, the info of potrf/potrs, ...) synchronise first. Under the emulator every
//   call is synchronous.
// - Every CUDA/cuBLAS/cuSOLVER status is checked: a failure throws std::runtime_error naming
//   the call and the status (e.g. "cublasSgemm_v2 failed: CUBLAS_STATUS_INVALID_VALUE").
// - Only APIs present in CUDA 11.8 are used.
#pragma once

#include "engine/caching_pool.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace iif {
namespace cuda {
namespace dev {

enum class Real { f32, f64 };

// ---- runtime ---------------------------------------------------------------------------
// Number of usable devices: 0 when there is no GPU or no driver (never throws for that).
// The emulated layer reports 1.
int device_count();
// "emulated (host memory, OpenBLAS, SIMT emulator)" or "CUDA <name> sm_XY, <mem> MiB".
std::string description();
bool emulated();

// The stream every kernel launch and every call of this layer is ordered on, as an opaque
// handle (a cudaStream_t under CUDA; nullptr on the emulator).
void* stream();
void synchronize();

// ---- memory: a caching pool (freed blocks are kept, by rounded size, for reuse) --------
void* allocate(std::size_t bytes);  // nullptr for 0 bytes; throws std::bad_alloc when full
void deallocate(void* ptr, std::size_t bytes);
void release_cached();  // returns every cached block to the driver (or the host heap)
using iif::PoolStats;
PoolStats pool_stats();

void copy_to_host(void* host_dst, const void* dev_src, std::size_t bytes);    // synchronous
void copy_from_host(void* dev_dst, const void* host_src, std::size_t bytes);  // host buffer reusable on return
void copy_on_device(void* dst, const void* src, std::size_t bytes);
void memset_zero(void* dst, std::size_t bytes);

// ---- events: elapsed time between two points of the stream -----------------------------
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record();        // at the current end of the stream
  void synchronize();   // waits until the stream reaches it
  // Milliseconds from `start` to this event (both recorded; synchronises on this one).
  float elapsed_ms_since(const Event& start);

 private:
  void* h_ = nullptr;
  double host_ms_ = 0.0;
};

// ---- BLAS (column-major) ---------------------------------------------------------------
// C(m,n) = alpha op(A) op(B) + beta C; A, B, C device pointers of `type`. beta == 0: C is not read.
void gemm(Real type, bool trans_a, bool trans_b, int m, int n, int k, double alpha, const void* a,
          int lda, const void* b, int ldb, double beta, void* c, int ldc);
// The same for `batch` matrices at strides (in elements) sa, sb, sc; a stride of 0 shares one
// matrix between all of them.
void gemm_strided_batched(Real type, bool trans_a, bool trans_b, int m, int n, int k, double alpha,
                          const void* a, int lda, std::int64_t sa, const void* b, int ldb,
                          std::int64_t sb, double beta, void* c, int ldc, std::int64_t sc, int batch);

// ---- LAPACK-style Cholesky, float64 (column-major, upper triangle used) ----------------
// For each k < batch: factor the (n,n) matrix at a + k*n*n in place (potrf, 'U'), then, when
// nrhs > 0, solve in place for the (n,nrhs) right-hand sides at b + k*n*nrhs (potrs).
// Returns info per matrix: 0 = success, i > 0 = the leading minor of order i is not positive
// definite (that matrix's B is then unspecified), < 0 = an invalid argument.
std::vector<int> cholesky_solve_f64(int n, int nrhs, double* a, double* b, int batch);

// ---- sort / top-k ----------------------------------------------------------------------
// Sorts keys (n) descending, carrying the int64 values along; stable: equal keys keep their
// input order. Keys must not be NaN (CUB sorts NaNs by their bits, std::sort has no order for
// them). -0 and +0 are equal to the emulated layer and to recent CUB; older CUB (CUDA 11.8)
// puts +0 first, so the relative order of zeros of different signs is unspecified.
// keys_out/values_out are device buffers of n entries (they must not alias the inputs);
// values_in may be nullptr, meaning the values 0..n-1 (the input positions).
void sort_pairs_descending(Real type, const void* keys_in, void* keys_out,
                           const std::int64_t* values_in, std::int64_t* values_out, std::int64_t n);
// The k largest keys (k <= n) and their indices 0..n-1 in that order (ties: smaller index
// first), as the first k entries of the sort above. Device outputs of k entries.
void top_k(Real type, const void* keys, std::int64_t n, std::int64_t k, void* keys_out,
           std::int64_t* index_out);

}  // namespace dev
}  // namespace cuda
}  // namespace iif
