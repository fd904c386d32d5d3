// --device for the iif programs (see apps/setup.h): the resolver main() installs. Built into
// iif_cli (linked with iif_cuda when nvcc built it) and iif_emulated (linked with
// iif_cuda_emulated: the CUDA backend on the SIMT emulator, for testing without a GPU).
#include "apps/device.h"

#include <string>

#include "apps/cli_args.h"
#if defined(IIF_CUDA_BACKEND)
#include "engine/cuda/cuda_backend.h"
#endif

namespace iif {
namespace cli {

Device cli_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
#if defined(IIF_CUDA_BACKEND)
  const bool emulated = cuda::emulated();
  if (name == "auto") {
    if (emulated || !cuda::available()) return Device::cpu();
    cuda::register_backend();
    return cuda::device();
  }
  if (name == "cuda") {
    if (emulated)
      throw UsageError("--device cuda: this is iif_emulated (the CUDA backend on the SIMT emulator); "
                       "use --device cuda-emulated, or the iif program of a build with nvcc for a GPU");
    if (!cuda::available())
      throw UsageError("--device cuda: no CUDA device found (cudaGetDeviceCount reports none); use --device cpu");
    cuda::register_backend();
    return cuda::device();
  }
  if (name == "cuda-emulated") {
    if (!emulated)
      throw UsageError("--device cuda-emulated: only the iif_emulated program runs the CUDA backend on the "
                       "SIMT emulator; this iif uses a real GPU (--device cuda)");
    cuda::register_backend();
    return cuda::device();
  }
#else
  if (name == "auto") return Device::cpu();
  if (name == "cuda" || name == "cuda-emulated")
    throw UsageError("--device " + name + ": this iif was built without the CUDA backend (configure with "
                     "-DIIF_CUDA=ON and nvcc on PATH; iif_emulated runs --device cuda-emulated)");
#endif
  throw UsageError("--device: expected cpu, cuda or cuda-emulated, got '" + name + "'");
}

std::string device_summary() {
#if defined(IIF_CUDA_BACKEND)
  if (cuda::emulated()) return "cpu; cuda-emulated (CUDA backend on the SIMT emulator)";
  if (cuda::available()) {
    cuda::register_backend();
    return "cpu; cuda (" + backend_for(cuda::device()).name() + ")";
  }
  return "cpu; cuda backend built, but no CUDA device found";
#else
  return "cpu (built without the CUDA backend)";
#endif
}

}  // namespace cli
}  // namespace iif
