"""Streaming video super-resolution: decode each frame once, keep only the window, write atomically.

Frame i is upscaled from frames i-h .. i+h (h = frames // 2), indices clamped at the ends as in the
seed. Y goes through the network; Cb/Cr are upscaled bicubically (the seed's handling). Memory is
bounded by the window, not by the video's length.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from d3d.atomic import AtomicDir, AtomicFile
from d3d.color import rgb_to_ycbcr, ycbcr_to_rgb
from d3d.errors import D3DError
from d3d.outputs import check_target, write_manifest
from d3d.runtime.backends.base import Runner, peak_rss_mb

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# --- Sources -------------------------------------------------------------------------------------


class FrameSource:
    """Yields ``(index, rgb uint8 [H, W, 3])``; every frame must have the first frame's size."""

    path: Path
    fps: Fraction = Fraction(25)
    total: int | None = None
    size: tuple[int, int] | None = None  # (height, width) of the frames, known before decoding
    first_name: str = ""  # what the summary names: first and last file (or frame) read
    last_name: str = ""

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover - interface
        raise NotImplementedError


class VideoSource(FrameSource):
    def __init__(self, path: Path, start: int = 0, max_frames: int | None = None) -> None:
        import av

        self.path, self.start, self.max_frames = path, start, max_frames
        try:
            with av.open(str(path)) as c:
                if not c.streams.video:
                    raise D3DError(f"{path}: has no video stream")
                s = c.streams.video[0]
                self.fps = Fraction(s.average_rate) if s.average_rate else Fraction(25)
                self.declared = s.frames or None
                if s.codec_context.height and s.codec_context.width:
                    self.size = (s.codec_context.height, s.codec_context.width)
        except av.error.FFmpegError as exc:
            raise D3DError(f"{path}: cannot open video ({exc})") from None
        if self.declared is not None:
            n = max(0, self.declared - start)
            self.total = min(n, max_frames) if max_frames is not None else n
        self.first_name = f"{path.name} frame {start}"

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        import av

        count, index = 0, -1
        size = None
        try:
            with av.open(str(self.path)) as c:
                for index, frame in enumerate(c.decode(video=0)):
                    if index < self.start:
                        continue
                    if self.max_frames is not None and count >= self.max_frames:
                        return
                    if size is None:
                        size = (frame.height, frame.width)
                    elif (frame.height, frame.width) != size:
                        raise D3DError(
                            f"{self.path}: frame {index} is {frame.width}x{frame.height}, "
                            f"the first was {size[1]}x{size[0]}"
                        )
                    count += 1
                    self.last_name = f"{self.path.name} frame {index}"
                    yield index, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise D3DError(f"{self.path}: frame {index + 1}: cannot decode ({exc})") from None
        # A truncated file often ends without a decoder error: compare with the declared length.
        wanted = self.total if self.total is not None else None
        if wanted is not None and count < wanted:
            raise D3DError(
                f"{self.path}: truncated or corrupt: decoded {count} of {wanted} frames (stopped after frame {index})"
            )
        if count == 0:
            raise D3DError(f"{self.path}: no frames decoded")


