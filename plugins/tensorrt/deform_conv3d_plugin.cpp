// TensorRT adapter of DeformConv3d: translates TensorRT types to the plugin core and back.
// Every noexcept method runs its body inside try/catch(...) (clang-tidy's bugprone-exception-escape in
// `make lint` checks that nothing can leave one): TensorRT gets an error code and a logged reason.
#include "deform_conv3d_plugin.h"

#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>

// Resolved in the process that loads the library (libnvinfer). Weak, so that the library also loads
// where it is absent (a harness, TensorRT-RTX's loadLibrary) and d3dRegisterPlugins can say so.
extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept __attribute__((weak));

namespace d3d {
namespace trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::DimensionOperation;
using nvinfer1::PluginFieldType;

std::mutex g_logger_mutex;
nvinfer1::ILoggerFinder* g_logger_finder = nullptr;

// Logs through TensorRT's logger where one was handed over (setLoggerFinder), else to stderr.
void log(nvinfer1::ILogger::Severity severity, const char* msg) noexcept {
  try {
    std::lock_guard<std::mutex> lock(g_logger_mutex);
    nvinfer1::ILogger* logger = g_logger_finder != nullptr ? g_logger_finder->findLogger() : nullptr;
    const std::string line = std::string("[d3d::DeformConv3d] ") + msg;
    if (logger != nullptr) {
      logger->log(severity, line.c_str());
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  } catch (...) {
    std::fprintf(stderr, "[d3d::DeformConv3d] %s\n", msg);  // no memory for the prefix: still say it
  }
}

void log_error(const char* msg) noexcept { log(nvinfer1::ILogger::Severity::kERROR, msg); }
void log_error(const std::string& msg) noexcept { log_error(msg.c_str()); }

// The catch-all of every noexcept entry point.
void log_exception(const char* where) noexcept {
  try {
    throw;
  } catch (const std::exception& e) {
    try {
      log_error(std::string(where) + " failed: " + e.what());
    } catch (...) {
      log_error(where);
    }
  } catch (...) {
    log_error(where);
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

plugin::TensorDims to_core(const nvinfer1::Dims& d) {
  plugin::TensorDims r;
  if (d.nbDims < 0 || d.nbDims > plugin::kMaxRank) return r;  // rank -1: refused by check_io
  r.rank = d.nbDims;
  for (int32_t i = 0; i < d.nbDims; ++i) r.d[i] = d.d[i];
  return r;
}

// Collects one field of TensorRT descriptors (dims, min or max) of the inputs into core dims.
template <typename Desc, typename Get>
int32_t collect(const Desc* descs, int32_t nb, Get get, plugin::TensorDims out[4]) {
  if (descs == nullptr || nb < 0 || nb > 4) return -1;
  for (int32_t i = 0; i < nb; ++i) out[i] = to_core(get(descs[i]));
  return nb;
}

// All inputs and the output share X's type, one the kernels are instantiated for.
template <typename Desc>
std::string check_types(const Desc* in, int32_t nb_in, const Desc* out, int32_t nb_out) {
  plugin::DType t;
  if (!to_core(in[0].type, &t)) return "X must be fp32, fp16 or bf16";
  for (int32_t i = 1; i < nb_in; ++i) {
    if (in[i].type != in[0].type) return "input " + std::to_string(i) + " has a different type from X";
  }
  if (nb_out == 1 && out != nullptr && out[0].type != in[0].type) return "Y must have X's type";
  return "";
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
    auto p = std::make_unique<DeformConv3dPlugin>(attrs_);
    p->state_ = state_;
    return p.release();
  } catch (...) {
    log_exception("clone");
    return nullptr;
  }
}

int32_t DeformConv3dPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  try {
    if (in == nullptr || (nbInputs != 3 && nbInputs != 4) || nbOutputs != 1) {
      log_error("configurePlugin: expects 3 or 4 inputs (X, offset, W[, B]) and 1 output");
      return -1;
    }
    nvinfer1::PluginTensorDesc descs[4];  // the types are in DynamicPluginTensorDesc::desc
    for (int32_t i = 0; i < nbInputs; ++i) descs[i] = in[i].desc;
    const nvinfer1::PluginTensorDesc* out_desc = out != nullptr ? &out[0].desc : nullptr;
    std::string err = check_types(descs, nbInputs, out_desc, out_desc != nullptr ? 1 : 0);
    // The profile's extremes are concrete shapes: both must be valid (any shape between them then is).
    for (const bool use_max : {false, true}) {
      if (!err.empty()) break;
      plugin::TensorDims dims[4];
      collect(in, nbInputs, [&](const nvinfer1::DynamicPluginTensorDesc& d) { return use_max ? d.max : d.min; }, dims);
      DeformConv3dShape s;
      err = plugin::check_io(attrs_, dims, nbInputs, nullptr, &s);
      if (!err.empty()) err = std::string(use_max ? "profile maximum: " : "profile minimum: ") + err;
    }
    if (!err.empty()) {
      log_error("configurePlugin: " + err);
      return -1;
    }
    return 0;
  } catch (...) {
    log_exception("configurePlugin");
    return -1;
  }
}

int32_t DeformConv3dPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                               int32_t nbInputs) const noexcept {
  try {
    plugin::DType t;
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs < 3 || nbInputs > 4 ||
        !to_core(inputTypes[0], &t)) {
      log_error("getOutputDataTypes: expects 3 or 4 inputs of fp32, fp16 or bf16 and 1 output");
      return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
  } catch (...) {
    log_exception("getOutputDataTypes");
    return -1;
  }
}

int32_t DeformConv3dPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                            nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs,
                                            int32_t nbOutputs, nvinfer1::IExprBuilder& eb) noexcept {
  try {
    if (inputs == nullptr || outputs == nullptr || (nbInputs != 3 && nbInputs != 4) || nbOutputs != 1) {
      log_error("getOutputShapes: expects 3 or 4 inputs (X, offset, W[, B]) and 1 output");
      return -1;
    }
    if (inputs[0].nbDims != 5 || inputs[1].nbDims != 5 || inputs[2].nbDims != 5 ||
        (nbInputs == 4 && inputs[3].nbDims != 1)) {
      log_error("getOutputShapes: X, offset and W must be 5-D and B 1-D");
      return -1;
    }
    outputs[0].nbDims = 5;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[2].d[0];
    for (int ax = 0; ax < 3; ++ax) {
      const nvinfer1::IDimensionExpr* k = inputs[2].d[2 + ax];
      if (k == nullptr || !k->isConstant() || k->getConstantValue() < 1) {
        log_error("getOutputShapes: the weight's kernel size must be a positive build-time constant");
        return -1;
      }
      const plugin::AxisExpr e = plugin::output_axis_expr(attrs_, ax, k->getConstantValue());
      const nvinfer1::IDimensionExpr* num =
          eb.operation(DimensionOperation::kSUM, *inputs[0].d[2 + ax], *eb.constant(e.add));
      const nvinfer1::IDimensionExpr* q = eb.operation(DimensionOperation::kFLOOR_DIV, *num, *eb.constant(e.stride));
      outputs[0].d[2 + ax] = eb.operation(DimensionOperation::kSUM, *q, *eb.constant(1));
    }
    return 0;
  } catch (...) {
    log_exception("getOutputShapes");
    return -1;
  }
}

