// The CUDA backend (engine/cuda/cuda_backend.h): the ops of engine/backend.h as launches of the
// kernels in kernels/*.cuh plus calls of the device layer (engine/cuda/device.h). Written once:
// nvcc compiles this file for iif_cuda; g++ compiles it (through cuda_backend_emulated.cpp)
// for iif_cuda_emulated, where the kernels run on the SIMT emulator. Shapes, dtypes and devices
// were checked by engine/ops.cpp before any of this runs.
//
// Row-major tensors meet column-major BLAS by transposition: row-major C(M,N) = op(A) op(B) is
// column-major C^T = op(B)^T op(A)^T, i.e. a column-major gemm with the operands swapped.
#include "engine/cuda/cuda_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cuda/device.h"
#include "engine/profile.h"
#include "kernels/cholesky.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/fisher.cuh"
#include "kernels/image.cuh"
#include "kernels/losses.cuh"
#include "kernels/optim.cuh"
#include "kernels/projection.cuh"
#include "kernels/random.cuh"
#include "kernels/reduce.cuh"

namespace iif {
namespace cuda {
namespace {

namespace k = ::iif::kernels;

k::stream_t S() { return static_cast<k::stream_t>(dev::stream()); }

std::atomic<int>& linalg_setting() {
  static std::atomic<int> v{[] {
    const char* e = std::getenv("IIF_CUDA_LINALG");
    if (!e || !*e || std::string(e) == "library") return static_cast<int>(Linalg::library);
    if (std::string(e) == "kernels") return static_cast<int>(Linalg::kernels);
    throw std::invalid_argument(std::string("IIF_CUDA_LINALG: expected library or kernels, got '") + e + "'");
  }()};
  return v;
}

k::RKind rkind(const RandomProjection& r) {
  return r.kind == RandomProjectionKind::gaussian ? k::RKind::gaussian : k::RKind::rademacher;
}

int checked_int(int64_t v, const char* what) {
  if (v < 0 || v > 2147483647)
    throw std::invalid_argument(std::string("cuda backend: ") + what + " = " + std::to_string(v) +
                                " does not fit a kernel's int");
  return static_cast<int>(v);
}

dev::Real real(DType t) { return t == DType::f32 ? dev::Real::f32 : dev::Real::f64; }

template <class F>
void dispatch(DType t, F&& f) {
  if (t == DType::f32)
    f(float{});
  else
    f(double{});
}

// Device scratch memory from the pool for the duration of a scope. Freed memory is reused only
// by work queued after the kernels that use it (one stream), so no synchronisation is needed.
class Buffer {
 public:
  explicit Buffer(std::size_t bytes) : p_(dev::allocate(bytes)), n_(bytes) {}
  ~Buffer() { dev::deallocate(p_, n_); }
  Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer& operator=(Buffer&&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_;
  std::size_t n_;
};

template <class T>
Buffer upload(const std::vector<T>& v) {
  Buffer b(v.size() * sizeof(T));
  dev::copy_from_host(b.as<void>(), v.data(), v.size() * sizeof(T));
  return b;
}

class CudaBackend final : public Backend {
 public:
  Device device() const override { return cuda::device(); }
  std::string name() const override { return "cuda (" + dev::description() + ")"; }

  void* allocate(std::size_t bytes) override { return dev::allocate(bytes); }
  void deallocate(void* p, std::size_t bytes) override { dev::deallocate(p, bytes); }
  void copy_to_host(void* d, const void* s, std::size_t n) override { dev::copy_to_host(d, s, n); }
  void copy_from_host(void* d, const void* s, std::size_t n) override { dev::copy_from_host(d, s, n); }
  void copy_on_device(void* d, const void* s, std::size_t n) override { dev::copy_on_device(d, s, n); }
  void synchronize() override { dev::synchronize(); }

  // ---- elementwise --------------------------------------------------------------------
  void fill(Tensor& x, double v) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::fill(x.data<T>(), x.numel(), static_cast<T>(v), S());
    });
  }

