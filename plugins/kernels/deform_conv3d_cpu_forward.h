// The CPU forward of DeformConv3d: deformable sampling fused, tile by tile, with a GEMM the host
// supplies. One source for every CPU adapter: both pass OpenBLAS for fp32 (the PyTorch op falls back to
// ATen's BLAS for other types), the PyTorch op with at::parallel_for, the ONNX Runtime library with
// ONNX Runtime's thread pool.
//
// Per batch item: the input is copied once to channels-last [T*H*W, C], so that one located tap
// interpolates all channels of its offset group in a contiguous (vectorised) loop. The output
// positions are then cut into tiles of at most kTilePositions; each tile is one work item of the host's
// parallel-for: its column block colT [nt, G, K, C/G] (one row per position, tap-major) is written into
// a per-thread buffer that stays in cache, and the same thread multiplies it, per group, with the
// weight packed to [G, O/G, K, C/G]: Y[:, l0:l0+nt] = Wp_g . colT_g^T. Scratch memory is bounded by
// one input-sized copy plus one tile per thread, whatever the frame size.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_cpu_gemm.h"
#include "deform_conv3d_math.h"

// The hot loops are compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked at load time, so a
// portable library still uses the machine's vector width.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__CUDACC__) && \
    !defined(D3D_NO_TARGET_CLONES)
#define D3D_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define D3D_CPU_CLONES
#endif
#if defined(__GNUC__)
#define D3D_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define D3D_ALWAYS_INLINE inline
#endif

