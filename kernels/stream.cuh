// What every kernel family header includes: the SIMT shim (kernels/simt/simt.cuh: the CUDA
// runtime under nvcc, the emulator under g++) and the stream type its launchers take.
#pragma once

#include "kernels/simt/simt.cuh"

namespace iif {
namespace kernels {

// The stream a launcher enqueues on (the emulator runs launches synchronously and ignores it).
#if defined(__CUDACC__)
using stream_t = cudaStream_t;
#else
using stream_t = void*;
#endif

}  // namespace kernels
}  // namespace iif
