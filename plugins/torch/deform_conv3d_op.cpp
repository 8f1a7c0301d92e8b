// PyTorch operator d3d::deform_conv3d (+ its backward), registered with TORCH_LIBRARY.
// CPU forward: the fused kernel of plugins/kernels/deform_conv3d_cpu_forward.h (the same code the
// ONNX Runtime library runs). CUDA forward and the backward: chunked im2col from the shared kernels,
// then ATen's GEMM per group.
// The sampling math itself lives only in plugins/kernels/.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_contract.h"
#include "deform_conv3d_cpu.h"
#include "deform_conv3d_cpu_forward.h"
#include "deform_conv3d_op.h"
#include "deform_conv3d_openblas.h"

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace d3d {
namespace torch_op {
namespace {

struct AtenFor {
  int64_t grain;
  template <typename Fn>
  void operator()(int64_t begin, int64_t end, const Fn& fn) const {
    at::parallel_for(begin, end, grain, fn);
  }
};

// The fused forward's GEMM: C[m x n] = A[m x k] . B[n x k]^T (row-major). fp32 goes to OpenBLAS (the
// scipy-openblas32 wheel's, as in the ONNX Runtime library; d3d/_native.py names it in
// $D3D_OPENBLAS_LIBRARY) where it
// loads: MKL runs its AVX2 code on AMD CPUs, at about 60 % of OpenBLAS's AVX-512 kernels there. Other
// types, or no OpenBLAS: at::mm_out on views of the buffers (ATen passes the strides to MKL, no
// copies). Called inside at::parallel_for, so each GEMM runs on the calling thread.
struct AtenGemm {
  at::ScalarType dtype;
  cpu::SgemmFn sgemm = nullptr;  // OpenBLAS for fp32 where it loaded
  template <typename T>
  void operator()(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                  int64_t ldc) const {
    if constexpr (std::is_same<T, float>::value) {
      if (sgemm != nullptr) return cpu::OpenBlasGemm{sgemm}(m, n, k, a, lda, b, ldb, c, ldc);
    }
    const auto opts = at::TensorOptions().dtype(dtype);
    const at::Tensor ta = at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
    const at::Tensor tb = at::from_blob(const_cast<T*>(b), {k, n}, {1, ldb}, opts);
    at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, opts);
    at::mm_out(tc, ta, tb);
  }
};

// $D3D_OPENBLAS_LIBRARY: set by d3d/_native.py to the scipy-openblas32 wheel's library.
cpu::SgemmFn openblas_sgemm() {
  static const cpu::SgemmFn fn = [] {
    const char* path = std::getenv("D3D_OPENBLAS_LIBRARY");
    return path != nullptr && *path != '\0' ? cpu::load_openblas(path).sgemm : nullptr;
  }();
  return fn;
}

DeformConv3dShape checked_shape(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups, int64_t offset_groups,
                                c10::string_view deform_dims) {
  TORCH_CHECK(input.dim() == 5, "deform_conv3d: input must be 5-D [N, C, T, H, W], got shape ", input.sizes());
  TORCH_CHECK(offset.dim() == 5, "deform_conv3d: offset must be 5-D [N, G*K*len(deform_dims), T', H', W'], got shape ",
              offset.sizes());
  TORCH_CHECK(weight.dim() == 5, "deform_conv3d: weight must be 5-D [O, C/groups, kT, kH, kW], got shape ",
              weight.sizes());
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3 && dilation.size() == 3,
              "deform_conv3d: stride, padding and dilation must have 3 values each");
  TORCH_CHECK(offset.scalar_type() == input.scalar_type() && weight.scalar_type() == input.scalar_type(),
              "deform_conv3d: input, offset and weight must share a dtype, got ", input.scalar_type(), ", ",
              offset.scalar_type(), ", ", weight.scalar_type());
  TORCH_CHECK(offset.device() == input.device() && weight.device() == input.device(),
              "deform_conv3d: input, offset and weight must be on the same device");
  DeformConv3dAttrs a;
  for (int i = 0; i < 3; ++i) {
    a.stride[i] = stride[i];
    a.pad[i] = padding[i];
    a.dil[i] = dilation[i];
  }
  a.group = groups;
  a.offset_group = offset_groups;
  a.deform_dims = std::string(deform_dims.data(), deform_dims.size());
  int64_t in[5], w[5];
  for (int i = 0; i < 5; ++i) {
    in[i] = input.size(i);
    w[i] = weight.size(i);
  }
  DeformConv3dShape s;
  const std::string err = make_shape(a, in, w, offset.size(1), &s);
  TORCH_CHECK(err.empty(), "deform_conv3d: ", err);
  TORCH_CHECK(
      offset.size(0) == s.n && offset.size(2) == s.out[0] && offset.size(3) == s.out[1] && offset.size(4) == s.out[2],
      "deform_conv3d: offset must have shape [", s.n, ", ", s.offset_channels(), ", ", s.out[0], ", ", s.out[1], ", ",
      s.out[2], "], got ", offset.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.o, "deform_conv3d: bias must have shape [", s.o, "], got ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type() && bias->device() == input.device(),
                "deform_conv3d: bias must match the input's dtype and device");
  }
  return s;
}

