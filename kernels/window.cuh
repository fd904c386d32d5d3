// The 2-D window of convolution and pooling over NCHW images, and the window arithmetic every
// backend shares: the output size, the windows that cover a pixel, and max pooling's first
// argmax (ties to the first position in row-major order; a NaN wins over numbers, as in torch).
// Header-only, host and device (IIF_HD, kernels/philox.cuh): the CPU backend, the CUDA kernels
// (kernels/image.cuh) and the emulator all use these definitions.
#pragma once

#include <cstdint>

#include "kernels/philox.cuh"  // IIF_HD

namespace iif {

// Kernel (kh, kw), stride (sh, sw), zero padding (ph, pw) on each side, as torch.nn.Conv2d /
// MaxPool2d take them. Output size floor((h + 2 ph - kh) / sh) + 1.
struct Window2d {
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  IIF_HD int64_t out_h(int64_t h) const { return (h + 2 * ph - kh) / sh + 1; }
  IIF_HD int64_t out_w(int64_t w) const { return (w + 2 * pw - kw) / sw + 1; }
};

namespace kernels {

// The first and last output index along one axis whose window covers pixel p (lo > hi: none).
IIF_HD void covering(int64_t p, int64_t pad, int64_t kern, int64_t stride, int64_t out, int64_t& lo, int64_t& hi) {
  // windows a with a*stride - pad <= p <= a*stride - pad + kern - 1
  const int64_t top = p + pad;
  hi = top / stride;
  if (hi > out - 1) hi = out - 1;
  const int64_t low = top - kern + 1;
  lo = low <= 0 ? 0 : (low + stride - 1) / stride;
}

// Flat index within its (h, w) plane of the first maximum of the window at output (a, b); -1 if
// the window holds no pixel (only padding).
template <class T>
IIF_HD int64_t window_argmax(const T* plane, int64_t h, int64_t w, const Window2d& win, int64_t a, int64_t b) {
  int64_t best = -1;
  T bv = T(0);
  const int64_t y0 = a * win.sh - win.ph, x0 = b * win.sw - win.pw;
  for (int64_t i = 0; i < win.kh; ++i) {
    const int64_t yy = y0 + i;
    if (yy < 0 || yy >= h) continue;
    for (int64_t j = 0; j < win.kw; ++j) {
      const int64_t xx = x0 + j;
      if (xx < 0 || xx >= w) continue;
      const T v = plane[yy * w + xx];
      if (best < 0 || v > bv || (v != v && !(bv != bv))) {
        best = yy * w + xx;
        bv = v;
      }
    }
  }
  return best;
}

}  // namespace kernels
}  // namespace iif
