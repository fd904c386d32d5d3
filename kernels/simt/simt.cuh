// The one header kernel files include: under nvcc the CUDA runtime plus `simt::launch` around
// <<<>>>; under g++ the host SIMT emulator (kernels/simt/runtime.h). A kernel written against
// it compiles for a GPU and runs on the CPU unchanged. See docs/simt.md.
#pragma once

#if defined(__CUDACC__)

#include <cuda_runtime_api.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

// One byte array for every kernel's dynamic shared memory (a typed `extern __shared__ T x[]`
// clashes across template instantiations under nvcc and does not link under g++).
#define SIMT_DYNAMIC_SHARED(T, name)                                     \
  extern __shared__ __align__(16) unsigned char simt_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(simt_dynamic_shared_)

namespace simt {

// The launch's grid with the caller's file:line (as on the emulator), for error messages.
struct Grid {
  dim3 dims;
  const char* file;
  int line;
  Grid(dim3 d, const char* f = __builtin_FILE(), int l = __builtin_LINE()) : dims(d), file(f), line(l) {}
  Grid(unsigned int x, const char* f = __builtin_FILE(), int l = __builtin_LINE()) : dims(x), file(f), line(l) {}
};

// kernel<<<grid, block, smem_bytes, stream>>>(args...), then the launch error, if any, thrown
// with the caller's file:line. Asynchronous, like <<<>>>; the calling file must be a .cu.
template <class... P, class... A>
void launch(void (*kernel)(P...), Grid grid, dim3 block, std::size_t smem_bytes, cudaStream_t stream,
            A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "simt::launch: wrong number of kernel arguments");
  kernel<<<grid.dims, block, smem_bytes, stream>>>(std::forward<A>(args)...);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string(grid.file) + ":" + std::to_string(grid.line) +
                             ": kernel launch failed: " + cudaGetErrorName(e) + ": " +
                             cudaGetErrorString(e));
  }
}

}  // namespace simt

#else  // g++: the emulator

#include "kernels/simt/runtime.h"

#endif
