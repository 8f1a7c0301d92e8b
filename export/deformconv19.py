"""DeformConv3d as standard ONNX ``DeformConv`` nodes (opset 19, 2-D): the ``--flavour deformconv`` form.

A layer that deforms only H and W (D3Dnet's ``"HW"``) is exactly a sum over its kernel time taps ``i`` of
2-D deformable convolutions: output frame ``t`` of tap ``i`` reads input frame ``t*stride_t - pad_t +
i*dil_t`` (zeros outside the clip) with tap ``i``'s ``kH*kW`` offsets and the weight slice ``[:, :, i]``.
Frames are folded into DeformConv's batch (frame-major, then N), one node per tap, the partial outputs
summed and the bias added once. ONNX's offset layout per offset group is ``kH*kW`` (h, w) pairs, which is
the op's layout of one tap's ``"HW"`` offsets. Stock TensorRT (>= 10.1) and ONNX Runtime (CPU) run it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from d3d.ops import output_size


def deform_conv3d_deformconv19(
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
    if deform_dims != "HW":
        raise ValueError(f"the deformconv flavour needs layers that deform H and W only, not {deform_dims!r}")
    n, c, t, h, w = input.shape
    o, _, kt, kh, kw = weight.shape
    khw = kh * kw
    ot, oh, ow = output_size(tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation)
    dtype = input.dtype
    # Zero frames before and after the clip, so that every tap's source frame exists: padded index
    # t*s + i*d for t < T', i < kT.
    last = (ot - 1) * stride[0] + (kt - 1) * dilation[0]
    after = max(0, last + 1 - (t + padding[0]))
    frames = F.pad(input, (0, 0, 0, 0, padding[0], after)) if padding[0] or after else input
    frames = frames.permute(2, 0, 1, 3, 4).contiguous()  # [T+pads, N, C, H, W]
    off = offset.reshape(n, offset_groups, kt, khw * 2, ot, oh, ow)
    off = off.permute(2, 4, 0, 1, 3, 5, 6).contiguous()  # [kT, T', N, G, kH*kW*2, H', W']
    y: torch.Tensor | None = None
    for i in range(kt):
        first = i * dilation[0]
        if stride[0] == 1:
            src = frames[first : first + ot]
        else:  # a gather, not a strided view (whose reshape would guard on the batch size)
            idx = torch.arange(first, first + ot * stride[0], stride[0], device=input.device)
            src = frames.index_select(0, idx)
        src = src.reshape(ot * n, c, h, w)
        tap_off = off[i].reshape(ot * n, offset_groups * khw * 2, oh, ow)
        part = torch.onnx.ops.symbolic(
            "DeformConv",
            [src, weight[:, :, i].contiguous(), tap_off],
            {
                "dilations": [dilation[1], dilation[2]],
                "group": groups,
                "kernel_shape": [kh, kw],
                "offset_group": offset_groups,
                "pads": [padding[1], padding[2], padding[1], padding[2]],
                "strides": [stride[1], stride[2]],
            },
            dtype=dtype,
            shape=[ot * n, o, oh, ow],
            version=19,
        )
        y = part if y is None else y + part
    assert y is not None  # kT >= 1
    y = y.reshape(ot, n, o, oh, ow).permute(1, 2, 0, 3, 4)  # [N, O, T', H', W']
    if bias is not None:
        y = y + bias.reshape(1, o, 1, 1, 1)
    return y.contiguous()
