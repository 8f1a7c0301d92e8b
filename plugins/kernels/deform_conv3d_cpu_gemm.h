// The fused CPU forward's fp32 GEMM, for output-channel groups that are a multiple of the vector width:
//   acc[j, o] (+)= sum_r colT[j, r] * wt[r, o]   for j < nt, o < opg
// colT is the chunk of taps the sampling just wrote ([nt, rows] row-major, still in cache), wt the
// weight packed once per call to [rows, opg] and acc the tile's position-major accumulators, carried
// from one chunk of taps to the next (deform_conv3d_cpu_forward.h). A BLAS would first copy ("pack") the
// chunk into its own panel layout: at D3Dnet's shape that copy was a fifth of OpenBLAS's time. Here the
// chunk is consumed where it lies: each step broadcasts one column value of P positions and multiplies
// it into the V vectors of output channels held in registers, so the positions ride the broadcast and
// the channels the vector.
//
// One body (deform_conv3d_cpu_gemm_body.h) compiled per instruction set and chosen at run time:
//   avx512: 16 lanes, P x V = 24 accumulators of the 32 registers, V <= 4;
//   avx2:   8 lanes (AVX2 + FMA), P x V = 12 accumulators of the 16 registers, V <= 2 (6 x 16);
//   generic: none, the host's GEMM (OpenBLAS, ATen) is used.
// Each ISA's `Isa` also carries the operations of the vector sampler (deform_conv3d_cpu_sampler_body.h,
// included per ISA by deform_conv3d_cpu_forward.h).
// The CPU decides (CPUID); D3D_CPU_ISA=avx2|avx512|generic lowers the choice (never above what the CPU
// has), so an AVX-512 machine tests and benchmarks the AVX2 path too.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && !defined(D3D_NO_AVX512_GEMM)
#include <immintrin.h>
#define D3D_AVX512_GEMM 1
#define D3D_AVX2_GEMM 1
#endif

#if defined(__GNUC__)
#define D3D_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define D3D_ALWAYS_INLINE inline
#endif

namespace d3d {
namespace cpu {

// The GEMM's side.row() hook (deform_conv3d_cpu_gemm_body.h) with nothing to interleave.
struct NoSide {
  D3D_ALWAYS_INLINE void row() {}
};

enum class CpuIsa : int { generic = 0, avx2 = 1, avx512 = 2 };

inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512:
      return "avx512";
    case CpuIsa::avx2:
      return "avx2";
    default:
      return "generic";
  }
}

// The best path this CPU (and this build) can execute.
inline CpuIsa detected_cpu_isa() {
#ifdef D3D_AVX2_GEMM
  static const CpuIsa isa = __builtin_cpu_supports("avx512f")                                 ? CpuIsa::avx512
                            : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? CpuIsa::avx2
                                                                                              : CpuIsa::generic;
  return isa;
#else
  return CpuIsa::generic;
#endif
}

// The path requested by D3D_CPU_ISA, capped at the detected one; the detected one when unset or
// unrecognised.
inline CpuIsa isa_from_env() {
  const CpuIsa best = detected_cpu_isa();
  const char* v = std::getenv("D3D_CPU_ISA");
  if (v == nullptr) return best;
  CpuIsa want = best;
  if (std::strcmp(v, "generic") == 0) want = CpuIsa::generic;
  if (std::strcmp(v, "avx2") == 0) want = CpuIsa::avx2;
  if (std::strcmp(v, "avx512") == 0) want = CpuIsa::avx512;
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

inline std::atomic<int>& selected_isa_slot() {
  static std::atomic<int> slot{static_cast<int>(isa_from_env())};
  return slot;
}

// The path the fused forward takes now.
inline CpuIsa cpu_isa() { return static_cast<CpuIsa>(selected_isa_slot().load(std::memory_order_relaxed)); }

// Forces a path (tests, benchmarks); false, and nothing changed, where the CPU cannot execute it.
inline bool force_cpu_isa(CpuIsa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detected_cpu_isa())) return false;
  selected_isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

