"""Resumable ``d3d upscale`` runs: completed frames are kept in a work folder beside the output.

The work folder, ``.<output name>.d3d-work/``, is d3d's own (its :data:`SETTINGS` file is the proof);
the output itself still appears only when complete, atomically. It holds:

- ``settings.json``: the :func:`fingerprint` of the run (everything that shapes the output frames);
- ``frames/``: every completed output frame, each written to a temporary name and renamed when complete
  (so a frame half-written at an interrupt never counts). For a PNG output these are the final files
  (``frame_000000.png`` ...), and the finished folder is renamed onto the output. For a video output
  they are the final code-value planes (or RGB), lossless, one compressed ``.npz`` per frame.

A resumed run decodes the input again from its first frame (the network needs the frames before the
resume point for its window, and the copied streams are muxed again in the same order), skips the
network for the frames already kept, and hands every frame to the encoder as an uninterrupted run
does: the same frames in, the same settings, so the same output (the encoder is deterministic).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import d3d
from d3d.atomic import AtomicDir
from d3d.errors import D3DError
from d3d.outputs import check_location, write_manifest
from d3d.runtime.pipeline import VIDEO_EXTENSIONS, FrameSink, OutFrame, write_png_frame
from d3d.runtime.scenes import SceneCuts
from d3d.runtime.video import PlaneFormat, is_pipe

WORK_FORMAT = 1  # layout of the work folder; a folder of another layout is not resumed
SETTINGS = "settings.json"
FRAMES = "frames"
_TOOL = "d3d-trt upscale work folder"


def work_path(output: Path) -> Path:
    """The work folder of ``output``: a hidden sibling, so that renames onto the output stay on one file system."""
    return output.parent / f".{output.name}.d3d-work"


def _input_identity(path: Path) -> str:
    """A file: its size and a hash of its first and last MiB (a copy or a move keeps it, an edit does
    not). A frame folder: the name, size and modification time of every file in it."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.iterdir()):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return f"folder {h.hexdigest()[:16]}"
    size = path.stat().st_size
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return f"{size} bytes, sha256 of head and tail {h.hexdigest()[:16]}"


def fingerprint(
    args, input_path: Path, plane_format: PlaneFormat | None, model, runner, scenes: SceneCuts | None = None
) -> dict[str, object]:
    """Every setting that shapes the output frames, from the parsed ``d3d upscale`` arguments, the input,
    its plane format, the model source, the runner and the scene cuts: a resume must match it exactly."""
    video = args.output.suffix.lower() in VIDEO_EXTENSIONS
    return {
        "work format": WORK_FORMAT,
        "d3d version": d3d.__version__,
        "model": model.describe() if model.kind == "random" else f"{model.kind} sha256 {model.sha256}",
        "model config": runner.config.as_dict(),
        "backend": runner.describe(),  # name, device and precision: each changes the numbers
        "input": _input_identity(input_path),
        "--start": args.start,
        "--max-frames": args.max_frames,
        "--downscale": args.downscale,
        "--tile": args.tile,
        "--tile-overlap": args.tile_overlap if args.tile else None,
        "--y-only": args.y_only,
        "output": "video" if video else "PNG frames",
        "--codec": args.codec if video else None,
        "--crf": args.crf if video and args.codec != "ffv1" else None,
        "pixel format": plane_format.describe() if plane_format is not None else "RGB",
        # the cuts themselves for a list (an edited file with the same cuts gives the same frames)
        "--scene-cuts": None if scenes is None else _scene_cuts(scenes),
    }


def _scene_cuts(scenes: SceneCuts) -> str:
    """The cut setting in words: the mode, the detector's threshold, or the listed cuts themselves (an
    edited file that lists the same cuts gives the same frames)."""
    if scenes.mode == "detect":
        return f"detect, threshold {scenes.threshold:g}"
    return "off" if scenes.mode == "off" else "at " + ",".join(map(str, scenes.cuts))


