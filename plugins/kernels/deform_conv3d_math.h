// The DeformConv3d math, written once. Compiled by the host C++ compiler (PyTorch CPU op, ONNX Runtime
// CPU path, unit tests) and by nvcc (PyTorch CUDA op, TensorRT plugin).
//
// Layouts (all contiguous):
//   input  [N, C, T, H, W]
//   offset [N, offset_group * K * nd, T', H', W'], channel (g*K + k)*nd + slot   (K = kT*kH*kW)
//   col    [C*K, Lc] rows (c*K + k), one column per output position in the current chunk
// Positions, interpolation weights and sums are computed in acc_t (fp32, or fp64 for double I/O):
// fp16 coordinates lose sub-pixel precision above 512 px.
#pragma once

#include <cmath>
#include <cstdint>

#include "deform_conv3d_shape.h"

#if defined(__CUDACC__) || defined(D3D_CUDA_ON_CPU)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace d3d {

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// Conversions that work whether or not CUDA's implicit half conversions are enabled
// (PyTorch builds define __CUDA_NO_HALF_CONVERSIONS__).
template <typename acc_t, typename scalar_t>
D3D_HD acc_t to_acc(scalar_t v) {
  return static_cast<acc_t>(v);
}
template <typename scalar_t, typename acc_t>
D3D_HD scalar_t from_acc(acc_t v) {
  return static_cast<scalar_t>(v);
}
#if defined(__CUDACC__) || defined(D3D_CUDA_ON_CPU)
template <>
D3D_HD float to_acc<float, __half>(__half v) {
  return __half2float(v);
}
template <>
D3D_HD __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
D3D_HD float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
D3D_HD __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}
#endif

// Accumulates into memory shared by several threads: atomic on the GPU, plain on the host
// (host loops are partitioned so that no two threads write the same element).
struct ScatterAdd {
  template <typename acc_t>
  D3D_HD void operator()(acc_t* p, acc_t v) const {
#if defined(__CUDA_ARCH__)
    atomicAdd(p, v);
#else
    *p += v;
#endif
  }
};

// The eight trilinear corners of a point (t, h, w) in a [T, H, W] volume: flat indices and weights.
// A point contributes only when -1 < t < T, -1 < h < H, -1 < w < W; corners outside the volume get
// weight 0 (and index 0, so loads stay in bounds). With kGrad, dw[a][n] = d(weight n)/d(axis a).
// Computed once per (offset group, tap, position) and reused for every channel of the group.
template <typename acc_t, bool kGrad = false>
struct Corners {
  int64_t idx[8];
  acc_t w[8];
  acc_t dw[kGrad ? 3 : 1][8];
  bool inside;
};

template <bool kGrad, typename acc_t>
D3D_HD void locate(int64_t T, int64_t H, int64_t W, acc_t t, acc_t h, acc_t w, Corners<acc_t, kGrad>& p) {
  p.inside = t > acc_t(-1) && t < acc_t(T) && h > acc_t(-1) && h < acc_t(H) && w > acc_t(-1) && w < acc_t(W);
  if (!p.inside) {
    for (int n = 0; n < 8; ++n) {
      p.idx[n] = 0;
      p.w[n] = acc_t(0);
      if constexpr (kGrad) p.dw[0][n] = p.dw[1][n] = p.dw[2][n] = acc_t(0);
    }
    return;
  }
  const int64_t t0 = static_cast<int64_t>(floor(t));
  const int64_t h0 = static_cast<int64_t>(floor(h));
  const int64_t w0 = static_cast<int64_t>(floor(w));
  const acc_t ft = t - acc_t(t0), fh = h - acc_t(h0), fw = w - acc_t(w0);
  for (int n = 0; n < 8; ++n) {
    const int a = n >> 2, b = (n >> 1) & 1, c = n & 1;
    const int64_t tt = t0 + a, hh = h0 + b, ww = w0 + c;
    const bool in = tt >= 0 && tt < T && hh >= 0 && hh < H && ww >= 0 && ww < W;
    const acc_t wt = a ? ft : acc_t(1) - ft, wh = b ? fh : acc_t(1) - fh, wl = c ? fw : acc_t(1) - fw;
    p.idx[n] = in ? (tt * H + hh) * W + ww : 0;
    p.w[n] = in ? wt * wh * wl : acc_t(0);
    if constexpr (kGrad) {
      const acc_t st = a ? acc_t(1) : acc_t(-1), sh = b ? acc_t(1) : acc_t(-1), sw = c ? acc_t(1) : acc_t(-1);
      p.dw[0][n] = in ? st * wh * wl : acc_t(0);
      p.dw[1][n] = in ? wt * sh * wl : acc_t(0);
      p.dw[2][n] = in ? wt * wh * sw : acc_t(0);
    }
  }
}