class FolderSource(FrameSource):
    def __init__(self, path: Path, start: int = 0, max_frames: int | None = None) -> None:
        self.path = path
        try:
            files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key)
        except OSError as exc:
            raise D3DError(f"{path}: cannot read the frame folder ({exc.strerror})") from None
        if not files:
            raise D3DError(f"{path}: no image frames ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
        files = files[start:]
        self.files = files[:max_frames] if max_frames is not None else files
        self.total = len(self.files)
        if not self.files:
            raise D3DError(f"{path}: --start {start} is past the last of its {len(files) + start} frames")
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
                raise D3DError(f"{f}: frame {index}: cannot read image ({exc})") from None
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
    if path.is_dir():
        return FolderSource(path, start, max_frames)
    if not path.exists():
        raise D3DError(f"{path}: no such file or folder")
    return VideoSource(path, start, max_frames)


def read_window_y(frames: int, size: tuple[int, int], clip: str = "bikes", start: int = 0) -> np.ndarray:
    """``[frames, h, w]`` float32 Y (seed's BT.601 in [0, 1]) of a centre crop of a sample clip."""
    from d3d.samples import sample_clip

    path = sample_clip(clip)
    rgb = [f for _, f in VideoSource(path, start, frames).frames()]
    x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255
    h, w = size
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    if top < 0 or left < 0:
        raise D3DError(f"{path}: frames are {x.shape[3]}x{x.shape[2]}, smaller than the {w}x{h} crop")
    return rgb_to_ycbcr(x[:, :, top : top + h, left : left + w])[:, 0].numpy().astype(np.float32)


# --- Sinks ---------------------------------------------------------------------------------------


class FrameSink:
    """Writes to a temporary sibling and renames it on ``commit``: a failure leaves nothing behind."""

    def write(self, frame: np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def commit(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class VideoSink(FrameSink):
    """H.264 (libx264, yuv420p) in the container the extension names."""

    def __init__(self, path: Path, fps: Fraction, crf: int = 18) -> None:
        import av

        self._file = AtomicFile(path)
        self._container = av.open(str(self._file.tmp), "w")
        self._stream = self._container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
        self._stream.pix_fmt = "yuv420p"
        self._started = False

    def write(self, frame: np.ndarray) -> None:
        import av

        if not self._started:
            self._stream.height, self._stream.width = frame.shape[:2]
            self._started = True
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def commit(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._file.commit()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:
            pass
        self._file.abort()


class PngFolderSink(FrameSink):
    """``frame_000000.png`` ...: RGB, or with ``y16`` the network's Y output as 16-bit grayscale."""

    def __init__(self, path: Path, y16: bool = False) -> None:
        self.y16, self.count = y16, 0
        self._dir = AtomicDir(path)
        self.tmp = self._dir.tmp
        self.names: list[str] = []

    def write(self, frame: np.ndarray) -> None:
        import av

        # PNG stores 16-bit samples big-endian; PyAV converts the native-endian frame on encode.
        fmt = "gray16le" if self.y16 else "rgb24"
        name = f"frame_{self.count:06d}.png"
        with av.open(str(self.tmp / name), "w", format="image2") as out:
            stream = out.add_stream("png", rate=1)
            stream.height, stream.width = frame.shape[:2]
            stream.pix_fmt = "gray16be" if self.y16 else "rgb24"
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format=fmt)):
                out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        self.names.append(name)
        self.count += 1

    def commit(self) -> None:
        write_manifest(self.tmp, self.names)  # proof of ownership for a later --overwrite
        self._dir.commit()

    def abort(self) -> None:
        self._dir.abort()


def check_sink(path: Path, y16: bool = False, overwrite: bool = False, inputs: tuple[Path | None, ...] = ()) -> None:
    """The output policy (:mod:`d3d.outputs`) for a video file or a frame folder, before any work."""
    video = path.suffix.lower() in VIDEO_EXTENSIONS
    if video and y16:
        raise D3DError("--y-only writes 16-bit PNG frames: give a folder as output, not a video file")
    check_target(path, inputs=inputs, overwrite=overwrite, folder=not video, what="output")


def open_sink(
    path: Path,
    fps: Fraction,
    y16: bool = False,
    overwrite: bool = False,
    crf: int = 18,
    inputs: tuple[Path | None, ...] = (),
) -> FrameSink:
    check_sink(path, y16, overwrite, inputs)
    try:
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return VideoSink(path, fps, crf)
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

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _to_ycbcr(rgb: np.ndarray, downscale: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
    if downscale > 1:
        h, w = x.shape[1] // downscale, x.shape[2] // downscale
        x = F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0].clamp_(0, 1)
    ycc = rgb_to_ycbcr(x)
    return ycc[:1].numpy(), ycc[1:].numpy()


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


def upscale_stream(
    source: FrameSource, runner: Runner, opts: UpscaleOptions
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yields ``(index, y_sr [C, sH, sW] float32, output frame)`` in order; the output frame is RGB
    uint8, or with ``y_only`` the clamped Y as uint16."""
    cfg = runner.config
    if cfg.in_channels != 1:
        raise D3DError(f"the video pipeline feeds the Y channel: the model has {cfg.in_channels} input channels")
    t, half, scale = cfg.frames, cfg.frames // 2, cfg.scale
    ring: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # slot -> (Y [1,H,W], CbCr [2,H,W])
    frame_ids: dict[int, int] = {}  # slot -> frame index it holds

    def emit(i: int, last: int):
        slots = [min(max(j, 0), last) % t for j in range(i - half, i + half + 1)]
        if opts.tile:
            window = np.stack([ring[s][0] for s in slots], axis=1)[None]
            y_sr = _tiled(runner, window, opts.tile, opts.tile_overlap, scale)
        else:
            y_sr = runner.run(slots)
        if opts.y_only:
            return i, y_sr, (np.clip(y_sr[0], 0, 1) * 65535 + 0.5).astype(np.uint16)
        cbcr = torch.from_numpy(ring[i % t][1])[None]
        cbcr_up = F.interpolate(cbcr, scale_factor=scale, mode="bicubic", align_corners=False)[0]
        rgb = ycbcr_to_rgb(torch.cat([torch.from_numpy(y_sr), cbcr_up])).clamp_(0, 1)
        return i, y_sr, (rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    next_out, n = 0, 0
    for n, (_, rgb) in enumerate(source.frames()):
        y, cbcr = _to_ycbcr(rgb, opts.downscale)
        slot = n % t
        ring[slot], frame_ids[slot] = (y, cbcr), n
        if not opts.tile:  # tiles are cut from the host ring instead
            runner.put(slot, y)
        while next_out + half <= n:
            yield emit(next_out, n)
            next_out += 1
    last = n
    while next_out <= last and frame_ids:
        yield emit(next_out, last)
        next_out += 1


def run_upscale(source: FrameSource, runner: Runner, sink: FrameSink, opts: UpscaleOptions, progress=None) -> Summary:
    """Drives :func:`upscale_stream` into ``sink``; on any failure the sink is aborted (nothing left)."""
    summary = Summary(backend=runner.describe(), precision=runner.precision)
    start = time.perf_counter()
    try:
        for _, y_sr, frame in upscale_stream(source, runner, opts):
            sink.write(frame)
            if summary.frames == 0:
                summary.output_size = (frame.shape[1], frame.shape[0])
                summary.input_size = (y_sr.shape[-1] // runner.config.scale, y_sr.shape[-2] // runner.config.scale)
            summary.frames += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix_str(f"{summary.frames / (time.perf_counter() - start):.2f} frames/s")
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    summary.seconds = time.perf_counter() - start
    summary.peak_rss_mb = peak_rss_mb()
    summary.first_file, summary.last_file = source.first_name, source.last_name
    return summary
