// The few CUDA runtime calls the host harness makes, on host memory, for the cuda_on_cpu build of the
// TensorRT plugin (whose kernels then run on the CPU executor, plugins/kernels/cuda_on_cpu.h): "device"
// buffers are host buffers, the stream is a token and every call completes before it returns.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>

namespace {
char g_stream_token;
}

extern "C" {

cudaError_t CUDARTAPI cudaGetDeviceCount(int* count) {
  *count = 1;  // the CPU executor
  return cudaSuccess;
}

const char* CUDARTAPI cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "cuda_on_cpu: error";
}

cudaError_t CUDARTAPI cudaMalloc(void** ptr, size_t size) {
  *ptr = std::malloc(size > 0 ? size : 1);
  return *ptr != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t CUDARTAPI cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  std::memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamCreate(cudaStream_t* stream) {
  *stream = reinterpret_cast<cudaStream_t>(&g_stream_token);
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t CUDARTAPI cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }

}  // extern "C"
