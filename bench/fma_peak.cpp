// This CPU's fp32 FMA peak per core, the yardstick for the CPU GEMM figures in docs/PERFORMANCE.md
// (not a test): 12 independent FMA chains in vector registers, enough to cover the FMA latency, timed
// on one thread and then on `threads` threads at once; 256-bit (AVX2) and, where the CPU has it, 512-bit.
//   build/bench/fma_peak [threads]
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

constexpr long kSteps = 100000000;

// GFLOP/s of one thread: 12 chains of 8-lane FMAs (AVX2 + FMA).
__attribute__((target("avx2,fma"))) double avx2_gflops() {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  const __m256 a = _mm256_set1_ps(0.9999f), b = _mm256_set1_ps(1e-6f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < kSteps; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  __m256 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm256_add_ps(sum, acc[i]);
  volatile float sink = _mm256_cvtss_f32(sum);  // keeps the chains
  (void)sink;
  return kSteps * 12.0 * 16.0 / s / 1e9;
}

// The same with 16-lane zmm FMAs (AVX-512F); on CPUs that split a zmm FMA in two (Zen 4) it shows
// whether the 512-bit path can beat the 256-bit one at all.
__attribute__((target("avx512f"))) double avx512_gflops() {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(0.9999f), b = _mm512_set1_ps(1e-6f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < kSteps; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  __m512 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(sum);  // keeps the chains
  (void)sink;
  return kSteps * 12.0 * 32.0 / s / 1e9;
}

// GFLOP/s of `threads` threads each running `one` at once.
double all_threads(double (*one)(), int threads) {
  std::vector<double> rate(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&rate, t, one] { rate[t] = one(); });
  for (auto& th : pool) th.join();
  double total = 0;
  for (double r : rate) total += r;
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::printf("this CPU has no AVX2 + FMA\n");
    return 1;
  }
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  if (threads < 1) {
    std::printf("usage: fma_peak [threads >= 1]\n");
    return 2;
  }
  std::printf("AVX2 FMA, one thread: %.1f GFLOP/s\n", avx2_gflops());
  std::printf("AVX2 FMA, %d threads at once: %.1f GFLOP/s in all\n", threads, all_threads(avx2_gflops, threads));
  if (__builtin_cpu_supports("avx512f")) {
    std::printf("AVX-512 FMA, one thread: %.1f GFLOP/s\n", avx512_gflops());
    std::printf("AVX-512 FMA, %d threads at once: %.1f GFLOP/s in all\n", threads, all_threads(avx512_gflops, threads));
  }
  return 0;
}
