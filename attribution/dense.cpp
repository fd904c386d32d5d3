// Dense helpers for the attribution methods (see dense.h).
#include "attribution/dense.h"

namespace iif {
namespace attr {

double relative_damping(const Tensor& f, double rel) {
  const std::vector<double> v = f.to_vector();
  const int64_t p = f.dim(0);
  double tr = 0;
  for (int64_t i = 0; i < p; ++i) tr += v[i * p + i];
  return rel * (p > 0 ? tr / double(p) : 0.0) + 1e-30;
}

Tensor transpose(const Tensor& a) {
  const int64_t r = a.dim(0), c = a.dim(1);
  const std::vector<double> v = a.to_vector();
  std::vector<double> t(v.size());
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) t[j * r + i] = v[i * c + j];
  return Tensor::from_vector(t, {c, r}, DType::f64);
}

Tensor scale_rows(const Tensor& a, const std::vector<double>& s) {
  const int64_t r = a.dim(0), c = a.dim(1);
  std::vector<double> v = a.to_vector();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) v[i * c + j] *= s[i];
  return Tensor::from_vector(v, a.shape(), DType::f64);
}

std::vector<double> diagonal_of_product(const Tensor& a, const Tensor& bt) {
  const int64_t n = a.dim(0), p = a.dim(1);
  const std::vector<double> av = a.to_vector(), bv = bt.to_vector();
  std::vector<double> out(static_cast<std::size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < p; ++k) out[i] += av[i * p + k] * bv[k * n + i];
  return out;
}

std::vector<double> row_norms_squared(const Tensor& a) {
  const int64_t n = a.dim(0), p = a.dim(1);
  const std::vector<double> v = a.to_vector();
  std::vector<double> out(static_cast<std::size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < p; ++k) out[i] += v[i * p + k] * v[i * p + k];
  return out;
}

}  // namespace attr
}  // namespace iif
