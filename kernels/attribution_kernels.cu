// nvcc compile check of the attribution kernels (projection, Fisher, Cholesky) and the custom-layer
// example's LayerScale kernels: the same headers
// the emulator tests run (tests/test_kernels_attribution.cpp), built for a real GPU, every
// kernel and launcher instantiated for float32 and float64. Never run here; `nvcc -c` of this
// file must succeed without warnings:
//   nvcc -std=c++17 -arch=sm_75 -I. -c kernels/attribution_kernels.cu
// kernels/kernels.cmake builds it as an OBJECT library when CUDA is enabled.
#include "kernels/cholesky.cuh"
#include "kernels/fisher.cuh"
#include "kernels/layerscale.cuh"
#include "kernels/projection.cuh"

namespace iif {
namespace kernels {

// Taking each launcher's address makes nvcc emit it and the kernel templates it instantiates.
using Multi32 = void (*)(const float*, const float* const*, float* const*, int, int, int, int, bool, int64_t, int,
                         RKind, uint64_t, stream_t);
using Multi64 = void (*)(const double*, const double* const*, double* const*, int, int, int, int, bool, int64_t,
                         int, RKind, uint64_t, stream_t);
using Pos32 = void (*)(const float*, const float* const*, float* const*, int, int, int, int, int, bool, int64_t, int,
                       RKind, uint64_t, stream_t);
using Pos64 = void (*)(const double*, const double* const*, double* const*, int, int, int, int, int, bool, int64_t,
                       int, RKind, uint64_t, stream_t);
using One32 = void (*)(const float*, const float*, float*, int, int, int, bool, int64_t, int, RKind, uint64_t,
                       stream_t);
using One64 = void (*)(const double*, const double*, double*, int, int, int, bool, int64_t, int, RKind, uint64_t,
                       stream_t);

extern void (*const kAttributionLaunchers[])();
void (*const kAttributionLaunchers[])() = {
    reinterpret_cast<void (*)()>(static_cast<Multi32>(&linear_project<float>)),
    reinterpret_cast<void (*)()>(static_cast<Multi64>(&linear_project<double>)),
    reinterpret_cast<void (*)()>(static_cast<Pos32>(&linear_project<float>)),
    reinterpret_cast<void (*)()>(static_cast<Pos64>(&linear_project<double>)),
    reinterpret_cast<void (*)()>(static_cast<One32>(&linear_project<float>)),
    reinterpret_cast<void (*)()>(static_cast<One64>(&linear_project<double>)),
    reinterpret_cast<void (*)()>(&project_rows<float>),
    reinterpret_cast<void (*)()>(&project_rows<double>),
    reinterpret_cast<void (*)()>(&syrk<float>),
    reinterpret_cast<void (*)()>(&syrk<double>),
    reinterpret_cast<void (*)()>(&batched_cholesky_solve<float>),
    reinterpret_cast<void (*)()>(&batched_cholesky_solve<double>),
    // The custom-layer example's kernels (examples/custom_layer.cpp, docs/gpu.md).
    reinterpret_cast<void (*)()>(&layerscale_forward<float>),
    reinterpret_cast<void (*)()>(&layerscale_backward<float>),
};

}  // namespace kernels
}  // namespace iif
