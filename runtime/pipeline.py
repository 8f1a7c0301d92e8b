"""Streaming video super-resolution: decode each frame once, keep only the window, write atomically.

Frame i is upscaled from frames i-h .. i+h (h = frames // 2), indices clamped at the ends as in the
seed and at scene cuts (:mod:`d3d.runtime.scenes`). Y goes through the network; chroma is upscaled
bicubically. Y'CbCr video is worked on in its decoded planes with its own colour tags and bit depth
(:mod:`d3d.runtime.video`); RGB sources take the seed's BT.601 conversion. Memory is bounded by the
window, not by the video's length.

Three stages overlap (:func:`run_upscale`): a decoder thread (demux, decode, convert to the network's Y),
the network in the calling thread, and a writer thread (chroma upscale, conversion to code values,
encode, mux, stream copy), joined by small bounded queues. The calling thread only waits in short
slices, so SIGINT/SIGTERM reach it promptly; every stage stops at its next queue operation and the
output is aborted (no output left behind; a resumable run's completed frames stay in its work folder,
:mod:`d3d.runtime.resume`).
"""

from __future__ import annotations

import queue
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from d3d import probes
from d3d.atomic import AtomicDir, AtomicFile
from d3d.color import rgb_to_ycbcr, ycbcr_to_rgb
from d3d.errors import D3DError, reason
from d3d.outputs import check_target, write_manifest
from d3d.runtime.backends.base import Runner, peak_rss_mb
from d3d.runtime.scenes import CutTracker, SceneCuts, Window, WindowPlan
from d3d.runtime.video import (
    ENCODERS,
    Copy,
    PlaneFormat,
    is_pipe,
    luma_to_net,
    make_frame,
    net_to_luma,
    open_pipe_input,
    open_pipe_output,
    plan_copies,
    plane_format,
    read_planes,
    seconds,
    supported_codecs,
    to_codes,
)

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


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


# --- Sources -------------------------------------------------------------------------------------


class FrameSource:
    """Frames in order, every one of the first frame's size. Subclasses give :meth:`frames` (RGB) or
    :meth:`events` (decoded frames and packets of streams to copy)."""

    path: Path
    fps: Fraction = Fraction(25)
    time_base: Fraction | None = None
    total: int | None = None
    size: tuple[int, int] | None = None  # (height, width) of the frames, known before decoding
    start: int = 0  # input index of the first frame read (--start)
    first_name: str = ""  # what the summary names: first and last file (or frame) read
    last_name: str = ""
    plane_format: PlaneFormat | None = None  # Y'CbCr planes as decoded; None: the seed's RGB route

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover - interface
        """``(index, rgb uint8 [H, W, 3])``."""
        raise NotImplementedError

    def events(self) -> Iterator[RawFrame | object]:
        """Decoded frames (:class:`RawFrame`) and, interleaved, packets of other streams."""
        tb = 1 / self.fps
        for n, (i, rgb) in enumerate(self.frames()):
            yield RawFrame(i, rgb, n, tb)

    def close(self) -> None:
        return None


