# The kernel families of the CUDA backend (kernels/*.cuh): their emulated tests, benchmark and
# nvcc compile check. Included from the top-level CMakeLists.txt after the tests and after
# kernels/simt/simt.cmake (so iif_simt and iif_simt_test() exist).
#
# Attribution kernels (projection.cuh, fisher.cuh, cholesky.cuh):
#   test_kernels_attribution  doctest, run on the SIMT emulator (CTest label cuda-emulated)
#   bench_kernels             emulated timings as JSON lines (bench/bench_kernels.cpp); with CUDA
#                             enabled also GPU timings (bench/bench_kernels_gpu.cu, CUDA events)
#   iif_attribution_kernels_nvcc_check  OBJECT library of kernels/attribution_kernels.cu, built
#                             by nvcc only when CUDA is enabled in this build.

set(IIF_KERNELS_DIR ${CMAKE_CURRENT_LIST_DIR})
get_filename_component(IIF_KERNELS_ROOT ${IIF_KERNELS_DIR}/.. ABSOLUTE)

if(TARGET test_kernels_attribution)
  iif_simt_test(test_kernels_attribution)
  target_compile_options(test_kernels_attribution PRIVATE -Wall -Wextra)
endif()

if(TARGET bench_kernels AND TARGET iif_simt)
  target_link_libraries(bench_kernels PRIVATE iif_simt)
endif()

# CUDA: not enabled here (engine/cuda/cuda.cmake, included after this file, decides whether the
# build uses nvcc). If CUDA is enabled by the end of the top-level directory, nvcc compiles every
# attribution kernel and launcher for the configured architectures (deferred, so the decision
# of a file included later is seen).
include(CheckLanguage)
if(NOT CMAKE_CUDA_COMPILER)
  check_language(CUDA)  # sets CMAKE_CUDA_COMPILER when a usable nvcc exists (does not enable it)
endif()
function(iif_attribution_kernels_nvcc_check)
  get_property(langs GLOBAL PROPERTY ENABLED_LANGUAGES)
  if(CMAKE_CUDA_COMPILER AND "CUDA" IN_LIST langs)
    add_library(iif_attribution_kernels_nvcc_check OBJECT ${IIF_KERNELS_DIR}/attribution_kernels.cu)
    target_include_directories(iif_attribution_kernels_nvcc_check PRIVATE ${IIF_KERNELS_ROOT})
    target_compile_features(iif_attribution_kernels_nvcc_check PRIVATE cuda_std_17)
    message(STATUS "iif: nvcc compiles the attribution kernels (kernels/attribution_kernels.cu)")
    # The GPU half of bench_kernels: CUDA-event timings (prints "no GPU found" without a device).
    if(TARGET bench_kernels)
      find_package(CUDAToolkit QUIET)
      add_library(iif_bench_kernels_gpu STATIC ${IIF_KERNELS_ROOT}/bench/bench_kernels_gpu.cu)
      target_include_directories(iif_bench_kernels_gpu PRIVATE ${IIF_KERNELS_ROOT})
      target_compile_features(iif_bench_kernels_gpu PRIVATE cuda_std_17)
      if(TARGET CUDA::cudart)
        target_link_libraries(iif_bench_kernels_gpu PUBLIC CUDA::cudart)
      endif()
      target_link_libraries(bench_kernels PRIVATE iif_bench_kernels_gpu)
      target_compile_definitions(bench_kernels PRIVATE IIF_BENCH_KERNELS_GPU=1)
    endif()
  elseif(CMAKE_CUDA_COMPILER)
    message(STATUS "iif: nvcc found (${CMAKE_CUDA_COMPILER}) but CUDA is not enabled in this build; "
                   "kernels/attribution_kernels.cu is not compiled (by hand: "
                   "nvcc -std=c++17 -arch=sm_75 -I. -c kernels/attribution_kernels.cu)")
  endif()
endfunction()
if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.19)
  cmake_language(DEFER CALL iif_attribution_kernels_nvcc_check)
else()
  iif_attribution_kernels_nvcc_check()
endif()
