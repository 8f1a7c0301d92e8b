// Attribute validation and shape arithmetic for DeformConv3d (host-only, no framework types).
// Every adapter goes through these functions, so the PyTorch op, the ONNX Runtime path and the
// TensorRT plugin accept and refuse exactly the same inputs. Errors are returned as text, never thrown
// across an ABI boundary: an empty string means "valid".
#pragma once

#include <cstdint>
#include <string>

#include "deform_conv3d_contract.h"
#include "deform_conv3d_shape.h"

namespace d3d {

static_assert(kMaxAttr == int64_t(1) << 20, "the messages below (and export/validate.py's) say 2^20");

// A node's attributes; members left unset hold the contract's defaults (deform_conv3d_contract.h).
struct DeformConv3dAttrs {
  int64_t stride[3] = {kDefaultStride, kDefaultStride, kDefaultStride};
  int64_t pad[3] = {kDefaultPad, kDefaultPad, kDefaultPad};
  int64_t dil[3] = {kDefaultDilation, kDefaultDilation, kDefaultDilation};
  int64_t group = kDefaultGroup;
  int64_t offset_group = kDefaultOffsetGroup;
  std::string deform_dims = kDefaultDeformDims;
};

// Parses an ordered, non-empty subset of "THW" into per-axis slots.
inline std::string parse_deform_dims(const std::string& dims, int slot[3], int* nd) {
  static const char kAxes[3] = {'T', 'H', 'W'};
  if (dims.empty() || dims.size() > 3) {
    return "deform_dims must be a non-empty ordered subset of \"THW\", got \"" + dims + "\"";
  }
  int next_axis = 0;
  slot[0] = slot[1] = slot[2] = -1;
  for (size_t i = 0; i < dims.size(); ++i) {
    int axis = -1;
    for (int a = 0; a < 3; ++a) {
      if (dims[i] == kAxes[a]) axis = a;
    }
    if (axis < 0) {
      return "deform_dims may contain only the letters T, H, W, got \"" + dims + "\"";
    }
    if (axis < next_axis) {
      return "deform_dims letters must appear once each in T, H, W order, got \"" + dims + "\"";
    }
    slot[axis] = static_cast<int>(i);
    next_axis = axis + 1;
  }
  *nd = static_cast<int>(dims.size());
  return "";
}

inline std::string validate_attrs(const DeformConv3dAttrs& a) {
  static const char* kAxis[3] = {"T", "H", "W"};
  for (int i = 0; i < 3; ++i) {
    if (a.stride[i] < 1 || a.stride[i] > kMaxAttr)
      return std::string("stride along ") + kAxis[i] + " must be in [1, 2^20], got " + std::to_string(a.stride[i]);
    if (a.dil[i] < 1 || a.dil[i] > kMaxAttr)
      return std::string("dilation along ") + kAxis[i] + " must be in [1, 2^20], got " + std::to_string(a.dil[i]);
    if (a.pad[i] < 0 || a.pad[i] > kMaxAttr)
      return std::string("padding along ") + kAxis[i] + " must be in [0, 2^20], got " + std::to_string(a.pad[i]);
  }
  if (a.group < 1 || a.group > kMaxAttr) return "group must be >= 1, got " + std::to_string(a.group);
  if (a.offset_group < 1 || a.offset_group > kMaxAttr)
    return "offset_group must be >= 1, got " + std::to_string(a.offset_group);
  int slot[3];
  int nd = 0;
  return parse_deform_dims(a.deform_dims, slot, &nd);
}

// Builds the problem description from attributes, input dims [N,C,T,H,W] and weight dims
// [O, C/group, kT, kH, kW]. offset_channels < 0 skips the offset check (used before the offset tensor
// is known, e.g. in shape inference).
inline std::string make_shape(const DeformConv3dAttrs& a, const int64_t in[5], const int64_t weight[5],
                              int64_t offset_channels, DeformConv3dShape* s) {
  std::string err = validate_attrs(a);
  if (!err.empty()) return err;
  for (int i = 0; i < 5; ++i) {
    if (in[i] < 1) return "input dimension " + std::to_string(i) + " must be >= 1, got " + std::to_string(in[i]);
    if (weight[i] < 1)
      return "weight dimension " + std::to_string(i) + " must be >= 1, got " + std::to_string(weight[i]);
  }
  DeformConv3dShape r;
  r.n = in[0];
  r.c = in[1];
  r.t = in[2];
  r.h = in[3];
  r.w = in[4];
  r.o = weight[0];
  r.group = a.group;
  r.offset_group = a.offset_group;
  if (r.c % a.group != 0)
    return "input channels (" + std::to_string(r.c) + ") must be divisible by group (" + std::to_string(a.group) + ")";
  if (r.o % a.group != 0)
    return "output channels (" + std::to_string(r.o) + ") must be divisible by group (" + std::to_string(a.group) + ")";
  if (weight[1] * a.group != r.c)
    return "weight has " + std::to_string(weight[1]) +
           " input channels per group, expected C/group = " + std::to_string(r.c / a.group);
  if (r.c % a.offset_group != 0)
    return "input channels (" + std::to_string(r.c) + ") must be divisible by offset_group (" +
           std::to_string(a.offset_group) + ")";
  const int64_t in_sp[3] = {r.t, r.h, r.w};
  for (int i = 0; i < 3; ++i) {
    r.k[i] = weight[2 + i];
    r.stride[i] = a.stride[i];
    r.pad[i] = a.pad[i];
    r.dil[i] = a.dil[i];
    r.out[i] = conv_out_size(in_sp[i], a.pad[i], a.dil[i], r.k[i], a.stride[i]);
    if (r.out[i] < 1)
      return "input is too small for the kernel: output extent along axis " + std::to_string(i) + " is " +
             std::to_string(r.out[i]);
  }
  err = parse_deform_dims(a.deform_dims, r.slot, &r.nd);
  if (!err.empty()) return err;
  if (offset_channels >= 0 && offset_channels != r.offset_channels())
    return "offset has " + std::to_string(offset_channels) +
           " channels, expected offset_group * kT*kH*kW * len(deform_dims) = " + std::to_string(r.offset_channels());
  *s = r;
  return "";
}

// Number of output positions processed per im2col chunk so that the column buffer
// (C*kT*kH*kW rows) stays within max_col_elems; at least one position.
inline int64_t col_chunk(const DeformConv3dShape& s, int64_t max_col_elems) {
  const int64_t rows = s.col_rows();
  int64_t chunk = max_col_elems / (rows > 0 ? rows : 1);
  if (chunk < 1) chunk = 1;
  const int64_t l = s.out_spatial();
  return chunk < l ? chunk : l;
}

}  // namespace d3d