void im2col(const DeformConv3dShape& s, const at::Tensor& input_n, const at::Tensor& offset_n, int64_t l0, int64_t lc,
            const at::Tensor& col) {
  if (input_n.is_cuda()) return im2col_cuda(s, input_n, offset_n, l0, lc, col);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_n.scalar_type(), "d3d_im2col_cpu", [&] {
    cpu::im2col(s, input_n.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(), l0, lc,
                col.mutable_data_ptr<scalar_t>(), AtenFor{256});
  });
}

void col2im(const DeformConv3dShape& s, const at::Tensor& grad_col, const at::Tensor& offset_n, int64_t l0, int64_t lc,
            const at::Tensor& grad_input_n) {
  if (grad_col.is_cuda()) return col2im_cuda(s, grad_col, offset_n, l0, lc, grad_input_n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_col.scalar_type(), "d3d_col2im_cpu", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    cpu::col2im(s, grad_col.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(), l0, lc,
                grad_input_n.mutable_data_ptr<acc_t>(), AtenFor{1});
  });
}

void offset_grad(const DeformConv3dShape& s, const at::Tensor& grad_col, const at::Tensor& input_n,
                 const at::Tensor& offset_n, int64_t l0, int64_t lc, const at::Tensor& grad_offset_n) {
  if (grad_col.is_cuda()) return offset_grad_cuda(s, grad_col, input_n, offset_n, l0, lc, grad_offset_n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_col.scalar_type(), "d3d_offset_grad_cpu", [&] {
    cpu::offset_grad(s, grad_col.const_data_ptr<scalar_t>(), input_n.const_data_ptr<scalar_t>(),
                     offset_n.const_data_ptr<scalar_t>(), l0, lc, grad_offset_n.mutable_data_ptr<scalar_t>(),
                     AtenFor{64});
  });
}

// The CPU forward's scratch (the channels-last copy of one batch item's input), kept per calling thread
// from one call to the next, one block whatever the dtype. ATen's CPU allocator does not cache: a fresh
// block over glibc's mmap threshold (32 MB at most) is mapped anew each call and its pages fault in
// again, ~25 ms for the 103 MB of a 720p output frame on 2 cores. ONNX Runtime's op takes the same
// scratch from its arena, which keeps it likewise.
struct ForwardScratchTag {};
void* kept_cpu_scratch(size_t bytes) {
  try {
    return cpu::kept_thread_buffer<ForwardScratchTag, unsigned char>(bytes);
  } catch (const std::bad_alloc&) {
    TORCH_CHECK(false, "deform_conv3d: out of memory for ", bytes, " bytes of CPU scratch");
  }
}

