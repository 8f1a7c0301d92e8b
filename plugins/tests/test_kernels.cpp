// Host unit tests of the shared kernel source (plugins/kernels), run by ctest.
// Each check compares against an independent formulation: closed forms, finite differences,
// adjointness, or a direct convolution loop written here.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_cpu.h"
#include "deform_conv3d_cpu_forward.h"
#include "deform_conv3d_math.h"
#include "test_harness.h"

namespace {

using d3d_test::uniform;

void test_affine_is_exact() {
  const int64_t T = 4, H = 5, W = 6;
  std::vector<double> v(T * H * W);
  const double a = uniform(-1, 1), b = uniform(-1, 1), c = uniform(-1, 1), d = uniform(-1, 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) v[(t * H + h) * W + w] = a + b * t + c * h + d * w;
  for (int i = 0; i < 200; ++i) {
    const double t = uniform(0, T - 1), h = uniform(0, H - 1), w = uniform(0, W - 1);
    const double got = d3d::trilinear_sample<double>(v.data(), T, H, W, t, h, w);
    const double want = a + b * t + c * h + d * w;
    CHECK(std::fabs(got - want) < 1e-12, "at (%g,%g,%g): %.17g vs %.17g", t, h, w, got, want);
  }
}

void test_outside_and_partial() {
  const int64_t T = 3, H = 3, W = 3;
  std::vector<float> ones(T * H * W, 1.0f);
  // Outside the open box (-1, T) x (-1, H) x (-1, W): exactly zero.
  const float outside[][3] = {{-1.0f, 1, 1}, {3.0f, 1, 1}, {1, -1.5f, 1}, {1, 1, 3.2f}, {-7, -7, -7}};
  for (auto& p : outside) {
    CHECK(d3d::trilinear_sample<float>(ones.data(), T, H, W, p[0], p[1], p[2]) == 0.0f, "(%g,%g,%g)", p[0], p[1], p[2]);
  }
  // Between -1 and 0 along one axis only the in-volume corner counts: weight 1 - |frac|.
  const float got = d3d::trilinear_sample<float>(ones.data(), T, H, W, 1.0f, -0.25f, 1.0f);
  CHECK(std::fabs(got - 0.75f) < 1e-6f, "partial sample %g", got);
  const float got_hi = d3d::trilinear_sample<float>(ones.data(), T, H, W, 2.5f, 1.0f, 1.0f);
  CHECK(std::fabs(got_hi - 0.5f) < 1e-6f, "partial sample at top %g", got_hi);
}

void test_coord_grad_matches_finite_differences() {
  const int64_t T = 3, H = 4, W = 5;
  std::vector<double> v(T * H * W);
  for (auto& x : v) x = uniform(-1, 1);
  for (int i = 0; i < 300; ++i) {
    double p[3] = {uniform(-0.95, T - 0.05), uniform(-0.95, H - 0.05), uniform(-0.95, W - 0.05)};
    double g[3];
    d3d::trilinear_coord_grad<double>(v.data(), T, H, W, p[0], p[1], p[2], g);
    for (int a = 0; a < 3; ++a) {
      if (std::fabs(p[a] - std::round(p[a])) < 1e-4) continue;  // kink at grid lines
      const double eps = 1e-6;
      double hi[3] = {p[0], p[1], p[2]}, lo[3] = {p[0], p[1], p[2]};
      hi[a] += eps;
      lo[a] -= eps;
      const double fd = (d3d::trilinear_sample<double>(v.data(), T, H, W, hi[0], hi[1], hi[2]) -
                         d3d::trilinear_sample<double>(v.data(), T, H, W, lo[0], lo[1], lo[2])) /
                        (2 * eps);
      CHECK(std::fabs(fd - g[a]) < 1e-6, "axis %d at (%g,%g,%g): analytic %g vs fd %g", a, p[0], p[1], p[2], g[a], fd);
    }
  }
}

void test_scatter_is_adjoint_of_sample() {
  const int64_t T = 3, H = 4, W = 5, n = T * H * W;
  std::vector<double> v(n);
  for (auto& x : v) x = uniform(-1, 1);
  for (int i = 0; i < 100; ++i) {
    const double t = uniform(-1.5, T + 0.5), h = uniform(-1.5, H + 0.5), w = uniform(-1.5, W + 0.5);
    const double gv = uniform(-2, 2);
    std::vector<double> grad(n, 0.0);
    d3d::trilinear_scatter<double>(grad.data(), T, H, W, t, h, w, gv, d3d::ScatterAdd());
    double lhs = gv * d3d::trilinear_sample<double>(v.data(), T, H, W, t, h, w), rhs = 0;
    for (int64_t j = 0; j < n; ++j) rhs += v[j] * grad[j];
    CHECK(std::fabs(lhs - rhs) < 1e-12, "<S v, g> %g != <v, S^T g> %g", lhs, rhs);
  }
}

void test_attribute_validation() {
  const char* valid[] = {"T", "H", "W", "TH", "TW", "HW", "THW"};
  for (const char* dims : valid) {
    int slot[3], nd = 0;
    CHECK(d3d::parse_deform_dims(dims, slot, &nd).empty(), "%s rejected", dims);
    CHECK(nd == int(std::string(dims).size()), "%s nd=%d", dims, nd);
  }
  const char* invalid[] = {"", "X", "HT", "TT", "THWT", "thw", "WH", "T H"};
  for (const char* dims : invalid) {
    int slot[3], nd = 0;
    CHECK(!d3d::parse_deform_dims(dims, slot, &nd).empty(), "\"%s\" accepted", dims);
  }
  d3d::DeformConv3dAttrs a;
  a.stride[1] = 0;
  CHECK(d3d::validate_attrs(a).find("stride") != std::string::npos, "stride 0");
  a = d3d::DeformConv3dAttrs();
  a.pad[2] = -1;
  CHECK(d3d::validate_attrs(a).find("padding") != std::string::npos, "pad -1");
  a = d3d::DeformConv3dAttrs();
  a.dil[0] = 0;
  CHECK(d3d::validate_attrs(a).find("dilation") != std::string::npos, "dilation 0");
  a = d3d::DeformConv3dAttrs();
  a.group = 0;
  CHECK(d3d::validate_attrs(a).find("group") != std::string::npos, "group 0");

  d3d::DeformConv3dShape s;
  a = d3d::DeformConv3dAttrs();
  const int64_t in[5] = {1, 4, 5, 6, 7};
  const int64_t w_ok[5] = {6, 4, 3, 3, 3};
  CHECK(d3d::make_shape(a, in, w_ok, 81, &s).empty(), "valid shape rejected");
  CHECK(s.out[0] == 3 && s.out[1] == 4 && s.out[2] == 5, "out %lld %lld %lld", (long long)s.out[0], (long long)s.out[1],
        (long long)s.out[2]);
  CHECK(!d3d::make_shape(a, in, w_ok, 80, &s).empty(), "wrong offset channels accepted");
  a.group = 3;
  CHECK(!d3d::make_shape(a, in, w_ok, 81, &s).empty(), "C %% group != 0 accepted");
  a = d3d::DeformConv3dAttrs();
  a.offset_group = 3;
  CHECK(!d3d::make_shape(a, in, w_ok, -1, &s).empty(), "C %% offset_group != 0 accepted");
  a = d3d::DeformConv3dAttrs();
  const int64_t w_big[5] = {6, 4, 9, 3, 3};
  CHECK(!d3d::make_shape(a, in, w_big, -1, &s).empty(), "kernel larger than input accepted");
  const int64_t w_cin[5] = {6, 2, 3, 3, 3};
  CHECK(!d3d::make_shape(a, in, w_cin, -1, &s).empty(), "weight C/group mismatch accepted");
  // A padded input one step shorter than the dilated kernel has no output position, also at stride 2
  // (truncating division used to make that one position).
  a = d3d::DeformConv3dAttrs();
  a.stride[0] = 2;
  const int64_t in_short[5] = {1, 4, 2, 6, 7};
  CHECK(!d3d::make_shape(a, in_short, w_ok, -1, &s).empty(), "T=2 with kT=3 at stride 2 accepted");
}

// conv_out_size against the rule written with floating-point floor (the spec's floordiv), over every
// small combination, including spans that are negative.
void test_output_size_is_floor_division() {
  for (int64_t in = 1; in <= 7; ++in)
    for (int64_t k = 1; k <= 4; ++k)
      for (int64_t pad = 0; pad <= 2; ++pad)
        for (int64_t dil = 1; dil <= 3; ++dil)
          for (int64_t stride = 1; stride <= 3; ++stride) {
            const double span = double(in + 2 * pad - dil * (k - 1) - 1);
            const int64_t want = int64_t(std::floor(span / double(stride))) + 1;
            const int64_t got = d3d::conv_out_size(in, pad, dil, k, stride);
            CHECK(got == want, "in %lld k %lld pad %lld dil %lld stride %lld: %lld, expected %lld", (long long)in,
                  (long long)k, (long long)pad, (long long)dil, (long long)stride, (long long)got, (long long)want);
          }
}

// Direct (non-deformable) convolution with groups, stride, dilation, padding, written without im2col.
std::vector<double> direct_conv(const d3d::DeformConv3dShape& s, const std::vector<double>& x,
                                const std::vector<double>& w, const std::vector<double>& b, int64_t shift_w) {
  std::vector<double> y(s.n * s.o * s.out_spatial());
  const int64_t cpg = s.c / s.group, opg = s.o / s.group;
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t o = 0; o < s.o; ++o)
      for (int64_t ot = 0; ot < s.out[0]; ++ot)
        for (int64_t oh = 0; oh < s.out[1]; ++oh)
          for (int64_t ow = 0; ow < s.out[2]; ++ow) {
            double acc = b[o];
            const int64_t g = o / opg;
            for (int64_t ci = 0; ci < cpg; ++ci)
              for (int64_t i = 0; i < s.k[0]; ++i)
                for (int64_t j = 0; j < s.k[1]; ++j)
                  for (int64_t q = 0; q < s.k[2]; ++q) {
                    const int64_t t = ot * s.stride[0] - s.pad[0] + i * s.dil[0];
                    const int64_t h = oh * s.stride[1] - s.pad[1] + j * s.dil[1];
                    const int64_t ww = ow * s.stride[2] - s.pad[2] + q * s.dil[2] + shift_w;
                    if (t < 0 || t >= s.t || h < 0 || h >= s.h || ww < 0 || ww >= s.w) continue;
                    const int64_t c = g * cpg + ci;
                    acc += w[(((o * cpg + ci) * s.k[0] + i) * s.k[1] + j) * s.k[2] + q] *
                           x[(((n * s.c + c) * s.t + t) * s.h + h) * s.w + ww];
                  }
            y[(((n * s.o + o) * s.out[0] + ot) * s.out[1] + oh) * s.out[2] + ow] = acc;
          }
  return y;
}

