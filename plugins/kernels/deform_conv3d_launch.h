// Launch geometry of the CUDA kernels (deform_conv3d_cuda.cuh), in host-only C++ so that the limits can
// be unit-tested where there is no GPU. Every grid dimension stays within CUDA's limits for any shape
// make_shape accepts: the kernels loop (grid-stride) over whatever a capped grid does not cover.
#pragma once

#include <cstdint>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_shape.h"

namespace d3d {
namespace launch {

constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
constexpr int64_t kMaxGridYZ = 65535;
constexpr int kThreads = 256;  // threads per block of the 1-D kernels
constexpr int kTile = 16;      // the GEMM's square tile (threads per block: kTile x kTile)
// Blocks of a 1-D grid-stride kernel: enough for one element per thread, capped (the kernels loop).
// D3D_LAUNCH_MAX_BLOCKS_1D / D3D_LAUNCH_MAX_PAIRS_Y lower the caps only in the cuda_on_cpu_grid_stride
// test build, so that small shapes exercise the kernels' grid-stride loops.
#if defined(D3D_LAUNCH_MAX_BLOCKS_1D)
constexpr int64_t kMaxBlocks1d = D3D_LAUNCH_MAX_BLOCKS_1D;
#else
constexpr int64_t kMaxBlocks1d = 65535LL * 8;
#endif
#if defined(D3D_LAUNCH_MAX_PAIRS_Y)
constexpr int64_t kMaxPairsY = D3D_LAUNCH_MAX_PAIRS_Y;
#else
constexpr int64_t kMaxPairsY = kMaxGridYZ;
#endif
#if defined(D3D_LAUNCH_MAX_BATCH_Z)
constexpr int64_t kMaxBatchZ = D3D_LAUNCH_MAX_BATCH_Z;
#else
constexpr int64_t kMaxBatchZ = kMaxGridYZ;
#endif

// The fused forward (deform_conv3d_cuda_fused.cuh): a block of kFusedThreads (4 warps, 2x2 warp tiles of
// 32x32) computes kFusedM output channels x kFusedN output positions of one group, over the group's rows
// kFusedK at a time. The block's shared memory: 2 tiles in the I/O type plus one fp32 tile, ~27 KB.
constexpr int kFusedM = 64;
constexpr int kFusedN = 64;
constexpr int kFusedK = 32;
constexpr int kFusedThreads = 128;

struct Grid {
  int64_t x = 1, y = 1, z = 1;
};

D3D_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Output-channel tiles per group of the GEMM (the kernel computes the same).
D3D_HD int64_t gemm_out_tiles(const DeformConv3dShape& s) { return ceil_div(s.o / s.group, kTile); }

// One thread per (offset group, tap, column) of an im2col chunk of lc columns.
inline Grid im2col_grid(const DeformConv3dShape& s, int64_t lc) {
  const int64_t b = ceil_div(s.offset_group * s.taps() * lc, kThreads);
  return {b < 1 ? 1 : (b < kMaxBlocks1d ? b : kMaxBlocks1d), 1, 1};
}

// Grouped GEMM over a chunk of lc columns: x = column tiles, y = (group, output-channel tile) pairs. The
// pairs are folded into at most 65535 blocks and the kernel strides over the rest: group alone can be
// 2^20 (validate_attrs allows it), beyond the 65535 limit of grid.y and grid.z.
inline Grid gemm_grid(const DeformConv3dShape& s, int64_t lc) {
  const int64_t pairs = s.group * gemm_out_tiles(s);
#if defined(D3D_CUDA_ON_CPU_FAULT_GRID)
  const int64_t x = ceil_div(lc, kTile) > 1 ? ceil_div(lc, kTile) - 1 : 1;  // planted fault: one block short
#else
  const int64_t x = ceil_div(lc, kTile);
#endif
  return {x, pairs < kMaxPairsY ? pairs : kMaxPairsY, 1};
}

// Fused forward: x = column tiles, y = (group, output-channel tile) pairs, z = batch items; each capped,
// the kernel strides over the rest.
D3D_HD int64_t fused_out_tiles(const DeformConv3dShape& s) { return ceil_div(s.o / s.group, kFusedM); }

inline Grid fused_grid(const DeformConv3dShape& s) {
  const int64_t x = ceil_div(s.out_spatial(), kFusedN), pairs = s.group * fused_out_tiles(s);
  return {x < 1 ? 1 : (x < kMaxBlocks1d ? x : kMaxBlocks1d), pairs < kMaxPairsY ? pairs : kMaxPairsY,
          s.n < kMaxBatchZ ? s.n : kMaxBatchZ};
}

}  // namespace launch
}  // namespace d3d
