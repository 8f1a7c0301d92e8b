"""D3Dnet (Ying et al. 2020), parameter-compatible with the seed's ``Net``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from d3d.errors import D3DError
from d3d.modules import DeformConv3dPack


class ModelConfigError(D3DError, ValueError):
    """Invalid architecture sizes (one line for the user)."""


@dataclass(frozen=True)
class D3DnetConfig:
    """Architecture hyper-parameters; the defaults are the paper's x4 model."""

    scale: int = 4
    in_channels: int = 1
    out_channels: int = 1
    frames: int = 7
    nf: int = 64
    d3d_blocks: int = 5
    res_blocks: int = 6

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ResD3DBlock(nn.Module):
    """Two HW-deformable 3x3x3 convolutions with a LeakyReLU between and a skip connection."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.dcn0 = DeformConv3dPack(nf, nf, kernel_size=3, stride=1, padding=1, deform_dims="HW")
        self.dcn1 = DeformConv3dPack(nf, nf, kernel_size=3, stride=1, padding=1, deform_dims="HW")
        self.lrelu = nn.LeakyReLU(negative_slope=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dcn1(self.lrelu(self.dcn0(x))) + x


class ResBlock(nn.Module):
    """2-D residual block (the seed names its convolutions dcn0/dcn1 although they are plain)."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.dcn0 = nn.Conv2d(nf, nf, kernel_size=3, stride=1, padding=1)
        self.dcn1 = nn.Conv2d(nf, nf, kernel_size=3, stride=1, padding=1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dcn1(self.lrelu(self.dcn0(x))) + x


class D3Dnet(nn.Module):
    """Video super-resolution network: ``[B, C, frames, H, W]`` -> ``[B, C, scale*H, scale*W]``
    (the centre frame, upscaled)."""

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        out_channels: int = 1,
        frames: int = 7,
        nf: int = 64,
        d3d_blocks: int = 5,
        res_blocks: int = 6,
    ) -> None:
        super().__init__()
        for name, value in (("scale", scale), ("in_channels", in_channels), ("frames", frames), ("nf", nf)):
            if value < 1:
                raise ModelConfigError(f"D3Dnet: {name} must be >= 1, got {value}")
        for name, value in (("d3d_blocks", d3d_blocks), ("res_blocks", res_blocks)):
            if value < 0:
                raise ModelConfigError(f"D3Dnet: {name} must be >= 0, got {value}")
        if in_channels != out_channels:
            raise ModelConfigError(
                "D3Dnet adds the upscaled centre frame to its output: in_channels must equal out_channels"
            )
        self.config = D3DnetConfig(scale, in_channels, out_channels, frames, nf, d3d_blocks, res_blocks)
        self.input = nn.Sequential(
            nn.Conv3d(in_channels, nf, kernel_size=3, stride=1, padding=1, bias=False),
            nn.LeakyReLU(0.1),
        )
        self.residual_layer = nn.Sequential(*(ResD3DBlock(nf) for _ in range(d3d_blocks)))
        self.TA = nn.Conv2d(frames * nf, nf, kernel_size=1, stride=1, bias=True)
        self.reconstruct = nn.Sequential(*(ResBlock(nf) for _ in range(res_blocks)))
        self.upscale = nn.Sequential(
            nn.Conv2d(nf, nf * scale**2, kernel_size=1, stride=1, padding=0, bias=False),
            nn.PixelShuffle(scale),
            nn.Conv2d(nf, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        residual = F.interpolate(x[:, :, t // 2], scale_factor=self.config.scale, mode="bilinear", align_corners=False)
        out = self.residual_layer(self.input(x))
        # [B, nf, T, H, W] -> [B, T*nf, H, W], frame-major as in the seed.
        out = self.TA(out.permute(0, 2, 1, 3, 4).reshape(b, t * self.config.nf, h, w))
        out = self.upscale(self.reconstruct(out))
        return out + residual
