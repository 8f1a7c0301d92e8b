// TensorRT-free plugin core (see plugin_core.h).
#include "plugin_core.h"

#include <cstring>
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
  return {2 * a.pad[axis] - a.dil[axis] * (kernel - 1) - 1, a.stride[axis]};
}

size_t element_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

size_t workspace_bytes(const DeformConv3dShape& s, DType t) {
  return static_cast<size_t>(s.col_rows()) * static_cast<size_t>(col_chunk(s, kMaxColElems)) * element_size(t);
}

}  // namespace plugin
}  // namespace d3d
