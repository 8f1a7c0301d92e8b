// CPU executor for our CUDA kernels: a host C++ build of deform_conv3d_cuda.cuh (D3D_CUDA_ON_CPU) runs
// every D3D_LAUNCH on the CPU with the launch geometry the GPU would get. Each block's threads run as
// cooperative fibers (ucontext) on one OS thread; __syncthreads() switches back to the block's scheduler,
// which resumes every thread once all of them have reached the barrier, so static __shared__ arrays
// and barriers behave as on the GPU. A barrier reached by only part of a block (divergent
// __syncthreads) and a geometry beyond CUDA's limits are reported as launch errors.
#pragma once

#include <cuda_runtime_api.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

// The CUDA headers' host-compiler definitions of these keywords are replaced by plain C++.
#undef __global__
#undef __shared__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __shared__ static  // one array per kernel instantiation, shared by the running block's threads
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace d3d {
namespace cuda_on_cpu {

inline dim3 threadIdx, blockIdx, blockDim, gridDim;  // the running thread's CUDA built-ins
inline cudaError_t last_error = cudaSuccess;
inline uint64_t block_serial = 0;  // counts the blocks run, so per-block state (wmma_on_cpu) can tell them apart
// Called after each block completes (wmma_on_cpu checks that every lane made every warp-collective call);
// returns false for a launch error.
inline bool (*block_end_check)() = nullptr;

struct Block {
  ucontext_t scheduler;
  std::vector<ucontext_t> threads;
  std::vector<std::vector<char>> stacks;
  std::vector<int> state;  // 0 runnable, 1 at barrier, 2 done
  std::vector<dim3> idx;
  int current = 0;
  const std::function<void()>* body = nullptr;
};

inline Block& block() {
  static Block b;
  return b;
}

inline void thread_entry() {
  Block& b = block();
  (*b.body)();
  b.state[b.current] = 2;  // uc_link returns to the scheduler
}

inline void syncthreads() {
  Block& b = block();
  b.state[b.current] = 1;
  swapcontext(&b.threads[b.current], &b.scheduler);
}

// A fresh fiber for thread t of the block. Out of line and loop-free: getcontext returns twice, which
// lets the compiler clobber a caller's variables that change after it (-Wclobbered).
[[gnu::noinline]] inline void start_fiber(Block& b, uint64_t t, size_t stack_bytes) {
  getcontext(&b.threads[t]);
  b.threads[t].uc_stack.ss_sp = b.stacks[t].data();
  b.threads[t].uc_stack.ss_size = stack_bytes;
  b.threads[t].uc_link = &b.scheduler;
  makecontext(&b.threads[t], thread_entry, 0);
}

inline void start_threads(Block& b, dim3 threads, size_t stack_bytes) {
  uint64_t t = 0;
  for (unsigned z = 0; z < threads.z; ++z)
    for (unsigned y = 0; y < threads.y; ++y)
      for (unsigned x = 0; x < threads.x; ++x, ++t) {
        b.idx[t] = dim3(x, y, z);
        b.state[t] = 0;
        start_fiber(b, t, stack_bytes);
      }
}

// Runs body once per (block, thread) of the geometry; returns the launch's error (also kept for
// cudaGetLastError's twin, last_launch_error).
inline cudaError_t launch(dim3 grid, dim3 threads, const std::function<void()>& body) {
  const uint64_t nthreads = uint64_t(threads.x) * threads.y * threads.z;
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u ||
      nthreads < 1 || nthreads > 1024 || threads.z > 64) {
    return last_error = cudaErrorInvalidConfiguration;
  }
  constexpr size_t kStack = 64 * 1024;
  Block& b = block();
  b.body = &body;
  b.threads.resize(nthreads);
  b.state.assign(nthreads, 0);
  b.idx.resize(nthreads);
  if (b.stacks.size() < nthreads) b.stacks.resize(nthreads, std::vector<char>(kStack));
  blockDim = threads;
  gridDim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        ++block_serial;
        start_threads(b, threads, kStack);
        for (;;) {  // one phase per barrier
          for (uint64_t i = 0; i < nthreads; ++i) {
            if (b.state[i] == 2) continue;
            b.state[i] = 0;
            b.current = static_cast<int>(i);
            threadIdx = b.idx[i];
            swapcontext(&b.scheduler, &b.threads[i]);
          }
          uint64_t done = 0;
          for (int st : b.state) done += st == 2;
          if (done == nthreads) {
            if (block_end_check != nullptr && !block_end_check()) return last_error = cudaErrorLaunchFailure;
            break;
          }
          if (done != 0) {
            std::fprintf(stderr, "cuda_on_cpu: __syncthreads reached by %llu of %llu threads of a block\n",
                         static_cast<unsigned long long>(nthreads - done), static_cast<unsigned long long>(nthreads));
            return last_error = cudaErrorLaunchFailure;
          }
        }
      }
  return cudaSuccess;
}

inline cudaError_t take_last_error() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

}  // namespace cuda_on_cpu
}  // namespace d3d

using d3d::cuda_on_cpu::blockDim;
using d3d::cuda_on_cpu::blockIdx;
using d3d::cuda_on_cpu::gridDim;
using d3d::cuda_on_cpu::threadIdx;
inline void __syncthreads() { d3d::cuda_on_cpu::syncthreads(); }

// The kernel launch: <<<>>> under nvcc, the CPU executor in a host build.
#define D3D_LAUNCH(kernel, grid, block, shmem, stream, ...)                                                   \
  do {                                                                                                        \
    (void)(shmem);                                                                                            \
    (void)(stream);                                                                                           \
    const cudaError_t d3d_launch_err = ::d3d::cuda_on_cpu::launch(grid, block, [&] { kernel(__VA_ARGS__); }); \
    if (d3d_launch_err != cudaSuccess) ::d3d::cuda_on_cpu::last_error = d3d_launch_err;                       \
  } while (0)