namespace d3d {
namespace cpu {

// Output positions per tile. 160 rows of 64 channels x 27 taps (1.1 MB in fp32) measured best on an
// AVX-512 EPYC with both MKL and OpenBLAS (bench/bench_deform_conv3d.py --tile).
constexpr int64_t kTilePositions = 160;

// Elements of scratch the caller provides to forward_fused(): the channels-last input of one batch item
// and the packed weight.
inline int64_t forward_scratch_elems(const DeformConv3dShape& s) {
  return s.c * s.in_spatial() + s.o * (s.c / s.group) * s.taps();
}

// The corners of one sampling point that carry weight, as pointers into a channels-last volume.
template <typename scalar_t>
struct CornerList {
  using acc_t = typename AccType<scalar_t>::type;
  const scalar_t* src[8];
  acc_t w[8];
  int n = 0;
};

// Locates (t, h, w) like locate() in deform_conv3d_math.h (same validity rule, same weights, same
// corner order) but keeps only the corners with a non-zero weight: an undeformed axis at an integer
// position, or a corner outside the volume, drops out. vol_cl is [T*H*W, ldc].
template <typename scalar_t, typename acc_t>
D3D_ALWAYS_INLINE void locate_corners(int64_t T, int64_t H, int64_t W, acc_t t, acc_t h, acc_t w,
                                      const scalar_t* vol_cl, int64_t ldc, CornerList<scalar_t>& out) {
  out.n = 0;
  if (!(t > acc_t(-1) && t < acc_t(T) && h > acc_t(-1) && h < acc_t(H) && w > acc_t(-1) && w < acc_t(W))) return;
  const int64_t t0 = static_cast<int64_t>(std::floor(t)), h0 = static_cast<int64_t>(std::floor(h)),
                w0 = static_cast<int64_t>(std::floor(w));
  const acc_t ft = t - acc_t(t0), fh = h - acc_t(h0), fw = w - acc_t(w0);
  const acc_t wt[2] = {acc_t(1) - ft, ft}, wh[2] = {acc_t(1) - fh, fh}, ww[2] = {acc_t(1) - fw, fw};
  // -1 < t < T gives -1 <= t0 <= T-1: only corner 0 can fall below the volume, only corner 1 above.
  const bool vt[2] = {t0 >= 0, t0 + 1 < T}, vh[2] = {h0 >= 0, h0 + 1 < H}, vw[2] = {w0 >= 0, w0 + 1 < W};
  for (int a = 0; a < 2; ++a) {
    if (!vt[a] || wt[a] == acc_t(0)) continue;
    for (int b = 0; b < 2; ++b) {
      if (!vh[b] || wh[b] == acc_t(0)) continue;
      for (int c = 0; c < 2; ++c) {
        if (!vw[c] || ww[c] == acc_t(0)) continue;
        out.src[out.n] = vol_cl + (((t0 + a) * H + h0 + b) * W + w0 + c) * ldc;
        out.w[out.n] = wt[a] * wh[b] * ww[c];
        ++out.n;
      }
    }
  }
}

// dst[0..n) = the located point's sample of n consecutive channels. The common corner counts (4 for
// a 2-D deformation inside the frame, 2 on its border, 8 for a 3-D one) are summed in registers and
// stored once.
template <typename scalar_t>
D3D_ALWAYS_INLINE void gather_row(const CornerList<scalar_t>& p, int64_t off, int64_t n, scalar_t* dst) {
  using acc_t = typename AccType<scalar_t>::type;
  const scalar_t* const* s = p.src;
  const acc_t* w = p.w;
  switch (p.n) {
    case 0:
      for (int64_t c = 0; c < n; ++c) dst[c] = scalar_t(0);
      return;
    case 1:
      for (int64_t c = off; c < off + n; ++c) dst[c - off] = from_acc<scalar_t>(w[0] * to_acc<acc_t>(s[0][c]));
      return;
    case 2:
      for (int64_t c = off; c < off + n; ++c)
        dst[c - off] = from_acc<scalar_t>(w[0] * to_acc<acc_t>(s[0][c]) + w[1] * to_acc<acc_t>(s[1][c]));
      return;
    case 4:
      for (int64_t c = off; c < off + n; ++c)
        dst[c - off] = from_acc<scalar_t>(w[0] * to_acc<acc_t>(s[0][c]) + w[1] * to_acc<acc_t>(s[1][c]) +
                                          w[2] * to_acc<acc_t>(s[2][c]) + w[3] * to_acc<acc_t>(s[3][c]));
      return;
    case 8:
      for (int64_t c = off; c < off + n; ++c)
        dst[c - off] = from_acc<scalar_t>(w[0] * to_acc<acc_t>(s[0][c]) + w[1] * to_acc<acc_t>(s[1][c]) +
                                          w[2] * to_acc<acc_t>(s[2][c]) + w[3] * to_acc<acc_t>(s[3][c]) +
                                          w[4] * to_acc<acc_t>(s[4][c]) + w[5] * to_acc<acc_t>(s[5][c]) +
                                          w[6] * to_acc<acc_t>(s[6][c]) + w[7] * to_acc<acc_t>(s[7][c]));
      return;
    default:
      for (int64_t c = off; c < off + n; ++c) {
        acc_t acc = acc_t(0);
        for (int q = 0; q < p.n; ++q) acc += w[q] * to_acc<acc_t>(s[q][c]);
        dst[c - off] = from_acc<scalar_t>(acc);
      }
  }
}

// Column block of output positions l0 .. l0+nt-1 (nt <= kTilePositions) of one batch item:
// colT[j, g, k, c'] = sample of channel g*C/G + c' at tap k for position l0 + j.
template <typename scalar_t>
D3D_ALWAYS_INLINE void sample_tile_impl(const DeformConv3dShape& s, const scalar_t* x_cl, const scalar_t* offset_n,
                                        int64_t l0, int64_t nt, scalar_t* colT) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t K = s.taps(), L = s.out_spatial(), R = s.col_rows();
  const int64_t cpg = s.c / s.group, cpo = s.c / s.offset_group;
  acc_t base[3][kTilePositions];  // undeformed sampling origin of each position, per axis
  for (int64_t j = 0; j < nt; ++j) {
    const int64_t l = l0 + j;
    const int64_t o[3] = {l / (s.out[1] * s.out[2]), (l / s.out[2]) % s.out[1], l % s.out[2]};
    for (int a = 0; a < 3; ++a) base[a][j] = acc_t(o[a] * s.stride[a] - s.pad[a]);
  }
  for (int64_t og = 0; og < s.offset_group; ++og) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t tap[3] = {k / (s.k[1] * s.k[2]), (k / s.k[2]) % s.k[1], k % s.k[2]};
      acc_t shift[3];
      const scalar_t* rec[3] = {nullptr, nullptr, nullptr};
      for (int a = 0; a < 3; ++a) {
        shift[a] = acc_t(tap[a] * s.dil[a]);
        if (s.slot[a] >= 0) rec[a] = offset_n + ((og * K + k) * s.nd + s.slot[a]) * L + l0;
      }
      for (int64_t j = 0; j < nt; ++j) {
        acc_t pos[3];
        for (int a = 0; a < 3; ++a) {
          pos[a] = base[a][j] + shift[a];
          if (rec[a] != nullptr) pos[a] += to_acc<acc_t>(rec[a][j]);
        }
        CornerList<scalar_t> p;
        locate_corners(s.t, s.h, s.w, pos[0], pos[1], pos[2], x_cl, s.c, p);
        scalar_t* row = colT + j * R;
        // The offset group's channels, in runs that never straddle a channel-group boundary.
        for (int64_t c = og * cpo; c < (og + 1) * cpo;) {
          const int64_t g = c / cpg, end = std::min((g + 1) * cpg, (og + 1) * cpo);
          gather_row(p, c, end - c, row + (g * K + k) * cpg + (c - g * cpg));
          c = end;
        }
      }
    }
  }
}