void test_forward_against_direct_conv() {
  struct Case {
    int64_t in[5], w[5];
    d3d::DeformConv3dAttrs a;
  };
  std::vector<Case> cases(3);
  cases[0] = {{2, 4, 5, 6, 7}, {6, 4, 3, 3, 3}, {}};
  cases[1] = {{1, 4, 6, 7, 9}, {4, 2, 3, 1, 3}, {}};
  cases[1].a.group = 2;
  cases[1].a.offset_group = 2;
  cases[1].a.stride[2] = 2;
  cases[1].a.dil[0] = 2;
  cases[1].a.pad[0] = 2;
  cases[1].a.pad[2] = 1;
  cases[1].a.deform_dims = "TW";
  cases[2] = {{1, 2, 3, 8, 8}, {3, 2, 1, 3, 3}, {}};
  cases[2].a.pad[1] = cases[2].a.pad[2] = 1;
  cases[2].a.deform_dims = "HW";
  for (auto& cs : cases) {
    d3d::DeformConv3dShape s;
    std::string err = d3d::make_shape(cs.a, cs.in, cs.w, -1, &s);
    CHECK(err.empty(), "%s", err.c_str());
    if (!err.empty()) continue;
    std::vector<double> x(s.n * s.c * s.in_spatial()), w(s.o * (s.c / s.group) * s.taps()), b(s.o);
    for (auto* vec : {&x, &w, &b})
      for (auto& v : *vec) v = uniform(-1, 1);
    const int64_t L = s.out_spatial();
    std::vector<double> off(s.n * s.offset_channels() * L, 0.0), y(s.n * s.o * L);
    std::vector<double> col(s.col_rows() * L);
    // Zero offsets: plain convolution. Chunks of 7 positions exercise the chunk seams.
    d3d::cpu::forward(s, x.data(), off.data(), w.data(), b.data(), y.data(), col.data(), s.col_rows() * 7);
    std::vector<double> want = direct_conv(s, x, w, b, 0);
    double err0 = 0;
    for (size_t i = 0; i < y.size(); ++i) err0 = std::fmax(err0, std::fabs(y[i] - want[i]));
    CHECK(err0 < 1e-12, "zero offsets: max error %g", err0);
    // A whole-pixel offset of +1 along W on every tap samples the input shifted by one column.
    if (s.slot[2] >= 0) {
      for (int64_t rec = 0; rec < s.offset_group * s.taps(); ++rec) {
        for (int64_t n = 0; n < s.n; ++n) {
          double* p = off.data() + (n * s.offset_channels() + rec * s.nd + s.slot[2]) * L;
          for (int64_t l = 0; l < L; ++l) p[l] = 1.0;
        }
      }
      d3d::cpu::forward(s, x.data(), off.data(), w.data(), b.data(), y.data(), col.data(), s.col_rows() * L);
      want = direct_conv(s, x, w, b, 1);
      double err1 = 0;
      for (size_t i = 0; i < y.size(); ++i) err1 = std::fmax(err1, std::fabs(y[i] - want[i]));
      CHECK(err1 < 1e-12, "offset +1 along W (%s): max error %g", cs.a.deform_dims.c_str(), err1);
    }
  }
}

