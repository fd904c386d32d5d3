// The CPU backend: plain loops (OpenMP over independent rows/elements) and OpenBLAS for GEMM.
// It is the reference every other backend is held to. Every reduction has a fixed order that
// does not depend on the thread count, so results are bit-reproducible run to run.
#include "engine/cpu/cpu_backend.h"

#include <cblas.h>
#include <lapacke.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include "engine/caching_pool.h"
#include "engine/projection.h"
#include "kernels/cholesky_info.h"
#include "kernels/philox.cuh"
#include "kernels/window.cuh"

namespace iif {
namespace {

constexpr int64_t kParallelMin = 1 << 14;  // below this, threads cost more than they save
constexpr int64_t kReduceChunk = 1 << 12;  // fixed chunking keeps sums thread-count independent

template <class F>
void dispatch(DType t, F&& f) {
  if (t == DType::f32)
    f(float{});
  else
    f(double{});
}

template <class T>
double chunked_sum(const T* x, int64_t n) {
  const int64_t chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<double> part(static_cast<std::size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0.0;
    const int64_t e = std::min(n, (c + 1) * kReduceChunk);
    for (int64_t i = c * kReduceChunk; i < e; ++i) s += static_cast<double>(x[i]);
    part[c] = s;
  }
  double s = 0.0;
  for (double p : part) s += p;
  return s;
}

template <class T>
double chunked_dot(const T* a, const T* b, int64_t n) {
  const int64_t chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<double> part(static_cast<std::size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0.0;
    const int64_t e = std::min(n, (c + 1) * kReduceChunk);
    for (int64_t i = c * kReduceChunk; i < e; ++i)
      s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
    part[c] = s;
  }
  double s = 0.0;
  for (double p : part) s += p;
  return s;
}

// Row-wise log-sum-exp in double, the numerically stable way.
template <class T>
double log_sum_exp(const T* z, int64_t c, double& zmax) {
  zmax = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < c; ++j) zmax = std::max(zmax, static_cast<double>(z[j]));
  double s = 0.0;
  for (int64_t j = 0; j < c; ++j) s += std::exp(static_cast<double>(z[j]) - zmax);
  return zmax + std::log(s);
}

}  // namespace

Device CpuBackend::device() const { return Device::cpu(); }
std::string CpuBackend::name() const { return "cpu (OpenBLAS + OpenMP)"; }

namespace {
// Blocks of at least kPooled bytes go through a caching pool (engine/caching_pool.h), holding
// at most an eighth of the machine's memory; smaller ones straight to the heap.
constexpr std::size_t kPooled = std::size_t(256) << 10;
void* raw_host_alloc(std::size_t bytes) { return std::aligned_alloc(64, (bytes + 63) / 64 * 64); }
void raw_host_free(void* p) { std::free(p); }
auto& host_pool() {
  static auto* pool = make_pool(&raw_host_alloc, &raw_host_free, [] {
    const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && size > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(size) / 8
                                 : std::size_t(1) << 30;
  }());
  return *pool;
}
}  // namespace

void* CpuBackend::allocate(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  if (bytes >= kPooled) return host_pool().allocate(bytes);
  void* p = raw_host_alloc(bytes);
  if (!p) throw std::bad_alloc();
  return p;
}
void CpuBackend::deallocate(void* p, std::size_t bytes) {
  if (bytes >= kPooled) host_pool().deallocate(p);
  else std::free(p);
}
void CpuBackend::copy_to_host(void* dst, const void* src, std::size_t n) {
  if (n) std::memmove(dst, src, n);
}
void CpuBackend::copy_from_host(void* dst, const void* src, std::size_t n) {
  if (n) std::memmove(dst, src, n);
}
void CpuBackend::copy_on_device(void* dst, const void* src, std::size_t n) {
  if (n) std::memmove(dst, src, n);
}

void CpuBackend::fill(Tensor& x, double v) {
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    T* p = x.data<T>();
    const int64_t n = x.numel();
    std::fill(p, p + n, static_cast<T>(v));
  });
}

void CpuBackend::cast(const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  if (src.dtype() == dst.dtype()) {
    copy_on_device(dst.raw(), src.raw(), src.nbytes());
  } else if (src.dtype() == DType::f32) {
    const float* s = src.data<float>();
    double* d = dst.data<double>();
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
  } else {
    const double* s = src.data<double>();
    float* d = dst.data<float>();
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
  }
}

void CpuBackend::axpby(double a, const Tensor& x, double b, Tensor& y) {
  dispatch(y.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    const int64_t n = y.numel();
    const T ta = static_cast<T>(a), tb = static_cast<T>(b);
    if (b == 0.0) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (int64_t i = 0; i < n; ++i) yp[i] = ta * xp[i];
    } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (int64_t i = 0; i < n; ++i) yp[i] = ta * xp[i] + tb * yp[i];
    }
  });
}

void CpuBackend::mul(const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* ap = a.data<T>();
    const T* bp = b.data<T>();
    T* op = out.data<T>();
    const int64_t n = out.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) op[i] = ap[i] * bp[i];
  });
}

void CpuBackend::relu(const Tensor& x, Tensor& y) {
  dispatch(y.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    const int64_t n = y.numel();
    // NaN propagates (as in torch.relu): !(x <= 0) keeps NaN, where x > 0 would turn it into 0
    // and hide a diverged layer. -0 maps to +0.
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) yp[i] = !(xp[i] <= T(0)) ? xp[i] : T(0);
  });
}