class VideoSource(FrameSource):
    """A video file, or a y4m stream on stdin (``-``). Opened once; the first frame is decoded here, so
    its pixel format, colour tags and rotation are known before any output is made."""

    def __init__(self, path: Path, start: int = 0, max_frames: int | None = None) -> None:
        import av

        self.path, self.start, self.max_frames = path, start, max_frames
        self.pipe = is_pipe(path)
        try:
            self.container = open_pipe_input() if self.pipe else av.open(str(path))
        except av.error.FFmpegError as exc:
            raise D3DError(
                f"{path}: not a readable video ({reason(exc)}): expected a video file FFmpeg decodes "
                "(.mp4, .mkv, ...), a folder of frames, or - for a y4m stream"
            ) from exc
        c = self.container
        if not c.streams.video:
            c.close()
            raise D3DError(f"{path}: has no video stream")
        s = self.stream = c.streams.video[0]
        self.fps = Fraction(s.average_rate) if s.average_rate else Fraction(25)
        self.time_base = Fraction(s.time_base) if s.time_base else 1 / self.fps
        self.declared = s.frames or None
        if s.codec_context.height and s.codec_context.width:
            self.size = (s.codec_context.height, s.codec_context.width)
        if self.declared is not None:
            n = max(0, self.declared - start)
            self.total = min(n, max_frames) if max_frames is not None else n
        self.first_name = f"{'stdin' if self.pipe else path.name} frame {start}"
        self.metadata = dict(c.metadata)
        self.stream_metadata = dict(s.metadata)
        try:
            self.chapters = list(c.chapters())
        except (AttributeError, av.error.FFmpegError):
            self.chapters = []
        self.rotation = 0
        self.busy = False
        self._events = self._demux()
        self._held: list = []
        for event in self._events:  # peek at the first frame (packets before it are kept for later)
            self._held.append(event)
            if isinstance(event, RawFrame):
                self.plane_format = plane_format(event.image)
                self.rotation = round(getattr(event.image, "rotation", 0) or 0)
                break
        else:
            raise D3DError(f"{path}: no frames decoded")

    def events(self) -> Iterator[RawFrame | object]:
        while self._held:
            yield self._held.pop(0)
        yield from self._events

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        for e in self.events():
            if isinstance(e, RawFrame):
                yield e.index, e.image.to_ndarray(format="rgb24")

    def _demux(self) -> Iterator[RawFrame | object]:
        """Frames from ``start`` on (``max_frames`` of them) and the other streams' packets. With a
        start or a frame limit, copied packets are kept to the frames' time span (at packet
        granularity) and every timestamp is shifted so the first frame is at its start time."""
        import av

        vidx, tb = self.stream.index, self.time_base
        shift: float | None = None if self.start > 0 else 0.0
        held: list = []  # packets seen before the first kept frame fixed the shift
        t_end: float | None = None  # end of the last kept frame, once the limit is reached
        count, index, size = 0, -1, None

        def shifted(packet):
            if shift:
                ticks = round(shift / packet.time_base)
                if packet.pts is not None:
                    packet.pts -= ticks
                if packet.dts is not None:
                    packet.dts -= ticks
            return packet

        try:
            for packet in self.container.demux():
                if packet.stream.index != vidx:
                    if packet.dts is None and packet.pts is None:
                        continue  # a flush packet
                    t = seconds(packet.pts if packet.pts is not None else packet.dts, packet.time_base) or 0.0
                    if t_end is not None and t >= t_end:
                        if t >= t_end + 1.0:
                            return
                        continue
                    if shift is None:
                        held.append(packet)
                    elif self.start == 0 or t >= shift:
                        yield shifted(packet)
                    continue
                if t_end is not None:
                    t = seconds(packet.pts, packet.time_base)
                    if t is None or t >= t_end + 1.0:
                        return
                    continue
                for frame in packet.decode():
                    index += 1
                    if index < self.start:
                        continue
                    if size is None:
                        size = (frame.height, frame.width)
                    elif (frame.height, frame.width) != size:
                        raise D3DError(
                            f"{self.path}: frame {index} is {frame.width}x{frame.height}, "
                            f"the first was {size[1]}x{size[0]}"
                        )
                    pts = frame.pts if frame.pts is not None else round(index / self.fps / tb)
                    if shift is None:
                        shift = float(pts * tb)
                        yield from (shifted(p) for p in held if seconds(p.pts or p.dts, p.time_base) >= shift)
                        held.clear()
                    count += 1
                    self.last_name = f"{'stdin' if self.pipe else self.path.name} frame {index}"
                    yield RawFrame(index, frame, pts - round(shift / tb) if shift else pts, tb)
                    if self.max_frames is not None and count >= self.max_frames:
                        dur = frame.duration or round(1 / self.fps / tb)
                        t_end = float((pts + dur) * tb)
                        break
        except av.error.FFmpegError as exc:
            raise D3DError(f"{self.path}: frame {index + 1}: cannot decode ({reason(exc)}): corrupt video") from exc
        # A truncated file often ends without a decoder error: compare with the declared length.
        if self.total is not None and count < self.total and t_end is None:
            raise D3DError(
                f"{self.path}: truncated or corrupt: decoded {count} of {self.total} frames "
                f"(stopped after frame {index})"
            )
        if count == 0 and self.start > 0:
            raise D3DError(
                f"{self.path}: --start {self.start} is past the end: the video has {index + 1} frames (0 to {index})"
            )

    def close(self) -> None:
        if not self.busy:  # a decoder thread still blocked on a pipe owns the container
            self.container.close()


