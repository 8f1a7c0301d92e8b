"""DeformConv3d as a PyTorch operator (``torch.ops.d3d.deform_conv3d``).

The native op is built from ``plugins/kernels`` (the same source as the TensorRT plugin) and
registered with ``torch.library``; this module adds its fake (meta) implementation, so
``torch.export``/``torch.compile`` can trace it, and its autograd formula.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import torch

from d3d._native import NativeBuildError, load_native
from d3d._plugins.contract import (
    DEFAULT_DEFORM_DIMS,
    DEFAULT_DILATION,
    DEFAULT_GROUP,
    DEFAULT_OFFSET_GROUP,
    DEFAULT_PAD,
    DEFAULT_STRIDE,
    conv_out_size,
)
from d3d.reference import IntOr3, deform_conv3d_reference, triple

__all__ = [
    "CPU_ISA_PATHS",
    "NativeBuildError",
    "cpu_instruction_sets",
    "cpu_isa",
    "cpu_isa_detected",
    "cpu_kernel_summary",
    "deform_conv3d",
    "deform_conv3d_reference",
    "ensure_native",
    "force_cpu_isa",
    "native_available",
    "output_size",
]

_lock = threading.Lock()
_registered = False
_fallback_reason: str | None = None
# How the op appears in an ONNX export; set by d3d.export (a higher layer) when it is imported.
_onnx_lowering: Callable[..., torch.Tensor] | None = None


def register_onnx_lowering(fn: Callable[..., torch.Tensor]) -> None:
    """Installs the function that emits DeformConv3d during ``torch.onnx.export`` (see d3d.export)."""
    global _onnx_lowering
    _onnx_lowering = fn


def output_size(
    size: tuple[int, int, int], kernel: tuple[int, int, int], stride: IntOr3, padding: IntOr3, dilation: IntOr3
) -> tuple[int, int, int]:
    """(T', H', W') of DeformConv3d, as for Conv3d (the contract's rule, plugins/contract.py)."""
    st, pd, dl = triple(stride, "stride"), triple(padding, "padding"), triple(dilation, "dilation")
    return tuple(conv_out_size(size[a], pd[a], dl[a], kernel[a], st[a]) for a in range(3))  # type: ignore[return-value]


def ensure_native() -> None:
    """Builds/loads the native op and registers its fake and autograd implementations (once)."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        load_native()
        _register_python_parts()
        _registered = True


# The fused CPU forward's instruction-set paths (plugins/kernels/deform_conv3d_cpu_gemm.h), lowest first.
CPU_ISA_PATHS = ("generic", "avx2", "avx512")


def cpu_isa() -> str:
    """The path the native CPU forward takes in this process: "avx512", "avx2" or "generic" (the CPU's
    best unless D3D_CPU_ISA or force_cpu_isa() lowered it)."""
    ensure_native()
    return str(torch.ops.d3d.cpu_isa())


def cpu_isa_detected() -> str:
    """The best path this CPU can execute."""
    ensure_native()
    return str(torch.ops.d3d.cpu_isa_detected())


def cpu_instruction_sets() -> str:
    """The vector instruction sets the kernel cares about that /proc/cpuinfo lists ("?" where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        return "?"
    return " ".join(n for n in ("avx512f", "avx2", "fma", "asimd", "sve") if n in flags) or "none of avx512f/avx2/fma"


def cpu_kernel_summary() -> str:
    """One line for benchmark reports: the CPU's instruction sets and the path the CPU kernel takes."""
    try:
        path = f"{cpu_isa()} (best here {cpu_isa_detected()}; D3D_CPU_ISA lowers it)"
    except NativeBuildError as exc:
        path = f"unavailable ({exc})"
    return f"CPU instruction sets: {cpu_instruction_sets()}; DeformConv3d CPU kernel path: {path}"


def force_cpu_isa(isa: str) -> bool:
    """Makes the native CPU forward take `isa` (one of CPU_ISA_PATHS) in this process; False, and
    nothing changed, where the CPU cannot execute it."""
    if isa not in CPU_ISA_PATHS:
        raise ValueError(f"unknown CPU path {isa!r}; one of {', '.join(CPU_ISA_PATHS)}")
    ensure_native()
    return bool(torch.ops.d3d.force_cpu_isa(isa))


