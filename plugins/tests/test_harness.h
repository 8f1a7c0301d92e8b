// Minimal check harness shared by the C++ unit tests: CHECK counts and reports failures without
// stopping, and the random generator is seeded fresh each run (the seed is printed for replay).
#pragma once

#include <cstdint>
#include <cstdio>
#include <random>

namespace d3d_test {

inline int g_failures = 0;
inline int g_checks = 0;

inline std::mt19937_64& rng() {
  static std::mt19937_64 r([] {
    const unsigned seed = std::random_device{}();
    std::printf("seed %u\n", seed);
    return seed;
  }());
  return r;
}
inline double uniform(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng()); }
inline int64_t randint(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng()); }

inline int report() {
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}

}  // namespace d3d_test

#define CHECK(cond, ...)                                          \
  do {                                                            \
    ++d3d_test::g_checks;                                         \
    if (!(cond)) {                                                \
      ++d3d_test::g_failures;                                     \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                   \
      std::printf("\n");                                          \
    }                                                             \
  } while (0)