// The fused CPU forward (tiles, channels-last sampling, host GEMM and parallel-for) against the
// reference forward (column-major im2col + the reference GEMM): random offsets, a share of them far
// outside the volume, every deform_dims subset, groups and offset groups, stride / dilation 2.
// Random inputs of shape s: values in [-1, 1]; offsets mostly within 2.5 px, 15 % of them 20 px out.
struct Inputs {
  std::vector<double> x, w, b, off;
};
Inputs random_inputs(const d3d::DeformConv3dShape& s) {
  Inputs in{std::vector<double>(s.n * s.c * s.in_spatial()), std::vector<double>(s.o * (s.c / s.group) * s.taps()),
            std::vector<double>(s.o), std::vector<double>(s.n * s.offset_channels() * s.out_spatial())};
  for (auto* vec : {&in.x, &in.w, &in.b}) {
    for (auto& v : *vec) v = uniform(-1, 1);
  }
  for (auto& v : in.off) v = uniform(0, 1) < 0.15 ? (uniform(0, 1) < 0.5 ? -20.0 : 20.0) : uniform(-2.5, 2.5);
  return in;
}

// The inputs rounded to fp32, in place, so that the fp64 reference runs on exactly the values the fp32
// forward sees; returns the fp32 copies.
struct InputsF {
  std::vector<float> x, w, b, off;
};
InputsF round_to_fp32(Inputs& in) {
  InputsF f;
  const std::pair<std::vector<double>*, std::vector<float>*> pairs[] = {
      {&in.x, &f.x}, {&in.w, &f.w}, {&in.b, &f.b}, {&in.off, &f.off}};
  for (auto [d, s] : pairs) {
    s->assign(d->begin(), d->end());
    std::copy(s->begin(), s->end(), d->begin());
  }
  return f;
}

