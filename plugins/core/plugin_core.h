// TensorRT-free core of the DeformConv3d TensorRT plugin: everything the plugin does that needs no
// TensorRT type. Field parsing and validation, the serialized field set, output-shape arithmetic,
// workspace sizing and the kernel-launch wrapper. Compiled and unit-tested (with a fuzz test) where
// TensorRT is not installed; plugins/tensorrt/ only translates between TensorRT types and these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_contract.h"
#include "deform_conv3d_shape.h"

namespace d3d {
namespace plugin {

// TensorRT's names for the plugin: the ONNX node's (deform_conv3d_contract.h), so its parser finds it.
constexpr const char* kName = kOpType;
constexpr const char* kVersion = kPluginVersion;
constexpr const char* kNamespace = kDomain;

// Mirrors the subset of nvinfer1::PluginFieldType the plugin accepts; kOther covers all others.
enum class FieldType { kInt32, kInt64, kChar, kOther };

// A framework-free view of one plugin field (TensorRT's PluginField: name, data, type, length).
struct Field {
  const char* name = nullptr;
  const void* data = nullptr;
  FieldType type = FieldType::kOther;
  int32_t length = 0;
};

// Parses a field set (from the ONNX parser at build time or from the engine at runtime) into
// attributes. Missing fields take the contract's defaults; unknown or repeated fields, wrong types or
// lengths, out-of-range values and a plugin_version / plugin_namespace other than ours are refused.
// Returns "" on success, otherwise the reason (and leaves *out untouched).
std::string parse_fields(const Field* fields, int32_t count, DeformConv3dAttrs* out);

// The fields written into the engine: owns its storage, so the Field pointers stay valid while the
// object lives. Parsing them back with parse_fields gives the same attributes.
class SerializedFields {
 public:
  explicit SerializedFields(const DeformConv3dAttrs& attrs);
  SerializedFields(const SerializedFields&) = delete;
  SerializedFields& operator=(const SerializedFields&) = delete;
  const Field* data() const { return fields_.data(); }
  int32_t size() const { return static_cast<int32_t>(fields_.size()); }

 private:
  int32_t stride_[3], pad_[3], dil_[3], group_, offset_group_;
  std::string dims_;
  std::vector<Field> fields_;
};

// out = (in + add) floordiv stride + 1 along one axis: the form TensorRT's IExprBuilder evaluates for
// dynamic dimensions. add = 2*pad - dil*(k-1) - 1.
struct AxisExpr {
  int64_t add;
  int64_t stride;
};
AxisExpr output_axis_expr(const DeformConv3dAttrs& a, int axis, int64_t kernel);

// Dimensions of one tensor as an adapter sees them (TensorRT's Dims holds at most 8).
constexpr int32_t kMaxRank = 8;
struct TensorDims {
  int32_t rank = -1;
  int64_t d[kMaxRank] = {};
};
bool operator==(const TensorDims& a, const TensorDims& b);

// Full check of one concrete I/O configuration, the one the kernels rely on:
//   X [N, C, T, H, W], offset [N, offset_group * kT*kH*kW * len(deform_dims), T', H', W'],
//   W [O, C/group, kT, kH, kW], optional B [O]; output (when not null) [N, O, T', H', W'];
// 3 or 4 inputs, and element counts that the kernels' int64 index arithmetic cannot overflow.
// Returns "" and fills *s, or the reason (naming the tensor and the expected shape).
std::string check_io(const DeformConv3dAttrs& a, const TensorDims* inputs, int32_t nb_inputs, const TensorDims* output,
                     DeformConv3dShape* s);

// The shape state of a plugin instance between onShapeChange calls: check_io runs once per shape change,
// and enqueue only compares its descriptors with the validated ones (no allocation, cannot throw).
class ShapeState {
 public:
  // Validates and remembers a configuration; on failure the state becomes invalid.
  std::string update(const DeformConv3dAttrs& a, const TensorDims* inputs, int32_t nb_inputs, const TensorDims* output);
  bool valid() const noexcept { return valid_; }
  int32_t nb_inputs() const noexcept { return nb_inputs_; }
  const DeformConv3dShape& shape() const noexcept { return shape_; }
  // True when the state is valid and these are the dimensions it was validated for.
  bool matches(const TensorDims* inputs, int32_t nb_inputs, const TensorDims* output) const noexcept;

 private:
  bool valid_ = false;
  int32_t nb_inputs_ = 0;
  TensorDims inputs_[4], output_;
  DeformConv3dShape shape_;
};

// Element types the kernels are instantiated for.
enum class DType { kFloat32, kFloat16, kBFloat16 };
size_t element_size(DType t);

// Workspace needed for a problem (its im2col chunked to kMaxColElems); monotone in every input extent,
// so the size computed for a profile's maximum shape covers every shape in the profile.
size_t workspace_bytes(const DeformConv3dShape& s, DType t);

// Launches the forward pass (shared CUDA kernels) on `stream`. inputs: X, offset, W and optional
// bias (nullptr when absent). Returns 0 on success, a CUDA error code otherwise. Defined only when
// the library is built with CUDA (plugin_enqueue.cu).
int32_t enqueue(const DeformConv3dShape& s, DType t, const void* x, const void* offset, const void* weight,
                const void* bias, void* y, void* workspace, void* cuda_stream);

}  // namespace plugin
}  // namespace d3d
