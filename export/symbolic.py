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
from d3d.export.portable import deform_conv3d_portable
from d3d.export.schema import DOMAIN, OP_TYPE, VERSION
from d3d.export.validate import PLUGIN_NAMESPACE, PLUGIN_VERSION
from d3d.ops import output_size

_portable = contextvars.ContextVar("d3d_export_portable", default=False)


@contextlib.contextmanager
def export_flavour(portable: bool) -> Iterator[None]:
    token = _portable.set(portable)
    try:
        yield
    finally:
        _portable.reset(token)


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
    if _portable.get():
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