// Hands out items in chunks of 3, last chunk first, and an empty range before each: any split must do,
// and a host's parallel-for may call with nothing to do.
struct ReversedChunksFor {
  template <typename Fn>
  void operator()(int64_t begin, int64_t end, const Fn& fn) const {
    for (int64_t e = end; e > begin; e -= 3) fn(e, e), fn(e - 3 > begin ? e - 3 : begin, e);
  }
};

struct NaiveGemm {  // C[m x n] = A[m x k] . B[n x k]^T, row-major
  void operator()(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b, int64_t ldb,
                  double* c, int64_t ldc) const {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t r = 0; r < k; ++r) acc += a[i * lda + r] * b[j * ldb + r];
        c[i * ldc + j] = acc;
      }
  }
};

void test_fused_forward_against_reference_forward() {
  struct Case {
    int64_t in[5], w[5];
    d3d::DeformConv3dAttrs a;
    bool bias;
  };
  std::vector<Case> cases(4);
  cases[0] = {{2, 4, 5, 6, 7}, {6, 4, 3, 3, 3}, {}, true};
  cases[1] = {{1, 4, 6, 7, 9}, {4, 2, 3, 1, 3}, {}, false};
  cases[1].a.group = 2;
  cases[1].a.offset_group = 2;
  cases[1].a.stride[2] = 2;
  cases[1].a.dil[0] = 2;
  cases[1].a.pad[0] = 2;
  cases[1].a.pad[2] = 1;
  cases[2] = {{1, 6, 3, 9, 8}, {6, 2, 1, 3, 3}, {}, true};
  cases[2].a.group = 3;
  cases[2].a.offset_group = 2;
  cases[2].a.stride[1] = cases[2].a.stride[2] = 2;
  cases[2].a.pad[1] = cases[2].a.pad[2] = 1;
  cases[3] = {{1, 2, 3, 13, 11}, {3, 2, 3, 3, 3}, {}, true};  // several tiles of the default size
  cases[3].a.pad[0] = cases[3].a.pad[1] = cases[3].a.pad[2] = 2;
  cases[3].a.dil[1] = cases[3].a.dil[2] = 2;
  for (const char* dims : {"T", "H", "W", "TH", "TW", "HW", "THW"}) {
    for (auto cs : cases) {
      cs.a.deform_dims = dims;
      d3d::DeformConv3dShape s;
      const std::string err = d3d::make_shape(cs.a, cs.in, cs.w, -1, &s);
      CHECK(err.empty(), "%s", err.c_str());
      if (!err.empty()) continue;
      const int64_t L = s.out_spatial();
      auto [x, w, b, off] = random_inputs(s);
      const double* bias = cs.bias ? b.data() : nullptr;
      std::vector<double> want(s.n * s.o * L), col(s.col_rows() * L);
      d3d::cpu::forward(s, x.data(), off.data(), w.data(), bias, want.data(), col.data(), s.col_rows() * L);
      std::vector<double> scratch(d3d::cpu::forward_scratch_elems(s));
      for (int64_t tile : {int64_t(7), d3d::cpu::kTilePositions}) {
        std::vector<double> got(want.size(), 12345.0);
        const std::string e = d3d::cpu::forward_fused(s, x.data(), off.data(), w.data(), bias, got.data(),
                                                      scratch.data(), ReversedChunksFor(), NaiveGemm(), tile);
        CHECK(e.empty(), "%s", e.c_str());
        double maxerr = 0;
        for (size_t i = 0; i < got.size(); ++i) maxerr = std::fmax(maxerr, std::fabs(got[i] - want[i]));
        CHECK(maxerr < 1e-12, "deform_dims %s, tile %lld: max error %g", dims, static_cast<long long>(tile), maxerr);
      }
    }
  }
}