class FolderSource(FrameSource):
    def __init__(self, path: Path, start: int = 0, max_frames: int | None = None) -> None:
        self.path, self.start = path, start
        try:
            files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key)
        except OSError as exc:
            raise D3DError(f"{path}: cannot read the frame folder ({exc.strerror})") from None
        if not files:
            raise D3DError(f"{path}: no image frames ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
        if start >= len(files):
            raise D3DError(
                f"{path}: --start {start} is past the end: the folder has {len(files)} frames (0 to {len(files) - 1})"
            )
        files = files[start:]
        self.files = files[:max_frames] if max_frames is not None else files
        self.total = len(self.files)
        self.first_name, self.last_name = self.files[0].name, self.files[-1].name
        self.size = _image_size(self.files[0])

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        import av

        size = None
        for index, f in enumerate(self.files):
            try:
                with av.open(str(f)) as c:
                    rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
            except (av.error.FFmpegError, StopIteration, OSError) as exc:
                raise D3DError(
                    f"{f}: frame {index}: not a readable image (corrupt, truncated or not an image file)"
                ) from exc
            if size is None:
                size = rgb.shape[:2]
            elif rgb.shape[:2] != size:
                raise D3DError(
                    f"{f}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame is {size[1]}x{size[0]}"
                )
            yield index, rgb


def natural_key(path: Path) -> list:
    """Sort key reading digit runs as numbers: ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _image_size(path: Path) -> tuple[int, int] | None:
    import av

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0].codec_context
            return (s.height, s.width) if s.height and s.width else None
    except (av.error.FFmpegError, IndexError, OSError):
        return None  # reported with its frame number when the frame is read


def open_source(path: Path, start: int = 0, max_frames: int | None = None) -> FrameSource:
    """A frame folder, a video file, or ``-``: a y4m stream on stdin."""
    if is_pipe(path):
        return VideoSource(path, start, max_frames)
    if path.is_dir():
        return FolderSource(path, start, max_frames)
    if not path.exists():
        raise D3DError(f"{path}: no such file or folder")
    return VideoSource(path, start, max_frames)


def read_window_y(frames: int, size: tuple[int, int], clip: str = "bikes", start: int = 0) -> np.ndarray:
    """``[frames, h, w]`` float32 Y (seed's BT.601 in [0, 1]) of a centre crop of a sample clip."""
    from d3d.samples import sample_clip

    path = sample_clip(clip)
    source = VideoSource(path, start, frames)
    try:
        rgb = [f for _, f in source.frames()]
    finally:
        source.close()
    x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255
    h, w = size
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    if top < 0 or left < 0:
        raise D3DError(f"{path}: frames are {x.shape[3]}x{x.shape[2]}, smaller than the {w}x{h} crop")
    return rgb_to_ycbcr(x[:, :, top : top + h, left : left + w])[:, 0].numpy().astype(np.float32)


# --- Sinks ---------------------------------------------------------------------------------------


class FrameSink:
    """Writes to a temporary sibling and renames it on ``commit``: a failure leaves nothing behind.
    ``write``/``copy``/``finish`` may run in a writer thread; ``commit``/``abort`` in the caller's."""

    def write(self, frame: OutFrame | np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def copy(self, packet) -> None:
        """A packet of a copied stream (ignored by sinks that carry video only)."""
        return None

    def finish(self) -> None:
        """Flushes the encoder and closes the container (the file stays temporary)."""
        return None

    def commit(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class VideoSink(FrameSink):
    """A video file (libx264 by default, in the container the extension names) or, for ``-``, a y4m
    stream on stdout. Y'CbCr sources keep their layout, bit depth and colour tags; the streams in
    ``copies`` are stream-copied; chapters, metadata, rotation and timestamps are carried over."""

    def __init__(
        self,
        path: Path,
        source: FrameSource,
        size: tuple[int, int] | None,
        crf: int = 18,
        codec: str = "libx264",
        copies: Iterable[Copy] = (),
        tmp_dir: Path | None = None,
    ) -> None:
        import av

        self.pipe = is_pipe(path)
        self._file = None if self.pipe else AtomicFile(path, tmp_dir)
        self._closed = False
        try:
            self._container = open_pipe_output() if self.pipe else av.open(str(self._file.tmp), "w")
            self._setup(av, source, size, crf, codec, copies)
        except BaseException:
            self.abort()
            raise

    def _setup(self, av, source: FrameSource, size, crf: int, codec: str, copies: Iterable[Copy]) -> None:
        c, pf = self._container, source.plane_format
        if codec not in ENCODERS:
            raise D3DError(f"unknown --codec {codec!r}: use {', '.join(ENCODERS)}")
        name = "wrapped_avframe" if self.pipe else codec
        options = {"crf": str(crf)} if name in ("libx264", "libx265") else {}
        if name == "libx265":
            options["x265-params"] = "log-level=error"
        s = self._stream = c.add_stream(name, rate=source.fps, options=options)
        pix_fmt = pf.pix_fmt if pf is not None else "yuv420p"
        formats = {f.name for f in (s.codec_context.codec.video_formats or [])}
        if formats and pix_fmt not in formats and pix_fmt.startswith("yuvj"):
            pix_fmt = "yuv" + pix_fmt[4:]  # same layout; the full range travels in the colour tags
        if formats and pix_fmt not in formats:
            raise D3DError(f"--codec {codec} cannot write {pix_fmt}: choose another --codec")
        s.pix_fmt = pix_fmt
        self._pix_fmt = pix_fmt
        if size is not None:
            s.height, s.width = size
        if source.time_base is not None:
            s.codec_context.time_base = source.time_base  # each frame keeps its own timestamp (VFR too)
        if pf is not None:
            cc = s.codec_context
            cc.colorspace, cc.color_range = pf.colorspace, pf.color_range
            cc.color_primaries, cc.color_trc = pf.color_primaries, pf.color_trc
        self._map: dict[int, object] = {}
        self._pending: list = []  # copied packets that arrive before the first video frame
        self._started = size is not None
        if self.pipe or not isinstance(source, VideoSource):
            return
        if source.rotation:
            s.set_display_rotation(source.rotation)
        s.metadata.update({k: v for k, v in source.stream_metadata.items() if k not in ("encoder", "duration")})
        c.metadata.update({k: v for k, v in source.metadata.items() if k not in ("encoder", "duration")})
        if source.chapters:
            c.set_chapters(source.chapters)
        for copy in copies:
            in_stream = source.container.streams[copy.index]
            out = c.add_stream_from_template(in_stream)
            out.metadata.update(in_stream.metadata)
            try:
                out.disposition = in_stream.disposition
            except (AttributeError, TypeError, ValueError):
                pass
            self._map[copy.index] = out

    def write(self, frame: OutFrame | np.ndarray) -> None:
        import av

        if isinstance(frame, np.ndarray):
            frame = OutFrame(0, rgb=frame)
        if not self._started:
            self._stream.width, self._stream.height = frame.size
            self._started = True
        if frame.planes is not None:
            vf = make_frame(frame.planes, frame.pf)
            if vf.format.name != self._pix_fmt:
                vf = vf.reformat(format=self._pix_fmt)
        else:
            vf = av.VideoFrame.from_ndarray(frame.rgb, format="rgb24")
        if frame.pts is not None and frame.time_base is not None:
            vf.pts, vf.time_base = frame.pts, frame.time_base
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        if self._pending:
            pending, self._pending = self._pending, []
            for p in pending:
                self.copy(p)

    def copy(self, packet) -> None:
        out = self._map.get(packet.stream.index)
        if out is None:
            return
        if not self._started:
            self._pending.append(packet)
            return
        packet.stream = out
        self._container.mux(packet)

    def finish(self) -> None:
        if self._closed:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        for p in self._pending:  # only where no frame was written
            out = self._map.get(p.stream.index)
            if out is not None:
                p.stream = out
                self._container.mux(p)
        self._closed = True
        self._container.close()

    def commit(self) -> None:
        self.finish()
        if self._file is not None:
            self._file.commit()
        else:
            sys.stdout.flush()

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except Exception:
                pass
        if self._file is not None:
            self._file.abort()


class PngFolderSink(FrameSink):
    """``frame_000000.png`` ...: RGB, or with ``y16`` the network's Y output as 16-bit grayscale."""

    def __init__(self, path: Path, y16: bool = False) -> None:
        self.y16, self.count = y16, 0
        self._dir = AtomicDir(path)
        self.tmp = self._dir.tmp
        self.names: list[str] = []

    def write(self, frame: OutFrame | np.ndarray) -> None:
        image = frame if isinstance(frame, np.ndarray) else frame.image()
        name = f"frame_{self.count:06d}.png"
        write_png_frame(self.tmp / name, image, self.y16)
        self.names.append(name)
        self.count += 1

    def commit(self) -> None:
        write_manifest(self.tmp, self.names)  # proof of ownership for a later --overwrite
        self._dir.commit()

    def abort(self) -> None:
        self._dir.abort()


def write_png_frame(path: Path, image: np.ndarray, y16: bool = False) -> None:
    """One PNG: RGB uint8 ``[H, W, 3]``, or with ``y16`` a 16-bit grayscale ``[H, W]`` plane."""
    import av

    # PNG stores 16-bit samples big-endian; PyAV converts the native-endian frame on encode.
    fmt = "gray16le" if y16 else "rgb24"
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.height, stream.width = image.shape[:2]
        stream.pix_fmt = "gray16be" if y16 else "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format=fmt)):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def check_sink(path: Path, y16: bool = False, overwrite: bool = False, inputs: tuple[Path | None, ...] = ()) -> None:
    """The output policy (:mod:`d3d.outputs`) for a video file or a frame folder, before any work.
    ``-`` (stdout) is no file: nothing there can be lost."""
    if is_pipe(path):
        if y16:
            raise D3DError("--y-only writes 16-bit PNG frames: give a folder as output, not - (stdout)")
        return
    suffix = path.suffix.lower()
    video = suffix in VIDEO_EXTENSIONS
    if suffix and not video and not path.is_dir():  # an existing folder keeps its name, whatever it is
        raise D3DError(
            f"{path}: unknown output type {suffix!r}: give a video file ({', '.join(sorted(VIDEO_EXTENSIONS))}), "
            "a folder name without an extension for PNG frames, or - for a y4m stream on stdout"
        )
    if video and y16:
        raise D3DError("--y-only writes 16-bit PNG frames: give a folder as output, not a video file")
    inputs = tuple(i for i in inputs if not is_pipe(i))
    check_target(path, inputs=inputs, overwrite=overwrite, folder=not video, what="output")


def plan_streams(path: Path, source: FrameSource, drop_unsupported: bool = False) -> list[Copy]:
    """The streams of ``source`` to copy into ``path``; refuses (one line) what its container cannot
    carry unless ``drop_unsupported``. Run before any slow work."""
    if not isinstance(source, VideoSource):
        return []
    video_file = not is_pipe(path) and path.suffix.lower() in VIDEO_EXTENSIONS
    supported = supported_codecs(path) if video_file else None
    return plan_copies(source.container, source.stream.index, path, supported, drop_unsupported)


def open_sink(
    path: Path,
    source: FrameSource,
    y16: bool = False,
    overwrite: bool = False,
    crf: int = 18,
    inputs: tuple[Path | None, ...] = (),
    codec: str = "libx264",
    copies: Iterable[Copy] = (),
    size: tuple[int, int] | None = None,
    tmp_dir: Path | None = None,
) -> FrameSink:
    """The sink for ``path``: a video file, ``-`` (y4m on stdout) or a PNG folder. ``size``: the output
    (height, width) where known; ``tmp_dir``: where a video file is encoded until its commit (default:
    beside ``path``)."""
    check_sink(path, y16, overwrite, inputs)
    try:
        if is_pipe(path) or path.suffix.lower() in VIDEO_EXTENSIONS:
            return VideoSink(path, source, size, crf, codec, copies, tmp_dir)
        return PngFolderSink(path, y16)
    except OSError as exc:
        raise D3DError(f"{path}: cannot write ({exc.strerror or exc})") from None


# --- Pipeline ------------------------------------------------------------------------------------


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


def _resize(x: np.ndarray, size: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """Bicubic resize of ``[C, h, w]`` float32 planes (torch's kernel, a = -0.75, half-pixel centres)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    return F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=antialias)[0].numpy()


def _to_ycbcr(rgb: np.ndarray, downscale: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
    if downscale > 1:
        h, w = x.shape[1] // downscale, x.shape[2] // downscale
        x = F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0].clamp_(0, 1)
    ycc = rgb_to_ycbcr(x)
    return ycc[:1].numpy(), ycc[1:].numpy()


def prepare(raw: RawFrame, pf: PlaneFormat | None, downscale: int = 1) -> InFrame:
    """Decoder-side conversion: the network's Y, and the chroma kept for the output."""
    image = raw.image
    if isinstance(image, np.ndarray) or pf is None:
        rgb = image if isinstance(image, np.ndarray) else image.to_ndarray(format="rgb24")
        y, cbcr = _to_ycbcr(rgb, downscale)
        return InFrame(raw.index, y, cbcr=cbcr, pts=raw.pts, time_base=raw.time_base)
    luma, cb, cr = read_planes(image, pf)
    y = luma_to_net(luma, pf)[None]
    chroma = np.stack([cb, cr]).astype(np.float32)
    if downscale > 1:
        h, w = luma.shape[0] // downscale, luma.shape[1] // downscale
        y = np.clip(_resize(y, (h, w), antialias=True), 0, None)
        chroma = _resize(chroma, pf.chroma_size(h, w), antialias=True)
    return InFrame(raw.index, np.ascontiguousarray(y, dtype=np.float32), planes=chroma, pts=raw.pts,
                   time_base=raw.time_base)  # fmt: skip


def finish(
    y_sr: np.ndarray | None, frame: InFrame, pf: PlaneFormat | None, opts: UpscaleOptions, scale: int
) -> OutFrame:
    """Writer-side conversion of the network's Y and the frame's chroma into an output frame; with no
    ``y_sr`` (a frame completed before a resume) an empty one, which the sink fills from its work folder."""
    out = OutFrame(frame.index, frame.pts, frame.time_base)
    if y_sr is None:
        return out
    if opts.y_only:
        out.y16 = (np.clip(y_sr[0], 0, 1) * 65535 + 0.5).astype(np.uint16)
        return out
    h, w = y_sr.shape[-2:]
    if frame.planes is not None:
        chroma = _resize(frame.planes, pf.chroma_size(h, w))
        out.planes, out.pf = [net_to_luma(y_sr[0], pf), to_codes(chroma[0], pf), to_codes(chroma[1], pf)], pf
        return out
    cbcr_up = F.interpolate(torch.from_numpy(frame.cbcr)[None], size=(h, w), mode="bicubic", align_corners=False)[0]
    rgb = ycbcr_to_rgb(torch.cat([torch.from_numpy(y_sr), cbcr_up])).clamp_(0, 1)
    out.rgb = (rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return out


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
        yield frame.index, y_sr, finish(y_sr, frame, pf, opts, runner.config.scale)


# --- Running the stages --------------------------------------------------------------------------

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
                    out = finish(item[1], item[0], pf, opts, scale)
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
                    out = finish(item[1], item[0], pf, opts, scale)
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


# --- Measuring the pipeline (d3d bench) ----------------------------------------------------------


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
                    sink.write(finish(_resize(frame.y, (h * scale, w * scale)), frame, pf, opts, scale))
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        return (source.total or 0) / (time.perf_counter() - t0)
    finally:
        source.close()
