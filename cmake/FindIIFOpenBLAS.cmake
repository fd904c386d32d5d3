# Finds OpenBLAS (CBLAS interface) and LAPACKE and defines the imported target IIF::OpenBLAS.
# Debian: libopenblas-openmp-dev liblapacke-dev.
#
# The OpenMP build of OpenBLAS is preferred: the engine runs its own loops under OpenMP, and
# the pthreads build keeps a second pool of spinning threads that fights OpenMP's for the cores
# (measured here: MLP training 7x slower with both pools on 2 cores, see docs/ARCHITECTURE.md).
# Debian installs the variants side by side under <libdir>/openblas-<variant>/; the build
# links the OpenMP one by path and records that folder in the RPATH, so the loader does not
# pick whichever variant the alternatives system points libopenblas.so.0 at.
set(_iif_arch_dirs)
foreach(prefix /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE} /usr/lib64 /usr/lib)
  list(APPEND _iif_arch_dirs ${prefix}/openblas-openmp)
endforeach()
find_library(IIF_OPENBLAS_LIBRARY NAMES openblas PATHS ${_iif_arch_dirs} NO_DEFAULT_PATH)
if(IIF_OPENBLAS_LIBRARY)
  set(IIF_OPENBLAS_VARIANT openmp)
else()
  find_library(IIF_OPENBLAS_LIBRARY NAMES openblas)
  set(IIF_OPENBLAS_VARIANT "default (not the OpenMP build: expect slower training when threads > 1)")
endif()
find_path(IIF_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas)
find_path(IIF_LAPACKE_INCLUDE_DIR lapacke.h PATH_SUFFIXES openblas)
find_library(IIF_LAPACKE_LIBRARY NAMES lapacke)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(IIFOpenBLAS
  REQUIRED_VARS IIF_OPENBLAS_LIBRARY IIF_LAPACKE_LIBRARY IIF_CBLAS_INCLUDE_DIR IIF_LAPACKE_INCLUDE_DIR
  FAIL_MESSAGE "OpenBLAS/LAPACKE not found: apt-get install libopenblas-openmp-dev liblapacke-dev")
if(IIFOpenBLAS_FOUND AND NOT TARGET IIF::OpenBLAS)
  message(STATUS "OpenBLAS: ${IIF_OPENBLAS_LIBRARY} (${IIF_OPENBLAS_VARIANT})")
  add_library(IIF::OpenBLAS INTERFACE IMPORTED)
  # LAPACKE first: it calls into the LAPACK that this OpenBLAS provides.
  set_target_properties(IIF::OpenBLAS PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${IIF_CBLAS_INCLUDE_DIR};${IIF_LAPACKE_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${IIF_LAPACKE_LIBRARY};${IIF_OPENBLAS_LIBRARY}")
  get_filename_component(IIF_OPENBLAS_LIBDIR "${IIF_OPENBLAS_LIBRARY}" DIRECTORY)
endif()
