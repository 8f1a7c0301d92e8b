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
// weight packed to [G, O/G, K, C/G]: Y[:, l0:l0+nt] = Wp_g . colT_g^T. With the kernel's own fp32 GEMM
// (AVX2, AVX-512) a tile is sampled and multiplied a chunk of taps at a time into the tile's
// accumulators, so the chunk is still in L1/L2 when it is multiplied. Scratch memory is bounded by one
// input-sized copy plus one tile per thread, whatever the frame size.
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

namespace d3d {
namespace cpu {

// Output positions per tile. 160 rows of 64 channels x 27 taps (1.1 MB in fp32) measured best on an
// AVX-512 EPYC with both MKL and OpenBLAS (bench/bench_deform_conv3d.py --tile).
constexpr int64_t kTilePositions = 160;
// Column rows per chunk of taps for the own GEMM: D3Dnet's 64 channels give chunks of 9 taps (one time
// slice of the 3x3x3 kernel). 192, 384, 576, 1152 and 1728 (no chunks) were compared at D3Dnet's layer
// on AVX2 (2026-12-04, docs/PERFORMANCE.md); 576 was fastest, 5-6 % ahead of no chunks.
constexpr int64_t kChunkRows = 576;

// Cache-line alignment of the buffers the vector code streams through: a 64-byte vector at an address
// that is not a multiple of 64 touches two cache lines (glibc's large allocations start 16 bytes past
// a page). kAlignSlack elements of any type cover one such shift.
constexpr size_t kAlignBytes = 64;
constexpr int64_t kAlignSlack = 64;
template <typename T>
T* align_up(T* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<T*>((a + kAlignBytes - 1) & ~uintptr_t(kAlignBytes - 1));
}

// Elements of scratch the caller provides to forward_fused(): the channels-last input of one batch item
// with a row of C zeros after it (read for a corner without weight), and the packed weight, each
// aligned to a cache line inside it.
inline int64_t forward_scratch_elems(const DeformConv3dShape& s) {
  return s.c * (s.in_spatial() + 1) + s.o * (s.c / s.group) * s.taps() + 2 * kAlignSlack;
}

// The located taps of a chunk for the vector sampler, one plane per corner (00, 01, 10, 11 in (h, w)):
// px[q][i] the corner's pixel in x_cl (the row of zeros where it has no weight), w[q][i] its weight.
// Tap (k, j) of a chunk is at i = (k - k0) * stride + j; stride is the tile rounded up to a whole
// number of the widest vectors, so that the sampler stores whole vectors.
struct LocatedTaps {
  // The planes are carved out of a float buffer: int32 reads of them must not assume they cannot alias.
#if defined(__GNUC__)
  typedef int32_t __attribute__((may_alias)) pixel_t;
#else
  typedef int32_t pixel_t;
#endif
  static constexpr int64_t kMaxLanes = 16;
  pixel_t* px[4];
  float* w[4];
  int64_t stride = 0;
  static int64_t elems(int64_t tile, int64_t kc) { return 8 * kc * stride_for(tile); }
  static int64_t stride_for(int64_t tile) { return (tile + kMaxLanes - 1) / kMaxLanes * kMaxLanes; }
  // Planes laid out in buf (elems(tile, kc) 32-bit elements, cache-line aligned).
  static LocatedTaps in(float* buf, int64_t tile, int64_t kc) {
    LocatedTaps t;
    t.stride = stride_for(tile);
    const int64_t plane = kc * t.stride;
    for (int q = 0; q < 4; ++q) {
      t.px[q] = reinterpret_cast<pixel_t*>(buf + q * plane);
      t.w[q] = buf + (4 + q) * plane;
    }
    return t;
  }
};

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
        const acc_t wc = wt[a] * wh[b] * ww[c];
        if (!vw[c] || wc == acc_t(0)) continue;  // the product: tiny fractions can underflow to 0
        out.src[out.n] = vol_cl + (((t0 + a) * H + h0 + b) * W + w0 + c) * ldc;
        out.w[out.n] = wc;
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

// fn(j, t, h, w) for the output positions l0 .. l0+n-1 of a batch item, (t, h, w) walked without a
// division per position (the samplers run this once per chunk of taps).
template <typename Fn>
D3D_ALWAYS_INLINE void for_positions(const DeformConv3dShape& s, int64_t l0, int64_t n, const Fn& fn) {
  int64_t t = l0 / (s.out[1] * s.out[2]), h = (l0 / s.out[2]) % s.out[1], w = l0 % s.out[2];
  for (int64_t j = 0; j < n; ++j) {
    fn(j, t, h, w);
    if (++w == s.out[2]) {
      w = 0;
      if (++h == s.out[1]) h = 0, ++t;
    }
  }
}

// Column block of output positions l0 .. l0+nt-1 (nt <= kTilePositions) and taps k0 .. k1-1 of one batch
// item: colT[j, g, k - k0, c'] = sample of channel g*C/G + c' at tap k for position l0 + j (rows
// C*(k1-k0) apart).
template <typename scalar_t>
D3D_ALWAYS_INLINE void sample_tile_impl(const DeformConv3dShape& s, const scalar_t* x_cl, const scalar_t* offset_n,
                                        int64_t l0, int64_t nt, int64_t k0, int64_t k1, scalar_t* colT) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t K = s.taps(), L = s.out_spatial(), Kc = k1 - k0, R = s.c * Kc;
  const int64_t cpg = s.c / s.group, cpo = s.c / s.offset_group;
  acc_t base[3][kTilePositions];  // undeformed sampling origin of each position, per axis
  for_positions(s, l0, nt, [&](int64_t j, int64_t ot, int64_t oh, int64_t ow) {
    const int64_t o[3] = {ot, oh, ow};
    for (int a = 0; a < 3; ++a) base[a][j] = acc_t(o[a] * s.stride[a] - s.pad[a]);
  });
  for (int64_t og = 0; og < s.offset_group; ++og) {
    for (int64_t k = k0; k < k1; ++k) {
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
          gather_row(p, c, end - c, row + (g * Kc + k - k0) * cpg + (c - g * cpg));
          c = end;
        }
      }
    }
  }
}

