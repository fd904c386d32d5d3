// Shape/dtype/device validation for every backend op, then dispatch (see engine/ops.h).
#include "engine/ops.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace iif {
namespace ops {
namespace {

void check_device(const char* what, const Tensor& a, const Tensor& b) {
  if (a.device() != b.device())
    throw std::invalid_argument(std::string(what) + ": tensors live on " + a.device().str() +
                                " and " + b.device().str() + "; move one with .to()");
}

void check_defined(const char* what, const Tensor& t) {
  if (!t.defined()) throw std::invalid_argument(std::string(what) + ": undefined tensor");
}

void check_binary(const char* what, const Tensor& a, const Tensor& b) {
  check_defined(what, a);
  check_defined(what, b);
  check_same_shape(what, a, b);
  check_same_dtype(what, a, b);
  check_device(what, a, b);
}

Backend& be(const Tensor& t) { return backend_for(t.device()); }

}  // namespace

void fill(Tensor& x, double value) {
  check_defined("fill", x);
  be(x).fill(x, value);
}

void axpby(double a, const Tensor& x, double b, Tensor& y) {
  check_binary("axpby", x, y);
  be(y).axpby(a, x, b, y);
}

Tensor add(const Tensor& a, const Tensor& b) {
  check_binary("add", a, b);
  Tensor out = b.clone();
  be(out).axpby(1.0, a, 1.0, out);
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  check_binary("sub", a, b);
  Tensor out = a.clone();
  be(out).axpby(-1.0, b, 1.0, out);
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_binary("mul", a, b);
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  be(out).mul(a, b, out);
  return out;
}

Tensor scale(const Tensor& x, double a) {
  check_defined("scale", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  be(out).axpby(a, x, 0.0, out);
  return out;
}

Tensor relu(const Tensor& x) {
  check_defined("relu", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  be(y).relu(x, y);
  return y;
}

void mul_into(const Tensor& a, const Tensor& b, Tensor& out) {
  check_binary("mul_into", a, b);
  check_binary("mul_into (out)", a, out);
  be(out).mul(a, b, out);
}

void relu_into(const Tensor& x, Tensor& y) {
  check_binary("relu_into", x, y);
  be(y).relu(x, y);
}

void relu_backward(const Tensor& x, const Tensor& dy, double beta, Tensor& dx) {
  check_binary("relu_backward", x, dy);
  check_binary("relu_backward", x, dx);
  be(dx).relu_backward(x, dy, beta, dx);
}

Tensor dropout_mask(const Shape& shape, DType dtype, Device device, double p, uint64_t seed,
                    uint64_t stream) {
  if (!(p >= 0.0 && p < 1.0))
    throw std::invalid_argument("dropout: probability must be in [0, 1), got " + std::to_string(p));
  Tensor m = Tensor::empty(shape, dtype, device);
  backend_for(device).dropout_mask(m, p, seed, stream);
  return m;
}

void gemm(bool ta, bool tb, double alpha, const Tensor& a, const Tensor& b, double beta, Tensor& c) {
  check_defined("gemm", a);
  check_defined("gemm", b);
  check_defined("gemm", c);
  check_ndim("gemm (A)", a, 2);
  check_ndim("gemm (B)", b, 2);
  check_ndim("gemm (C)", c, 2);
  check_same_dtype("gemm", a, b);
  check_same_dtype("gemm", a, c);
  check_device("gemm", a, b);
  check_device("gemm", a, c);
  const int64_t m = ta ? a.dim(1) : a.dim(0), ka = ta ? a.dim(0) : a.dim(1);
  const int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
  if (ka != kb || c.dim(0) != m || c.dim(1) != n)
    throw std::invalid_argument("gemm: op(A) " + Shape{m, ka}.str() + " times op(B) " +
                                Shape{kb, n}.str() + " does not give C " + c.shape().str());
  be(c).gemm(ta, tb, alpha, a, b, beta, c);
}

Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  check_ndim("matmul (A)", a, 2);
  check_ndim("matmul (B)", b, 2);
  Tensor c = Tensor::empty({ta ? a.dim(1) : a.dim(0), tb ? b.dim(0) : b.dim(1)}, a.dtype(), a.device());
  gemm(ta, tb, 1.0, a, b, 0.0, c);
  return c;
}

void add_row_vector(const Tensor& v, Tensor& y) {
  check_ndim("add_row_vector (Y)", y, 2);
  check_ndim("add_row_vector (v)", v, 1);
  check_same_dtype("add_row_vector", v, y);
  check_device("add_row_vector", v, y);
  if (v.dim(0) != y.dim(1))
    throw std::invalid_argument("add_row_vector: vector " + v.shape().str() +
                                " does not match the columns of " + y.shape().str());
  be(y).add_row_vector(v, y);
}

void sum_rows(const Tensor& x, double beta, Tensor& out) {
  check_ndim("sum_rows (X)", x, 2);
  check_ndim("sum_rows (out)", out, 1);
  check_same_dtype("sum_rows", x, out);
  check_device("sum_rows", x, out);
  if (out.dim(0) != x.dim(1))
    throw std::invalid_argument("sum_rows: output " + out.shape().str() +
                                " does not match the columns of " + x.shape().str());
  be(out).sum_rows(x, beta, out);
}

void syrk(double alpha, const Tensor& u, double beta, Tensor& c) {
  check_defined("syrk (U)", u);
  check_defined("syrk (C)", c);
  check_ndim("syrk (U)", u, 2);
  check_ndim("syrk (C)", c, 2);
  check_same_dtype("syrk", u, c);
  check_device("syrk", u, c);
  if (c.dim(0) != u.dim(1) || c.dim(1) != u.dim(1))
    throw std::invalid_argument("syrk: U " + u.shape().str() + " gives U^T U of shape " +
                                Shape{u.dim(1), u.dim(1)}.str() + ", but C is " + c.shape().str());
  be(c).syrk(alpha, u, beta, c);
}

void linear_project(const Tensor& a, const std::vector<Tensor>& d, int64_t positions, bool bias, int64_t row0,
                    const RandomProjection& r, const std::vector<Tensor>& y) {
  check_defined("linear_project (a)", a);
  check_ndim("linear_project (a)", a, 2);
  if (d.empty() || d.size() != y.size())
    throw std::invalid_argument("linear_project: need one output per cotangent set and at least one, got " +
                                std::to_string(d.size()) + " cotangent sets and " +
                                std::to_string(y.size()) + " outputs");
  if (r.dim < 1 || row0 < 0 || positions < 1)
    throw std::invalid_argument("linear_project: need P >= 1, row0 >= 0 and positions >= 1, got P " +
                                std::to_string(r.dim) + ", row0 " + std::to_string(row0) + ", positions " +
                                std::to_string(positions));
  if (a.dim(0) % positions != 0)
    throw std::invalid_argument("linear_project: a " + a.shape().str() + " does not hold whole samples of " +
                                std::to_string(positions) + " positions");
  const int64_t rows = a.dim(0), b = rows / positions;
  int64_t out = -1;
  for (std::size_t k = 0; k < d.size(); ++k) {
    check_defined("linear_project (d)", d[k]);
    check_defined("linear_project (y)", y[k]);
    check_ndim("linear_project (d)", d[k], 2);
    check_ndim("linear_project (y)", y[k], 2);
    check_same_dtype("linear_project (a vs d)", a, d[k]);
    check_same_dtype("linear_project (a vs y)", a, y[k]);
    check_device("linear_project (a vs d)", a, d[k]);
    check_device("linear_project (a vs y)", a, y[k]);
    if (out < 0) out = d[k].dim(1);
    if (d[k].dim(0) != rows || d[k].dim(1) != out || y[k].dim(0) != b || y[k].dim(1) != r.dim)
      throw std::invalid_argument("linear_project: a " + a.shape().str() + ", d[" + std::to_string(k) +
                                  "] " + d[k].shape().str() + " and y[" + std::to_string(k) + "] " +
                                  y[k].shape().str() + " do not fit (expected d (B*L, out) and y (B, " +
                                  std::to_string(r.dim) + "), L = " + std::to_string(positions) + ")");
  }
  if (b == 0 || a.dim(1) == 0 || out == 0) return;
  be(a).linear_project(a, d, positions, bias, row0, r, y);
}

void project_rows(const Tensor& g, int64_t row0, const RandomProjection& r, double beta, Tensor& y) {
  check_defined("project_rows (g)", g);
  check_defined("project_rows (y)", y);
  check_ndim("project_rows (g)", g, 2);
  check_ndim("project_rows (y)", y, 2);
  check_same_dtype("project_rows", g, y);
  check_device("project_rows", g, y);
  if (r.dim < 1 || row0 < 0 || y.dim(0) != g.dim(0) || y.dim(1) != r.dim)
    throw std::invalid_argument("project_rows: g " + g.shape().str() + ", y " + y.shape().str() +
                                ", P " + std::to_string(r.dim) + ", row0 " + std::to_string(row0) +
                                " do not fit (expected y (B, P), P >= 1, row0 >= 0)");
  if (g.dim(0) == 0) return;
  be(y).project_rows(g, row0, r, beta, y);
}

void batched_cholesky_solve_into(const Tensor& a, const std::vector<double>& damping, Tensor& b) {
  check_defined("batched_cholesky_solve (A)", a);
  check_defined("batched_cholesky_solve (B)", b);
  check_same_dtype("batched_cholesky_solve", a, b);
  check_device("batched_cholesky_solve", a, b);
  if (a.ndim() == 2 && b.ndim() == 2) {  // one system: view as K = 1
    Tensor a3 = a.reshape({1, a.dim(0), a.dim(1)});
    Tensor b3 = b.reshape({1, b.dim(0), b.dim(1)});
    batched_cholesky_solve_into(a3, damping, b3);
    return;
  }
  if (a.ndim() != 3 || b.ndim() != 3)
    throw std::invalid_argument("batched_cholesky_solve: expected A (K,P,P) and B (K,P,R) or A (P,P) "
                                "and B (P,R), got A " + a.shape().str() + " and B " + b.shape().str());
  const int64_t k = a.dim(0), p = a.dim(1);
  if (a.dim(2) != p || b.dim(0) != k || b.dim(1) != p)
    throw std::invalid_argument("batched_cholesky_solve: A " + a.shape().str() + " and B " +
                                b.shape().str() + " do not match (expected A (K,P,P), B (K,P,R))");
  if (static_cast<int64_t>(damping.size()) != k)
    throw std::invalid_argument("batched_cholesky_solve: " + std::to_string(damping.size()) +
                                " damping values for " + std::to_string(k) + " matrices");
  for (std::size_t i = 0; i < damping.size(); ++i)
    if (!(damping[i] >= 0.0) || !std::isfinite(damping[i]))
      throw std::invalid_argument("batched_cholesky_solve: damping of matrix " + std::to_string(i) +
                                  " must be finite and >= 0, got " + std::to_string(damping[i]));
  be(b).batched_cholesky_solve(a, damping, b);
}

Tensor batched_cholesky_solve(const Tensor& a, const std::vector<double>& damping, const Tensor& b) {
  check_defined("batched_cholesky_solve (B)", b);
  Tensor x = b.clone();
  batched_cholesky_solve_into(a, damping, x);
  return x;
}

Tensor batched_cholesky_solve(const Tensor& a, double damping, const Tensor& b) {
  check_defined("batched_cholesky_solve (A)", a);
  const std::size_t k = a.ndim() == 3 ? static_cast<std::size_t>(a.dim(0)) : 1;
  return batched_cholesky_solve(a, std::vector<double>(k, damping), b);
}

void gemm_batched(bool ta, bool tb, double alpha, const Tensor& a, const Tensor& b, double beta,
                  Tensor& c) {
  check_defined("gemm_batched (A)", a);
  check_defined("gemm_batched (B)", b);
  check_defined("gemm_batched (C)", c);
  check_ndim("gemm_batched (C)", c, 3);
  for (const Tensor* t : {&a, &b})
    if (t->ndim() != 2 && t->ndim() != 3)
      throw std::invalid_argument("gemm_batched: operand " + t->shape().str() +
                                  " must be (batch, rows, cols) or (rows, cols) shared by all");
  check_same_dtype("gemm_batched", a, b);
  check_same_dtype("gemm_batched", a, c);
  check_device("gemm_batched", a, b);
  check_device("gemm_batched", a, c);
  const int64_t batch = c.dim(0);
  if ((a.ndim() == 3 && a.dim(0) != batch) || (b.ndim() == 3 && b.dim(0) != batch))
    throw std::invalid_argument("gemm_batched: batch sizes of A " + a.shape().str() + ", B " +
                                b.shape().str() + " and C " + c.shape().str() + " differ");
  const int ad = a.ndim() - 2, bd = b.ndim() - 2;
  const int64_t m = ta ? a.dim(ad + 1) : a.dim(ad), ka = ta ? a.dim(ad) : a.dim(ad + 1);
  const int64_t kb = tb ? b.dim(bd + 1) : b.dim(bd), n = tb ? b.dim(bd) : b.dim(bd + 1);
  if (ka != kb || c.dim(1) != m || c.dim(2) != n)
    throw std::invalid_argument("gemm_batched: op(A_k) " + Shape{m, ka}.str() + " times op(B_k) " +
                                Shape{kb, n}.str() + " does not give C_k of C " + c.shape().str());
  be(c).gemm_batched(ta, tb, alpha, a, b, beta, c);
}

void add_row_vector_batched(const Tensor& v, Tensor& y) {
  check_defined("add_row_vector_batched (v)", v);
  check_defined("add_row_vector_batched (Y)", y);
  check_ndim("add_row_vector_batched (V)", v, 2);
  check_ndim("add_row_vector_batched (Y)", y, 3);
  check_same_dtype("add_row_vector_batched", v, y);
  check_device("add_row_vector_batched", v, y);
  if (v.dim(0) != y.dim(0) || v.dim(1) != y.dim(2))
    throw std::invalid_argument("add_row_vector_batched: vectors " + v.shape().str() +
                                " do not match Y " + y.shape().str() + " (expected V (B,N), Y (B,R,N))");
  be(y).add_row_vector_batched(v, y);
}

void sum_rows_batched(const Tensor& x, double beta, Tensor& out) {
  check_defined("sum_rows_batched (X)", x);
  check_defined("sum_rows_batched (out)", out);
  check_ndim("sum_rows_batched (X)", x, 3);
  check_ndim("sum_rows_batched (out)", out, 2);
  check_same_dtype("sum_rows_batched", x, out);
  check_device("sum_rows_batched", x, out);
  if (out.dim(0) != x.dim(0) || out.dim(1) != x.dim(2))
    throw std::invalid_argument("sum_rows_batched: output " + out.shape().str() + " does not match X " +
                                x.shape().str() + " (expected X (B,R,N), out (B,N))");
  be(out).sum_rows_batched(x, beta, out);
}

void dropout_mask_batched_into(Tensor& mask, double p, const std::vector<uint64_t>& seeds,
                               const std::vector<uint64_t>& streams) {
  check_defined("dropout_mask_batched", mask);
  if (!(p >= 0.0 && p < 1.0))
    throw std::invalid_argument("dropout_mask_batched: probability must be in [0, 1), got " +
                                std::to_string(p));
  if (mask.ndim() < 1) throw std::invalid_argument("dropout_mask_batched: mask is a scalar");
  const auto batch = static_cast<std::size_t>(mask.dim(0));
  if (seeds.size() != batch || streams.size() != batch)
    throw std::invalid_argument("dropout_mask_batched: mask " + mask.shape().str() + " has " +
                                std::to_string(batch) + " slices but " + std::to_string(seeds.size()) +
                                " seeds and " + std::to_string(streams.size()) + " streams were given");
  be(mask).dropout_mask_batched(mask, p, seeds, streams);
}

void gather_rows_into(const Tensor& src, const std::vector<int64_t>& index, Tensor& dst) {
  check_defined("gather_rows_into (src)", src);
  check_defined("gather_rows_into (dst)", dst);
  check_same_dtype("gather_rows_into", src, dst);
  check_device("gather_rows_into", src, dst);
  if (src.ndim() < 1) throw std::invalid_argument("gather_rows_into: source is a scalar");
  const int64_t row = src.dim(0) ? src.numel() / src.dim(0) : 0;
  if (dst.numel() != static_cast<int64_t>(index.size()) * row)
    throw std::invalid_argument("gather_rows_into: " + std::to_string(index.size()) + " rows of " +
                                src.shape().str() + " do not fill dst " + dst.shape().str());
  for (int64_t i : index)
    if (i < 0 || i >= src.dim(0))
      throw std::invalid_argument("gather_rows_into: index " + std::to_string(i) +
                                  " outside dimension 0 of " + src.shape().str());
  be(src).gather_rows(src, index, dst);
}

double sum(const Tensor& x) {
  check_defined("sum", x);
  return be(x).sum(x);
}

double dot(const Tensor& a, const Tensor& b) {
  check_defined("dot", a);
  check_defined("dot", b);
  if (a.numel() != b.numel())
    throw std::invalid_argument("dot: " + a.shape().str() + " and " + b.shape().str() +
                                " differ in size");
  check_same_dtype("dot", a, b);
  check_device("dot", a, b);
  return be(a).dot(a, b);
}

std::vector<int64_t> argmax_rows(const Tensor& x) {
  check_ndim("argmax_rows", x, 2);
  if (x.dim(1) == 0) throw std::invalid_argument("argmax_rows: rows are empty " + x.shape().str());
  return be(x).argmax_rows(x);
}

void softmax_xent(const Tensor& logits, const Tensor& targets, Tensor& loss, Tensor* dlogits) {
  check_ndim("softmax_xent (logits)", logits, 2);
  check_binary("softmax_xent (logits, targets)", logits, targets);
  check_ndim("softmax_xent (loss)", loss, 1);
  check_same_dtype("softmax_xent", logits, loss);
  check_device("softmax_xent", logits, loss);
  if (loss.dim(0) != logits.dim(0))
    throw std::invalid_argument("softmax_xent: loss " + loss.shape().str() + " for logits " +
                                logits.shape().str());
  if (dlogits) check_binary("softmax_xent (dlogits)", logits, *dlogits);
  be(logits).softmax_xent(logits, targets, loss, dlogits);
}

Tensor softmax(const Tensor& logits) {
  check_ndim("softmax", logits, 2);
  Tensor p = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  be(p).softmax(logits, p);
  return p;
}

Tensor softmax_xent_hvp(const Tensor& logits, const Tensor& targets, const Tensor& dir) {
  check_ndim("softmax_xent_hvp (logits)", logits, 2);
  check_binary("softmax_xent_hvp (logits, targets)", logits, targets);
  check_binary("softmax_xent_hvp (logits, direction)", logits, dir);
  Tensor out = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  be(out).softmax_xent_hvp(logits, targets, dir, out);
  return out;
}

void mse(const Tensor& pred, const Tensor& target, Tensor& loss, Tensor* dpred) {
  check_ndim("mse (pred)", pred, 2);
  check_binary("mse (pred, target)", pred, target);
  check_ndim("mse (loss)", loss, 1);
  check_same_dtype("mse", pred, loss);
  check_device("mse", pred, loss);
  if (loss.dim(0) != pred.dim(0))
    throw std::invalid_argument("mse: loss " + loss.shape().str() + " for predictions " +
                                pred.shape().str());
  if (dpred) check_binary("mse (dpred)", pred, *dpred);
  be(pred).mse(pred, target, loss, dpred);
}

Tensor gather_rows(const Tensor& src, const std::vector<int64_t>& index) {
  check_defined("gather_rows", src);
  if (src.ndim() < 1) throw std::invalid_argument("gather_rows: source is a scalar");
  for (int64_t i : index)
    if (i < 0 || i >= src.dim(0))
      throw std::invalid_argument("gather_rows: index " + std::to_string(i) +
                                  " outside dimension 0 of " + src.shape().str());
  std::vector<int64_t> d = src.shape().vec();
  d[0] = static_cast<int64_t>(index.size());
  Tensor dst = Tensor::empty(Shape(d), src.dtype(), src.device());
  be(src).gather_rows(src, index, dst);
  return dst;
}

void sgd_step(Tensor& param, const Tensor& grad, Tensor& velocity, const SgdParams& h,
              bool first_step) {
  check_binary("sgd_step", param, grad);
  if (h.momentum != 0.0) check_binary("sgd_step (velocity)", param, velocity);
  be(param).sgd_step(param, grad, velocity, h, first_step);
}

void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamParams& h,
               int64_t t) {
  check_binary("adam_step", param, grad);
  check_binary("adam_step (m)", param, m);
  check_binary("adam_step (v)", param, v);
  if (t < 1) throw std::invalid_argument("adam_step: step count starts at 1");
  be(param).adam_step(param, grad, m, v, h, t);
}

Tensor one_hot(const std::vector<int64_t>& labels, int64_t classes, DType dtype, Device device) {
  if (classes < 0)
    throw std::invalid_argument("one_hot: number of classes must be >= 0, got " +
                                std::to_string(classes));
  std::vector<double> v(labels.size() * static_cast<std::size_t>(classes), 0.0);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= classes)
      throw std::invalid_argument("one_hot: label " + std::to_string(labels[i]) + " at position " +
                                  std::to_string(i) + " is outside [0, " + std::to_string(classes) + ")");
    v[i * classes + labels[i]] = 1.0;
  }
  return Tensor::from_vector(v, {static_cast<int64_t>(labels.size()), classes}, dtype, device);
}