#ifdef D3D_AVX512_GEMM
// GCC 12 flags the intrinsics' own _mm512_undefined_* operands as maybe-uninitialized (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Lanes with 0 <= v < n; v clamped to [0, hi].
__attribute__((target("avx512f"), always_inline)) inline __mmask16 inside_avx512(__m512i v, __m512i n) {
  return static_cast<__mmask16>(_mm512_cmpge_epi32_mask(v, _mm512_setzero_si512()) & _mm512_cmplt_epi32_mask(v, n));
}
__attribute__((target("avx512f"), always_inline)) inline __m512i clamp_avx512(__m512i v, __m512i hi) {
  return _mm512_min_epi32(_mm512_max_epi32(v, _mm512_setzero_si512()), hi);
}

// sample_tile_impl for fp32 and deform_dims "HW" (D3Dnet's) on AVX-512: each tap is bilinear in (h, w)
// at an integer time index, and the corners of 16 positions are located at once in vector registers
// (the whole forward measured 6 % faster than locating one point at a time). A corner outside gets weight
// 0 and a pixel clamped into it, so the gather that follows has no branches. Same validity rule and
// weights as locate_corners: positions are first clamped to [-2, size + 1], so every lane converts to
// a small integer and NaN lands outside, as the comparisons there send it; the one difference is that a
// zero-weight corner's value is multiplied by 0 instead of skipped.
__attribute__((target("avx512f"))) inline void sample_tile_hw_avx512(const DeformConv3dShape& s, const float* x_cl,
                                                                     const float* offset_n, int64_t l0, int64_t nt,
                                                                     float* colT) {
  const int64_t K = s.taps(), L = s.out_spatial(), R = s.col_rows(), C = s.c;
  const int64_t cpg = s.c / s.group, cpo = s.c / s.offset_group;
  const int T = static_cast<int>(s.t), H = static_cast<int>(s.h), W = static_cast<int>(s.w);
  alignas(64) int32_t bt[kTilePositions + 16], bh[kTilePositions + 16], bw[kTilePositions + 16];
  for (int64_t j = 0; j < nt + 16; ++j) {  // past nt: any valid position (their results are not used)
    const int64_t l = l0 + std::min(j, nt - 1);
    bt[j] = static_cast<int32_t>((l / (s.out[1] * s.out[2])) * s.stride[0] - s.pad[0]);
    bh[j] = static_cast<int32_t>(((l / s.out[2]) % s.out[1]) * s.stride[1] - s.pad[1]);
    bw[j] = static_cast<int32_t>((l % s.out[2]) * s.stride[2] - s.pad[2]);
  }
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i vT = _mm512_set1_epi32(T), vH = _mm512_set1_epi32(H), vW = _mm512_set1_epi32(W);
  const __m512i vH1 = _mm512_set1_epi32(H - 1), vW1 = _mm512_set1_epi32(W - 1), vT1 = _mm512_set1_epi32(T - 1);
  const __m512 lo = _mm512_set1_ps(-2.0f), hiH = _mm512_set1_ps(H + 1.0f), hiW = _mm512_set1_ps(W + 1.0f);
  const __m512 fone = _mm512_set1_ps(1.0f);
  alignas(64) int32_t px[4][16];
  alignas(64) float wt[4][16];
  for (int64_t og = 0; og < s.offset_group; ++og) {
    for (int64_t k = 0; k < K; ++k) {
      const __m512i st = _mm512_set1_epi32(static_cast<int>((k / (s.k[1] * s.k[2])) * s.dil[0]));
      const __m512 sh = _mm512_set1_ps(static_cast<float>(((k / s.k[2]) % s.k[1]) * s.dil[1]));
      const __m512 sw = _mm512_set1_ps(static_cast<float>((k % s.k[2]) * s.dil[2]));
      const float* oh = offset_n + ((og * K + k) * s.nd + s.slot[1]) * L + l0;
      const float* ow = offset_n + ((og * K + k) * s.nd + s.slot[2]) * L + l0;
      for (int64_t j0 = 0; j0 < nt; j0 += 16) {
        const int nb = static_cast<int>(std::min<int64_t>(16, nt - j0));
        const __mmask16 live = static_cast<__mmask16>((1u << nb) - 1u);
        const __m512i t = _mm512_add_epi32(_mm512_load_si512(bt + j0), st);
        __m512 ph = _mm512_add_ps(_mm512_add_ps(_mm512_cvtepi32_ps(_mm512_load_si512(bh + j0)), sh),
                                  _mm512_maskz_loadu_ps(live, oh + j0));
        __m512 pw = _mm512_add_ps(_mm512_add_ps(_mm512_cvtepi32_ps(_mm512_load_si512(bw + j0)), sw),
                                  _mm512_maskz_loadu_ps(live, ow + j0));
        ph = _mm512_min_ps(_mm512_max_ps(ph, lo), hiH);  // max_ps(NaN, lo) is lo
        pw = _mm512_min_ps(_mm512_max_ps(pw, lo), hiW);
        const __m512 fh0 = _mm512_roundscale_ps(ph, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        const __m512 fw0 = _mm512_roundscale_ps(pw, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        const __m512i h0 = _mm512_cvttps_epi32(fh0), w0 = _mm512_cvttps_epi32(fw0);
        const __m512i h1 = _mm512_add_epi32(h0, one), w1 = _mm512_add_epi32(w0, one);
        const __m512 fh = _mm512_sub_ps(ph, fh0), fw = _mm512_sub_ps(pw, fw0);
        const __mmask16 vt = inside_avx512(t, vT);
        const __m512 gh0 = _mm512_maskz_mov_ps(vt & inside_avx512(h0, vH), _mm512_sub_ps(fone, fh));
        const __m512 gh1 = _mm512_maskz_mov_ps(vt & inside_avx512(h1, vH), fh);
        const __m512 gw0 = _mm512_maskz_mov_ps(inside_avx512(w0, vW), _mm512_sub_ps(fone, fw));
        const __m512 gw1 = _mm512_maskz_mov_ps(inside_avx512(w1, vW), fw);
        const __m512i tH = _mm512_mullo_epi32(clamp_avx512(t, vT1), vH);
        const __m512i r0 = _mm512_mullo_epi32(_mm512_add_epi32(tH, clamp_avx512(h0, vH1)), vW);
        const __m512i r1 = _mm512_mullo_epi32(_mm512_add_epi32(tH, clamp_avx512(h1, vH1)), vW);
        const __m512i c0 = clamp_avx512(w0, vW1), c1 = clamp_avx512(w1, vW1);
        _mm512_store_si512(px[0], _mm512_add_epi32(r0, c0));
        _mm512_store_si512(px[1], _mm512_add_epi32(r0, c1));
        _mm512_store_si512(px[2], _mm512_add_epi32(r1, c0));
        _mm512_store_si512(px[3], _mm512_add_epi32(r1, c1));
        _mm512_store_ps(wt[0], _mm512_mul_ps(gh0, gw0));
        _mm512_store_ps(wt[1], _mm512_mul_ps(gh0, gw1));
        _mm512_store_ps(wt[2], _mm512_mul_ps(gh1, gw0));
        _mm512_store_ps(wt[3], _mm512_mul_ps(gh1, gw1));
        for (int j = 0; j < nb; ++j) {
          const float* a = x_cl + int64_t(px[0][j]) * C;
          const float* b = x_cl + int64_t(px[1][j]) * C;
          const float* d = x_cl + int64_t(px[2][j]) * C;
          const float* e = x_cl + int64_t(px[3][j]) * C;
          const float w00 = wt[0][j], w01 = wt[1][j], w10 = wt[2][j], w11 = wt[3][j];
          float* row = colT + (j0 + j) * R;
          // A tap on a pixel (zero or integer offsets, e.g. an untrained model's) reads one corner.
          const bool on_pixel = w01 == 0.0f && w10 == 0.0f && w11 == 0.0f;
          for (int64_t c = og * cpo; c < (og + 1) * cpo;) {  // runs within one channel group
            const int64_t g = s.group == 1 ? 0 : c / cpg, end = std::min((g + 1) * cpg, (og + 1) * cpo);
            float* dst = row + (g * K + k) * cpg + (c - g * cpg);
            if (on_pixel) {
              for (int64_t i = 0; i < end - c; ++i) dst[i] = w00 * a[c + i];
            } else {
              for (int64_t i = 0; i < end - c; ++i)
                dst[i] = w00 * a[c + i] + w01 * b[c + i] + w10 * d[c + i] + w11 * e[c + i];
            }
            c = end;
          }
        }
      }
    }
  }
}
#pragma GCC diagnostic pop
#endif

// Whether sample_tile_hw_avx512 applies: fp32 on an AVX-512 CPU, only H and W deformed, pixel
// indices within int32.
inline bool hw_sampler_applies(const DeformConv3dShape& s) {
  return avx512_available() && s.slot[0] < 0 && s.slot[1] >= 0 && s.slot[2] >= 0 && s.in_spatial() < (int64_t(1) << 31);
}

template <typename scalar_t>
inline void sample_tile(const DeformConv3dShape& s, const scalar_t* x_cl, const scalar_t* offset_n, int64_t l0,
                        int64_t nt, scalar_t* colT) {
  sample_tile_impl(s, x_cl, offset_n, l0, nt, colT);
}

// fp32 (the deployment type): one clone per vector width.
D3D_CPU_CLONES inline void sample_tile_f32(const DeformConv3dShape& s, const float* x_cl, const float* offset_n,
                                           int64_t l0, int64_t nt, float* colT) {
  sample_tile_impl(s, x_cl, offset_n, l0, nt, colT);
}
template <>
inline void sample_tile<float>(const DeformConv3dShape& s, const float* x_cl, const float* offset_n, int64_t l0,
                               int64_t nt, float* colT) {
#ifdef D3D_AVX512_GEMM
  if (hw_sampler_applies(s)) return sample_tile_hw_avx512(s, x_cl, offset_n, l0, nt, colT);
#endif
  sample_tile_f32(s, x_cl, offset_n, l0, nt, colT);
}

// [C, V] -> [V, C] for one batch item, in blocks of positions (one parallel work item each).
template <typename scalar_t, typename ParFor>
void to_channels_last(const scalar_t* x_n, int64_t C, int64_t V, scalar_t* x_cl, const ParFor& par) {
  constexpr int64_t kBlock = 256;
  par(0, (V + kBlock - 1) / kBlock, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t v0 = blk * kBlock, v1 = std::min(V, v0 + kBlock);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = x_n + c * V;
        for (int64_t v = v0; v < v1; ++v) x_cl[v * C + c] = src[v];
      }
    }
  });
}

