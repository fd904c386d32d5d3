// The backend interface: the table of memory operations and numerical ops every device
// implements. Callers go through engine/ops.h, which checks shapes and dtypes and then
// dispatches here, so a backend may assume its arguments are valid.
//
// Conventions: tensors are row-major and contiguous; 2-D (rows, cols) unless stated.
// "Overwrite" ops replace their output; ops taking `beta` accumulate out = op + beta*out.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/projection.h"
#include "engine/tensor.h"
#include "kernels/window.cuh"  // Window2d

namespace iif {

struct SgdParams {
  double lr = 0.01;
  double momentum = 0.0;
  double weight_decay = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
};

struct AdamParams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // L2 added to the gradient (torch.optim.Adam semantics)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;

  // ---- memory -------------------------------------------------------------------------
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void deallocate(void* ptr, std::size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* dev_src, std::size_t bytes) = 0;
  virtual void copy_from_host(void* dev_dst, const void* host_src, std::size_t bytes) = 0;
  virtual void copy_on_device(void* dst, const void* src, std::size_t bytes) = 0;
  virtual void synchronize() {}

  // ---- elementwise --------------------------------------------------------------------
  virtual void fill(Tensor& x, double value) = 0;
  // dst = src converted to dst.dtype() (same numel).
  virtual void cast(const Tensor& src, Tensor& dst) = 0;
  // y = a*x + b*y
  virtual void axpby(double a, const Tensor& x, double b, Tensor& y) = 0;
  // out = a * b (elementwise; out may alias a or b)
  virtual void mul(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // y = max(x, 0)
  virtual void relu(const Tensor& x, Tensor& y) = 0;
  // dx = dy * (x > 0) + beta * dx
  virtual void relu_backward(const Tensor& x, const Tensor& dy, double beta, Tensor& dx) = 0;
  // mask[i] = (u(seed, stream, i) >= p) / (1 - p), u uniform in [0,1) from the counter RNG
  virtual void dropout_mask(Tensor& mask, double p, uint64_t seed, uint64_t stream) = 0;

  // ---- linear algebra -----------------------------------------------------------------
  // C(M,N) = alpha * op(A) * op(B) + beta * C, op = transpose when the flag is set.
  virtual void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b,
                    double beta, Tensor& c) = 0;
  // Y(B,N) += v(N) broadcast over rows.
  virtual void add_row_vector(const Tensor& v, Tensor& y) = 0;
  // out(N) = sum_b X(b,:) + beta * out
  virtual void sum_rows(const Tensor& x, double beta, Tensor& out) = 0;
  // Symmetric rank-k update (the Fisher / Gram accumulation): U is (N,P), C is (P,P),
  //   C = alpha * U^T U + beta * C.
  // The whole symmetric C is written (both triangles). With beta != 0, C must be symmetric on
  // entry (a backend may read only one triangle of it); with beta == 0, C is not read (it may
  // hold NaN). N == 0 gives C = beta * C.
  virtual void syrk(double alpha, const Tensor& u, double beta, Tensor& c) = 0;
  // Damped Cholesky solves of K independent systems, in place of B:
  //   A (K,P,P) symmetric (a backend may read either triangle), B (K,P,R), damping (K),
  //   B_k <- (A_k + damping[k] I)^{-1} B_k.  A is not modified.
  // Factorisation and solve run in float64 whatever the storage dtype (a float32 result is the
  // float64 solution rounded once), so the contract is the same on every device.
  // Throws std::runtime_error naming the first k (and the LAPACK-style info: the order of the
  // leading minor that is not positive definite) when A_k + damping[k] I is not positive
  // definite or holds NaN/Inf; B is then unspecified.
  virtual void batched_cholesky_solve(const Tensor& a, const std::vector<double>& damping,
                                      Tensor& b) = 0;

