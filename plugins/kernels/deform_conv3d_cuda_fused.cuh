// The fused forward for fp16 and bf16 (issue 22, option B of the cost model in docs/PERFORMANCE.md): no
// column buffer in global memory. Each block samples a kFusedK x kFusedN tile of the column matrix into
// shared memory (positions, interpolation weights and sums in fp32 by the shared math, the sample rounded
// once to the I/O type) next to the matching kFusedM x kFusedK weight tile, and its four warps multiply
// them on the tensor cores (warp_mma.h) into fp32 accumulators; bias is added in fp32 on the way out.
// Reads x, offsets and weights and writes y once: no workspace, no allocation, no synchronisation
// beyond the block's barriers, so it is safe under CUDA-graph capture.
//
// Included by deform_conv3d_cuda.cuh, after its D3D_LAUNCH and CUDA runtime preamble.
#pragma once

#include <cstdint>

#include "deform_conv3d_launch.h"
#include "deform_conv3d_math.h"
#include "warp_mma.h"

namespace d3d {
namespace cuda {

constexpr int kFusedPadAB = 8;  // keeps the 16-bit tiles' rows 32-byte aligned every 16 rows (wmma's rule)
constexpr int kFusedPadC = 4;   // and the fp32 tile's; the padding also staggers shared-memory banks

// The tile geometry the kernel's thread mapping assumes.
static_assert(launch::kFusedM == 2 * kWarpTile && launch::kFusedN == 2 * kWarpTile && launch::kFusedThreads == 128,
              "four warps, each one 32x32 quarter of the block's tile");
static_assert(launch::kFusedK % 16 == 0, "whole wmma k-steps per chunk");
static_assert(launch::kFusedThreads % launch::kFusedN == 0 &&
                  launch::kFusedK % (launch::kFusedThreads / launch::kFusedN) == 0,
              "the sampling threads cover the chunk's rows evenly");

template <typename scalar_t>
__global__ void __launch_bounds__(launch::kFusedThreads)
    fused_forward_kernel(DeformConv3dShape s, const scalar_t* x, const scalar_t* offset, const scalar_t* weight,
                         const scalar_t* bias, scalar_t* y) {
  using launch::kFusedK;
  using launch::kFusedM;
  using launch::kFusedN;
  using launch::kFusedThreads;
  constexpr int kLdA = kFusedK + kFusedPadAB, kLdB = kFusedN + kFusedPadAB, kLdC = kFusedN + kFusedPadC;
  __shared__ __align__(32) scalar_t a_s[kFusedM * kLdA];  // weights [m][kk]
  __shared__ __align__(32) scalar_t b_s[kFusedK * kLdB];  // sampled columns [kk][j]
  __shared__ __align__(32) float c_s[kFusedM * kLdC];     // the block's result [m][j]
  const int64_t L = s.out_spatial(), V = s.in_spatial(), K = s.taps();
  const int64_t cpg = s.c / s.group, opg = s.o / s.group, rows = cpg * K;
  const int64_t channels_per_offset_group = s.c / s.offset_group;
  const int64_t ctiles = launch::ceil_div(L, kFusedN), otiles = launch::fused_out_tiles(s);
  const int64_t pairs = s.group * otiles;
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int wm = (warp / 2) * kWarpTile, wn = (warp % 2) * kWarpTile;  // this warp's tile
  // Sampling: each thread fills one column j of the tile, rows [kk0, kk0 + kRowsPerThread).
  constexpr int kRowsPerThread = kFusedK / (kFusedThreads / kFusedN);
  const int j = static_cast<int>(threadIdx.x % kFusedN);
  const int kk0 = static_cast<int>(threadIdx.x / kFusedN) * kRowsPerThread;
  const scalar_t zero = from_acc<scalar_t>(0.0f);
  // Uniform across the block (blockIdx only), so the barriers inside are reached by every thread.
  for (int64_t n = blockIdx.z; n < s.n; n += gridDim.z) {
    const scalar_t* x_n = x + n * s.c * V;
    const scalar_t* off_n = offset + n * s.offset_channels() * L;
    scalar_t* y_n = y + n * s.o * L;
    for (int64_t pair = blockIdx.y; pair < pairs; pair += gridDim.y) {
      const int64_t g = pair / otiles, o0 = (pair % otiles) * kFusedM;
      for (int64_t tile = blockIdx.x; tile < ctiles; tile += gridDim.x) {
        const int64_t l0 = tile * kFusedN, l = l0 + j;
        WarpTile<scalar_t> acc;
        acc.zero();
        Corners<float, false> p{};  // this thread's column at one (offset group, tap): located once, reused
        int64_t located = -1;
        for (int64_t r0 = 0; r0 < rows; r0 += kFusedK) {
          // Rows run tap-major inside the group (row = k * cpg + c), so a chunk's channels share taps and
          // their located corners; the weight tile is read in the same order.
          for (int i = static_cast<int>(threadIdx.x); i < kFusedM * kFusedK; i += kFusedThreads) {
            const int m = i / kFusedK, kk = i % kFusedK;
            const int64_t o = o0 + m, r = r0 + kk;
#if defined(D3D_CUDA_ON_CPU_FAULT_KORDER)
            const int64_t wcol = r;  // planted fault (cuda_on_cpu_fault_korder): channel-major weight order
#else
            const int64_t wcol = (r % cpg) * K + r / cpg;  // weight [o][c * K + k]
#endif
            a_s[m * kLdA + kk] = (o < opg && r < rows) ? weight[(g * opg + o) * rows + wcol] : zero;
          }
          for (int kk = kk0; kk < kk0 + kRowsPerThread; ++kk) {
            const int64_t r = r0 + kk;
            float v = 0.0f;
            if (r < rows && l < L) {
              const int64_t k = r / cpg, c = g * cpg + r % cpg, og = c / channels_per_offset_group;
              if (og * K + k != located) {
                locate_tap(s, off_n, og, k, l, p);
                located = og * K + k;
              }
              v = gather(p, x_n + c * V);
            }
            b_s[kk * kLdB + j] = from_acc<scalar_t>(v);
          }
          __syncthreads();
#if defined(D3D_CUDA_ON_CPU_FAULT_WMMA_LD)
          acc.mma(a_s + wm * kLdA, kLdA - 1, b_s + wn, kLdB, kFusedK);  // planted fault: breaks wmma's ldm rule
#else
          acc.mma(a_s + wm * kLdA, kLdA, b_s + wn, kLdB, kFusedK);
#endif
          __syncthreads();
        }
        acc.store(c_s + wm * kLdC + wn, kLdC);
        __syncthreads();
        for (int i = static_cast<int>(threadIdx.x); i < kFusedM * kFusedN; i += kFusedThreads) {
          const int m = i / kFusedN, jj = i % kFusedN;
          const int64_t o = o0 + m, lo = l0 + jj;
          if (o < opg && lo < L) {
            float v = c_s[m * kLdC + jj];
            if (bias != nullptr) v += to_acc<float>(bias[g * opg + o]);
            y_n[(g * opg + o) * L + lo] = from_acc<scalar_t>(v);
          }
        }
        __syncthreads();  // c_s is rewritten by the next tile
      }
    }
  }
}

template <typename scalar_t>
void fused_forward(const DeformConv3dShape& s, const scalar_t* x, const scalar_t* offset, const scalar_t* weight,
                   const scalar_t* bias, scalar_t* y, cudaStream_t stream) {
  const launch::Grid g = launch::fused_grid(s);
  const dim3 grid(static_cast<unsigned>(g.x), static_cast<unsigned>(g.y), static_cast<unsigned>(g.z));
  D3D_LAUNCH(fused_forward_kernel, grid, launch::kFusedThreads, 0, stream, s, x, offset, weight, bias, y);
}

}  // namespace cuda
}  // namespace d3d
