// An LD_PRELOAD library that makes an AVX-512 machine look like an AVX2 one to the whole process, so a
// benchmark compares like for like with what an AVX2 machine runs: ONNX Runtime's MLAS, oneDNN,
// OpenBLAS and our kernel all pick their kernels from CPUID, and MLAS has no switch of its own.
//
// It turns on Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, where the CPU and kernel offer it:
// `cpuid_fault` in /proc/cpuinfo): every CPUID instruction then traps, and the SIGSEGV handler here runs
// the real CPUID and clears the AVX-512, AVX10, AMX and AVX-VNNI feature bits (leaf 7; leaf 0x24, AVX10's,
// reads as zeros), leaving an x86-64-v3 CPU like a Zen 2/3 or a Skylake. Threads inherit the setting;
// exec clears it. Any other SIGSEGV goes to the handler that was there before, or kills as usual.
//
// Limits: code that reads CPUID before this library's constructor runs (the dynamic linker, so glibc's
// string functions; constructors of libraries the program links) keeps the real features; a thread
// that blocks SIGSEGV dies on its first CPUID; a handler installed after this one (Python's faulthandler,
// PYTHONFAULTHANDLER; GCC's cc1plus) receives the traps and crashes, so bench/avx2_machine.py keeps it
// out of child processes. Benchmarks only, never a product path.
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

// Leaf 7 subleaf 0: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL (EBX); VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ
// (ECX); 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 (EDX).
static const unsigned kLeaf7Ebx = 0xDC230000u, kLeaf7Ecx = 0x00005842u, kLeaf7Edx = 0x03C0010Cu;
// Leaf 7 subleaf 1: AVX-VNNI, AVX512-BF16, AMX-FP16 (EAX); AMX-COMPLEX, AVX10 (EDX).
static const unsigned kLeaf7Sub1Eax = 0x00200030u, kLeaf7Sub1Edx = 0x00080100u;

// The handler that was installed before ours, for a SIGSEGV that is not a CPUID trap.
static void pass_on(int sig, siginfo_t* info, void* context) {
  if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction != NULL) {
    previous.sa_sigaction(sig, info, context);
    return;
  }
  if (!(previous.sa_flags & SA_SIGINFO) && previous.sa_handler == SIG_IGN) return;
  if (!(previous.sa_flags & SA_SIGINFO) && previous.sa_handler != SIG_DFL) {
    previous.sa_handler(sig);
    return;
  }
  signal(SIGSEGV, SIG_DFL);            // the default action: the process dies of SIGSEGV
  if (info->si_code <= 0) raise(sig);  // sent by kill() or raise(): send it again, returning drops it
  // a real fault happens again on return, now under the default action
}

static void on_sigsegv(int sig, siginfo_t* info, void* context) {
  ucontext_t* uc = (ucontext_t*)context;
  greg_t* reg = uc->uc_mcontext.gregs;
  // A CPUID trap is a general-protection fault (SI_KERNEL) at the instruction 0F A2; check the code
  // first, so that an instruction pointer that is itself bad is never read.
  const unsigned char* ip = (const unsigned char*)reg[REG_RIP];
  if (info->si_code != SI_KERNEL || ip[0] != 0x0F || ip[1] != 0xA2) {
    pass_on(sig, info, context);
    return;
  }
  const unsigned leaf = (unsigned)reg[REG_RAX], sub = (unsigned)reg[REG_RCX];
  unsigned a, b, c, d;
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);  // this thread only, for the one real CPUID
  __cpuid_count(leaf, sub, a, b, c, d);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
  if (leaf == 7 && sub == 0) {
    b &= ~kLeaf7Ebx, c &= ~kLeaf7Ecx, d &= ~kLeaf7Edx;
  } else if (leaf == 7 && sub == 1) {
    a &= ~kLeaf7Sub1Eax, d &= ~kLeaf7Sub1Edx;
  } else if (leaf == 0x24) {
    a = b = c = d = 0;
  }
  reg[REG_RAX] = a, reg[REG_RBX] = b, reg[REG_RCX] = c, reg[REG_RDX] = d;  // CPUID zeroes the upper halves
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
