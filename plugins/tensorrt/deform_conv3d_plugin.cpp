// TensorRT adapter of DeformConv3d: translates TensorRT types to the plugin core and back.
// NOT COMPILED in this project's CI (no TensorRT headers there); see docs/TENSORRT.md.
#include "deform_conv3d_plugin.h"

#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>

namespace d3d {
namespace trt {

std::mutex g_logger_mutex;
nvinfer1::ILoggerFinder* g_logger_finder = nullptr;

namespace {

using nvinfer1::DataType;
using nvinfer1::DimensionOperation;
using nvinfer1::PluginFieldType;

void log_error(const std::string& msg) {
  std::lock_guard<std::mutex> lock(g_logger_mutex);
  nvinfer1::ILogger* logger = g_logger_finder != nullptr ? g_logger_finder->findLogger() : nullptr;
  const std::string line = std::string("[d3d::DeformConv3d] ") + msg;
  if (logger != nullptr) {
    logger->log(nvinfer1::ILogger::Severity::kERROR, line.c_str());
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

plugin::FieldType to_core(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kINT32:
      return plugin::FieldType::kInt32;
    case PluginFieldType::kINT64:
      return plugin::FieldType::kInt64;
    case PluginFieldType::kCHAR:
      return plugin::FieldType::kChar;
    default:
      return plugin::FieldType::kOther;
  }
}

PluginFieldType to_trt(plugin::FieldType t) {
  switch (t) {
    case plugin::FieldType::kInt32:
      return PluginFieldType::kINT32;
    case plugin::FieldType::kInt64:
      return PluginFieldType::kINT64;
    case plugin::FieldType::kChar:
      return PluginFieldType::kCHAR;
    default:
      return PluginFieldType::kUNKNOWN;
  }
}

bool to_core(DataType t, plugin::DType* out) {
  switch (t) {
    case DataType::kFLOAT:
      *out = plugin::DType::kFloat32;
      return true;
    case DataType::kHALF:
      *out = plugin::DType::kFloat16;
      return true;
    case DataType::kBF16:
      *out = plugin::DType::kBFloat16;
      return true;
    default:
      return false;
  }
}

template <typename DimsT>
bool dims5(const DimsT& d, int64_t out[5]) {
  if (d.nbDims != 5) return false;
  for (int i = 0; i < 5; ++i) out[i] = d.d[i];
  return true;
}

// Problem description from concrete input descriptors (X, offset, W[, B]).
template <typename DimsT>
std::string shape_of(const DeformConv3dAttrs& a, const DimsT& x, const DimsT& offset, const DimsT& w,
                     DeformConv3dShape* s) {
  int64_t xd[5], od[5], wd[5];
  if (!dims5(x, xd) || !dims5(offset, od) || !dims5(w, wd)) return "X, offset and W must be 5-D";
  return make_shape(a, xd, wd, od[1], s);
}

}  // namespace

DeformConv3dPlugin::DeformConv3dPlugin(const DeformConv3dAttrs& attrs) : attrs_(attrs) {
  metadata_ = "deform_dims=" + attrs_.deform_dims + " group=" + std::to_string(attrs_.group) +
              " offset_group=" + std::to_string(attrs_.offset_group);
}

nvinfer1::IPluginCapability* DeformConv3dPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE:
      return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD:
      return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME:
      return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* DeformConv3dPlugin::clone() noexcept {
  try {
    auto* p = new DeformConv3dPlugin(attrs_);
    p->num_inputs_ = num_inputs_;
    return p;
  } catch (const std::exception& e) {
    log_error(std::string("clone failed: ") + e.what());
    return nullptr;
  }
}

int32_t DeformConv3dPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t nbInputs,
                                            nvinfer1::DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept {
  if ((nbInputs != 3 && nbInputs != 4) || nbOutputs != 1) {
    log_error("expects 3 or 4 inputs (X, offset, W[, B]) and 1 output");
    return -1;
  }
  num_inputs_ = nbInputs;
  return 0;
}

int32_t DeformConv3dPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                               int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs < 3) return -1;
  outputTypes[0] = inputTypes[0];
  return 0;
}

int32_t DeformConv3dPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                            nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs,
                                            int32_t nbOutputs, nvinfer1::IExprBuilder& eb) noexcept {
  if (nbInputs < 3 || nbOutputs != 1 || inputs[0].nbDims != 5 || inputs[2].nbDims != 5) {
    log_error("X and W must be 5-D");
    return -1;
  }
  outputs[0].nbDims = 5;
  outputs[0].d[0] = inputs[0].d[0];
  outputs[0].d[1] = inputs[2].d[0];
  for (int ax = 0; ax < 3; ++ax) {
    const nvinfer1::IDimensionExpr* k = inputs[2].d[2 + ax];
    if (!k->isConstant()) {
      log_error("the weight's kernel size must be a build-time constant");
      return -1;
    }
    const plugin::AxisExpr e = plugin::output_axis_expr(attrs_, ax, k->getConstantValue());
    const nvinfer1::IDimensionExpr* num =
        eb.operation(DimensionOperation::kSUM, *inputs[0].d[2 + ax], *eb.constant(e.add));
    const nvinfer1::IDimensionExpr* q = eb.operation(DimensionOperation::kFLOOR_DIV, *num, *eb.constant(e.stride));
    outputs[0].d[2 + ax] = eb.operation(DimensionOperation::kSUM, *q, *eb.constant(1));
  }
  return 0;
}

bool DeformConv3dPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
  const nvinfer1::PluginTensorDesc& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF || d.type == DataType::kBF16;
  return d.type == inOut[0].desc.type;  // offset, W, B and Y share X's type
}

