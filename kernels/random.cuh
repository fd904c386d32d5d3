// Dropout masks from the counter-based RNG (kernels/philox.cuh), bit for bit the CPU backend's:
//   mask[k][j] = (philox::uniform(seed_k, stream_k, j) >= float(p)) ? keep : 0,
// keep = T(1 / (1 - p)) computed on the host. One thread per Philox block: it computes the
// four 32-bit words of block b once and writes entries 4b..4b+3 of its slice (uniform(j) is
// word j % 4 of block j / 4, the top 24 bits scaled by 2^-24), as the CPU's batched loop does.
// Shapes: mask (batch, per), seeds and streams (batch) on the device, or nullptr with
// batch == 1 to use the scalar seed/stream.
#pragma once

#include <cstdint>

#include "kernels/elementwise.cuh"
#include "kernels/philox.cuh"
#include "kernels/simt/simt.cuh"

namespace iif {
namespace kernels {

template <class T>
__global__ void dropout_mask_kernel(T* mask, std::int64_t batch, std::int64_t per,
                                    const std::uint64_t* seeds, const std::uint64_t* streams,
                                    std::uint64_t seed, std::uint64_t stream, float pf, T keep) {
  const std::int64_t blocks = (per + 3) / 4;
  const std::int64_t n = batch * blocks;
  IIF_GRID_STRIDE(kb, n) {
    const std::int64_t k = kb / blocks, b = kb % blocks;
    const std::uint64_t sd = seeds ? seeds[k] : seed, st = streams ? streams[k] : stream;
    const philox::U32x4 w = philox::words(sd, st, static_cast<std::uint64_t>(b));
    T* mk = mask + k * per;
    for (int j = 0; j < 4 && 4 * b + j < per; ++j) {
      const float u = static_cast<float>(w.v[j] >> 8) * (1.0f / 16777216.0f);
      mk[4 * b + j] = u >= pf ? keep : T(0);
    }
  }
}

template <class T>
void dropout_mask(T* mask, std::int64_t batch, std::int64_t per, const std::uint64_t* seeds,
                  const std::uint64_t* streams, std::uint64_t seed, std::uint64_t stream, float pf,
                  T keep, stream_t s) {
  const std::int64_t n = batch * ((per + 3) / 4);
  if (n > 0)
    simt::launch(dropout_mask_kernel<T>, grid_for(n), kThreads, 0, s, mask, batch, per, seeds,
                 streams, seed, stream, pf, keep);
}

}  // namespace kernels
}  // namespace iif
