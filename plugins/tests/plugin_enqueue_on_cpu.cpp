// The plugin's kernel-launch wrapper, compiled by the host compiler for the CPU executor: the same
// source file as the CUDA build (D3D_CUDA_ON_CPU selects plugins/kernels/cuda_on_cpu.h).
#include "plugin_enqueue.cu"