// The fp32 forward with the kernel's own AVX-512 GEMM (output-channel groups of 16, 32, 48, 64 and 80,
// which take the 1-4 vector blocks and a 64 + 16 split; position counts that end in a partial block)
// and its vector "HW" sampler (offset groups, stride, dilation, huge/inf/NaN offsets) against the fp64
// reference forward, and against the same fp32 forward on the host's GEMM.
struct NaiveGemmF {  // C[m x n] = A[m x k] . B[n x k]^T in fp64, stored as fp32
  void operator()(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc) const {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t r = 0; r < k; ++r) acc += double(a[i * lda + r]) * b[j * ldb + r];
        c[i * ldc + j] = static_cast<float>(acc);
      }
  }
};

// Inf and NaN input pixels (on the frame's border and inside), a third of the offsets whole pixels: the
// fp32 forward on the current path is non-finite exactly where the fp64 reference forward is (a corner
// without weight adds nothing there, not 0 * Inf = NaN) and equal to it elsewhere. Channel counts 8 and
// 32 take the vector sampler's whole-vector path, 6 its general loop.
void check_nonfinite_input_pixels() {
  for (int64_t c : {int64_t(8), int64_t(32), int64_t(6)}) {
    d3d::DeformConv3dAttrs a;
    a.pad[0] = a.pad[1] = a.pad[2] = 1;
    a.deform_dims = "HW";
    const int64_t in[5] = {1, c, 3, 6, 7}, wd[5] = {16, c, 3, 3, 3};
    d3d::DeformConv3dShape s;
    const std::string err = d3d::make_shape(a, in, wd, -1, &s);
    CHECK(err.empty(), "%s", err.c_str());
    if (!err.empty()) continue;
    Inputs inputs = random_inputs(s);
    auto& [x, w, b, off] = inputs;
    // eighths of a pixel: fp32 and fp64 positions agree exactly, so do the corners with weight 0
    for (double& v : off) v = uniform(0, 1) < 0.3 ? std::round(v) : std::round(v * 8) / 8;
    const auto pixel = [&](int64_t ch, int64_t t, int64_t h, int64_t wi) -> double& {
      return x[((ch * s.t + t) * s.h + h) * s.w + wi];
    };
    pixel(0, 1, 0, 3) = std::numeric_limits<double>::infinity();
    pixel(c - 1, 2, 5, 6) = std::numeric_limits<double>::quiet_NaN();
    pixel(1, 0, 2, 0) = -std::numeric_limits<double>::infinity();
    pixel(2, 1, 3, 3) = std::numeric_limits<double>::infinity();
    const InputsF f = round_to_fp32(inputs);
    const int64_t L = s.out_spatial();
    std::vector<double> want(s.o * L), col(s.col_rows() * L);
    d3d::cpu::forward(s, x.data(), off.data(), w.data(), b.data(), want.data(), col.data(), s.col_rows() * L);
    std::vector<float> got(want.size()), scratch(d3d::cpu::forward_scratch_elems(s));
    const std::string e = d3d::cpu::forward_fused(s, f.x.data(), f.off.data(), f.w.data(), f.b.data(), got.data(),
                                                  scratch.data(), ReversedChunksFor(), NaiveGemmF());
    CHECK(e.empty(), "%s", e.c_str());
    size_t nonfinite = 0, mismatched = 0;
    double maxerr = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const bool finite_want = std::isfinite(want[i]), finite_got = std::isfinite(got[i]);
      nonfinite += !finite_want;
      mismatched += finite_want != finite_got;
      if (finite_want && finite_got) maxerr = std::fmax(maxerr, std::fabs(got[i] - want[i]));
    }
    CHECK(nonfinite > 0 && nonfinite < want.size(), "C=%lld: %zu of %zu reference outputs non-finite",
          static_cast<long long>(c), nonfinite, want.size());
    CHECK(mismatched == 0, "C=%lld: %zu of %zu outputs finite in one and not the other (reference: %zu non-finite)",
          static_cast<long long>(c), mismatched, want.size(), nonfinite);
    CHECK(maxerr < 1e-4, "C=%lld: max error %g on the finite outputs", static_cast<long long>(c), maxerr);
  }
}

