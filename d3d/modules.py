"""DeformConv3d modules: plain (offset given) and packed (offset Conv3d built in, as in the seed)."""

from __future__ import annotations

import math

import torch
from torch import nn

from d3d._plugins.contract import (
    DEFAULT_DEFORM_DIMS,
    DEFAULT_DILATION,
    DEFAULT_GROUP,
    DEFAULT_OFFSET_GROUP,
    DEFAULT_PAD,
    DEFAULT_STRIDE,
)
from d3d.ops import deform_conv3d
from d3d.reference import IntOr3, triple


class DeformConv3d(nn.Module):
    """Deformable 3-D convolution whose offsets are an input of ``forward``.

    Parameters are named ``weight`` and ``bias`` as in the seed's ``DeformConv_d``. The bias is
    always added (the seed zero-initialises it and keeps it in every checkpoint).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOr3,
        stride: IntOr3 = DEFAULT_STRIDE,
        padding: IntOr3 = DEFAULT_PAD,
        dilation: IntOr3 = DEFAULT_DILATION,
        groups: int = DEFAULT_GROUP,
        offset_groups: int = DEFAULT_OFFSET_GROUP,
        deform_dims: str = DEFAULT_DEFORM_DIMS,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must divide by groups ({groups})"
            )
        if in_channels % offset_groups:
            raise ValueError(f"in_channels ({in_channels}) must divide by offset_groups ({offset_groups})")
        if (
            not deform_dims
            or sorted(deform_dims, key="THW".index) != list(deform_dims)
            or set(deform_dims) - set("THW")
        ):
            raise ValueError(f"deform_dims must be a non-empty ordered subset of 'THW', got {deform_dims!r}")
        if len(set(deform_dims)) != len(deform_dims):
            raise ValueError(f"deform_dims repeats a letter: {deform_dims!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = triple(stride, "stride")
        self.padding = triple(padding, "padding")
        self.dilation = triple(dilation, "dilation")
        self.groups = groups
        self.offset_groups = offset_groups
        self.deform_dims = deform_dims
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def offset_channels(self) -> int:
        k = self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]
        return self.offset_groups * k * len(self.deform_dims)

    def reset_parameters(self) -> None:
        # The seed's initialisation: U(-1/sqrt(n), 1/sqrt(n)) with n = C_in * kT*kH*kW, zero bias.
        n = self.in_channels * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(n)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, input: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return deform_conv3d(
            input,
            offset,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.offset_groups,
            self.deform_dims,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"offset_groups={self.offset_groups}, deform_dims={self.deform_dims!r}"
        )


class DeformConv3dPack(DeformConv3d):
    """DeformConv3d with its offset-predicting Conv3d (``conv_offset``), zero-initialised as in the seed,
    so a fresh layer starts as a plain convolution."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv3d(
            self.in_channels,
            self.offset_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(input, self.conv_offset(input))
