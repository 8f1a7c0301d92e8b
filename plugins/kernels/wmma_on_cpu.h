// The CPU executor's twin of the part of CUDA's warp matrix API (nvcuda::wmma, <mma.h>) that
// warp_mma.h uses: 16x16x16 tiles, A and B in fp16 or bf16, an fp32 accumulator. Its semantics are the
// documented ones (CUDA C++ Programming Guide, "Warp Matrix Functions"), checked where the guide sets a
// rule the GPU would not report: every call is warp-collective (all 32 lanes, the same arguments), mptr
// is 256-bit (32-byte) aligned, ldm is a multiple of 8 for 16-bit elements and of 4 for float. A broken
// rule is a launch error (cudaErrorMisalignedAddress), printed once per launch.
//
// After each block, every lane must have made all of lane 0's calls.
//
// A fragment holds the whole 16x16 tile in every lane (on the GPU each lane holds a part); lane 0 of the
// warp does the work and the other lanes check that they were called the same way, so the result and the
// shared memory written are those of one warp-wide operation. Products are summed in fp32 in k order:
// tensor cores' summation order and internal rounding differ, within the I/O type's tolerance.
#pragma once

#include <cstdint>
#include <cstdio>
#include <type_traits>
#include <vector>

#include "cuda_on_cpu.h"
#include "deform_conv3d_math.h"

namespace d3d {
namespace wmma_on_cpu {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the twin models the 16x16x16 shape only");
  T x[16 * 16];  // element (r, c) at x[r * 16 + c], whatever the memory layout it was loaded from
};

// The calls each warp's lane 0 made since the current block started, replayed by the other lanes.
struct Call {
  const void* ptr;
  unsigned ldm;
  int kind;
};
struct WarpLog {
  uint64_t block = ~uint64_t(0);
  std::vector<Call> calls;
  std::vector<size_t> next;  // per lane: index of its next call in `calls`
};

inline WarpLog& warp_log(unsigned warp) {
  static std::vector<WarpLog> logs;
  if (logs.size() <= warp) logs.resize(warp + 1);
  return logs[warp];
}

inline bool fail(const char* what, const void* ptr, unsigned ldm) {
  if (cuda_on_cpu::last_error == cudaSuccess) {
    std::fprintf(stderr, "wmma_on_cpu: %s (ptr %p, ldm %u, thread %u of block %u,%u,%u)\n", what, ptr, ldm, threadIdx.x,
                 blockIdx.x, blockIdx.y, blockIdx.z);
  }
  cuda_on_cpu::last_error = cudaErrorMisalignedAddress;
  return false;
}

// Records lane 0's call; checks another lane's against it. True for the lane that does the work.
inline bool collective(const void* ptr, unsigned ldm, int kind, unsigned elem_bytes) {
  const unsigned flat = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned warp = flat / 32, lane = flat % 32;
  if (ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % 32 != 0)
    return fail("pointer not 32-byte aligned", ptr, ldm);
  if (elem_bytes != 0 && (ldm * elem_bytes) % 16 != 0) return fail("ldm not a multiple of 16 bytes", ptr, ldm);
  WarpLog& log = warp_log(warp);
  if (log.block != cuda_on_cpu::block_serial) {
    log.block = cuda_on_cpu::block_serial;
    log.calls.clear();
    log.next.assign(32, 0);
  }
  if (lane == 0) {
    log.calls.push_back({ptr, ldm, kind});
    return true;
  }
  const size_t i = log.next[lane]++;
  if (i >= log.calls.size() || log.calls[i].ptr != ptr || log.calls[i].ldm != ldm || log.calls[i].kind != kind) {
    fail("not warp-uniform: a lane's call differs from lane 0's", ptr, ldm);
  }
  return false;
}

// After a block: every lane of each warp made all of lane 0's calls (a lane that skipped a
// warp-collective call would hang or compute garbage on a GPU).
inline bool check_block_end() {
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
  bool ok = true;
  for (unsigned warp = 0; warp * 32 < nthreads; ++warp) {
    WarpLog& log = warp_log(warp);
    if (log.block != cuda_on_cpu::block_serial) continue;  // no wmma call in this warp
    const unsigned lanes = nthreads - warp * 32 < 32 ? nthreads - warp * 32 : 32;
    for (unsigned lane = 1; lane < lanes; ++lane) {
      if (log.next[lane] != log.calls.size()) {
        ok = fail("not warp-uniform: a lane skipped a call lane 0 made", nullptr, 0);
        break;
      }
    }
  }
  return ok;
}

inline const bool kBlockEndCheckInstalled = (cuda_on_cpu::block_end_check = check_block_end, true);

template <typename T>
float as_float(T v) {
  return to_acc<float>(v);
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  if (!collective(p, ldm, 1, sizeof(T))) return;
  const bool col = std::is_same_v<Layout, col_major>;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = col ? p[c * ldm + r] : p[r * ldm + c];
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  for (float& e : f.x) e = v;  // per lane, as on the GPU (no memory touched)
}

template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  if (!collective(nullptr, 0, 2, 0)) return;
  float out[16 * 16];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float acc = c.x[m * 16 + n];
      for (int k = 0; k < 16; ++k) acc += as_float(a.x[m * 16 + k]) * as_float(b.x[k * 16 + n]);
      out[m * 16 + n] = acc;
    }
  for (int i = 0; i < 256; ++i) d.x[i] = out[i];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  if (!collective(p, ldm, 3, sizeof(float))) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      if (layout == mem_row_major) {
        p[r * ldm + c] = f.x[r * 16 + c];
      } else {
        p[c * ldm + r] = f.x[r * 16 + c];
      }
    }
}

}  // namespace wmma_on_cpu
}  // namespace d3d
