// CUDA entry points of the PyTorch op: dtype dispatch and stream selection only; the math is in
// plugins/kernels/.
// c10's stream header only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "deform_conv3d_cuda.cuh"
#include "deform_conv3d_op.h"

namespace d3d {
namespace torch_op {
namespace {

// The element types the TensorRT plugin instantiates the kernels for: c10::Half / c10::BFloat16 have
// the same layout as CUDA's __half / __nv_bfloat16, so the forward runs the plugin's very instantiation.
template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<c10::Half> {
  using type = __half;
};
template <>
struct KernelType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

}  // namespace

void forward_cuda(const DeformConv3dShape& s, const at::Tensor& x, const at::Tensor& offset, const at::Tensor& weight,
                  const at::Tensor& bias, int64_t max_col_elems, const at::Tensor& out) {
  // fp16/bf16 take the fused kernel, which needs no column buffer (cuda::kFusedForward).
  const bool fused = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const at::Tensor workspace =
      at::empty({fused ? int64_t(0) : s.col_rows() * col_chunk(s, max_col_elems)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "d3d_forward_cuda", [&] {
    using k_t = typename KernelType<scalar_t>::type;
    const auto in = [](const at::Tensor& t) { return reinterpret_cast<const k_t*>(t.const_data_ptr<scalar_t>()); };
    const cudaError_t err = cuda::forward<k_t>(s, in(x), in(offset), in(weight), bias.defined() ? in(bias) : nullptr,
                                               reinterpret_cast<k_t*>(out.mutable_data_ptr<scalar_t>()),
                                               reinterpret_cast<k_t*>(workspace.mutable_data_ptr<scalar_t>()),
                                               max_col_elems, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "deform_conv3d: CUDA forward failed: ", cudaGetErrorString(err));
  });
}

void im2col_cuda(const DeformConv3dShape& s, const at::Tensor& input_n, const at::Tensor& offset_n, int64_t l0,
                 int64_t lc, const at::Tensor& col) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_n.scalar_type(), "d3d_im2col_cuda", [&] {
    cuda::im2col(s, input_n.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(), l0, lc,
                 col.mutable_data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream().stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void col2im_cuda(const DeformConv3dShape& s, const at::Tensor& grad_col, const at::Tensor& offset_n, int64_t l0,
                 int64_t lc, const at::Tensor& grad_input_n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_col.scalar_type(), "d3d_col2im_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    cuda::col2im(s, grad_col.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(), l0, lc,
                 grad_input_n.mutable_data_ptr<acc_t>(), c10::cuda::getCurrentCUDAStream().stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void offset_grad_cuda(const DeformConv3dShape& s, const at::Tensor& grad_col, const at::Tensor& input_n,
                      const at::Tensor& offset_n, int64_t l0, int64_t lc, const at::Tensor& grad_offset_n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_col.scalar_type(), "d3d_offset_grad_cuda", [&] {
    cuda::offset_grad(s, grad_col.const_data_ptr<scalar_t>(), input_n.const_data_ptr<scalar_t>(),
                      offset_n.const_data_ptr<scalar_t>(), l0, lc, grad_offset_n.mutable_data_ptr<scalar_t>(),
                      c10::cuda::getCurrentCUDAStream().stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace torch_op
}  // namespace d3d
