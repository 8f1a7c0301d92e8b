"""DeformConv3d from standard ONNX ops only: one 5-D GridSample per layer, then a grouped 1x1x1 Conv.

The K kernel taps are stacked along GridSample's depth axis, so a layer is a single GridSample
(trilinear, zeros padding, align_corners=False) whose output is reshaped into the im2col layout
``[N, C*K, T', H', W']`` and contracted with the weight by a Conv. This graph runs in stock ONNX
Runtime and parses in TensorRT without plugins; it trades memory (it materialises the column tensor)
for portability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def deform_conv3d_portable(
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
    n, c, t, h, w = input.shape
    o, cg, kt, kh, kw = weight.shape
    k = kt * kh * kw
    ot, oh, ow = offset.shape[2:]
    nd = len(deform_dims)
    dtype = torch.promote_types(input.dtype, torch.float32)
    dev = input.device
    # Tap offsets (i, j, l) in kernel order, and output coordinates, each as a broadcastable grid.
    ti = torch.arange(kt, device=dev).view(kt, 1, 1).expand(kt, kh, kw).reshape(k, 1, 1, 1)
    tj = torch.arange(kh, device=dev).view(1, kh, 1).expand(kt, kh, kw).reshape(k, 1, 1, 1)
    tl = torch.arange(kw, device=dev).view(1, 1, kw).expand(kt, kh, kw).reshape(k, 1, 1, 1)
    base_t = (torch.arange(ot, device=dev).view(1, -1, 1, 1) * stride[0] - padding[0] + ti * dilation[0]).to(dtype)
    base_h = (torch.arange(oh, device=dev).view(1, 1, -1, 1) * stride[1] - padding[1] + tj * dilation[1]).to(dtype)
    base_w = (torch.arange(ow, device=dev).view(1, 1, 1, -1) * stride[2] - padding[2] + tl * dilation[2]).to(dtype)
    off = offset.to(dtype).reshape(n * offset_groups, k, nd, ot, oh, ow)

    def axis(base: torch.Tensor, letter: str, size: int) -> torch.Tensor:
        pos = base.expand(k, ot, oh, ow).unsqueeze(0)
        if letter in deform_dims:
            pos = pos + off[:, :, deform_dims.index(letter)]
        else:
            pos = pos.expand(n * offset_groups, k, ot, oh, ow)
        # Pixel -> normalised coordinate for align_corners=False: (2p + 1) / size - 1.
        return (2 * pos + 1) / size - 1

    grid = torch.stack([axis(base_w, "W", w), axis(base_h, "H", h), axis(base_t, "T", t)], dim=-1)
    grid = grid.reshape(n * offset_groups, k * ot, oh, ow, 3)
    vol = input.to(dtype).reshape(n * offset_groups, c // offset_groups, t, h, w)
    cols = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.reshape(n, c * k, ot, oh, ow)  # channel-major, tap-minor: matches W's flattening
    y = F.conv3d(
        cols, weight.to(dtype).reshape(o, cg * k, 1, 1, 1), bias.to(dtype) if bias is not None else None, groups=groups
    )
    return y.to(input.dtype)
