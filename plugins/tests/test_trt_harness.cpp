// Host harness for libd3d_trt_plugin.so: loads the library with dlopen and drives it the way TensorRT's
// builder and runtime do, with a logger, an IExprBuilder and a resource context of its own. Runs with no
// GPU and no TensorRT library; where a CUDA device is present it also runs enqueue on device buffers and
// compares with the CPU build of the kernels (computed here in fp64).
//   test_trt_harness <path to libd3d_trt_plugin.so>
#include <NvInferRuntime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_cpu.h"
#include "test_harness.h"

using namespace nvinfer1;
using d3d_test::randint;
using d3d_test::uniform;

namespace {

// --- What TensorRT hands a plugin: logger, expression builder, resource context --------------------

class Logger : public ILogger {
 public:
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) errors.emplace_back(msg);
  }
  // The errors logged since the last call, joined.
  std::string take() {
    std::string all;
    for (const auto& e : errors) all += e + "\n";
    errors.clear();
    return all;
  }
  std::vector<std::string> errors;
};

class LoggerFinder : public ILoggerFinder {
 public:
  ILogger* findLogger() override { return &logger; }
  Logger logger;
};

// A symbolic dimension: a constant, an input dimension (symbol), or an operation on two expressions.
// Evaluated for concrete input dimensions, as TensorRT does at run time.
class Expr : public IDimensionExpr {
 public:
  enum Kind { kConst, kSymbol, kOp };
  Expr(Kind kind, int64_t value, int symbol, DimensionOperation op, const Expr* a, const Expr* b)
      : kind_(kind), value_(value), symbol_(symbol), op_(op), a_(a), b_(b), impl_(this) {
    mImpl = &impl_;
  }
  ~Expr() override = default;
  int64_t eval(const std::vector<int64_t>& env) const {
    if (kind_ == kConst) return value_;
    if (kind_ == kSymbol) return env.at(symbol_);
    return apply(op_, a_->eval(env), b_->eval(env));
  }
  bool constant() const { return kind_ == kConst; }
  int64_t value() const { return value_; }

  static int64_t apply(DimensionOperation op, int64_t x, int64_t y) {
    auto floor_div = [](int64_t p, int64_t q) { return p / q - ((p % q != 0) && ((p < 0) != (q < 0))); };
    switch (op) {
      case DimensionOperation::kSUM:
        return x + y;
      case DimensionOperation::kPROD:
        return x * y;
      case DimensionOperation::kMAX:
        return x > y ? x : y;
      case DimensionOperation::kMIN:
        return x < y ? x : y;
      case DimensionOperation::kSUB:
        return x - y;
      case DimensionOperation::kEQUAL:
        return x == y;
      case DimensionOperation::kLESS:
        return x < y;
      case DimensionOperation::kFLOOR_DIV:
        return floor_div(x, y);
      case DimensionOperation::kCEIL_DIV:
        return -floor_div(-x, y);
    }
    return std::numeric_limits<int64_t>::min();
  }

 private:
  struct Impl : apiv::VDimensionExpr {
    explicit Impl(const Expr* self) : self(self) {}
    bool isConstant() const override { return self->kind_ == kConst; }
    int64_t getConstantValue() const override {
      return self->kind_ == kConst ? self->value_ : std::numeric_limits<int64_t>::min();
    }
    bool isSizeTensor() const override { return false; }
    const Expr* self;
  };
  Kind kind_;
  int64_t value_;
  int symbol_;
  DimensionOperation op_;
  const Expr* a_;
  const Expr* b_;
  Impl impl_;
};

class ExprBuilder : public IExprBuilder {
 public:
  ExprBuilder() : impl_(this) { mImpl = &impl_; }
  ~ExprBuilder() override = default;
  const Expr* symbol(int id) { return add(Expr::kSymbol, 0, id, DimensionOperation::kSUM, nullptr, nullptr); }
  const Expr* make_constant(int64_t v) { return add(Expr::kConst, v, -1, DimensionOperation::kSUM, nullptr, nullptr); }
  const Expr* make_op(DimensionOperation op, const Expr& a, const Expr& b) {
    ++ops;
    if (a.constant() && b.constant()) return make_constant(Expr::apply(op, a.value(), b.value()));  // folded
    return add(Expr::kOp, 0, -1, op, &a, &b);
  }
  int ops = 0;

