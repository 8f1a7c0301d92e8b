// Our CUDA kernels (deform_conv3d_cuda.cuh) executed on the CPU: the same kernel source and launchers,
// compiled by the host compiler with D3D_CUDA_ON_CPU, every launch run block by block and thread by
// thread by the executor of cuda_on_cpu.h. Each result is compared with the CPU op of the shared math
// (deform_conv3d_cpu.h) computed in fp64 from the same (rounded) inputs.
#include <cmath>
#include <cstdio>
#include <vector>

#include "deform_conv3d_cpu.h"
#include "deform_conv3d_cuda.cuh"
#include "test_harness.h"

namespace {

using d3d_test::uniform;

struct Case {
  const char* name;
  int64_t in[5], w[5];
  d3d::DeformConv3dAttrs a;
  int64_t max_col_elems;  // small values force several im2col chunks and a ragged last one
};

template <typename T>
const char* type_name();
template <>
const char* type_name<float>() {
  return "fp32";
}
template <>
const char* type_name<__half>() {
  return "fp16";
}
template <>
const char* type_name<__nv_bfloat16>() {
  return "bf16";
}

template <typename T>
std::vector<T> random_tensor(int64_t n, double lo, double hi, std::vector<double>* exact) {
  std::vector<T> v(n);
  exact->resize(n);
  for (int64_t i = 0; i < n; ++i) {
    v[i] = d3d::from_acc<T, float>(static_cast<float>(uniform(lo, hi)));
    (*exact)[i] = d3d::to_acc<float>(v[i]);  // the reference sees the rounded value
  }
  return v;
}

// Relative tolerance of one output element of the I/O type (the sum itself is fp32).
template <typename T>
double tolerance();
template <>
double tolerance<float>() {
  return 2e-5;
}
template <>
double tolerance<__half>() {
  return 2e-3;
}
template <>
double tolerance<__nv_bfloat16>() {
  return 1.6e-2;
}

template <typename T>
void check_forward(const Case& c) {
  d3d::DeformConv3dShape s;
  const int64_t offc = c.a.offset_group * c.w[2] * c.w[3] * c.w[4] * 3;
  const std::string err = d3d::make_shape(c.a, c.in, c.w, offc, &s);
  CHECK(err.empty(), "%s: %s", c.name, err.c_str());
  if (!err.empty()) return;
  const int64_t L = s.out_spatial();
  std::vector<double> xd, od, wd, bd;
  auto x = random_tensor<T>(s.n * s.c * s.in_spatial(), -1, 1, &xd);
  // Offsets up to +-3 px put many taps outside the volume or across its border.
  auto off = random_tensor<T>(s.n * s.offset_channels() * L, -3, 3, &od);
  auto w = random_tensor<T>(s.o * (s.c / s.group) * s.taps(), -0.5, 0.5, &wd);
  auto b = random_tensor<T>(s.o, -1, 1, &bd);
  const int64_t chunk = d3d::col_chunk(s, c.max_col_elems);
  std::vector<T> ws(s.col_rows() * chunk), y(s.n * s.o * L, d3d::from_acc<T, float>(12345.0f));
  const cudaError_t e =
      d3d::cuda::forward<T>(s, x.data(), off.data(), w.data(), b.data(), y.data(), ws.data(), c.max_col_elems, nullptr);
  CHECK(e == cudaSuccess, "%s: launch error %d", c.name, static_cast<int>(e));
  std::vector<double> col(s.col_rows() * chunk), want(y.size());
  d3d::cpu::forward<double>(s, xd.data(), od.data(), wd.data(), bd.data(), want.data(), col.data(), c.max_col_elems);
  double max_err = 0, scale = 1;
  for (double v : want) scale = std::fmax(scale, std::fabs(v));
  for (size_t i = 0; i < y.size(); ++i) max_err = std::fmax(max_err, std::fabs(d3d::to_acc<float>(y[i]) - want[i]));
  const bool ok = max_err <= tolerance<T>() * scale;
  CHECK(ok, "%s %s: max |err| %.3g > %.3g", c.name, type_name<T>(), max_err, tolerance<T>() * scale);
  // Blocks of the launches against their work items: a ratio below 1 means the grid-stride loops wrap (the
  // cuda_on_cpu_grid_stride build lowers the caps so that they do).
  if constexpr (d3d::cuda::kFusedForward<T>) {
    const d3d::launch::Grid gf = d3d::launch::fused_grid(s);
    std::printf("forward %-22s %s fused (%s) L=%lld grid cover x %.2f y %.2f z %.2f  max|err| %.3g (max|y| %.3g)\n",
                c.name, type_name<T>(), d3d::cuda::HasTensorCores<T>::value ? "wmma" : "portable mma",
                static_cast<long long>(L), double(gf.x) / double(d3d::launch::ceil_div(L, d3d::launch::kFusedN)),
                double(gf.y) / double(s.group * d3d::launch::fused_out_tiles(s)), double(gf.z) / double(s.n), max_err,
                scale);
  } else {
    const d3d::launch::Grid gi = d3d::launch::im2col_grid(s, chunk), gg = d3d::launch::gemm_grid(s, chunk);
    const double im2col_cover = double(gi.x * d3d::launch::kThreads) / double(s.offset_group * s.taps() * chunk);
    const double gemm_cover = double(gg.y) / double(s.group * d3d::launch::gemm_out_tiles(s));
    std::printf("forward %-22s %s L=%lld chunk=%lld grid cover im2col %.2f gemm.y %.2f  max|err| %.3g (max|y| %.3g)\n",
                c.name, type_name<T>(), static_cast<long long>(L), static_cast<long long>(chunk), im2col_cover,
                gemm_cover, max_err, scale);
  }
}

// The backward kernels (im2col, col2im, offset_grad) against the CPU op's, in fp32 and fp64 sums.
void check_backward_kernels(const Case& c) {
  d3d::DeformConv3dShape s;
  const int64_t offc = c.a.offset_group * c.w[2] * c.w[3] * c.w[4] * 3;
  CHECK(d3d::make_shape(c.a, c.in, c.w, offc, &s).empty(), "%s", c.name);
  const int64_t L = s.out_spatial(), lc = L - 1 > 0 ? L - 1 : 1, l0 = L - lc;  // a chunk not at 0
  std::vector<double> unused;
  auto x = random_tensor<float>(s.c * s.in_spatial(), -1, 1, &unused);
  auto off = random_tensor<float>(s.offset_channels() * L, -3, 3, &unused);
  auto gcol = random_tensor<float>(s.col_rows() * lc, -1, 1, &unused);
  std::vector<float> col_gpu(s.col_rows() * lc), col_cpu(col_gpu.size());
  d3d::cuda::im2col<float>(s, x.data(), off.data(), l0, lc, col_gpu.data(), nullptr);
  d3d::cpu::im2col<float>(s, x.data(), off.data(), l0, lc, col_cpu.data());
  double e1 = 0, e2 = 0, e3 = 0;
  for (size_t i = 0; i < col_gpu.size(); ++i) e1 = std::fmax(e1, std::fabs(col_gpu[i] - col_cpu[i]));
  std::vector<float> gi_gpu(s.c * s.in_spatial(), 0.f), gi_cpu(gi_gpu.size(), 0.f);
  d3d::cuda::col2im<float, float>(s, gcol.data(), off.data(), l0, lc, gi_gpu.data(), nullptr);
  d3d::cpu::col2im<float, float>(s, gcol.data(), off.data(), l0, lc, gi_cpu.data());
  for (size_t i = 0; i < gi_gpu.size(); ++i) e2 = std::fmax(e2, std::fabs(gi_gpu[i] - gi_cpu[i]));
  std::vector<float> go_gpu(s.offset_channels() * L, 0.f), go_cpu(go_gpu.size(), 0.f);
  d3d::cuda::offset_grad<float>(s, gcol.data(), x.data(), off.data(), l0, lc, go_gpu.data(), nullptr);
  d3d::cpu::offset_grad<float>(s, gcol.data(), x.data(), off.data(), l0, lc, go_cpu.data());
  for (size_t i = 0; i < go_gpu.size(); ++i) e3 = std::fmax(e3, std::fabs(go_gpu[i] - go_cpu[i]));
  CHECK(e1 <= 1e-6 && e2 <= 1e-4 && e3 <= 1e-4, "%s: im2col %.3g col2im %.3g offset_grad %.3g", c.name, e1, e2, e3);
  std::printf("backward kernels %-20s fp32  im2col %.3g col2im %.3g offset_grad %.3g\n", c.name, e1, e2, e3);
}

}  // namespace

