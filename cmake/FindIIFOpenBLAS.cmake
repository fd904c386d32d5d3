# Finds OpenBLAS (CBLAS interface) and LAPACKE and defines the imported target IIF::OpenBLAS.
# Debian: libopenblas-dev liblapacke-dev.
find_path(IIF_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas)
find_path(IIF_LAPACKE_INCLUDE_DIR lapacke.h PATH_SUFFIXES openblas)
find_library(IIF_OPENBLAS_LIBRARY NAMES openblas)
find_library(IIF_LAPACKE_LIBRARY NAMES lapacke)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(IIFOpenBLAS
  REQUIRED_VARS IIF_OPENBLAS_LIBRARY IIF_LAPACKE_LIBRARY IIF_CBLAS_INCLUDE_DIR IIF_LAPACKE_INCLUDE_DIR
  FAIL_MESSAGE "OpenBLAS/LAPACKE not found: apt-get install libopenblas-dev liblapacke-dev")
if(IIFOpenBLAS_FOUND AND NOT TARGET IIF::OpenBLAS)
  add_library(IIF::OpenBLAS INTERFACE IMPORTED)
  set_target_properties(IIF::OpenBLAS PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${IIF_CBLAS_INCLUDE_DIR};${IIF_LAPACKE_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${IIF_LAPACKE_LIBRARY};${IIF_OPENBLAS_LIBRARY}")
endif()
