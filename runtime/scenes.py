"""Scene cuts in the video runtime: a temporal window never fuses frames of two shots.

D3Dnet upscales frame i from frames i-h .. i+h. At the ends of a clip the seed clamps those indices to
the clip; a scene cut is treated the same way: the indices are clamped to the shot ``[first, last]``
that holds frame i (:func:`window_indices`). Cuts come from the detector ``d3d prepare`` uses for training data
(:class:`d3d.scenecut.CutDetector`, fed the same RGB frames), from a file of frame indices, or nowhere.

Frame indices here are input frame indices, counted from the input's first frame whatever ``--start``
is, so an editor's cut list of the whole file applies unchanged to any part of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3d.errors import D3DError
from d3d.scenecut import DEFAULT_THRESHOLD, CutDetector

MODES = ("detect", "off")  # anything else names a file of cut indices
USAGE = "--scene-cuts takes detect, off or a file of frame indices"
SHOWN = 20  # cuts the one-line summary names (--summary-json has them all)


def window_indices(i: int, half: int, first: int, last: int) -> list[int]:
    """The frame indices of frame ``i``'s window, clamped to its shot ``[first, last]`` (inclusive)."""
    if not first <= i <= last:
        raise ValueError(f"frame {i} is outside its shot [{first}, {last}]")
    return [min(max(j, first), last) for j in range(i - half, i + half + 1)]


@dataclass(frozen=True)
class Window:
    """One output frame's window: ``index`` counts from the stream's first frame; ``slots`` are the ring
    slots of its ``frames`` input frames, in temporal order (repeats where clamped)."""

    index: int
    slots: tuple[int, ...]


class WindowPlan:
    """The runtime's windows, fed one frame at a time: the local pipeline and the Triton server model
    (:mod:`d3d.runtime.triton_model`) both follow it, so edge clamping and scene cuts are one rule.

    Frame ``n`` (counted from 0) lives in ring slot ``n % frames``. :meth:`push` says which windows are
    complete before the new frame takes its slot (a cut ends the shot like the clip's end: its waiting
    frames need no later frame), the new frame's slot, and the windows complete once it is stored;
    :meth:`end` completes the rest. Every window's frames are still in the ring when it is returned."""

    def __init__(self, frames: int) -> None:
        self.frames, self.half = frames, frames // 2
        self.count = 0  # frames pushed
        self.next_out = 0  # the first frame whose window is not yet returned
        self.shot = 0  # the first frame of the current shot

    def _complete(self, upto: int, last: int) -> list[Window]:
        out = []
        while self.next_out <= upto:
            i = self.next_out
            # Clamped to the shot, every index is in [i - half, i + half]: none older than the ring holds.
            out.append(Window(i, tuple(j % self.frames for j in window_indices(i, self.half, self.shot, last))))
            self.next_out += 1
        return out

    def push(self, cut: bool = False) -> tuple[list[Window], int, list[Window]]:
        """The next frame (``cut``: it starts a shot): (windows complete before it is stored, its slot,
        windows complete after)."""
        n = self.count
        before: list[Window] = []
        if cut and n > 0:
            before = self._complete(n - 1, n - 1)
            self.shot = n
        self.count = n + 1
        return before, n % self.frames, self._complete(n - self.half, n)

    def end(self) -> list[Window]:
        """The windows of the frames still waiting, at the end of the stream."""
        return self._complete(self.count - 1, self.count - 1)


