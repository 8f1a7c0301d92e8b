"""Per-frame time and peak memory of a run, estimated before it starts.

The cost model: per network call, time and peak memory grow linearly with the LR area (every layer is
a convolution over the frame; activations are ``channels x frames x H x W``). Its two coefficients are
measured here with a short warm-up of the actual runner on two small crops, then extrapolated to the
frame (or tile) size of the run. Memory is the process's resident peak (``VmHWM``, reset between the
probes through ``/proc/self/clear_refs``), compared with what the machine has available.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3d.runtime.backends.base import Runner, peak_rss_mb, proc_status_mb

MEMORY_LIMIT_ENV = "D3D_MEMORY_LIMIT_MB"  # caps the memory a run may plan for (tests inject a limit)
PROBE_SIDES = (48, 96)  # LR sides of the two warm-up crops (smaller ones mislead: fixed-size buffers)
MIN_TILE = 32


@dataclass
class Estimate:
    lr_size: tuple[int, int]  # (height, width) of the LR frame
    tile: int
    calls_per_frame: int
    seconds_per_frame: float
    peak_mb: float
    available_mb: float | None
    measured_directly: bool  # the probe had the run's size: no extrapolation
    mb_per_pixel: float = 0.0  # the memory model: peak(area) = peak_mb + mb_per_pixel * (area - call area)
    call_area: int = 0

    def fits(self) -> bool:
        return self.available_mb is None or self.peak_mb <= self.available_mb

    def suggest_tile(self, overlap: int = 8) -> int | None:
        """The largest ``--tile`` (a multiple of 8) whose estimated peak fits the available memory."""
        if self.available_mb is None:
            return None
        budget = 0.9 * self.available_mb - (self.peak_mb - self.mb_per_pixel * self.call_area)
        if budget <= 0 or self.mb_per_pixel <= 0:
            return None
        side = int(math.sqrt(budget / self.mb_per_pixel)) // 8 * 8
        return side if side > max(2 * overlap, MIN_TILE - 1) else None


def _reset_peak() -> bool:
    """Resets the kernel's resident peak (VmHWM) of this process to its current size (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def available_memory_mb() -> float | None:
    """Memory this process may grow to: ``$D3D_MEMORY_LIMIT_MB`` where set, else its current resident
    size plus the machine's available memory, capped by a cgroup limit."""
    if os.environ.get(MEMORY_LIMIT_ENV):
        return float(os.environ[MEMORY_LIMIT_ENV])
    rss = proc_status_mb("VmRSS") or 0.0
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = rss + int(line.split()[1]) / 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            usage = int(Path("/sys/fs/cgroup/memory.current").read_text())
            cg = rss + (int(limit) - usage) / 2**20
            avail = cg if avail is None else min(avail, cg)
    except (OSError, ValueError):
        pass
    return avail


def _probe(runner: Runner, h: int, w: int, rng: np.random.Generator) -> tuple[float, float]:
    cfg = runner.config
    window = rng.random((1, cfg.in_channels, cfg.frames, h, w), dtype=np.float32)
    _reset_peak()
    t0 = time.perf_counter()
    runner.infer(window)
    return time.perf_counter() - t0, peak_rss_mb()


def _fit(a1: float, v1: float, a2: float, v2: float, a: float) -> float:
    if a2 == a1:
        return v2
    slope = max(0.0, (v2 - v1) / (a2 - a1))
    return v2 + slope * (a - a2)


def calls_per_frame(h: int, w: int, tile: int, overlap: int) -> tuple[int, tuple[int, int]]:
    """Network calls per frame and the LR size of one call (tiles of the core ``tile - 2*overlap``)."""
    if not tile:
        return 1, (h, w)
    core = tile - 2 * overlap
    return math.ceil(h / core) * math.ceil(w / core), (min(h, tile), min(w, tile))


def estimate_run(runner: Runner, lr_size: tuple[int, int], tile: int = 0, overlap: int = 8) -> Estimate:
    """Warms ``runner`` up on two small crops and extrapolates time and peak memory to ``lr_size``."""
    h, w = lr_size
    calls, (ch, cw) = calls_per_frame(h, w, tile, overlap)
    rng = np.random.default_rng(0)
    (h1, w1), (h2, w2) = [(min(ch, s), min(cw, s)) for s in PROBE_SIDES]
    _probe(runner, h1, w1, rng)  # first call: lazy initialisation, allocator arenas
    t1, m1 = _probe(runner, h1, w1, rng)
    t2, m2 = _probe(runner, h2, w2, rng) if (h2, w2) != (h1, w1) else (t1, m1)
    area = ch * cw
    direct = (h2, w2) == (ch, cw)
    seconds = _fit(h1 * w1, t1, h2 * w2, t2, area) * calls
    peak = _fit(h1 * w1, m1, h2 * w2, m2, area)
    slope = max(0.0, (m2 - m1) / (h2 * w2 - h1 * w1)) if h2 * w2 != h1 * w1 else 0.0
    return Estimate((h, w), tile, calls, seconds, peak, available_memory_mb(), direct, slope, area)
