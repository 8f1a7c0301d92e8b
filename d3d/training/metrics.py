"""PSNR and SSIM on the Y channel, by the seed's protocol or BasicSR's.

Seed (``code/evaluation.py`` of D3Dnet): Y from rgb2ycbcr (BT.601, ``[65.481, 128.553, 24.966]/255 +
16/255``) in [0, 1]; for PSNR both images truncated to 8 bits (``floor(x*255)/255``) and an 8-pixel
border cropped, peak 1; SSIM on the border-cropped float images with an 11x11 Gaussian window
(sigma 1.5) applied with zero padding ("same" size), C1 = 0.01^2, C2 = 0.03^2, mean of the whole
map; per clip, the first and last 2 frames are left out of the mean.

BasicSR (``basicsr/metrics``): the same Y coefficients on 8-bit images *rounded* (not truncated),
a border of ``scale`` pixels, PSNR with peak 255, SSIM over the "valid" part of the Gaussian filter
(no padding) and every frame counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Y_COEFFS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
Y_OFFSET = 16.0 / 255.0


def rgb_to_y(rgb: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Y in [16/255, 235/255] of ``[..., 3]`` RGB in [0, 1] (the seed's ``rgb2ycbcr(only_y=True)``),
    computed in float64."""
    if isinstance(rgb, torch.Tensor):
        r, g, b = rgb.to(torch.float64).unbind(-1)
    else:
        x = np.asarray(rgb, dtype=np.float64)
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return r * Y_COEFFS[0] + g * Y_COEFFS[1] + b * Y_COEFFS[2] + Y_OFFSET


def _t(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))).to(torch.float64)


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 1.0) -> float:
    """PSNR of two same-shape images (no quantisation or crop; see :func:`psnr_y`)."""
    mse = float(((_t(a) - _t(b)) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    data_range: float = 1.0,
    padding: str = "same",
    size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Local SSIM of two ``[H, W]`` images: ``padding="same"`` zero-pads as the seed's ``F.conv2d``,
    ``"valid"`` keeps only windows inside the image (as scikit-image and BasicSR)."""
    x, y = _t(a)[None, None], _t(b)[None, None]
    win = gaussian_window(size, sigma)[None, None]
    pad = size // 2 if padding == "same" else 0

    def filt(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, win, padding=pad)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return m[0, 0]


def ssim(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 1.0, padding: str = "same"
) -> float:
    return float(ssim_map(a, b, data_range, padding).mean())


@dataclass(frozen=True)
class Protocol:
    """How a super-resolved Y frame is compared with the ground truth."""

    name: str
    quantise: str  # "truncate" or "round" to 8 bits
    border: int | None  # pixels cropped on each side; None: the scale
    ssim_padding: str  # "same" (zero padding) or "valid"
    skip_ends: int  # frames left out at each end of a clip

    def crop(self, scale: int) -> int:
        return scale if self.border is None else self.border


SEED = Protocol("seed", "truncate", 8, "same", 2)
BASICSR = Protocol("basicsr", "round", None, "valid", 0)
PROTOCOLS = {p.name: p for p in (SEED, BASICSR)}


def frame_scores(
    sr_y: torch.Tensor, hr_y: torch.Tensor, protocol: Protocol = SEED, scale: int = 4
) -> tuple[float, float]:
    """(PSNR, SSIM) of a super-resolved ``[H, W]`` Y frame against the ground-truth Y (both in [0, 1];
    ``sr_y`` is clamped to [0, 1] first, as the seed's test.py does)."""
    sr = _t(sr_y).clamp(0, 1)
    hr = _t(hr_y)
    c = protocol.crop(scale)
    if c:
        sr, hr = sr[c:-c, c:-c], hr[c:-c, c:-c]
    if protocol.quantise == "truncate":
        qs, qh = torch.floor(sr * 255) / 255, torch.floor(hr * 255) / 255
        # The seed's SSIM sees the float images, its PSNR the truncated ones.
        return psnr(qs, qh), ssim(sr, hr, 1.0, protocol.ssim_padding)
    # BasicSR rounds the network's 8-bit output; the ground truth's Y is computed from its 8-bit RGB
    # and stays unrounded.
    qs, qh = torch.round(sr * 255), hr * 255
    return psnr(qs, qh, 255.0), ssim(qs, qh, 255.0, protocol.ssim_padding)


def clip_mean(values: list[float], protocol: Protocol = SEED) -> float:
    """Mean over a clip's frames, leaving out ``skip_ends`` at each end (all frames when the clip is
    too short to leave any)."""
    k = protocol.skip_ends
    kept = values[k : len(values) - k] if len(values) > 2 * k else values
    return float(np.mean(kept))