 private:
  const Expr* add(Expr::Kind k, int64_t v, int sym, DimensionOperation op, const Expr* a, const Expr* b) {
    exprs_.push_back(std::make_unique<Expr>(k, v, sym, op, a, b));
    return exprs_.back().get();
  }
  struct Impl : apiv::VExprBuilder {
    explicit Impl(ExprBuilder* self) : self(self) {}
    IDimensionExpr const* constant(int64_t value) override { return self->make_constant(value); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& first,
                                    IDimensionExpr const& second) override {
      return self->make_op(op, static_cast<const Expr&>(first), static_cast<const Expr&>(second));
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
      return nullptr;
    }
    ExprBuilder* self;
  };
  std::deque<std::unique_ptr<Expr>> exprs_;
  Impl impl_;
};

class ResourceContext : public IPluginResourceContext {
 public:
  IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

// --- The library and its plugins ------------------------------------------------------------------

using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
using SetLoggerFinder = void (*)(ILoggerFinder*);
using RegisterPlugins = bool (*)();

LoggerFinder g_finder;
IPluginCreatorV3One* g_creator = nullptr;

struct PluginDeleter {
  void operator()(IPluginV3* p) const { delete p; }
};
using PluginPtr = std::unique_ptr<IPluginV3, PluginDeleter>;

template <typename T>
T* capability(IPluginV3* p, PluginCapabilityType type) {
  return static_cast<T*>(p->getCapabilityInterface(type));
}
IPluginV3OneCore* core(IPluginV3* p) { return capability<IPluginV3OneCore>(p, PluginCapabilityType::kCORE); }
IPluginV3OneBuild* build(IPluginV3* p) { return capability<IPluginV3OneBuild>(p, PluginCapabilityType::kBUILD); }
IPluginV3OneRuntime* runtime(IPluginV3* p) {
  return capability<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
}

// Fields as TensorRT's ONNX parser hands them over: INTS as int32 lists, STRING as char with its length.
struct OnnxFields {
  int32_t strides[3] = {1, 1, 1}, pads[3] = {1, 1, 1}, dilations[3] = {1, 1, 1}, group = 1, offset_group = 1;
  std::string deform_dims = "HW", version = "1", ns = "d3d";
  std::vector<PluginField> fields() const {
    return {{"strides", strides, PluginFieldType::kINT32, 3},
            {"pads", pads, PluginFieldType::kINT32, 3},
            {"dilations", dilations, PluginFieldType::kINT32, 3},
            {"group", &group, PluginFieldType::kINT32, 1},
            {"offset_group", &offset_group, PluginFieldType::kINT32, 1},
            {"deform_dims", deform_dims.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(deform_dims.size())},
            {"plugin_version", version.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(version.size())},
            {"plugin_namespace", ns.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(ns.size())}};
  }
};

PluginPtr create(const std::vector<PluginField>& fields, TensorRTPhase phase = TensorRTPhase::kBUILD) {
  PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
  return PluginPtr(g_creator->createPlugin("layer0", &fc, phase));
}

// One problem: attributes, and the concrete I/O shapes they imply (computed here independently).
struct Problem {
  OnnxFields f;
  int64_t n = 1, c = 4, t = 3, h = 6, w = 5, o = 6, k[3] = {3, 3, 3};
  bool bias = true;
  int nd() const { return static_cast<int>(f.deform_dims.size()); }
  int64_t out(int ax) const {
    const int64_t in[3] = {t, h, w};
    return (in[ax] + 2 * f.pads[ax] - f.dilations[ax] * (k[ax] - 1) - 1) / f.strides[ax] + 1;
  }
  int64_t off_c() const { return f.offset_group * k[0] * k[1] * k[2] * nd(); }
  std::vector<Dims> inputs() const {
    std::vector<Dims> d = {Dims{5, {n, c, t, h, w}}, Dims{5, {n, off_c(), out(0), out(1), out(2)}},
                           Dims{5, {o, c / f.group, k[0], k[1], k[2]}}};
    if (bias) d.push_back(Dims{1, {o}});
    return d;
  }
  Dims output() const { return Dims{5, {n, o, out(0), out(1), out(2)}}; }
};

std::vector<PluginTensorDesc> descs(const std::vector<Dims>& dims, DataType type) {
  std::vector<PluginTensorDesc> r;
  for (const Dims& d : dims) r.push_back({d, type, TensorFormat::kLINEAR, 1.0f});
  return r;
}

std::vector<DynamicPluginTensorDesc> dyn(const std::vector<Dims>& lo, const std::vector<Dims>& hi, DataType type) {
  std::vector<DynamicPluginTensorDesc> r;
  for (size_t i = 0; i < lo.size(); ++i) {
    Dims any = lo[i];
    for (int j = 0; j < any.nbDims; ++j) any.d[j] = lo[i].d[j] == hi[i].d[j] ? lo[i].d[j] : -1;
    r.push_back({{any, type, TensorFormat::kLINEAR, 1.0f}, lo[i], hi[i], hi[i]});
  }
  return r;
}

bool same_fields(const PluginFieldCollection* a, const PluginFieldCollection* b) {
  if (a == nullptr || b == nullptr || a->nbFields != b->nbFields) return false;
  for (int32_t i = 0; i < a->nbFields; ++i) {
    const PluginField &x = a->fields[i], &y = b->fields[i];
    const size_t width = x.type == PluginFieldType::kCHAR ? 1 : 4;
    if (std::strcmp(x.name, y.name) != 0 || x.type != y.type || x.length != y.length ||
        std::memcmp(x.data, y.data, width * static_cast<size_t>(x.length)) != 0) {
      return false;
    }
  }
  return true;
}

// --- The checks -------------------------------------------------------------------------------------

void test_creator() {
  CHECK(std::strcmp(g_creator->getPluginName(), "DeformConv3d") == 0, "name %s", g_creator->getPluginName());
  CHECK(std::strcmp(g_creator->getPluginVersion(), "1") == 0, "version");
  CHECK(std::strcmp(g_creator->getPluginNamespace(), "d3d") == 0, "namespace");
  const PluginFieldCollection* names = g_creator->getFieldNames();
  CHECK(names != nullptr && names->nbFields == 8, "field names");
  const char* want[] = {"strides",      "pads",        "dilations",      "group",
                        "offset_group", "deform_dims", "plugin_version", "plugin_namespace"};
  for (int i = 0; names != nullptr && i < names->nbFields && i < 8; ++i) {
    CHECK(std::strcmp(names->fields[i].name, want[i]) == 0, "field %d is %s", i, names->fields[i].name);
  }
}

void test_capabilities_and_build_phase() {
  Problem p;
  PluginPtr plugin = create(p.f.fields());
  CHECK(plugin != nullptr, "createPlugin from ONNX fields failed: %s", g_finder.logger.take().c_str());
  if (!plugin) return;
  CHECK(std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0, "IPluginV3 kind %s",
        plugin->getInterfaceInfo().kind);
  IPluginV3OneCore* c = core(plugin.get());
  IPluginV3OneBuild* b = build(plugin.get());
  IPluginV3OneRuntime* r = runtime(plugin.get());
  CHECK(c && b && r, "a capability interface is missing");
  if (!c || !b || !r) return;
  CHECK(std::strcmp(c->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0, "core kind");
  CHECK(std::strcmp(b->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0, "build kind");
  CHECK(std::strcmp(r->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0, "runtime kind");
  CHECK(std::strcmp(c->getPluginName(), "DeformConv3d") == 0 && std::strcmp(c->getPluginNamespace(), "d3d") == 0,
        "core name/namespace");
  CHECK(b->getNbOutputs() == 1, "outputs");

  // Output types.
  for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16}) {
    DataType in[4] = {t, t, t, t}, out = DataType::kINT32;
    CHECK(b->getOutputDataTypes(&out, 1, in, 4) == 0 && out == t, "output type");
  }
  DataType bad_in[3] = {DataType::kINT8, DataType::kINT8, DataType::kINT8}, out = DataType::kFLOAT;
  CHECK(b->getOutputDataTypes(&out, 1, bad_in, 3) != 0, "int8 accepted");
  CHECK(!g_finder.logger.take().empty(), "int8 refusal not logged");

  // Output shapes through our IExprBuilder: symbols for N, T, H, W; constants for C and the weight.
  ExprBuilder eb;
  const Expr *N = eb.symbol(0), *T = eb.symbol(1), *H = eb.symbol(2), *W = eb.symbol(3);
  DimsExprs in[4];
  in[0].nbDims = 5;
  const IDimensionExpr* x_dims[5] = {N, eb.make_constant(p.c), T, H, W};
  std::copy(x_dims, x_dims + 5, in[0].d);
  in[1].nbDims = 5;
  const IDimensionExpr* off_dims[5] = {N, eb.make_constant(p.off_c()), eb.symbol(4), eb.symbol(5), eb.symbol(6)};
  std::copy(off_dims, off_dims + 5, in[1].d);
  in[2].nbDims = 5;
  const IDimensionExpr* w_dims[5] = {eb.make_constant(p.o), eb.make_constant(p.c), eb.make_constant(p.k[0]),
                                     eb.make_constant(p.k[1]), eb.make_constant(p.k[2])};
  std::copy(w_dims, w_dims + 5, in[2].d);
  in[3].nbDims = 1;
  in[3].d[0] = eb.make_constant(p.o);
  DimsExprs outs[1];
  CHECK(b->getOutputShapes(in, 4, nullptr, 0, outs, 1, eb) == 0, "getOutputShapes: %s", g_finder.logger.take().c_str());
  CHECK(outs[0].nbDims == 5 && eb.ops > 0, "output rank %d", outs[0].nbDims);
  for (int it = 0; it < 50 && outs[0].nbDims == 5; ++it) {
    Problem q = p;
    q.n = randint(1, 4);
    q.t = randint(3, 9);
    q.h = randint(3, 300);
    q.w = randint(3, 300);
    const std::vector<int64_t> env = {q.n, q.t, q.h, q.w, 0, 0, 0};
    const int64_t want[5] = {q.n, q.o, q.out(0), q.out(1), q.out(2)};
    for (int d = 0; d < 5; ++d) {
      const int64_t got = static_cast<const Expr*>(outs[0].d[d])->eval(env);
      CHECK(got == want[d], "dim %d for %lldx%lldx%lld: %lld, want %lld", d, (long long)q.t, (long long)q.h,
            (long long)q.w, (long long)got, (long long)want[d]);
    }
  }
  // A kernel size that is not a build-time constant cannot be handled: refused with a reason.
  in[2].d[3] = eb.symbol(7);
  CHECK(b->getOutputShapes(in, 4, nullptr, 0, outs, 1, eb) != 0, "symbolic kernel accepted");
  CHECK(g_finder.logger.take().find("constant") != std::string::npos, "no reason for the symbolic kernel");
  in[2].d[3] = eb.make_constant(p.k[1]);
  in[0].nbDims = 4;
  CHECK(b->getOutputShapes(in, 4, nullptr, 0, outs, 1, eb) != 0, "4-D X accepted");
  CHECK(!g_finder.logger.take().empty(), "4-D X refusal not logged");

  // Formats and types, asked position by position as the builder does.
  std::vector<Dims> dims = p.inputs();
  dims.push_back(p.output());
  for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16, DataType::kINT8, DataType::kINT32}) {
    for (TensorFormat fmt : {TensorFormat::kLINEAR, TensorFormat::kCHW32, TensorFormat::kHWC}) {
      std::vector<DynamicPluginTensorDesc> io = dyn(dims, dims, t);
      for (auto& d : io) d.desc.format = fmt;
      const bool want =
          fmt == TensorFormat::kLINEAR && (t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16);
      for (int pos = 0; pos < 5; ++pos) {
        CHECK(b->supportsFormatCombination(pos, io.data(), 4, 1) == want, "pos %d type %d format %d", pos, int(t),
              int(fmt));
      }
    }
  }
  std::vector<DynamicPluginTensorDesc> mixed = dyn(dims, dims, DataType::kFLOAT);
  mixed[1].desc.type = DataType::kHALF;
  CHECK(!b->supportsFormatCombination(1, mixed.data(), 4, 1), "offset of another type accepted");
  CHECK(!b->supportsFormatCombination(5, mixed.data(), 4, 1) && !b->supportsFormatCombination(-1, mixed.data(), 4, 1),
        "position out of range accepted");