#ifdef D3D_AVX2_GEMM
#pragma GCC push_options
#pragma GCC target("avx2")
// dst[c * ld_dst + r] = src[r * ld_src + c] (+ bias[c]) for r < rows, c < cols, both multiples of 8, in
// 8 x 8 blocks transposed in registers; bias may be null. AVX2, which every vector path has. The
// channels-last copy and the tile's store did it element by element, with strided stores or loads: a
// quarter of the sampling's time at D3Dnet's layer folded to 2-D.
inline void transpose8_avx2(const float* src, int64_t ld_src, int64_t rows, int64_t cols, const float* bias, float* dst,
                            int64_t ld_dst) {
  for (int64_t c = 0; c < cols; c += 8)
    for (int64_t r = 0; r < rows; r += 8) {
      __m256 v[8], t[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(src + (r + i) * ld_src + c);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        v[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        v[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        v[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {  // v[i] and v[i + 4] hold columns c + i and c + i + 4, in halves
        __m256 lo = _mm256_permute2f128_ps(v[i], v[i + 4], 0x20), hi = _mm256_permute2f128_ps(v[i], v[i + 4], 0x31);
        if (bias != nullptr) {
          lo = _mm256_add_ps(lo, _mm256_set1_ps(bias[c + i]));
          hi = _mm256_add_ps(hi, _mm256_set1_ps(bias[c + i + 4]));
        }
        _mm256_storeu_ps(dst + (c + i) * ld_dst + r, lo);
        _mm256_storeu_ps(dst + (c + i + 4) * ld_dst + r, hi);
      }
    }
}
#pragma GCC pop_options
#endif

// y[(g*opg + o)*L + j] = acc[g, j, o] + bias[g*opg + o] for j < nt: the own GEMM's position-major
// accumulators into the channel-major output (opg is a multiple of the vector width there). Called only
// on the own GEMM's paths, AVX2 or wider, so the AVX2 transposes can run.
inline void store_tile(const float* acc, int64_t nt, int64_t G, int64_t opg, const float* bias, float* y, int64_t L) {
  int64_t j0 = 0;
#ifdef D3D_AVX2_GEMM
  j0 = opg % 8 == 0 ? nt / 8 * 8 : 0;
  for (int64_t g = 0; g < G && j0 > 0; ++g)
    transpose8_avx2(acc + g * nt * opg, opg, j0, opg, bias != nullptr ? bias + g * opg : nullptr, y + g * opg * L, L);
#endif
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < opg; ++o) {
      const float b = bias != nullptr ? bias[g * opg + o] : 0.0f;
      const float* a = acc + g * nt * opg + o;
      float* yo = y + (g * opg + o) * L;
      for (int64_t j = j0; j < nt; ++j) yo[j] = a[j * opg] + b;
    }
}

#ifdef D3D_AVX2_GEMM
// The vector sampler, once per instruction set, with the Isa of deform_conv3d_cpu_gemm.h.
// GCC 12 flags the intrinsics' own _mm512_undefined_* operands as maybe-uninitialized (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace isa_avx512 {
#include "deform_conv3d_cpu_sampler_body.h"
}  // namespace isa_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#include "deform_conv3d_cpu_sampler_body.h"
}  // namespace isa_avx2
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif

// Whether the vector sampler (deform_conv3d_cpu_sampler_body.h) applies: fp32 on an AVX2 or AVX-512
// path, only H and W deformed, pixel indices within int32.
inline bool hw_sampler_applies(const DeformConv3dShape& s, CpuIsa isa) {
  return isa != CpuIsa::generic && s.slot[0] < 0 && s.slot[1] >= 0 && s.slot[2] >= 0 &&
         s.in_spatial() < (int64_t(1) << 31);
}

// Whether forward_tiles_pipelined applies (with the own GEMM): the vector sampler's whole-vector case.
inline bool pipeline_applies(const DeformConv3dShape& s, CpuIsa isa) {
  return hw_sampler_applies(s, isa) && s.group == 1 && s.offset_group == 1 && s.c % cpu_isa_lanes(isa) == 0 &&
         own_gemm_applies(s.o, isa);
}

// Floats of a thread's pipeline buffer: two column chunks, the accumulators and the located taps.
inline int64_t pipeline_buffer_elems(const DeformConv3dShape& s, int64_t tile, int64_t kc) {
  return 2 * tile * s.c * kc + tile * s.o + LocatedTaps::elems(tile, kc);
}

// The tile's sampler on path `isa` (x_cl with its row of zeros after the volume).
template <typename scalar_t>
inline void sample_tile(CpuIsa isa, const DeformConv3dShape& s, const scalar_t* x_cl, const scalar_t* offset_n,
                        int64_t l0, int64_t nt, int64_t k0, int64_t k1, scalar_t* colT) {
  (void)isa;
  sample_tile_impl(s, x_cl, offset_n, l0, nt, k0, k1, colT);
}

// fp32 (the deployment type): one clone per vector width.
D3D_CPU_CLONES inline void sample_tile_f32(const DeformConv3dShape& s, const float* x_cl, const float* offset_n,
                                           int64_t l0, int64_t nt, int64_t k0, int64_t k1, float* colT) {
  sample_tile_impl(s, x_cl, offset_n, l0, nt, k0, k1, colT);
}
template <>
inline void sample_tile<float>(CpuIsa isa, const DeformConv3dShape& s, const float* x_cl, const float* offset_n,
                               int64_t l0, int64_t nt, int64_t k0, int64_t k1, float* colT) {
#ifdef D3D_AVX2_GEMM
  if (hw_sampler_applies(s, isa)) {
    if (isa == CpuIsa::avx512) return isa_avx512::sample_tile_hw(s, x_cl, offset_n, l0, nt, k0, k1, colT);
    return isa_avx2::sample_tile_hw(s, x_cl, offset_n, l0, nt, k0, k1, colT);
  }
#endif
  (void)isa;
  sample_tile_f32(s, x_cl, offset_n, l0, nt, k0, k1, colT);
}

// Taps per chunk for the own GEMM: about chunk_rows column rows of cpg channels each, at least one.
inline int64_t chunk_taps(int64_t K, int64_t cpg, int64_t chunk_rows) {
  return std::min(K, std::max<int64_t>(1, (chunk_rows + cpg - 1) / cpg));
}

// [C, V] -> [V, C] for one batch item, in blocks of positions (one parallel work item each); fp32 with
// C a multiple of 8 on a vector path in 8 x 8 register transposes, the rest element by element.
template <typename scalar_t, typename ParFor>
void to_channels_last(const scalar_t* x_n, int64_t C, int64_t V, scalar_t* x_cl, const ParFor& par,
                      CpuIsa isa = CpuIsa::generic) {
  constexpr int64_t kBlock = 256;
  // Every vector path (AVX2 or wider) can run the AVX2 transposes.
  [[maybe_unused]] const bool vector = std::is_same<scalar_t, float>::value && isa != CpuIsa::generic && C % 8 == 0;
  par(0, (V + kBlock - 1) / kBlock, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      int64_t v0 = blk * kBlock;
      const int64_t v1 = std::min(V, v0 + kBlock);
#ifdef D3D_AVX2_GEMM
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (vector) {
          const int64_t whole = v0 + (v1 - v0) / 8 * 8;
          transpose8_avx2(x_n + v0, V, C, whole - v0, nullptr, x_cl + v0 * C, C);
          v0 = whole;
        }
      }
#endif
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = x_n + c * V;
        for (int64_t v = v0; v < v1; ++v) x_cl[v * C + c] = src[v];
      }
    }
  });
}

