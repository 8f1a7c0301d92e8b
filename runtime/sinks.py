"""Frame sinks of the video pipeline: a video file or y4m stream (:class:`VideoSink`) and a PNG folder
(:class:`PngFolderSink`), each written to a temporary sibling and renamed on commit, and the output policy
checked before any work (:func:`check_sink`, :func:`plan_streams`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from d3d.atomic import AtomicDir, AtomicFile
from d3d.errors import D3DError
from d3d.outputs import check_target, write_manifest
from d3d.runtime.frames import OutFrame
from d3d.runtime.sources import VIDEO_EXTENSIONS, FrameSource, VideoSource
from d3d.runtime.video import (
    ENCODERS,
    Copy,
    is_pipe,
    make_frame,
    open_pipe_output,
    plan_copies,
    supported_codecs,
)


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