  // configurePlugin and getWorkspaceSize over a dynamic profile (H and W from small to large).
  Problem lo = p, hi = p;
  lo.h = lo.w = 3;
  hi.n = 2;
  hi.h = 180;
  hi.w = 320;
  std::vector<Dims> lo_d = lo.inputs(), hi_d = hi.inputs();
  std::vector<DynamicPluginTensorDesc> in_desc = dyn(lo_d, hi_d, DataType::kHALF);
  std::vector<DynamicPluginTensorDesc> out_desc = dyn({lo.output()}, {hi.output()}, DataType::kHALF);
  CHECK(b->configurePlugin(in_desc.data(), 4, out_desc.data(), 1) == 0, "configurePlugin: %s",
        g_finder.logger.take().c_str());
  const size_t ws = b->getWorkspaceSize(in_desc.data(), 4, out_desc.data(), 1);
  // fp16: the fused kernel needs no column buffer, so no workspace.
  CHECK(ws == 0, "fp16 workspace %zu, want 0", ws);
  // fp32: the column buffer, C*K rows, min(2^26 / rows, L) columns at the profile's maximum, 4 bytes each.
  std::vector<DynamicPluginTensorDesc> in_f32 = dyn(lo_d, hi_d, DataType::kFLOAT);
  std::vector<DynamicPluginTensorDesc> out_f32 = dyn({lo.output()}, {hi.output()}, DataType::kFLOAT);
  const int64_t rows = p.c * 27, L = hi.out(0) * hi.out(1) * hi.out(2);
  const size_t want_ws = size_t(rows) * size_t(std::min<int64_t>((int64_t(1) << 26) / rows, L)) * 4;
  const size_t ws32 = b->getWorkspaceSize(in_f32.data(), 4, out_f32.data(), 1);
  CHECK(ws32 == want_ws, "fp32 workspace %zu, want %zu", ws32, want_ws);
  // A profile whose offset does not fit X is refused, naming the offset.
  std::vector<Dims> bad = hi_d;
  bad[1].d[3] += 1;
  std::vector<DynamicPluginTensorDesc> bad_desc = dyn(lo_d, bad, DataType::kHALF);
  CHECK(b->configurePlugin(bad_desc.data(), 4, out_desc.data(), 1) != 0, "mismatched offset profile accepted");
  CHECK(g_finder.logger.take().find("offset") != std::string::npos, "no reason naming the offset");
  CHECK(b->getWorkspaceSize(bad_desc.data(), 4, out_desc.data(), 1) == 0, "workspace for an invalid profile");
  g_finder.logger.take();
  std::vector<DynamicPluginTensorDesc> typed = dyn(lo_d, hi_d, DataType::kFLOAT);
  typed[2].desc.type = DataType::kHALF;
  CHECK(b->configurePlugin(typed.data(), 4, out_desc.data(), 1) != 0, "mixed types accepted");
  g_finder.logger.take();
  CHECK(b->configurePlugin(in_desc.data(), 2, out_desc.data(), 1) != 0, "2 inputs accepted");
  g_finder.logger.take();
}