size_t DeformConv3dPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                            nvinfer1::DynamicPluginTensorDesc const*, int32_t) const noexcept {
  if (nbInputs < 3) return 0;
  DeformConv3dShape s;
  plugin::DType t;
  if (!to_core(inputs[0].desc.type, &t)) return 0;
  // Sized for the profile's maximum shape; workspace_bytes is monotone, so it covers every shape.
  if (!shape_of(attrs_, inputs[0].max, inputs[1].max, inputs[2].max, &s).empty()) return 0;
  return plugin::workspace_bytes(s, t);
}

int32_t DeformConv3dPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                          nvinfer1::PluginTensorDesc const*, int32_t nbOutputs) noexcept {
  if ((nbInputs != 3 && nbInputs != 4) || nbOutputs != 1) return -1;
  num_inputs_ = nbInputs;
  DeformConv3dShape s;
  const std::string err = shape_of(attrs_, in[0].dims, in[1].dims, in[2].dims, &s);
  if (!err.empty()) {
    log_error(err);
    return -1;
  }
  return 0;
}

int32_t DeformConv3dPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const*,
                                    void const* const* inputs, void* const* outputs, void* workspace,
                                    cudaStream_t stream) noexcept {
  DeformConv3dShape s;
  const std::string err = shape_of(attrs_, inputDesc[0].dims, inputDesc[1].dims, inputDesc[2].dims, &s);
  plugin::DType t;
  if (!err.empty() || !to_core(inputDesc[0].type, &t)) {
    log_error(err.empty() ? "unsupported data type" : err);
    return -1;
  }
  const void* bias = num_inputs_ == 4 ? inputs[3] : nullptr;
  const int32_t status = plugin::enqueue(s, t, inputs[0], inputs[1], inputs[2], bias, outputs[0], workspace, stream);
  if (status != 0) log_error("kernel launch failed with CUDA error " + std::to_string(status));
  return status;
}

nvinfer1::IPluginV3* DeformConv3dPlugin::attachToContext(nvinfer1::IPluginResourceContext*) noexcept {
  return clone();  // no per-context resources
}

nvinfer1::PluginFieldCollection const* DeformConv3dPlugin::getFieldsToSerialize() noexcept {
  try {
    serialized_ = std::make_unique<plugin::SerializedFields>(attrs_);
    trt_fields_.clear();
    for (int32_t i = 0; i < serialized_->size(); ++i) {
      const plugin::Field& f = serialized_->data()[i];
      trt_fields_.emplace_back(f.name, f.data, to_trt(f.type), f.length);
    }
    collection_.nbFields = static_cast<int32_t>(trt_fields_.size());
    collection_.fields = trt_fields_.data();
    return &collection_;
  } catch (const std::exception& e) {
    log_error(std::string("serialization failed: ") + e.what());
    return nullptr;
  }
}

DeformConv3dPluginCreator::DeformConv3dPluginCreator() {
  field_list_ = {
      {"strides", nullptr, PluginFieldType::kINT32, 3},       {"pads", nullptr, PluginFieldType::kINT32, 3},
      {"dilations", nullptr, PluginFieldType::kINT32, 3},     {"group", nullptr, PluginFieldType::kINT32, 1},
      {"offset_group", nullptr, PluginFieldType::kINT32, 1},  {"deform_dims", nullptr, PluginFieldType::kCHAR, 0},
      {"plugin_version", nullptr, PluginFieldType::kCHAR, 0}, {"plugin_namespace", nullptr, PluginFieldType::kCHAR, 0},
  };
  field_names_.nbFields = static_cast<int32_t>(field_list_.size());
  field_names_.fields = field_list_.data();
}

nvinfer1::IPluginV3* DeformConv3dPluginCreator::createPlugin(char const* name,
                                                             nvinfer1::PluginFieldCollection const* fc,
                                                             nvinfer1::TensorRTPhase) noexcept {
  try {
    std::vector<plugin::Field> fields;
    if (fc != nullptr && fc->nbFields > 0) {
      if (fc->fields == nullptr) {
        log_error("createPlugin: null field list");
        return nullptr;
      }
      for (int32_t i = 0; i < fc->nbFields; ++i) {
        const nvinfer1::PluginField& f = fc->fields[i];
        fields.push_back({f.name, f.data, to_core(f.type), f.length});
      }
    }
    DeformConv3dAttrs attrs;
    const std::string err = plugin::parse_fields(fields.data(), static_cast<int32_t>(fields.size()), &attrs);
    if (!err.empty()) {
      log_error(std::string("layer '") + (name ? name : "?") + "': " + err);
      return nullptr;
    }
    return new DeformConv3dPlugin(attrs);
  } catch (const std::exception& e) {
    log_error(std::string("createPlugin failed: ") + e.what());
    return nullptr;
  }
}

}  // namespace trt
}  // namespace d3d

// --- Library entry points ------------------------------------------------------------------------
// Dynamic loading (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, polygraphy --plugins).
#define D3D_EXPORT extern "C" __attribute__((visibility("default")))

D3D_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  std::lock_guard<std::mutex> lock(d3d::trt::g_logger_mutex);
  d3d::trt::g_logger_finder = finder;
}

D3D_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static d3d::trt::DeformConv3dPluginCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}

// Explicit registration for applications that link or dlopen the library themselves.
D3D_EXPORT bool d3dRegisterPlugins() {
  int32_t n = 0;
  nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
  bool ok = true;
  for (int32_t i = 0; i < n; ++i) {
    ok = getPluginRegistry()->registerCreator(*creators[i], d3d::plugin::kNamespace) && ok;
  }
  return ok;
}