// ---- images ----------------------------------------------------------------------------

namespace {
void check_nchw(const char* what, const Tensor& x) {
  check_defined(what, x);
  if (x.ndim() != 4)
    throw std::invalid_argument(std::string(what) + ": expected an NCHW tensor (4 dims), got " + x.shape().str());
}
void check_window(const char* what, const Window2d& w, int64_t h, int64_t wd) {
  if (w.kh < 1 || w.kw < 1 || w.sh < 1 || w.sw < 1 || w.ph < 0 || w.pw < 0)
    throw std::invalid_argument(std::string(what) + ": window " + std::to_string(w.kh) + "x" + std::to_string(w.kw) +
                                " stride " + std::to_string(w.sh) + "x" + std::to_string(w.sw) + " padding " +
                                std::to_string(w.ph) + "x" + std::to_string(w.pw) +
                                " (expected kernel and stride >= 1, padding >= 0)");
  if (h + 2 * w.ph < w.kh || wd + 2 * w.pw < w.kw)
    throw std::invalid_argument(std::string(what) + ": a " + std::to_string(w.kh) + "x" + std::to_string(w.kw) +
                                " window does not fit a padded " + std::to_string(h + 2 * w.ph) + "x" +
                                std::to_string(wd + 2 * w.pw) + " image");
}
Shape pooled(const Tensor& x, const Window2d& w) {
  return {x.dim(0), x.dim(1), w.out_h(x.dim(2)), w.out_w(x.dim(3))};
}
}  // namespace

