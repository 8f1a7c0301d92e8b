"""Resumable ``d3d upscale`` runs: completed frames are kept in a work folder beside the output.

The work folder, ``.<output name>.d3d-work/``, is d3d's own (its :data:`SETTINGS` file is the proof);
the output itself still appears only when complete, atomically. It holds:

- ``settings.json``: the :func:`fingerprint` of the run (everything that shapes the output frames);
- ``frames/``: every completed output frame, each written to a temporary name and renamed when complete
  (so a frame half-written at an interrupt never counts). For a PNG output these are the final files
  (``frame_000000.png`` ...), and the finished folder is renamed onto the output. For a video output
  they are the final code-value planes (or RGB), lossless, one compressed ``.npz`` per frame;
- :data:`LOG`: each completed frame's sha256, appended once it is in place. A resume counts only the
  leading frames whose file still matches (a truncated or replaced file is recomputed, never encoded);
- for a video output, the temporary file being encoded (so a killed run leaves nothing beside the output).

Only files of the names d3d writes are ever removed from it: anything else a user put there stays.

A resumed run decodes the input again from its first frame (the network needs the frames before the
resume point for its window, and the copied streams are muxed again in the same order), skips the
network for the frames already kept, and hands every frame to the encoder as an uninterrupted run
does: the same frames in, the same settings, so the same output (the encoder is deterministic).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import d3d
from d3d.atomic import AtomicDir, atomic_write
from d3d.errors import D3DError
from d3d.export.exporter import file_sha256
from d3d.outputs import check_location, write_manifest
from d3d.runtime.frames import OutFrame
from d3d.runtime.scenes import SceneCuts
from d3d.runtime.sinks import FrameSink, write_png_frame
from d3d.runtime.sources import VIDEO_EXTENSIONS
from d3d.runtime.video import PlaneFormat, is_pipe

WORK_FORMAT = 2  # layout of the work folder; a folder of another layout is not resumed
SETTINGS = "settings.json"
FRAMES = "frames"
LOG = "frames.sha256"  # "<frame file> <sha256>" per completed frame, appended once the frame is in place
_TOOL = "d3d-trt upscale work folder"
# What d3d writes into frames/: the frames, their temporaries and (a PNG output) the manifest.
_FRAME_FILE = re.compile(
    r"frame_\d{6}\.png|\d{6}\.npz|\.(?:frame_\d{6}\.png|\d{6}\.npz)\.part\.(?:png|npz)|\.d3d-manifest\.json"
)
# Temporaries of the settings and log rewrites (AtomicFile: ".<stem>.<random>.<suffix>").
_TEMP = re.compile(r"\.(?:settings|frames)\.[a-z0-9_]+\.(?:json|sha256)")
_HASH = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


class SettingsDiffer(D3DError):
    """A --resume refused because the kept frames were made with other settings (nothing to continue)."""


def work_path(output: Path) -> Path:
    """The work folder of ``output``: a hidden sibling, so that renames onto the output stay on one file system."""
    return output.parent / f".{output.name}.d3d-work"


def input_listing(path: Path) -> dict[str, str] | None:
    """A frame folder's files: name -> "size mtime" (None for a file). Kept beside the settings so that a
    changed folder can be refused naming the file that differs."""
    if not path.is_dir():
        return None
    out = {}
    for p in sorted(path.iterdir()):
        if p.is_file():
            st = p.stat()
            out[p.name] = f"{st.st_size} {st.st_mtime_ns}"
    return out


def _input_identity(path: Path, listing: dict[str, str] | None = None) -> str:
    """A file: its size and the sha256 of all of it (a copy or a move keeps it, any edit does not; reading
    the whole input costs ~0.5 s per GB here). A frame folder: the name, size and modification time of
    every file in it (``listing``, where the caller has it already)."""
    listing = listing if listing is not None else input_listing(path)
    if listing is not None:
        h = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in listing.items()).encode())
        return f"folder {h.hexdigest()[:16]}"
    return f"{path.stat().st_size} bytes sha256 {file_sha256(path)}"


def fingerprint(
    args,
    input_path: Path,
    plane_format: PlaneFormat | None,
    model,
    runner,
    scenes: SceneCuts | None = None,
    listing: dict[str, str] | None = None,
) -> dict[str, object]:
    """Every setting that shapes the output frames, from the parsed ``d3d upscale`` arguments, the input
    (``listing``: its :func:`input_listing`, where the caller has it), its plane format, the model source,
    the runner and the scene cuts: a resume must match it exactly."""
    video = args.output.suffix.lower() in VIDEO_EXTENSIONS
    return {
        "work format": WORK_FORMAT,
        "d3d version": d3d.__version__,
        "model": model.describe() if model.kind == "random" else f"{model.kind} sha256 {model.sha256}",
        "model config": runner.config.as_dict(),
        "backend": runner.describe(),  # name, device and precision: each changes the numbers
        "input": _input_identity(input_path, listing),
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
    """The cut setting in words, without commas (the refusal separates values by them): the mode, the
    detector's threshold, or the listed cuts themselves (an edited file that lists the same cuts gives the
    same frames)."""
    if scenes.mode == "detect":
        return f"detect (threshold {scenes.threshold:g})"
    if scenes.mode == "off":
        return "off"
    return "cuts at " + " ".join(map(str, scenes.cuts)) if scenes.cuts else "no cuts listed"


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
            out.append(f"{key} {_value(a)} then, {_value(b)} now")
    return out


def _value(value: object) -> str:
    """A setting in words: unset, yes/no, a hash cut to 12 digits (enough to tell two apart in one line)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return re.sub(r"\b([0-9a-f]{12})[0-9a-f]{52}\b", r"\1...", str(value))


