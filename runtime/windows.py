"""The temporal-window loop: frame i is upscaled from frames i-h .. i+h (h = frames // 2), indices clamped
at the ends as in the seed and at scene cuts (:mod:`d3d.runtime.scenes`); the window is run whole or tile
by tile. Memory is bounded by the window, not by the video's length."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from d3d import probes
from d3d.errors import D3DError
from d3d.runtime import colour
from d3d.runtime.backends.base import Runner
from d3d.runtime.colour import prepare
from d3d.runtime.frames import InFrame, OutFrame, RawFrame
from d3d.runtime.scenes import CutTracker, SceneCuts, Window, WindowPlan
from d3d.runtime.sources import FrameSource


@dataclass
class UpscaleOptions:
    tile: int = 0  # LR tile size (0 = whole frame)
    tile_overlap: int = 8  # LR pixels of context on each side of a tile
    downscale: int = 1  # bicubic pre-downscale (simulate LR from HR footage)
    y_only: bool = False  # emit the network's Y output instead of RGB
    overlap: bool = True  # decode and encode in threads beside the network (False: one thread, serial)
    queue_size: int = 4  # frames between stages (bounds the memory the overlap adds)
    scene_cuts: SceneCuts = field(default_factory=SceneCuts)  # where windows are clamped besides the ends
    done: int = 0  # first frames already complete in the work folder (--resume): no network for them


def _tiled(runner: Runner, window: np.ndarray, tile: int, overlap: int, scale: int) -> np.ndarray:
    """Runs the window tile by tile; each tile sees ``overlap`` pixels of context on every side and
    contributes its centre only."""
    _, c, _, h, w = window.shape
    core = tile - 2 * overlap
    if core < 1:
        raise D3DError(f"--tile {tile} leaves no core with --tile-overlap {overlap}: use tile > 2*overlap")
    out = np.zeros((c, h * scale, w * scale), dtype=np.float32)
    for y0 in range(0, h, core):
        for x0 in range(0, w, core):
            y1, x1 = min(y0 + core, h), min(x0 + core, w)
            cy0, cx0 = max(0, y0 - overlap), max(0, x0 - overlap)
            cy1, cx1 = min(h, y1 + overlap), min(w, x1 + overlap)
            res = runner.infer(window[..., cy0:cy1, cx0:cx1])[0]
            oy, ox = (y0 - cy0) * scale, (x0 - cx0) * scale
            out[:, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = res[
                :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
    return out


def _network(items: Iterable[InFrame | object], runner: Runner, opts: UpscaleOptions, clock: list[float]):
    """The network stage: yields ``(InFrame, y_sr)`` in frame order, and other items (packets) as they
    come. ``clock[0]`` accumulates the seconds spent in the network."""
    cfg = runner.config
    if cfg.in_channels != 1:
        raise D3DError(f"the video pipeline feeds the Y channel: the model has {cfg.in_channels} input channels")
    stream = getattr(runner, "stream_frames", None)
    if stream is not None:  # the runner keeps the ring itself (a server: d3d.runtime.backends.triton)
        yield from stream(items, opts, clock)
        return
    t, scale = cfg.frames, cfg.scale
    plan = WindowPlan(t)
    ring: dict[int, InFrame] = {}  # slot -> frame it holds

    def emit(w: Window):
        i = w.index
        if i < opts.done:  # kept in the work folder: the sink restores it (its frames still fill the ring)
            return ring[i % t], None
        probes.reached(f"network {i}")
        t0 = time.perf_counter()
        if opts.tile:
            window = np.stack([ring[s].y for s in w.slots], axis=1)[None]
            y_sr = _tiled(runner, window, opts.tile, opts.tile_overlap, scale)
        else:
            y_sr = runner.run(w.slots)
        clock[0] += time.perf_counter() - t0
        return ring[i % t], y_sr

    for item in items:
        if not isinstance(item, InFrame):
            yield item
            continue
        before, slot, after = plan.push(item.cut)
        for w in before:
            yield emit(w)
        ring[slot] = item
        if not opts.tile:  # tiles are cut from the host ring instead
            runner.put(slot, item.y)
        for w in after:
            yield emit(w)
    for w in plan.end():
        yield emit(w)


def _inputs(source: FrameSource, opts: UpscaleOptions, tracker: CutTracker) -> Iterator[InFrame | object]:
    """The decoder side: each decoded frame converted for the network and flagged where it starts a
    shot; other streams' packets pass through."""
    pf = source.plane_format
    for e in source.events():
        if not isinstance(e, RawFrame):
            yield e
            continue
        rgb = None
        if tracker.needs_pixels:  # the detector sees the RGB frame `d3d prepare` reads, before --downscale
            rgb = e.image if isinstance(e.image, np.ndarray) else e.image.to_ndarray(format="rgb24")
            if pf is None:
                e.image = rgb  # the RGB route would convert it again
        frame = prepare(e, pf, opts.downscale)
        frame.cut = tracker.observe(rgb)
        yield frame


def upscale_stream(
    source: FrameSource, runner: Runner, opts: UpscaleOptions
) -> Iterator[tuple[int, np.ndarray, OutFrame]]:
    """Serially, ``(index, y_sr [C, sH, sW] float32, output frame)`` in order (other streams skipped)."""
    pf = source.plane_format
    items = (e for e in _inputs(source, opts, opts.scene_cuts.tracker(source.start)) if isinstance(e, InFrame))
    for frame, y_sr in _network(items, runner, opts, [0.0]):
        yield frame.index, y_sr, colour.finish(y_sr, frame, pf, opts, runner.config.scale)
