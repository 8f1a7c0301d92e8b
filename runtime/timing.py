"""Measuring the video pipeline for ``d3d bench`` (imported by the bench command only): a synthetic clip,
the whole pipeline with or without the overlap, the network alone and the I/O alone."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from d3d.runtime import colour
from d3d.runtime.backends.base import Runner
from d3d.runtime.colour import _resize, prepare
from d3d.runtime.executor import Summary, run_upscale
from d3d.runtime.frames import InFrame, RawFrame
from d3d.runtime.sinks import VideoSink
from d3d.runtime.sources import open_source
from d3d.runtime.video import (
    PlaneFormat,
    make_frame,
)
from d3d.runtime.windows import UpscaleOptions, _inputs, _network


def synthetic_clip(path: Path, h: int, w: int, frames: int, fps: int = 25) -> Path:
    """An H.264 clip (yuv420p) of ``frames`` moving ``w`` x ``h`` frames: the input of a pipeline benchmark."""
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(16, 236, (h + frames, w + frames), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "18"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            y = base[i : i + h, i : i + w]
            cb = np.full(((h + 1) // 2, (w + 1) // 2), 128, np.uint8)
            pf = PlaneFormat("yuv420p", 8, (1, 1), False)
            frame = make_frame([y, cb, cb], pf)
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def time_pipeline(runner: Runner, clip: Path, out: Path, overlap: bool) -> Summary:
    """Upscales ``clip`` into ``out`` (H.264) with or without the overlapping threads; the summary has the
    pipeline's frames/s and the network's own."""
    source = open_source(clip)
    try:
        sink = VideoSink(out, source, None)
        return run_upscale(source, runner, sink, UpscaleOptions(overlap=overlap))
    finally:
        source.close()


def time_network(runner: Runner, clip: Path) -> float:
    """Frames/s of the network alone on ``clip``'s frames: every frame decoded and converted first, then
    only the network stage timed (the reference the pipeline's frames/s is compared with)."""
    source = open_source(clip)
    try:
        opts = UpscaleOptions()
        frames = [e for e in _inputs(source, opts, opts.scene_cuts.tracker(source.start)) if isinstance(e, InFrame)]
    finally:
        source.close()
    clock = [0.0]
    for _ in _network(frames, runner, UpscaleOptions(), clock):
        pass
    return len(frames) / clock[0] if clock[0] > 0 else 0.0


def time_io(clip: Path, out: Path, scale: int = 4) -> float:
    """Frames/s of the pipeline's I/O alone on ``clip``: decode, conversion, chroma upscale, encode and
    mux, with a bicubic upscale of Y standing in for the network (the work the overlap hides)."""
    source = open_source(clip)
    try:
        pf, opts = source.plane_format, UpscaleOptions()
        t0 = time.perf_counter()
        sink = VideoSink(out, source, None)
        try:
            for e in source.events():
                if isinstance(e, RawFrame):
                    frame = prepare(e, pf)
                    h, w = frame.y.shape[-2:]
                    sink.write(colour.finish(_resize(frame.y, (h * scale, w * scale)), frame, pf, opts, scale))
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        return (source.total or 0) / (time.perf_counter() - t0)
    finally:
        source.close()