def _folder_change(saved: dict[str, str], now: dict[str, str]) -> str | None:
    """The first file (by name) that differs between two listings of an input folder, in words."""
    for name in sorted(saved.keys() | now.keys()):
        if name not in now:
            return f"input folder: {name} was removed"
        if name not in saved:
            return f"input folder: {name} was added"
        if saved[name] != now[name]:
            return f"input folder: {name} changed (size or modification time)"
    return None


def _read_settings(folder: Path) -> dict | None:
    """The saved settings of a work folder d3d made, or None where ``folder`` is not one."""
    try:
        data = json.loads((folder / SETTINGS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != _TOOL or not isinstance(data.get("settings"), dict):
        return None
    return data


def _plural(n: int) -> str:
    return f"{n} frame{'' if n == 1 else 's'}"


class WorkFolder:
    """The work folder of one output. ``done``: frames an earlier run completed that this run continues
    (no network for them); ``complete``: the leading frames complete and recorded now (what a failure
    keeps); ``bad``: why the kept frames end before the frame files do; ``committed``: the output was
    written."""

    def __init__(self, output: Path, png: bool, y16: bool = False) -> None:
        self.output, self.path = output, work_path(output)
        self.frames = self.path / FRAMES
        self.png, self.y16 = png, y16
        self.resuming = False  # the folder holds frames of an earlier run that this run continues
        self.done = 0
        self.complete = 0
        self.bad: str | None = None
        self.total: int | None = None  # the input's frame count where known (for messages)
        self.committed = False
        # A video being encoded lives here until its commit (AtomicFile's ".<stem>.<random><suffix>").
        self._video_tmp = re.compile(rf"\.{re.escape(output.stem)}\.[a-z0-9_]+{re.escape(output.suffix)}")

    def name(self, n: int) -> str:
        return f"frame_{n:06d}.png" if self.png else f"{n:06d}.npz"

    def _log(self) -> dict[str, str]:
        """The completed frames' recorded hashes. Only whole lines count: a line torn by a kill is ignored."""
        try:
            text = (self.path / LOG).read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return {}
        out = {}
        for line in text.split("\n")[:-1]:
            name, _, digest = line.partition(" ")
            if _HASH.fullmatch(digest):
                out[name] = digest
        return out

    def verified(self) -> int:
        """Completed frames: the leading run of frames whose file exists and has the sha256 recorded when
        it was completed. Where a recorded frame is missing or differs, ``bad`` says which."""
        recorded = self._log()
        n = 0
        while (name := self.name(n)) in recorded:
            path = self.frames / name
            if not path.is_file():
                self.bad = f"{FRAMES}/{name} is missing"
                break
            if file_sha256(path) != recorded[name]:
                self.bad = f"{FRAMES}/{name} was changed or damaged since it was written"
                break
            n += 1
        return n

    def claim(self, *, resume: bool, overwrite: bool, inputs) -> None:
        """Before any slow work: what to do with an existing folder. Without ``resume`` an earlier run's
        frames are refused (or, with ``overwrite``, discarded when this run starts writing)."""
        check_location(self.path, inputs=[i for i in inputs if i is not None and not is_pipe(i)], what="work folder")
        if not (self.path.exists() or self.path.is_symlink()):
            return
        if self.path.is_symlink() or not self.path.is_dir() or _read_settings(self.path) is None:
            raise D3DError(
                f"{self.path}: exists and is not a d3d work folder (no valid {SETTINGS}): not touching it; move or "
                "remove it, or choose another output name"
            )
        n = self.verified()
        if resume and n:
            self.resuming, self.done, self.complete = True, n, n
        elif n and not overwrite and not resume:
            raise D3DError(
                f"{self.path}: holds {_plural(n)} of an interrupted run of this output: pass --resume to continue "
                "it, or --overwrite to discard it and start over"
            )

    def check_settings(self, settings: dict[str, object], listing: dict[str, str] | None = None) -> None:
        """A resume continues only a run with the same settings; names what differs (for an input folder,
        the first file that differs where the earlier run recorded them)."""
        if not self.resuming:
            return
        saved = _read_settings(self.path)
        if saved is None:
            raise SettingsDiffer(
                f"{self.path}: {SETTINGS} is unreadable: pass --overwrite instead of --resume to discard the kept "
                "frames and start over"
            )
        diff = _differences(saved["settings"], json.loads(json.dumps(settings)))
        before = saved.get("input files")
        if isinstance(before, dict) and listing is not None:
            change = _folder_change(before, listing)
            diff = [change if d.startswith("input ") and change else d for d in diff]
        if diff:
            raise SettingsDiffer(
                f"cannot resume {self.path}: it was started with other settings ({'; '.join(diff)}): rerun with "
                "the earlier settings, or pass --overwrite instead of --resume to discard the kept frames and "
                "start over"
            )

    def start(self, settings: dict[str, object], listing: dict[str, str] | None = None) -> None:
        """Makes the folder for a fresh run (clearing a stale one of ours), or readies a resumed one."""
        record = json.dumps({"tool": _TOOL, "settings": settings, "input files": listing}, indent=1)
        if self.resuming:
            # Only the verified frames stay recorded; later frame files and temporaries of the interrupted
            # run go (a killed run's temporary video included).
            recorded = self._log()
            keep = [self.name(n) for n in range(self.done)]
            with atomic_write(self.path / LOG) as tmp:
                tmp.write_text("".join(f"{k} {recorded[k]}\n" for k in keep))
            self._remove_ours(keep={SETTINGS, LOG, *keep})
            return
        if self.path.is_dir():
            # A stale folder of ours (no frame kept, or --overwrite): our files go, anything else stays; the
            # log goes first, so no old frame counts as complete under the new settings.
            self._remove_ours(keep={SETTINGS})
            self.frames.mkdir(exist_ok=True)
            with atomic_write(self.path / SETTINGS) as tmp:
                tmp.write_text(record)
            return
        # Made complete beside, then renamed into place: an interrupt here never leaves a folder without its
        # settings, which a later run would refuse to touch.
        new = AtomicDir(self.path)
        try:
            (new.tmp / FRAMES).mkdir()
            (new.tmp / SETTINGS).write_text(record)
            new.commit()
        except BaseException:
            new.abort()
            raise

    def store(self, n: int, frame: OutFrame) -> None:
        """Keeps completed frame ``n``: written under a temporary name (removed on any failure), synced,
        renamed, then recorded with its sha256 in the log."""
        name = self.name(n)
        tmp = self.frames / f".{name}.part{Path(name).suffix}"
        try:
            if self.png:
                write_png_frame(tmp, frame.image(), self.y16)
            else:
                planes = frame.planes if frame.rgb is None else []
                arrays = (
                    {"rgb": frame.rgb} if frame.rgb is not None else dict(zip(("y", "cb", "cr"), planes, strict=True))
                )
                with tmp.open("wb") as f:
                    np.savez_compressed(f, **arrays)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
            digest = file_sha256(tmp)
            os.replace(tmp, self.frames / name)
            with (self.path / LOG).open("a") as f:
                f.write(f"{name} {digest}\n")
                f.flush()
                os.fsync(f.fileno())
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise D3DError(f"{self.frames / name}: cannot keep the frame ({exc.strerror or exc})") from None
            raise
        if n == self.complete:
            self.complete = n + 1

    def restore(self, n: int, frame: OutFrame, pf: PlaneFormat | None) -> None:
        """Fills the empty ``frame`` with kept frame ``n``. A PNG frame stays where it is: only its
        size is needed (from the first one, as a zero-cost array of that shape). A frame that cannot be
        read is removed (so a resume recomputes it) and named in a one-line error."""
        path = self.frames / self.name(n)
        try:
            self._restore(path, frame, pf)
        except Exception as exc:
            path.unlink(missing_ok=True)
            self.complete = min(self.complete, n)
            raise D3DError(f"{path}: the kept frame cannot be read ({type(exc).__name__}: {exc}); removed") from None

    def _restore(self, path: Path, frame: OutFrame, pf: PlaneFormat | None) -> None:
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

    def _ours(self, p: Path) -> bool:
        """Whether d3d wrote ``p`` (a plain file of a name it uses), so that it may remove it."""
        if p.is_symlink() or not p.is_file():
            return False
        if p.parent == self.frames:
            return bool(_FRAME_FILE.fullmatch(p.name))
        return p.name in (SETTINGS, LOG) or bool(_TEMP.fullmatch(p.name) or self._video_tmp.fullmatch(p.name))

    def _remove_ours(self, keep: set[str] = frozenset()) -> list[str]:
        """Removes d3d's files (the log first) except the names in ``keep``, and frames/ when it is empty;
        returns what else is there (relative names)."""
        foreign: list[str] = []
        if LOG not in keep:
            (self.path / LOG).unlink(missing_ok=True)
        if self.frames.is_dir() and not self.frames.is_symlink():
            for p in sorted(self.frames.iterdir()):
                if p.name in keep:
                    continue
                if self._ours(p):
                    p.unlink()
                else:
                    foreign.append(f"{FRAMES}/{p.name}")
            if not any(self.frames.iterdir()):
                self.frames.rmdir()
        for p in sorted(self.path.iterdir()):
            if p.name in keep or (p.name == FRAMES and p.is_dir() and not p.is_symlink()):
                continue
            if self._ours(p) and p.name != SETTINGS:
                p.unlink()
            elif p.name != SETTINGS:
                foreign.append(p.name)
        return foreign

    def remove(self) -> None:
        """Removes what d3d wrote into the folder, then the folder. Anything else (a user's notes, a
        folder) stays, with the settings that mark the folder d3d's, and a warning names it."""
        if not self.path.is_dir() or self.path.is_symlink():
            return
        foreign = self._remove_ours()
        if foreign or self.frames.exists():
            log.warning(
                "%s: left in place: it holds what d3d did not write (%s); d3d's own files in it are removed",
                self.path, ", ".join(foreign),
            )  # fmt: skip
            return
        (self.path / SETTINGS).unlink(missing_ok=True)
        self.path.rmdir()

    def release(self) -> None:
        """After a failure: keeps the folder where it holds completed frames, else removes it."""
        if not self.committed and not self.complete:
            self.remove()


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
    ``abort`` keeps the work folder where it holds completed frames (``work.complete``), else removes it."""

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
                names = [self.work.name(n) for n in range(self.count)]
                self._move_foreign(set(names))
                write_manifest(self.work.frames, names)
                AtomicDir(self.work.output, tmp=self.work.frames).commit()
            self.work.committed = True
            self.work.remove()

    def abort(self) -> None:
        if self.inner is not None:
            self.inner.abort()
        self.work.release()

    def _move_foreign(self, names: set[str]) -> None:
        """What a user put into frames/ must not become part of the output: it moves up into the work
        folder (which then stays, with a warning naming it)."""
        for p in list(self.work.frames.iterdir()):
            if p.name in names:
                continue
            if self.work._ours(p):  # a stray temporary of d3d's own
                p.unlink()
            else:
                dest = self.work.path / p.name
                k = 0
                while dest.exists() or dest.is_symlink():
                    k += 1
                    dest = self.work.path / f"{p.name}.{k}"
                os.replace(p, dest)
