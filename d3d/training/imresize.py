"""MATLAB-compatible bicubic ``imresize`` (antialiased), as the seed's ``generate_LR_Vimeo90K.m`` uses.

MATLAB's algorithm, per dimension: output pixel ``x`` (1-based) maps to input coordinate
``u = x/scale + 0.5*(1 - 1/scale)``; the cubic kernel (a = -0.5) is widened by ``1/scale`` when
shrinking (antialiasing), weights are normalised to sum to 1, and indices outside the image are
mirrored symmetrically (``[1..n, n..1]``). Each dimension is a linear map, so it is built once as a
dense ``[out, in]`` matrix and applied as a matrix product (float64 for accuracy).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return inner + outer


def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> torch.Tensor:
    """The ``[out_len, in_len]`` float64 matrix of MATLAB's bicubic resize along one dimension."""
    if in_len < 1 or out_len < 1 or scale <= 0:
        raise ValueError(f"bad resize: {in_len} -> {out_len} at scale {scale}")
    shrink = scale < 1 and antialias
    width = 4.0 / scale if shrink else 4.0
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based input indices
    dist = u[:, None] - idx
    w = scale * cubic(dist * scale) if shrink else cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    # Symmetric padding: index i (1-based) of the sequence [1..n, n..1] repeated.
    period = 2 * in_len
    m = torch.remainder(idx.long() - 1, period)
    src = torch.where(m < in_len, m, period - 1 - m)
    mat = torch.zeros(out_len, in_len, dtype=torch.float64)
    mat.scatter_add_(1, src, w)
    return mat


def output_length(in_len: int, scale: float) -> int:
    return math.ceil(in_len * scale)


def imresize(img: np.ndarray | torch.Tensor, scale: float, antialias: bool = True) -> np.ndarray | torch.Tensor:
    """Resizes an ``[H, W]`` or ``[H, W, C]`` image by ``scale`` like MATLAB's ``imresize(img, scale,
    'bicubic')``. uint8 input gives uint8 output (rounded and clipped as MATLAB does); float input gives
    float64 output, not clipped. NumPy in, NumPy out; a tensor in, a tensor out."""
    is_tensor = isinstance(img, torch.Tensor)
    t = img if is_tensor else torch.from_numpy(np.require(img, requirements=["C", "W"]))
    if t.ndim not in (2, 3):
        raise ValueError(f"expected an [H, W] or [H, W, C] image, got shape {tuple(t.shape)}")
    is_uint8 = t.dtype == torch.uint8
    x = t.to(torch.float64)
    h, w = x.shape[:2]
    mh = resize_matrix(h, output_length(h, scale), scale, antialias)
    mw = resize_matrix(w, output_length(w, scale), scale, antialias)
    if x.ndim == 2:
        out = mh @ x @ mw.T
    else:
        out = torch.einsum("oh,hwc,pw->opc", mh, x, mw)
    if is_uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    return out if is_tensor else out.numpy()
