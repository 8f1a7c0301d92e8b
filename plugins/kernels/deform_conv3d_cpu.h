// Host loops over the shared DeformConv3d math. The caller supplies the parallel-for
// (at::parallel_for in the PyTorch op, a serial loop elsewhere): par(begin, end, fn(b, e)).
// Work is partitioned so that no two iterations write the same element.
#pragma once

#include <cstdint>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_math.h"

namespace d3d {
namespace cpu {

struct SerialFor {
  template <typename Fn>
  void operator()(int64_t begin, int64_t end, const Fn& fn) const {
    if (begin < end) fn(begin, end);
  }
};

// Columns l0 .. l0+lc-1 of one batch item into col [C*K, lc]. Work item = (offset group, tap, block
// of columns): the block's taps are located once, then each channel's row segment is written
// contiguously.
template <typename scalar_t, typename ParFor = SerialFor>
void im2col(const DeformConv3dShape& s, const scalar_t* input_n, const scalar_t* offset_n, int64_t l0, int64_t lc,
            scalar_t* col, const ParFor& par = ParFor()) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int64_t kBlock = 64;
  const int64_t K = s.taps(), V = s.in_spatial(), cpg = s.c / s.offset_group;
  const int64_t nblk = (lc + kBlock - 1) / kBlock;
  par(0, s.offset_group * K * nblk, [&](int64_t b, int64_t e) {
    Corners<acc_t, false> pts[kBlock];
    for (int64_t item = b; item < e; ++item) {
      const int64_t blk = item % nblk, k = (item / nblk) % K, g = item / (nblk * K);
      const int64_t ci0 = blk * kBlock, n = (lc - ci0 < kBlock) ? lc - ci0 : kBlock;
      for (int64_t j = 0; j < n; ++j) locate_tap(s, offset_n, g, k, l0 + ci0 + j, pts[j]);
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        const scalar_t* vol = input_n + c * V;
        scalar_t* dst = col + (c * K + k) * lc + ci0;
        for (int64_t j = 0; j < n; ++j) dst[j] = from_acc<scalar_t>(gather(pts[j], vol));
      }
    }
  });
}

// Accumulates the input gradient of one batch item from grad_col [C*K, lc]. Parallel over channel
// ranges: a range only writes its own channels of grad_input_n, so no two threads collide.
template <typename scalar_t, typename acc_t, typename ParFor = SerialFor>
void col2im(const DeformConv3dShape& s, const scalar_t* grad_col, const scalar_t* offset_n, int64_t l0, int64_t lc,
            acc_t* grad_input_n, const ParFor& par = ParFor()) {
  const int64_t K = s.taps(), cpg = s.c / s.offset_group;
  par(0, s.c, [&](int64_t b, int64_t e) {
    for (int64_t g = b / cpg; g * cpg < e; ++g) {
      const int64_t c0 = g * cpg > b ? g * cpg : b, c1 = (g + 1) * cpg < e ? (g + 1) * cpg : e;
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t ci = 0; ci < lc; ++ci) {
          col2im_tap(s, grad_col, lc, ci, offset_n, g, k, l0 + ci, c0, c1, grad_input_n, ScatterAdd());
        }
      }
    }
  });
}

// Offset gradient of one batch item for output positions l0 .. l0+lc-1.
template <typename scalar_t, typename ParFor = SerialFor>
void offset_grad(const DeformConv3dShape& s, const scalar_t* grad_col, const scalar_t* input_n,
                 const scalar_t* offset_n, int64_t l0, int64_t lc, scalar_t* grad_offset_n,
                 const ParFor& par = ParFor()) {
  const int64_t K = s.taps();
  par(0, s.offset_group * K * lc, [&](int64_t b, int64_t e) {
    for (int64_t idx = b; idx < e; ++idx) {
      const int64_t ci = idx % lc, k = (idx / lc) % K, g = idx / (lc * K);
      offset_grad_tap(s, grad_col, lc, ci, input_n, offset_n, g, k, l0 + ci, grad_offset_n);
    }
  });
}

// Reference GEMM used by the framework-free forward (plugin core, tests): for each group,
// Y[o, l0 + l] = bias[o] + sum_r W[o, r] * col[r, l], accumulated in acc_t. bias may be null.
template <typename scalar_t>
void grouped_gemm(const DeformConv3dShape& s, const scalar_t* weight, const scalar_t* bias, const scalar_t* col,
                  int64_t lc, scalar_t* y_n, int64_t l0) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t K = s.taps(), L = s.out_spatial();
  const int64_t opg = s.o / s.group, rows = (s.c / s.group) * K;
  for (int64_t g = 0; g < s.group; ++g) {
    for (int64_t o = g * opg; o < (g + 1) * opg; ++o) {
      const scalar_t* wrow = weight + o * rows;
      for (int64_t ci = 0; ci < lc; ++ci) {
        acc_t acc = bias != nullptr ? to_acc<acc_t>(bias[o]) : acc_t(0);
        for (int64_t r = 0; r < rows; ++r) {
          acc += to_acc<acc_t>(wrow[r]) * to_acc<acc_t>(col[(g * rows + r) * lc + ci]);
        }
        y_n[o * L + l0 + ci] = from_acc<scalar_t>(acc);
      }
    }
  }
}

// Whole forward pass of the shared math with the reference GEMM: y = deform_conv3d(x, offset, weight) + bias.
// col must hold col_rows() * col_chunk(s, max_col_elems) elements. Used where no BLAS is at hand
// (C++ unit tests, plugin-core checks) and the reference the fused CPU forward
// (deform_conv3d_cpu_forward.h, what the PyTorch op and the ONNX Runtime library run) is tested against.
template <typename scalar_t>
void forward(const DeformConv3dShape& s, const scalar_t* x, const scalar_t* offset, const scalar_t* weight,
             const scalar_t* bias, scalar_t* y, scalar_t* col, int64_t max_col_elems) {
  const int64_t L = s.out_spatial(), chunk = col_chunk(s, max_col_elems);
  for (int64_t n = 0; n < s.n; ++n) {
    const scalar_t* x_n = x + n * s.c * s.in_spatial();
    const scalar_t* off_n = offset + n * s.offset_channels() * L;
    scalar_t* y_n = y + n * s.o * L;
    for (int64_t l0 = 0; l0 < L; l0 += chunk) {
      const int64_t lc = (L - l0 < chunk) ? L - l0 : chunk;
      im2col(s, x_n, off_n, l0, lc, col);
      grouped_gemm(s, weight, bias, col, lc, y_n, l0);
    }
  }
}

}  // namespace cpu
}  // namespace d3d
