"""Frame sources of the video pipeline: a video file or y4m stream (:class:`VideoSource`, demuxed with
the packets of other streams to copy), a folder of images (:class:`FolderSource`), and
:func:`read_window_y`, the Y of a sample clip's window that parity checks and calibration read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from d3d.color import rgb_to_ycbcr
from d3d.errors import D3DError, reason
from d3d.runtime.frames import RawFrame
from d3d.runtime.video import (
    PlaneFormat,
    is_pipe,
    open_pipe_input,
    plane_format,
    seconds,
)

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


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