Tensor im2col(const Tensor& x, const Window2d& w) {
  check_nchw("im2col", x);
  check_window("im2col", w, x.dim(2), x.dim(3));
  Tensor cols = Tensor::empty({x.dim(0) * w.out_h(x.dim(2)) * w.out_w(x.dim(3)), x.dim(1) * w.kh * w.kw},
                              x.dtype(), x.device());
  be(x).im2col(x, w, cols);
  return cols;
}

Tensor col2im(const Tensor& cols, const Window2d& w, const Shape& s) {
  check_defined("col2im", cols);
  if (s.ndim() != 4) throw std::invalid_argument("col2im: image shape " + s.str() + " is not NCHW");
  check_window("col2im", w, s[2], s[3]);
  const Shape want{s[0] * w.out_h(s[2]) * w.out_w(s[3]), s[1] * w.kh * w.kw};
  if (cols.shape() != want)
    throw std::invalid_argument("col2im: columns " + cols.shape().str() + " for image " + s.str() + " (expected " +
                                want.str() + ")");
  Tensor x = Tensor::empty(s, cols.dtype(), cols.device());
  be(cols).col2im(cols, w, 0.0, x);
  return x;
}

Tensor nchw_to_rows(const Tensor& x) {
  check_nchw("nchw_to_rows", x);
  Tensor rows = Tensor::empty({x.dim(0) * x.dim(2) * x.dim(3), x.dim(1)}, x.dtype(), x.device());
  be(x).nchw_to_rows(x, rows);
  return rows;
}

