"""Datasets in the seed's layouts, and converters from any video to them.

Vimeo-90K septuplet layout (training and the Vimeo test list)::

    ROOT/sequences/<clip>/<seq>/im1.png ... im7.png     HR frames
    ROOT/LR_x4/<clip>/<seq>/im1.png ... im7.png         LR frames (MATLAB bicubic x1/4)
    ROOT/sep_trainlist.txt, ROOT/sep_testlist.txt        one "<clip>/<seq>" per line

Vid4 / SPMC-11 test layout::

    ROOT/<scene>/hr/hr_01.png ...   ROOT/<scene>/lr_x4/lr_01.png ...

The converters split every clip at detected scene cuts, so no septuplet and no test scene spans a
cut, and make LR frames with :func:`d3d.training.imresize.imresize` (as the seed's ``generate_LR_Vimeo90K.m``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from d3d import probes
from d3d.atomic import atomic_dir
from d3d.errors import D3DError, reason
from d3d.outputs import manifest_of_tree
from d3d.scenecut import DEFAULT_THRESHOLD, detect_cuts, shots
from d3d.training.imresize import imresize
from d3d.training.metrics import rgb_to_y

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SEQ_LEN = 7


# ---------------------------------------------------------------------------------------------- I/O
def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB; a missing or unreadable file is a one-line :class:`D3DError` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise D3DError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL's own words end in byte counts and file names: say what was expected instead.
        raise D3DError(f"{path}: not a readable image (corrupt, truncated or not an image file)") from exc


def write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path, compress_level=1)


def read_frames(source: str | os.PathLike[str], start: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video file or a folder of images (sorted by name)."""
    src = Path(source)
    stop = None if count is None else start + count
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise D3DError(f"{src}: no image files")
        for p in files[start:stop]:
            yield read_image(p)
        return
    if not src.is_file():
        raise D3DError(f"{src}: no such file or folder")
    import av

    try:
        container = av.open(str(src))
    except av.error.FFmpegError as exc:
        raise D3DError(
            f"{src}: not a readable video ({reason(exc)}): expected a video file FFmpeg decodes or a folder of frames"
        ) from exc
    with container:
        for i, frame in enumerate(container.decode(video=0)):
            if stop is not None and i >= stop:
                break
            if i >= start:
                yield frame.to_ndarray(format="rgb24")


def crop_to_multiple(frame: np.ndarray, m: int) -> np.ndarray:
    h, w = frame.shape[:2]
    return frame[: h - h % m, : w - w % m]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ------------------------------------------------------------------------------------- converters
@dataclass
class ClipPlan:
    """How one clip is cut up: its shots, and the frame range held out for testing."""

    name: str
    frames: int
    cuts: list[int]
    holdout: tuple[int, int]  # [start, end) held out of training
    train: list[tuple[int, int]] = field(default_factory=list)  # septuplets: (first frame, shot index)
    test: list[tuple[int, int]] = field(default_factory=list)


def plan_septuplets(name: str, num_frames: int, cuts: Sequence[int], holdout: tuple[int, int], stride: int) -> ClipPlan:
    """Septuplets inside shots; training ones lie wholly outside ``holdout``, test ones wholly inside."""
    plan = ClipPlan(name, num_frames, list(cuts), holdout)
    h0, h1 = holdout
    for k, (a, b) in enumerate(shots(num_frames, cuts)):
        for s in range(a, b - SEQ_LEN + 1, stride):
            e = s + SEQ_LEN
            if e <= h0 or s >= h1:
                plan.train.append((s, k))
            elif s >= h0 and e <= h1:
                plan.test.append((s, k))
    return plan


def parse_holdout(text: str | None, fraction: float, name: str, num_frames: int) -> tuple[int, int]:
    """``--holdout clip:A-B,...`` for this clip, else the last ``fraction`` of its frames."""
    if text:
        for item in text.split(","):
            clip, _, rng = item.partition(":")
            if clip.strip() == name:
                try:
                    a, b = (int(v) for v in rng.split("-"))
                except ValueError:
                    raise D3DError(f"--holdout: expected CLIP:START-END, got {item!r}") from None
                if not 0 <= a < b <= num_frames:
                    raise D3DError(f"--holdout {item}: out of range for {num_frames} frames")
                return a, b
    n = round(num_frames * fraction)
    return num_frames - n, num_frames


def _load_clip(source: Path, scale: int, max_frames: int | None) -> list[np.ndarray]:
    frames = [crop_to_multiple(f, scale) for f in read_frames(source, 0, max_frames)]
    if not frames:
        raise D3DError(f"{source}: no frames")
    return frames


def clip_name(source: Path) -> str:
    return source.stem if source.is_file() else source.name