// The own GEMM (in chunks of taps) and the vector sampler of one instruction-set path; false where this CPU
// cannot execute it (reported as not run).
bool test_own_fp32_gemm_against_reference_forward(d3d::cpu::CpuIsa isa) {
  const d3d::cpu::CpuIsa before = d3d::cpu::cpu_isa();
  if (!d3d::cpu::force_cpu_isa(isa)) {
    std::printf("NOT RUN: own fp32 GEMM on the %s path: this CPU has no %s\n", d3d::cpu::cpu_isa_name(isa),
                isa == d3d::cpu::CpuIsa::avx512 ? "AVX-512F" : "AVX2+FMA");
    return false;
  }
  std::printf("own fp32 GEMM on the %s path\n", d3d::cpu::cpu_isa_name(isa));
  struct Case {
    int64_t in[5], w[5];
    int64_t group, offset_group, stride, dil;
    bool bias;
  };
  const Case cases[] = {
      {{1, 8, 3, 5, 7}, {16, 8, 3, 3, 3}, 1, 1, 1, 1, true},   // 1 vector, 105 positions (partial block of 24)
      {{2, 6, 2, 5, 9}, {32, 6, 1, 3, 3}, 1, 2, 1, 1, false},  // 2 vectors, 2 offset groups
      {{1, 4, 3, 4, 5}, {48, 4, 3, 3, 3}, 1, 1, 1, 2, true},   // 3 vectors, dilation 2
      {{1, 8, 3, 7, 5}, {128, 4, 3, 3, 3}, 2, 4, 1, 1, true},  // 2 groups of 64: 4 vectors each
      {{1, 4, 2, 3, 11}, {80, 4, 3, 1, 3}, 1, 1, 2, 1, true},  // 64 + 16, stride 2
      // 3 groups of 2 output channels (the host GEMM) and 2 offset groups whose channels straddle them
      {{1, 6, 3, 9, 8}, {6, 2, 3, 3, 3}, 3, 2, 1, 1, true},
      {{1, 4, 3, 5, 7}, {8, 4, 3, 3, 3}, 1, 1, 1, 1, true},    // 8 channels: one AVX2 vector, host GEMM on AVX-512
      {{1, 6, 3, 5, 9}, {24, 2, 3, 3, 3}, 3, 3, 2, 2, false},  // 3 groups of 8, stride 2 and dilation 2
      {{1, 4, 2, 6, 5}, {40, 4, 1, 3, 3}, 1, 2, 1, 1, true},   // 40 = 2 + 2 + 1 AVX2 vectors
      // 32 channels, one group and one offset group: the sampler's whole-vector path on both widths
      // and the pipelined chunks (forward_tiles_pipelined)
      {{1, 32, 3, 4, 7}, {16, 32, 3, 3, 3}, 1, 1, 1, 1, true},
      {{1, 16, 3, 7, 9}, {32, 16, 3, 3, 3}, 1, 1, 2, 2, true},    // pipelined, stride 2 and dilation 2
      {{2, 64, 3, 5, 11}, {64, 64, 3, 3, 3}, 1, 1, 1, 1, false},  // D3Dnet's channels, 2 batch items
      {{1, 16, 4, 12, 13}, {16, 16, 3, 3, 3}, 1, 1, 1, 1, true},  // 90 tiles of 7 over several work items
  };
  for (const Case& cs : cases) {
    d3d::DeformConv3dAttrs a;
    a.pad[0] = a.pad[1] = a.pad[2] = 1;
    a.group = cs.group;
    a.offset_group = cs.offset_group;
    a.stride[0] = a.stride[1] = a.stride[2] = cs.stride;
    a.dil[0] = a.dil[1] = a.dil[2] = cs.dil;
    a.deform_dims = "HW";
    d3d::DeformConv3dShape s;
    const std::string err = d3d::make_shape(a, cs.in, cs.w, -1, &s);
    CHECK(err.empty(), "%s", err.c_str());
    if (!err.empty()) continue;
    const int64_t L = s.out_spatial();
    Inputs inputs = random_inputs(s);
    auto& [x, w, b, off] = inputs;
    // A third on whole pixels in both axes (the sampler's one-corner path).
    for (size_t i = 0; i < off.size(); ++i) {
      if (uniform(0, 1) < 0.3) off[i] = std::round(off[i]);
    }
    // Offsets the vector sampler must clamp before converting to int: huge, infinite and NaN (the
    // reference treats each as outside the volume).
    for (size_t i = 0; i + 3 < off.size(); i += 97) {
      off[i] = 1e30;
      off[i + 1] = -1e30;
      off[i + 2] = std::numeric_limits<double>::infinity();
      off[i + 3] = std::numeric_limits<double>::quiet_NaN();
    }
    const InputsF f = round_to_fp32(inputs);  // and the fp64 reference runs on exactly those values
    const double* bias = cs.bias ? b.data() : nullptr;
    std::vector<double> want(s.n * s.o * L), col(s.col_rows() * L);
    d3d::cpu::forward(s, x.data(), off.data(), w.data(), bias, want.data(), col.data(), s.col_rows() * L);
    std::vector<float> scratch(d3d::cpu::forward_scratch_elems(s));
    std::vector<float> own(want.size(), 12345.0f), host(want.size(), -12345.0f);
    for (int64_t tile : {int64_t(7), d3d::cpu::kTilePositions}) {
      std::string e = d3d::cpu::forward_fused(s, f.x.data(), f.off.data(), f.w.data(), cs.bias ? f.b.data() : nullptr,
                                              own.data(), scratch.data(), ReversedChunksFor(), NaiveGemmF(), tile);
      CHECK(e.empty(), "%s", e.c_str());
      e = d3d::cpu::forward_fused(s, f.x.data(), f.off.data(), f.w.data(), cs.bias ? f.b.data() : nullptr, host.data(),
                                  scratch.data(), ReversedChunksFor(), NaiveGemmF(), tile, /*host_gemm=*/true);
      CHECK(e.empty(), "%s", e.c_str());
      double err_own = 0, err_host = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        err_own = std::fmax(err_own, std::fabs(own[i] - want[i]));
        err_host = std::fmax(err_host, std::fabs(host[i] - want[i]));
      }
      // a sum of ~C/G*27 products of magnitude <= 1: fp32 rounding stays well under 1e-4
      CHECK(err_own < 1e-4, "O=%lld G=%lld tile %lld: own GEMM max error %g", static_cast<long long>(s.o),
            static_cast<long long>(s.group), static_cast<long long>(tile), err_own);
      CHECK(err_host < 1e-4, "O=%lld tile %lld: host GEMM max error %g", static_cast<long long>(s.o),
            static_cast<long long>(tile), err_host);
      // The taps in chunks (one tap; two, so the last chunk is shorter; three; all at once), pipelined
      // or one chunk after the other, add the same products in the same order: the same bits as the
      // default.
      const int64_t cpg = s.c / s.group;
      for (int64_t chunk_rows : {int64_t(1), 2 * cpg, 3 * cpg - 1, s.taps() * cpg, d3d::cpu::kChunkRows}) {
        for (bool pipeline : {true, false}) {
          std::vector<float> chunked(want.size(), 54321.0f);
          e = d3d::cpu::forward_fused(s, f.x.data(), f.off.data(), f.w.data(), cs.bias ? f.b.data() : nullptr,
                                      chunked.data(), scratch.data(), ReversedChunksFor(), NaiveGemmF(), tile, false,
                                      chunk_rows, pipeline);
          CHECK(e.empty(), "%s", e.c_str());
          size_t differ = 0;
          for (size_t i = 0; i < want.size(); ++i) differ += std::memcmp(&chunked[i], &own[i], sizeof(float)) != 0;
          CHECK(differ == 0,
                "O=%lld tile %lld, chunks of %lld rows, pipeline %d: %zu of %zu outputs differ from the default",
                static_cast<long long>(s.o), static_cast<long long>(tile), static_cast<long long>(chunk_rows),
                static_cast<int>(pipeline), differ, want.size());
        }
      }
    }
  }
  check_nonfinite_input_pixels();
  d3d::cpu::force_cpu_isa(before);
  return true;
}

}  // namespace

