// Small dense helpers the attribution methods share (host loops in float64; the CUDA issue
// turns the hot ones into backend ops).
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace iif {
namespace attr {

// damping = rel * trace(F) / P (+ a tiny floor so an all-zero F still factors): a damping
// relative to the curvature's mean eigenvalue, so one default suits any model and P.
double relative_damping(const Tensor& f, double rel);
// (R, C) -> (C, R), float64.
Tensor transpose(const Tensor& a);
// Row i multiplied by s[i], float64.
Tensor scale_rows(const Tensor& a, const std::vector<double>& s);
// out[i] = a_i . b_i for rows of A (N, P) and columns of Bt (P, N): the diagonal of A Bt.
std::vector<double> diagonal_of_product(const Tensor& a, const Tensor& bt);
// Squared Euclidean norm of each row.
std::vector<double> row_norms_squared(const Tensor& a);

}  // namespace attr
}  // namespace iif