void CpuBackend::relu_backward(const Tensor& x, const Tensor& dy, double beta, Tensor& dx) {
  dispatch(dx.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    const T* gp = dy.data<T>();
    T* dp = dx.data<T>();
    const int64_t n = dx.numel();
    const T tb = static_cast<T>(beta);
    // Both loads unconditional and beta's test out of the loop: the compiler turns the mask
    // into a vector blend. (A branch per element mispredicts on half the units of a layer and
    // measured 10x slower: 12% of a cached MLP Hessian product.)
    if (beta == 0.0) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (int64_t i = 0; i < n; ++i) {
        const T g = gp[i];
        dp[i] = xp[i] > T(0) ? g : T(0);
      }
    } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (int64_t i = 0; i < n; ++i) {
        const T g = gp[i];
        dp[i] = (xp[i] > T(0) ? g : T(0)) + tb * dp[i];
      }
    }
  });
}

void CpuBackend::dropout_mask(Tensor& mask, double p, uint64_t seed, uint64_t stream) {
  dispatch(mask.dtype(), [&](auto z) {
    using T = decltype(z);
    T* m = mask.data<T>();
    const int64_t n = mask.numel();
    const T keep = static_cast<T>(1.0 / (1.0 - p));
    const float pf = static_cast<float>(p);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i)
      m[i] = philox::uniform(seed, stream, static_cast<uint64_t>(i)) >= pf ? keep : T(0);
  });
}

void CpuBackend::gemm(bool ta, bool tb, double alpha, const Tensor& a, const Tensor& b,
                      double beta, Tensor& c) {
  const int m = static_cast<int>(c.dim(0)), n = static_cast<int>(c.dim(1));
  const int k = static_cast<int>(ta ? a.dim(0) : a.dim(1));
  if (m == 0 || n == 0) return;
  const int lda = static_cast<int>(a.dim(1)), ldb = static_cast<int>(b.dim(1));
  const auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
  if (k == 0) {  // C = beta C; with beta == 0, C is not read (it may hold NaN, as after empty())
    Tensor cc = c;
    if (beta == 0.0)
      fill(cc, 0.0);
    else
      axpby(beta, cc, 0.0, cc);  // not 0*C + beta*C: 0*Inf would be NaN
    return;
  }
  if (c.dtype() == DType::f32) {
    cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, static_cast<float>(alpha), a.data<float>(), lda,
                b.data<float>(), ldb, static_cast<float>(beta), c.data<float>(), n);
  } else {
    cblas_dgemm(CblasRowMajor, opa, opb, m, n, k, alpha, a.data<double>(), lda, b.data<double>(),
                ldb, beta, c.data<double>(), n);
  }
}

void CpuBackend::add_row_vector(const Tensor& v, Tensor& y) {
  dispatch(y.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* vp = v.data<T>();
    T* yp = y.data<T>();
    const int64_t rows = y.dim(0), cols = y.dim(1);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) yp[r * cols + c] += vp[c];
  });
}

void CpuBackend::sum_rows(const Tensor& x, double beta, Tensor& out) {
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    T* op = out.data<T>();
    const int64_t rows = x.dim(0), cols = x.dim(1);
    for (int64_t c = 0; c < cols; ++c) {
      double s = 0.0;
      for (int64_t r = 0; r < rows; ++r) s += static_cast<double>(xp[r * cols + c]);
      op[c] = static_cast<T>(s + (beta == 0.0 ? 0.0 : beta * static_cast<double>(op[c])));
    }
  });
}

void CpuBackend::syrk(double alpha, const Tensor& u, double beta, Tensor& c) {
  // U (N,P) row-major is, to BLAS, the (N,P) matrix op(A) = A^T with trans = CblasTrans, so
  // cblas ?syrk(Upper, Trans) forms the upper triangle of alpha U^T U + beta C; the lower one is
  // then mirrored. beta == 0 zero-fills C first: BLAS implementations differ on whether a NaN in
  // C survives multiplication by beta == 0, and the contract says C is not read.
  const int64_t n = u.dim(0), p = u.dim(1);
  if (p == 0) return;
  if (beta == 0.0) fill(c, 0.0);
  if (n == 0) {  // k == 0: C = beta C, done here (not 0 * C + ..., which would turn Inf into NaN)
    if (beta != 0.0 && beta != 1.0) axpby(beta, c, 0.0, c);
  } else if (c.dtype() == DType::f32) {
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(p), static_cast<int>(n),
                static_cast<float>(alpha), u.data<float>(), static_cast<int>(p),
                beta == 0.0 ? 0.0f : static_cast<float>(beta), c.data<float>(), static_cast<int>(p));
  } else {
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(p), static_cast<int>(n),
                alpha, u.data<double>(), static_cast<int>(p), beta == 0.0 ? 0.0 : beta,
                c.data<double>(), static_cast<int>(p));
  }
  dispatch(c.dtype(), [&](auto z) {  // lower triangle := upper triangle
    using T = decltype(z);
    T* cp = c.data<T>();
#pragma omp parallel for schedule(static) if (p * p >= kParallelMin)
    for (int64_t i = 1; i < p; ++i)
      for (int64_t j = 0; j < i; ++j) cp[i * p + j] = cp[j * p + i];
  });
}

