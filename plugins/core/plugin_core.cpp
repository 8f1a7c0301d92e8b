// TensorRT-free plugin core (see plugin_core.h).
#include "plugin_core.h"

#include <cstring>
#include <initializer_list>
#include <set>

namespace d3d {
namespace plugin {
namespace {

// Field names are bounded like TensorRT's (1024 bytes including the terminator).
std::string safe_name(const char* name) {
  if (name == nullptr) return "";
  size_t n = 0;
  while (n < 1024 && name[n] != '\0') ++n;
  return std::string(name, n);
}

std::string read_ints(const Field& f, int64_t* out, int32_t expected) {
  if (f.data == nullptr) return "field '" + safe_name(f.name) + "' has no data";
  if (f.length != expected) {
    return "field '" + safe_name(f.name) + "' must have " + std::to_string(expected) + " value(s), got " +
           std::to_string(f.length);
  }
  for (int32_t i = 0; i < expected; ++i) {
    if (f.type == FieldType::kInt32) {
      int32_t v;
      std::memcpy(&v, static_cast<const char*>(f.data) + i * sizeof(int32_t), sizeof v);
      out[i] = v;
    } else if (f.type == FieldType::kInt64) {
      int64_t v;
      std::memcpy(&v, static_cast<const char*>(f.data) + i * sizeof(int64_t), sizeof v);
      out[i] = v;
    } else {
      return "field '" + safe_name(f.name) + "' must be int32 or int64";
    }
  }
  return "";
}

std::string read_string(const Field& f, std::string* out) {
  if (f.type != FieldType::kChar) return "field '" + safe_name(f.name) + "' must be a string (char)";
  if (f.length < 0 || f.length > 64) {
    return "field '" + safe_name(f.name) + "' has an invalid length " + std::to_string(f.length);
  }
  if (f.length > 0 && f.data == nullptr) return "field '" + safe_name(f.name) + "' has no data";
  const char* p = static_cast<const char*>(f.data);
  size_t n = static_cast<size_t>(f.length);
  // The ONNX parser may or may not count a terminating NUL; nothing may follow it.
  size_t len = 0;
  while (len < n && p[len] != '\0') ++len;
  for (size_t i = len; i < n; ++i) {
    if (p[i] != '\0') return "field '" + safe_name(f.name) + "' has bytes after its terminator";
  }
  *out = std::string(p, len);
  return "";
}

}  // namespace

std::string parse_fields(const Field* fields, int32_t count, DeformConv3dAttrs* out) {
  if (count < 0 || (count > 0 && fields == nullptr)) return "invalid field collection";
  DeformConv3dAttrs a;
  std::set<std::string> seen;
  for (int32_t i = 0; i < count; ++i) {
    const Field& f = fields[i];
    const std::string name = safe_name(f.name);
    if (name.empty()) return "a field has no name";
    if (!seen.insert(name).second) return "field '" + name + "' is given twice";
    std::string err;
    int64_t v[3];
    if (name == "strides" || name == "pads" || name == "dilations") {
      err = read_ints(f, v, 3);
      int64_t* dst = name == "strides" ? a.stride : name == "pads" ? a.pad : a.dil;
      if (err.empty()) std::copy(v, v + 3, dst);
    } else if (name == "group" || name == "offset_group") {
      err = read_ints(f, v, 1);
      if (err.empty()) (name == "group" ? a.group : a.offset_group) = v[0];
    } else if (name == "deform_dims") {
      err = read_string(f, &a.deform_dims);
    } else if (name == "plugin_version" || name == "plugin_namespace") {
      std::string s;
      err = read_string(f, &s);
      const char* want = name == "plugin_version" ? kVersion : kNamespace;
      if (err.empty() && s != want) err = name + " must be \"" + want + "\", got \"" + s + "\"";
    } else {
      err = "unknown field '" + name + "'";
    }
    if (!err.empty()) return err;
  }
  const std::string err = validate_attrs(a);
  if (!err.empty()) return err;
  *out = a;
  return "";
}

SerializedFields::SerializedFields(const DeformConv3dAttrs& a) : dims_(a.deform_dims) {
  for (int i = 0; i < 3; ++i) {
    stride_[i] = static_cast<int32_t>(a.stride[i]);
    pad_[i] = static_cast<int32_t>(a.pad[i]);
    dil_[i] = static_cast<int32_t>(a.dil[i]);
  }
  group_ = static_cast<int32_t>(a.group);
  offset_group_ = static_cast<int32_t>(a.offset_group);
  fields_ = {
      {"strides", stride_, FieldType::kInt32, 3},
      {"pads", pad_, FieldType::kInt32, 3},
      {"dilations", dil_, FieldType::kInt32, 3},
      {"group", &group_, FieldType::kInt32, 1},
      {"offset_group", &offset_group_, FieldType::kInt32, 1},
      {"deform_dims", dims_.c_str(), FieldType::kChar, static_cast<int32_t>(dims_.size())},
  };
}

AxisExpr output_axis_expr(const DeformConv3dAttrs& a, int axis, int64_t kernel) {
  return {conv_out_add(a.pad[axis], a.dil[axis], kernel), a.stride[axis]};
}

bool operator==(const TensorDims& a, const TensorDims& b) {
  if (a.rank != b.rank) return false;
  for (int32_t i = 0; i < a.rank && i < kMaxRank; ++i) {
    if (a.d[i] != b.d[i]) return false;
  }
  return true;
}

namespace {

std::string dims_str(const TensorDims& t) {
  std::string r = "[";
  for (int32_t i = 0; i < t.rank && i < kMaxRank; ++i) r += (i ? ", " : "") + std::to_string(t.d[i]);
  return r + "]";
}

std::string dims_str(std::initializer_list<int64_t> d) {
  std::string r = "[";
  for (const int64_t v : d) r += (r.size() > 1 ? ", " : "") + std::to_string(v);
  return r + "]";
}

// Element count, or -1 when it would exceed 2^62 (the kernels index with int64).
int64_t numel(const TensorDims& t) {
  int64_t n = 1;
  for (int32_t i = 0; i < t.rank; ++i) {
    if (t.d[i] < 0 || (t.d[i] > 0 && n > (int64_t(1) << 62) / t.d[i])) return -1;
    n *= t.d[i];
  }
  return n;
}

bool equal(const TensorDims& t, std::initializer_list<int64_t> d) {
  if (t.rank != static_cast<int32_t>(d.size())) return false;
  int32_t i = 0;
  for (const int64_t v : d) {
    if (t.d[i++] != v) return false;
  }
  return true;
}

}  // namespace

std::string check_io(const DeformConv3dAttrs& a, const TensorDims* inputs, int32_t nb_inputs, const TensorDims* output,
                     DeformConv3dShape* s) {
  if (inputs == nullptr || (nb_inputs != 3 && nb_inputs != 4)) {
    return "expects 3 or 4 inputs (X, offset, W[, B]), got " + std::to_string(nb_inputs);
  }
  static const char* kNames[4] = {"X", "offset", "W", "B"};
  for (int32_t i = 0; i < nb_inputs; ++i) {
    const int32_t want = i == 3 ? 1 : 5;
    if (inputs[i].rank != want) {
      return std::string(kNames[i]) + " must be " + std::to_string(want) + "-D, got rank " +
             std::to_string(inputs[i].rank);
    }
    if (numel(inputs[i]) < 0)
      return std::string(kNames[i]) + " has invalid or too large dimensions " + dims_str(inputs[i]);
  }
  const TensorDims &x = inputs[0], &off = inputs[1], &w = inputs[2];
  // Bounded like the attributes, so that dilation * (kernel - 1) cannot overflow.
  for (int i = 2; i < 5; ++i) {
    if (w.d[i] > kMaxAttr) return "W's kernel extents must be <= 2^20, got " + dims_str(w);
  }
  DeformConv3dShape r;
  std::string err = make_shape(a, x.d, w.d, off.d[1], &r);
  if (!err.empty()) return err;
  if (!equal(off, {r.n, r.offset_channels(), r.out[0], r.out[1], r.out[2]})) {
    return "offset must have shape " + dims_str({r.n, r.offset_channels(), r.out[0], r.out[1], r.out[2]}) + " for X " +
           dims_str(x) + " and W " + dims_str(w) + ", got " + dims_str(off);
  }
  if (nb_inputs == 4 && !equal(inputs[3], {r.o})) {
    return "B must have shape [" + std::to_string(r.o) + "], got " + dims_str(inputs[3]);
  }
  if (output != nullptr && !equal(*output, {r.n, r.o, r.out[0], r.out[1], r.out[2]})) {
    return "Y must have shape " + dims_str({r.n, r.o, r.out[0], r.out[1], r.out[2]}) + ", got " + dims_str(*output);
  }
  // The column buffer's element count (rows x chunk) must fit as well.
  if (r.col_rows() > (int64_t(1) << 62) / col_chunk(r, kMaxColElems)) return "C * kT*kH*kW is too large";
  *s = r;
  return "";
}

std::string ShapeState::update(const DeformConv3dAttrs& a, const TensorDims* inputs, int32_t nb_inputs,
                               const TensorDims* output) {
  valid_ = false;
  DeformConv3dShape s;
  std::string err = check_io(a, inputs, nb_inputs, output, &s);
  if (!err.empty()) return err;
  for (int32_t i = 0; i < nb_inputs; ++i) inputs_[i] = inputs[i];
  output_ = output != nullptr ? *output : TensorDims();
  nb_inputs_ = nb_inputs;
  shape_ = s;
  valid_ = true;
  return "";
}

bool ShapeState::matches(const TensorDims* inputs, int32_t nb_inputs, const TensorDims* output) const noexcept {
  if (!valid_ || inputs == nullptr || nb_inputs != nb_inputs_) return false;
  for (int32_t i = 0; i < nb_inputs; ++i) {
    if (!(inputs[i] == inputs_[i])) return false;
  }
  return output == nullptr || output_.rank < 0 || *output == output_;
}

size_t element_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

size_t workspace_bytes(const DeformConv3dShape& s, DType t) {
  if (t != DType::kFloat32) return 0;  // fp16/bf16 take the fused kernel: no column buffer (cuda::kFusedForward)
  return static_cast<size_t>(s.col_rows()) * static_cast<size_t>(col_chunk(s, kMaxColElems)) * element_size(t);
}

}  // namespace plugin
}  // namespace d3d