#ifdef D3D_AVX512_GEMM
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace isa_avx512 {
struct Isa {
  using vec = __m512;
  using ivec = __m512i;
  using mask = __mmask16;
  static constexpr int kLanes = 16, kAccumulators = 24, kMaxVectors = 4;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
  static vec broadcast(float x) { return _mm512_set1_ps(x); }
  static vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  // the sampler's (deform_conv3d_cpu_sampler_body.h)
  static vec load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<mask>((1u << n) - 1u), p); }
  static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  static vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
  static vec max(vec a, vec b) { return _mm512_max_ps(a, b); }  // b where a is NaN
  static vec floor(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static vec to_float(ivec a) { return _mm512_cvtepi32_ps(a); }
  static ivec to_int(vec a) { return _mm512_cvttps_epi32(a); }
  static ivec iset1(int x) { return _mm512_set1_epi32(x); }
  static ivec iload(const int32_t* p) { return _mm512_load_si512(p); }
  static void istore(int32_t* p, ivec v) { _mm512_store_si512(p, v); }
  static ivec iadd(ivec a, ivec b) { return _mm512_add_epi32(a, b); }
  static ivec imul(ivec a, ivec b) { return _mm512_mullo_epi32(a, b); }
  static ivec clamp(ivec v, ivec hi) { return _mm512_min_epi32(_mm512_max_epi32(v, _mm512_setzero_si512()), hi); }
  static mask inside(ivec v, ivec n) {  // 0 <= v < n
    return static_cast<mask>(_mm512_cmpge_epi32_mask(v, _mm512_setzero_si512()) & _mm512_cmplt_epi32_mask(v, n));
  }
  static mask both(mask a, mask b) { return static_cast<mask>(a & b); }
  static vec select(mask m, vec v) { return _mm512_maskz_mov_ps(m, v); }  // v where m, else 0
  static mask nonzero(vec v) { return _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_OQ); }
  static ivec iselect(mask m, ivec a, ivec b) { return _mm512_mask_blend_epi32(m, b, a); }  // a where m, else b
};
#include "deform_conv3d_cpu_gemm_body.h"
}  // namespace isa_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
struct Isa {
  using vec = __m256;
  using ivec = __m256i;
  using mask = __m256i;  // all ones in a lane that is set
  static constexpr int kLanes = 8, kAccumulators = 12, kMaxVectors = 2;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static vec broadcast(float x) { return _mm256_set1_ps(x); }
  static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  // the sampler's (deform_conv3d_cpu_sampler_body.h)
  static vec load_first(const float* p, int n) {  // lanes >= n are 0 and not read
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
  static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }  // b where a is NaN
  static vec floor(vec a) { return _mm256_floor_ps(a); }
  static vec to_float(ivec a) { return _mm256_cvtepi32_ps(a); }
  static ivec to_int(vec a) { return _mm256_cvttps_epi32(a); }
  static ivec iset1(int x) { return _mm256_set1_epi32(x); }
  static ivec iload(const int32_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  static void istore(int32_t* p, ivec v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
  static ivec iadd(ivec a, ivec b) { return _mm256_add_epi32(a, b); }
  static ivec imul(ivec a, ivec b) { return _mm256_mullo_epi32(a, b); }
  static ivec clamp(ivec v, ivec hi) { return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_setzero_si256()), hi); }
  static mask inside(ivec v, ivec n) {  // 0 <= v < n
    return _mm256_and_si256(_mm256_cmpgt_epi32(v, _mm256_set1_epi32(-1)), _mm256_cmpgt_epi32(n, v));
  }
  static mask both(mask a, mask b) { return _mm256_and_si256(a, b); }
  static vec select(mask m, vec v) { return _mm256_and_ps(_mm256_castsi256_ps(m), v); }  // v where m, else 0
  static mask nonzero(vec v) { return _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_OQ)); }
  static ivec iselect(mask m, ivec a, ivec b) { return _mm256_blendv_epi8(b, a, m); }  // a where m, else b
};
#include "deform_conv3d_cpu_gemm_body.h"
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

// fp32 lanes of a vector on path `isa`; 0 on the generic path (no vector code of ours).
inline int64_t cpu_isa_lanes(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512:
      return 16;
    case CpuIsa::avx2:
      return 8;
    default:
      return 0;
  }
}

// Whether the kernel's own GEMM applies to output-channel groups of opg on the selected path.
inline bool own_gemm_applies(int64_t opg, CpuIsa isa = cpu_isa()) {
  const int64_t lanes = cpu_isa_lanes(isa);
  return lanes > 0 && opg % lanes == 0;
}

// acc[j, o] (rows opg apart) = (accumulate ? acc[j, o] : 0) + sum_{r < rows} colT[j, r] * wt[r, o] for
// j < nt, o < opg; false where this GEMM does not apply (the caller then uses the host's). colT rows are
// lda apart. A sum cut into chunks of rows, the first with accumulate false, adds its products in the
// same order as one call over all rows. isa: the path, read once by the caller, so that a concurrent
// force_cpu_isa() cannot change it halfway through a sum.
inline bool gemm_accumulate_f32(CpuIsa isa, int64_t nt, int64_t rows, const float* colT, int64_t lda, const float* wt,
                                int64_t opg, float* acc, bool accumulate) {
  if (!own_gemm_applies(opg, isa)) return false;
#ifdef D3D_AVX2_GEMM
  NoSide none;
  if (isa == CpuIsa::avx512) {
    isa_avx512::gemm_chunk_all(nt, rows, colT, lda, wt, opg, acc, accumulate, none);
  } else {
    isa_avx2::gemm_chunk_all(nt, rows, colT, lda, wt, opg, acc, accumulate, none);
  }
  return true;
#else
  (void)nt, (void)rows, (void)colT, (void)lda, (void)wt, (void)acc, (void)accumulate;
  return false;
#endif
}

}  // namespace cpu
}  // namespace d3d