def read_cut_file(path: Path) -> tuple[int, ...]:
    """The frame indices in a cut list: integers separated by commas, spaces or new lines, ``#`` starting
    a comment. Sorted, without repeats; a one-line :class:`D3DError` for anything else."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Notepad's) is not text
    except UnicodeDecodeError:
        raise D3DError(f"{path}: not a text file ({USAGE})") from None
    except OSError as exc:
        raise D3DError(f"{path}: cannot read the cut list ({exc.strerror or exc}; {USAGE})") from None
    cuts: set[int] = set()
    for number, line in enumerate(text.splitlines(), 1):
        for token in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
            if not token:
                continue
            if not re.fullmatch(r"[+-]?[0-9]+", token):
                raise D3DError(f"{path}:{number}: {token!r} is not a frame index (whole numbers from 0)")
            value = int(token)
            if value < 0:
                raise D3DError(f"{path}:{number}: frame index {value} is negative (indices count from 0)")
            cuts.add(value)
    return tuple(sorted(cuts))


@dataclass(frozen=True)
class SceneCuts:
    """Where shots start: ``mode`` "detect" (the histogram detector at ``threshold``), "off", or "file"
    (``cuts``, input frame indices read from ``path``)."""

    mode: str = "detect"
    cuts: tuple[int, ...] = ()
    path: str = ""
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def parse(cls, value: str, threshold: float | None = None) -> SceneCuts:
        """``--scene-cuts detect|off|FILE`` (the file is read here, before any slow work)."""
        if threshold is not None:
            if value != "detect":
                raise D3DError("--cut-threshold applies to --scene-cuts detect only")
            if not 0 < threshold <= 1:
                raise D3DError(f"--cut-threshold must be in (0, 1], got {threshold}")
        if value in MODES:
            return cls(value, threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
        if not value.strip():
            raise D3DError("--scene-cuts has an empty value: give detect, off or a file of frame indices")
        if value.lower() in MODES and not Path(value).exists():
            raise D3DError(f"--scene-cuts {value}: no such file; the keywords are lower-case: {value.lower()}")
        return cls("file", read_cut_file(Path(value)), value)

    def describe(self) -> str:
        if self.mode == "detect":
            return f"detected (luma histogram, threshold {self.threshold:g})"
        return "off" if self.mode == "off" else f"from {self.path}"

    def tracker(self, start: int = 0) -> CutTracker:
        """A tracker for a run whose first frame is input frame ``start`` (``--start``)."""
        return CutTracker(self, start)


class CutTracker:
    """Frame by frame, in stream order: does this frame start a new shot? Records the cuts it reports
    (input frame indices). The first frame of a run never counts as a cut: it starts the run anyway."""

    def __init__(self, spec: SceneCuts, start: int = 0) -> None:
        self.spec, self.start = spec, start
        self.cuts: list[int] = []
        self._position = -1
        self._detector = CutDetector(spec.threshold) if spec.mode == "detect" else None
        self._listed = frozenset(spec.cuts)

    @property
    def needs_pixels(self) -> bool:
        """Whether :meth:`observe` needs the frame's RGB pixels (only the detector does)."""
        return self._detector is not None

    def observe(self, rgb: np.ndarray | None = None) -> bool:
        """The next frame (RGB uint8 ``[H, W, 3]``, the frame ``d3d prepare`` reads; None unless
        :attr:`needs_pixels`): True where it starts a new shot."""
        self._position += 1
        index = self.start + self._position
        if self._detector is not None:
            cut = self._detector.push(rgb)
        else:
            cut = self._position > 0 and index in self._listed
        if cut:
            self.cuts.append(index)
        return cut


def describe_cuts(spec: SceneCuts, cuts: Iterable[int]) -> str:
    """One line for the summary: ``"off"``, ``"none detected"``, ``"3 detected at 30, 76, 137"`` or
    ``"2 from cuts.txt at ..."``, naming at most :data:`SHOWN` of them."""
    if spec.mode == "off":
        return "off"
    cuts = list(cuts)
    how = "detected" if spec.mode == "detect" else f"from {spec.path}"
    if not cuts:
        return f"none {how}"
    more = f", ... ({len(cuts) - SHOWN} more)" if len(cuts) > SHOWN else ""
    return f"{len(cuts)} {how} at {', '.join(map(str, cuts[:SHOWN]))}{more}"