  void cast(const Tensor& src, Tensor& dst) override {
    if (src.dtype() == dst.dtype())
      dev::copy_on_device(dst.raw(), src.raw(), src.nbytes());
    else if (src.dtype() == DType::f32)
      k::cast(src.data<float>(), dst.data<double>(), src.numel(), S());
    else
      k::cast(src.data<double>(), dst.data<float>(), src.numel(), S());
  }

  void axpby(double a, const Tensor& x, double b, Tensor& y) override {
    dispatch(y.dtype(), [&](auto z) {
      using T = decltype(z);
      k::axpby(static_cast<T>(a), x.data<T>(), static_cast<T>(b), b == 0.0, y.data<T>(), y.numel(), S());
    });
  }

  void mul(const Tensor& a, const Tensor& b, Tensor& out) override {
    dispatch(out.dtype(), [&](auto z) {
      using T = decltype(z);
      k::mul(a.data<T>(), b.data<T>(), out.data<T>(), out.numel(), S());
    });
  }

  void relu(const Tensor& x, Tensor& y) override {
    dispatch(y.dtype(), [&](auto z) {
      using T = decltype(z);
      k::relu(x.data<T>(), y.data<T>(), y.numel(), S());
    });
  }

  void relu_backward(const Tensor& x, const Tensor& dy, double beta, Tensor& dx) override {
    dispatch(dx.dtype(), [&](auto z) {
      using T = decltype(z);
      k::relu_backward(x.data<T>(), dy.data<T>(), static_cast<T>(beta), beta == 0.0, dx.data<T>(),
                       dx.numel(), S());
    });
  }

  void dropout_mask(Tensor& mask, double p, uint64_t seed, uint64_t stream) override {
    dispatch(mask.dtype(), [&](auto z) {
      using T = decltype(z);
      k::dropout_mask(mask.data<T>(), 1, mask.numel(), nullptr, nullptr, seed, stream,
                      static_cast<float>(p), static_cast<T>(1.0 / (1.0 - p)), S());
    });
  }

  // ---- linear algebra -----------------------------------------------------------------
  // C = beta C for an empty inner dimension (beta == 0: C is not read), as the CPU backend.
  void scale_only(double beta, Tensor& c) {
    if (beta == 0.0)
      fill(c, 0.0);
    else
      axpby(beta, c, 0.0, c);  // not 0*C + beta*C: 0*Inf would be NaN
  }

  void gemm(bool ta, bool tb, double alpha, const Tensor& a, const Tensor& b, double beta,
            Tensor& c) override {
    const int m = static_cast<int>(c.dim(0)), n = static_cast<int>(c.dim(1));
    const int kk = static_cast<int>(ta ? a.dim(0) : a.dim(1));
    if (m == 0 || n == 0) return;
    if (kk == 0) return scale_only(beta, c);
    dev::gemm(real(c.dtype()), tb, ta, n, m, kk, alpha, b.raw(), static_cast<int>(b.dim(1)), a.raw(),
              static_cast<int>(a.dim(1)), beta, c.raw(), n);
  }

  void add_row_vector(const Tensor& v, Tensor& y) override {
    dispatch(y.dtype(), [&](auto z) {
      using T = decltype(z);
      k::add_row_vector(v.data<T>(), y.data<T>(), 1, y.dim(0), y.dim(1), S());
    });
  }

  void sum_rows(const Tensor& x, double beta, Tensor& out) override {
    dispatch(out.dtype(), [&](auto z) {
      using T = decltype(z);
      k::sum_rows(x.data<T>(), 1, x.dim(0), x.dim(1), beta, out.data<T>(), S());
    });
  }