void CpuBackend::batched_cholesky_solve(const Tensor& a, const std::vector<double>& damping,
                                        Tensor& b) {
  // Per matrix, in float64 workspaces: W = A_k + damping_k I, then potrf + potrs. The row-major
  // symmetric W is handed to LAPACK as column-major 'U' (the same numbers: W = W^T), which
  // avoids LAPACKE's row-major transposition copies; B_k (P,R) row-major is transposed into a
  // column-major (P,R) workspace. OpenMP runs over k when K > 1; with K == 1 the threaded
  // OpenBLAS inside potrf/potrs gets the cores instead (OpenBLAS runs single-threaded inside an
  // active parallel region).
  const int64_t k_count = a.dim(0), p = a.dim(1), r = b.dim(2);
  if (k_count == 0 || p == 0) return;
  std::vector<lapack_int> info(static_cast<std::size_t>(k_count), 0);
  std::vector<char> nonfinite(static_cast<std::size_t>(k_count), 0);
  dispatch(a.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* ap = a.data<T>();
    T* bp = r > 0 ? b.data<T>() : nullptr;
#pragma omp parallel for schedule(dynamic, 1) if (k_count > 1)
    for (int64_t k = 0; k < k_count; ++k) {
      std::vector<double> w(static_cast<std::size_t>(p * p));
      const T* ak = ap + k * p * p;
      bool finite = true;
      for (int64_t i = 0; i < p * p; ++i) {
        w[i] = static_cast<double>(ak[i]);
        finite = finite && std::isfinite(w[i]);
      }
      for (int64_t i = 0; i < p; ++i) w[i * p + i] += damping[k];
      if (!finite) {
        nonfinite[k] = 1;
        continue;
      }
      const lapack_int lp = static_cast<lapack_int>(p);
      const lapack_int f = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', lp, w.data(), lp);
      if (f != 0) {
        info[k] = f;
        continue;
      }
      if (r == 0) continue;
      T* bk = bp + k * p * r;
      std::vector<double> x(static_cast<std::size_t>(p * r));
      for (int64_t i = 0; i < p; ++i)
        for (int64_t j = 0; j < r; ++j) x[j * p + i] = static_cast<double>(bk[i * r + j]);
      info[k] = LAPACKE_dpotrs(LAPACK_COL_MAJOR, 'U', lp, static_cast<lapack_int>(r), w.data(), lp,
                               x.data(), lp);
      for (int64_t i = 0; i < p; ++i)
        for (int64_t j = 0; j < r; ++j) bk[i * r + j] = static_cast<T>(x[j * p + i]);
    }
  });
  std::vector<int> codes(static_cast<std::size_t>(k_count), 0);
  for (int64_t k = 0; k < k_count; ++k) {
    if (info[k] < 0)
      throw std::logic_error("batched_cholesky_solve: matrix k = " + std::to_string(k) +
                             ": LAPACK rejected argument " + std::to_string(-info[k]));
    codes[k] = nonfinite[k] ? kernels::chol::kNonFinite : static_cast<int>(info[k]);
  }
  kernels::throw_on_cholesky_info(codes.data(), static_cast<int>(k_count), static_cast<int>(p), damping.data());
}

// ---- model-batched ops ------------------------------------------------------------------

namespace {
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
               const float* a, int lda, const float* b, int ldb, float beta, float* c) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, n);
}
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
               const double* a, int lda, const double* b, int ldb, double beta, double* c) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, n);
}
}  // namespace

// ---- random projections -------------------------------------------------------------------
// The CPU featurizer's factored kernel (attribution/featurizer.h) for one layer, with its
// default 8 MiB tiles: R's rows for output units o0 .. o0 + u - 1 are laid out as one (in, u P)
// tile, one GEMM A (ns, in) x tile gives every a_b^T R_o, and each cotangent contracts it with
// its delta; the bias rows are one more GEMM. Same operations in the same order as
// Featurizer::project_chunk with FeaturizerKernel::factored, so the results are equal.
namespace {

constexpr int64_t kProjTileBytes = int64_t{8} << 20;
// The convolution path's R and gradient tiles (project_positions_cpu): larger, so that its
// per-sample GEMMs see more output channels at once (each packs the sample's patches again).
constexpr int64_t kPositionsTileBytes = int64_t{32} << 20;

template <class T>
void project_linear_cpu(const Tensor& a, const std::vector<Tensor>& d, bool bias, int64_t row0,
                        const RandomProjectionRows& gen, const std::vector<Tensor>& y) {
  const int64_t n = a.dim(0), in = a.dim(1), out = d[0].dim(1), p = gen.spec().dim;
  const int64_t esz = static_cast<int64_t>(sizeof(T));
  const int64_t units = std::clamp<int64_t>(kProjTileBytes / (in * p * esz), 1, out);
  const int64_t rows_t = std::clamp<int64_t>(kProjTileBytes / (units * p * esz), 1, n);
  std::vector<T> r_buf(static_cast<std::size_t>(in * units * p));
  std::vector<T> t_buf(static_cast<std::size_t>(rows_t * units * p));
  const T* ap = a.data<T>();
  for (int64_t o0 = 0; o0 < out; o0 += units) {
    const int64_t u = std::min(units, out - o0);
    for (int64_t j = 0; j < u; ++j) gen.fill(row0 + (o0 + j) * in, in, r_buf.data() + j * p, u * p);
    for (int64_t s0 = 0; s0 < n; s0 += rows_t) {
      const int64_t ns = std::min(n, s0 + rows_t) - s0;
      blas_gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(ns), static_cast<int>(u * p),
                static_cast<int>(in), T(1), ap + s0 * in, static_cast<int>(in), r_buf.data(),
                static_cast<int>(u * p), T(0), t_buf.data());
      for (std::size_t k = 0; k < d.size(); ++k) {
        const T* dp = d[k].data<T>() + s0 * out;
        T* yp = y[k].data<T>() + s0 * p;
        const T* tp = t_buf.data();
#pragma omp parallel for schedule(static) if (ns * u * p >= (int64_t{1} << 15))
        for (int64_t s = 0; s < ns; ++s) {
          T* yr = yp + s * p;
          const T* dr = dp + s * out + o0;
          const T* tr = tp + s * u * p;
          for (int64_t j = 0; j < u; ++j) {
            const T dv = dr[j];
            const T* tj = tr + j * p;
            for (int64_t c = 0; c < p; ++c) yr[c] += dv * tj[c];
          }
        }
      }
    }
  }
  if (bias) {  // the bias gradient is delta itself: Y += delta R_bias
    std::vector<T> rb(static_cast<std::size_t>(out * p));
    gen.fill(row0 + out * in, out, rb.data(), p);
    for (std::size_t k = 0; k < d.size(); ++k)
      blas_gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(p),
                static_cast<int>(out), T(1), d[k].data<T>(), static_cast<int>(out), rb.data(),
                static_cast<int>(p), T(1), y[k].data<T>());
  }
}