def prepare_vimeo(
    sources: Sequence[Path],
    out: Path,
    scale: int = 4,
    stride: int = 2,
    threshold: float = DEFAULT_THRESHOLD,
    holdout: str | None = None,
    holdout_fraction: float = 0.15,
    max_frames: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ClipPlan]:
    """Writes the Vimeo-90K septuplet layout from videos or frame folders (atomically: the output
    folder appears only when complete). Each frame is written once under ``frames/`` and hard-linked
    into its septuplets."""
    plans = []
    train_list, test_list = [], []
    with atomic_dir(out) as root:
        for source in sources:
            name = clip_name(source)
            probes.reached(f"prepare clip {name}")
            frames = _load_clip(source, scale, max_frames)
            cuts = detect_cuts(frames, threshold)
            plan = plan_septuplets(
                name, len(frames), cuts, parse_holdout(holdout, holdout_fraction, name, len(frames)), stride
            )
            plans.append(plan)
            if progress:
                progress(
                    f"{name}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, cuts at {cuts}, "
                    f"held out {plan.holdout[0]}-{plan.holdout[1] - 1}: {len(plan.train)} train / "
                    f"{len(plan.test)} test septuplets"
                )
            used = sorted({s + j for s, _ in plan.train + plan.test for j in range(SEQ_LEN)})
            store = {"hr": root / "frames" / name / "hr", "lr": root / "frames" / name / f"lr_x{scale}"}
            for d in store.values():
                d.mkdir(parents=True)
            for i in used:
                write_png(store["hr"] / f"{i:05d}.png", frames[i])
                write_png(store["lr"] / f"{i:05d}.png", imresize(frames[i], 1 / scale))
            for group, target in ((plan.train, train_list), (plan.test, test_list)):
                for s, _ in group:
                    seq = f"{name}/{s:05d}"
                    for kind, top in (("hr", "sequences"), ("lr", f"LR_x{scale}")):
                        d = root / top / seq
                        d.mkdir(parents=True)
                        for j in range(SEQ_LEN):
                            _link_or_copy(store[kind] / f"{s + j:05d}.png", d / f"im{j + 1}.png")
                    target.append(seq)
        (root / "sep_trainlist.txt").write_text("".join(f"{s}\n" for s in train_list))
        (root / "sep_testlist.txt").write_text("".join(f"{s}\n" for s in test_list))
        manifest_of_tree(root)  # the proof that a later `--overwrite` may replace this folder
    return plans