  void syrk(double alpha, const Tensor& u, double beta, Tensor& c) override {
    // gemm-based: U (N,P) row-major is column-major X = U^T (P,N), and C = alpha X X^T + beta C
    // is one column-major gemm (both triangles); the row-major upper triangle is then mirrored
    // into the lower one so C is exactly symmetric (a GEMM need not round C_ij and C_ji alike).
    // beta == 0 zero-fills C first (the contract: C is not read), as the CPU backend does.
    const int64_t n = u.dim(0), p = u.dim(1);
    if (p == 0) return;
    if (linalg() == Linalg::kernels) {  // kernels/fisher.cuh: writes both triangles itself
      dispatch(c.dtype(), [&](auto z) {
        using T = decltype(z);
        k::syrk<T>(alpha, u.data<T>(), checked_int(n, "syrk N"), checked_int(p, "syrk P"), beta,
                   c.data<T>(), S());
      });
      return;
    }
    if (beta == 0.0) fill(c, 0.0);
    if (n == 0) {
      if (beta != 0.0 && beta != 1.0) axpby(beta, c, 0.0, c);
      return;
    }
    const int pi = static_cast<int>(p);
    dev::gemm(real(c.dtype()), false, true, pi, pi, static_cast<int>(n), alpha, u.raw(), pi, u.raw(),
              pi, beta, c.raw(), pi);
    dispatch(c.dtype(), [&](auto z) {
      using T = decltype(z);
      k::mirror_upper(c.data<T>(), p, S());
    });
  }

  void batched_cholesky_solve(const Tensor& a, const std::vector<double>& damping,
                              Tensor& b) override {
    // float64 workspaces on the device: W_k = A_k + damping_k I (row-major symmetric = the same
    // numbers column-major, handed over as 'U', like the CPU backend), X_k = B_k^T, i.e. B_k
    // column-major; potrf + potrs per matrix in the device layer; B_k = X_k^T rounded once.
    const int64_t kc = a.dim(0), p = a.dim(1), r = b.dim(2);
    if (kc == 0 || p == 0) return;
    if (linalg() == Linalg::kernels) return cholesky_kernels(a, damping, b);
    Buffer w(static_cast<std::size_t>(kc * p * p) * sizeof(double));
    Buffer x(static_cast<std::size_t>(kc * p * r) * sizeof(double));
    Buffer flags(static_cast<std::size_t>(kc) * sizeof(int));
    Buffer damp = upload(damping);
    dev::memset_zero(flags.as<void>(), static_cast<std::size_t>(kc) * sizeof(int));
    dispatch(a.dtype(), [&](auto z) {
      using T = decltype(z);
      k::damped_f64(a.data<T>(), damp.as<const double>(), w.as<double>(), flags.as<int>(), kc, p, S());
      if (r > 0) k::transpose_batched(b.data<T>(), x.as<double>(), kc, p, r, S());
    });
    const std::vector<int> info = dev::cholesky_solve_f64(static_cast<int>(p), static_cast<int>(r),
                                                          w.as<double>(), x.as<double>(),
                                                          static_cast<int>(kc));
    std::vector<int> nonfinite(static_cast<std::size_t>(kc));
    dev::copy_to_host(nonfinite.data(), flags.as<void>(), nonfinite.size() * sizeof(int));
    std::vector<int> codes(static_cast<std::size_t>(kc), 0);
    for (int64_t i = 0; i < kc; ++i) {
      if (info[i] < 0)
        throw std::logic_error("batched_cholesky_solve: matrix k = " + std::to_string(i) +
                               ": the solver rejected argument " + std::to_string(-info[i]));
      codes[i] = nonfinite[i] ? k::chol::kNonFinite : static_cast<int>(info[i]);
    }
    k::throw_on_cholesky_info(codes.data(), static_cast<int>(kc), static_cast<int>(p), damping.data());
    if (r == 0) return;
    dispatch(b.dtype(), [&](auto z) {
      using T = decltype(z);
      k::transpose_batched(x.as<const double>(), b.data<T>(), kc, r, p, S());
    });
  }

