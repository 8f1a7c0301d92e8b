// ONNX Runtime custom-op library: registers d3d::DeformConv3d (domain "d3d", opset 1) exactly as the
// exporter writes it — the same attributes, no node rewrite — for the CPU execution provider (and for
// the CUDA execution provider where built with nvcc and that provider is present).
//
// The library links no ONNX Runtime library: the API arrives in RegisterCustomOps. The CPU forward is
// the fused kernel of plugins/kernels/deform_conv3d_cpu_forward.h on ONNX Runtime's intra-op thread
// pool, with OpenBLAS (the scipy-openblas32 build, loaded from this library's folder) for the GEMM.
// Every error reaches ONNX Runtime as an OrtStatus: nothing here throws across the C boundary.
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_cpu_forward.h"
#include "deform_conv3d_openblas.h"
#include "deform_conv3d_ort.h"

namespace d3d {
namespace ort {
namespace {

const OrtApi* g_api = nullptr;

OrtStatus* fail(OrtErrorCode code, const std::string& msg) {
  return g_api->CreateStatus(code, (std::string(kOpType) + ": " + msg).c_str());
}

// --- OpenBLAS, loaded from the folder of this library ----------------------------------------------

constexpr const char* kBlasFile = "libscipy_openblas.so";

std::string own_folder() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&own_folder), &info) == 0 || info.dli_fname == nullptr) return ".";
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

// The kernel's parallel-for on ONNX Runtime's intra-op pool: one pool task per item.
struct OrtFor {
  const OrtKernelContext* ctx;
  template <typename Fn>
  void operator()(int64_t begin, int64_t end, const Fn& fn) const {
    if (end <= begin) return;
    struct Job {
      const Fn* fn;
      int64_t begin;
    } job{&fn, begin};
    auto one = [](void* data, size_t i) {
      const Job* j = static_cast<const Job*>(data);
      const int64_t item = j->begin + static_cast<int64_t>(i);
      (*j->fn)(item, item + 1);
    };
    OrtStatus* st = g_api->KernelContext_ParallelFor(ctx, one, static_cast<size_t>(end - begin), 0, &job);
    if (st != nullptr) {  // no pool (never expected): run on this thread
      g_api->ReleaseStatus(st);
      fn(begin, end);
    }
  }
};

// --- Attributes: read once per kernel, checked by the validator the TensorRT plugin uses -----------

// True where the attribute is absent (the contract's default applies); *err set for any other failure.
bool absent(OrtStatus* st, const char* name, std::string* err) {
  const std::string msg = g_api->GetErrorMessage(st);
  g_api->ReleaseStatus(st);
  if (msg.find("No attribute") != std::string::npos || msg.find("not found") != std::string::npos) return true;
  *err = std::string("attribute '") + name + "': " + msg;
  return false;
}

std::string read_ints(const OrtKernelInfo* info, const char* name, int64_t out[3]) {
  size_t n = 0;
  std::string err;
  OrtStatus* st = g_api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &n);
  if (st != nullptr) return absent(st, name, &err) ? "" : err;
  if (n != 3) return std::string("attribute '") + name + "' must have 3 values (T, H, W), got " + std::to_string(n);
  st = g_api->KernelInfoGetAttributeArray_int64(info, name, out, &n);
  if (st != nullptr) return absent(st, name, &err) ? "" : err;
  return "";
}

std::string read_int(const OrtKernelInfo* info, const char* name, int64_t* out) {
  std::string err;
  OrtStatus* st = g_api->KernelInfoGetAttribute_int64(info, name, out);
  if (st != nullptr) return absent(st, name, &err) ? "" : err;
  return "";
}

// *found is false where the attribute is absent.
std::string read_string(const OrtKernelInfo* info, const char* name, std::string* out, bool* found) {
  size_t n = 0;
  std::string err;
  *found = false;
  OrtStatus* st = g_api->KernelInfoGetAttribute_string(info, name, nullptr, &n);
  if (st != nullptr) return absent(st, name, &err) ? "" : err;
  std::vector<char> buf(n + 1, '\0');
  st = g_api->KernelInfoGetAttribute_string(info, name, buf.data(), &n);
  if (st != nullptr) return absent(st, name, &err) ? "" : err;
  *out = std::string(buf.data());
  *found = true;
  return "";
}