  // ---- random projections (DESIGN.md section 4; R = the RandomProjection's M x P matrix,
  // engine/projection.h and attribution/projector.h, generated on the fly, never stored) -----
  // Fused per-sample-gradient projection of a linear map y = x W^T + b, W (out, in), applied at
  // `positions` places per sample (1 for a Linear layer; the output pixels of a convolution,
  // whose x rows are the im2col patches), whose parameters are rows row0 .. of R (the weight
  // row-major, then the bias if `bias`):
  //   a (B * L, in) inputs, L = positions, rows b*L .. b*L + L - 1 those of sample b;
  //   d[k] (B * L, out) output cotangents; y[k] (B, P), k < d.size():
  //   y[k](b, c) += sum_{o,i} (sum_l d[k](bL+l,o) a(bL+l,i)) R[row0 + o*in + i][c]
  //                 (+ sum_o (sum_l d[k](bL+l,o)) R[row0 + out*in + o][c] with a bias).
  // Neither the per-sample gradients (B x in*out) nor R's block are materialised whole.
  // Accumulates, so the layers of a model are added one call after another.
  virtual void linear_project(const Tensor& a, const std::vector<Tensor>& d, int64_t positions, bool bias,
                              int64_t row0, const RandomProjection& r,
                              const std::vector<Tensor>& y) = 0;
  // Projection of given gradients: y (B, P) = g (B, m) R[row0 : row0 + m, :] + beta * y
  // (beta == 0: y is not read). m == 0 gives y = beta * y.
  virtual void project_rows(const Tensor& g, int64_t row0, const RandomProjection& r, double beta,
                            Tensor& y) = 0;

  // ---- model-batched ops: `batch` independent problems of one shape (nn/model_batch.h) ----
  // Each computes, for every k < batch, exactly what the unbatched op computes on slice k (the
  // same reduction order; for gemm_batched: ops::gemm run with one thread, as BLAS libraries
  // round differently with more), so a model trained in a batch matches one trained alone.
  // Results do not depend on the thread count.
  // Strided batched GEMM: C_k(M,N) = alpha * op(A_k) * op(B_k) + beta * C_k, C (batch,M,N).
  // A is (batch, ., .) or 2-D (one matrix shared by every k, stride 0), B likewise.
  virtual void gemm_batched(bool trans_a, bool trans_b, double alpha, const Tensor& a,
                            const Tensor& b, double beta, Tensor& c) = 0;
  // Y_k(R,N) += v_k(N) broadcast over rows; V (batch,N), Y (batch,R,N).
  virtual void add_row_vector_batched(const Tensor& v, Tensor& y) = 0;
  // out_k(N) = sum over rows of X_k(R,N) + beta * out_k, as sum_rows; X (batch,R,N), out (batch,N).
  virtual void sum_rows_batched(const Tensor& x, double beta, Tensor& out) = 0;
  // mask (batch, ...): slice k = dropout_mask(slice k, p, seeds[k], streams[k]) (index counted
  // from the start of the slice).
  virtual void dropout_mask_batched(Tensor& mask, double p, const std::vector<uint64_t>& seeds,
                                    const std::vector<uint64_t>& streams) = 0;

  // ---- reductions ---------------------------------------------------------------------
  virtual double sum(const Tensor& x) = 0;
  virtual double dot(const Tensor& a, const Tensor& b) = 0;
  // Index of the largest entry of each row of X(B,C) (first one on ties).
  virtual std::vector<int64_t> argmax_rows(const Tensor& x) = 0;