  // kernels/cholesky.cuh: one factor launch for all K matrices, one solve launch; K > 65535
  // is split into launches of at most 65535 matrices.
  void cholesky_kernels(const Tensor& a, const std::vector<double>& damping, Tensor& b) {
    const int64_t kc = a.dim(0), p = a.dim(1), r = b.dim(2);
    const int pi = checked_int(p, "batched_cholesky_solve P"), ri = checked_int(r, "batched_cholesky_solve R");
    Buffer damp = upload(damping);
    const int64_t per = 65535;
    for (int64_t k0 = 0; k0 < kc; k0 += per) {
      const int kn = static_cast<int>(std::min(per, kc - k0));
      Buffer ws(std::max<std::size_t>(k::cholesky_workspace_bytes(kn, pi, ri), 16));
      Buffer info(static_cast<std::size_t>(kn) * sizeof(int));
      dispatch(a.dtype(), [&](auto z) {
        using T = decltype(z);
        k::batched_cholesky_solve<T>(a.data<T>() + k0 * p * p, damp.as<const double>() + k0, kn, pi,
                                     b.data<T>() + k0 * p * r, ri, ws.as<void>(), info.as<int>(), S());
      });
      std::vector<int> h(static_cast<std::size_t>(kn));
      dev::copy_to_host(h.data(), info.as<void>(), h.size() * sizeof(int));
      // Name the matrix by its index in the whole batch, as the library path does.
      k::throw_on_cholesky_info(h.data(), kn, pi, damping.data() + k0, k0, kc);
    }
  }

  // ---- random projections -------------------------------------------------------------
  void linear_project(const Tensor& a, const std::vector<Tensor>& d, int64_t positions, bool bias, int64_t row0,
                      const RandomProjection& r, const std::vector<Tensor>& y) override {
    const int batch = checked_int(a.dim(0) / positions, "linear_project batch");
    const int l = checked_int(positions, "linear_project positions");
    const int in = checked_int(a.dim(1), "linear_project in"), out = checked_int(d[0].dim(1), "linear_project out");
    const int p = checked_int(r.dim, "linear_project P");
    // kernels::linear_project takes up to 4 cotangent sets per launch (they share the R tile).
    for (std::size_t k0 = 0; k0 < d.size(); k0 += 4) {
      const int count = static_cast<int>(std::min<std::size_t>(4, d.size() - k0));
      dispatch(a.dtype(), [&](auto z) {
        using T = decltype(z);
        const T* dp[4] = {};
        T* yp[4] = {};
        for (int q = 0; q < count; ++q) {
          dp[q] = d[k0 + q].data<T>();
          yp[q] = y[k0 + q].data<T>();
        }
        // Sample tiles beyond grid-y's 65535 x 32: split the batch.
        const int per = 65535 * k::proj::kTB;
        for (int b0 = 0; b0 < batch; b0 += per) {
          const int nb = std::min(per, batch - b0);
          const T* ds[4] = {};
          T* ys[4] = {};
          for (int q = 0; q < count; ++q) {
            ds[q] = dp[q] + static_cast<int64_t>(b0) * l * out;
            ys[q] = yp[q] + static_cast<int64_t>(b0) * p;
          }
          k::linear_project<T>(a.data<T>() + static_cast<int64_t>(b0) * l * in, ds, ys, count, nb, l, in, out, bias,
                               row0, p, rkind(r), r.seed, S());
        }
      });
    }
  }

  void project_rows(const Tensor& g, int64_t row0, const RandomProjection& r, double beta,
                    Tensor& y) override {
    const int batch = checked_int(g.dim(0), "project_rows batch");
    const int p = checked_int(r.dim, "project_rows P");
    const int64_t m = g.dim(1);
    dispatch(y.dtype(), [&](auto z) {
      using T = decltype(z);
      const int per = 65535 * k::proj::kTB;
      for (int b0 = 0; b0 < batch; b0 += per) {
        const int nb = std::min(per, batch - b0);
        k::project_rows<T>(g.data<T>() + static_cast<int64_t>(b0) * m, m, nb, m, row0, p, rkind(r), r.seed,
                           beta, y.data<T>() + static_cast<int64_t>(b0) * p, S());
      }
    });
  }