std::string read_attrs(const OrtKernelInfo* info, DeformConv3dAttrs* a) {
  std::string err;
  if (!(err = read_ints(info, "strides", a->stride)).empty()) return err;
  if (!(err = read_ints(info, "pads", a->pad)).empty()) return err;
  if (!(err = read_ints(info, "dilations", a->dil)).empty()) return err;
  if (!(err = read_int(info, "group", &a->group)).empty()) return err;
  if (!(err = read_int(info, "offset_group", &a->offset_group)).empty()) return err;
  bool found = false;
  if (!(err = read_string(info, "deform_dims", &a->deform_dims, &found)).empty()) return err;
  // The TensorRT parser's routing fields: where present they must name this op's version and namespace.
  std::string v;
  if (!(err = read_string(info, "plugin_version", &v, &found)).empty()) return err;
  if (found && v != kPluginVersion)
    return std::string("plugin_version must be \"") + kPluginVersion + "\", got \"" + v + "\"";
  if (!(err = read_string(info, "plugin_namespace", &v, &found)).empty()) return err;
  if (found && v != kDomain) return std::string("plugin_namespace must be \"") + kDomain + "\", got \"" + v + "\"";
  return validate_attrs(*a);
}

// --- Inputs ------------------------------------------------------------------------------------------

struct TensorView {
  const OrtValue* value = nullptr;
  std::vector<int64_t> dims;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
};

OrtStatus* view(const OrtValue* v, TensorView* out) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OrtStatus* st = g_api->GetTensorTypeAndShape(v, &info);
  if (st != nullptr) return st;
  size_t n = 0;
  if ((st = g_api->GetTensorElementType(info, &out->type)) == nullptr &&
      (st = g_api->GetDimensionsCount(info, &n)) == nullptr) {
    out->dims.assign(n, 0);
    st = g_api->GetDimensions(info, out->dims.data(), n);
  }
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  out->value = v;
  return st;
}

size_t elems(const std::vector<int64_t>& d) {
  size_t n = 1;
  for (int64_t v : d) n *= static_cast<size_t>(v);
  return n;
}

#ifdef __FLT16_MAX__  // the compiler's IEEE half type (GCC >= 12, Clang on x86-64): its conversions round to nearest
constexpr bool kHalfIO = true;
void widen(const void* src, size_t n, std::vector<float>* dst) {
  const _Float16* h = static_cast<const _Float16*>(src);
  dst->resize(n);
  for (size_t i = 0; i < n; ++i) (*dst)[i] = static_cast<float>(h[i]);
}
void narrow(const std::vector<float>& src, void* dst) {
  _Float16* h = static_cast<_Float16*>(dst);
  for (size_t i = 0; i < src.size(); ++i) h[i] = static_cast<_Float16>(src[i]);
}
#else
constexpr bool kHalfIO = false;  // no half type: the fp16 op is not registered
void widen(const void*, size_t, std::vector<float>*) {}
void narrow(const std::vector<float>&, void*) {}
#endif

std::string dims_text(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

}  // namespace

