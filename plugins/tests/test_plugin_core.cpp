// Tests of the TensorRT-free plugin core, run by ctest (built with AddressSanitizer and UBSan where
// the compiler supports them, so the fuzz loop also catches out-of-bounds reads).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_launch.h"
#include "plugin_core.h"
#include "test_harness.h"

using d3d::DeformConv3dAttrs;
using d3d::plugin::Field;
using d3d::plugin::FieldType;

namespace {

using d3d_test::randint;

bool same(const DeformConv3dAttrs& a, const DeformConv3dAttrs& b) {
  for (int i = 0; i < 3; ++i) {
    if (a.stride[i] != b.stride[i] || a.pad[i] != b.pad[i] || a.dil[i] != b.dil[i]) return false;
  }
  return a.group == b.group && a.offset_group == b.offset_group && a.deform_dims == b.deform_dims;
}

// What TensorRT's ONNX parser hands over for a D3Dnet node: int32 lists, strings with their length.
void test_onnx_parser_fields() {
  const int32_t ones[3] = {1, 1, 1}, pads[3] = {0, 1, 1}, one = 1;
  const char dims[] = "HW";
  const char version[] = "1", ns[] = "d3d";
  const Field fields[] = {
      {"strides", ones, FieldType::kInt32, 3},          {"pads", pads, FieldType::kInt32, 3},
      {"dilations", ones, FieldType::kInt32, 3},        {"group", &one, FieldType::kInt32, 1},
      {"offset_group", &one, FieldType::kInt32, 1},     {"deform_dims", dims, FieldType::kChar, 2},
      {"plugin_version", version, FieldType::kChar, 2},  // counts the NUL: accepted
      {"plugin_namespace", ns, FieldType::kChar, 3},
  };
  DeformConv3dAttrs a;
  const std::string err = d3d::plugin::parse_fields(fields, 8, &a);
  CHECK(err.empty(), "%s", err.c_str());
  CHECK(a.pad[0] == 0 && a.pad[1] == 1 && a.deform_dims == "HW", "parsed values");
  // int64 fields are accepted too.
  const int64_t s64[3] = {2, 1, 1};
  const Field f64[] = {{"strides", s64, FieldType::kInt64, 3}};
  CHECK(d3d::plugin::parse_fields(f64, 1, &a).empty() && a.stride[0] == 2, "int64 strides");
  // No fields at all: the contract's defaults.
  CHECK(d3d::plugin::parse_fields(nullptr, 0, &a).empty() && a.deform_dims == "THW" && a.group == 1, "defaults");
}

void test_refusals() {
  const int32_t ones[3] = {1, 1, 1}, zero3[3] = {0, 1, 1}, neg = -1, two = 2;
  const char thw[] = "THW", bad[] = "TX", wrong_ns[] = "mmcv", junk[] = {'H', 'W', '\0', 'x'};
  struct Case {
    std::vector<Field> fields;
    const char* reason;
  };
  const std::vector<Case> cases = {
      {{{"strides", zero3, FieldType::kInt32, 3}}, "stride"},
      {{{"strides", ones, FieldType::kInt32, 2}}, "3 value"},
      {{{"strides", ones, FieldType::kChar, 3}}, "int32 or int64"},
      {{{"strides", nullptr, FieldType::kInt32, 3}}, "no data"},
      {{{"group", &neg, FieldType::kInt32, 1}}, "group"},
      {{{"offset_group", ones, FieldType::kInt32, 3}}, "1 value"},
      {{{"deform_dims", bad, FieldType::kChar, 2}}, "letters"},
      {{{"deform_dims", thw, FieldType::kInt32, 3}}, "string"},
      {{{"deform_dims", junk, FieldType::kChar, 4}}, "after its terminator"},
      {{{"plugin_namespace", wrong_ns, FieldType::kChar, 4}}, "plugin_namespace"},
      {{{"group", &two, FieldType::kInt32, 1}, {"group", &two, FieldType::kInt32, 1}}, "twice"},
      {{{"kernel_shape", ones, FieldType::kInt32, 3}}, "unknown field"},
      {{{nullptr, ones, FieldType::kInt32, 3}}, "no name"},
  };
  for (const auto& c : cases) {
    DeformConv3dAttrs a;
    a.group = 77;  // sentinel: must be untouched on failure
    const std::string err = d3d::plugin::parse_fields(c.fields.data(), static_cast<int32_t>(c.fields.size()), &a);
    CHECK(err.find(c.reason) != std::string::npos, "expected reason containing '%s', got '%s'", c.reason, err.c_str());
    CHECK(a.group == 77, "attributes modified on failure");
  }
}

void test_serialization_round_trip() {
  const char* subsets[] = {"T", "H", "W", "TH", "TW", "HW", "THW"};
  for (int it = 0; it < 200; ++it) {
    DeformConv3dAttrs a;
    for (int i = 0; i < 3; ++i) {
      a.stride[i] = randint(1, 4);
      a.pad[i] = randint(0, 5);
      a.dil[i] = randint(1, 3);
    }
    a.group = randint(1, 8);
    a.offset_group = randint(1, 8);
    a.deform_dims = subsets[randint(0, 6)];
    d3d::plugin::SerializedFields fields(a);
    DeformConv3dAttrs b;
    const std::string err = d3d::plugin::parse_fields(fields.data(), fields.size(), &b);
    CHECK(err.empty() && same(a, b), "round trip failed: %s", err.c_str());
  }
}

void test_output_expr_and_workspace() {
  for (int it = 0; it < 500; ++it) {
    DeformConv3dAttrs a;
    for (int i = 0; i < 3; ++i) {
      a.stride[i] = randint(1, 3);
      a.pad[i] = randint(0, 3);
      a.dil[i] = randint(1, 3);
    }
    const int64_t in[5] = {randint(1, 3), 4, randint(1, 9), randint(1, 40), randint(1, 40)};
    const int64_t w[5] = {4, 4, randint(1, 3), randint(1, 3), randint(1, 3)};
    d3d::DeformConv3dShape s;
    if (!d3d::make_shape(a, in, w, -1, &s).empty()) continue;
    for (int ax = 0; ax < 3; ++ax) {
      const auto e = d3d::plugin::output_axis_expr(a, ax, w[2 + ax]);
      // IExprBuilder's kFLOOR_DIV on a non-negative numerator (valid shapes only).
      const int64_t got = (in[2 + ax] + e.add) / e.stride + 1;
      CHECK(got == s.out[ax], "axis %d: expr %lld vs shape %lld", ax, (long long)got, (long long)s.out[ax]);
    }
    // The workspace for a larger input covers a smaller one (profile max covers every shape).
    int64_t big_in[5] = {in[0], in[1], in[2] + randint(0, 3), in[3] + randint(0, 50), in[4] + randint(0, 50)};
    d3d::DeformConv3dShape big;
    if (d3d::make_shape(a, big_in, w, -1, &big).empty()) {
      const auto f32 = d3d::plugin::DType::kFloat32;
      CHECK(d3d::plugin::workspace_bytes(big, f32) >= d3d::plugin::workspace_bytes(s, f32), "workspace not monotone");
      const size_t elems = d3d::plugin::workspace_bytes(s, f32) / d3d::plugin::element_size(f32);
      CHECK(elems >= size_t(s.col_rows()) && elems <= size_t(std::max<int64_t>(d3d::kMaxColElems, s.col_rows())),
            "workspace size out of range");
      // fp16/bf16 run the fused kernel, which uses no workspace.
      for (auto t : {d3d::plugin::DType::kFloat16, d3d::plugin::DType::kBFloat16}) {
        CHECK(d3d::plugin::workspace_bytes(s, t) == 0, "a 16-bit workspace");
      }
    }
  }
}

// Random and malformed field sets: never crash, always a reason when refused, and anything accepted
// satisfies the contract.
void test_fuzz() {
  const char* names[] = {"strides",        "pads",           "dilations",        "group", "offset_group",
                         "deform_dims",    "plugin_version", "plugin_namespace", "",      "stride",
                         "deform_dims\x01"};
  const FieldType types[] = {FieldType::kInt32, FieldType::kInt64, FieldType::kChar, FieldType::kOther};
  int accepted = 0;
  for (int it = 0; it < 20000; ++it) {
    const int n = static_cast<int>(randint(0, 9));
    std::vector<Field> fields(n);
    std::vector<std::vector<unsigned char>> storage(n);
    for (int i = 0; i < n; ++i) {
      const int32_t length = static_cast<int32_t>(randint(-2, 5));
      const FieldType type = types[randint(0, 3)];
      const size_t width = type == FieldType::kInt64 ? 8 : type == FieldType::kChar ? 1 : 4;
      storage[i].resize(std::max<int32_t>(length, 0) * width);
      for (auto& b : storage[i]) {
        // Mostly plausible values (small ints, T/H/W letters, NULs), some garbage.
        const int r = static_cast<int>(randint(0, 9));
        b = r < 3 ? static_cast<unsigned char>(randint(0, 3)) : r < 7 ? "THW\0"[randint(0, 3)] : randint(0, 255);
      }
      if (type == FieldType::kInt32 || type == FieldType::kInt64) {
        // Overwrite with small ints most of the time so that valid sets occur.
        for (int32_t j = 0; j < length && randint(0, 3) > 0; ++j) {
          const int64_t v = randint(-1, 3);
          if (type == FieldType::kInt32) {
            const int32_t v32 = static_cast<int32_t>(v);
            std::memcpy(storage[i].data() + 4 * j, &v32, 4);
          } else {
            std::memcpy(storage[i].data() + 8 * j, &v, 8);
          }
        }
      }
      fields[i] = {names[randint(0, 10)], randint(0, 20) == 0 ? nullptr : storage[i].data(), type, length};
    }
    DeformConv3dAttrs a;
    const std::string err = d3d::plugin::parse_fields(fields.data(), n, &a);
    if (err.empty()) {
      ++accepted;
      CHECK(d3d::validate_attrs(a).empty(), "accepted attributes violate the contract");
      int slot[3], nd = 0;
      CHECK(d3d::parse_deform_dims(a.deform_dims, slot, &nd).empty(), "accepted bad deform_dims");
    } else {
      CHECK(err.size() > 5, "refusal without a reason");
    }
  }
  std::printf("fuzz: %d of 20000 random field sets accepted\n", accepted);
  CHECK(accepted > 50, "the fuzzer should also produce valid sets (got %d)", accepted);
}

d3d::plugin::TensorDims dims(std::initializer_list<int64_t> d) {
  d3d::plugin::TensorDims t;
  t.rank = static_cast<int32_t>(d.size());
  int i = 0;
  for (const int64_t v : d) t.d[i++] = v;
  return t;
}

// check_io: every tensor's shape against X and W; ShapeState: validated once, compared after.
void test_io_shapes() {
  using d3d::plugin::TensorDims;
  DeformConv3dAttrs a;
  a.pad[1] = a.pad[2] = 1;
  a.deform_dims = "HW";
  a.offset_group = 2;
  // X [2, 4, 5, 9, 7], W [6, 4, 3, 3, 3]: out (3, 9, 7), offset channels 2 * 27 * 2 = 108.
  const TensorDims good[4] = {dims({2, 4, 5, 9, 7}), dims({2, 108, 3, 9, 7}), dims({6, 4, 3, 3, 3}), dims({6})};
  const TensorDims y = dims({2, 6, 3, 9, 7});
  d3d::DeformConv3dShape s;
  std::string err = d3d::plugin::check_io(a, good, 4, &y, &s);
  CHECK(err.empty(), "%s", err.c_str());
  CHECK(s.out[0] == 3 && s.out[1] == 9 && s.out[2] == 7 && s.o == 6, "shape");
  CHECK(d3d::plugin::check_io(a, good, 3, nullptr, &s).empty(), "no bias");
  struct Bad {
    int tensor;
    TensorDims d;
    const char* reason;
  };
  const Bad bads[] = {
      {1, dims({1, 108, 3, 9, 7}), "offset must have shape [2, 108, 3, 9, 7]"},  // batch
      {1, dims({2, 108, 2, 9, 7}), "offset must have shape"},                    // T'
      {1, dims({2, 108, 3, 8, 7}), "offset must have shape"},                    // H'
      {1, dims({2, 108, 3, 9, 8}), "offset must have shape"},                    // W'
      {1, dims({2, 54, 3, 9, 7}), "offset has 54 channels"},                     // channels
      {1, dims({2, 108, 3, 9}), "offset must be 5-D"},
      {3, dims({5}), "B must have shape [6]"},
      {3, dims({6, 1}), "B must be 1-D"},
      {2, dims({6, 2, 3, 3, 3}), "weight has 2 input channels"},
      {2, dims({6, 4, 3, 3}), "W must be 5-D"},
      {0, dims({2, 4, 5, 9, -1}), "invalid or too large"},
      {0, dims({1 << 30, 1 << 30, 1 << 30, 4, 4}), "too large"},
      {2, dims({6, 4, 3, 3, (int64_t(1) << 20) + 1}), "kernel extents must be <= 2^20"},
      {0, dims({2, 3, 5, 9, 7}), "expected C/group = 3"},  // X and W disagree on C
  };
  for (const Bad& b : bads) {
    TensorDims in[4] = {good[0], good[1], good[2], good[3]};
    in[b.tensor] = b.d;
    err = d3d::plugin::check_io(a, in, 4, &y, &s);
    CHECK(err.find(b.reason) != std::string::npos, "tensor %d: expected '%s', got '%s'", b.tensor, b.reason,
          err.c_str());
  }
  CHECK(d3d::plugin::check_io(a, good, 2, nullptr, &s).find("3 or 4 inputs") != std::string::npos, "2 inputs");
  const TensorDims bad_y = dims({2, 6, 3, 9, 6});
  CHECK(d3d::plugin::check_io(a, good, 4, &bad_y, &s).find("Y must have shape") != std::string::npos, "Y");

  d3d::plugin::ShapeState state;
  CHECK(!state.valid() && !state.matches(good, 4, &y), "fresh state");
  CHECK(state.update(a, good, 4, &y).empty() && state.valid() && state.matches(good, 4, &y), "update");
  TensorDims other[4] = {good[0], good[1], good[2], good[3]};
  other[0].d[3] = 10;
  CHECK(!state.matches(other, 4, &y) && !state.matches(good, 3, &y), "matches other dims");
  other[1] = dims({2, 108, 3, 9, 8});
  CHECK(!state.update(a, other, 4, nullptr).empty() && !state.valid(), "a refused update invalidates");
}

// Launch geometry stays within CUDA's grid limits for extreme valid fields, and the GEMM's folded grid
// still covers every (group, output tile) pair.
void test_launch_limits() {
  struct Case {
    int64_t in[5], w[5], group;
  };
  const int64_t g20 = int64_t(1) << 20;
  const Case cases[] = {
      {{1, g20, 1, 1, 1}, {g20, 1, 1, 1, 1}, g20},             // group = 2^20
      {{1, g20, 1, 2, 2}, {2 * g20, 1, 1, 1, 1}, g20},         // 2^20 groups of 2 outputs
      {{1, 1, 1, 4096, 4096}, {1, 1, 1, 1, 1}, 1},             // one column per pixel: many column tiles
      {{1, 64, 7, 180, 320}, {64, 64, 3, 3, 3}, 1},            // D3Dnet's layer at 320x180
      {{1, 16, 1, 8, 8}, {int64_t(1) << 21, 16, 1, 1, 1}, 1},  // 2^21 output channels in one group
  };
  for (const Case& c : cases) {
    DeformConv3dAttrs a;
    a.group = c.group;
    a.deform_dims = "HW";
    d3d::DeformConv3dShape s;
    const std::string err = d3d::make_shape(a, c.in, c.w, -1, &s);
    CHECK(err.empty(), "%s", err.c_str());
    if (!err.empty()) continue;
    const int64_t L = s.out_spatial(), chunk = d3d::col_chunk(s, d3d::kMaxColElems);
    for (const int64_t lc : {int64_t(1), chunk < L ? chunk : L}) {
      for (const auto& g : {d3d::launch::im2col_grid(s, lc), d3d::launch::gemm_grid(s, lc)}) {
        CHECK(g.x >= 1 && g.x <= d3d::launch::kMaxGridX && g.y >= 1 && g.y <= d3d::launch::kMaxGridYZ && g.z >= 1 &&
                  g.z <= d3d::launch::kMaxGridYZ,
              "grid %lld x %lld x %lld for group %lld", (long long)g.x, (long long)g.y, (long long)g.z,
              (long long)s.group);
      }
      const auto gg = d3d::launch::gemm_grid(s, lc);
      CHECK(gg.x * d3d::launch::kTile >= lc, "GEMM columns not covered");
      // blockIdx.y strides by gridDim.y over group * tiles pairs: covered whenever y >= 1.
      CHECK(s.group * d3d::launch::gemm_out_tiles(s) >= gg.y, "more GEMM blocks than pairs");
      const auto ig = d3d::launch::im2col_grid(s, lc);
      CHECK(ig.x * d3d::launch::kThreads >=
                std::min<int64_t>(s.offset_group * s.taps() * lc, d3d::launch::kMaxBlocks1d * d3d::launch::kThreads),
            "im2col grid too small");
    }
  }
}

}  // namespace

int main() {
  test_onnx_parser_fields();
  test_refusals();
  test_serialization_round_trip();
  test_output_expr_and_workspace();
  test_fuzz();
  test_io_shapes();
  test_launch_limits();
  return d3d_test::report();
}