def _differences(saved: dict, now: dict) -> list[str]:
    """``"--crf 18 then, 23 now"`` for every setting that differs (nested ones by their own name)."""
    out = []
    for key in [*now, *(k for k in saved if k not in now)]:
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key} {sub}" for sub in _differences(a, b)]
        else:
            out.append(f"{key} {_short(a)} then, {_short(b)} now")
    return out


def _short(value: object) -> str:
    """A hash cut to 12 digits: enough to tell two apart in one line."""
    return re.sub(r"\b([0-9a-f]{12})[0-9a-f]{52}\b", r"\1...", str(value))


def _read_settings(folder: Path) -> dict | None:
    """The saved settings of a work folder d3d made, or None where ``folder`` is not one."""
    try:
        data = json.loads((folder / SETTINGS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != _TOOL or not isinstance(data.get("settings"), dict):
        return None
    return data


class WorkFolder:
    """The work folder of one output. ``done``: frames complete there; ``kept``: frames left for a resume
    after a failure (None until then); ``committed``: the output was written."""

    def __init__(self, output: Path, png: bool, y16: bool = False) -> None:
        self.output, self.path = output, work_path(output)
        self.frames = self.path / FRAMES
        self.png, self.y16 = png, y16
        self.resuming = False  # the folder holds frames of an earlier run that this run continues
        self.done = 0
        self.kept: int | None = None
        self.committed = False

    def name(self, n: int) -> str:
        return f"frame_{n:06d}.png" if self.png else f"{n:06d}.npz"

    def count(self) -> int:
        """Completed frames: the unbroken run of frame files from the first (each one renamed into
        place only when complete)."""
        n = 0
        while (self.frames / self.name(n)).is_file():
            n += 1
        return n

    def claim(self, *, resume: bool, overwrite: bool, inputs) -> None:
        """Before any slow work: what to do with an existing folder. Without ``resume`` an earlier run's
        frames are refused (or, with ``overwrite``, discarded when this run starts writing)."""
        check_location(self.path, inputs=[i for i in inputs if i is not None and not is_pipe(i)], what="work folder")
        if not (self.path.exists() or self.path.is_symlink()):
            return
        if self.path.is_symlink() or not self.path.is_dir() or _read_settings(self.path) is None:
            raise D3DError(f"{self.path}: exists and is not a d3d work folder (no valid {SETTINGS}): not touching it")
        n = self.count()
        if resume and n:
            self.resuming, self.done = True, n
        elif n and not overwrite and not resume:
            raise D3DError(
                f"{self.path}: holds {n} frames of an interrupted run of this output: pass --resume to continue "
                "it, or --overwrite to discard it and start over"
            )

    def check_settings(self, settings: dict[str, object]) -> None:
        """A resume continues only a run with the same settings; names what differs."""
        if not self.resuming:
            return
        saved = _read_settings(self.path)
        if saved is None:
            raise D3DError(f"{self.path}: {SETTINGS} is unreadable: pass --overwrite to discard the folder")
        diff = _differences(saved["settings"], json.loads(json.dumps(settings)))
        if diff:
            raise D3DError(
                f"cannot resume {self.path}: it was started with other settings ({'; '.join(diff)}): run with "
                "the same settings, or pass --overwrite (without --resume) to discard it"
            )

    def start(self, settings: dict[str, object]) -> None:
        """Makes the folder for a fresh run (replacing a stale one of ours), or keeps a resumed one."""
        if self.resuming:
            for p in self.frames.glob(".*"):  # temporary files of frames that were never completed
                p.unlink(missing_ok=True)
            return
        # Made complete beside, then renamed into place (replacing a stale one): an interrupt here never
        # leaves a folder without its settings, which a later run would refuse to touch.
        new = AtomicDir(self.path)
        try:
            (new.tmp / FRAMES).mkdir()
            (new.tmp / SETTINGS).write_text(json.dumps({"tool": _TOOL, "settings": settings}, indent=1))
            new.commit()
        except BaseException:
            new.abort()
            raise

    def store(self, n: int, frame: OutFrame) -> None:
        """Keeps completed frame ``n``: written under a temporary name, synced, then renamed."""
        name = self.name(n)
        tmp = self.frames / f".{name}.part{Path(name).suffix}"
        if self.png:
            write_png_frame(tmp, frame.image(), self.y16)
        else:
            planes = frame.planes if frame.rgb is None else []
            arrays = {"rgb": frame.rgb} if frame.rgb is not None else dict(zip(("y", "cb", "cr"), planes, strict=True))
            with tmp.open("wb") as f:
                np.savez_compressed(f, **arrays)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.frames / name)

    def restore(self, n: int, frame: OutFrame, pf: PlaneFormat | None) -> None:
        """Fills the empty ``frame`` with kept frame ``n``. A PNG frame stays where it is: only its
        size is needed (from the first one, as a zero-cost array of that shape)."""
        path = self.frames / self.name(n)
        if self.png:
            if not hasattr(self, "_shape"):
                import av

                with av.open(str(path)) as c:
                    s = c.streams.video[0].codec_context
                    self._shape = (s.height, s.width) if self.y16 else (s.height, s.width, 3)
            a = np.broadcast_to(np.zeros((), np.uint16 if self.y16 else np.uint8), self._shape)
            frame.y16, frame.rgb = (a, None) if self.y16 else (None, a)
            return
        with np.load(path) as data:
            if "rgb" in data:
                frame.rgb = data["rgb"]
            else:
                frame.planes, frame.pf = [data["y"], data["cb"], data["cr"]], pf

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _empty(frame: OutFrame) -> bool:
    return frame.rgb is None and frame.planes is None and frame.y16 is None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block is done (a commit is never left half-way: the output written
    and the work folder still there), then take their usual course."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if got:
        handler = previous[got[0]]
        if callable(handler):
            handler(got[0], None)
        else:
            signal.raise_signal(got[0])  # the restored disposition (default or ignore) takes it


class ResumableSink(FrameSink):
    """The sink of a resumable run. Frames before ``work.done`` come back from the work folder; every
    later frame is kept there before it goes on. A video goes on into ``inner`` (its own temporary
    file); PNG frames are written into the work folder only, which ``commit`` renames onto the output.
    ``abort`` keeps the work folder where it holds completed frames (``work.kept``), else removes it."""

    def __init__(self, work: WorkFolder, inner: FrameSink | None, plane_format: PlaneFormat | None) -> None:
        self.work, self.inner, self.pf = work, inner, plane_format
        self.count = 0

    def write(self, frame: OutFrame | np.ndarray) -> None:
        if isinstance(frame, np.ndarray):
            frame = OutFrame(self.count, rgb=frame) if frame.ndim == 3 else OutFrame(self.count, y16=frame)
        if _empty(frame):
            if self.count >= self.work.done:
                raise D3DError(f"frame {self.count} is not in the work folder {self.work.path}")
            self.work.restore(self.count, frame, self.pf)
        else:
            self.work.store(self.count, frame)
        if self.inner is not None:
            self.inner.write(frame)
        self.count += 1

    def copy(self, packet) -> None:
        if self.inner is not None:
            self.inner.copy(packet)

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()

    def commit(self) -> None:
        self.finish()  # the slow part (encoder flush), still interruptible: the frames stay kept
        with _signals_deferred():
            if self.inner is not None:
                self.inner.commit()
            else:
                write_manifest(self.work.frames, [self.work.name(n) for n in range(self.count)])
                AtomicDir(self.work.output, tmp=self.work.frames).commit()
            self.work.committed = True
            self.work.remove()

    def abort(self) -> None:
        if self.inner is not None:
            self.inner.abort()
        if self.work.committed:
            return
        n = self.work.count() if self.work.frames.is_dir() else 0
        if n:
            self.work.kept = n
        else:
            self.work.remove()
