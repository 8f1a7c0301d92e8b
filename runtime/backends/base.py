"""What every backend provides: a :class:`Runner`, a typed options class and a :class:`Backend` entry.

A runner takes the network input window ``[N, C, frames, H, W]`` (float32, Y in [0, 1]) and returns
``[N, C, scale*H, scale*W]``. Frames reach it through a ring of ``frames`` slots: ``put(slot, frame)``
stores one converted frame once (on the device, for TensorRT), ``run(slots)`` infers on the window
those slots form. ``infer(window)`` runs an explicit window (tiles, benchmarks, warm-up).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from d3d.errors import D3DError
from d3d.model import D3DnetConfig

if TYPE_CHECKING:
    from d3d.runtime.models import ModelSource

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class BackendOptions:
    """Options every backend understands (in the manner of vs-mlrt's backend classes); a backend
    subclasses this with its own fields and checks what it cannot do in :meth:`validate`."""

    device: str = "auto"  # "cpu", "cuda", or "auto" (the backend's best device here)
    precision: str = "fp32"  # I/O and compute precision where the backend chooses it
    threads: int | None = None  # CPU threads (None: the library's default)
    streams: int = 1  # concurrent inference streams (GPU backends)
    cuda_graph: bool = False  # replay the launch as a CUDA graph (TensorRT)
    tile: int = 0  # LR tile size (0: the whole frame at once)
    tile_overlap: int = 8  # LR context pixels around each tile

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise D3DError(f"unknown device {self.device!r}: use auto, cpu or cuda")
        if self.precision not in PRECISIONS:
            raise D3DError(f"unknown precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.threads is not None and self.threads < 1:
            raise D3DError(f"--threads must be >= 1, got {self.threads}")
        if self.streams < 1:
            raise D3DError(f"streams must be >= 1, got {self.streams}")
        if self.tile < 0 or self.tile_overlap < 0:
            raise D3DError("--tile and --tile-overlap must be >= 0")
        if self.tile and self.tile <= 2 * self.tile_overlap:
            raise D3DError(
                f"--tile {self.tile} leaves no core with --tile-overlap {self.tile_overlap}: use tile > 2*overlap"
            )


class Runner(ABC):
    name: str = "runner"
    precision: str = "fp32"
    device: str = "cpu"

    def __init__(self, config: D3DnetConfig) -> None:
        self.config = config
        self._ring: dict[int, np.ndarray] = {}

    def put(self, slot: int, frame: np.ndarray) -> None:
        """Stores one converted frame ``[C, H, W]`` in ring slot ``slot``."""
        self._ring[slot] = frame

    def run(self, slots: Sequence[int]) -> np.ndarray:
        """Infers on the window formed by ``slots`` (``frames`` entries, repeats allowed); ``[C, sH, sW]``."""
        window = np.stack([self._ring[s] for s in slots], axis=1)[None]  # [1, C, T, H, W]
        return self.infer(window)[0]

    @abstractmethod
    def infer(self, window: np.ndarray) -> np.ndarray: ...

    def check_frame_size(self, h: int, w: int) -> None:
        """Raises :class:`D3DError` where this runner cannot take an LR frame of ``h`` x ``w``
        (any size, by default)."""
        return None

    def close(self) -> None:
        self._ring.clear()

    def describe(self) -> str:
        return f"{self.name} ({self.device}, {self.precision})"


@dataclass(frozen=True)
class Backend:
    """A registry entry: how to make the backend's runner and whether it can run here."""

    name: str
    description: str
    options: type[BackendOptions]
    factory: Callable[[ModelSource, BackendOptions], Runner]
    # None where the backend can run on this machine, else the reason it cannot.
    unavailable: Callable[[], str | None]
    sources: tuple[str, ...] = ("checkpoint", "onnx", "random")  # model kinds it runs
    missing_sdk: bool = False  # True where "unavailable" means an optional SDK is not installed (exit 2)
    remote: bool = False  # True where the model runs in a server (triton): it streams videos, not windows

    def create(self, source: ModelSource, options: BackendOptions | None = None) -> Runner:
        options = options or self.options()
        if not isinstance(options, self.options):
            raise TypeError(f"{self.name} takes {self.options.__name__}, got {type(options).__name__}")
        options.validate()
        if source.kind not in self.sources:
            raise D3DError(
                f"the {self.name} backend cannot run a {source.kind} ({source.path}); it runs {', '.join(self.sources)}"
            )
        return self.factory(source, options)


def proc_status_mb(field: str) -> float | None:
    """A size field of /proc/self/status (``VmRSS``, ``VmHWM``, ...) in MB; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB): the kernel's VmHWM where /proc has it (Linux). Not
    ``ru_maxrss`` there: Linux carries the parent's peak into it across fork and exec, so a run started
    from a large process (a test runner, a notebook, a server) reported the parent's memory."""
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if os.uname().sysname == "Linux" else peak / (1024 * 1024)


def existing(path: Path | None, what: str) -> Path | None:
    """``path`` where it is a file; a one-line error naming ``what`` where it is not."""
    if path is not None and not Path(path).is_file():
        raise D3DError(f"{path}: no such file ({what})")
    return path
