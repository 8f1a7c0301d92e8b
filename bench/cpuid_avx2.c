// An LD_PRELOAD library that makes an AVX-512 machine look like an AVX2 one to the whole process, so a
// benchmark compares like for like with what an AVX2 machine runs: ONNX Runtime's MLAS, oneDNN,
// OpenBLAS and our kernel all pick their kernels from CPUID, and MLAS has no switch of its own.
//
// It turns on Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, where the CPU and kernel offer it:
// `cpuid_fault` in /proc/cpuinfo): every CPUID instruction then traps, and the SIGSEGV handler here runs
// the real CPUID and clears the AVX-512 (and AVX-VNNI, AMX) feature bits of leaf 7, leaving an
// x86-64-v3 CPU. Threads inherit the setting; exec clears it.
//
// Limits: the dynamic linker reads CPUID before any library's constructor, so glibc's own string
// functions keep their AVX-512 variants; a library that installs its own SIGSEGV handler after this one
// (e.g. Python's -X faulthandler) would receive the traps instead. Benchmarks only, never a product path.
//   LD_PRELOAD=build/bench/libd3d_cpuid_avx2.so <command>
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static struct sigaction previous;

// Feature bits that exist only with AVX-512 (or AMX, or AVX-VNNI, which AVX2-only CPUs lack).
enum {
  kLeaf7Ebx = (1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31),
  kLeaf7Ecx = (1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14),
  kLeaf7Edx = (1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25),
  kLeaf7Sub1Eax = (1u << 4) | (1u << 5),
};

static void on_sigsegv(int sig, siginfo_t* info, void* context) {
  ucontext_t* uc = (ucontext_t*)context;
  greg_t* reg = uc->uc_mcontext.gregs;
  // A CPUID trap is a general-protection fault (SI_KERNEL) at the instruction 0F A2; check the code
  // first, so that an instruction pointer that is itself bad is never read.
  const unsigned char* ip = (const unsigned char*)reg[REG_RIP];
  if (info->si_code != SI_KERNEL || ip[0] != 0x0F || ip[1] != 0xA2) {
    (void)sig;
    sigaction(SIGSEGV, &previous, NULL);  // not ours: the fault happens again under the old handler
    return;
  }
  const unsigned leaf = (unsigned)reg[REG_RAX], sub = (unsigned)reg[REG_RCX];
  unsigned a, b, c, d;
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);  // this thread only, for the one real CPUID
  __cpuid_count(leaf, sub, a, b, c, d);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
  if (leaf == 7 && sub == 0) {
    b &= ~(unsigned)kLeaf7Ebx, c &= ~(unsigned)kLeaf7Ecx, d &= ~(unsigned)kLeaf7Edx;
  } else if (leaf == 7 && sub == 1) {
    a &= ~(unsigned)kLeaf7Sub1Eax;
  }
  reg[REG_RAX] = a, reg[REG_RBX] = b, reg[REG_RCX] = c, reg[REG_RDX] = d;
  reg[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigsegv;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &previous) != 0) return;
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    perror("libd3d_cpuid_avx2: CPUID faulting (arch_prctl ARCH_SET_CPUID) unavailable, AVX-512 not hidden");
    sigaction(SIGSEGV, &previous, NULL);
  }
}