// Asks for 2 MB pages under the whole 2 MB stretches of a large output (Linux, where transparent huge
// pages are "madvise" or "always"). ATen's allocator maps a fresh block for it every call (glibc maps
// every block of 32 MB or more anew: its mmap threshold never rises past that), and its 4 KB pages fault
// in as the forward writes them: 25,200 faults for the 103 MB of a 720p output frame, 40-330 ms of system
// time per call on the 2-core VMs we measure, more than the kernel's own time in the slow cases.
// Smaller outputs may come from glibc's heap, where the advice would outlive the tensor, so they are
// left alone. PyTorch does the same for every allocation under THP_MEM_ALLOC_ENABLE=1. Advice only: the
// contents and results are unchanged; with THP defrag "madvise" a fault may compact memory first.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr size_t kFreshlyMapped = size_t(32) << 20;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < kFreshlyMapped) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data, (void)bytes;
#endif
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The forward's chunk loop: for each batch item and chunk of output positions, column(n, l0, lc) fills
// the im2col operand and returns it as [G, rows, lc] (any strides), which the grouped GEMM with
// wmat [G, O/G, rows] turns into that chunk of the output.
template <typename Column>
void gemm_over_chunks(const DeformConv3dShape& s, const at::Tensor& wmat, int64_t chunk, at::Tensor& out,
                      const Column& column) {
  const int64_t L = s.out_spatial(), G = s.group;
  for (int64_t n = 0; n < s.n; ++n) {
    at::Tensor out_n = out[n].view({G, s.o / G, L});
    for (int64_t l0 = 0; l0 < L; l0 += chunk) {
      const int64_t lc = std::min(chunk, L - l0);
      const at::Tensor rhs = column(n, l0, lc);
      if (lc == L) {
        at::matmul_out(out_n, wmat, rhs);
      } else {
        out_n.narrow(2, l0, lc).copy_(at::matmul(wmat, rhs));
      }
    }
  }
}

at::Tensor deform_conv3d(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups, int64_t offset_groups,
                         c10::string_view deform_dims) {
  const DeformConv3dShape s =
      checked_shape(input, offset, weight, bias, stride, padding, dilation, groups, offset_groups, deform_dims);
  c10::DeviceGuard guard(input.device());
  const at::Tensor x = input.contiguous(), off = offset.contiguous();
  at::Tensor out = at::empty({s.n, s.o, s.out[0], s.out[1], s.out[2]}, x.options());
  if (!x.is_cuda()) {
    // CPU: the one fused forward of plugins/kernels (sampling tile by tile into a per-thread buffer,
    // each tile multiplied on the same thread by OpenBLAS for fp32, else ATen's GEMM), with ATen's thread
    // pool. Bias included.
    void* scratch = kept_cpu_scratch(static_cast<size_t>(cpu::forward_scratch_elems(s)) * x.element_size());
    advise_huge_pages(out.mutable_data_ptr(), out.nbytes());
    const at::Tensor w = weight.contiguous();
    const bool has_bias = bias.has_value() && bias->defined();
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "d3d_forward_cpu", [&] {
      const std::string err = cpu::forward_fused(
          s, x.const_data_ptr<scalar_t>(), off.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          has_bias ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
          static_cast<scalar_t*>(scratch), AtenFor{1}, AtenGemm{x.scalar_type(), openblas_sgemm()});
      TORCH_CHECK(err.empty(), "deform_conv3d: ", err);
    });
    return out;
  }
  // CUDA: the TensorRT plugin's forward (plugins/kernels cuda::forward, bias fused), so that checking
  // this op on a GPU checks the plugin's kernels too.
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  forward_cuda(s, x, off, weight.contiguous(), b, kMaxColElems, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv3d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, int64_t offset_groups, c10::string_view deform_dims) {
  const DeformConv3dShape s =
      checked_shape(input, offset, weight, bias, stride, padding, dilation, groups, offset_groups, deform_dims);
  TORCH_CHECK(grad_output.dim() == 5 && grad_output.size(0) == s.n && grad_output.size(1) == s.o &&
                  grad_output.size(2) == s.out[0] && grad_output.size(3) == s.out[1] && grad_output.size(4) == s.out[2],
              "deform_conv3d_backward: grad_output has shape ", grad_output.sizes(), ", expected the output's");
  c10::DeviceGuard guard(input.device());
  const at::ScalarType acc = acc_type(input.scalar_type());
  const at::Tensor x = input.contiguous(), off = offset.contiguous();
  const at::Tensor go = grad_output.to(input.scalar_type()).contiguous();
  const int64_t L = s.out_spatial(), G = s.group, rows = s.col_rows() / G;
  const at::Tensor wg = weight.contiguous().view({G, s.o / G, rows});
  const at::Tensor wg_t = wg.transpose(1, 2);
  at::Tensor grad_input = at::zeros(x.sizes(), x.options().dtype(acc));
  at::Tensor grad_offset = at::zeros(off.sizes(), off.options());
  at::Tensor grad_weight = at::zeros({G, s.o / G, rows}, weight.options().dtype(acc));
  const int64_t chunk = col_chunk(s, kMaxColElems);
  at::Tensor col_buf = at::empty({s.col_rows() * chunk}, x.options());
  for (int64_t n = 0; n < s.n; ++n) {
    const at::Tensor go_n = go[n].view({G, s.o / G, L});
    for (int64_t l0 = 0; l0 < L; l0 += chunk) {
      const int64_t lc = std::min(chunk, L - l0);
      const at::Tensor go_c = go_n.narrow(2, l0, lc);
      const at::Tensor grad_col = at::matmul(wg_t, go_c).contiguous();  // [G, rows, lc]
      col2im(s, grad_col, off[n], l0, lc, grad_input[n]);
      offset_grad(s, grad_col, x[n], off[n], l0, lc, grad_offset[n]);
      at::Tensor col = col_buf.narrow(0, 0, s.col_rows() * lc).view({G, rows, lc});
      im2col(s, x[n], off[n], l0, lc, col);
      grad_weight.add_(at::matmul(go_c.to(acc), col.transpose(1, 2).to(acc)));
    }
  }
  at::Tensor grad_bias = go.sum({0, 2, 3, 4}, /*keepdim=*/false, acc).to(input.scalar_type());
  return {grad_input.to(input.scalar_type()), grad_offset, grad_weight.view(weight.sizes()).to(weight.scalar_type()),
          grad_bias};
}

