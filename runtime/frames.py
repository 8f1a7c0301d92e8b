"""The frame records that travel through the video pipeline: a decoded input frame, a frame ready for
the network, and an output frame (:mod:`d3d.runtime.colour` converts between them)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from d3d.runtime.video import (
    PlaneFormat,
    make_frame,
)


@dataclass
class RawFrame:
    """A decoded input frame: an ``av.VideoFrame`` or an RGB uint8 ``[H, W, 3]`` array, with its time."""

    index: int
    image: object
    pts: int | None = None
    time_base: Fraction | None = None


@dataclass
class InFrame:
    """A frame ready for the network: ``y`` ``[1, h, w]`` float32 (the seed's Y scale), and its chroma:
    ``cbcr`` (seed's Cb/Cr in [0, 1], RGB route) or ``planes`` (Cb/Cr code values, float32)."""

    index: int
    y: np.ndarray
    cbcr: np.ndarray | None = None
    planes: np.ndarray | None = None
    pts: int | None = None
    time_base: Fraction | None = None
    cut: bool = False  # starts a new shot: no window fuses it with the frames before


@dataclass
class OutFrame:
    """An output frame: RGB uint8, Y'CbCr code-value planes in ``pf``'s layout, or 16-bit Y."""

    index: int
    pts: int | None = None
    time_base: Fraction | None = None
    rgb: np.ndarray | None = None
    planes: list[np.ndarray] | None = None
    pf: PlaneFormat | None = None
    y16: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        a = self.rgb if self.rgb is not None else self.y16 if self.y16 is not None else self.planes[0]
        return a.shape[1], a.shape[0]

    def image(self) -> np.ndarray:
        """RGB uint8 ``[H, W, 3]`` (Y'CbCr planes converted with their own colour tags), or the Y16 plane."""
        if self.y16 is not None:
            return self.y16
        if self.rgb is not None:
            return self.rgb
        return make_frame(self.planes, self.pf).to_ndarray(format="rgb24")
