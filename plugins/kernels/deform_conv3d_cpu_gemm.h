// The fused CPU forward's fp32 GEMM on AVX-512, for output-channel groups that are a multiple of 16:
//   y[o, l0 + j] = bias[o] + sum_r colT[j, r] * wt[r, o]   for j < nt, o < opg
// colT is the tile the sampling just wrote ([nt, R] row-major, still in cache) and wt the weight packed
// once per call to [rows, opg]. A BLAS would first copy ("pack") the tile into its own panel layout: at
// D3Dnet's shape that copy was a fifth of OpenBLAS's time. Here the tile is consumed where it lies: each
// step broadcasts one column value of P positions and multiplies it into the 16*V output channels held
// in registers (P x V = 24 accumulators), so the positions ride the broadcast and the channels the
// vector. Other machines, types and shapes use the host's GEMM.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && !defined(D3D_NO_AVX512_GEMM)
#include <immintrin.h>
#define D3D_AVX512_GEMM 1
#endif

namespace d3d {
namespace cpu {

#ifdef D3D_AVX512_GEMM

inline bool avx512_available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

// One block of np <= P positions x 16*V channels.
template <int V, int P>
__attribute__((target("avx512f"))) inline void gemm_block_avx512(int64_t rows, const float* a, int64_t lda, int np,
                                                                 const float* wt, int64_t ldw, float* ct) {
  __m512 acc[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = _mm512_setzero_ps();
  const float* ap[P];
  for (int p = 0; p < P; ++p) ap[p] = a + std::min(p, np - 1) * lda;  // a short block repeats its last row
  for (int64_t r = 0; r < rows; ++r) {
    __m512 w[V];
    for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_ps(wt + r * ldw + 16 * v);
    for (int p = 0; p < P; ++p) {
      const __m512 b = _mm512_set1_ps(ap[p][r]);
      for (int v = 0; v < V; ++v) acc[p][v] = _mm512_fmadd_ps(b, w[v], acc[p][v]);
    }
  }
  for (int p = 0; p < np; ++p)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(ct + p * 16 * V + 16 * v, acc[p][v]);
}

// Channels [ob, ob + 16*V) of every position of the tile, through a [P, 16*V] staging block that is
// transposed into y (channel-major), with the bias.
template <int V>
__attribute__((target("avx512f"))) inline void gemm_tile_avx512(int64_t nt, int64_t rows, const float* colT, int64_t R,
                                                                const float* wt, int64_t opg, int64_t ob,
                                                                const float* bias, float* y, int64_t L) {
  constexpr int P = 24 / V;
  alignas(64) float ct[P * 16 * V];
  for (int64_t j0 = 0; j0 < nt; j0 += P) {
    const int np = static_cast<int>(std::min<int64_t>(P, nt - j0));
    gemm_block_avx512<V, P>(rows, colT + j0 * R, R, np, wt + ob, opg, ct);
    for (int i = 0; i < 16 * V; ++i) {
      const float b = bias != nullptr ? bias[ob + i] : 0.0f;
      float* yo = y + (ob + i) * L + j0;
      for (int p = 0; p < np; ++p) yo[p] = ct[p * 16 * V + i] + b;
    }
  }
}

// y[o, j] (row stride L) for o < opg, j < nt; false where this GEMM does not apply (the caller then uses
// the host's). colT rows are R apart and hold `rows` values for this group from their start.
inline bool gemm_tile_f32(int64_t nt, int64_t rows, const float* colT, int64_t R, const float* wt, int64_t opg,
                          const float* bias, float* y, int64_t L) {
  if (opg % 16 != 0 || !avx512_available()) return false;
  for (int64_t ob = 0; ob < opg;) {
    switch (std::min<int64_t>(4, (opg - ob) / 16)) {
      case 4:
        gemm_tile_avx512<4>(nt, rows, colT, R, wt, opg, ob, bias, y, L);
        ob += 64;
        break;
      case 3:
        gemm_tile_avx512<3>(nt, rows, colT, R, wt, opg, ob, bias, y, L);
        ob += 48;
        break;
      case 2:
        gemm_tile_avx512<2>(nt, rows, colT, R, wt, opg, ob, bias, y, L);
        ob += 32;
        break;
      default:
        gemm_tile_avx512<1>(nt, rows, colT, R, wt, opg, ob, bias, y, L);
        ob += 16;
    }
  }
  return true;
}

#else

inline bool avx512_available() { return false; }
inline bool gemm_tile_f32(int64_t, int64_t, const float*, int64_t, const float*, int64_t, const float*, float*,
                          int64_t) {
  return false;
}

#endif

}  // namespace cpu
}  // namespace d3d