OrtStatus* prepare(const OrtApi* api, OrtKernelContext* ctx, const DeformConv3dAttrs& attrs, Problem* p) {
  (void)api;
  size_t count = 0;
  if (OrtStatus* st = g_api->KernelContext_GetInputCount(ctx, &count)) return st;
  if (count < 3) return fail(ORT_INVALID_ARGUMENT, "needs inputs X, offset, W (and optional B)");
  static const char* kNames[4] = {"X", "offset", "W", "B"};
  TensorView t[4];
  for (size_t i = 0; i < 4 && i < count; ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = g_api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (v == nullptr) continue;  // an omitted optional bias
    if (OrtStatus* st = view(v, &t[i])) return st;
    const bool half = t[i].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    if (t[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && !(half && kHalfIO))
      return fail(ORT_INVALID_ARGUMENT, std::string("input ") + kNames[i] + " must be float32 or float16");
    if (t[i].type != t[0].type)
      return fail(ORT_INVALID_ARGUMENT, std::string("input ") + kNames[i] + " must have the type of X");
    const size_t rank = i == 3 ? 1 : 5;
    if (t[i].dims.size() != rank)
      return fail(ORT_INVALID_ARGUMENT, std::string("input ") + kNames[i] + " must be " + std::to_string(rank) +
                                            "-D, got shape " + dims_text(t[i].dims));
  }
  DeformConv3dShape& s = p->shape;
  const std::string err = make_shape(attrs, t[0].dims.data(), t[2].dims.data(), t[1].dims[1], &s);
  if (!err.empty()) return fail(ORT_INVALID_ARGUMENT, err);
  const std::vector<int64_t>& od = t[1].dims;
  if (od[0] != s.n || od[2] != s.out[0] || od[3] != s.out[1] || od[4] != s.out[2])
    return fail(ORT_INVALID_ARGUMENT, "offset must have shape " +
                                          dims_text({s.n, s.offset_channels(), s.out[0], s.out[1], s.out[2]}) +
                                          ", got " + dims_text(od));
  if (t[3].value != nullptr && t[3].dims[0] != s.o)
    return fail(ORT_INVALID_ARGUMENT, "B must have shape [" + std::to_string(s.o) + "], got " + dims_text(t[3].dims));
  void* data = nullptr;
  const float** in[4] = {&p->x, &p->offset, &p->weight, &p->bias};
  for (int i = 0; i < 4; ++i) {
    if (t[i].value == nullptr) continue;
    // GetTensorMutableData reads inputs too, and exists in every API version.
    if (OrtStatus* st = g_api->GetTensorMutableData(const_cast<OrtValue*>(t[i].value), &data)) return st;
    if (t[0].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
      widen(data, elems(t[i].dims), &p->widened[i]);
      *in[i] = p->widened[i].data();
    } else {
      *in[i] = static_cast<const float*>(data);
    }
  }
  const int64_t out_dims[5] = {s.n, s.o, s.out[0], s.out[1], s.out[2]};
  OrtValue* out = nullptr;
  if (OrtStatus* st = g_api->KernelContext_GetOutput(ctx, 0, out_dims, 5, &out)) return st;
  if (OrtStatus* st = g_api->GetTensorMutableData(out, &data)) return st;
  if (t[0].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    p->y_count = static_cast<size_t>(s.n * s.o * s.out[0] * s.out[1] * s.out[2]);
    p->y_wide.resize(p->y_count);
    p->y = p->y_wide.data();
    p->y_half = data;
  } else {
    p->y = static_cast<float*>(data);
  }
  return nullptr;
}

namespace {

struct Kernel {
  DeformConv3dAttrs attrs;
  bool cuda = false;
};

// The scratch (the channels-last input copy, 100 MB for a 720p output frame) comes from the CPU
// provider's allocator, its arena by default, which keeps the block between runs: a fresh `new[]` of
// that size is a fresh mmap, and faulting its pages in again cost ~60 ms a call (measured, 103 MB).
OrtStatus* compute_cpu(OrtKernelContext* ctx, const Problem& p) {
  const cpu::OpenBlas& b = cpu::load_openblas(own_folder() + "/" + kBlasFile);
  if (b.sgemm == nullptr) return fail(ORT_FAIL, b.error + "; keep it beside libd3d_ort_ops.so");
  b.set_threads(1);  // again: another user of this OpenBLAS in the process may have changed it
  const DeformConv3dShape& s = p.shape;
  const size_t bytes = sizeof(float) * static_cast<size_t>(cpu::forward_scratch_elems(s));
  ProviderScratch scratch(g_api);
  if (OrtStatus* st = scratch.take(ctx, bytes)) return st;
  if (scratch.data() == nullptr)
    return fail(ORT_FAIL, "out of memory for the channels-last input copy (" + std::to_string(bytes) + " bytes)");
  const std::string err =
      cpu::forward_fused(s, p.x, p.offset, p.weight, p.bias, p.y, static_cast<float*>(scratch.data()), OrtFor{ctx},
                         cpu::OpenBlasGemm{b.sgemm});
  if (!err.empty()) return fail(ORT_FAIL, err);
  if (p.y_half != nullptr) narrow(p.y_wide, p.y_half);
  return nullptr;
}

OrtStatus* ORT_API_CALL create_kernel_v2(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                         void** kernel) noexcept;
OrtStatus* ORT_API_CALL compute_v2(void* kernel, OrtKernelContext* ctx) noexcept;

struct DeformConv3dOp : OrtCustomOp {
  bool cuda;
  ONNXTensorElementDataType type;  // of every input and the output
  DeformConv3dOp(bool on_cuda, ONNXTensorElementDataType io_type) : OrtCustomOp(), cuda(on_cuda), type(io_type) {
    version = ORT_API_VERSION;
    // The V1 entry points are not used for an op of this version (ONNX Runtime calls the V2 ones, which
    // can return errors); they are set because no callback of the declared version may be NULL.
    CreateKernel = [](const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info) -> void* {
      void* k = nullptr;
      if (OrtStatus* st = create_kernel_v2(op, api, info, &k)) {
        api->ReleaseStatus(st);
        return nullptr;
      }
      return k;
    };
    KernelCompute = [](void* kernel, OrtKernelContext* ctx) {
      if (OrtStatus* st = compute_v2(kernel, ctx)) g_api->ReleaseStatus(st);
    };
    GetName = [](const OrtCustomOp*) { return kOpType; };
    GetExecutionProviderType = [](const OrtCustomOp* op) {
      return static_cast<const DeformConv3dOp*>(op)->cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
    };
    GetInputType = [](const OrtCustomOp* op, size_t) { return static_cast<const DeformConv3dOp*>(op)->type; };
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 4; };
    GetOutputType = [](const OrtCustomOp* op, size_t) { return static_cast<const DeformConv3dOp*>(op)->type; };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
    KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
      return i == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    CreateKernelV2 = create_kernel_v2;
    KernelComputeV2 = compute_v2;
    // Output shapes come from the exported model (it records them, with symbolic H and W).
    InferOutputShapeFn = [](const OrtCustomOp*, OrtShapeInferContext*) -> OrtStatusPtr { return nullptr; };
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return 1; };
    GetMayInplace = [](int** in, int** out) -> size_t {
      *in = nullptr;
      *out = nullptr;
      return 0;
    };
    ReleaseMayInplace = [](int*, int*) {};
    GetAliasMap = [](int** in, int** out) -> size_t {
      *in = nullptr;
      *out = nullptr;
      return 0;
    };
    ReleaseAliasMap = [](int*, int*) {};
  }
};

