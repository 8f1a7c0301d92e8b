// The CUDA execution provider's DeformConv3d: the shared CUDA forward (plugins/kernels) on the stream
// ONNX Runtime gives the kernel. Compiled where nvcc is found; not yet run on a GPU.
#include <cuda_runtime.h>

#include <string>

#include "deform_conv3d_cuda.cuh"
#include "deform_conv3d_ort.h"

namespace d3d {
namespace ort {

// Column-buffer cap (elements) of the CUDA forward: 64 Mi, as in the TensorRT plugin.
constexpr int64_t kMaxColElemsCuda = int64_t(1) << 26;

OrtStatus* compute_cuda(const OrtApi* api, OrtKernelContext* ctx, const Problem& p) {
  void* stream_ptr = nullptr;
  if (OrtStatus* st = api->KernelContext_GetGPUComputeStream(ctx, &stream_ptr)) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const DeformConv3dShape& s = p.shape;
  const size_t ws_bytes = sizeof(float) * static_cast<size_t>(s.col_rows() * col_chunk(s, kMaxColElemsCuda));
  void* ws = nullptr;
  cudaError_t e = cudaMallocAsync(&ws, ws_bytes, stream);
  if (e == cudaSuccess) {
    e = cuda::forward<float>(s, p.x, p.offset, p.weight, p.bias, p.y, static_cast<float*>(ws), kMaxColElemsCuda,
                             stream);
    const cudaError_t f = cudaFreeAsync(ws, stream);
    if (e == cudaSuccess) e = f;
  }
  if (e == cudaSuccess) return nullptr;
  return api->CreateStatus(ORT_FAIL, (std::string(kOpType) + ": CUDA error: " + cudaGetErrorString(e)).c_str());
}

}  // namespace ort
}  // namespace d3d
