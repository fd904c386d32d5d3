# The CUDA backend (engine/cuda/, kernels/*.cuh), included from the top-level CMakeLists.txt
# after the tests and kernels/simt/simt.cmake. Two libraries from one source:
#   iif_cuda_emulated  ALWAYS: g++, the kernels on the SIMT emulator, the device layer on host
#                      memory + OpenBLAS/LAPACKE (engine/cuda/device_emulated.cpp).
#   iif_cuda           when nvcc is there (IIF_CUDA=AUTO finds it, ON requires it): nvcc, CUDA
#                      runtime + cuBLAS + cuSOLVER + CUB (engine/cuda/device_cuda.cu), for
#                      IIF_CUDA_ARCHITECTURES.
# Link one of them and call iif::cuda::register_backend() (engine/cuda/cuda_backend.h).
# Tests: tests/test_cuda_backend.cpp runs against iif_cuda_emulated (CTest label
# cuda-emulated) and, as test_cuda_backend_native, against iif_cuda (label cuda; it skips when
# cudaGetDeviceCount finds no device, as on every machine of this project).

set(IIF_CUDA AUTO CACHE STRING "Build the CUDA backend with nvcc: AUTO (if nvcc is found), ON, OFF")
set_property(CACHE IIF_CUDA PROPERTY STRINGS AUTO ON OFF)
set(IIF_CUDA_DIR ${CMAKE_CURRENT_LIST_DIR})
get_filename_component(IIF_CUDA_ROOT ${IIF_CUDA_DIR}/../.. ABSOLUTE)

# ---- the emulated backend (always) ---------------------------------------------------------
add_library(iif_cuda_emulated STATIC
  ${IIF_CUDA_DIR}/device_emulated.cpp
  ${IIF_CUDA_DIR}/cuda_backend_emulated.cpp)
target_include_directories(iif_cuda_emulated PUBLIC $<BUILD_INTERFACE:${IIF_CUDA_ROOT}>)
target_link_libraries(iif_cuda_emulated PUBLIC iif iif_simt PRIVATE IIF::OpenBLAS)
target_compile_options(iif_cuda_emulated PRIVATE -Wall -Wextra -fno-fast-math)
target_compile_definitions(iif_cuda_emulated INTERFACE IIF_CUDA_BACKEND=1 IIF_CUDA_EMULATED=1)

