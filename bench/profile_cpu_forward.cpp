// Where the time of the fused CPU forward goes, at D3Dnet's layer shape (64 -> 64, 3x3x3, T = 7,
// deform_dims "HW", random offsets): the whole forward with the kernel's own GEMM (its chunks as a
// pipeline, the next chunk gathered inside the GEMM, and one after the other; the two called in turn,
// 9 runs each) and with OpenBLAS's, the sampling alone (GEMM skipped), and each GEMM alone (sampling
// skipped), each the median of 5 runs.
//   build/bench/profile_cpu_forward [H W] [threads] [tile] [kernel depth: 3, or 1 for the layer folded to 2-D]
// Built by CMake next to the ONNX Runtime library (it links the same OpenBLAS).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "cblas.h"
#include "deform_conv3d_attrs.h"
#include "deform_conv3d_cpu_forward.h"

namespace {

// A parallel-for over std::threads: the range is split into one contiguous part per thread.
struct ThreadFor {
  int threads;
  template <typename Fn>
  void operator()(int64_t begin, int64_t end, const Fn& fn) const {
    const int64_t n = end - begin;
    if (n <= 0) return;
    const int64_t parts = std::min<int64_t>(threads, n);
    std::vector<std::thread> pool;
    for (int64_t p = 1; p < parts; ++p) {
      pool.emplace_back([&, p] { fn(begin + n * p / parts, begin + n * (p + 1) / parts); });
    }
    fn(begin, begin + n / parts);
    for (auto& t : pool) t.join();
  }
};

struct BlasGemm {
  void operator()(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc) const {
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(n),
                      static_cast<blasint>(k), 1.0f, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb), 0.0f,
                      c, static_cast<blasint>(ldc));
  }
};

struct NoGemm {
  void operator()(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t) const {}
};

