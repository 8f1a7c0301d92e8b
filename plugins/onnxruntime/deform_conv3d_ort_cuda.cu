// The CUDA execution provider's DeformConv3d: the shared CUDA forward (plugins/kernels) on the stream
// ONNX Runtime gives the kernel. Compiled where nvcc is found; never run (no onnxruntime-gpu on any machine so far).
#include <cuda_runtime.h>

#include <string>

#include "deform_conv3d_contract.h"
#include "deform_conv3d_cuda.cuh"
#include "deform_conv3d_ort.h"

namespace d3d {
namespace ort {

namespace {

OrtStatus* cuda_error(const OrtApi* api, cudaError_t e) {
  return api->CreateStatus(ORT_FAIL, (std::string(kOpType) + ": CUDA error: " + cudaGetErrorString(e)).c_str());
}

}  // namespace

// The column buffer comes from the CUDA provider's own allocator (the one that holds the input: its
// stream-ordered arena), not from cudaMallocAsync per call: freeing it right after the launches is how
// ONNX Runtime's own CUDA kernels use scratch memory, since later users of the block run on the same stream.
OrtStatus* compute_cuda(const OrtApi* api, OrtKernelContext* ctx, const Problem& p) {
  void* stream_ptr = nullptr;
  if (OrtStatus* st = api->KernelContext_GetGPUComputeStream(ctx, &stream_ptr)) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const DeformConv3dShape& s = p.shape;
  const size_t ws_bytes = sizeof(float) * static_cast<size_t>(s.col_rows() * col_chunk(s, kMaxColElems));

  ProviderScratch ws(api);
  if (OrtStatus* st = ws.take(ctx, ws_bytes)) return st;
  if (ws.data() == nullptr)
    return api->CreateStatus(ORT_FAIL, (std::string(kOpType) + ": the CUDA provider's allocator refused " +
                                        std::to_string(ws_bytes) + " bytes for the column buffer")
                                           .c_str());
  const cudaError_t e = cuda::forward<float>(s, p.x, p.offset, p.weight, p.bias, p.y, static_cast<float*>(ws.data()),
                                             kMaxColElems, stream);
  return e == cudaSuccess ? nullptr : cuda_error(api, e);
}

}  // namespace ort
}  // namespace d3d
