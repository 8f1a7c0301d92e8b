"""Colour preparation and finishing: a decoded frame into the network's Y and the chroma kept for the output
(:func:`prepare`, decoder side), and the network's Y with that chroma back into an output frame
(:func:`finish`, writer side). Y'CbCr video keeps its own planes and tags (:mod:`d3d.runtime.video`); RGB
sources take the seed's BT.601 conversion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from d3d.color import rgb_to_ycbcr, ycbcr_to_rgb
from d3d.runtime.frames import InFrame, OutFrame, RawFrame
from d3d.runtime.video import (
    PlaneFormat,
    luma_to_net,
    net_to_luma,
    read_planes,
    to_codes,
)

if TYPE_CHECKING:  # the options' home imports this module
    from d3d.runtime.windows import UpscaleOptions


def _resize(x: np.ndarray, size: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """Bicubic resize of ``[C, h, w]`` float32 planes (torch's kernel, a = -0.75, half-pixel centres)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    return F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=antialias)[0].numpy()


def _to_ycbcr(rgb: np.ndarray, downscale: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
    if downscale > 1:
        h, w = x.shape[1] // downscale, x.shape[2] // downscale
        x = F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0].clamp_(0, 1)
    ycc = rgb_to_ycbcr(x)
    return ycc[:1].numpy(), ycc[1:].numpy()


def prepare(raw: RawFrame, pf: PlaneFormat | None, downscale: int = 1) -> InFrame:
    """Decoder-side conversion: the network's Y, and the chroma kept for the output."""
    image = raw.image
    if isinstance(image, np.ndarray) or pf is None:
        rgb = image if isinstance(image, np.ndarray) else image.to_ndarray(format="rgb24")
        y, cbcr = _to_ycbcr(rgb, downscale)
        return InFrame(raw.index, y, cbcr=cbcr, pts=raw.pts, time_base=raw.time_base)
    luma, cb, cr = read_planes(image, pf)
    y = luma_to_net(luma, pf)[None]
    chroma = np.stack([cb, cr]).astype(np.float32)
    if downscale > 1:
        h, w = luma.shape[0] // downscale, luma.shape[1] // downscale
        y = np.clip(_resize(y, (h, w), antialias=True), 0, None)
        chroma = _resize(chroma, pf.chroma_size(h, w), antialias=True)
    return InFrame(raw.index, np.ascontiguousarray(y, dtype=np.float32), planes=chroma, pts=raw.pts,
                   time_base=raw.time_base)  # fmt: skip


def finish(
    y_sr: np.ndarray | None, frame: InFrame, pf: PlaneFormat | None, opts: UpscaleOptions, scale: int
) -> OutFrame:
    """Writer-side conversion of the network's Y and the frame's chroma into an output frame; with no
    ``y_sr`` (a frame completed before a resume) an empty one, which the sink fills from its work folder."""
    out = OutFrame(frame.index, frame.pts, frame.time_base)
    if y_sr is None:
        return out
    if opts.y_only:
        out.y16 = (np.clip(y_sr[0], 0, 1) * 65535 + 0.5).astype(np.uint16)
        return out
    h, w = y_sr.shape[-2:]
    if frame.planes is not None:
        chroma = _resize(frame.planes, pf.chroma_size(h, w))
        out.planes, out.pf = [net_to_luma(y_sr[0], pf), to_codes(chroma[0], pf), to_codes(chroma[1], pf)], pf
        return out
    cbcr_up = F.interpolate(torch.from_numpy(frame.cbcr)[None], size=(h, w), mode="bicubic", align_corners=False)[0]
    rgb = ycbcr_to_rgb(torch.cat([torch.from_numpy(y_sr), cbcr_up])).clamp_(0, 1)
    out.rgb = (rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return out