bool DeformConv3dPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  const nvinfer1::PluginTensorDesc& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (d.type != DataType::kFLOAT && d.type != DataType::kHALF && d.type != DataType::kBF16) return false;
  return pos == 0 || d.type == inOut[0].desc.type;  // offset, W, B and Y share X's type
}

size_t DeformConv3dPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                            nvinfer1::DynamicPluginTensorDesc const*, int32_t) const noexcept {
  try {
    plugin::DType t;
    plugin::TensorDims dims[4];
    if (collect(
            inputs, nbInputs, [](const nvinfer1::DynamicPluginTensorDesc& d) { return d.max; }, dims) < 3 ||
        !to_core(inputs[0].desc.type, &t)) {
      log_error("getWorkspaceSize: invalid inputs");
      return 0;
    }
    DeformConv3dShape s;
    const std::string err = plugin::check_io(attrs_, dims, nbInputs, nullptr, &s);
    if (!err.empty()) {
      log_error("getWorkspaceSize: " + err);
      return 0;
    }
    // Sized for the profile's maximum shape; workspace_bytes is monotone, so it covers every shape.
    return plugin::workspace_bytes(s, t);
  } catch (...) {
    log_exception("getWorkspaceSize");
    return 0;
  }
}

int32_t DeformConv3dPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                          nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  try {
    plugin::TensorDims dims[4];
    if (collect(
            in, nbInputs, [](const nvinfer1::PluginTensorDesc& d) { return d.dims; }, dims) < 3 ||
        nbOutputs != 1 || out == nullptr) {
      state_ = plugin::ShapeState();
      log_error("onShapeChange: expects 3 or 4 inputs (X, offset, W[, B]) and 1 output");
      return -1;
    }
    std::string err = check_types(in, nbInputs, out, nbOutputs);
    const plugin::TensorDims y = to_core(out[0].dims);
    // The full shape check, once per shape change; enqueue only compares against it.
    const std::string shape_err = state_.update(attrs_, dims, nbInputs, &y);
    if (err.empty()) err = shape_err;
    if (!err.empty()) {
      state_ = plugin::ShapeState();
      log_error("onShapeChange: " + err);
      return -1;
    }
    return 0;
  } catch (...) {
    state_ = plugin::ShapeState();
    log_exception("onShapeChange");
    return -1;
  }
}