  // ---- losses -------------------------------------------------------------------------
  // Softmax cross-entropy with soft targets T(B,C) (any non-negative rows):
  //   loss(b) = -sum_c T(b,c) log softmax(Z(b,:))_c
  //   dZ(b,:) = (sum_c T(b,c)) softmax(Z(b,:)) - T(b,:)       (if dlogits is non-null)
  virtual void softmax_xent(const Tensor& logits, const Tensor& targets, Tensor& loss,
                            Tensor* dlogits) = 0;
  // Hessian of the soft-target cross-entropy with respect to the logits times a direction,
  // per row (the R-operator of dZ above): with p = softmax(Z(b,:)), s = sum_c T(b,c),
  //   out(b,:) = s * (diag(p) - p p^T) D(b,:) = s * (p .* D(b,:) - p * (p . D(b,:)))
  // Z, T, D, out all (B,C); out may alias D.
  virtual void softmax_xent_hvp(const Tensor& logits, const Tensor& targets, const Tensor& dir,
                                Tensor& out) = 0;
  // probs(b,:) = softmax(Z(b,:))
  virtual void softmax(const Tensor& logits, Tensor& probs) = 0;
  // Squared error: loss(b) = sum_c (P(b,c) - T(b,c))^2;  dP = 2 (P - T)
  virtual void mse(const Tensor& pred, const Tensor& target, Tensor& loss, Tensor* dpred) = 0;

  // ---- images (NCHW; DESIGN.md section 3). Default: throws naming the op and the backend,
  // so a backend that lacks one fails loudly (the op tests list which backends have each). ----
  // cols (N*OH*OW, C*kh*kw): row (n, oh, ow) holds the patch under the window at (oh, ow),
  // entry (c, i, j) = x(n, c, oh*sh - ph + i, ow*sw - pw + j), 0 outside the image.
  virtual void im2col(const Tensor& x, const Window2d& w, Tensor& cols);
  // The adjoint of im2col: x = (sum of every patch entry back at its pixel) + beta * x.
  virtual void col2im(const Tensor& cols, const Window2d& w, double beta, Tensor& x);
  // rows (N*H*W, C) = x (N,C,H,W) with channels last, and back.
  virtual void nchw_to_rows(const Tensor& x, Tensor& rows);
  virtual void rows_to_nchw(const Tensor& rows, Tensor& x);
  // Max pooling by the first maximum of x in each window (padding never wins):
  //   out (N,C,OH,OW) = g at the argmax of x's window; g has x's shape (g = x: the pooled max).
  virtual void maxpool_gather(const Tensor& x, const Tensor& g, const Window2d& w, Tensor& out);
  // Its adjoint: gx = (gy routed to each window's argmax of x, summed) + beta * gx.
  virtual void maxpool_scatter(const Tensor& x, const Tensor& gy, const Window2d& w, double beta, Tensor& gx);
  // Per channel of x (N,C,...): out(c) = sum over n and positions of x + beta * out(c) (C).
  virtual void channel_sum(const Tensor& x, double beta, Tensor& out);
  // y = x * scale(c) + shift(c) per channel of x (N,C,...); scale or shift may be undefined
  // (1 and 0). y may alias x.
  virtual void channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift, Tensor& y);

  // ---- data movement ------------------------------------------------------------------
  // dst(i, ...) = src(index[i], ...) along dim 0.
  virtual void gather_rows(const Tensor& src, const std::vector<int64_t>& index, Tensor& dst) = 0;

  // ---- optimizers (fused updates, PyTorch semantics) ----------------------------------
  // g' = g + wd p; v = momentum v + (1 - dampening) g' (v = g' on the first step);
  // p -= lr * (nesterov ? g' + momentum v : v)
  virtual void sgd_step(Tensor& param, const Tensor& grad, Tensor& velocity, const SgdParams& h,
                        bool first_step) = 0;
  // t = step number starting at 1.
  virtual void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                         const AdamParams& h, int64_t t) = 0;
};

// The backend that owns memory of `device`. Throws if that backend is not built in.
Backend& backend_for(Device device);

// Makes `backend` the one backend_for returns for every device of `kind` (the CPU backend is
// always there; a CUDA backend library registers itself with an explicit call, e.g.
// iif::cuda::register_backend(), never from a static initialiser, which a static library
// would drop). nullptr unregisters. Thread-safe; the backend must outlive its tensors.
void register_backend(DeviceKind kind, Backend* backend);

}  // namespace iif
