// OpenBLAS (the scipy-openblas32 build, symbols prefixed scipy_) as the GEMM of the fused CPU forward,
// loaded at run time from a given path. Shared by the ONNX Runtime library (which ships the library
// beside itself) and the PyTorch op (which uses the wheel's copy): host-only, no framework types.
//
// OpenBLAS picks its kernels for the CPU when it loads (OPENBLAS_CORETYPE overrides; on AMD Zen 5 its own
// choice, SkylakeX, runs D3Dnet's tile GEMM at ~180 GFLOP/s per core, forcing Haswell at ~92). It is set
// to one thread: the host's parallel-for calls it from its own workers.
#pragma once

#include <dlfcn.h>

#include <cstdint>
#include <mutex>
#include <string>

namespace d3d {
namespace cpu {

using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);

struct OpenBlas {
  SgemmFn sgemm = nullptr;  // null where loading failed
  void (*set_threads)(int) = nullptr;
  std::string error;     // why it failed
  std::string corename;  // the kernels OpenBLAS chose
};

// Loads the library at `path` once per library that includes this header (later calls return the
// first result, whatever path). Where the process already has a scipy-openblas32 OpenBLAS (e.g. the
// PyTorch op's and the ONNX Runtime library's in one process), that one is reused: two instances of
// OpenBLAS in one process each keep their own thread settings (observed: one ended up multi-threaded
// under ONNX Runtime's workers, 10x slower). `static`: the once-flag stays private to each library
// (an inline function's statics would be merged across libraries by the dynamic linker).
static inline const OpenBlas& load_openblas(const std::string& path) {
  static OpenBlas b;
  static std::once_flag once;
  std::call_once(once, [&path] {
    void* h = dlopen("libscipy_openblas.so", RTLD_NOW | RTLD_NOLOAD);
    if (h == nullptr) h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* why = dlerror();
      b.error = "cannot load OpenBLAS from " + path + " (" + (why ? why : "unknown error") + ")";
      return;
    }
    auto sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "scipy_cblas_sgemm"));
    auto set_threads = reinterpret_cast<void (*)(int)>(dlsym(h, "scipy_openblas_set_num_threads"));
    auto corename = reinterpret_cast<char* (*)()>(dlsym(h, "scipy_openblas_get_corename"));
    if (sgemm == nullptr || set_threads == nullptr) {
      b.error = path + " lacks scipy_cblas_sgemm / scipy_openblas_set_num_threads (not a scipy-openblas32 build)";
      return;
    }
    set_threads(1);
    b.set_threads = set_threads;
    if (corename != nullptr && corename() != nullptr) b.corename = corename();
    b.sgemm = sgemm;
  });
  return b;
}

// The fused forward's GEMM for fp32: C[m x n] = A[m x k] . B[n x k]^T, row-major, on the calling thread.
struct OpenBlasGemm {
  SgemmFn sgemm;
  void operator()(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc) const {
    constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values
    sgemm(kRowMajor, kNoTrans, kTrans, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f, a,
          static_cast<int>(lda), b, static_cast<int>(ldb), 0.0f, c, static_cast<int>(ldc));
  }
};

}  // namespace cpu
}  // namespace d3d