// CPU time of the process in ms: on a shared machine it moves less with the other load than the
// wall clock does (divide by the thread count for an ideal wall time).
double cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// Median wall and CPU time of fn over `repeat` runs after one warm-up.
template <typename Fn>
std::pair<double, double> median_ms(const Fn& fn, int repeat) {
  fn();
  std::vector<double> wall, cpu;
  for (int i = 0; i < repeat; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_ms();
    fn();
    cpu.push_back(cpu_ms() - c0);
    wall.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  return {wall[wall.size() / 2], cpu[cpu.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t H = argc > 2 ? std::atoll(argv[1]) : 68, W = argc > 2 ? std::atoll(argv[2]) : 160;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 2;
  const int64_t tile = argc > 4 ? std::atoll(argv[4]) : d3d::cpu::kTilePositions;
  const int64_t kt = argc > 5 ? std::atoll(argv[5]) : 3;
  const int repeat = 5;
  scipy_openblas_set_num_threads(1);
  d3d::DeformConv3dAttrs a;
  a.pad[0] = kt / 2;
  a.pad[1] = a.pad[2] = 1;
  a.deform_dims = "HW";
  const int64_t in[5] = {1, 64, 7, H, W}, wd[5] = {64, 64, kt, 3, 3};
  d3d::DeformConv3dShape s;
  const std::string err = d3d::make_shape(a, in, wd, -1, &s);
  if (!err.empty()) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 1;
  }
  std::mt19937 rng(0);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(s.c * s.in_spatial()), off(s.offset_channels() * s.out_spatial()), w(64 * 64 * kt * 9), b(64);
  for (auto* v : {&x, &off, &w, &b})
    for (auto& e : *v) e = nd(rng);
  std::vector<float> y(s.o * s.out_spatial()), scratch(d3d::cpu::forward_scratch_elems(s));
  const ThreadFor par{threads};
  const int64_t L = s.out_spatial(), R = s.col_rows(), ntiles = (L + tile - 1) / tile;
  // The whole forward, with the kernel's own GEMM (where the CPU has one) or the host's (OpenBLAS).
  auto forward = [&](auto gemm, bool host_gemm, bool pipeline = true) {
    d3d::cpu::forward_fused(s, x.data(), off.data(), w.data(), b.data(), y.data(), scratch.data(), par, gemm, tile,
                            host_gemm, d3d::cpu::kChunkRows, pipeline);
  };
  // The GEMMs of every tile on a fixed column block (no sampling): the own GEMM in the forward's chunks
  // of taps, OpenBLAS over all of them.
  const int64_t crows = d3d::cpu::chunk_taps(s.taps(), s.c, d3d::cpu::kChunkRows) * s.c;
  const d3d::cpu::CpuIsa isa = d3d::cpu::cpu_isa();
  auto gemms = [&](bool own) {
    par(0, ntiles, [&](int64_t b0, int64_t e0) {
      std::vector<float> col(tile * R, 0.5f), acc(tile * s.o);
      for (int64_t t = b0; t < e0; ++t) {
        const int64_t nt = std::min(tile, L - t * tile);
        if (own && d3d::cpu::own_gemm_applies(s.o, isa)) {
          for (int64_t r0 = 0; r0 < R; r0 += crows)
            d3d::cpu::gemm_accumulate_f32(isa, nt, std::min(crows, R - r0), col.data(), crows, w.data() + r0 * s.o, s.o,
                                          acc.data(), r0 > 0);
          d3d::cpu::store_tile(acc.data(), nt, 1, s.o, b.data(), y.data() + t * tile, L);
        } else {
          BlasGemm{}(s.o, nt, R, w.data(), R, col.data(), R, y.data() + t * tile, L);
        }
      }
    });
  };
  // The pipelined and the plain chunk loop in turn, so that a drift of the machine meets both.
  std::vector<double> piped, plain;
  forward(BlasGemm{}, false, true);
  forward(BlasGemm{}, false, false);
  for (int i = 0; i < 9; ++i) {
    piped.push_back(median_ms([&] { forward(BlasGemm{}, false, true); }, 1).first);
    plain.push_back(median_ms([&] { forward(BlasGemm{}, false, false); }, 1).first);
  }
  std::sort(piped.begin(), piped.end());
  std::sort(plain.begin(), plain.end());
  const auto full = median_ms([&] { forward(BlasGemm{}, false); }, repeat);
  const auto full_host = median_ms([&] { forward(BlasGemm{}, true); }, repeat);
  const auto sample = median_ms([&] { forward(NoGemm{}, true); }, repeat);
  const auto own = median_ms([&] { gemms(true); }, repeat);
  const auto copy =
      median_ms([&] { d3d::cpu::to_channels_last(x.data(), s.c, s.in_spatial(), scratch.data(), par, isa); }, repeat);
  const auto host = median_ms([&] { gemms(false); }, repeat);
  const double gflop = 2.0 * s.o * s.col_rows() * s.out_spatial() / 1e9;
  std::printf(
      "%lldx%lld, %d threads, tile %lld, kernel path %s (D3D_CPU_ISA), OpenBLAS core %s; wall (CPU) ms:\n"
      "  forward %.1f (%.1f) | forward with OpenBLAS %.1f (%.1f) | sampling alone %.1f (%.1f), of it the channels-last "
      "copy %.1f (%.1f)\n"
      "  own GEMM, chunks pipelined vs one after the other, in turn: median %.1f vs %.1f (min %.1f vs %.1f)\n"
      "  own GEMMs alone %.1f (%.1f), %.0f GFLOP/s per thread | OpenBLAS GEMMs alone %.1f (%.1f), %.0f GFLOP/s per "
      "thread\n",
      (long long)H, (long long)W, threads, (long long)tile, d3d::cpu::cpu_isa_name(d3d::cpu::cpu_isa()),
      scipy_openblas_get_corename(), full.first, full.second, full_host.first, full_host.second, sample.first,
      sample.second, copy.first, copy.second, piped[piped.size() / 2], plain[plain.size() / 2], piped.front(),
      plain.front(), own.first, own.second, gflop / own.second * 1e3, host.first, host.second,
      gflop / host.second * 1e3);
  return 0;
}