# ---- the real backend (nvcc) ---------------------------------------------------------------
set(IIF_CUDA_ENABLED OFF)
if(NOT IIF_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # A default the installed toolkit accepts: CUDA 13 dropped sm_70 (V100); 11.8 and 12.x
    # keep it. Short on purpose: every architecture is one more device compile of each .cu.
    execute_process(COMMAND ${CMAKE_CUDA_COMPILER} --version OUTPUT_VARIABLE _iif_nvcc_version
                    ERROR_QUIET)
    string(REGEX MATCH "release ([0-9]+)\\.([0-9]+)" _iif_nvcc_release "${_iif_nvcc_version}")
    if(CMAKE_MATCH_1 AND CMAKE_MATCH_1 GREATER_EQUAL 13)
      set(_iif_cuda_arch_default "75;80;90")
    else()
      set(_iif_cuda_arch_default "70;75;80")
    endif()
    set(IIF_CUDA_ARCHITECTURES "${_iif_cuda_arch_default}" CACHE STRING
        "GPU architectures of iif_cuda (CMake CUDA_ARCHITECTURES syntax)")
    # Cached, so that on a re-configure the nvcc targets created before this file (with
    # CMAKE_CUDA_COMPILER already in the cache, e.g. iif_simt_nvcc_check) get it too.
    if(NOT CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "${IIF_CUDA_ARCHITECTURES}" CACHE STRING
          "GPU architectures of the CUDA targets (default: IIF_CUDA_ARCHITECTURES)" FORCE)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    foreach(_iif_t iif_simt_nvcc_check)
      if(TARGET ${_iif_t})
        get_target_property(_iif_arch ${_iif_t} CUDA_ARCHITECTURES)
        if(NOT _iif_arch)
          set_target_properties(${_iif_t} PROPERTIES CUDA_ARCHITECTURES "${IIF_CUDA_ARCHITECTURES}")
        endif()
      endif()
    endforeach()
    set(IIF_CUDA_ENABLED ON)
    message(STATUS "iif: CUDA backend with nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${IIF_CUDA_ARCHITECTURES}")
  elseif(IIF_CUDA STREQUAL "ON")
    message(FATAL_ERROR "IIF_CUDA=ON but no CUDA compiler was found (put nvcc on PATH or set CMAKE_CUDA_COMPILER)")
  else()
    message(STATUS "iif: nvcc not found, only the emulated CUDA backend is built")
  endif()
endif()

if(IIF_CUDA_ENABLED)
  add_library(iif_cuda STATIC ${IIF_CUDA_DIR}/device_cuda.cu ${IIF_CUDA_DIR}/cuda_backend.cu)
  set_target_properties(iif_cuda PROPERTIES
    CUDA_ARCHITECTURES "${IIF_CUDA_ARCHITECTURES}"
    CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON)
  target_include_directories(iif_cuda PUBLIC $<BUILD_INTERFACE:${IIF_CUDA_ROOT}>)
  target_link_libraries(iif_cuda PUBLIC iif CUDA::cudart CUDA::cublas CUDA::cusolver)
  target_compile_options(iif_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  target_compile_definitions(iif_cuda INTERFACE IIF_CUDA_BACKEND=1)
endif()

# NVTX ranges (engine/profile.cpp): nvtx3 is header-only and ships with the toolkit.
if(IIF_CUDA_ENABLED)
  set_property(SOURCE ${IIF_CUDA_ROOT}/engine/profile.cpp APPEND PROPERTY COMPILE_DEFINITIONS IIF_NVTX=1)
  set_property(SOURCE ${IIF_CUDA_ROOT}/engine/profile.cpp APPEND PROPERTY INCLUDE_DIRECTORIES ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(iif PRIVATE ${CMAKE_DL_LIBS})
endif()

# ---- the iif program on the CUDA backend ----------------------------------------------------
# iif_cli (`iif`) links iif_cuda when it is built: --device cuda (the default when a GPU is
# present). iif_emulated is the same program on iif_cuda_emulated, for testing the CLI end to
# end without a GPU: --device cuda-emulated.
if(TARGET iif_cli)
  if(IIF_CUDA_ENABLED)
    target_link_libraries(iif_cli PRIVATE iif_cuda)
  endif()
  add_executable(iif_emulated ${IIF_CUDA_ROOT}/apps/iif.cpp ${IIF_CUDA_ROOT}/apps/cmd_attribution.cpp
                 ${IIF_CUDA_ROOT}/apps/device.cpp)
  target_link_libraries(iif_emulated PRIVATE iif_apps iif_cuda_emulated)
  target_compile_options(iif_emulated PRIVATE -Wall -Wextra)
  if(IIF_BUILD_TESTS)
    add_test(NAME cli_device_emulated COMMAND ${CMAKE_COMMAND} -DIIF=$<TARGET_FILE:iif_emulated>
             -DSRC=${IIF_CUDA_ROOT} -DBIN=${CMAKE_CURRENT_BINARY_DIR}
             -P ${IIF_CUDA_ROOT}/tests/cli_device.cmake)
    set_tests_properties(cli_device_emulated PROPERTIES LABELS "cuda-emulated;cli")
  endif()
endif()

# The custom-layer example (docs/gpu.md): LayerScale with its kernels (kernels/layerscale.cuh),
# on the emulated backend here; tests/test_custom_layer.cpp holds the kernels to the CPU.
if(TARGET custom_layer)
  target_link_libraries(custom_layer PRIVATE iif_cuda_emulated)
endif()
if(TARGET test_custom_layer)
  target_link_libraries(test_custom_layer PRIVATE iif_cuda_emulated)
  iif_simt_test(test_custom_layer)
endif()
# tests/test_extension.cpp runs the same layer on the CPU backend; the header's kernel launches
# still need the emulator's symbols to link.
if(TARGET test_extension)
  target_link_libraries(test_extension PRIVATE iif_cuda_emulated)
endif()

# ---- tests ---------------------------------------------------------------------------------
# The attribution hot paths (linear_project, project_rows, the hand-written syrk/Cholesky, the
# featurizer and the IIF pipeline) on the emulated backend against the CPU backend.
if(TARGET test_cuda_attribution)
  target_link_libraries(test_cuda_attribution PRIVATE iif_cuda_emulated)
  iif_simt_test(test_cuda_attribution)
endif()
if(TARGET test_cuda_backend)
  target_link_libraries(test_cuda_backend PRIVATE iif_cuda_emulated)
  iif_simt_test(test_cuda_backend)
  if(IIF_CUDA_ENABLED)
    add_executable(test_cuda_backend_native ${IIF_CUDA_ROOT}/tests/test_cuda_backend.cpp
                   $<TARGET_OBJECTS:iif_test_main>)
    target_link_libraries(test_cuda_backend_native PRIVATE iif_cuda doctest::doctest IIF::OpenBLAS)
    target_compile_definitions(test_cuda_backend_native PRIVATE IIF_SOURCE_DIR="${IIF_CUDA_ROOT}")
    add_test(NAME test_cuda_backend_native COMMAND test_cuda_backend_native)
    # Without a device every case prints "no CUDA device" and returns: CTest reports a skip.
    set_tests_properties(test_cuda_backend_native PROPERTIES LABELS "cuda"
                         SKIP_REGULAR_EXPRESSION "no CUDA device")
  endif()
endif()