template <typename acc_t, bool kGrad, typename scalar_t>
D3D_HD acc_t gather(const Corners<acc_t, kGrad>& p, const scalar_t* vol) {
  acc_t r = acc_t(0);
  if (!p.inside) return r;
  // A corner without weight adds nothing (not 0 * its value: an Inf or NaN pixel there, or the stand-in
  // index 0 of a corner outside, would make the sample NaN).
  for (int n = 0; n < 8; ++n)
    if (p.w[n] != acc_t(0)) r += p.w[n] * to_acc<acc_t>(vol[p.idx[n]]);
  return r;
}

// d(sample)/d(t, h, w) at a located point, into g[0..2] (0 outside the valid region).
template <typename acc_t, typename scalar_t>
D3D_HD void coord_grad(const Corners<acc_t, true>& p, const scalar_t* vol, acc_t g[3]) {
  g[0] = g[1] = g[2] = acc_t(0);
  if (!p.inside) return;
  for (int n = 0; n < 8; ++n) {
    const acc_t v = to_acc<acc_t>(vol[p.idx[n]]);
    g[0] += p.dw[0][n] * v;
    g[1] += p.dw[1][n] * v;
    g[2] += p.dw[2][n] * v;
  }
}

// Adjoint of gather: adds value * weight into each in-volume corner (input gradient).
template <typename acc_t, bool kGrad, typename Add>
D3D_HD void scatter(const Corners<acc_t, kGrad>& p, acc_t* vol, acc_t value, Add add) {
  if (!p.inside) return;
  for (int n = 0; n < 8; ++n) {
    if (p.w[n] != acc_t(0)) add(vol + p.idx[n], p.w[n] * value);
  }
}

// Channels-last variant of gather: vol_cl is [T*H*W, ldc] (channel fastest), and n consecutive
// channels are interpolated at once into acc[0..n). The channel loop is contiguous, so it vectorises.
template <typename acc_t, bool kGrad, typename scalar_t>
D3D_HD void gather_channels(const Corners<acc_t, kGrad>& p, const scalar_t* vol_cl, int64_t ldc, int64_t n,
                            acc_t* acc) {
  for (int64_t c = 0; c < n; ++c) acc[c] = acc_t(0);
  if (!p.inside) return;
  for (int q = 0; q < 8; ++q) {
    const acc_t wq = p.w[q];
    if (wq == acc_t(0)) continue;  // as in gather
    const scalar_t* src = vol_cl + p.idx[q] * ldc;
    for (int64_t c = 0; c < n; ++c) acc[c] += wq * to_acc<acc_t>(src[c]);
  }
}

// Single-point helpers (used by tests and as the definition of the sampling semantics).
template <typename acc_t, typename scalar_t>
D3D_HD acc_t trilinear_sample(const scalar_t* vol, int64_t T, int64_t H, int64_t W, acc_t t, acc_t h, acc_t w) {
  Corners<acc_t, false> p;
  locate(T, H, W, t, h, w, p);
  return gather(p, vol);
}

// d(sample)/d(t, h, w), written into g[0..2] (0 outside the valid region).
template <typename acc_t, typename scalar_t>
D3D_HD void trilinear_coord_grad(const scalar_t* vol, int64_t T, int64_t H, int64_t W, acc_t t, acc_t h, acc_t w,
                                 acc_t g[3]) {
  Corners<acc_t, true> p;
  locate(T, H, W, t, h, w, p);
  coord_grad(p, vol, g);
}

// Adjoint of trilinear_sample: adds value * weight into each in-volume corner (input gradient).
template <typename acc_t, typename Add>
D3D_HD void trilinear_scatter(acc_t* vol, int64_t T, int64_t H, int64_t W, acc_t t, acc_t h, acc_t w, acc_t value,
                              Add add) {
  Corners<acc_t, false> p;
  locate(T, H, W, t, h, w, p);
  scatter(p, vol, value, add);
}

