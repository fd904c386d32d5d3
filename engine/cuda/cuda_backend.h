// The CUDA backend: every op of engine/backend.h on tensors of Device{DeviceKind::cuda, 0},
// from the hand-written kernels (kernels/*.cuh) and the device layer (engine/cuda/device.h:
// cuBLAS/cuSOLVER/CUB on a GPU). The same source is built twice (engine/cuda/cuda.cmake):
//   iif_cuda           nvcc, for a real GPU;
//   iif_cuda_emulated  g++, kernels on the SIMT emulator, BLAS/LAPACK on the host.
// Link one of them, call iif::cuda::register_backend() once, and tensors on Device cuda work
// everywhere the engine uses backend_for().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace iif {
namespace cuda {

// Device{DeviceKind::cuda, 0}.
Device device();
// The backend object (created on first use, never destroyed).
Backend& backend();
// Makes backend_for(Device cuda) return backend(). Idempotent.
void register_backend();
// Whether a device is there: false with no GPU/driver; always true for the emulated build.
bool available();
// True for iif_cuda_emulated.
bool emulated();

// Which implementation the CUDA backend's syrk and batched_cholesky_solve use:
//   library  cuBLAS gemm + mirror, cuSOLVER potrf/potrs per matrix (on the emulator: OpenBLAS,
//            LAPACKE) - the default;
//   kernels  the hand-written kernels/fisher.cuh syrk and kernels/cholesky.cuh batched Cholesky
//            (one launch for all K matrices; on the emulator they run on the SIMT emulator).
// The initial value comes from the environment variable IIF_CUDA_LINALG=library|kernels (read
// once, on first use); anything else there throws. Thread-safe.
enum class Linalg { library, kernels };
void set_linalg(Linalg which);
Linalg linalg();
const char* linalg_name(Linalg which);

// The k largest entries of the 1-D tensor x (on cuda) and their indices, largest first, ties
// by smaller index (device radix sort: CUB on a GPU). x must not hold NaN.
void top_k(const Tensor& x, int64_t k, Tensor& values, std::vector<int64_t>& index);

}  // namespace cuda
}  // namespace iif