// A linear map at L > 1 positions per sample (a convolution: a = im2col patches). The
// per-sample gradient of output channel o is sum_l d(bL+l, o) a(bL+l, :): forming it first and
// then projecting costs 2 L in + 2 in P flops per (sample, channel), against 2 L in P for
// projecting the patches first (the factored order above, right for L = 1 only), so: per block
// of output channels [o0, o0 + u), R's u * in rows are generated once into an (u in, P) tile;
// per tile of samples, the gradient tile G (ns, u in) is formed by one GEMM per sample,
// G_s (u, in) = d_s(:, o0:o0+u)^T (u, L) a_s (L, in) (in parallel over samples, single-threaded
// BLAS inside), and y += G R_tile is one GEMM. The bias gradient, sum_l d(bL+l, :), is summed
// per sample and projected by one more GEMM. Tiles of at most 8 MiB each.
template <class T>
void project_positions_cpu(const Tensor& a, const std::vector<Tensor>& d, int64_t positions, bool bias,
                           int64_t row0, const RandomProjectionRows& gen, const std::vector<Tensor>& y) {
  const int64_t l = positions, n = a.dim(0) / l, in = a.dim(1), out = d[0].dim(1), p = gen.spec().dim;
  const int64_t esz = static_cast<int64_t>(sizeof(T));
  const int64_t units = std::clamp<int64_t>(kPositionsTileBytes / (in * p * esz), 1, out);
  const int64_t rows_s = std::clamp<int64_t>(kPositionsTileBytes / (units * in * esz), 1, n);
  // From the caching pool: fresh pages for every call cost a kernel zero-fill each time.
  Tensor r_tensor = Tensor::empty({units * in * p}, a.dtype()), g_tensor = Tensor::empty({rows_s * units * in}, a.dtype());
  T* const r_buf = r_tensor.data<T>();
  T* const g_buf = g_tensor.data<T>();
  const T* ap = a.data<T>();
  for (int64_t o0 = 0; o0 < out; o0 += units) {
    const int64_t u = std::min(units, out - o0);
    gen.fill(row0 + o0 * in, u * in, r_buf, p);
    for (int64_t s0 = 0; s0 < n; s0 += rows_s) {
      const int64_t ns = std::min(n, s0 + rows_s) - s0;
      for (std::size_t k = 0; k < d.size(); ++k) {
        const T* dp = d[k].data<T>();
        T* gp = g_buf;
#pragma omp parallel for schedule(static)
        for (int64_t s = 0; s < ns; ++s)
          blas_gemm(CblasTrans, CblasNoTrans, static_cast<int>(u), static_cast<int>(in), static_cast<int>(l), T(1),
                    dp + (s0 + s) * l * out + o0, static_cast<int>(out), ap + (s0 + s) * l * in,
                    static_cast<int>(in), T(0), gp + s * u * in);
        blas_gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(ns), static_cast<int>(p), static_cast<int>(u * in),
                  T(1), gp, static_cast<int>(u * in), r_buf, static_cast<int>(p), T(1),
                  y[k].data<T>() + s0 * p);
      }
    }
  }
  if (bias) {
    std::vector<T> rb(static_cast<std::size_t>(out * p)), sums(static_cast<std::size_t>(n * out));
    gen.fill(row0 + out * in, out, rb.data(), p);
    for (std::size_t k = 0; k < d.size(); ++k) {
      const T* dp = d[k].data<T>();
#pragma omp parallel for schedule(static)
      for (int64_t s = 0; s < n; ++s)
        for (int64_t o = 0; o < out; ++o) {
          double acc = 0;  // in float64, as every sum of the CPU backend
          for (int64_t q = 0; q < l; ++q) acc += static_cast<double>(dp[(s * l + q) * out + o]);
          sums[static_cast<std::size_t>(s * out + o)] = static_cast<T>(acc);
        }
      blas_gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(p), static_cast<int>(out), T(1),
                sums.data(), static_cast<int>(out), rb.data(), static_cast<int>(p), T(1), y[k].data<T>());
    }
  }
}

