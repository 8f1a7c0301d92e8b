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

#if defined(__CUDACC__)
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
#if defined(__CUDACC__)
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

// Trilinear sample of one [T, H, W] volume at (t, h, w). A point contributes only when
// -1 < t < T, -1 < h < H, -1 < w < W; corners outside the volume count as 0.
template <typename acc_t, typename scalar_t>
D3D_HD acc_t trilinear_sample(const scalar_t* vol, int64_t T, int64_t H, int64_t W, acc_t t, acc_t h, acc_t w) {
  if (!(t > acc_t(-1) && t < acc_t(T) && h > acc_t(-1) && h < acc_t(H) && w > acc_t(-1) && w < acc_t(W))) {
    return acc_t(0);
  }
  const int64_t t0 = static_cast<int64_t>(floor(t));
  const int64_t h0 = static_cast<int64_t>(floor(h));
  const int64_t w0 = static_cast<int64_t>(floor(w));
  const acc_t ft = t - acc_t(t0), fh = h - acc_t(h0), fw = w - acc_t(w0);
  acc_t r = acc_t(0);
  for (int a = 0; a < 2; ++a) {
    const int64_t tt = t0 + a;
    if (tt < 0 || tt >= T) continue;
    const acc_t wt = a ? ft : acc_t(1) - ft;
    for (int b = 0; b < 2; ++b) {
      const int64_t hh = h0 + b;
      if (hh < 0 || hh >= H) continue;
      const acc_t wh = b ? fh : acc_t(1) - fh;
      for (int c = 0; c < 2; ++c) {
        const int64_t ww = w0 + c;
        if (ww < 0 || ww >= W) continue;
        const acc_t wl = c ? fw : acc_t(1) - fw;
        r += wt * wh * wl * to_acc<acc_t>(vol[(tt * H + hh) * W + ww]);
      }
    }
  }
  return r;
}

// d(sample)/d(t, h, w) of trilinear_sample, written into g[0..2] (0 outside the valid region).
template <typename acc_t, typename scalar_t>
D3D_HD void trilinear_coord_grad(const scalar_t* vol, int64_t T, int64_t H, int64_t W, acc_t t, acc_t h, acc_t w,
                                 acc_t g[3]) {
  g[0] = g[1] = g[2] = acc_t(0);
  if (!(t > acc_t(-1) && t < acc_t(T) && h > acc_t(-1) && h < acc_t(H) && w > acc_t(-1) && w < acc_t(W))) return;
  const int64_t t0 = static_cast<int64_t>(floor(t));
  const int64_t h0 = static_cast<int64_t>(floor(h));
  const int64_t w0 = static_cast<int64_t>(floor(w));
  const acc_t ft = t - acc_t(t0), fh = h - acc_t(h0), fw = w - acc_t(w0);
  for (int a = 0; a < 2; ++a) {
    const int64_t tt = t0 + a;
    if (tt < 0 || tt >= T) continue;
    const acc_t wt = a ? ft : acc_t(1) - ft, dt = a ? acc_t(1) : acc_t(-1);
    for (int b = 0; b < 2; ++b) {
      const int64_t hh = h0 + b;
      if (hh < 0 || hh >= H) continue;
      const acc_t wh = b ? fh : acc_t(1) - fh, dh = b ? acc_t(1) : acc_t(-1);
      for (int c = 0; c < 2; ++c) {
        const int64_t ww = w0 + c;
        if (ww < 0 || ww >= W) continue;
        const acc_t wl = c ? fw : acc_t(1) - fw, dw = c ? acc_t(1) : acc_t(-1);
        const acc_t v = to_acc<acc_t>(vol[(tt * H + hh) * W + ww]);
        g[0] += dt * wh * wl * v;
        g[1] += wt * dh * wl * v;
        g[2] += wt * wh * dw * v;
      }
    }
  }
}