// At least `elems` elements of T, one block per calling thread and Tag, kept from one call to the next
// and grown to the largest request (the old block freed first, never both at once), cache-line
// aligned. Throws std::bad_alloc.
template <typename Tag, typename T>
T* kept_thread_buffer(size_t elems) {
  thread_local std::vector<T> buf;
  if (buf.size() < elems + kAlignSlack) {
    std::vector<T>().swap(buf);
    buf.resize(elems + kAlignSlack);
  }
  return align_up(buf.data());
}

// A per-thread tile buffer (its size is bounded by one tile).
struct TileBufferTag {};
template <typename scalar_t>
scalar_t* tile_buffer(size_t elems) {
  return kept_thread_buffer<TileBufferTag, scalar_t>(elems);
}

// y = deform_conv3d(x, offset, weight) + bias, all contiguous NCTHW, bias may be null.
//   scratch: forward_scratch_elems(s) elements.
//   par(begin, end, fn): the host's parallel-for; fn(b, e) processes items [b, e). Items never write
//     the same output element, so any split is safe.
//   gemm(m, n, k, A, lda, B, ldb, C, ldc): C[m x n] = A[m x k] . B[n x k]^T, row-major, run on the
//     calling thread (it is called from inside par). fp32 with output-channel groups of a multiple of
//     the vector width on an AVX2 or AVX-512 path uses the kernel's own GEMM instead
//     (deform_conv3d_cpu_gemm.h, cpu_isa()), unless host_gemm is set; that GEMM takes the taps in chunks
//     of about chunk_rows column rows (the same sums in the same order whatever the chunk). Where the
//     vector sampler applies too with one group and one offset group (D3Dnet's layer), the chunks run
//     as a pipeline (forward_tiles_pipelined) unless `pipeline` is false: the same sums again.
// Returns "" or the reason it failed (memory for the tile buffer); never throws.
template <typename scalar_t, typename ParFor, typename Gemm>
std::string forward_fused(const DeformConv3dShape& s, const scalar_t* x, const scalar_t* offset, const scalar_t* weight,
                          const scalar_t* bias, scalar_t* y, scalar_t* scratch, const ParFor& par, const Gemm& gemm,
                          int64_t tile = kTilePositions, bool host_gemm = false, int64_t chunk_rows = kChunkRows,
                          bool pipeline = true) {
  using acc_t = typename AccType<scalar_t>::type;
  tile = std::max<int64_t>(1, std::min(tile, kTilePositions));
  const int64_t K = s.taps(), L = s.out_spatial(), V = s.in_spatial(), R = s.col_rows();
  const int64_t G = s.group, cpg = s.c / G, opg = s.o / G, rows = cpg * K;
  const CpuIsa isa = cpu_isa();  // once: every tile of this call takes the same path
  bool own_gemm = false;
  if constexpr (std::is_same<scalar_t, float>::value) own_gemm = !host_gemm && own_gemm_applies(opg, isa);
  scalar_t* x_cl = align_up(scratch);
  scalar_t* wp = align_up(x_cl + s.c * (V + 1));
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
  // The own GEMM takes the taps a few at a time (sample a chunk, multiply it in, next chunk), so the
  // column chunk, the weight rows it meets and the accumulators stay in L1/L2 instead of a whole
  // tile's column block streaming through L3; the host's GEMM takes all taps at once.
  const int64_t kc = own_gemm ? chunk_taps(K, cpg, chunk_rows) : K;
  pipeline = pipeline && own_gemm && pipeline_applies(s, isa);
  // [column chunk | accumulators (own GEMM)], or the pipeline's buffers
  const int64_t chunk_elems = tile * s.c * kc, acc_elems = own_gemm ? tile * s.o : 0;
  const int64_t tile_elems = pipeline ? pipeline_buffer_elems(s, tile, kc) : chunk_elems + acc_elems;
  const int64_t ntiles = (L + tile - 1) / tile;
  std::atomic<bool> failed{false};
  for (int64_t n = 0; n < s.n; ++n) {
    to_channels_last(x + n * s.c * V, s.c, V, x_cl, par, isa);
    std::fill(x_cl + s.c * V, x_cl + s.c * (V + 1), scalar_t(0));
    const scalar_t* off_n = offset + n * s.offset_channels() * L;
    scalar_t* y_n = y + n * s.o * L;
    par(0, ntiles, [&](int64_t b, int64_t e) {
      scalar_t* colT = nullptr;
      try {
        colT = tile_buffer<scalar_t>(static_cast<size_t>(tile_elems));
      } catch (const std::bad_alloc&) {
        failed = true;
        return;
      }
#ifdef D3D_AVX2_GEMM
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (pipeline) {
          if (isa == CpuIsa::avx512) {
            isa_avx512::forward_tiles_pipelined(s, x_cl, off_n, wp, bias, y_n, tile, kc, b, e, colT);
          } else {
            isa_avx2::forward_tiles_pipelined(s, x_cl, off_n, wp, bias, y_n, tile, kc, b, e, colT);
          }
          return;
        }
      }
#endif
      for (int64_t t = b; t < e; ++t) {
        const int64_t l0 = t * tile, nt = std::min(tile, L - l0);
        if constexpr (std::is_same<scalar_t, float>::value) {
          if (own_gemm) {
            float* acc = colT + chunk_elems;  // [G, nt, O/G]
            for (int64_t k0 = 0; k0 < K; k0 += kc) {
              const int64_t k1 = std::min(K, k0 + kc), crows = (k1 - k0) * cpg;
              sample_tile(isa, s, x_cl, off_n, l0, nt, k0, k1, colT);
              for (int64_t g = 0; g < G; ++g)
                gemm_accumulate_f32(isa, nt, crows, colT + g * crows, s.c * (k1 - k0), wp + (g * rows + k0 * cpg) * opg,
                                    opg, acc + g * nt * opg, k0 > 0);
            }
            store_tile(acc, nt, G, opg, bias, y_n + l0, L);
            continue;
          }
        }
        sample_tile(isa, s, x_cl, off_n, l0, nt, 0, K, colT);
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
    if (failed) return "out of memory for a column tile of " + std::to_string(tile_elems) + " elements";
  }
  return "";
}

}  // namespace cpu
}  // namespace d3d
