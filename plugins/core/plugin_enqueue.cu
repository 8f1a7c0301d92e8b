// Kernel-launch wrapper of the plugin core: dtype dispatch onto the shared CUDA kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "deform_conv3d_cuda.cuh"
#include "plugin_core.h"

namespace d3d {
namespace plugin {

namespace {
template <typename T>
int32_t launch(const DeformConv3dShape& s, const void* x, const void* offset, const void* weight, const void* bias,
               void* y, void* workspace, cudaStream_t stream) {
  const cudaError_t err = cuda::forward<T>(s, static_cast<const T*>(x), static_cast<const T*>(offset),
                                           static_cast<const T*>(weight), static_cast<const T*>(bias),
                                           static_cast<T*>(y), static_cast<T*>(workspace), kMaxColElems, stream);
  return static_cast<int32_t>(err);
}
}  // namespace

int32_t enqueue(const DeformConv3dShape& s, DType t, const void* x, const void* offset, const void* weight,
                const void* bias, void* y, void* workspace, void* cuda_stream) {
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  switch (t) {
    case DType::kFloat32:
      return launch<float>(s, x, offset, weight, bias, y, workspace, stream);
    case DType::kFloat16:
      return launch<__half>(s, x, offset, weight, bias, y, workspace, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(s, x, offset, weight, bias, y, workspace, stream);
  }
  return static_cast<int32_t>(cudaErrorInvalidValue);
}

}  // namespace plugin
}  // namespace d3d