def native_available() -> bool:
    """True when the native op is loaded; on the first failure to build it, warns once and returns
    False from then on (callers then use the pure-PyTorch reference)."""
    global _fallback_reason
    if _registered:
        return True
    if _fallback_reason is not None:
        return False
    try:
        ensure_native()
        return True
    except NativeBuildError as exc:
        _fallback_reason = str(exc)
        warnings.warn(
            f"{exc}; falling back to the pure-PyTorch DeformConv3d reference (about 15x slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


def _register_python_parts() -> None:
    @torch.library.register_fake("d3d::deform_conv3d")
    def _fake(input, offset, weight, bias, stride, padding, dilation, groups, offset_groups, deform_dims):
        n = input.shape[0]
        out = output_size(tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation)
        return input.new_empty((n, weight.shape[0], *out))

    @torch.library.register_fake("d3d::deform_conv3d_backward")
    def _fake_backward(grad, input, offset, weight, bias, stride, padding, dilation, groups, offset_groups, dims):
        return (
            torch.empty_like(input),
            torch.empty_like(offset),
            torch.empty_like(weight),
            input.new_empty((weight.shape[0],)),
        )

    def _setup_context(ctx, inputs, output):
        input, offset, weight, bias, *attrs = inputs
        ctx.has_bias = bias is not None
        ctx.attrs = attrs
        ctx.save_for_backward(input, offset, weight, bias)

    def _backward(ctx, grad):
        input, offset, weight, bias = ctx.saved_tensors
        gi, go, gw, gb = torch.ops.d3d.deform_conv3d_backward(grad, input, offset, weight, bias, *ctx.attrs)
        return gi, go, gw, (gb if ctx.has_bias else None), None, None, None, None, None, None

    torch.library.register_autograd("d3d::deform_conv3d", _backward, setup_context=_setup_context)


def deform_conv3d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntOr3 = DEFAULT_STRIDE,
    padding: IntOr3 = DEFAULT_PAD,
    dilation: IntOr3 = DEFAULT_DILATION,
    groups: int = DEFAULT_GROUP,
    offset_groups: int = DEFAULT_OFFSET_GROUP,
    deform_dims: str = DEFAULT_DEFORM_DIMS,
) -> torch.Tensor:
    """Deformable 3-D convolution (modelled on ``torchvision.ops.deform_conv2d``).

    Args:
        input: ``[N, C, T, H, W]``.
        offset: ``[N, offset_groups * kT*kH*kW * len(deform_dims), T', H', W']``; for offset group g,
            tap k and deformed axis c (position in ``deform_dims``) the channel is
            ``(g * K + k) * len(deform_dims) + c``.
        weight: ``[O, C / groups, kT, kH, kW]``.
        bias: optional ``[O]``.
        stride, padding, dilation: int or (t, h, w).
        groups: channel groups, as in Conv3d.
        offset_groups: input-channel groups that share one offset field.
        deform_dims: ordered, non-empty subset of ``"THW"``: the axes that are deformed.

    Returns:
        ``[N, O, T', H', W']``.

    Runs the native op (``plugins/kernels``); where it cannot be built, warns once and runs
    :func:`deform_conv3d_reference` instead.
    """
    st, pd, dl = triple(stride, "stride"), triple(padding, "padding"), triple(dilation, "dilation")
    if torch.onnx.is_in_onnx_export():
        if _onnx_lowering is None:
            raise RuntimeError("DeformConv3d in an ONNX export needs d3d.export imported (use d3d.export.export_onnx)")
        return _onnx_lowering(input, offset, weight, bias, st, pd, dl, groups, offset_groups, deform_dims)
    if not native_available():
        return deform_conv3d_reference(input, offset, weight, bias, st, pd, dl, groups, offset_groups, deform_dims)
    return torch.ops.d3d.deform_conv3d(
        input, offset, weight, bias, list(st), list(pd), list(dl), groups, offset_groups, deform_dims
    )