int32_t DeformConv3dPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  try {
    // No validation here (onShapeChange did it): comparisons only, no allocation unless refusing.
    if (!state_.valid()) {
      log_error("enqueue: no valid shapes (onShapeChange failed or was not called)");
      return -1;
    }
    const int32_t nb = state_.nb_inputs();
    plugin::TensorDims dims[4];
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr) {
      log_error("enqueue: null descriptors or buffers");
      return -1;
    }
    collect(inputDesc, nb, [](const nvinfer1::PluginTensorDesc& d) { return d.dims; }, dims);
    const plugin::TensorDims y = to_core(outputDesc[0].dims);
    if (!state_.matches(dims, nb, &y)) {
      log_error("enqueue: tensor shapes differ from those validated by onShapeChange");
      return -1;
    }
    plugin::DType t = plugin::DType::kFloat32;
    bool same_type = to_core(inputDesc[0].type, &t) && outputDesc[0].type == inputDesc[0].type;
    for (int32_t i = 1; i < nb; ++i) same_type = same_type && inputDesc[i].type == inputDesc[0].type;
    if (!same_type) {
      log_error("enqueue: inputs and output must all be fp32, fp16 or bf16, of one type");
      return -1;
    }
    const DeformConv3dShape& s = state_.shape();
    if (workspace == nullptr && plugin::workspace_bytes(s, t) > 0) {
      log_error("enqueue: no workspace");
      return -1;
    }
    for (int32_t i = 0; i < nb; ++i) {
      if (inputs[i] == nullptr) {
        log_error("enqueue: null input buffer");
        return -1;
      }
    }
    if (outputs[0] == nullptr) {
      log_error("enqueue: null output buffer");
      return -1;
    }
    const void* bias = nb == 4 ? inputs[3] : nullptr;
    const int32_t status = plugin::enqueue(s, t, inputs[0], inputs[1], inputs[2], bias, outputs[0], workspace, stream);
    if (status != 0) log_error("enqueue: kernel launch failed (CUDA error)");
    return status;
  } catch (...) {  // nothing here is expected to throw; TensorRT must still get an error code
    log_exception("enqueue");
    return -1;
  }
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
  } catch (...) {
    log_exception("getFieldsToSerialize");
    return nullptr;
  }
}

DeformConv3dPluginCreator::DeformConv3dPluginCreator() noexcept
    : field_list_{
          {"strides", nullptr, PluginFieldType::kINT32, 3},
          {"pads", nullptr, PluginFieldType::kINT32, 3},
          {"dilations", nullptr, PluginFieldType::kINT32, 3},
          {"group", nullptr, PluginFieldType::kINT32, 1},
          {"offset_group", nullptr, PluginFieldType::kINT32, 1},
          {"deform_dims", nullptr, PluginFieldType::kCHAR, 0},
          {"plugin_version", nullptr, PluginFieldType::kCHAR, 0},
          {"plugin_namespace", nullptr, PluginFieldType::kCHAR, 0},
      } {
  field_names_.nbFields = static_cast<int32_t>(sizeof(field_list_) / sizeof(field_list_[0]));
  field_names_.fields = field_list_;
}

nvinfer1::IPluginV3* DeformConv3dPluginCreator::createPlugin(char const* name,
                                                             nvinfer1::PluginFieldCollection const* fc,
                                                             nvinfer1::TensorRTPhase) noexcept {
  try {
    std::vector<plugin::Field> fields;
    if (fc != nullptr && (fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr))) {
      log_error("createPlugin: invalid field collection");
      return nullptr;
    }
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      const nvinfer1::PluginField& f = fc->fields[i];
      fields.push_back({f.name, f.data, to_core(f.type), f.length});
    }
    DeformConv3dAttrs attrs;
    const std::string err = plugin::parse_fields(fields.data(), static_cast<int32_t>(fields.size()), &attrs);
    if (!err.empty()) {
      log_error(std::string("layer '") + (name != nullptr ? name : "?") + "': " + err);
      return nullptr;
    }
    return new DeformConv3dPlugin(attrs);
  } catch (...) {
    log_exception("createPlugin");
    return nullptr;
  }
}

}  // namespace trt
}  // namespace d3d

// --- Library entry points ------------------------------------------------------------------------
// The only symbols the library exports (plugins/tensorrt/exports.map). Dynamic loading
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, polygraphy --plugins) uses the first two.
#define D3D_EXPORT extern "C" __attribute__((visibility("default")))

D3D_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  try {
    std::lock_guard<std::mutex> lock(d3d::trt::g_logger_mutex);
    d3d::trt::g_logger_finder = finder;
  } catch (...) {
    std::fprintf(stderr, "[d3d::DeformConv3d] setLoggerFinder failed\n");
  }
}

D3D_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept {
  static d3d::trt::DeformConv3dPluginCreator creator;  // constructor cannot throw
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}

// Explicit registration for applications that link or dlopen the library into a TensorRT process.
// Never under TensorRT-RTX: its IPluginRegistry has a different vtable (use loadLibrary there).
D3D_EXPORT bool d3dRegisterPlugins() noexcept {
  if (getPluginRegistry == nullptr || getPluginRegistry() == nullptr) {
    d3d::trt::log_error("d3dRegisterPlugins: no TensorRT in this process (getPluginRegistry is unresolved)");
    return false;
  }
  int32_t n = 0;
  nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
  bool ok = true;
  for (int32_t i = 0; i < n; ++i) {
    ok = getPluginRegistry()->registerCreator(*creators[i], d3d::plugin::kNamespace) && ok;
  }
  return ok;
}
