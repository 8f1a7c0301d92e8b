// DeformConv3d problem description shared by every adapter (PyTorch op, TensorRT plugin, tests).
// Host and device code read the same struct; it is passed to CUDA kernels by value.
#pragma once

#include <cstdint>

#include "deform_conv3d_contract.h"  // D3D_HD

namespace d3d {

// Axis order used everywhere: 0 = T, 1 = H, 2 = W.
struct DeformConv3dShape {
  int64_t n = 0, c = 0, t = 0, h = 0, w = 0;  // input  [N, C, T, H, W]
  int64_t o = 0;                              // output channels
  int64_t k[3] = {1, 1, 1};                   // kernel (kT, kH, kW)
  int64_t stride[3] = {1, 1, 1};
  int64_t pad[3] = {0, 0, 0};
  int64_t dil[3] = {1, 1, 1};
  int64_t group = 1;
  int64_t offset_group = 1;
  int64_t out[3] = {0, 0, 0};  // (T', H', W')
  // slot[a]: index of axis a inside one tap's compact offset record, -1 when axis a is not deformed.
  int slot[3] = {0, 1, 2};
  int nd = 3;  // number of deformed axes (the offset record length)

  D3D_HD int64_t taps() const { return k[0] * k[1] * k[2]; }
  D3D_HD int64_t in_spatial() const { return t * h * w; }
  D3D_HD int64_t out_spatial() const { return out[0] * out[1] * out[2]; }
  D3D_HD int64_t offset_channels() const { return offset_group * taps() * nd; }
  D3D_HD int64_t col_rows() const { return c * taps(); }
};

}  // namespace d3d
