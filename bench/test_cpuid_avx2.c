// ctest cpuid_avx2_mask: run under LD_PRELOAD=libd3d_cpuid_avx2.so, CPUID must show AVX2 and FMA but
// no AVX-512F, while /proc/cpuinfo (the kernel's view) lists avx512f. Exit 77 (skipped) where the
// machine has no AVX-512 to hide, or no CPUID faulting, or refuses it (a seccomp filter).
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int cpuinfo_has(const char* flag) {
  FILE* f = fopen("/proc/cpuinfo", "r");
  char line[8192];
  int found = 0;
  size_t n = strlen(flag);
  while (f != NULL && !found && fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, "flags", 5) != 0) continue;
    for (const char* p = strstr(line, flag); p != NULL && !found; p = strstr(p + 1, flag))
      found = p[-1] == ' ' && (p[n] == ' ' || p[n] == '\n');
  }
  if (f != NULL) fclose(f);
  return found;
}

int main(void) {
  if (!cpuinfo_has("avx512f") || !cpuinfo_has("cpuid_fault")) {
    printf("not run: this CPU has %s\n", cpuinfo_has("avx512f") ? "no CPUID faulting" : "no AVX-512 to hide");
    return 77;
  }
  if (syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0) == 1) {  // CPUID not faulting: the preload did not turn it on
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
      printf("not run: CPUID faulting is refused here\n");
      return 77;
    }
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    printf("CPUID faulting is available but the preloaded library did not turn it on\n");
    return 1;
  }
  unsigned a, b, c, d;
  __cpuid_count(7, 0, a, b, c, d);
  const int avx512f = (b >> 16) & 1, avx2 = (b >> 5) & 1;
  __cpuid(1, a, b, c, d);
  const int fma = (c >> 12) & 1;
  printf("CPUID under the mask: avx512f %d, avx2 %d, fma %d\n", avx512f, avx2, fma);
  return avx512f == 0 && avx2 == 1 && fma == 1 ? 0 : 1;
}