Tensor rows_to_nchw(const Tensor& rows, const Shape& s) {
  check_defined("rows_to_nchw", rows);
  if (s.ndim() != 4 || rows.shape() != Shape{s[0] * s[2] * s[3], s[1]})
    throw std::invalid_argument("rows_to_nchw: rows " + rows.shape().str() + " for image " + s.str() +
                                " (expected (N*H*W, C) for an NCHW shape)");
  Tensor x = Tensor::empty(s, rows.dtype(), rows.device());
  be(rows).rows_to_nchw(rows, x);
  return x;
}

Tensor maxpool_gather(const Tensor& x, const Tensor& g, const Window2d& w) {
  check_nchw("maxpool", x);
  check_binary("maxpool (x vs g)", x, g);
  check_window("maxpool", w, x.dim(2), x.dim(3));
  if (w.ph * 2 > w.kh || w.pw * 2 > w.kw)
    throw std::invalid_argument("maxpool: padding must be at most half the kernel size");
  Tensor out = Tensor::empty(pooled(x, w), x.dtype(), x.device());
  be(x).maxpool_gather(x, g, w, out);
  return out;
}

Tensor maxpool_scatter(const Tensor& x, const Tensor& gy, const Window2d& w) {
  check_nchw("maxpool_scatter", x);
  check_defined("maxpool_scatter", gy);
  check_window("maxpool_scatter", w, x.dim(2), x.dim(3));
  if (gy.shape() != pooled(x, w))
    throw std::invalid_argument("maxpool_scatter: cotangent " + gy.shape().str() + " for pooled shape " +
                                pooled(x, w).str());
  check_same_dtype("maxpool_scatter", x, gy);
  check_device("maxpool_scatter", x, gy);
  Tensor gx = Tensor::empty(x.shape(), x.dtype(), x.device());
  be(x).maxpool_scatter(x, gy, w, 0.0, gx);
  return gx;
}

