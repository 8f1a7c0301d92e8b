// CUDA launchers over the shared DeformConv3d math (deform_conv3d_math.h). Used by the PyTorch CUDA op
// (forward: cuda::forward, the same call as the plugin's; backward: im2col/col2im/offset_grad with
// ATen's GEMM), by the TensorRT plugin and by the ONNX Runtime CUDA kernel. Needs only the CUDA runtime:
// fp16/bf16 take the fused tensor-core kernel (deform_conv3d_cuda_fused.cuh), fp32/fp64 the chunked
// im2col and our own tiled GEMM, so the plugin library depends on no cuBLAS/cuDNN.
#pragma once

#if defined(D3D_CUDA_ON_CPU)
#include "cuda_on_cpu.h"  // host build: D3D_LAUNCH runs the kernels on the CPU executor
#else
#include <cuda_runtime.h>
// Every kernel launch of ours goes through this macro so that the host build can replace it.
#define D3D_LAUNCH(kernel, grid, block, shmem, stream, ...) kernel<<<grid, block, shmem, stream>>>(__VA_ARGS__)
#endif

#include <algorithm>
#include <cstdint>

#include <type_traits>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_cuda_fused.cuh"
#include "deform_conv3d_launch.h"
#include "deform_conv3d_math.h"

namespace d3d {
namespace cuda {

using launch::kThreads;
using launch::kTile;

inline dim3 to_dim3(const launch::Grid& g) {
  return dim3(static_cast<unsigned>(g.x), static_cast<unsigned>(g.y), static_cast<unsigned>(g.z));
}

// One thread per (offset group, tap, column): the tap is located once and applied to every channel of
// the group; consecutive threads take consecutive columns, so col writes coalesce.
#define D3D_TAP_LOOP(s, lc)                                                                \
  const int64_t K = s.taps(), cpg = s.c / s.offset_group, total = s.offset_group * K * lc; \
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;          \
       idx += int64_t(blockDim.x) * gridDim.x)

template <typename scalar_t>
__global__ void im2col_kernel(DeformConv3dShape s, const scalar_t* input_n, const scalar_t* offset_n, int64_t l0,
                              int64_t lc, scalar_t* col) {
  D3D_TAP_LOOP(s, lc) {
    const int64_t ci = idx % lc, k = (idx / lc) % K, g = idx / (lc * K);
    im2col_tap(s, input_n, offset_n, g, k, l0 + ci, g * cpg, (g + 1) * cpg, col, lc, ci);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void col2im_kernel(DeformConv3dShape s, const scalar_t* grad_col, const scalar_t* offset_n, int64_t l0,
                              int64_t lc, acc_t* grad_input_n) {
  D3D_TAP_LOOP(s, lc) {
    const int64_t ci = idx % lc, k = (idx / lc) % K, g = idx / (lc * K);
    col2im_tap(s, grad_col, lc, ci, offset_n, g, k, l0 + ci, g * cpg, (g + 1) * cpg, grad_input_n, ScatterAdd());
  }
}

template <typename scalar_t>
__global__ void offset_grad_kernel(DeformConv3dShape s, const scalar_t* grad_col, const scalar_t* input_n,
                                   const scalar_t* offset_n, int64_t l0, int64_t lc, scalar_t* grad_offset_n) {
  D3D_TAP_LOOP(s, lc) {
    (void)cpg;
    const int64_t ci = idx % lc, k = (idx / lc) % K, g = idx / (lc * K);
    offset_grad_tap(s, grad_col, lc, ci, input_n, offset_n, g, k, l0 + ci, grad_offset_n);
  }
}

#undef D3D_TAP_LOOP

template <typename scalar_t>
void im2col(const DeformConv3dShape& s, const scalar_t* input_n, const scalar_t* offset_n, int64_t l0, int64_t lc,
            scalar_t* col, cudaStream_t stream) {
  D3D_LAUNCH(im2col_kernel, to_dim3(launch::im2col_grid(s, lc)), kThreads, 0, stream, s, input_n, offset_n, l0, lc,
             col);
}

template <typename scalar_t, typename acc_t>
void col2im(const DeformConv3dShape& s, const scalar_t* grad_col, const scalar_t* offset_n, int64_t l0, int64_t lc,
            acc_t* grad_input_n, cudaStream_t stream) {
  D3D_LAUNCH(col2im_kernel, to_dim3(launch::im2col_grid(s, lc)), kThreads, 0, stream, s, grad_col, offset_n, l0, lc,
             grad_input_n);
}

template <typename scalar_t>
void offset_grad(const DeformConv3dShape& s, const scalar_t* grad_col, const scalar_t* input_n,
                 const scalar_t* offset_n, int64_t l0, int64_t lc, scalar_t* grad_offset_n, cudaStream_t stream) {
  D3D_LAUNCH(offset_grad_kernel, to_dim3(launch::im2col_grid(s, lc)), kThreads, 0, stream, s, grad_col, input_n,
             offset_n, l0, lc, grad_offset_n);
}

// Grouped GEMM with bias: y_n[o, l0 + l] = bias[o] + sum_r W[o, r] * col[g*rows + r, l], fp32 accumulate.
// Shared-memory tiles of 16x16, one output element per thread. blockIdx.x picks a tile of columns;
// blockIdx.y strides over the (group, output-channel tile) pairs, which can outnumber grid.y's 65535
// (launch::gemm_grid). Simple and dependency-free: the plugin then needs only the CUDA runtime.
template <typename scalar_t>
__global__ void grouped_gemm_bias_kernel(DeformConv3dShape s, const scalar_t* weight, const scalar_t* bias,
                                         const scalar_t* col, int64_t lc, scalar_t* y_n, int64_t l0) {
  using acc_t = typename AccType<scalar_t>::type;
  __shared__ acc_t ws[kTile][kTile + 1];
  __shared__ acc_t cs[kTile][kTile + 1];
  const int64_t opg = s.o / s.group, rows = (s.c / s.group) * s.taps();
  const int64_t otiles = launch::gemm_out_tiles(s), pairs = s.group * otiles;
  const int64_t ci = int64_t(blockIdx.x) * kTile + threadIdx.x;
#if defined(D3D_CUDA_ON_CPU_FAULT_LD)
  const int64_t kColLd = lc > 1 ? lc - 1 : lc;  // planted fault (cuda_on_cpu_fault_ld): wrong leading dimension
#else
  const int64_t kColLd = lc;  // col is [groups * rows, lc], row-major
#endif
  // Uniform across the block (depends on blockIdx only), so the barriers inside are safe.
  for (int64_t pair = blockIdx.y; pair < pairs; pair += gridDim.y) {
    const int64_t g = pair / otiles;
    const int64_t o_local = (pair % otiles) * kTile + threadIdx.y;
    const int64_t o = g * opg + o_local;
    acc_t acc = acc_t(0);
    for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
      const int64_t wr = r0 + threadIdx.x;  // weight tile: row o, column wr
      ws[threadIdx.y][threadIdx.x] = (o_local < opg && wr < rows) ? to_acc<acc_t>(weight[o * rows + wr]) : acc_t(0);
      const int64_t cr = r0 + threadIdx.y;  // col tile: row cr, column ci
      cs[threadIdx.y][threadIdx.x] =
          (cr < rows && ci < lc) ? to_acc<acc_t>(col[(g * rows + cr) * kColLd + ci]) : acc_t(0);
      __syncthreads();
#pragma unroll
      for (int r = 0; r < kTile; ++r) acc += ws[threadIdx.y][r] * cs[r][threadIdx.x];
      __syncthreads();
    }
    if (o_local < opg && ci < lc) {
      if (bias != nullptr) acc += to_acc<acc_t>(bias[o]);
      y_n[o * s.out_spatial() + l0 + ci] = from_acc<scalar_t>(acc);
    }
  }
}

// fp32/fp64 forward: per batch item and column chunk, im2col into the workspace, then the grouped GEMM.
template <typename scalar_t>
void forward_im2col_gemm(const DeformConv3dShape& s, const scalar_t* x, const scalar_t* offset, const scalar_t* weight,
                         const scalar_t* bias, scalar_t* y, scalar_t* workspace, int64_t L, int64_t chunk,
                         cudaStream_t stream) {
  for (int64_t n = 0; n < s.n; ++n) {
    const scalar_t* x_n = x + n * s.c * s.in_spatial();
    const scalar_t* off_n = offset + n * s.offset_channels() * L;
    scalar_t* y_n = y + n * s.o * L;
    for (int64_t l0 = 0; l0 < L; l0 += chunk) {
      const int64_t lc = std::min(chunk, L - l0);
      im2col(s, x_n, off_n, l0, lc, workspace, stream);
      D3D_LAUNCH(grouped_gemm_bias_kernel, to_dim3(launch::gemm_grid(s, lc)), dim3(kTile, kTile), 0, stream, s, weight,
                 bias, workspace, lc, y_n, l0);
    }
  }
}

// The 16-bit types go through the fused tensor-core kernel; the others through im2col + tiled GEMM.
template <typename scalar_t>
constexpr bool kFusedForward = std::is_same_v<scalar_t, __half> || std::is_same_v<scalar_t, __nv_bfloat16>;

// Forward pass on one stream. fp32/fp64: chunked im2col into the workspace, then the grouped GEMM;
// workspace must hold col_rows() * col_chunk(s, max_col_elems) elements of scalar_t. fp16/bf16: the fused
// kernel, which uses no workspace.
template <typename scalar_t>
cudaError_t forward(const DeformConv3dShape& s, const scalar_t* x, const scalar_t* offset, const scalar_t* weight,
                    const scalar_t* bias, scalar_t* y, scalar_t* workspace, int64_t max_col_elems,
                    cudaStream_t stream) {
  const int64_t L = s.out_spatial(), chunk = col_chunk(s, max_col_elems);
  if constexpr (kFusedForward<scalar_t>) {
    (void)workspace;
    (void)L;
    (void)chunk;
    fused_forward(s, x, offset, weight, bias, y, stream);
  } else {
    forward_im2col_gemm(s, x, offset, weight, bias, y, workspace, L, chunk, stream);
  }
#if defined(D3D_CUDA_ON_CPU)
  return cuda_on_cpu::take_last_error();
#else
  return cudaGetLastError();
#endif
}

}  // namespace cuda
}  // namespace d3d
