// TensorRT plugin DeformConv3d (version 1, namespace d3d): IPluginV3 with the V3One core, build and
// runtime capabilities, and its IPluginCreatorV3One. A thin adapter: every decision that needs no
// TensorRT type is made by plugins/core (parsing, validation, shapes, workspace, launch). Every method
// TensorRT calls is noexcept and catches everything: a failure is logged and returned, never thrown.
// Compiled in CI against TensorRT 10.16 and 11.1 headers; see plugins/tensorrt/README.md.
#pragma once

#include <NvInferRuntime.h>

#include <memory>
#include <string>
#include <vector>

#include "plugin_core.h"

namespace d3d {
namespace trt {

class DeformConv3dPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit DeformConv3dPlugin(const DeformConv3dAttrs& attrs);
  ~DeformConv3dPlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return plugin::kName; }
  char const* getPluginVersion() const noexcept override { return plugin::kVersion; }
  char const* getPluginNamespace() const noexcept override { return plugin::kNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return 1; }
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  char const* getMetadataString() noexcept override { return metadata_.c_str(); }

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  DeformConv3dAttrs attrs_;
  std::string metadata_;
  plugin::ShapeState state_;  // validated by onShapeChange, compared (only) by enqueue
  std::unique_ptr<plugin::SerializedFields> serialized_;
  std::vector<nvinfer1::PluginField> trt_fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

class DeformConv3dPluginCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  DeformConv3dPluginCreator() noexcept;
  char const* getPluginName() const noexcept override { return plugin::kName; }
  char const* getPluginVersion() const noexcept override { return plugin::kVersion; }
  char const* getPluginNamespace() const noexcept override { return plugin::kNamespace; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &field_names_; }
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  nvinfer1::PluginField field_list_[8];
  nvinfer1::PluginFieldCollection field_names_{};
};

}  // namespace trt
}  // namespace d3d
