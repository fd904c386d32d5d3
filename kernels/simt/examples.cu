// nvcc compile check of the emulator's example kernels: the same header the emulator tests
// run, built for a real GPU (device code for every kernel and every simt::launch instantiated).
// Never run here; `nvcc -c` of this file must succeed (see docs/simt.md).
#include "kernels/simt/examples.cuh"

namespace simt {
namespace examples {

// Taking each launcher's address makes nvcc emit it and the kernel templates it instantiates.
extern void (*const kAllLaunchers[])();
void (*const kAllLaunchers[])() = {
    reinterpret_cast<void (*)()>(&block_sum),        reinterpret_cast<void (*)()>(&tree_sum<true>),
    reinterpret_cast<void (*)()>(&tree_sum<false>),  reinterpret_cast<void (*)()>(&warp_ops),
    reinterpret_cast<void (*)()>(&vote),             reinterpret_cast<void (*)()>(&atomics),
    reinterpret_cast<void (*)()>(&reverse_chunks),   reinterpret_cast<void (*)()>(&coords),
    reinterpret_cast<void (*)()>(&gemm_tiled),       reinterpret_cast<void (*)()>(&early_exit),
    reinterpret_cast<void (*)()>(&split_barrier),    reinterpret_cast<void (*)()>(&shfl_exited),
    reinterpret_cast<void (*)()>(&warp_vs_barrier),  reinterpret_cast<void (*)()>(&barrier_votes),
    reinterpret_cast<void (*)()>(&handshake),
};

}  // namespace examples
}  // namespace simt