  // ---- model-batched ops --------------------------------------------------------------
  void gemm_batched(bool ta, bool tb, double alpha, const Tensor& a, const Tensor& b, double beta,
                    Tensor& c) override {
    const int64_t batch = c.dim(0), m = c.dim(1), n = c.dim(2);
    const int64_t ar = a.dim(a.ndim() - 2), ac = a.dim(a.ndim() - 1);
    const int64_t br = b.dim(b.ndim() - 2), bc = b.dim(b.ndim() - 1);
    const int64_t kk = ta ? ar : ac;
    if (batch == 0 || m == 0 || n == 0) return;
    if (kk == 0) return scale_only(beta, c);
    const int64_t sa = a.ndim() == 3 ? ar * ac : 0, sb = b.ndim() == 3 ? br * bc : 0;
    dev::gemm_strided_batched(real(c.dtype()), tb, ta, static_cast<int>(n), static_cast<int>(m),
                              static_cast<int>(kk), alpha, b.raw(), static_cast<int>(bc), sb, a.raw(),
                              static_cast<int>(ac), sa, beta, c.raw(), static_cast<int>(n), m * n,
                              static_cast<int>(batch));
  }

  void add_row_vector_batched(const Tensor& v, Tensor& y) override {
    dispatch(y.dtype(), [&](auto z) {
      using T = decltype(z);
      k::add_row_vector(v.data<T>(), y.data<T>(), y.dim(0), y.dim(1), y.dim(2), S());
    });
  }

  void sum_rows_batched(const Tensor& x, double beta, Tensor& out) override {
    dispatch(out.dtype(), [&](auto z) {
      using T = decltype(z);
      k::sum_rows(x.data<T>(), x.dim(0), x.dim(1), x.dim(2), beta, out.data<T>(), S());
    });
  }

  void dropout_mask_batched(Tensor& mask, double p, const std::vector<uint64_t>& seeds,
                            const std::vector<uint64_t>& streams) override {
    const int64_t batch = mask.dim(0);
    if (batch == 0) return;
    const int64_t per = mask.numel() / batch;
    Buffer sd = upload(seeds), st = upload(streams);
    dispatch(mask.dtype(), [&](auto z) {
      using T = decltype(z);
      k::dropout_mask(mask.data<T>(), batch, per, sd.as<const std::uint64_t>(),
                      st.as<const std::uint64_t>(), 0, 0, static_cast<float>(p),
                      static_cast<T>(1.0 / (1.0 - p)), S());
    });
  }

