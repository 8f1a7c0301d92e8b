"""Pure-PyTorch DeformConv3d, written independently of the native kernel.

It is the test oracle for the kernel (run in float64) and the fallback where no native op can be
built. It shares no code with ``plugins/kernels``: sampling is a vectorised gather over the eight
trilinear corners for all taps at once, followed by one grouped einsum.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from d3d._plugins.contract import (
    DEFAULT_DEFORM_DIMS,
    DEFAULT_DILATION,
    DEFAULT_GROUP,
    DEFAULT_OFFSET_GROUP,
    DEFAULT_PAD,
    DEFAULT_STRIDE,
    conv_out_size,
)

IntOr3 = int | Sequence[int]


def triple(value: IntOr3, name: str) -> tuple[int, int, int]:
    """Normalises an int or a 3-sequence to a 3-tuple of ints."""
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}")
    return values  # type: ignore[return-value]


def deform_conv3d_reference(
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
    """DeformConv3d by definition (see docs/deform_conv3d_spec.md); differentiable by autograd."""
    st, pd, dl = triple(stride, "stride"), triple(padding, "padding"), triple(dilation, "dilation")
    n, c, t, h, w = input.shape
    o, cg, kt, kh, kw = weight.shape
    k = kt * kh * kw
    sizes = (t, h, w)
    ksizes = (kt, kh, kw)
    out = [conv_out_size(sizes[a], pd[a], dl[a], ksizes[a], st[a]) for a in range(3)]
    if any(v < 1 for v in out):
        raise ValueError(f"input {tuple(input.shape)} is too small for kernel {ksizes}")
    if sorted(deform_dims, key="THW".index) != list(deform_dims) or not set(deform_dims) <= set("THW"):
        raise ValueError(f"deform_dims must be an ordered subset of 'THW', got {deform_dims!r}")
    nd = len(deform_dims)
    if offset.shape != (n, offset_groups * k * nd, *out):
        raise ValueError(f"offset shape {tuple(offset.shape)} != {(n, offset_groups * k * nd, *out)}")
    if c % groups or o % groups or cg * groups != c or c % offset_groups:
        raise ValueError("channel counts do not divide by groups / offset_groups")

    # Positions are computed in at least float32 whatever the I/O dtype.
    cdtype = torch.promote_types(input.dtype, torch.float32)
    dev = input.device
    tap = torch.stack(torch.meshgrid(*(torch.arange(s, device=dev) for s in ksizes), indexing="ij"), dim=0).reshape(
        3, k
    )
    offs = offset.to(cdtype).reshape(n, offset_groups, k, nd, *out)

    pos = []
    for a, letter in enumerate("THW"):
        base = torch.arange(out[a], device=dev) * st[a] - pd[a]  # [out_a]
        p = (base[None, :] + tap[a][:, None] * dl[a]).to(cdtype)  # [K, out_a]
        shape = [1, 1, k, 1, 1, 1]
        shape[3 + a] = out[a]
        p = p.reshape(shape)
        if letter in deform_dims:
            p = p + offs[:, :, :, deform_dims.index(letter)]
        pos.append(p.expand(n, offset_groups, k, *out))
    pt, ph, pw = pos
    inside = (pt > -1) & (pt < t) & (ph > -1) & (ph < h) & (pw > -1) & (pw < w)
    lo = [torch.floor(p) for p in pos]
    frac = [p - f for p, f in zip(pos, lo, strict=True)]

    cpg = c // offset_groups
    volume = input.to(cdtype).reshape(n, offset_groups, cpg, t * h * w)
    sampled = torch.zeros(n, offset_groups, cpg, k * out[0] * out[1] * out[2], dtype=cdtype, device=dev)
    for corner in itertools.product((0, 1), repeat=3):
        idx = [lo[a].long() + corner[a] for a in range(3)]
        ok = inside.clone()
        weight_c = torch.ones_like(pt)
        for a in range(3):
            ok &= (idx[a] >= 0) & (idx[a] < sizes[a])
            weight_c = weight_c * (frac[a] if corner[a] else 1 - frac[a])
        flat = (idx[0].clamp(0, t - 1) * h + idx[1].clamp(0, h - 1)) * w + idx[2].clamp(0, w - 1)
        flat = flat.reshape(n, offset_groups, 1, -1).expand(-1, -1, cpg, -1)
        # where, not a product: a NaN/Inf position is outside (ok false) and its NaN weight must not pass
        scale = torch.where(ok, weight_c, torch.zeros_like(weight_c)).reshape(n, offset_groups, 1, -1)
        # a corner without weight adds nothing, not 0 * a non-finite pixel (docs/deform_conv3d_spec.md)
        contribution = volume.gather(3, flat) * scale
        sampled = sampled + torch.where(scale != 0, contribution, torch.zeros_like(contribution))

    cols = sampled.reshape(n, groups, (c // groups) * k, -1)  # channel-major, then tap, then position
    wmat = weight.to(cdtype).reshape(groups, o // groups, cg * k)
    y = torch.einsum("gor,ngrl->ngol", wmat, cols).reshape(n, o, *out)
    if bias is not None:
        y = y + bias.to(cdtype).reshape(1, o, 1, 1, 1)
    return y.to(input.dtype)