// Projector::project_block's tiling: tiles of R of at most 8 MiB, g's column tile copied when
// g must be split.
template <class T>
void project_rows_cpu(const Tensor& g, int64_t row0, const RandomProjectionRows& gen, double beta,
                      Tensor& y) {
  const int64_t b = g.dim(0), m = g.dim(1), p = gen.spec().dim;
  T* yp = y.data<T>();
  if (m == 0) {
    const int64_t nn = y.numel();
    if (beta == 0.0) std::fill(yp, yp + nn, T(0));
    else if (beta != 1.0) for (int64_t i = 0; i < nn; ++i) yp[i] = static_cast<T>(beta * yp[i]);
    return;
  }
  const int64_t esz = static_cast<int64_t>(sizeof(T));
  int64_t tr = std::max<int64_t>(1, kProjTileBytes / (p * esz));
  const bool split = tr < m;
  if (split) tr = std::max<int64_t>(1, std::min(tr, kProjTileBytes / (b * esz)));
  tr = std::min(tr, m);
  std::vector<T> rt(static_cast<std::size_t>(tr * p));
  std::vector<T> gt(split ? static_cast<std::size_t>(b * tr) : 0);
  const T* gp = g.data<T>();
  if (beta == 0.0) std::fill(yp, yp + y.numel(), T(0));  // BLAS would not read y either
  for (int64_t j0 = 0; j0 < m; j0 += tr) {
    const int64_t n = std::min(tr, m - j0);
    gen.fill(row0 + j0, n, rt.data(), p);
    const T bt = static_cast<T>(j0 == 0 ? beta : 1.0);
    if (!split) {
      blas_gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(b), static_cast<int>(p),
                static_cast<int>(n), T(1), gp, static_cast<int>(m), rt.data(), static_cast<int>(p),
                bt, yp);
      continue;
    }
    for (int64_t i = 0; i < b; ++i)
      std::memcpy(gt.data() + i * n, gp + i * m + j0, static_cast<std::size_t>(n * esz));
    blas_gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(b), static_cast<int>(p),
              static_cast<int>(n), T(1), gt.data(), static_cast<int>(n), rt.data(),
              static_cast<int>(p), bt, yp);
  }
}

}  // namespace

void CpuBackend::linear_project(const Tensor& a, const std::vector<Tensor>& d, int64_t positions, bool bias,
                                int64_t row0, const RandomProjection& r,
                                const std::vector<Tensor>& y) {
  const RandomProjectionRows gen(r);
  dispatch(a.dtype(), [&](auto z) {
    if (positions == 1) project_linear_cpu<decltype(z)>(a, d, bias, row0, gen, y);
    else project_positions_cpu<decltype(z)>(a, d, positions, bias, row0, gen, y);
  });
}

void CpuBackend::project_rows(const Tensor& g, int64_t row0, const RandomProjection& r,
                              double beta, Tensor& y) {
  const RandomProjectionRows gen(r);
  dispatch(y.dtype(), [&](auto z) { project_rows_cpu<decltype(z)>(g, row0, gen, beta, y); });
}

void CpuBackend::gemm_batched(bool ta, bool tb, double alpha, const Tensor& a, const Tensor& b,
                              double beta, Tensor& c) {
  // OpenMP over k, one single-threaded cblas ?gemm per slice: inside an active parallel region
  // the OpenMP build of OpenBLAS runs on one thread, and with batch == 1 the OpenMP thread count
  // is set to 1 around the call (this OpenBLAS reads it at every call). So the result never
  // depends on the thread count, and slice k has the bits of ops::gemm on slice k run with one
  // thread. (A threaded OpenBLAS call gives other bits: measured here, 0.3.21, sgemm
  // 64x128x784 differs in 1870 of 8192 entries between 1 and 2 threads, within rounding.)
  // This OpenBLAS (0.3.21) has no cblas_?gemm_batch (added in 0.3.27); bench_subset_training
  // measures this loop against a serial loop of threaded calls.
  const int64_t batch = c.dim(0), m = c.dim(1), n = c.dim(2);
  const int ar = static_cast<int>(a.dim(a.ndim() - 2)), ac = static_cast<int>(a.dim(a.ndim() - 1));
  const int br = static_cast<int>(b.dim(b.ndim() - 2)), bc = static_cast<int>(b.dim(b.ndim() - 1));
  const int k = ta ? ar : ac;
  if (batch == 0 || m == 0 || n == 0) return;
  if (k == 0) {  // C = beta C; with beta == 0, C is not read (as gemm)
    Tensor cc = c;
    if (beta == 0.0)
      fill(cc, 0.0);
    else
      axpby(beta, cc, 0.0, cc);
    return;
  }
  const int64_t sa = a.ndim() == 3 ? int64_t(ar) * ac : 0, sb = b.ndim() == 3 ? int64_t(br) * bc : 0;
  const int64_t sc = m * n;
  const auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
  dispatch(c.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* ap = a.data<T>();
    const T* bp = b.data<T>();
    T* cp = c.data<T>();
    const T al = static_cast<T>(alpha), be = static_cast<T>(beta);
    auto one = [&](int64_t i) {
      blas_gemm(opa, opb, static_cast<int>(m), static_cast<int>(n), k, al, ap + i * sa, ac,
                bp + i * sb, bc, be, cp + i * sc);
    };
    if (batch == 1 && !omp_in_parallel()) {
      const int saved = omp_get_max_threads();
      omp_set_num_threads(1);
      one(0);
      omp_set_num_threads(saved);
      return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < batch; ++i) one(i);
  });
}

void CpuBackend::add_row_vector_batched(const Tensor& v, Tensor& y) {
  dispatch(y.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* vp = v.data<T>();
    T* yp = y.data<T>();
    const int64_t batch = y.dim(0), rows = y.dim(1), cols = y.dim(2);
#pragma omp parallel for schedule(static) if (batch * rows * cols >= kParallelMin)
    for (int64_t br = 0; br < batch * rows; ++br) {
      const T* vk = vp + (br / rows) * cols;
      T* yr = yp + br * cols;
      for (int64_t c = 0; c < cols; ++c) yr[c] += vk[c];
    }
  });
}

void CpuBackend::sum_rows_batched(const Tensor& x, double beta, Tensor& out) {
  dispatch(out.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    T* op = out.data<T>();
    const int64_t batch = x.dim(0), rows = x.dim(1), cols = x.dim(2);
    // Row by row into a double accumulator per column: each column is still summed in row
    // order, as sum_rows does, but memory is read contiguously.
#pragma omp parallel for schedule(static) if (batch * rows * cols >= kParallelMin)
    for (int64_t k = 0; k < batch; ++k) {
      std::vector<double> s(static_cast<std::size_t>(cols), 0.0);
      const T* xk = xp + k * rows * cols;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) s[c] += static_cast<double>(xk[r * cols + c]);
      T* ok = op + k * cols;
      for (int64_t c = 0; c < cols; ++c)
        ok[c] = static_cast<T>(s[c] + (beta == 0.0 ? 0.0 : beta * static_cast<double>(ok[c])));
    }
  });
}

