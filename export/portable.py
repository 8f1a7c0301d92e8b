"""DeformConv3d from standard ONNX ops only (the ``--portable`` flavour), in two forms.

**Frame-wise form** (4-D GridSample), used wherever T is not deformed (D3Dnet's ``"HW"``): every tap of
kernel time index ``i`` reads one whole input frame, ``t*stride_t - pad_t + i*dil_t``. Per ``i``, one
GridSample over those frames (frames outside the clip are skipped: their taps read zeros) samples the
``kH*kW`` taps, and a grouped 1x1x1 Conv with the weight's ``[:, :, i]`` slice turns them into a partial
output; the partial outputs are summed. Only one kernel time index's sampled taps exist at a time, and
stock TensorRT, ONNX Runtime's CUDA provider and OpenVINO (4-D GridSample only) accept the graph.

**Volumetric form** (5-D GridSample), needed where T is deformed: the K taps are stacked along
GridSample's depth axis, one GridSample per layer, then one grouped 1x1x1 Conv over the whole column
tensor ``[N, C*K, T', H', W']``. Only runtimes with 5-D GridSample (TensorRT-RTX, ONNX Runtime CPU) take
it, and it holds every sampled tap at once.

Both reproduce the op's contract exactly: GridSample with ``align_corners=False`` maps the normalised
coordinate ``(2p + 1) / size - 1`` back to pixel ``p``, and bilinear (trilinear) interpolation with
``padding_mode="zeros"`` counts every corner outside the frame as 0, which is the ``-1 < p < size`` rule
(at ``p <= -1`` or ``p >= size`` every corner with a non-zero weight is outside; between -1 and 0 only
corner 0 is inside, with weight ``p + 1``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np
import onnx
import torch
import torch.nn.functional as F

Form = Literal["frames", "volume"]

# None: frame-wise wherever T is not deformed. "volume" forces the 5-D form on every layer (the only
# form before issue 12), kept selectable so a benchmark can compare the two side by side.
_form_override: contextvars.ContextVar[Form | None] = contextvars.ContextVar("d3d_portable_form", default=None)


@contextlib.contextmanager
def forced_form(form: Form | None) -> Iterator[None]:
    """Within the block, every portable layer uses ``form`` (None: the automatic choice)."""
    token = _form_override.set(form)
    try:
        yield
    finally:
        _form_override.reset(token)


def form_for(deform_dims: str) -> Form:
    """The form the portable flavour uses for a layer deforming ``deform_dims``."""
    override = _form_override.get()
    if override is not None:
        return override
    return "volume" if "T" in deform_dims else "frames"


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
    """DeformConv3d in standard ops: frame-wise (4-D GridSample) unless T is deformed."""
    form = form_for(deform_dims)
    if form == "frames" and "T" in deform_dims:
        raise ValueError("the frame-wise portable form cannot deform T")
    impl = _frames if form == "frames" else _volume
    return impl(input, offset, weight, bias, stride, padding, dilation, groups, offset_groups, deform_dims)


def _pixel_to_grid(pos: torch.Tensor, size: int | torch.SymInt) -> torch.Tensor:
    # Pixel -> normalised coordinate for align_corners=False; GridSample maps it back with
    # p = ((g + 1) * size - 1) / 2.
    return (2 * pos + 1) / size - 1


def _frames(
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
    khw = kh * kw
    ot, oh, ow = offset.shape[2:]
    nd = len(deform_dims)
    gof, cpg = offset_groups, c // offset_groups
    dtype = torch.promote_types(input.dtype, torch.float32)
    dev = input.device

    # Undeformed grid of the kH*kW taps, [kH*kW*H', W'] per axis (tap-major, as the weight flattens).
    tap_h = torch.arange(kh, device=dev).repeat_interleave(kw).view(khw, 1, 1)
    tap_w = torch.arange(kw, device=dev).repeat(kh).view(khw, 1, 1)
    pos_h = (torch.arange(oh, device=dev).view(1, -1, 1) * stride[1] - padding[1] + tap_h * dilation[1]).to(dtype)
    pos_w = (torch.arange(ow, device=dev).view(1, 1, -1) * stride[2] - padding[2] + tap_w * dilation[2]).to(dtype)
    base_y = _pixel_to_grid(pos_h.expand(khw, oh, ow), h).reshape(khw * oh, ow)
    base_x = _pixel_to_grid(pos_w.expand(khw, oh, ow), w).reshape(khw * oh, ow)

    # Frame-major copies, so that every per-index slice below is one contiguous block: reshaping a
    # strided view would make torch.export guard on (and so fix) the batch size.
    frames = input.to(dtype).permute(2, 0, 1, 3, 4).contiguous()  # [T, N, C, H, W]
    off = offset.to(dtype).reshape(n, gof, kt, khw, nd, ot, oh, ow)
    off = off.permute(2, 5, 0, 1, 3, 6, 7, 4).contiguous()  # [kT, T', N, G, kH*kW, H', W', D]
    wgt = weight.to(dtype)
    y: torch.Tensor | None = None
    for i in range(kt):
        # Output frames t whose tap i reads a frame inside the clip: 0 <= t*s - p + i*d < T.
        t_lo = max(0, -((i * dilation[0] - padding[0]) // stride[0]))  # ceil((p - i*d) / s)
        t_hi = min(ot, (t - 1 + padding[0] - i * dilation[0]) // stride[0] + 1)
        if t_lo >= t_hi:
            continue  # every tap of this kernel time index reads zeros
        nt = t_hi - t_lo
        f_lo = t_lo * stride[0] - padding[0] + i * dilation[0]
        if stride[0] == 1:
            src = frames[f_lo : f_lo + nt]  # [nt, N, C, H, W]
        else:  # a gather, not a strided view (whose reshape would guard on the batch size)
            src = frames.index_select(0, torch.arange(f_lo, f_lo + nt * stride[0], stride[0], device=dev))
        src = src.reshape(nt * n * gof, cpg, h, w)  # GridSample batch (t, n, offset group)
        d = off[i, t_lo:t_hi].reshape(nt * n * gof, khw * oh, ow, nd)
        gy = base_y + d[..., deform_dims.index("H")] * (2 / h) if "H" in deform_dims else base_y.expand_as(d[..., 0])
        gx = base_x + d[..., deform_dims.index("W")] * (2 / w) if "W" in deform_dims else base_x.expand_as(d[..., 0])
        grid = torch.stack([gx, gy], dim=-1)
        cols = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # [nt*N*G, C/G, kH*kW*H', W'] -> [nt*N, C*kH*kW, 1, H', W']: channel-major, tap-minor, as W[:, :, i].
        # A 1x1x1 Conv, not 1x1: ONNX Runtime re-lays a 2-D Conv's input out in blocks (NCHWc), a second copy
        # of the sampled taps (measured: layer peak 938 -> 591 MB at 68x160, and faster).
        cols = cols.reshape(nt * n, c * khw, 1, oh, ow)
        part = F.conv3d(cols, wgt[:, :, i].reshape(o, cg * khw, 1, 1, 1), None, groups=groups)
        part = part.reshape(nt, n, o, oh, ow)
        if (t_lo, t_hi) != (0, ot):
            part = F.pad(part, (0, 0, 0, 0, 0, 0, 0, 0, t_lo, ot - t_hi))  # frames this index does not reach
        y = part if y is None else y + part
    if y is None:  # no tap reads the clip (possible only with padding >= T)
        y = torch.zeros(ot, n, o, oh, ow, dtype=dtype, device=dev)
    y = y.permute(1, 2, 0, 3, 4).contiguous()  # [N, O, T', H', W'], laid out as the op's output
    if bias is not None:
        y = y + bias.to(dtype).reshape(1, o, 1, 1, 1)
    return y.to(input.dtype)


def _volume(
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
        return _pixel_to_grid(pos, size)

    grid = torch.stack([axis(base_w, "W", w), axis(base_h, "H", h), axis(base_t, "T", t)], dim=-1)
    grid = grid.reshape(n * offset_groups, k * ot, oh, ow, 3)
    vol = input.to(dtype).reshape(n * offset_groups, c // offset_groups, t, h, w)
    cols = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.reshape(n, c * k, ot, oh, ow)  # channel-major, tap-minor: matches W's flattening
    y = F.conv3d(
        cols, weight.to(dtype).reshape(o, cg * k, 1, 1, 1), bias.to(dtype) if bias is not None else None, groups=groups
    )
    return y.to(input.dtype)


def restore_sliced_weights(proto: onnx.ModelProto, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Puts back, under its own name, each 5-D weight that the ONNX optimizer replaced by its folded
    per-kernel-time-index slices (it folds weights up to 8192 elements, not larger ones): the slices
    become ``Slice`` + ``Reshape`` of the weight, which runtimes fold again when they load the model.
    Keeps the file's parameters those of the PyTorch model. Returns the names restored."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    by_bytes: dict[bytes, str] = {}
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            by_bytes.setdefault(onnx.numpy_helper.to_array(init).tobytes(), init.name)
    restored, new_nodes = [], []
    for name, value in state.items():
        if name in inits or value.dim() != 5 or value.dtype != torch.float32:
            continue
        slices = [value[:, :, i].contiguous().numpy().tobytes() for i in range(value.shape[2])]
        found = [by_bytes.get(s) for s in slices]
        if not all(found) or len(set(found)) != len(found) or any(f not in inits for f in found):
            continue
        graph.initializer.append(onnx.numpy_helper.from_array(value.detach().numpy(), name))
        for i, old in enumerate(found):
            shape = list(inits[old].dims)
            consts = {
                "starts": [i],
                "ends": [i + 1],
                "axes": [2],
                "shape": shape,
            }
            for key, v in consts.items():
                graph.initializer.append(onnx.numpy_helper.from_array(np.array(v, np.int64), f"{name}.{i}.{key}"))
            new_nodes.append(
                onnx.helper.make_node(
                    "Slice", [name, f"{name}.{i}.starts", f"{name}.{i}.ends", f"{name}.{i}.axes"], [f"{name}.{i}"]
                )
            )
            new_nodes.append(onnx.helper.make_node("Reshape", [f"{name}.{i}", f"{name}.{i}.shape"], [old]))
            graph.initializer.remove(inits.pop(old))
        restored.append(name)
    # Producers first: the slices feed Conv nodes anywhere in the graph.
    nodes = [*new_nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return restored
