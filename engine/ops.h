// The checked front door to the backend ops: every function validates shapes, dtypes and
// devices (throwing std::invalid_argument with the shapes in the message) and dispatches to the
// backend that owns the tensors. Allocating forms return new tensors; `_into` forms write.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "engine/tensor.h"

namespace iif {
namespace ops {

void fill(Tensor& x, double value);
// y = a*x + b*y
void axpby(double a, const Tensor& x, double b, Tensor& y);
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double a);
Tensor relu(const Tensor& x);
// out = a * b elementwise into an existing tensor (out may alias a or b).
void mul_into(const Tensor& a, const Tensor& b, Tensor& out);
// y = max(x, 0) into an existing tensor (y may alias x).
void relu_into(const Tensor& x, Tensor& y);
// dx = dy * (x > 0) + beta * dx
void relu_backward(const Tensor& x, const Tensor& dy, double beta, Tensor& dx);
Tensor dropout_mask(const Shape& shape, DType dtype, Device device, double p, uint64_t seed,
                    uint64_t stream);

// C = alpha op(A) op(B) + beta C ; A, B, C 2-D.
void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b, double beta,
          Tensor& c);
// op(A) op(B) as a new tensor.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// Y(B,N) += v(N)
void add_row_vector(const Tensor& v, Tensor& y);
// out(N) = sum over rows of X(B,N) + beta*out
void sum_rows(const Tensor& x, double beta, Tensor& out);

// Symmetric rank-k update, U (N,P), C (P,P):  C = alpha * U^T U + beta * C.
// Overwrite mode: beta = 0 (C is not read). Accumulate mode: beta = 1 (Fisher sums in chunks);
// C must then be symmetric. Both triangles of C are written. N may be 0.
void syrk(double alpha, const Tensor& u, double beta, Tensor& c);

// Damped Cholesky solves X_k = (A_k + damping_k I)^{-1} B_k of K independent symmetric
// positive-definite systems: A (K,P,P), B (K,P,R) -> X (K,P,R); or A (P,P), B (P,R) -> X (P,R)
// (K = 1). A and B share dtype (float32 or float64) and device; the solve runs in float64 either
// way. damping >= 0, finite; the vector form gives one per matrix (size K).
// Throws std::runtime_error naming k and LAPACK's info when A_k + damping_k I is not positive
// definite: use a larger damping.
Tensor batched_cholesky_solve(const Tensor& a, double damping, const Tensor& b);
Tensor batched_cholesky_solve(const Tensor& a, const std::vector<double>& damping, const Tensor& b);
// In place: B <- X (same shapes as above).
void batched_cholesky_solve_into(const Tensor& a, const std::vector<double>& damping, Tensor& b);

// Random projections (engine/backend.h has the contracts): the fused per-sample-gradient
// projection of a linear map at `positions` places per sample (a Linear layer: 1; a Conv2d: its
// output pixels, a = patches), y[k] += proj(sum over positions of d[k] x a) for every k (1 or
// more cotangent sets, y[k] (B, P) views may be rows of larger tensors), and the projection of
// given gradients y = g R[row0 : row0 + m, :] + beta y. All tensors of one dtype and device.
void linear_project(const Tensor& a, const std::vector<Tensor>& d, int64_t positions, bool bias, int64_t row0,
                    const RandomProjection& r, const std::vector<Tensor>& y);
void project_rows(const Tensor& g, int64_t row0, const RandomProjection& r, double beta, Tensor& y);

// ---- model-batched ops: B independent problems of one shape (nn/model_batch.h) -----------
// Slice k of each gives the same bits as the unbatched op on slice k (gemm: ops::gemm with one
// thread), whatever the thread count.
// Strided batched GEMM: C_k = alpha op(A_k) op(B_k) + beta C_k for k < B, C (B,M,N);
// A (B,.,.) or 2-D (one matrix shared by every k), B likewise; B = 0 and empty slices allowed.
void gemm_batched(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b,
                  double beta, Tensor& c);
// Y_k(R,N) += v_k(N): V (B,N), Y (B,R,N).
void add_row_vector_batched(const Tensor& v, Tensor& y);
// out_k(N) = sum over rows of X_k(R,N) + beta * out_k: X (B,R,N), out (B,N).
void sum_rows_batched(const Tensor& x, double beta, Tensor& out);
// In place, mask (B, ...): slice k = dropout_mask(slice shape, p, seeds[k], streams[k]).
void dropout_mask_batched_into(Tensor& mask, double p, const std::vector<uint64_t>& seeds,
                               const std::vector<uint64_t>& streams);
// gather_rows into an existing tensor of index.size() * (one row of src) elements, any shape
// (e.g. (B, R, features) for B*R indices).
void gather_rows_into(const Tensor& src, const std::vector<int64_t>& index, Tensor& dst);

double sum(const Tensor& x);
double dot(const Tensor& a, const Tensor& b);
std::vector<int64_t> argmax_rows(const Tensor& x);

// Softmax cross-entropy with soft targets; per-row loss (B) and optionally dL/dZ (B,C).
void softmax_xent(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor* dlogits);
Tensor softmax(const Tensor& logits);
// The cross-entropy's logit Hessian times a direction, per row (the R-operator of dlogits):
// out(b,:) = (sum_c T(b,c)) (diag(p_b) - p_b p_b^T) D(b,:), p_b = softmax(Z(b,:)); all (B,C).
Tensor softmax_xent_hvp(const Tensor& logits, const Tensor& targets, const Tensor& dir);
// Squared error summed over columns; per-row loss (B) and optionally dL/dP = 2(P - T).
void mse(const Tensor& pred, const Tensor& target, Tensor& loss, Tensor* dpred);

// dst rows = src rows at `index` (host indices); dst has shape (index.size(), src.shape[1:]).
Tensor gather_rows(const Tensor& src, const std::vector<int64_t>& index);

void sgd_step(Tensor& param, const Tensor& grad, Tensor& velocity, const SgdParams& h,
              bool first_step);
void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamParams& h,
               int64_t t);

// ---- images (NCHW; the contracts are in engine/backend.h) ---------------------------------
// x (N,C,H,W) -> cols (N*OH*OW, C*kh*kw); col2im is its adjoint (x of the given shape).
Tensor im2col(const Tensor& x, const Window2d& w);
Tensor col2im(const Tensor& cols, const Window2d& w, const Shape& x_shape);
// (N,C,H,W) -> (N*H*W, C) and back (to the given NCHW shape).
Tensor nchw_to_rows(const Tensor& x);
Tensor rows_to_nchw(const Tensor& rows, const Shape& x_shape);
// Max pooling: g at the first argmax of each window of x (g = x gives the pooled values), and
// its adjoint, gy routed back to the argmaxes (x's shape).
Tensor maxpool_gather(const Tensor& x, const Tensor& g, const Window2d& w);
Tensor maxpool_scatter(const Tensor& x, const Tensor& gy, const Window2d& w);
// Per-channel sum over (N, ...) of x (N,C,...) -> (C), and y = x * scale(c) + shift(c) (either
// may be undefined).
Tensor channel_sum(const Tensor& x);
Tensor channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift);

// One-hot rows (B, classes) for integer labels, in the given dtype and device.
Tensor one_hot(const std::vector<int64_t>& labels, int64_t classes, DType dtype, Device device);

}  // namespace ops
}  // namespace iif
