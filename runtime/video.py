"""Video input and output: decoding with PyAV, the seed's colour handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from d3d.color import rgb_to_ycbcr
from d3d.errors import D3DError


def decode_rgb(path: Path, start: int = 0, count: int | None = None):
    """Yields ``(index, [H, W, 3] uint8)`` frames of a video file, decoded once each."""
    import av

    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i < start:
                    continue
                if count is not None and i >= start + count:
                    return
                yield i, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise D3DError(f"{path}: cannot decode video ({exc})") from None


def read_window_y(frames: int, size: tuple[int, int], clip: str = "bikes", start: int = 0) -> np.ndarray:
    """``[frames, h, w]`` float32 Y (seed's BT.601 in [0, 1]) of a centre crop of a sample clip."""
    from d3d.samples import sample_clip

    path = sample_clip(clip)
    rgb = [f for _, f in decode_rgb(path, start, frames)]
    if len(rgb) < frames:
        raise D3DError(f"{path}: needs {frames} frames from frame {start}, found {len(rgb)}")
    x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255
    h, w = size
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    if top < 0 or left < 0:
        raise D3DError(f"{path}: frames are {x.shape[3]}x{x.shape[2]}, smaller than the {w}x{h} crop")
    y = rgb_to_ycbcr(x[:, :, top : top + h, left : left + w])[:, 0]
    return y.numpy().astype(np.float32)
