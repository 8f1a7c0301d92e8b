// CUDA entry points of the PyTorch op: dtype dispatch and stream selection only; the math is in
// plugins/kernels/.
// c10's stream header only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "deform_conv3d_cuda.cuh"
#include "deform_conv3d_op.h"

namespace d3d {
namespace torch_op {

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
