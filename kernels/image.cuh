// Image kernels of the CUDA backend (NCHW; the contracts are in engine/backend.h): im2col and
// its adjoint col2im, the NCHW <-> (N*H*W, C) permutations, max pooling by the first argmax
// (select and route), and the per-channel sum and affine map of BatchNorm. Written once for
// nvcc and the SIMT emulator (kernels/simt/).
//
// Everything but channel_sum is a grid-stride loop with one thread per output element and no
// barrier, computing the CPU backend's expression in the CPU's order: col2im and
// maxpool_route *gather* (each input pixel sums the patches or windows that hold it, in the
// CPU's (oh, ow) order) instead of scattering with atomics, so on the emulator they are bitwise
// equal to the CPU and deterministic on a GPU. channel_sum is one block per channel: float64
// partial sums over a fixed grid stride, then a fixed-shape block reduction (reduce.cuh): it
// agrees with the CPU's sequential float64 sum within rounding and is the same in every schedule.
#pragma once

#include <cstdint>

#include "kernels/elementwise.cuh"
#include "kernels/reduce.cuh"
#include "kernels/simt/simt.cuh"
#include "kernels/window.cuh"

namespace iif {
namespace kernels {

// cols (N*OH*OW, C*kh*kw): one thread per entry.
template <class T>
__global__ void im2col_kernel(const T* x, T* cols, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
                              std::int64_t oh, std::int64_t ow, Window2d win) {
  const std::int64_t k = c * win.kh * win.kw, total = n * oh * ow * k;
  IIF_GRID_STRIDE(e, total) {
    const std::int64_t r = e / k, q = e % k;
    const std::int64_t img = r / (oh * ow), a = (r / ow) % oh, b = r % ow;
    const std::int64_t ch = q / (win.kh * win.kw), i = (q / win.kw) % win.kh, j = q % win.kw;
    const std::int64_t yy = a * win.sh - win.ph + i, xx = b * win.sw - win.pw + j;
    cols[e] = yy >= 0 && yy < h && xx >= 0 && xx < w ? x[((img * c + ch) * h + yy) * w + xx] : T(0);
  }
}

// x (N,C,H,W) = sum of the patch entries at each pixel + beta x: one thread per pixel.
template <class T>
__global__ void col2im_kernel(const T* cols, T* x, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
                              std::int64_t oh, std::int64_t ow, Window2d win, T beta, bool beta_zero) {
  const std::int64_t k = c * win.kh * win.kw, total = n * c * h * w;
  IIF_GRID_STRIDE(e, total) {
    const std::int64_t img = e / (c * h * w), ch = (e / (h * w)) % c, yy = (e / w) % h, xx = e % w;
    T s = beta_zero ? T(0) : beta * x[e];
    std::int64_t a0, a1, b0, b1;
    covering(yy, win.ph, win.kh, win.sh, oh, a0, a1);
    covering(xx, win.pw, win.kw, win.sw, ow, b0, b1);
    for (std::int64_t a = a0; a <= a1; ++a)
      for (std::int64_t b = b0; b <= b1; ++b) {
        const std::int64_t i = yy - (a * win.sh - win.ph), j = xx - (b * win.sw - win.pw);
        s += cols[((img * oh + a) * ow + b) * k + (ch * win.kh + i) * win.kw + j];
      }
    x[e] = s;
  }
}

// rows (N*H*W, C) <-> x (N,C,H,W): one thread per element of the output.
template <class T>
__global__ void nchw_to_rows_kernel(const T* x, T* rows, std::int64_t n, std::int64_t c, std::int64_t hw) {
  IIF_GRID_STRIDE(e, n * hw * c) {
    const std::int64_t r = e / c, ch = e % c;
    rows[e] = x[((r / hw) * c + ch) * hw + r % hw];
  }
}
template <class T>
__global__ void rows_to_nchw_kernel(const T* rows, T* x, std::int64_t n, std::int64_t c, std::int64_t hw) {
  IIF_GRID_STRIDE(e, n * c * hw) {
    const std::int64_t img = e / (c * hw), ch = (e / hw) % c, p = e % hw;
    x[e] = rows[(img * hw + p) * c + ch];
  }
}

// out (N,C,OH,OW) = g at each window's argmax of x: one thread per output.
template <class T>
__global__ void maxpool_select_kernel(const T* x, const T* g, T* out, std::int64_t nc, std::int64_t h, std::int64_t w,
                                      std::int64_t oh, std::int64_t ow, Window2d win) {
  IIF_GRID_STRIDE(e, nc * oh * ow) {
    const std::int64_t plane = e / (oh * ow), a = (e / ow) % oh, b = e % ow;
    const std::int64_t m = window_argmax(x + plane * h * w, h, w, win, a, b);
    out[e] = m < 0 ? T(0) : g[plane * h * w + m];
  }
}

// gx (N,C,H,W) = sum of gy over the windows whose argmax is this pixel + beta gx: one thread per
// pixel, windows in the CPU's (a, b) order.
template <class T>
__global__ void maxpool_route_kernel(const T* x, const T* gy, T* gx, std::int64_t nc, std::int64_t h, std::int64_t w,
                                     std::int64_t oh, std::int64_t ow, Window2d win, T beta, bool beta_zero) {
  IIF_GRID_STRIDE(e, nc * h * w) {
    const std::int64_t plane = e / (h * w), p = e % (h * w), yy = p / w, xx = p % w;
    T s = beta_zero ? T(0) : beta * gx[e];
    std::int64_t a0, a1, b0, b1;
    covering(yy, win.ph, win.kh, win.sh, oh, a0, a1);
    covering(xx, win.pw, win.kw, win.sw, ow, b0, b1);
    for (std::int64_t a = a0; a <= a1; ++a)
      for (std::int64_t b = b0; b <= b1; ++b)
        if (window_argmax(x + plane * h * w, h, w, win, a, b) == p) s += gy[(plane * oh + a) * ow + b];
    gx[e] = s;
  }
}

// out (C) = sum over n and positions of x (N,C,plane) + beta out: one block per channel.
template <class T, int kBlock>
__global__ void channel_sum_kernel(const T* x, T* out, std::int64_t n, std::int64_t c, std::int64_t plane, double beta,
                                   bool beta_zero) {
  __shared__ double warp_part[kBlock / 32];
  for (std::int64_t ch = blockIdx.x; ch < c; ch += gridDim.x) {
    double v = 0.0;
    for (std::int64_t e = threadIdx.x; e < n * plane; e += kBlock)
      v += static_cast<double>(x[((e / plane) * c + ch) * plane + e % plane]);
    const double total = block_sum<kBlock>(v, warp_part);
    if (threadIdx.x == 0) out[ch] = static_cast<T>(beta_zero ? total : total + beta * static_cast<double>(out[ch]));
  }
}

// y = x * scale(c) + shift(c), either pointer may be null (1 and 0): one thread per element.
template <class T>
__global__ void channel_affine_kernel(const T* x, const T* scale, const T* shift, T* y, std::int64_t n,
                                      std::int64_t c, std::int64_t plane) {
  IIF_GRID_STRIDE(e, n * c * plane) {
    const std::int64_t ch = (e / plane) % c;
    if (scale && shift) y[e] = x[e] * scale[ch] + shift[ch];
    else if (scale) y[e] = x[e] * scale[ch];
    else y[e] = x[e] + (shift ? shift[ch] : T(0));
  }
}

// ---- launchers ----

template <class T>
void im2col(const T* x, T* cols, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, Window2d win,
            stream_t s) {
  const std::int64_t oh = win.out_h(h), ow = win.out_w(w);
  const std::int64_t total = n * oh * ow * c * win.kh * win.kw;
  if (total > 0) simt::launch(im2col_kernel<T>, grid_for(total), kThreads, 0, s, x, cols, n, c, h, w, oh, ow, win);
}
template <class T>
void col2im(const T* cols, T* x, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, Window2d win,
            T beta, bool beta_zero, stream_t s) {
  const std::int64_t oh = win.out_h(h), ow = win.out_w(w);
  const std::int64_t total = n * c * h * w;
  if (total > 0)
    simt::launch(col2im_kernel<T>, grid_for(total), kThreads, 0, s, cols, x, n, c, h, w, oh, ow, win, beta, beta_zero);
}
template <class T>
void nchw_to_rows(const T* x, T* rows, std::int64_t n, std::int64_t c, std::int64_t hw, stream_t s) {
  if (n * c * hw > 0) simt::launch(nchw_to_rows_kernel<T>, grid_for(n * c * hw), kThreads, 0, s, x, rows, n, c, hw);
}
template <class T>
void rows_to_nchw(const T* rows, T* x, std::int64_t n, std::int64_t c, std::int64_t hw, stream_t s) {
  if (n * c * hw > 0) simt::launch(rows_to_nchw_kernel<T>, grid_for(n * c * hw), kThreads, 0, s, rows, x, n, c, hw);
}
template <class T>
void maxpool_select(const T* x, const T* g, T* out, std::int64_t nc, std::int64_t h, std::int64_t w, Window2d win,
                    stream_t s) {
  const std::int64_t oh = win.out_h(h), ow = win.out_w(w);
  if (nc * oh * ow > 0)
    simt::launch(maxpool_select_kernel<T>, grid_for(nc * oh * ow), kThreads, 0, s, x, g, out, nc, h, w, oh, ow, win);
}
template <class T>
void maxpool_route(const T* x, const T* gy, T* gx, std::int64_t nc, std::int64_t h, std::int64_t w, Window2d win,
                   T beta, bool beta_zero, stream_t s) {
  const std::int64_t oh = win.out_h(h), ow = win.out_w(w);
  if (nc * h * w > 0)
    simt::launch(maxpool_route_kernel<T>, grid_for(nc * h * w), kThreads, 0, s, x, gy, gx, nc, h, w, oh, ow, win, beta,
                 beta_zero);
}
template <class T>
void channel_sum(const T* x, T* out, std::int64_t n, std::int64_t c, std::int64_t plane, double beta, bool beta_zero,
                 stream_t s) {
  if (c > 0)
    simt::launch(channel_sum_kernel<T, kReduceThreads>, grid_for(c, 1, 1024), kReduceThreads, 0, s, x, out, n, c, plane,
                 beta, beta_zero);
}
template <class T>
void channel_affine(const T* x, const T* scale, const T* shift, T* y, std::int64_t n, std::int64_t c,
                    std::int64_t plane, stream_t s) {
  if (n * c * plane > 0)
    simt::launch(channel_affine_kernel<T>, grid_for(n * c * plane), kThreads, 0, s, x, scale, shift, y, n, c, plane);
}

}  // namespace kernels
}  // namespace iif