Tensor channel_sum(const Tensor& x) {
  check_defined("channel_sum", x);
  if (x.ndim() < 2) throw std::invalid_argument("channel_sum: expected (N, C, ...), got " + x.shape().str());
  Tensor out = Tensor::empty({x.dim(1)}, x.dtype(), x.device());
  be(x).channel_sum(x, 0.0, out);
  return out;
}

Tensor channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift) {
  check_defined("channel_affine", x);
  if (x.ndim() < 2) throw std::invalid_argument("channel_affine: expected (N, C, ...), got " + x.shape().str());
  for (const Tensor* v : {&scale, &shift}) {
    if (!v->defined()) continue;
    if (v->shape() != Shape{x.dim(1)})
      throw std::invalid_argument("channel_affine: per-channel vector " + v->shape().str() + " for input " +
                                  x.shape().str() + " (expected (" + std::to_string(x.dim(1)) + ",))");
    check_same_dtype("channel_affine", x, *v);
    check_device("channel_affine", x, *v);
  }
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  be(x).channel_affine(x, scale, shift, y);
  return y;
}

}  // namespace ops
}  // namespace iif

// The image ops' defaults: a backend that does not implement one says so.
namespace iif {
namespace {
[[noreturn]] void missing(const Backend& b, const char* op) {
  throw std::logic_error(std::string("op ") + op + " is not implemented on the " + b.name() + " backend");
}
}  // namespace
void Backend::im2col(const Tensor&, const Window2d&, Tensor&) { missing(*this, "im2col"); }
void Backend::col2im(const Tensor&, const Window2d&, double, Tensor&) { missing(*this, "col2im"); }
void Backend::nchw_to_rows(const Tensor&, Tensor&) { missing(*this, "nchw_to_rows"); }
void Backend::rows_to_nchw(const Tensor&, Tensor&) { missing(*this, "rows_to_nchw"); }
void Backend::maxpool_gather(const Tensor&, const Tensor&, const Window2d&, Tensor&) { missing(*this, "maxpool_gather"); }
void Backend::maxpool_scatter(const Tensor&, const Tensor&, const Window2d&, double, Tensor&) {
  missing(*this, "maxpool_scatter");
}
void Backend::channel_sum(const Tensor&, double, Tensor&) { missing(*this, "channel_sum"); }
void Backend::channel_affine(const Tensor&, const Tensor&, const Tensor&, Tensor&) { missing(*this, "channel_affine"); }
}  // namespace iif
