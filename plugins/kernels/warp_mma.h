// One warp's 32x32 fp32 accumulator tile and its multiply-accumulate from shared memory: the interface
// between the fused forward (deform_conv3d_cuda_fused.cuh) and the tensor cores.
//
// Two implementations: CUDA's warp matrix API (nvcuda::wmma, 16x16x16 fragments; fp16 from sm_70, bf16
// from sm_80) and a portable one on CUDA cores (one tile row per lane) for a type the architecture has no
// tensor cores for. The host build (D3D_CUDA_ON_CPU) runs the wmma code against the twin of
// wmma_on_cpu.h, which checks the calls' alignment, leading dimensions and warp uniformity; with
// D3D_WARP_MMA_PORTABLE it runs the portable one instead. What only a GPU executes: the real wmma
// intrinsics (fragment layouts inside the tensor cores), listed as GPU-only in docs/PERFORMANCE.md.
#pragma once

#if defined(D3D_CUDA_ON_CPU)
#include "wmma_on_cpu.h"
#else
#include <mma.h>
#endif

#include "deform_conv3d_math.h"

namespace d3d {
namespace cuda {

#if defined(D3D_CUDA_ON_CPU)
namespace wmma = ::d3d::wmma_on_cpu;
#else
namespace wmma = ::nvcuda::wmma;
#endif

// Whether the architecture being compiled has tensor cores for T. Meaningful in device code only: nvcc's
// host pass has no architecture and always says true, so host code must not dispatch on it (the tile is
// used inside kernels alone; the CPU test only prints it).
template <typename T>
struct HasTensorCores {
  static constexpr bool value = false;
};
#if !defined(D3D_WARP_MMA_PORTABLE)
#if defined(D3D_CUDA_ON_CPU) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
template <>
struct HasTensorCores<__half> {
  static constexpr bool value = true;
};
#endif
#if defined(D3D_CUDA_ON_CPU) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <>
struct HasTensorCores<__nv_bfloat16> {
  static constexpr bool value = true;
};
#endif
#endif

constexpr int kWarpTile = 32;  // a warp's tile is kWarpTile x kWarpTile outputs

template <typename T, bool kTensorCores = HasTensorCores<T>::value>
struct WarpTile;

// Tensor cores: 2x2 accumulator fragments of 16x16.
template <typename T>
struct WarpTile<T, true> {
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];

  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }
  // acc += a * b: a is kWarpTile x depth, b is depth x kWarpTile, both row-major in shared memory (32-byte
  // aligned, leading dimensions multiples of 8 elements); depth is a multiple of 16.
  __device__ void mma(const T* a, int lda, const T* b, int ldb, int depth) {
    for (int k = 0; k < depth; k += 16) {  // depth is a compile-time constant at the call: unrolled
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], a + i * 16 * lda + k, lda);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], b + k * ldb + j * 16, ldb);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  // c (fp32, shared memory, row-major, ldc a multiple of 4) = the tile.
  __device__ void store(float* c, int ldc) const {
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(c + i * 16 * ldc + j * 16, acc[i][j], ldc, wmma::mem_row_major);
  }
};

// CUDA cores: lane l owns row l of the tile. The same contract as above.
template <typename T>
struct WarpTile<T, false> {
  float acc[kWarpTile];

  __device__ void zero() {
    for (float& v : acc) v = 0.0f;
  }
  __device__ void mma(const T* a, int lda, const T* b, int ldb, int depth) {
    const int lane = static_cast<int>(threadIdx.x % 32);
    for (int k = 0; k < depth; ++k) {
      const float av = to_acc<float>(a[lane * lda + k]);
      for (int n = 0; n < kWarpTile; ++n) acc[n] += av * to_acc<float>(b[k * ldb + n]);
    }
  }
  __device__ void store(float* c, int ldc) const {
    const int lane = static_cast<int>(threadIdx.x % 32);
    for (int n = 0; n < kWarpTile; ++n) c[lane * ldc + n] = acc[n];
  }
};

}  // namespace cuda
}  // namespace d3d