  // ---- reductions ---------------------------------------------------------------------
  double reduce(const Tensor& x, const Tensor* y) {
    Buffer partial((k::kReducePartials + 1) * sizeof(double));
    double* out = partial.as<double>() + k::kReducePartials;
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::sum_or_dot(x.data<T>(), y ? y->data<T>() : static_cast<const T*>(nullptr), x.numel(),
                    partial.as<double>(), out, S());
    });
    double result = 0.0;
    dev::copy_to_host(&result, out, sizeof(double));
    return result;
  }
  double sum(const Tensor& x) override { return reduce(x, nullptr); }
  double dot(const Tensor& a, const Tensor& b) override { return reduce(a, &b); }

  std::vector<int64_t> argmax_rows(const Tensor& x) override {
    const int64_t rows = x.dim(0), cols = x.dim(1);
    std::vector<int64_t> out(static_cast<std::size_t>(rows), 0);
    if (rows == 0) return out;
    Buffer d(static_cast<std::size_t>(rows) * sizeof(int64_t));
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::argmax_rows(x.data<T>(), rows, cols, d.as<std::int64_t>(), S());
    });
    dev::copy_to_host(out.data(), d.as<void>(), out.size() * sizeof(int64_t));
    return out;
  }

  // ---- losses -------------------------------------------------------------------------
  void softmax_xent(const Tensor& logits, const Tensor& targets, Tensor& loss,
                    Tensor* dlogits) override {
    dispatch(logits.dtype(), [&](auto z) {
      using T = decltype(z);
      k::softmax_xent(logits.data<T>(), targets.data<T>(), loss.data<T>(),
                      dlogits ? dlogits->data<T>() : static_cast<T*>(nullptr), logits.dim(0),
                      logits.dim(1), S());
    });
  }

  void softmax_xent_hvp(const Tensor& logits, const Tensor& targets, const Tensor& dir,
                        Tensor& out) override {
    dispatch(logits.dtype(), [&](auto z) {
      using T = decltype(z);
      k::softmax_xent_hvp(logits.data<T>(), targets.data<T>(), dir.data<T>(), out.data<T>(),
                          logits.dim(0), logits.dim(1), S());
    });
  }

  void softmax(const Tensor& logits, Tensor& probs) override {
    dispatch(logits.dtype(), [&](auto z) {
      using T = decltype(z);
      k::softmax(logits.data<T>(), probs.data<T>(), logits.dim(0), logits.dim(1), S());
    });
  }

  void mse(const Tensor& pred, const Tensor& target, Tensor& loss, Tensor* dpred) override {
    dispatch(pred.dtype(), [&](auto z) {
      using T = decltype(z);
      k::mse(pred.data<T>(), target.data<T>(), loss.data<T>(),
             dpred ? dpred->data<T>() : static_cast<T*>(nullptr), pred.dim(0), pred.dim(1), S());
    });
  }

  // ---- data movement ------------------------------------------------------------------
  void gather_rows(const Tensor& src, const std::vector<int64_t>& index, Tensor& dst) override {
    if (src.dim(0) == 0 || index.empty()) return;
    const int64_t row = src.numel() / src.dim(0);
    if (row == 0) return;
    Buffer idx = upload(index);
    dispatch(src.dtype(), [&](auto z) {
      using T = decltype(z);
      k::gather_rows(src.data<T>(), idx.as<const std::int64_t>(), dst.data<T>(),
                     static_cast<int64_t>(index.size()), row, S());
    });
  }

  // ---- images (kernels/image.cuh) -------------------------------------------------------
  void im2col(const Tensor& x, const Window2d& w, Tensor& cols) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::im2col(x.data<T>(), cols.data<T>(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), w, S());
    });
  }
  void col2im(const Tensor& cols, const Window2d& w, double beta, Tensor& x) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::col2im(cols.data<T>(), x.data<T>(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), w, static_cast<T>(beta),
                beta == 0.0, S());
    });
  }
  void nchw_to_rows(const Tensor& x, Tensor& rows) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::nchw_to_rows(x.data<T>(), rows.data<T>(), x.dim(0), x.dim(1), x.dim(2) * x.dim(3), S());
    });
  }
  void rows_to_nchw(const Tensor& rows, Tensor& x) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::rows_to_nchw(rows.data<T>(), x.data<T>(), x.dim(0), x.dim(1), x.dim(2) * x.dim(3), S());
    });
  }
  void maxpool_gather(const Tensor& x, const Tensor& g, const Window2d& w, Tensor& out) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::maxpool_select(x.data<T>(), g.data<T>(), out.data<T>(), x.dim(0) * x.dim(1), x.dim(2), x.dim(3), w, S());
    });
  }
  void maxpool_scatter(const Tensor& x, const Tensor& gy, const Window2d& w, double beta, Tensor& gx) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::maxpool_route(x.data<T>(), gy.data<T>(), gx.data<T>(), x.dim(0) * x.dim(1), x.dim(2), x.dim(3), w,
                       static_cast<T>(beta), beta == 0.0, S());
    });
  }
  static int64_t plane_of(const Tensor& t) {
    int64_t p = 1;
    for (int d = 2; d < t.ndim(); ++d) p *= t.dim(d);
    return p;
  }
  void channel_sum(const Tensor& x, double beta, Tensor& out) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::channel_sum(x.data<T>(), out.data<T>(), x.dim(0), x.dim(1), plane_of(x), beta, beta == 0.0, S());
    });
  }
  void channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift, Tensor& y) override {
    dispatch(x.dtype(), [&](auto z) {
      using T = decltype(z);
      k::channel_affine(x.data<T>(), scale.defined() ? scale.data<T>() : nullptr,
                        shift.defined() ? shift.data<T>() : nullptr, y.data<T>(), x.dim(0), x.dim(1), plane_of(x), S());
    });
  }

  // ---- optimizers ---------------------------------------------------------------------
  void sgd_step(Tensor& param, const Tensor& grad, Tensor& vel, const SgdParams& h,
                bool first_step) override {
    dispatch(param.dtype(), [&](auto z) {
      using T = decltype(z);
      k::sgd_step(param.data<T>(), grad.data<T>(), h.momentum != 0.0 ? vel.data<T>() : static_cast<T*>(nullptr),
                  param.numel(), static_cast<T>(h.lr), static_cast<T>(h.momentum),
                  static_cast<T>(h.weight_decay), static_cast<T>(1.0 - h.dampening),
                  h.weight_decay != 0.0, h.nesterov, first_step, S());
    });
  }

  void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamParams& h,
                 int64_t t) override {
    dispatch(param.dtype(), [&](auto z) {
      using T = decltype(z);
      const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(t));
      const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(t));
      k::adam_step(param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), param.numel(),
                   static_cast<T>(h.beta1), static_cast<T>(h.beta2), static_cast<T>(h.lr / bc1),
                   static_cast<T>(std::sqrt(bc2)), static_cast<T>(h.eps),
                   static_cast<T>(h.weight_decay), S());
    });
  }
};