// Sampling position of tap k = (i*kH + j)*kW + q at output position l (flattened T'H'W').
// off_tap points at this tap's offset record for offset group g of one batch item:
// offset_n + (g*K + k)*nd*L; slot s of the record is at off_tap[s*L + l].
template <typename acc_t, typename scalar_t>
D3D_HD void tap_position(const DeformConv3dShape& s, const scalar_t* off_tap, int64_t L, int64_t l, int64_t k,
                         acc_t pos[3]) {
  const int64_t q = k % s.k[2];
  const int64_t j = (k / s.k[2]) % s.k[1];
  const int64_t i = k / (s.k[2] * s.k[1]);
  const int64_t ox = l % s.out[2];
  const int64_t oy = (l / s.out[2]) % s.out[1];
  const int64_t ot = l / (s.out[2] * s.out[1]);
  const int64_t tap[3] = {i, j, q};
  const int64_t o[3] = {ot, oy, ox};
  for (int a = 0; a < 3; ++a) {
    pos[a] = acc_t(o[a] * s.stride[a] - s.pad[a] + tap[a] * s.dil[a]);
    if (s.slot[a] >= 0) pos[a] += to_acc<acc_t>(off_tap[s.slot[a] * L + l]);
  }
}

// Locates tap k of offset group g at output position l of one batch item (offset_n is that item's
// offset tensor): the position plus its trilinear corners.
template <bool kGrad, typename acc_t, typename scalar_t>
D3D_HD void locate_tap(const DeformConv3dShape& s, const scalar_t* offset_n, int64_t g, int64_t k, int64_t l,
                       Corners<acc_t, kGrad>& p) {
  const int64_t L = s.out_spatial();
  acc_t pos[3];
  tap_position<acc_t>(s, offset_n + (g * s.taps() + k) * s.nd * L, L, l, k, pos);
  locate(s.t, s.h, s.w, pos[0], pos[1], pos[2], p);
}

// Column work item: offset group g, tap k, output position l (column ci of the chunk). The tap is
// located once and applied to the channels [c_begin, c_end) of the group.

// im2col: col[(c*K + k), ci] = sample of channel c at the tap's position.
template <typename scalar_t>
D3D_HD void im2col_tap(const DeformConv3dShape& s, const scalar_t* input_n, const scalar_t* offset_n, int64_t g,
                       int64_t k, int64_t l, int64_t c_begin, int64_t c_end, scalar_t* col, int64_t col_stride,
                       int64_t ci) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t K = s.taps(), V = s.in_spatial();
  Corners<acc_t, false> p;
  locate_tap(s, offset_n, g, k, l, p);
  for (int64_t c = c_begin; c < c_end; ++c) {
    col[(c * K + k) * col_stride + ci] = from_acc<scalar_t>(gather(p, input_n + c * V));
  }
}

// Input gradient (adjoint of im2col_tap) into grad_input_n (acc_t, [C, T, H, W]).
template <typename scalar_t, typename acc_t, typename Add>
D3D_HD void col2im_tap(const DeformConv3dShape& s, const scalar_t* grad_col, int64_t col_stride, int64_t ci,
                       const scalar_t* offset_n, int64_t g, int64_t k, int64_t l, int64_t c_begin, int64_t c_end,
                       acc_t* grad_input_n, Add add) {
  const int64_t K = s.taps(), V = s.in_spatial();
  Corners<acc_t, false> p;
  locate_tap(s, offset_n, g, k, l, p);
  if (!p.inside) return;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const acc_t gv = to_acc<acc_t>(grad_col[(c * K + k) * col_stride + ci]);
    if (gv != acc_t(0)) scatter(p, grad_input_n + c * V, gv, add);
  }
}

// Offset gradient of one tap record: sums over the channels of group g and writes the nd deformed
// components of grad_offset_n.
template <typename scalar_t>
D3D_HD void offset_grad_tap(const DeformConv3dShape& s, const scalar_t* grad_col, int64_t col_stride, int64_t ci,
                            const scalar_t* input_n, const scalar_t* offset_n, int64_t g, int64_t k, int64_t l,
                            scalar_t* grad_offset_n) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t K = s.taps(), L = s.out_spatial(), V = s.in_spatial();
  const int64_t cpg = s.c / s.offset_group;
  Corners<acc_t, true> p;
  locate_tap(s, offset_n, g, k, l, p);
  acc_t sum[3] = {acc_t(0), acc_t(0), acc_t(0)};
  if (p.inside) {
    for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
      const acc_t gv = to_acc<acc_t>(grad_col[(c * K + k) * col_stride + ci]);
      if (gv == acc_t(0)) continue;
      acc_t d[3];
      coord_grad(p, input_n + c * V, d);
      for (int a = 0; a < 3; ++a) sum[a] += gv * d[a];
    }
  }
  scalar_t* rec = grad_offset_n + (g * K + k) * s.nd * L;
  for (int a = 0; a < 3; ++a) {
    if (s.slot[a] >= 0) rec[s.slot[a] * L + l] = from_acc<scalar_t>(sum[a]);
  }
}

}  // namespace d3d