def prepare_vid4(
    sources: Sequence[Path],
    out: Path,
    scale: int = 4,
    threshold: float = DEFAULT_THRESHOLD,
    start: int = 0,
    count: int | None = None,
    holdout: str | None = None,
    min_frames: int = SEQ_LEN,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Writes the Vid4/SPMC layout: one scene per shot (``<clip>_<first frame>``) of frames
    ``[start, start+count)`` of each source (or of its ``--holdout`` range); shots shorter than
    ``min_frames`` are skipped."""
    scenes = []
    with atomic_dir(out) as root:
        for source in sources:
            name = clip_name(source)
            probes.reached(f"prepare clip {name}")
            frames = _load_clip(source, scale, None)
            a, b = start, len(frames) if count is None else min(len(frames), start + count)
            if holdout:
                a, b = parse_holdout(holdout, 0.0, name, len(frames))
            elif start >= len(frames):
                raise D3DError(
                    f"{source}: --start {start} is past the end: it has {len(frames)} frames (0 to {len(frames) - 1})"
                )
            frames = frames[a:b]
            cuts = detect_cuts(frames, threshold)
            for s, e in shots(len(frames), cuts):
                if e - s < min_frames:
                    if progress:
                        progress(f"{name}: skipped shot {a + s}-{a + e - 1} ({e - s} frames < {min_frames})")
                    continue
                scene = f"{name}_{a + s:05d}"
                (root / scene / "hr").mkdir(parents=True)
                (root / scene / f"lr_x{scale}").mkdir(parents=True)
                for k, f in enumerate(frames[s:e]):
                    write_png(root / scene / "hr" / f"hr_{k + 1:02d}.png", f)
                    write_png(root / scene / f"lr_x{scale}" / f"lr_{k + 1:02d}.png", imresize(f, 1 / scale))
                scenes.append(scene)
                if progress:
                    progress(f"{name}: scene {scene}: frames {a + s}-{a + e - 1}")
        if not scenes:  # an empty test set would score nothing: refuse rather than write it
            raise D3DError(f"no shot of at least {min_frames} frames in the frames chosen: no scene to write")
        manifest_of_tree(root)  # the proof that a later `--overwrite` may replace this folder
    return scenes


# -------------------------------------------------------------------------------------- datasets
def read_list(root: Path, name: str) -> list[str]:
    path = root / name
    if not path.is_file():
        raise D3DError(f"{path}: missing (expected the Vimeo-90K septuplet layout)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class FrameCache:
    """Y planes (float32, the seed's rgb2ycbcr) of PNG files, decoded once. Keyed by inode, so the
    hard-linked frames that overlapping septuplets share are decoded once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def y(self, path: Path) -> np.ndarray:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise D3DError(f"{path}: no such file (a frame of a septuplet the list names)") from None
        key = (st.st_dev, st.st_ino)
        arr = self._cache.get(key)
        if arr is None:
            arr = rgb_to_y(read_image(path).astype(np.float32) / 255.0).astype(np.float32)
            self._cache[key] = arr
        return arr


class SeptupletSet:
    """Septuplets of a Vimeo-90K-layout folder; ``sample(i, rng)`` gives ``(LR [1,7,h,w], HR [1,7,sh,sw])``
    Y tensors: a random ``patch`` x ``patch`` LR crop (5 pixels from the border, as the seed) with random
    flips and transposition, or with ``rng=None`` the centre crop without augmentation (validation)."""

    def __init__(self, root: Path, list_name: str, scale: int = 4, patch: int = 32) -> None:
        self.root, self.scale, self.patch = Path(root), scale, patch
        self.names = read_list(self.root, list_name)
        self.cache = FrameCache()

    def __len__(self) -> int:
        return len(self.names)

    def _stack(self, top: str, name: str) -> np.ndarray:
        d = self.root / top / name
        return np.stack([self.cache.y(d / f"im{j + 1}.png") for j in range(SEQ_LEN)], 0)

    def sample(self, i: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[i]
        lr_all = self._stack(f"LR_x{self.scale}", name)
        hr_all = self._stack("sequences", name)
        h, w = lr_all.shape[1:]
        p, s = self.patch, self.scale
        if h < p + 10 or w < p + 10:
            raise D3DError(f"{name}: LR frames {w}x{h} too small for {p}x{p} crops")
        if rng is None:
            y0, x0 = (h - p) // 2, (w - p) // 2
        else:
            y0, x0 = int(rng.integers(5, h - p - 5 + 1)), int(rng.integers(5, w - p - 5 + 1))
        lr = lr_all[:, y0 : y0 + p, x0 : x0 + p]
        hr = hr_all[:, y0 * s : (y0 + p) * s, x0 * s : (x0 + p) * s]
        if rng is not None:
            flips = rng.random(3) < 0.5
            if flips[0]:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
            if flips[1]:
                lr, hr = lr[:, :, ::-1], hr[:, :, ::-1]
            if flips[2]:
                lr, hr = lr.transpose(0, 2, 1), hr.transpose(0, 2, 1)
        return torch.from_numpy(np.ascontiguousarray(lr))[None], torch.from_numpy(np.ascontiguousarray(hr))[None]


@dataclass
class TestClip:
    """One Vid4/SPMC scene: HR and LR RGB uint8 frames."""

    name: str
    hr: list[np.ndarray]
    lr: list[np.ndarray]


def _natural(p: Path) -> tuple:
    """Sort key that orders hr_99.png before hr_100.png (the seed numbers frames without fixed width)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


def load_vid4(root: Path, scale: int = 4) -> list[TestClip]:
    """Every scene folder of a Vid4/SPMC-layout root (or the root itself when it is one scene)."""
    root = Path(root)
    scene_dirs = [root] if (root / "hr").is_dir() else sorted(d for d in root.iterdir() if (d / "hr").is_dir())
    if not scene_dirs:
        raise D3DError(f"{root}: no scene folders with hr/ and lr_x{scale}/")
    clips = []
    for d in scene_dirs:
        hr_files = sorted((d / "hr").glob("*.png"), key=_natural)
        lr_files = sorted((d / f"lr_x{scale}").glob("*.png"), key=_natural)
        if not hr_files or len(hr_files) != len(lr_files):
            raise D3DError(f"{d}: {len(hr_files)} HR and {len(lr_files)} LR frames")
        clips.append(TestClip(d.name, [read_image(p) for p in hr_files], [read_image(p) for p in lr_files]))
    return clips


def load_vimeo_test(root: Path, scale: int = 4, list_name: str = "sep_testlist.txt") -> list[TestClip]:
    """The septuplets of a Vimeo test list, each as a 7-frame clip (as the seed's TestSetLoader_Vimeo)."""
    clips = []
    for name in read_list(Path(root), list_name):
        hr = [read_image(Path(root) / "sequences" / name / f"im{j + 1}.png") for j in range(SEQ_LEN)]
        lr = [read_image(Path(root) / f"LR_x{scale}" / name / f"im{j + 1}.png") for j in range(SEQ_LEN)]
        clips.append(TestClip(name, hr, lr))
    return clips


def clip_from_video(source: Path, scale: int = 4, start: int = 0, count: int | None = None) -> TestClip:
    """A test clip made from a video: HR frames as decoded, LR by the MATLAB-style x1/scale resize."""
    hr = [crop_to_multiple(f, scale) for f in read_frames(source, start, count)]
    if not hr and start > 0:
        n = sum(1 for _ in read_frames(source))
        if n:
            raise D3DError(f"{source}: --start {start} is past the end: it has {n} frames (0 to {n - 1})")
    if not hr:
        raise D3DError(f"{source}: no frames")
    return TestClip(clip_name(Path(source)), hr, [imresize(f, 1 / scale) for f in hr])
