"""Evaluating a super-resolution model on test clips as the seed's ``test.py`` does, with bicubic beside it.

Per frame ``i`` of a clip the network sees LR frames ``i-3 … i+3`` (indices clamped to the clip, as the
seed's ``TestSetLoader``), Y channels from the seed's rgb2ycbcr; the HR frame is cropped to a multiple of
``4*scale`` and the LR frames to match. The bicubic baseline is MATLAB-style ``imresize`` x``scale`` of
the RGB LR frame, then Y (the paper's Bicubic row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from d3d.training.data import TestClip
from d3d.training.imresize import imresize
from d3d.training.metrics import SEED, Protocol, clip_mean, frame_scores, rgb_to_y

# window [1, 1, T, h, w] float32 Y -> [1, 1, scale*h, scale*w]
InferFn = Callable[[np.ndarray], np.ndarray]
KEYS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")


@dataclass
class ClipResult:
    name: str
    frames: dict[str, list[float]]  # per-frame values, keyed by KEYS

    def mean(self, protocol: Protocol) -> dict[str, float]:
        return {k: clip_mean(v, protocol) for k, v in self.frames.items()}


def _y(rgb_u8: np.ndarray) -> np.ndarray:
    return rgb_to_y(rgb_u8.astype(np.float32) / 255.0).astype(np.float32)


def evaluate_clip(
    clip: TestClip,
    infer: InferFn | None,
    protocol: Protocol = SEED,
    scale: int = 4,
    frames: int = 7,
    on_frame: Callable[[], None] | None = None,
) -> ClipResult:
    """Per-frame scores of the model (``infer``; None for bicubic only) and of bicubic on one clip."""
    n = len(clip.hr)
    h, w = clip.hr[0].shape[:2]
    hh, ww = (h // (scale * 4)) * scale * 4, (w // (scale * 4)) * scale * 4
    if hh == 0 or ww == 0:
        raise ValueError(f"{clip.name}: frames {w}x{h} smaller than {scale * 4} pixels")
    lr_y = [_y(f)[: hh // scale, : ww // scale] for f in clip.lr]
    out: dict[str, list[float]] = {k: [] for k in KEYS}
    half = frames // 2
    for i in range(n):
        hr_y = torch.from_numpy(_y(clip.hr[i])[:hh, :ww])
        bic = imresize(clip.lr[i].astype(np.float64) / 255.0, scale)
        bic_y = torch.as_tensor(rgb_to_y(np.clip(bic, 0, 1)))[:hh, :ww]
        p, s = frame_scores(bic_y, hr_y, protocol, scale)
        out["bicubic_psnr"].append(p)
        out["bicubic_ssim"].append(s)
        if infer is not None:
            idx = [min(max(j, 0), n - 1) for j in range(i - half, i + half + 1)]
            window = np.stack([lr_y[j] for j in idx], 0)[None, None]
            sr = np.asarray(infer(np.ascontiguousarray(window)))[0, 0]
            p, s = frame_scores(torch.from_numpy(sr.astype(np.float64)), hr_y, protocol, scale)
            out["psnr"].append(p)
            out["ssim"].append(s)
        if on_frame is not None:
            on_frame()
    if infer is None:
        del out["psnr"], out["ssim"]
    return ClipResult(clip.name, out)


def summarise(results: Sequence[ClipResult], protocol: Protocol = SEED) -> dict[str, dict]:
    """``{"clips": {name: {psnr, ssim, bicubic_psnr, bicubic_ssim}}, "mean": {...}}``: per-clip means
    (ends left out as the protocol says), and their mean over clips (as the seed averages a dataset)."""
    clips = {r.name: r.mean(protocol) for r in results}
    keys = list(next(iter(clips.values())).keys()) if clips else []
    mean = {k: float(np.mean([c[k] for c in clips.values()])) for k in keys}
    return {"clips": clips, "mean": mean}