// The instruction-set path of the fused CPU forward: the one taken now, and the best this CPU has.
std::string cpu_isa() { return d3d::cpu::cpu_isa_name(d3d::cpu::cpu_isa()); }
std::string cpu_isa_detected() { return d3d::cpu::cpu_isa_name(d3d::cpu::detected_cpu_isa()); }

// Forces a path ("generic", "avx2", "avx512") for this process, as D3D_CPU_ISA does at load; false,
// and nothing changed, where this CPU cannot execute it.
bool force_cpu_isa(const std::string& isa) {
  for (auto v : {d3d::cpu::CpuIsa::generic, d3d::cpu::CpuIsa::avx2, d3d::cpu::CpuIsa::avx512})
    if (isa == d3d::cpu::cpu_isa_name(v)) return d3d::cpu::force_cpu_isa(v);
  TORCH_CHECK(false, "unknown CPU instruction-set path '", isa, "' (generic, avx2, avx512)");
}

}  // namespace

TORCH_LIBRARY(d3d, m) {
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("cpu_isa_detected() -> str", &cpu_isa_detected);
  m.def("force_cpu_isa(str isa) -> bool", &force_cpu_isa);
  m.def(
      "deform_conv3d(Tensor input, Tensor offset, Tensor weight, Tensor? bias, int[3] stride, int[3] padding, "
      "int[3] dilation, int groups, int offset_groups, str deform_dims) -> Tensor");
  m.def(
      "deform_conv3d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, Tensor? bias, "
      "int[3] stride, int[3] padding, int[3] dilation, int groups, int offset_groups, str deform_dims) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(d3d, CPU, m) {
  m.impl("deform_conv3d", &deform_conv3d);
  m.impl("deform_conv3d_backward", &deform_conv3d_backward);
}

#ifdef D3D_WITH_CUDA
TORCH_LIBRARY_IMPL(d3d, CUDA, m) {
  m.impl("deform_conv3d", &deform_conv3d);
  m.impl("deform_conv3d_backward", &deform_conv3d_backward);
}
#else
// CPU-only build: the CUDA entry points are never reached (tensors are never CUDA), but must link.
void forward_cuda(const DeformConv3dShape&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  int64_t, const at::Tensor&) {
  TORCH_CHECK(false, "deform_conv3d: this build of the d3d op has no CUDA support");
}
void im2col_cuda(const DeformConv3dShape&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&) {
  TORCH_CHECK(false, "deform_conv3d: this build of the d3d op has no CUDA support");
}
void col2im_cuda(const DeformConv3dShape&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&) {
  TORCH_CHECK(false, "deform_conv3d: this build of the d3d op has no CUDA support");
}
void offset_grad_cuda(const DeformConv3dShape&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                      int64_t, const at::Tensor&) {
  TORCH_CHECK(false, "deform_conv3d: this build of the d3d op has no CUDA support");
}
#endif

}  // namespace torch_op
}  // namespace d3d