int main() {
  d3d::DeformConv3dAttrs plain;
  d3d::DeformConv3dAttrs strided;
  for (int i = 0; i < 3; ++i) {
    plain.pad[i] = 1;
    strided.pad[i] = 1;
    strided.stride[i] = i == 0 ? 1 : 2;
    strided.dil[i] = i == 0 ? 1 : 2;
  }
  d3d::DeformConv3dAttrs grouped = plain;
  grouped.group = 2;
  grouped.offset_group = 2;
  // 3 groups of 2 channels, 2 offset groups of 3: group 1's channels belong to both offset groups.
  d3d::DeformConv3dAttrs crossed = plain;
  crossed.group = 3;
  crossed.offset_group = 2;
  const Case cases[] = {
      // 3x5x7 output, 34-column chunks: the GEMM's last column tile and the last chunk are ragged.
      {"odd_3x5x7_chunked", {1, 3, 3, 5, 7}, {5, 3, 3, 3, 3}, plain, 81 * 34},
      {"stride2_dil2_n2", {2, 4, 3, 9, 11}, {17, 4, 3, 3, 3}, strided, 108 * 13},
      // 40 output channels in 2 groups: 4 (group, 16-channel tile) pairs, two of them ragged.
      {"groups_offset_groups", {1, 4, 2, 6, 5}, {40, 2, 3, 3, 3}, grouped, 54 * 29},
      {"one_chunk_wide", {1, 2, 2, 7, 19}, {3, 2, 1, 3, 3}, plain, 1 << 20},
      {"groups_cross_offset_groups", {1, 6, 2, 5, 6}, {9, 2, 3, 3, 3}, crossed, 1 << 20},
      // D3Dnet's 64 channels: 54 row chunks of the fused kernel, 2 column tiles, 80 outputs = 2 channel
      // tiles (the second ragged).
      {"d3dnet_64ch_80out", {1, 64, 3, 6, 7}, {80, 64, 3, 3, 3}, plain, 1728 * 40},
  };
  for (const Case& c : cases) {
    check_forward<float>(c);
    check_forward<__half>(c);
    check_forward<__nv_bfloat16>(c);
    check_backward_kernels(c);
  }
  return d3d_test::report();
}
