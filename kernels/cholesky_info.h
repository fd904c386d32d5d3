// The errors of the batched_cholesky_solve op (engine/backend.h), one text for every backend
// and solver: the CPU backend (LAPACKE), the CUDA backend's cuSOLVER path and the hand-written
// kernels of kernels/cholesky.cuh all report a failed matrix through these info codes. Host
// code only, no CUDA: the CPU backend includes it too.
#pragma once

#include <stdexcept>
#include <string>

namespace iif {
namespace kernels {
namespace chol {
// info[k]: 0 = factorised; j > 0 = the leading minor of order j is not positive definite
// (LAPACK potrf's info); kNonFinite = A_k holds NaN or Inf (checked before damping is added).
constexpr int kNonFinite = -1;
}  // namespace chol

// Throws for the first k with info[k] != 0 (info and damping on the host); returns if all
// succeeded. k is named as k_first + k of k_total, for callers that solve a batch in pieces.
inline void throw_on_cholesky_info(const int* info, int k_count, int p, const double* damping,
                                   long long k_first = 0, long long k_total = -1) {
  if (k_total < 0) k_total = k_count;
  for (int k = 0; k < k_count; ++k) {
    if (info[k] == 0) continue;
    const std::string which = "batched_cholesky_solve: matrix k = " + std::to_string(k_first + k) + " of " +
                              std::to_string(k_total) + " (P = " + std::to_string(p) + ")";
    if (info[k] == chol::kNonFinite) throw std::runtime_error(which + " holds NaN or Inf");
    if (info[k] > 0)
      throw std::runtime_error(which + " is not positive definite even with damping " +
                               std::to_string(damping[k]) + ": potrf info = " + std::to_string(info[k]) +
                               " (the leading minor of order " + std::to_string(info[k]) +
                               " is not positive definite); use a larger damping");
    throw std::logic_error(which + ": unknown info " + std::to_string(info[k]));
  }
}

}  // namespace kernels
}  // namespace iif
