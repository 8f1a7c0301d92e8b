// The DeformConv3d contract's numbers and names, written once (issue 19): the node's identity, the
// attribute defaults a node or plugin field set may leave out, the limits every adapter enforces and the
// output-size rule. The PyTorch op, the ONNX Runtime op (CPU and CUDA), the TensorRT plugin and its
// core include this header; Python reads the same lines at import (plugins/contract.py, imported as
// d3d._plugins.contract), so keep each definition on one line in the form used below.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define D3D_HD __host__ __device__ __forceinline__
#else
#define D3D_HD inline
#endif

namespace d3d {

// The ONNX node (op_type, domain, opset version) and the TensorRT plugin (name, namespace, version).
constexpr const char* kOpType = "DeformConv3d";
constexpr const char* kDomain = "d3d";
constexpr int64_t kOpsetVersion = 1;
constexpr const char* kPluginVersion = "1";

// Attribute defaults: the value taken when a node (ONNX Runtime, ONNX shape inference, load-time
// validation) or a plugin field set (TensorRT) leaves the attribute out. Per axis for the 3-value ones.
constexpr int64_t kDefaultStride = 1;
constexpr int64_t kDefaultPad = 0;
constexpr int64_t kDefaultDilation = 1;
constexpr int64_t kDefaultGroup = 1;
constexpr int64_t kDefaultOffsetGroup = 1;
constexpr const char* kDefaultDeformDims = "THW";

// Upper bound of every stride, padding, dilation, group count and kernel extent: guards the index
// arithmetic against overflow; far beyond any real video model. The refusal messages say "2^20".
constexpr int64_t kMaxAttr = int64_t(1) << 20;

// Column-buffer cap (elements) of every chunked im2col: the TensorRT plugin's workspace, the CUDA
// forward of the PyTorch op and of the ONNX Runtime CUDA provider, and the PyTorch op's backward.
// 64 Mi keeps a 64-channel 3x3x3 layer's buffer at ~256 MB in fp32 instead of the seed's 2.8 GB for a
// 720p clip. One value for CPU and GPU: every user runs the same chunk loop, and the plugin's workspace
// size (workspace_bytes) must match what its CUDA forward then uses.
constexpr int64_t kMaxColElems = int64_t(1) << 26;

// The output-size rule, as for Conv3d: out = (in + 2*pad - dil*(k-1) - 1) floordiv stride + 1 per axis.
// conv_out_add is the part that does not depend on the input extent (TensorRT's IExprBuilder evaluates
// out = (in + add) floordiv stride + 1 for dynamic dimensions); add == -1 with stride 1 keeps out == in.
D3D_HD int64_t conv_out_add(int64_t pad, int64_t dil, int64_t k) { return 2 * pad - dil * (k - 1) - 1; }

// Output extent of one axis; <= 0 for inputs too small for the kernel (callers check). Floor division,
// as in Python and TensorRT's kFLOOR_DIV: C++'s "/" rounds a negative span toward zero, which made a
// padded input one step shorter than the dilated kernel look like one output position at stride > 1.
D3D_HD int64_t conv_out_size(int64_t in, int64_t pad, int64_t dil, int64_t k, int64_t stride) {
  const int64_t span = in + conv_out_add(pad, dil, k);
  return (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
}

}  // namespace d3d