void CpuBackend::dropout_mask_batched(Tensor& mask, double p, const std::vector<uint64_t>& seeds,
                                      const std::vector<uint64_t>& streams) {
  const int64_t batch = mask.dim(0);
  if (batch == 0) return;
  const int64_t per = mask.numel() / batch;
  const int64_t blocks = (per + 3) / 4;  // one Philox block gives the 4 words of indices 4b..4b+3
  dispatch(mask.dtype(), [&](auto z) {
    using T = decltype(z);
    T* m = mask.data<T>();
    const T keep = static_cast<T>(1.0 / (1.0 - p));
    const float pf = static_cast<float>(p);
#pragma omp parallel for schedule(static) if (batch * per >= kParallelMin)
    for (int64_t kb = 0; kb < batch * blocks; ++kb) {
      const int64_t k = kb / blocks, b = kb % blocks;
      const philox::U32x4 w = philox::words(seeds[k], streams[k], static_cast<uint64_t>(b));
      T* mk = m + k * per;
      for (int64_t j = 0; j < 4 && 4 * b + j < per; ++j) {
        // philox::uniform of index 4b + j, from the block already computed
        const float u = static_cast<float>(w.v[j] >> 8) * (1.0f / 16777216.0f);
        mk[4 * b + j] = u >= pf ? keep : T(0);
      }
    }
  });
}

double CpuBackend::sum(const Tensor& x) {
  double s = 0.0;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    s = chunked_sum(x.data<T>(), x.numel());
  });
  return s;
}

double CpuBackend::dot(const Tensor& a, const Tensor& b) {
  double s = 0.0;
  dispatch(a.dtype(), [&](auto z) {
    using T = decltype(z);
    s = chunked_dot(a.data<T>(), b.data<T>(), a.numel());
  });
  return s;
}

std::vector<int64_t> CpuBackend::argmax_rows(const Tensor& x) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  std::vector<int64_t> out(static_cast<std::size_t>(rows), 0);
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* p = x.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      int64_t best = 0;
      for (int64_t c = 1; c < cols; ++c)
        if (p[r * cols + c] > p[r * cols + best]) best = c;
      out[r] = best;
    }
  });
  return out;
}

void CpuBackend::softmax_xent(const Tensor& logits, const Tensor& targets, Tensor& loss,
                              Tensor* dlogits) {
  dispatch(logits.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* zp = logits.data<T>();
    const T* tp = targets.data<T>();
    T* lp = loss.data<T>();
    T* gp = dlogits ? dlogits->data<T>() : nullptr;
    const int64_t rows = logits.dim(0), cols = logits.dim(1);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      const T* zr = zp + r * cols;
      const T* tr = tp + r * cols;
      double zmax;
      const double lse = log_sum_exp(zr, cols, zmax);
      double l = 0.0, tsum = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        const double t = static_cast<double>(tr[c]);
        tsum += t;
        if (t != 0.0) l -= t * (static_cast<double>(zr[c]) - lse);
      }
      lp[r] = static_cast<T>(l);
      if (gp)
        for (int64_t c = 0; c < cols; ++c)
          gp[r * cols + c] = static_cast<T>(tsum * std::exp(static_cast<double>(zr[c]) - lse) -
                                            static_cast<double>(tr[c]));
    }
  });
}

void CpuBackend::softmax_xent_hvp(const Tensor& logits, const Tensor& targets, const Tensor& dir,
                                  Tensor& out) {
  dispatch(logits.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* zp = logits.data<T>();
    const T* tp = targets.data<T>();
    const T* dp = dir.data<T>();
    T* op = out.data<T>();
    const int64_t rows = logits.dim(0), cols = logits.dim(1);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      const T* zr = zp + r * cols;
      double zmax;
      const double lse = log_sum_exp(zr, cols, zmax);
      double s = 0.0, pd = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        s += static_cast<double>(tp[r * cols + c]);
        pd += std::exp(static_cast<double>(zr[c]) - lse) * static_cast<double>(dp[r * cols + c]);
      }
      for (int64_t c = 0; c < cols; ++c) {  // reads dp[.] before writing op[.]: out may alias dir
        const double pc = std::exp(static_cast<double>(zr[c]) - lse);
        op[r * cols + c] = static_cast<T>(s * pc * (static_cast<double>(dp[r * cols + c]) - pd));
      }
    }
  });
}

void CpuBackend::softmax(const Tensor& logits, Tensor& probs) {
  dispatch(logits.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* zp = logits.data<T>();
    T* pp = probs.data<T>();
    const int64_t rows = logits.dim(0), cols = logits.dim(1);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      double zmax;
      const double lse = log_sum_exp(zp + r * cols, cols, zmax);
      for (int64_t c = 0; c < cols; ++c)
        pp[r * cols + c] = static_cast<T>(std::exp(static_cast<double>(zp[r * cols + c]) - lse));
    }
  });
}

void CpuBackend::mse(const Tensor& pred, const Tensor& target, Tensor& loss, Tensor* dpred) {
  dispatch(pred.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* pp = pred.data<T>();
    const T* tp = target.data<T>();
    T* lp = loss.data<T>();
    T* gp = dpred ? dpred->data<T>() : nullptr;
    const int64_t rows = pred.dim(0), cols = pred.dim(1);
    for (int64_t r = 0; r < rows; ++r) {
      double l = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        const double d = static_cast<double>(pp[r * cols + c]) - static_cast<double>(tp[r * cols + c]);
        l += d * d;
        if (gp) gp[r * cols + c] = static_cast<T>(2.0 * d);
      }
      lp[r] = static_cast<T>(l);
    }
  });
}

