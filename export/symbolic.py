"""How DeformConv3d appears in an exported graph: a ``d3d::DeformConv3d`` node, or (portable
flavour) standard ops only. Selected by :func:`export_flavour` during ``torch.onnx.export``.

Importing this module registers :func:`deform_conv3d_onnx` with :mod:`d3d.ops` (which sits below
export and so cannot import it)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from d3d import ops
from d3d.export.deformconv19 import deform_conv3d_deformconv19
from d3d.export.portable import deform_conv3d_portable
from d3d.export.schema import DOMAIN, OP_TYPE, VERSION
from d3d.export.validate import PLUGIN_NAMESPACE, PLUGIN_VERSION
from d3d.ops import output_size

FLAVOURS = ("custom", "gridsample", "deformconv")
_flavour = contextvars.ContextVar("d3d_export_flavour", default="custom")


@contextlib.contextmanager
def export_flavour(flavour: str | bool) -> Iterator[None]:
    """Within the block DeformConv3d exports as ``flavour`` (one of FLAVOURS; True/False: gridsample/custom)."""
    if isinstance(flavour, bool):
        flavour = "gridsample" if flavour else "custom"
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown export flavour {flavour!r}")
    token = _flavour.set(flavour)
    try:
        yield
    finally:
        _flavour.reset(token)


def deform_conv3d_onnx(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    dilation: tuple[int, int, int],
    groups: int,
    offset_groups: int,
    deform_dims: str,
) -> torch.Tensor:
    flavour = _flavour.get()
    if flavour == "deformconv":
        return deform_conv3d_deformconv19(
            input, offset, weight, bias, stride, padding, dilation, groups, offset_groups, deform_dims
        )
    if flavour == "gridsample":
        return deform_conv3d_portable(
            input, offset, weight, bias, stride, padding, dilation, groups, offset_groups, deform_dims
        )
    out = output_size(tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation)
    return torch.onnx.ops.symbolic(
        f"{DOMAIN}::{OP_TYPE}",
        [input, offset, weight, bias],
        {
            "strides": list(stride),
            "pads": list(padding),
            "dilations": list(dilation),
            "group": groups,
            "offset_group": offset_groups,
            "deform_dims": deform_dims,
            "plugin_version": PLUGIN_VERSION,
            "plugin_namespace": PLUGIN_NAMESPACE,
        },
        dtype=input.dtype,
        shape=[input.shape[0], weight.shape[0], *out],
        version=VERSION,
    )


ops.register_onnx_lowering(deform_conv3d_onnx)