void test_serialization_clone_runtime() {
  Problem p;
  p.f.strides[2] = 2;
  p.f.dilations[0] = 2;
  p.f.pads[0] = 2;
  p.f.group = 2;
  p.f.offset_group = 2;
  p.f.deform_dims = "THW";
  PluginPtr built = create(p.f.fields());
  CHECK(built != nullptr, "createPlugin: %s", g_finder.logger.take().c_str());
  if (!built) return;
  const PluginFieldCollection* fc = runtime(built.get())->getFieldsToSerialize();
  CHECK(fc != nullptr && fc->nbFields == 6, "serialized fields");
  if (fc == nullptr) return;
  // Engine deserialization: createPlugin(kRUNTIME) from exactly those fields.
  std::vector<PluginField> copy(fc->fields, fc->fields + fc->nbFields);
  PluginPtr loaded = create(copy, TensorRTPhase::kRUNTIME);
  CHECK(loaded != nullptr, "createPlugin(kRUNTIME) from serialized fields: %s", g_finder.logger.take().c_str());
  if (!loaded) return;
  CHECK(same_fields(fc, runtime(loaded.get())->getFieldsToSerialize()), "round trip changed the fields");
  CHECK(std::strcmp(build(built.get())->getMetadataString(), build(loaded.get())->getMetadataString()) == 0,
        "metadata differs");
  PluginPtr cloned(loaded->clone());
  CHECK(cloned != nullptr && same_fields(fc, runtime(cloned.get())->getFieldsToSerialize()), "clone differs");

  // Runtime: per-context copy, then a shape change and enqueue refusals (none reaches the GPU).
  ResourceContext ctx;
  PluginPtr ctx_plugin(runtime(loaded.get())->attachToContext(&ctx));
  CHECK(ctx_plugin != nullptr, "attachToContext");
  if (!ctx_plugin) return;
  IPluginV3OneRuntime* rt = runtime(ctx_plugin.get());
  std::vector<PluginTensorDesc> in = descs(p.inputs(), DataType::kFLOAT);
  std::vector<PluginTensorDesc> out = descs({p.output()}, DataType::kFLOAT);
  float dummy = 0;
  const void* inputs[4] = {&dummy, &dummy, &dummy, &dummy};
  void* outputs[1] = {&dummy};
  CHECK(rt->enqueue(in.data(), out.data(), inputs, outputs, &dummy, nullptr) != 0, "enqueue before onShapeChange");
  CHECK(g_finder.logger.take().find("onShapeChange") != std::string::npos, "no reason for enqueue before shapes");
  CHECK(rt->onShapeChange(in.data(), 4, out.data(), 1) == 0, "onShapeChange: %s", g_finder.logger.take().c_str());
  // Each malformed tensor is refused by onShapeChange with a reason naming it; enqueue then refuses too.
  struct Bad {
    int tensor, dim;
    int64_t delta;
    const char* reason;
  };
  const Bad bads[] = {{1, 0, 1, "offset"},  {1, 1, 3, "offset"}, {1, 2, 1, "offset"},
                      {1, 3, -1, "offset"}, {1, 4, 2, "offset"}, {3, 0, 1, "B"},
                      {2, 1, 1, "weight"},  {0, 1, 1, "group"},  {4, 3, 1, "Y"}};
  for (const Bad& bd : bads) {
    std::vector<PluginTensorDesc> i2 = in, o2 = out;
    (bd.tensor == 4 ? o2[0] : i2[bd.tensor]).dims.d[bd.dim] += bd.delta;
    CHECK(rt->onShapeChange(i2.data(), 4, o2.data(), 1) != 0, "tensor %d dim %d accepted", bd.tensor, bd.dim);
    const std::string why = g_finder.logger.take();
    CHECK(why.find(bd.reason) != std::string::npos, "tensor %d dim %d: reason '%s'", bd.tensor, bd.dim, why.c_str());
    CHECK(rt->enqueue(i2.data(), o2.data(), inputs, outputs, &dummy, nullptr) != 0, "enqueue after a refused shape");
    g_finder.logger.take();
  }
  CHECK(rt->onShapeChange(in.data(), 4, out.data(), 1) == 0, "onShapeChange again");
  // Descriptors that differ from the validated ones (a larger H, as an out-of-bounds read would need).
  std::vector<PluginTensorDesc> other = in;
  other[0].dims.d[3] += 4;
  CHECK(rt->enqueue(other.data(), out.data(), inputs, outputs, &dummy, nullptr) != 0, "enqueue with other shapes");
  CHECK(g_finder.logger.take().find("differ") != std::string::npos, "no reason for other shapes");
  std::vector<PluginTensorDesc> half = in;
  half[1].type = DataType::kHALF;
  CHECK(rt->enqueue(half.data(), out.data(), inputs, outputs, &dummy, nullptr) != 0, "enqueue with mixed types");
  g_finder.logger.take();
  CHECK(rt->enqueue(in.data(), out.data(), inputs, outputs, nullptr, nullptr) != 0, "enqueue without workspace");
  CHECK(g_finder.logger.take().find("workspace") != std::string::npos, "no reason for the missing workspace");
}

