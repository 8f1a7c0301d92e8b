"""Video I/O for the streaming pipeline: Y'CbCr planes as decoded, colour tags, stream copy, y4m pipes.

A Y'CbCr input is worked on in its own planes: the network's Y comes from the luma plane (code values
mapped onto the seed's Y scale, see :func:`luma_to_net`), chroma is upscaled bicubically in code
values, and the output is encoded with the input's pixel layout, bit depth (8 or 10) and colour tags
(matrix, range, primaries, transfer). No RGB round trip. RGB sources (PNG folders, RGB video) keep the
seed's BT.601 conversion (:mod:`d3d.color`).

Every other stream (audio, subtitles) is copied packet by packet into the output container, with the
chapters, the container's metadata and the video's rotation. Where the output container cannot carry
a stream, :func:`plan_copies` refuses in one line, or drops it where asked to.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from d3d.errors import D3DError, reason

logger = logging.getLogger(__name__)

PIPE = "-"  # input: a y4m stream on stdin; output: a y4m stream on stdout
Y4M = "yuv4mpegpipe"
# Working layouts by chroma subsampling (log2 x, log2 y); others are converted to 4:2:0.
_LAYOUTS = {(1, 1): "yuv420p", (1, 0): "yuv422p", (0, 0): "yuv444p"}
ENCODERS = ("libx264", "libx265", "ffv1")


def is_pipe(path: str | Path | None) -> bool:
    return path is not None and str(path) == PIPE


@dataclass(frozen=True)
class PlaneFormat:
    """How a Y'CbCr input is held while it is worked on: a planar layout of 8 or 10 bits, its chroma
    subsampling and the colour tags it carries (FFmpeg's enum values; 2 = unspecified)."""

    pix_fmt: str  # e.g. "yuv420p", "yuv420p10le", "yuvj420p"
    depth: int  # 8 or 10
    shift: tuple[int, int]  # chroma subsampling, log2 (x, y)
    full_range: bool
    colorspace: int = 2
    color_range: int = 0
    color_primaries: int = 2
    color_trc: int = 2

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u2") if self.depth > 8 else np.dtype(np.uint8)

    @property
    def peak(self) -> int:
        return (1 << self.depth) - 1

    def chroma_size(self, h: int, w: int) -> tuple[int, int]:
        sx, sy = self.shift
        return (h + (1 << sy) - 1) >> sy, (w + (1 << sx) - 1) >> sx

    def describe(self) -> str:
        rng = "full" if self.full_range else "limited"
        matrix = _name(_MATRICES, self.colorspace)
        prim, trc = _name(_PRIMARIES, self.color_primaries), _name(_TRANSFERS, self.color_trc)
        return f"{self.pix_fmt} ({self.depth}-bit, {rng} range, matrix {matrix}, primaries {prim}, transfer {trc})"


# FFmpeg's enum values (libavutil/pixfmt.h) for the names the summary prints.
_MATRICES = {0: "gbr", 1: "bt709", 2: "unspecified", 5: "bt470bg", 6: "smpte170m", 9: "bt2020nc", 10: "bt2020c"}
_PRIMARIES = {1: "bt709", 2: "unspecified", 5: "bt470bg", 6: "smpte170m", 9: "bt2020", 12: "p3"}
_TRANSFERS = {1: "bt709", 2: "unspecified", 6: "smpte170m", 13: "srgb", 14: "bt2020-10", 16: "pq", 18: "hlg"}


def _name(table: dict[int, str], value: int) -> str:
    return table.get(value, str(value))


def plane_format(frame) -> PlaneFormat | None:
    """The working form of a decoded frame, or None where it is not Y'CbCr (RGB, grey, palette):
    those take the seed's RGB route."""
    fmt = frame.format
    comps = fmt.components
    if fmt.is_rgb or len(comps) < 3 or fmt.name.startswith(("pal", "gray", "bayer", "xyz", "ya")):
        return None
    luma, chroma = comps[0], comps[1]

    def log2_ratio(full: int, part: int) -> int:
        for s in (0, 1, 2):
            if part == (full + (1 << s) - 1) >> s:
                return s
        return 1

    shift = (log2_ratio(luma.width, chroma.width), log2_ratio(luma.height, chroma.height))
    if shift not in _LAYOUTS:
        shift = (1, 1)
    depth = 8 if luma.bits <= 8 else 10  # 12/16-bit input is worked on (and written) in 10 bits
    full = fmt.name.startswith("yuvj") or int(frame.color_range) == 2
    if fmt.name.startswith("yuvj") and depth == 8:
        pix_fmt = "yuvj" + _LAYOUTS[shift][3:]  # same layout; keeps the full-range meaning of the name
    else:
        pix_fmt = _LAYOUTS[shift] + ("10le" if depth > 8 else "")
    return PlaneFormat(
        pix_fmt,
        depth,
        shift,
        full,
        colorspace=int(frame.colorspace),
        color_range=int(frame.color_range),
        color_primaries=int(frame.color_primaries),
        color_trc=int(frame.color_trc),
    )


def read_planes(frame, pf: PlaneFormat) -> list[np.ndarray]:
    """The Y, Cb, Cr planes of ``frame`` (converted to ``pf``'s layout where it differs) as code values."""
    if frame.format.name != pf.pix_fmt:
        frame = frame.reformat(format=pf.pix_fmt)
    out = []
    for plane in frame.planes[:3]:
        a = np.frombuffer(plane, dtype=pf.dtype).reshape(-1, plane.line_size // pf.dtype.itemsize)
        out.append(a[: plane.height, : plane.width].copy())
    return out


def make_frame(planes: list[np.ndarray], pf: PlaneFormat):
    """An ``av.VideoFrame`` in ``pf``'s layout and colour tags holding the code-value ``planes``."""
    import av

    h, w = planes[0].shape
    frame = av.VideoFrame(w, h, pf.pix_fmt)
    for plane, a in zip(frame.planes, planes, strict=False):
        buf = np.zeros((plane.height, plane.line_size // pf.dtype.itemsize), dtype=pf.dtype)
        buf[:, : plane.width] = a
        plane.update(buf)
    tag_frame(frame, pf)
    return frame


def tag_frame(frame, pf: PlaneFormat) -> None:
    frame.colorspace, frame.color_range = pf.colorspace, pf.color_range
    frame.color_primaries, frame.color_trc = pf.color_primaries, pf.color_trc


def luma_to_net(y: np.ndarray, pf: PlaneFormat) -> np.ndarray:
    """Luma code values -> the network's Y: the seed's studio-swing Y in [0, 1] (black 16/255, white
    235/255). Limited range: ``code / (255 * 2**(depth-8))`` (8-bit codes are the seed's own numbers).
    Full range: stretched onto the studio swing, ``(16 + 219 * code / peak) / 255``."""
    v = y.astype(np.float32)
    if pf.full_range:
        return (16.0 + 219.0 * v / pf.peak) / 255.0
    return v / (255.0 * (1 << (pf.depth - 8)))


def net_to_luma(y: np.ndarray, pf: PlaneFormat) -> np.ndarray:
    """Inverse of :func:`luma_to_net`, rounded and clipped to the code range."""
    if pf.full_range:
        v = (y * 255.0 - 16.0) / 219.0 * pf.peak
    else:
        v = y * (255.0 * (1 << (pf.depth - 8)))
    return np.clip(np.rint(v), 0, pf.peak).astype(pf.dtype)


def to_codes(x: np.ndarray, pf: PlaneFormat) -> np.ndarray:
    return np.clip(np.rint(x), 0, pf.peak).astype(pf.dtype)


# --- Streams to copy -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """One input stream copied packet by packet (no re-encode)."""

    index: int  # stream index in the input
    kind: str  # "audio", "subtitle"
    codec: str


def _stream_label(stream) -> str:
    name = stream.codec_context.name if stream.codec_context is not None else (stream.codec_name or "?")
    return f"#{stream.index} ({stream.type}, {name})"


def plan_copies(
    in_container, video_index: int, out_path: Path | str, supported: set[str] | None, drop_unsupported: bool
) -> list[Copy]:
    """The streams to copy into ``out_path``. Audio and subtitle streams are copied where the output
    container can carry their codec (``supported``; None: a video-only output such as y4m or frames);
    anything else is refused in one line, or dropped (logged) with ``drop_unsupported``."""
    copies, cannot = [], []
    for s in in_container.streams:
        if s.index == video_index:
            continue
        codec = getattr(s.codec_context, "name", None) or getattr(s, "codec_name", None) or "?"
        if s.type in ("audio", "subtitle") and supported is not None and codec in supported:
            copies.append(Copy(s.index, s.type, codec))
        else:
            cannot.append(s)
    if cannot:
        names = ", ".join(_stream_label(s) for s in cannot)
        if supported is None:
            # Frame folders and y4m pipes are video-only formats by definition: say what is left out.
            logger.info("%s carries video only: not carrying stream %s", out_path, names)
        elif drop_unsupported:
            logger.info("dropping stream %s: %s cannot carry it (--drop-unsupported-streams)", names, out_path)
        else:
            suffix = Path(str(out_path)).suffix.lower()
            hint = "use a .mkv output" if suffix != ".mkv" else "convert it first"
            raise D3DError(
                f"{out_path}: the {suffix or 'output'} container cannot carry input stream {names}: "
                f"{hint}, or pass --drop-unsupported-streams to leave it out"
            )
    return copies


def supported_codecs(path: Path) -> set[str]:
    """Codec names the muxer for ``path``'s extension can carry."""
    import av

    try:
        with av.open(str(path), "w") as probe:  # opens no file until a header is written
            return set(probe.supported_codecs)
    except (av.error.FFmpegError, ValueError) as exc:
        raise D3DError(f"{path}: no container format for this extension ({reason(exc)})") from exc


def open_pipe_input():
    """The y4m stream on stdin."""
    import av

    try:
        return av.open(sys.stdin.buffer, format=Y4M)
    except av.error.FFmpegError as exc:
        raise D3DError(
            f"stdin: not a y4m stream ({reason(exc)}); pipe one with `ffmpeg ... -f yuv4mpegpipe -`"
        ) from exc


def open_pipe_output():
    """A y4m muxer on stdout (10-bit y4m is 'unofficial' to FFmpeg: allowed explicitly)."""
    import av

    return av.open(sys.stdout.buffer, "w", format=Y4M, options={"strict": "unofficial"})


def seconds(ts: int | None, time_base: Fraction | None) -> float | None:
    if ts is None or time_base is None:
        return None
    return float(ts * time_base)