// A per-thread tile buffer, kept between calls (its size is bounded by one tile).
template <typename scalar_t>
scalar_t* tile_buffer(size_t elems) {
  thread_local std::vector<scalar_t> buf;
  if (buf.size() < elems) buf.resize(elems);
  return buf.data();
}

// y = deform_conv3d(x, offset, weight) + bias, all contiguous NCTHW, bias may be null.
//   scratch: forward_scratch_elems(s) elements.
//   par(begin, end, fn): the host's parallel-for; fn(b, e) processes items [b, e). Items never write
//     the same output element, so any split is safe.
//   gemm(m, n, k, A, lda, B, ldb, C, ldc): C[m x n] = A[m x k] . B[n x k]^T, row-major, run on the
//     calling thread (it is called from inside par). fp32 with output-channel groups of a multiple of
//     the vector width on an AVX2 or AVX-512 path uses the kernel's own GEMM instead
//     (deform_conv3d_cpu_gemm.h, cpu_isa()), unless host_gemm is set.
// Returns "" or the reason it failed (memory for the tile buffer); never throws.
template <typename scalar_t, typename ParFor, typename Gemm>
std::string forward_fused(const DeformConv3dShape& s, const scalar_t* x, const scalar_t* offset, const scalar_t* weight,
                          const scalar_t* bias, scalar_t* y, scalar_t* scratch, const ParFor& par, const Gemm& gemm,
                          int64_t tile = kTilePositions, bool host_gemm = false) {
  using acc_t = typename AccType<scalar_t>::type;
  tile = std::max<int64_t>(1, std::min(tile, kTilePositions));
  const int64_t K = s.taps(), L = s.out_spatial(), V = s.in_spatial(), R = s.col_rows();
  const int64_t G = s.group, cpg = s.c / G, opg = s.o / G, rows = cpg * K;
  bool own_gemm = false;
  if constexpr (std::is_same<scalar_t, float>::value) own_gemm = !host_gemm && own_gemm_applies(opg);
  scalar_t* x_cl = scratch;
  scalar_t* wp = scratch + s.c * V;
  if (own_gemm) {
    // Weight [O, C/G, K] -> [G, K, C/G, O/G]: per group, one row of output channels per column row.
    for (int64_t g = 0; g < G; ++g)
      for (int64_t o = 0; o < opg; ++o)
        for (int64_t c = 0; c < cpg; ++c)
          for (int64_t k = 0; k < K; ++k)
            wp[(g * rows + k * cpg + c) * opg + o] = weight[((g * opg + o) * cpg + c) * K + k];
  } else {
    // Weight [O, C/G, K] -> [O, K, C/G], the tap-major order of the column rows.
    for (int64_t o = 0; o < s.o; ++o)
      for (int64_t c = 0; c < cpg; ++c)
        for (int64_t k = 0; k < K; ++k) wp[(o * K + k) * cpg + c] = weight[(o * cpg + c) * K + k];
  }
  const int64_t ntiles = (L + tile - 1) / tile;
  std::atomic<bool> failed{false};
  for (int64_t n = 0; n < s.n; ++n) {
    to_channels_last(x + n * s.c * V, s.c, V, x_cl, par);
    const scalar_t* off_n = offset + n * s.offset_channels() * L;
    scalar_t* y_n = y + n * s.o * L;
    par(0, ntiles, [&](int64_t b, int64_t e) {
      scalar_t* colT = nullptr;
      try {
        colT = tile_buffer<scalar_t>(static_cast<size_t>(tile * R));
      } catch (const std::bad_alloc&) {
        failed = true;
        return;
      }
      for (int64_t t = b; t < e; ++t) {
        const int64_t l0 = t * tile, nt = std::min(tile, L - l0);
        sample_tile(s, x_cl, off_n, l0, nt, colT);
        if constexpr (std::is_same<scalar_t, float>::value) {
          if (own_gemm) {
            for (int64_t g = 0; g < G; ++g)
              gemm_tile_f32(nt, rows, colT + g * rows, R, wp + g * rows * opg, opg,
                            bias != nullptr ? bias + g * opg : nullptr, y_n + g * opg * L + l0, L);
            continue;
          }
        }
        for (int64_t g = 0; g < G; ++g) {
          scalar_t* yg = y_n + g * opg * L + l0;
          gemm(opg, nt, rows, wp + g * opg * rows, rows, colT + g * rows, R, yg, L);
          if (bias != nullptr) {
            for (int64_t o = 0; o < opg; ++o) {
              const acc_t bo = to_acc<acc_t>(bias[g * opg + o]);
              scalar_t* yo = yg + o * L;
              for (int64_t j = 0; j < nt; ++j) yo[j] = from_acc<scalar_t>(to_acc<acc_t>(yo[j]) + bo);
            }
          }
        }
      }
    });
    if (failed) return "out of memory for a column tile of " + std::to_string(tile * R) + " elements";
  }
  return "";
}

}  // namespace cpu
}  // namespace d3d