// test_kernels [avx2|avx512]: with an argument, only that path's own-GEMM test, exit 77 (ctest's
// "skipped") where the CPU cannot execute it.
int main(int argc, char** argv) {
  if (argc > 1) {
    const std::string want = argv[1];
    const d3d::cpu::CpuIsa isa = want == "avx512" ? d3d::cpu::CpuIsa::avx512 : d3d::cpu::CpuIsa::avx2;
    if (!test_own_fp32_gemm_against_reference_forward(isa)) return 77;
    return d3d_test::report();
  }
  test_affine_is_exact();
  test_outside_and_partial();
  test_coord_grad_matches_finite_differences();
  test_scatter_is_adjoint_of_sample();
  test_attribute_validation();
  test_output_size_is_floor_division();
  test_forward_against_direct_conv();
  test_fused_forward_against_reference_forward();
  test_own_fp32_gemm_against_reference_forward(d3d::cpu::CpuIsa::avx2);
  test_own_fp32_gemm_against_reference_forward(d3d::cpu::CpuIsa::avx512);
  const d3d::cpu::CpuIsa before = d3d::cpu::cpu_isa();
  d3d::cpu::force_cpu_isa(d3d::cpu::CpuIsa::generic);  // the scalar sampler and the host's GEMM
  check_nonfinite_input_pixels();
  d3d::cpu::force_cpu_isa(before);
  return d3d_test::report();
}
