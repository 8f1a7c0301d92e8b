// The fused CPU forward's fp32 GEMM, for output-channel groups that are a multiple of the vector width:
//   y[o, l0 + j] = bias[o] + sum_r colT[j, r] * wt[r, o]   for j < nt, o < opg
// colT is the tile the sampling just wrote ([nt, R] row-major, still in cache) and wt the weight packed
// once per call to [rows, opg]. A BLAS would first copy ("pack") the tile into its own panel layout: at
// D3Dnet's shape that copy was a fifth of OpenBLAS's time. Here the tile is consumed where it lies: each
// step broadcasts one column value of P positions and multiplies it into the V vectors of output
// channels held in registers, so the positions ride the broadcast and the channels the vector.
//
// One body (deform_conv3d_cpu_gemm_body.h) compiled per instruction set and chosen at run time:
//   avx512: 16 lanes, P x V = 24 accumulators of the 32 registers, V <= 4;
//   avx2:   8 lanes (AVX2 + FMA), P x V = 12 accumulators of the 16 registers, V <= 2 (6 x 16);
//   generic: none, the host's GEMM (OpenBLAS, ATen) is used.
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

namespace d3d {
namespace cpu {

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

inline bool avx512_available() { return cpu_isa() == CpuIsa::avx512; }

#ifdef D3D_AVX512_GEMM
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace isa_avx512 {
struct Isa {
  using vec = __m512;
  static constexpr int kLanes = 16, kAccumulators = 24, kMaxVectors = 4;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
  static vec broadcast(float x) { return _mm512_set1_ps(x); }
  static vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
};
#include "deform_conv3d_cpu_gemm_body.h"
}  // namespace isa_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
struct Isa {
  using vec = __m256;
  static constexpr int kLanes = 8, kAccumulators = 12, kMaxVectors = 2;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static vec broadcast(float x) { return _mm256_set1_ps(x); }
  static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
};
#include "deform_conv3d_cpu_gemm_body.h"
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

// Whether the kernel's own GEMM applies to output-channel groups of opg on the selected path.
inline bool own_gemm_applies(int64_t opg) {
  switch (cpu_isa()) {
    case CpuIsa::avx512:
      return opg % 16 == 0;
    case CpuIsa::avx2:
      return opg % 8 == 0;
    default:
      return false;
  }
}

// y[o, j] (row stride L) for o < opg, j < nt; false where this GEMM does not apply (the caller then uses
// the host's). colT rows are R apart and hold `rows` values for this group from their start.
inline bool gemm_tile_f32(int64_t nt, int64_t rows, const float* colT, int64_t R, const float* wt, int64_t opg,
                          const float* bias, float* y, int64_t L) {
  if (!own_gemm_applies(opg)) return false;
#ifdef D3D_AVX2_GEMM
  if (cpu_isa() == CpuIsa::avx512) {
    isa_avx512::gemm_tile_all(nt, rows, colT, R, wt, opg, bias, y, L);
  } else {
    isa_avx2::gemm_tile_all(nt, rows, colT, R, wt, opg, bias, y, L);
  }
  return true;
#else
  (void)nt, (void)rows, (void)colT, (void)R, (void)wt, (void)bias, (void)y, (void)L;
  return false;
#endif
}

}  // namespace cpu
}  // namespace d3d
