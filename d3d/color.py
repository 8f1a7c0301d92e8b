"""RGB <-> YCbCr exactly as the seed does it (BT.601 studio swing, values in [0, 1])."""

from __future__ import annotations

import torch

_RGB_TO_YCBCR = torch.tensor(
    [[0.257, 0.504, 0.098], [-0.148, -0.291, 0.439], [0.439, -0.368, -0.071]], dtype=torch.float64
)
_YCBCR_BIAS = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0
_YCBCR_TO_RGB = torch.tensor([[1.164, 0.0, 1.596], [1.164, -0.392, -0.813], [1.164, 2.017, 0.0]], dtype=torch.float64)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` RGB in [0, 1] -> YCbCr (same layout)."""
    m = _RGB_TO_YCBCR.to(rgb)
    return torch.einsum("ij,...jhw->...ihw", m, rgb) + _YCBCR_BIAS.to(rgb).view(3, 1, 1)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (the seed's coefficients), not clamped."""
    m = _YCBCR_TO_RGB.to(ycbcr)
    return torch.einsum("ij,...jhw->...ihw", m, ycbcr - _YCBCR_BIAS.to(ycbcr).view(3, 1, 1))
