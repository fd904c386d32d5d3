// The plain-loop oracle for projections, shared by the projector and featurizer tests.
#pragma once

#include <cmath>
#include <vector>

#include "attribution/projector.h"

namespace iif_test {

// y = G R in long double with R from Projector::entry (not from the tile generator); also, per
// output entry, sum_j |G_j| |R_jc|: the scale of the rounding error of any summation order.
inline void project_oracle(const iif::attr::Projector& pr, const iif::Tensor& g, std::vector<double>& y,
                           std::vector<double>& mag) {
  const int64_t n = g.dim(0), m = g.dim(1), p = pr.output_dim();
  const std::vector<double> gv = g.to_vector();
  std::vector<double> r(static_cast<std::size_t>(m * p));
  for (int64_t j = 0; j < m; ++j)
    for (int64_t c = 0; c < p; ++c) r[j * p + c] = pr.entry(j, c);
  y.assign(static_cast<std::size_t>(n * p), 0.0);
  mag.assign(y.size(), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < p; ++c) {
      long double acc = 0, abs_acc = 0;
      for (int64_t j = 0; j < m; ++j) {
        acc += static_cast<long double>(gv[i * m + j]) * r[j * p + c];
        abs_acc += std::fabs(gv[i * m + j] * r[j * p + c]);
      }
      y[i * p + c] = static_cast<double>(acc);
      mag[i * p + c] = static_cast<double>(abs_acc);
    }
}

}  // namespace iif_test