void CpuBackend::gather_rows(const Tensor& src, const std::vector<int64_t>& index, Tensor& dst) {
  const std::size_t row_bytes = src.dim(0) ? src.nbytes() / static_cast<std::size_t>(src.dim(0)) : 0;
  if (row_bytes == 0) return;  // empty rows: src/dst may be null, and memcpy(null, ...) is UB
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(dst.raw());
  const int64_t n = static_cast<int64_t>(index.size());
#pragma omp parallel for schedule(static) if (n * static_cast<int64_t>(row_bytes) >= 4 * kParallelMin)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(d + i * row_bytes, s + index[i] * row_bytes, row_bytes);
}

void CpuBackend::sgd_step(Tensor& param, const Tensor& grad, Tensor& vel, const SgdParams& h,
                          bool first_step) {
  dispatch(param.dtype(), [&](auto z) {
    using T = decltype(z);
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* v = h.momentum != 0.0 ? vel.data<T>() : nullptr;
    const int64_t n = param.numel();
    const T lr = static_cast<T>(h.lr), mu = static_cast<T>(h.momentum),
            wd = static_cast<T>(h.weight_decay), damp = static_cast<T>(1.0 - h.dampening);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      T d = g[i];
      if (h.weight_decay != 0.0) d += wd * p[i];
      if (v) {
        v[i] = first_step ? d : mu * v[i] + damp * d;
        d = h.nesterov ? d + mu * v[i] : v[i];
      }
      p[i] -= lr * d;
    }
  });
}

void CpuBackend::adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                           const AdamParams& h, int64_t t) {
  dispatch(param.dtype(), [&](auto z) {
    using T = decltype(z);
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* mp = m.data<T>();
    T* vp = v.data<T>();
    const int64_t n = param.numel();
    const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(t));
    const T b1 = static_cast<T>(h.beta1), b2 = static_cast<T>(h.beta2);
    const T step = static_cast<T>(h.lr / bc1), sq = static_cast<T>(std::sqrt(bc2));
    const T eps = static_cast<T>(h.eps), wd = static_cast<T>(h.weight_decay);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      const T d = g[i] + wd * p[i];
      mp[i] = b1 * mp[i] + (T(1) - b1) * d;
      vp[i] = b2 * vp[i] + (T(1) - b2) * d * d;
      p[i] -= step * mp[i] / (std::sqrt(vp[i]) / sq + eps);
    }
  });
}

CpuBackend& cpu_backend() {
  static CpuBackend b;
  return b;
}

namespace {
std::atomic<Backend*> g_cuda_backend{nullptr};
}  // namespace

void register_backend(DeviceKind kind, Backend* backend) {
  if (kind == DeviceKind::cpu)
    throw std::invalid_argument("register_backend: the CPU backend is built in and fixed");
  g_cuda_backend.store(backend, std::memory_order_release);
}

// ---- images ----------------------------------------------------------------------------

namespace {
// (n, c, h, w) sizes of a 4-D NCHW tensor.
struct Nchw {
  int64_t n, c, h, w;
  explicit Nchw(const Tensor& t) : n(t.dim(0)), c(t.dim(1)), h(t.dim(2)), w(t.dim(3)) {}
};
// Elements per (n, c) plane of an (N, C, ...) tensor.
int64_t plane_of(const Tensor& t) {
  int64_t p = 1;
  for (int d = 2; d < t.ndim(); ++d) p *= t.dim(d);
  return p;
}
}  // namespace

void CpuBackend::im2col(const Tensor& x, const Window2d& win, Tensor& cols) {
  const Nchw s(x);
  const int64_t oh = win.out_h(s.h), ow = win.out_w(s.w), k = s.c * win.kh * win.kw;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    T* cp = cols.data<T>();
#pragma omp parallel for schedule(static) if (s.n * oh * ow * k >= kParallelMin)
    for (int64_t r = 0; r < s.n * oh * ow; ++r) {
      const int64_t n = r / (oh * ow), y0 = (r / ow) % oh * win.sh - win.ph, x0 = r % ow * win.sw - win.pw;
      T* row = cp + r * k;
      for (int64_t c = 0; c < s.c; ++c)
        for (int64_t i = 0; i < win.kh; ++i) {
          const int64_t yy = y0 + i;
          const bool inside = yy >= 0 && yy < s.h;
          const T* src = xp + ((n * s.c + c) * s.h + (inside ? yy : 0)) * s.w;
          T* dst = row + (c * win.kh + i) * win.kw;
          for (int64_t j = 0; j < win.kw; ++j) {
            const int64_t xx = x0 + j;
            dst[j] = inside && xx >= 0 && xx < s.w ? src[xx] : T(0);
          }
        }
    }
  });
}