// Adds value * (interpolation weight) into each in-volume corner of (t, h, w): the adjoint of
// trilinear_sample, used for the input gradient.
template <typename acc_t, typename Add>
D3D_HD void trilinear_scatter(acc_t* vol, int64_t T, int64_t H, int64_t W, acc_t t, acc_t h, acc_t w, acc_t value,
                              Add add) {
  if (!(t > acc_t(-1) && t < acc_t(T) && h > acc_t(-1) && h < acc_t(H) && w > acc_t(-1) && w < acc_t(W))) return;
  const int64_t t0 = static_cast<int64_t>(floor(t));
  const int64_t h0 = static_cast<int64_t>(floor(h));
  const int64_t w0 = static_cast<int64_t>(floor(w));
  const acc_t ft = t - acc_t(t0), fh = h - acc_t(h0), fw = w - acc_t(w0);
  for (int a = 0; a < 2; ++a) {
    const int64_t tt = t0 + a;
    if (tt < 0 || tt >= T) continue;
    const acc_t wt = a ? ft : acc_t(1) - ft;
    for (int b = 0; b < 2; ++b) {
      const int64_t hh = h0 + b;
      if (hh < 0 || hh >= H) continue;
      const acc_t wh = b ? fh : acc_t(1) - fh;
      for (int c = 0; c < 2; ++c) {
        const int64_t ww = w0 + c;
        if (ww < 0 || ww >= W) continue;
        const acc_t wl = c ? fw : acc_t(1) - fw;
        add(vol + (tt * H + hh) * W + ww, wt * wh * wl * value);
      }
    }
  }
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

// im2col for input channel c at output position l: writes rows c*K .. c*K+K-1 of column ci.
template <typename scalar_t>
D3D_HD void im2col_column(const DeformConv3dShape& s, const scalar_t* input_n, const scalar_t* offset_n, int64_t c,
                          int64_t l, scalar_t* col, int64_t col_stride, int64_t ci) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t K = s.taps(), L = s.out_spatial();
  const int64_t g = c / (s.c / s.offset_group);
  const scalar_t* vol = input_n + c * s.in_spatial();
  for (int64_t k = 0; k < K; ++k) {
    acc_t pos[3];
    tap_position<acc_t>(s, offset_n + (g * K + k) * s.nd * L, L, l, k, pos);
    const acc_t v = trilinear_sample<acc_t>(vol, s.t, s.h, s.w, pos[0], pos[1], pos[2]);
    col[(c * K + k) * col_stride + ci] = from_acc<scalar_t>(v);
  }
}

// Input gradient for channel c from column ci of grad_col (adjoint of im2col_column).
template <typename scalar_t, typename acc_t, typename Add>
D3D_HD void col2im_column(const DeformConv3dShape& s, const scalar_t* grad_col, int64_t col_stride, int64_t ci,
                          const scalar_t* offset_n, int64_t c, int64_t l, acc_t* grad_input_n, Add add) {
  const int64_t K = s.taps(), L = s.out_spatial();
  const int64_t g = c / (s.c / s.offset_group);
  acc_t* vol = grad_input_n + c * s.in_spatial();
  for (int64_t k = 0; k < K; ++k) {
    const acc_t gv = to_acc<acc_t>(grad_col[(c * K + k) * col_stride + ci]);
    if (gv == acc_t(0)) continue;
    acc_t pos[3];
    tap_position<acc_t>(s, offset_n + (g * K + k) * s.nd * L, L, l, k, pos);
    trilinear_scatter<acc_t>(vol, s.t, s.h, s.w, pos[0], pos[1], pos[2], gv, add);
  }
}

// Offset gradient of one tap record (offset group g, tap k, output position l): sums over the
// channels of group g and writes the nd deformed components.
template <typename scalar_t>
D3D_HD void offset_grad_record(const DeformConv3dShape& s, const scalar_t* grad_col, int64_t col_stride, int64_t ci,
                               const scalar_t* input_n, const scalar_t* offset_n, int64_t g, int64_t k, int64_t l,
                               scalar_t* grad_offset_n) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t K = s.taps(), L = s.out_spatial();
  const int64_t cpg = s.c / s.offset_group;
  const scalar_t* off_tap = offset_n + (g * K + k) * s.nd * L;
  acc_t pos[3];
  tap_position<acc_t>(s, off_tap, L, l, k, pos);
  acc_t sum[3] = {acc_t(0), acc_t(0), acc_t(0)};
  for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
    const acc_t gv = to_acc<acc_t>(grad_col[(c * K + k) * col_stride + ci]);
    if (gv == acc_t(0)) continue;
    acc_t d[3];
    trilinear_coord_grad<acc_t>(input_n + c * s.in_spatial(), s.t, s.h, s.w, pos[0], pos[1], pos[2], d);
    for (int a = 0; a < 3; ++a) sum[a] += gv * d[a];
  }
  scalar_t* rec = grad_offset_n + (g * K + k) * s.nd * L;
  for (int a = 0; a < 3; ++a) {
    if (s.slot[a] >= 0) rec[s.slot[a] * L + l] = from_acc<scalar_t>(sum[a]);
  }
}

}  // namespace d3d
