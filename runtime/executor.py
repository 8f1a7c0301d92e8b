"""Running the video pipeline's stages (decode each frame once, keep only the window, write atomically).

Three stages overlap (:func:`run_upscale`): a decoder thread (demux, decode, convert to the network's Y),
the network in the calling thread, and a writer thread (chroma upscale, conversion to code values,
encode, mux, stream copy), joined by small bounded queues. The calling thread only waits in short
slices, so SIGINT/SIGTERM reach it promptly; every stage stops at its next queue operation and the
output is aborted (no output left behind; a resumable run's completed frames stay in its work folder,
:mod:`d3d.runtime.resume`).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from d3d.errors import D3DError
from d3d.runtime import colour
from d3d.runtime.backends.base import Runner, peak_rss_mb
from d3d.runtime.frames import OutFrame
from d3d.runtime.sinks import FrameSink
from d3d.runtime.sources import FrameSource, VideoSource
from d3d.runtime.windows import UpscaleOptions, _inputs, _network


@dataclass
class Summary:
    frames: int = 0
    seconds: float = 0.0
    backend: str = ""
    precision: str = ""
    weights: str = ""
    first_file: str = ""
    last_file: str = ""
    input_size: tuple[int, int] = (0, 0)
    output_size: tuple[int, int] = (0, 0)
    peak_rss_mb: float = 0.0
    network_seconds: float = 0.0  # time spent in the network alone (the rest overlaps or is I/O)
    colour: str = ""  # the planes worked on, or the seed's RGB route
    scene_cuts: str = ""  # how cuts were found (detected, off, from a file)
    cuts: list[int] = field(default_factory=list)  # input frame indices that started a shot in this run
    resumed: int = 0  # frames restored from an interrupted run's work folder (no network time spent)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def network_fps(self) -> float:
        ran = self.frames - self.resumed
        return ran / self.network_seconds if self.network_seconds > 0 else 0.0


WAIT_SLICE_S = 0.05  # how often a waiting thread looks at the stop flag (and the main thread at signals)
_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Stopped(Exception):
    """Raised inside a stage thread when the pipeline is stopping."""


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            q.put(item, timeout=WAIT_SLICE_S)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event, alive: threading.Thread | None = None):
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return q.get(timeout=WAIT_SLICE_S)
        except queue.Empty:
            if alive is not None and not alive.is_alive() and q.empty():
                raise _Stopped from None


def run_upscale(source: FrameSource, runner: Runner, sink: FrameSink, opts: UpscaleOptions, progress=None) -> Summary:
    """Streams ``source`` through ``runner`` into ``sink``; on any failure or interrupt every stage
    stops and the sink is aborted (no output left behind; :class:`~d3d.runtime.resume.ResumableSink` keeps
    its completed frames)."""
    summary = Summary(backend=runner.describe(), precision=runner.precision)
    pf = source.plane_format
    summary.colour = pf.describe() if pf is not None else "RGB (the seed's BT.601 conversion)"
    scale = runner.config.scale
    clock = [0.0]
    tracker = opts.scene_cuts.tracker(source.start)
    start = time.perf_counter()

    def tick():
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{summary.frames / (time.perf_counter() - start):.2f} frames/s")

    def written(out: OutFrame) -> None:
        if summary.frames == 0:
            summary.output_size = out.size
            summary.input_size = (out.size[0] // scale, out.size[1] // scale)
        summary.frames += 1

    try:
        if opts.overlap:
            _run_overlapped(source, runner, sink, opts, clock, written, tick, tracker)
        else:
            for item in _network(_inputs(source, opts, tracker), runner, opts, clock):
                if isinstance(item, tuple):
                    out = colour.finish(item[1], item[0], pf, opts, scale)
                    sink.write(out)
                    written(out)
                    tick()
                else:
                    sink.copy(item)
            sink.finish()
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    summary.seconds = time.perf_counter() - start
    summary.network_seconds = clock[0]
    summary.resumed = min(opts.done, summary.frames)
    summary.peak_rss_mb = peak_rss_mb()
    summary.first_file, summary.last_file = source.first_name, source.last_name
    summary.scene_cuts, summary.cuts = opts.scene_cuts.describe(), list(tracker.cuts)
    return summary


def _run_overlapped(source, runner, sink, opts, clock, written, tick, tracker) -> None:
    """Decoder thread -> network (this thread) -> writer thread, joined by bounded queues."""
    pf, scale = source.plane_format, runner.config.scale
    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=opts.queue_size * 4)  # packets travel here too
    q_out: queue.Queue = queue.Queue(maxsize=opts.queue_size * 4)
    failure: list[BaseException] = []
    # The writer's end, as an event: after a join interrupted by a signal, Python 3.11 can report a
    # still-running thread as not alive (its lock released by the interrupted join), and the sink would
    # then be aborted under the writer's feet.
    writer_done = threading.Event()

    def decode() -> None:
        try:
            for item in _inputs(source, opts, tracker):
                _put(q_in, item, stop)
            _put(q_in, _END, stop)
        except _Stopped:
            pass
        except BaseException as exc:
            try:
                _put(q_in, _Failed(exc), stop)
            except _Stopped:
                pass

    def write() -> None:
        try:
            _write()
        finally:
            writer_done.set()

    def _write() -> None:
        try:
            while True:
                item = _get(q_out, stop)
                if item is _END:
                    sink.finish()
                    return
                if isinstance(item, tuple):
                    out = colour.finish(item[1], item[0], pf, opts, scale)
                    sink.write(out)
                    written(out)
                else:
                    sink.copy(item)
        except _Stopped:
            pass
        except BaseException as exc:
            failure.append(exc)
            stop.set()

    decoder = threading.Thread(target=decode, name="d3d-decode", daemon=True)
    writer = threading.Thread(target=write, name="d3d-write", daemon=True)

    def inputs():
        while True:
            item = _get(q_in, stop, decoder)
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    decoder.start()
    writer.start()
    try:
        try:
            for item in _network(inputs(), runner, opts, clock):
                _put(q_out, item, stop)
                if isinstance(item, tuple):
                    tick()
            _put(q_out, _END, stop)
            while not writer_done.wait(WAIT_SLICE_S):
                pass
        except _Stopped:
            pass
        if failure:
            raise failure[0]
        if stop.is_set() or not writer_done.is_set():
            raise D3DError("the pipeline stopped before the last frame was written")
    finally:
        stop.set()
        # The writer is joined before the caller aborts the sink (it owns the container until then);
        # the decoder may wait on a pipe, holds no output, and is left to end with the process.
        deadline = time.perf_counter() + 5.0
        while not writer_done.is_set() and time.perf_counter() < deadline:
            writer_done.wait(WAIT_SLICE_S)
        decoder.join(0.5)
        if decoder.is_alive() and isinstance(source, VideoSource):
            source.busy = True
