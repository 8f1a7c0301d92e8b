// PyTorch adapter for DeformConv3d: tensor-level entry points over the shared kernels.
#pragma once

#include <ATen/ATen.h>

#include "deform_conv3d_shape.h"

namespace d3d {
namespace torch_op {

// CUDA entry points (deform_conv3d_op_cuda.cu), compiled only where PyTorch has CUDA.
// forward_cuda is the TensorRT plugin's forward (chunked im2col + tiled GEMM, bias fused; bias may be
// undefined); x, offset, weight, bias contiguous, out [N, O, T', H', W'] contiguous.
void forward_cuda(const DeformConv3dShape& s, const at::Tensor& x, const at::Tensor& offset, const at::Tensor& weight,
                  const at::Tensor& bias, int64_t max_col_elems, const at::Tensor& out);
// Tensors are one batch item, contiguous; col / grad_col are [C*K, lc].
void im2col_cuda(const DeformConv3dShape& s, const at::Tensor& input_n, const at::Tensor& offset_n, int64_t l0,
                 int64_t lc, const at::Tensor& col);
void col2im_cuda(const DeformConv3dShape& s, const at::Tensor& grad_col, const at::Tensor& offset_n, int64_t l0,
                 int64_t lc, const at::Tensor& grad_input_n);
void offset_grad_cuda(const DeformConv3dShape& s, const at::Tensor& grad_col, const at::Tensor& input_n,
                      const at::Tensor& offset_n, int64_t l0, int64_t lc, const at::Tensor& grad_offset_n);

}  // namespace torch_op
}  // namespace d3d
