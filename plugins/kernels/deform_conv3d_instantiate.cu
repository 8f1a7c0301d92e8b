// Explicit instantiations of the CUDA launchers for every supported I/O type. Compiling this file is
// what proves, on machines without a GPU, that the shared kernel source builds with nvcc for each
// target architecture; the TensorRT plugin links the resulting library.
#include "deform_conv3d_cuda.cuh"

namespace d3d {
namespace cuda {

#define D3D_INSTANTIATE(T)                                                                                           \
  template void im2col<T>(const DeformConv3dShape&, const T*, const T*, int64_t, int64_t, T*, cudaStream_t);         \
  template void col2im<T, AccType<T>::type>(const DeformConv3dShape&, const T*, const T*, int64_t, int64_t,          \
                                            AccType<T>::type*, cudaStream_t);                                        \
  template void offset_grad<T>(const DeformConv3dShape&, const T*, const T*, const T*, int64_t, int64_t, T*,         \
                               cudaStream_t);                                                                        \
  template cudaError_t forward<T>(const DeformConv3dShape&, const T*, const T*, const T*, const T*, T*, T*, int64_t, \
                                  cudaStream_t);

D3D_INSTANTIATE(float)
D3D_INSTANTIATE(double)
D3D_INSTANTIATE(__half)
D3D_INSTANTIATE(__nv_bfloat16)

#undef D3D_INSTANTIATE

}  // namespace cuda
}  // namespace d3d
