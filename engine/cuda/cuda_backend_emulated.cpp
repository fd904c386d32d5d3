// The emulated build of the CUDA backend: the one source, engine/cuda/cuda_backend.cu, compiled
// by g++ (kernels on the SIMT emulator, device layer engine/cuda/device_emulated.cpp).
#include "engine/cuda/cuda_backend.cu"