// The profile table's clock on this backend: events on the one stream (CUDA events on a GPU;
// host time on the emulator, whose launches are synchronous).
class EventClock final : public profile::DeviceClock {
 public:
  void* mark() override {
    auto* e = new dev::Event;
    e->record();
    return e;
  }
  double seconds_between(void* start, void* end) override {
    return static_cast<dev::Event*>(end)->elapsed_ms_since(*static_cast<dev::Event*>(start)) / 1e3;
  }
  void release(void* m) override { delete static_cast<dev::Event*>(m); }
};

}  // namespace

Device device() { return Device{DeviceKind::cuda, 0}; }

Backend& backend() {
  static CudaBackend* b = new CudaBackend;  // never destroyed: tensors may be freed at exit
  return *b;
}

void register_backend() {
  iif::register_backend(DeviceKind::cuda, &backend());
  static EventClock* clock = new EventClock;  // never destroyed, like the backend
  profile::set_device_clock(clock);
}

bool available() { return dev::device_count() > 0; }

void set_linalg(Linalg which) { linalg_setting().store(static_cast<int>(which)); }
Linalg linalg() { return static_cast<Linalg>(linalg_setting().load()); }
const char* linalg_name(Linalg which) { return which == Linalg::kernels ? "kernels" : "library"; }
bool emulated() { return dev::emulated(); }

void top_k(const Tensor& x, int64_t kk, Tensor& values, std::vector<int64_t>& index) {
  if (x.device() != device() || x.ndim() != 1)
    throw std::invalid_argument("cuda::top_k: x must be a 1-D tensor on " + device().str() +
                                ", got " + x.shape().str() + " on " + x.device().str());
  const int64_t n = x.numel();
  if (kk < 0 || kk > n)
    throw std::invalid_argument("cuda::top_k: k = " + std::to_string(kk) + " is outside [0, " +
                                std::to_string(n) + "]");
  values = Tensor::empty(Shape{kk}, x.dtype(), device());
  index.assign(static_cast<std::size_t>(kk), 0);
  if (kk == 0) return;
  Buffer idx(static_cast<std::size_t>(kk) * sizeof(int64_t));
  dev::top_k(real(x.dtype()), x.raw(), n, kk, values.raw(), idx.as<std::int64_t>());
  dev::copy_to_host(index.data(), idx.as<void>(), index.size() * sizeof(int64_t));
}

}  // namespace cuda
}  // namespace iif