void test_bad_fields() {
  struct Case {
    const char* what;
    void (*edit)(OnnxFields&);
    const char* reason;
  };
  const Case cases[] = {
      {"group 0", [](OnnxFields& f) { f.group = 0; }, "group"},
      {"negative pad", [](OnnxFields& f) { f.pads[1] = -1; }, "padding"},
      {"stride 0", [](OnnxFields& f) { f.strides[0] = 0; }, "stride"},
      {"deform_dims XY", [](OnnxFields& f) { f.deform_dims = "XY"; }, "deform_dims"},
      {"deform_dims WH", [](OnnxFields& f) { f.deform_dims = "WH"; }, "deform_dims"},
      {"namespace mmcv", [](OnnxFields& f) { f.ns = "mmcv"; }, "plugin_namespace"},
      {"version 2", [](OnnxFields& f) { f.version = "2"; }, "plugin_version"},
  };
  for (const Case& c : cases) {
    OnnxFields f;
    c.edit(f);
    PluginPtr p = create(f.fields());
    CHECK(p == nullptr, "%s accepted", c.what);
    const std::string why = g_finder.logger.take();
    CHECK(why.find(c.reason) != std::string::npos && why.find("layer0") != std::string::npos, "%s: reason '%s'", c.what,
          why.c_str());
  }
  OnnxFields f;
  std::vector<PluginField> fields = f.fields();
  fields.push_back({"kernel_shape", f.strides, PluginFieldType::kINT32, 3});
  CHECK(create(fields) == nullptr, "unknown field accepted");
  CHECK(g_finder.logger.take().find("unknown field") != std::string::npos, "no reason for an unknown field");
  fields = f.fields();
  fields[0].length = 2;
  CHECK(create(fields) == nullptr, "2 strides accepted");
  fields = f.fields();
  fields[3].type = PluginFieldType::kFLOAT32;
  CHECK(create(fields) == nullptr, "float group accepted");
  PluginFieldCollection broken{3, nullptr};
  CHECK(g_creator->createPlugin("x", &broken, TensorRTPhase::kBUILD) == nullptr, "null field array accepted");
  CHECK(!g_finder.logger.take().empty(), "refusals not logged");
  // No fields at all: the contract's defaults.
  CHECK(create({}) != nullptr, "empty field set refused: %s", g_finder.logger.take().c_str());
}