OrtStatus* ORT_API_CALL create_kernel_v2(const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info,
                                         void** kernel) noexcept {
  try {
    auto k = std::make_unique<Kernel>();
    k->cuda = static_cast<const DeformConv3dOp*>(op)->cuda;
    const std::string err = read_attrs(info, &k->attrs);
    if (!err.empty()) return fail(ORT_INVALID_ARGUMENT, err);
    *kernel = k.release();
    return nullptr;
  } catch (const std::exception& e) {
    return fail(ORT_FAIL, e.what());
  }
}

OrtStatus* ORT_API_CALL compute_v2(void* kernel, OrtKernelContext* ctx) noexcept {
  try {
    const Kernel& k = *static_cast<const Kernel*>(kernel);
    Problem p;
    if (OrtStatus* st = prepare(g_api, ctx, k.attrs, &p)) return st;
#ifdef D3D_ORT_WITH_CUDA
    if (k.cuda) return compute_cuda(g_api, ctx, p);
#endif
    return compute_cpu(ctx, p);
  } catch (const std::exception& e) {
    return fail(ORT_FAIL, e.what());
  }
}

bool cuda_provider_available() {
  char** names = nullptr;
  int n = 0;
  if (OrtStatus* st = g_api->GetAvailableProviders(&names, &n)) {
    g_api->ReleaseStatus(st);
    return false;
  }
  bool found = false;
  for (int i = 0; i < n; ++i) found = found || std::strcmp(names[i], "CUDAExecutionProvider") == 0;
  if (OrtStatus* st = g_api->ReleaseAvailableProviders(names, n)) g_api->ReleaseStatus(st);
  return found;
}

}  // namespace
}  // namespace ort
}  // namespace d3d

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                            const OrtApiBase* base) {
  using namespace d3d::ort;
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Version 1 of the API exists in every ONNX Runtime: enough to say why we cannot run.
    const OrtApi* v1 = base->GetApi(1);
    const std::string msg = std::string("libd3d_ort_ops.so needs ONNX Runtime API ") + std::to_string(ORT_API_VERSION) +
                            " (ONNX Runtime >= 1." + std::to_string(ORT_API_VERSION) + "); this is " +
                            base->GetVersionString();
    return v1 != nullptr ? v1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  g_api = api;
  static DeformConv3dOp cpu_op(false, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  // fp16 I/O on the CPU: converted in, computed in fp32 by the same kernel, converted out.
  static DeformConv3dOp cpu_half_op(false, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  // Domains must outlive every session that uses them: one per registration, kept until exit.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain(d3d::kDomain, &domain)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &cpu_op)) return st;
  if (kHalfIO) {
    if (OrtStatus* st = api->CustomOpDomain_Add(domain, &cpu_half_op)) return st;
  }
#ifdef D3D_ORT_WITH_CUDA
  static DeformConv3dOp cuda_op(true, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  if (cuda_provider_available()) {
    if (OrtStatus* st = api->CustomOpDomain_Add(domain, &cuda_op)) return st;
  }
#else
  (void)&cuda_provider_available;
#endif
  return api->AddCustomOpDomain(options, domain);
}