void CpuBackend::col2im(const Tensor& cols, const Window2d& win, double beta, Tensor& x) {
  const Nchw s(x);
  const int64_t oh = win.out_h(s.h), ow = win.out_w(s.w), k = s.c * win.kh * win.kw;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* cp = cols.data<T>();
    T* xp = x.data<T>();
    // One (n, c) plane per task: each pixel is summed over the patches that hold it in a fixed
    // order (oh, ow, i, j ascending), whatever the thread count.
#pragma omp parallel for schedule(static) if (s.n * s.c * s.h * s.w >= kParallelMin)
    for (int64_t nc = 0; nc < s.n * s.c; ++nc) {
      const int64_t n = nc / s.c, c = nc % s.c;
      T* plane = xp + nc * s.h * s.w;
      for (int64_t p = 0; p < s.h * s.w; ++p) plane[p] = beta == 0.0 ? T(0) : static_cast<T>(beta) * plane[p];
      for (int64_t a = 0; a < oh; ++a)
        for (int64_t b = 0; b < ow; ++b) {
          const T* row = cp + ((n * oh + a) * ow + b) * k + c * win.kh * win.kw;
          const int64_t y0 = a * win.sh - win.ph, x0 = b * win.sw - win.pw;
          for (int64_t i = 0; i < win.kh; ++i) {
            const int64_t yy = y0 + i;
            if (yy < 0 || yy >= s.h) continue;
            for (int64_t j = 0; j < win.kw; ++j) {
              const int64_t xx = x0 + j;
              if (xx >= 0 && xx < s.w) plane[yy * s.w + xx] += row[i * win.kw + j];
            }
          }
        }
    }
  });
}

void CpuBackend::nchw_to_rows(const Tensor& x, Tensor& rows) {
  const Nchw s(x);
  const int64_t hw = s.h * s.w;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    T* rp = rows.data<T>();
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin)
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t c = 0; c < s.c; ++c)
        for (int64_t p = 0; p < hw; ++p) rp[(n * hw + p) * s.c + c] = xp[(n * s.c + c) * hw + p];
  });
}

void CpuBackend::rows_to_nchw(const Tensor& rows, Tensor& x) {
  const Nchw s(x);
  const int64_t hw = s.h * s.w;
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* rp = rows.data<T>();
    T* xp = x.data<T>();
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin)
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t c = 0; c < s.c; ++c)
        for (int64_t p = 0; p < hw; ++p) xp[(n * s.c + c) * hw + p] = rp[(n * hw + p) * s.c + c];
  });
}

void CpuBackend::maxpool_gather(const Tensor& x, const Tensor& g, const Window2d& win, Tensor& out) {
  const Nchw s(x);
  const int64_t oh = win.out_h(s.h), ow = win.out_w(s.w);
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    const T* gp = g.data<T>();
    T* op = out.data<T>();
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin)
    for (int64_t nc = 0; nc < s.n * s.c; ++nc)
      for (int64_t a = 0; a < oh; ++a)
        for (int64_t b = 0; b < ow; ++b) {
          const int64_t m = kernels::window_argmax(xp + nc * s.h * s.w, s.h, s.w, win, a, b);
          op[(nc * oh + a) * ow + b] = m < 0 ? T(0) : gp[nc * s.h * s.w + m];
        }
  });
}

void CpuBackend::maxpool_scatter(const Tensor& x, const Tensor& gy, const Window2d& win, double beta, Tensor& gx) {
  const Nchw s(x);
  const int64_t oh = win.out_h(s.h), ow = win.out_w(s.w);
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    const T* gp = gy.data<T>();
    T* dp = gx.data<T>();
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin)
    for (int64_t nc = 0; nc < s.n * s.c; ++nc) {
      T* plane = dp + nc * s.h * s.w;
      for (int64_t p = 0; p < s.h * s.w; ++p) plane[p] = beta == 0.0 ? T(0) : static_cast<T>(beta) * plane[p];
      for (int64_t a = 0; a < oh; ++a)
        for (int64_t b = 0; b < ow; ++b) {
          const int64_t m = kernels::window_argmax(xp + nc * s.h * s.w, s.h, s.w, win, a, b);
          if (m >= 0) plane[m] += gp[(nc * oh + a) * ow + b];
        }
    }
  });
}

void CpuBackend::channel_sum(const Tensor& x, double beta, Tensor& out) {
  const int64_t n = x.dim(0), c = x.dim(1), plane = plane_of(x);
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    T* op = out.data<T>();
    // Per channel: planes in order, each plane by chunked_sum's fixed chunking (float64).
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin)
    for (int64_t ch = 0; ch < c; ++ch) {
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const T* p = xp + (i * c + ch) * plane;
        for (int64_t k = 0; k < plane; ++k) s += static_cast<double>(p[k]);
      }
      op[ch] = static_cast<T>(beta == 0.0 ? s : s + beta * static_cast<double>(op[ch]));
    }
  });
}

void CpuBackend::channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift, Tensor& y) {
  const int64_t n = x.dim(0), c = x.dim(1), plane = plane_of(x);
  dispatch(x.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* xp = x.data<T>();
    const T* sp = scale.defined() ? scale.data<T>() : nullptr;
    const T* bp = shift.defined() ? shift.data<T>() : nullptr;
    T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin)
    for (int64_t nc = 0; nc < n * c; ++nc) {
      const int64_t ch = nc % c;
      const T a = sp ? sp[ch] : T(1), b = bp ? bp[ch] : T(0);
      const T* src = xp + nc * plane;
      T* dst = yp + nc * plane;
      if (sp && bp) for (int64_t k = 0; k < plane; ++k) dst[k] = src[k] * a + b;
      else if (sp) for (int64_t k = 0; k < plane; ++k) dst[k] = src[k] * a;
      else for (int64_t k = 0; k < plane; ++k) dst[k] = src[k] + b;
    }
  });
}

Backend& backend_for(Device device) {
  if (device.kind == DeviceKind::cpu) return cpu_backend();
  if (Backend* b = g_cuda_backend.load(std::memory_order_acquire)) return *b;
  throw std::runtime_error("backend_for: device " + device.str() +
                           " is not available in this build (the CUDA backend is not built in, "
                           "or iif::cuda::register_backend() was not called)");
}

}  // namespace iif
