"""The native op (CPU build of plugins/kernels) against the independent pure-PyTorch reference."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import HANG_S

from d3d.ops import deform_conv3d, deform_conv3d_reference, output_size

SUBSETS = ["T", "H", "W", "TH", "TW", "HW", "THW"]

# (N, C, O, (T, H, W), kernel, stride, padding, dilation, groups, offset_groups)
CASES = [
    (2, 4, 6, (5, 6, 7), (3, 3, 3), 1, 1, 1, 1, 1),
    (1, 4, 4, (6, 7, 9), (3, 1, 3), (1, 1, 2), (2, 0, 1), (2, 1, 1), 2, 2),
    (2, 6, 4, (4, 9, 8), (1, 3, 3), 2, 1, 1, 2, 3),
    (1, 4, 2, (7, 5, 6), (3, 3, 3), 1, 2, 2, 1, 2),
    (1, 2, 3, (3, 11, 5), (2, 3, 2), (1, 2, 1), (1, 1, 0), 1, 1, 1),
    # More output positions (3*13*17) than one CPU tile, ending in a partial tile; 3 groups, 2 offset groups.
    (2, 6, 6, (3, 13, 17), (3, 3, 3), 1, 1, 1, 3, 2),
]


def _random_offsets(shape, sizes, gen, dtype=torch.float64) -> torch.Tensor:
    """Mostly sub-pixel offsets, plus a share that throws taps past every face of the volume."""
    off = torch.randn(shape, generator=gen, dtype=dtype) * 1.5
    far = torch.rand(shape, generator=gen) < 0.15
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).to(dtype)
    return torch.where(far, sign * (max(sizes) + torch.rand(shape, generator=gen, dtype=dtype) * 3), off)


def _make(case, dims, gen, dtype=torch.float64):
    n, c, o, size, k, st, pd, dl, g, og = case
    x = torch.randn(n, c, *size, generator=gen, dtype=dtype)
    w = torch.randn(o, c // g, *k, generator=gen, dtype=dtype)
    b = torch.randn(o, generator=gen, dtype=dtype)
    out = output_size(size, k, st, pd, dl)
    off = _random_offsets((n, og * k[0] * k[1] * k[2] * len(dims), *out), size, gen, dtype)
    kwargs = dict(stride=st, padding=pd, dilation=dl, groups=g, offset_groups=og, deform_dims=dims)
    return x, off, w, b, kwargs


@pytest.mark.parametrize("case,dims", list(itertools.product(CASES, SUBSETS)))
def test_native_equals_reference_fp64(native, gen, case, dims):
    x, off, w, b, kw = _make(case, dims, gen)
    got = deform_conv3d(x, off, w, b, **kw)
    want = deform_conv3d_reference(x, off, w, b, **kw)
    assert got.shape == want.shape
    rel = ((got - want).abs().max() / want.abs().max()).item()
    assert rel <= 1e-10, f"max relative error {rel:.3e}"


@pytest.mark.parametrize("axis", range(3))
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_taps_pushed_past_a_face_contribute_nothing(native, gen, axis, sign):
    """Every tap moved 100 voxels past one face of the volume samples zeros: the output is the bias."""
    x, off, w, b, kw = _make(CASES[0], "THW", gen)
    far = torch.zeros_like(off).view(off.shape[0], -1, 3, *off.shape[2:])
    far[:, :, axis] = sign * 100.0
    got = deform_conv3d(x, far.view_as(off), w, b, **kw)
    torch.testing.assert_close(got, b.view(1, -1, 1, 1, 1).expand_as(got), rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_low_precision_io(native, gen, dtype, tol):
    x, off, w, b, kw = _make(CASES[1], "THW", gen)
    want = deform_conv3d_reference(x, off, w, b, **kw)
    got = deform_conv3d(x.to(dtype), off.to(dtype), w.to(dtype), b.to(dtype), **kw)
    assert got.dtype == dtype
    rel = ((got.double() - want).abs().max() / want.abs().max()).item()
    assert rel <= tol, f"{dtype}: relative error {rel:.3e}"


_ISA_FEATURE = {"avx2": "AVX2+FMA", "avx512": "AVX-512F"}


@pytest.fixture(params=["generic", "avx2", "avx512"])
def cpu_path(request, native):
    """Each instruction-set path of the fused CPU forward in turn; a path this CPU cannot execute is
    skipped, naming the missing instruction set."""
    from d3d.ops import cpu_isa, force_cpu_isa

    before = cpu_isa()
    if not force_cpu_isa(request.param):
        pytest.skip(f"{request.param} path not run: this CPU has no {_ISA_FEATURE[request.param]}")
    assert cpu_isa() == request.param
    yield request.param
    force_cpu_isa(before)


# (output channels, groups, offset groups, stride, dilation): output-channel groups of 64, 32, 48, 80
# (AVX-512 and AVX2 vector blocks of 16/8 lanes and their remainders), 8 (one AVX2 vector, the host
# GEMM on AVX-512) and 2 (the host GEMM everywhere).
_FP32_LAYERS = [
    (64, 1, 1, 1, 1),
    (32, 1, 2, 1, 1),
    (96, 2, 1, 1, 1),
    (80, 1, 1, 2, 1),
    (24, 3, 3, 1, 2),
    (6, 3, 2, 2, 2),
]


@pytest.mark.parametrize("o,groups,offset_groups,stride,dilation", _FP32_LAYERS)
def test_fp32_at_d3dnet_channel_counts(cpu_path, gen, o, groups, offset_groups, stride, dilation):
    """fp32 on each CPU path (the kernel's own AVX-512 / AVX2 GEMM and vector sampler where they
    apply, plugins/kernels/deform_conv3d_cpu_gemm.h; OpenBLAS on "generic") against the fp64
    reference."""
    c, size = 12, (3, 6, 29)  # 522 positions: several tiles, the last block of positions partial
    x = torch.randn(1, c, *size, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c // groups, 3, 3, 3, generator=gen, dtype=torch.float64) / 15.0
    b = torch.randn(o, generator=gen, dtype=torch.float64)
    out = output_size(size, (3, 3, 3), stride, dilation, dilation)
    off = _random_offsets((1, offset_groups * 2 * 27, *out), size, gen)
    kw = dict(stride=stride, padding=dilation, dilation=dilation, groups=groups, offset_groups=offset_groups)
    kw["deform_dims"] = "HW"
    x, w, b, off = (t.float().double() for t in (x, w, b, off))  # the reference sees exactly the fp32 values
    want = deform_conv3d_reference(x, off, w, b, **kw)
    got = deform_conv3d(x.float(), off.float(), w.float(), b.float(), **kw)
    torch.testing.assert_close(got.double(), want, atol=3e-5, rtol=0)


@pytest.mark.parametrize("c,groups", [(64, 1), (128, 2)])
def test_fp32_taps_in_chunks_at_d3dnet_layer(cpu_path, gen, c, groups):
    """64 input channels per group, as in D3Dnet: the own GEMM takes the 27 taps in chunks of 9
    (kChunkRows, plugins/kernels/deform_conv3d_cpu_forward.h), accumulating between chunks; against
    the fp64 reference on each CPU path."""
    size, o = (3, 5, 13), 64
    x = torch.randn(1, c, *size, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c // groups, 3, 3, 3, generator=gen, dtype=torch.float64) / 40.0
    b = torch.randn(o, generator=gen, dtype=torch.float64)
    off = _random_offsets((1, 2 * 27, *size), size, gen)
    kw = dict(padding=1, groups=groups, deform_dims="HW")
    x, w, b, off = (t.float().double() for t in (x, w, b, off))
    want = deform_conv3d_reference(x, off, w, b, **kw)
    got = deform_conv3d(x.float(), off.float(), w.float(), b.float(), **kw)
    torch.testing.assert_close(got.double(), want, atol=3e-5, rtol=0)


@pytest.mark.parametrize("c", [8, 6])
def test_nonfinite_input_reaches_only_the_samples_that_interpolate_it(cpu_path, gen, c):
    """Inf and NaN input pixels (one on the frame's border), a third of the offsets whole pixels: the op
    on each CPU path is non-finite exactly where the fp64 reference is, and equal to it elsewhere. A
    corner without weight adds nothing (docs/deform_conv3d_spec.md), so a pixel beside an integer
    position, or clamped in for a corner outside the frame, does not turn into 0 * Inf = NaN."""
    size = (3, 6, 7)
    x = torch.randn(1, c, *size, generator=gen, dtype=torch.float64)
    x[0, 0, 1, 0, 3] = float("inf")
    x[0, c - 1, 2, 5, 6] = float("nan")
    x[0, 1, 1, 3, 3] = float("-inf")
    w = torch.randn(16, c, 3, 3, 3, generator=gen, dtype=torch.float64) / 20.0
    b = torch.randn(16, generator=gen, dtype=torch.float64)
    off = torch.randn(1, 2 * 27, *size, generator=gen, dtype=torch.float64)
    whole = torch.rand(off.shape, generator=gen) < 0.3
    off = torch.where(whole, off.round(), (off * 8).round() / 8)  # eighths: fp32 and fp64 positions agree
    kw = dict(padding=1, deform_dims="HW")
    want = deform_conv3d_reference(x, off, w, b, **kw)
    got = deform_conv3d(x.float(), off.float(), w.float(), b.float(), **kw).double()
    finite = torch.isfinite(want)
    assert 0 < int((~finite).sum()) < want.numel()
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite], want[finite], atol=3e-5, rtol=0)


@pytest.mark.parametrize("dtype,tiny", [(torch.float32, 1e-30), (torch.float64, 1e-200)])
def test_corner_whose_weight_underflows_to_zero_adds_nothing(cpu_path, dtype, tiny):
    """Offsets of `tiny` pixels in H and W put weights of ~tiny**2 = 0 (underflow) on the corners beyond
    an Inf pixel: those corners carry no weight, so the output stays finite, as in the reference (the
    scalar sampler once tested each axis' fraction and kept the underflowed product: 0 * Inf = NaN)."""
    x = torch.ones(1, 16, 1, 4, 4, dtype=dtype)
    x[0, :, 0, 1, 1] = float("inf")
    w = torch.ones(4, 16, 1, 1, 1, dtype=dtype)
    off = torch.zeros(1, 2, 1, 4, 4, dtype=dtype)
    off[0, :, 0, 0, 0] = tiny  # position (0, 0) samples at (tiny, tiny): pixel (1, 1) gets weight tiny**2
    kw = dict(deform_dims="HW")
    want = deform_conv3d_reference(x, off, w, None, **kw)
    got = deform_conv3d(x, off, w, None, **kw)
    assert bool(torch.isfinite(want[..., 0, 0]).all())  # (1, 1) itself samples the Inf pixel: Inf there
    torch.testing.assert_close(got, want)  # Inf where the reference has Inf, equal elsewhere


def test_nonfinite_offsets_sample_zero_in_op_and_reference(cpu_path, gen):
    """A NaN or infinite offset puts the tap outside the volume: it samples 0 in the op on each CPU path
    and in the reference alike (the reference once let NaN * 0 through as NaN)."""
    size = (2, 5, 6)
    x = torch.randn(1, 8, *size, generator=gen, dtype=torch.float64)
    w = torch.randn(16, 8, 3, 3, 3, generator=gen, dtype=torch.float64) / 20.0
    off = (torch.randn(1, 2 * 27, *size, generator=gen, dtype=torch.float64) * 8).round() / 8
    off[0, 0, 0, 1, 1], off[0, 3, 1, 2, 4], off[0, 10, 0, 4, 0] = float("nan"), float("inf"), float("-inf")
    kw = dict(padding=1, deform_dims="HW")
    want = deform_conv3d_reference(x, off, w, None, **kw)
    got = deform_conv3d(x.float(), off.float(), w.float(), None, **kw).double()
    assert bool(torch.isfinite(want).all())
    torch.testing.assert_close(got, want, atol=3e-5, rtol=0)


def test_unknown_cpu_path_is_refused(native):
    from d3d.ops import force_cpu_isa

    with pytest.raises(ValueError, match="unknown CPU path"):
        force_cpu_isa("sse9")


@pytest.mark.parametrize("dims", ["HW", "THW"])
def test_zero_offsets_equal_conv3d(native, gen, dims):
    x = torch.randn(2, 6, 5, 9, 8, generator=gen)
    # Weights at nn.Conv3d's scale (1/sqrt(fan_in)) keep outputs O(1), so atol 1e-5 measures the op and
    # not float32 rounding of an 81-term sum of O(1) products (which reaches ~1e-5 on its own).
    w = torch.randn(4, 3, 3, 3, 3, generator=gen) / 9.0
    b = torch.randn(4, generator=gen)
    kw = dict(stride=(1, 2, 1), padding=(1, 1, 2), dilation=(1, 1, 2), groups=2)
    out = output_size((5, 9, 8), (3, 3, 3), kw["stride"], kw["padding"], kw["dilation"])
    off = torch.zeros(2, 27 * len(dims), *out)
    got = deform_conv3d(x, off, w, b, deform_dims=dims, **kw)
    torch.testing.assert_close(got, F.conv3d(x, w, b, **kw), atol=1e-5, rtol=0)


def _grad_inputs(gen, dims, groups, offset_groups):
    n, c, o, size, k = 1, 2 * offset_groups, 2 * groups, (3, 4, 4), (2, 2, 3)
    x = torch.randn(n, c, *size, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c // groups, *k, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64)
    out = output_size(size, k, 1, 1, 1)
    # Keep positions away from grid lines, where the trilinear map has kinks.
    off = torch.rand(n, offset_groups * 12 * len(dims), *out, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    off = off * torch.where(torch.rand(off.shape, generator=gen) < 0.5, -1.0, 1.0).double()
    return x, off, w, b


@pytest.mark.parametrize("dims,groups,offset_groups", [("THW", 1, 1), ("HW", 2, 1), ("TW", 1, 2), ("H", 2, 2)])
def test_gradcheck_native(native, gen, dims, groups, offset_groups):
    x, off, w, b = _grad_inputs(gen, dims, groups, offset_groups)
    tensors = [t.requires_grad_() for t in (x, off, w, b)]

    def fn(x, off, w, b):
        return deform_conv3d(x, off, w, b, padding=1, groups=groups, offset_groups=offset_groups, deform_dims=dims)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_native_gradients_equal_reference_autograd(native, gen):
    x, off, w, b, kw = _make(CASES[1], "THW", gen)
    grads = []
    for fn in (deform_conv3d, deform_conv3d_reference):
        leaves = [t.clone().requires_grad_() for t in (x, off, w, b)]
        y = fn(*leaves, **kw)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        grads.append([t.grad for t in leaves])
    for name, got, want in zip(("input", "offset", "weight", "bias"), *grads, strict=True):
        rel = ((got - want).abs().max() / want.abs().max()).item()
        assert rel <= 1e-9, f"{name} gradient relative error {rel:.3e}"


def test_opcheck_schema_fake_and_autograd_registration(native, gen):
    """torch.library.opcheck: schema, fake (meta) kernel, autograd registration, AOT dispatch."""
    x, off, w, b, _ = _make(CASES[0], "HW", gen)
    args = (x, off, w, b, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, 1, "HW")
    torch.library.opcheck(torch.ops.d3d.deform_conv3d.default, args)


def test_torch_compile_traces_the_op(native, gen):
    x, off, w, b, kw = _make(CASES[2], "HW", gen, dtype=torch.float32)
    fn = torch.compile(lambda *a: deform_conv3d(*a, **kw).relu(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(x, off, w, b), deform_conv3d(x, off, w, b, **kw).relu())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(deform_dims="HT"), "T, H, W order"),
        (dict(deform_dims="XY"), "only the letters"),
        (dict(groups=3), "divisible by group"),
        (dict(stride=0), "stride"),
    ],
)
def test_invalid_arguments_give_clear_errors(native, kwargs, message):
    x = torch.randn(1, 4, 3, 5, 5)
    w = torch.randn(4, 4 // kwargs.get("groups", 1) if 4 % kwargs.get("groups", 1) == 0 else 1, 3, 3, 3)
    off = torch.zeros(1, 27 * 2, 3, 5, 5)
    with pytest.raises(RuntimeError, match=message):
        deform_conv3d(x, off, w, padding=1, **{"deform_dims": "HW", **kwargs})


def test_wrong_offset_shape_is_reported(native):
    x = torch.randn(1, 4, 3, 5, 5)
    w = torch.randn(4, 4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="offset has 27 channels, expected"):
        deform_conv3d(x, torch.zeros(1, 27, 3, 5, 5), w, padding=1, deform_dims="HW")


def test_falls_back_to_the_reference_with_a_warning(gen, monkeypatch):
    import d3d.ops as ops

    def no_compiler():
        raise ops.NativeBuildError("no C++ compiler found ('c++' is not on PATH)")

    monkeypatch.setattr(ops, "_registered", False)
    monkeypatch.setattr(ops, "_fallback_reason", None)
    monkeypatch.setattr(ops, "ensure_native", no_compiler)
    x, off, w, b, kw = _make(CASES[0], "HW", gen)
    with pytest.warns(RuntimeWarning, match="falling back to the pure-PyTorch DeformConv3d reference"):
        got = ops.deform_conv3d(x, off, w, b, **kw)
    torch.testing.assert_close(got, deform_conv3d_reference(x, off, w, b, **kw), rtol=0, atol=0)


def test_fp32_forward_runs_on_openblas_also_when_the_build_is_cached(native, tmp_path):
    """The fused CPU forward's fp32 GEMM is OpenBLAS's (what the ONNX Runtime library uses), not ATen's:
    once the op is built (the fixture did), a fresh process loads it from the cache and must still point
    the op at the wheel's OpenBLAS (a cache hit once skipped that, leaving the op 1.5x slower)."""
    probe = (
        "import torch\n"
        "from d3d.ops import deform_conv3d\n"
        "x = torch.randn(1, 4, 3, 8, 8); w = torch.randn(4, 4, 3, 3, 3)\n"
        "off = torch.zeros(1, 2 * 27, 3, 8, 8)\n"
        "deform_conv3d(x, off, w, padding=1, deform_dims='HW')\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('openblas' if 'scipy_openblas32/lib/libscipy_openblas.so' in maps else 'no openblas')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "D3D_OPENBLAS_LIBRARY"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=HANG_S)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "openblas"


def test_d3d_cpu_isa_environment_lowers_the_path(native):
    """D3D_CPU_ISA=generic, read when the op library loads, puts the CPU forward on the host's GEMM;
    it never raises the path above what the CPU has (avx512 on a CPU without AVX-512 stays lower)."""
    from d3d.ops import cpu_isa_detected

    probe = "from d3d.ops import cpu_isa, cpu_isa_detected\nprint(cpu_isa(), cpu_isa_detected())\n"
    seen = {}
    for want in ("generic", "avx512"):
        env = {**os.environ, "D3D_CPU_ISA": want}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        seen[want] = out.stdout.split()
    best = cpu_isa_detected()
    assert seen["generic"] == ["generic", best]
    assert seen["avx512"] == [best, best]


def _vm_flags(address: int) -> str | None:
    """The VmFlags line of the mapping holding ``address`` in /proc/self/smaps."""
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            if lo <= address < hi:
                return next((entry for entry in lines[i + 1 :] if entry.startswith("VmFlags:")), None)
    return None


def test_large_output_is_advised_huge_pages(native, gen):
    """The CPU op asks for 2 MB pages under a large output (its 4 KB page faults cost more than the kernel
    on the VMs measured, docs/PERFORMANCE.md); the advice shows as "hg" in the VmFlags of the mapping."""
    if not sys.platform.startswith("linux") or not os.path.exists("/sys/kernel/mm/transparent_hugepage"):
        pytest.skip("not run: no transparent huge pages in this kernel")
    if os.environ.get("THP_MEM_ALLOC_ENABLE"):
        pytest.skip("not run: THP_MEM_ALLOC_ENABLE makes PyTorch's allocator advise every block itself")
    x = torch.randn(1, 2, 8, 128, 128, generator=gen)
    off = torch.zeros(1, 18, 8, 128, 128)
    w = torch.randn(64, 2, 1, 3, 3, generator=gen)
    # a 33.5 MB output: over the 32 MB the op advises from (always freshly mapped)
    y = deform_conv3d(x, off, w, None, padding=(0, 1, 1), deform_dims="HW")
    torch.testing.assert_close(y, F.conv3d(x, w, None, padding=(0, 1, 1)))
    huge = 2 << 20
    inside = (y.data_ptr() + huge - 1) // huge * huge
    assert inside + huge <= y.data_ptr() + y.nbytes
    flags = _vm_flags(inside)
    assert flags is not None and "hg" in flags.split(), flags
