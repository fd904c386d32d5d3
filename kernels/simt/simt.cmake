# The host SIMT emulator as a CMake target, included from the top-level CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/kernels/simt/simt.cmake)
#   target_link_libraries(x PRIVATE iif_simt)   # x's .cpp files may include kernels/simt/simt.cuh
# Debian: libboost-context-dev (Boost.Context's fcontext, the fibers of the emulated threads).
# iif_simt_test(<target>) links a doctest executable to the emulator and labels its test
# `cuda-emulated` (call it after add_test for that target).

set(IIF_SIMT_DIR ${CMAKE_CURRENT_LIST_DIR})
get_filename_component(IIF_SIMT_ROOT ${IIF_SIMT_DIR}/../.. ABSOLUTE)

find_package(Threads REQUIRED)
find_package(Boost 1.66 REQUIRED COMPONENTS context)

add_library(iif_simt STATIC ${IIF_SIMT_DIR}/runtime.cpp)
target_include_directories(iif_simt PUBLIC $<BUILD_INTERFACE:${IIF_SIMT_ROOT}>)
target_link_libraries(iif_simt PUBLIC Boost::context Threads::Threads)
target_compile_features(iif_simt PUBLIC cxx_std_17)
target_compile_options(iif_simt PRIVATE -Wall -Wextra)
# Files that see this definition were built against the emulator (tests/test_simt.cpp skips
# itself without it, so the test glob can pick it up before iif_simt is linked).
target_compile_definitions(iif_simt INTERFACE IIF_HAVE_SIMT=1)

function(iif_simt_test target)
  target_link_libraries(${target} PRIVATE iif_simt)
  if(TEST ${target})
    set_tests_properties(${target} PROPERTIES LABELS "cuda-emulated")
  endif()
endfunction()

# Timings of the emulator against plain loops (docs/simt.md); prints JSON lines.
if(NOT DEFINED IIF_BUILD_BENCH OR IIF_BUILD_BENCH)
  add_executable(bench_simt ${IIF_SIMT_DIR}/bench_simt.cpp)
  target_link_libraries(bench_simt PRIVATE iif_simt)
endif()

# With CUDA enabled, nvcc compiles the example kernels for the configured architectures: the
# proof that the source the emulator runs is also real CUDA.
if(CMAKE_CUDA_COMPILER)
  add_library(iif_simt_nvcc_check OBJECT ${IIF_SIMT_DIR}/examples.cu)
  target_include_directories(iif_simt_nvcc_check PRIVATE ${IIF_SIMT_ROOT})
endif()