// Host-side element conversions for the device buffers (cuda_fp16.h / cuda_bf16.h work in host code).
template <typename T>
T to_elem(float v);
template <>
float to_elem<float>(float v) {
  return v;
}
template <>
__half to_elem<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__nv_bfloat16 to_elem<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
double to_double(float v) { return v; }
double to_double(__half v) { return __half2float(v); }
double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }

// enqueue on device buffers in one I/O type against the CPU build of the kernels in fp64 on the same
// rounded inputs. Returns false where there is no CUDA device (nothing run).
template <typename T>
bool enqueue_on_gpu(DataType type, const char* type_name, double tolerance) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("GPU: enqueue NOT run (no CUDA device: %s)\n", err != cudaSuccess ? cudaGetErrorString(err) : "none");
    return false;
  }
  Problem p;
  p.n = 2;
  p.c = 8;
  p.o = 6;
  p.t = 4;
  p.h = 13;
  p.w = 11;
  p.f.group = 2;
  p.f.offset_group = 2;
  p.f.deform_dims = "THW";
  PluginPtr plugin = create(p.f.fields(), TensorRTPhase::kRUNTIME);
  CHECK(plugin != nullptr, "createPlugin");
  if (!plugin) return true;
  IPluginV3OneRuntime* rt = runtime(plugin.get());
  const std::vector<Dims> dims = p.inputs();
  std::vector<std::vector<T>> host(4);
  std::vector<std::vector<double>> h64(4);
  std::vector<void*> dev(4, nullptr);
  for (int i = 0; i < 4; ++i) {
    int64_t n = 1;
    for (int j = 0; j < dims[i].nbDims; ++j) n *= dims[i].d[j];
    for (int64_t j = 0; j < n; ++j) {
      host[i].push_back(to_elem<T>(static_cast<float>(i == 1 ? uniform(-2.5, 2.5) : uniform(-1, 1))));
      h64[i].push_back(to_double(host[i].back()));
    }
    CHECK(cudaMalloc(&dev[i], n * sizeof(T)) == cudaSuccess, "cudaMalloc");
    cudaMemcpy(dev[i], host[i].data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  const Dims yd = p.output();
  const int64_t ny = yd.d[0] * yd.d[1] * yd.d[2] * yd.d[3] * yd.d[4];
  void* y = nullptr;
  cudaMalloc(&y, ny * sizeof(T));
  std::vector<DynamicPluginTensorDesc> dd = dyn(dims, dims, type), od = dyn({yd}, {yd}, type);
  const size_t ws_bytes = build(plugin.get())->getWorkspaceSize(dd.data(), 4, od.data(), 1);
  void* ws = nullptr;
  cudaMalloc(&ws, ws_bytes);
  std::vector<PluginTensorDesc> in = descs(dims, type), out = descs({yd}, type);
  CHECK(rt->onShapeChange(in.data(), 4, out.data(), 1) == 0, "onShapeChange");
  const void* inputs[4] = {dev[0], dev[1], dev[2], dev[3]};
  void* outputs[1] = {y};
  cudaStream_t stream = nullptr;
  cudaStreamCreate(&stream);
  CHECK(rt->enqueue(in.data(), out.data(), inputs, outputs, ws, stream) == 0, "enqueue %s: %s", type_name,
        g_finder.logger.take().c_str());
  CHECK(cudaStreamSynchronize(stream) == cudaSuccess, "kernel failed");
  std::vector<T> got(ny);
  cudaMemcpy(got.data(), y, ny * sizeof(T), cudaMemcpyDeviceToHost);
  // Reference: the CPU build of the kernels in fp64.
  d3d::DeformConv3dAttrs a;
  for (int i = 0; i < 3; ++i) {
    a.stride[i] = p.f.strides[i];
    a.pad[i] = p.f.pads[i];
    a.dil[i] = p.f.dilations[i];
  }
  a.group = p.f.group;
  a.offset_group = p.f.offset_group;
  a.deform_dims = p.f.deform_dims;
  int64_t xd[5], wd[5];
  std::copy(dims[0].d, dims[0].d + 5, xd);
  std::copy(dims[2].d, dims[2].d + 5, wd);
  d3d::DeformConv3dShape s;
  CHECK(d3d::make_shape(a, xd, wd, dims[1].d[1], &s).empty(), "make_shape");
  std::vector<double> want(ny), col(s.col_rows() * s.out_spatial());
  d3d::cpu::forward(s, h64[0].data(), h64[1].data(), h64[2].data(), h64[3].data(), want.data(), col.data(),
                    int64_t(col.size()));
  double max_err = 0, scale = 0;
  for (int64_t i = 0; i < ny; ++i) {
    max_err = std::fmax(max_err, std::fabs(to_double(got[i]) - want[i]));
    scale = std::fmax(scale, std::fabs(want[i]));
  }
  std::printf("GPU: enqueue %s vs CPU fp64: max abs error %.3g (normalised %.3g) over %lld outputs\n", type_name,
              max_err, max_err / scale, (long long)ny);
  CHECK(max_err <= tolerance * scale, "GPU enqueue (%s) differs from the CPU op: %g of %g", type_name, max_err, scale);
  for (void* ptr : dev) cudaFree(ptr);
  cudaFree(y);
  cudaFree(ws);
  cudaStreamDestroy(stream);
  return true;
}

// Normalised tolerances as in bench/gpu_check.py: positions and sums are fp32 for every I/O type.
void test_enqueue_on_gpu() {
  const bool ran = enqueue_on_gpu<float>(DataType::kFLOAT, "fp32", 1e-5);
#if defined(D3D_HARNESS_CUDA_ON_CPU)
  // Built against the CPU executor's runtime twin (CMake's cuda_on_cpu_trt_enqueue): enqueue must run.
  CHECK(ran, "enqueue was not run on the CPU executor");
#endif
  if (!ran) return;
  enqueue_on_gpu<__half>(DataType::kHALF, "fp16", 1e-2);
  enqueue_on_gpu<__nv_bfloat16>(DataType::kBF16, "bf16", 5e-2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <libd3d_trt_plugin.so>\n", argv[0]);
    return 2;
  }
  // RTLD_NOW: every symbol must resolve in a process without TensorRT (getPluginRegistry is weak).
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto set_logger_finder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  auto register_plugins = reinterpret_cast<RegisterPlugins>(dlsym(lib, "d3dRegisterPlugins"));
  CHECK(get_creators && set_logger_finder && register_plugins, "entry points missing");
  CHECK(dlsym(lib, "_ZN3d3d6plugin12parse_fieldsEPKNS0_5FieldEiPNS_17DeformConv3dAttrsE") == nullptr,
        "library internals are exported");
  if (!get_creators || !set_logger_finder) return d3d_test::report();
  set_logger_finder(&g_finder);
  int32_t n = 0;
  IPluginCreatorInterface* const* creators = get_creators(n);
  CHECK(n == 1 && creators != nullptr && creators[0] != nullptr, "getCreators: %d", n);
  if (n != 1 || creators == nullptr) return d3d_test::report();
  const InterfaceInfo info = creators[0]->getInterfaceInfo();
  CHECK(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1, "creator interface %s %d", info.kind,
        info.major);
  g_creator = static_cast<IPluginCreatorV3One*>(creators[0]);
  // No TensorRT here: explicit registration must fail cleanly, with a reason.
  CHECK(register_plugins != nullptr && !register_plugins(), "d3dRegisterPlugins succeeded without TensorRT");
  CHECK(g_finder.logger.take().find("getPluginRegistry") != std::string::npos, "no reason from d3dRegisterPlugins");

  test_creator();
  test_capabilities_and_build_phase();
  test_serialization_clone_runtime();
  test_bad_fields();
  test_enqueue_on_gpu();
  set_logger_finder(nullptr);
  return d3d_test::report();
}
