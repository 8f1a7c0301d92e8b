"""Streaming runtime and `d3d upscale`: edge handling, end-to-end parity on real frames, bounded
memory, and failures that leave nothing behind."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import move_offsets, write_png

from d3d import D3Dnet
from d3d.cli import main as cli
from d3d.color import rgb_to_ycbcr
from d3d.export import ExportOptions, export_onnx
from d3d.model import D3DnetConfig
from d3d.runtime.backends import Runner
from d3d.runtime.scenes import SceneCuts
from d3d.runtime.sinks import PngFolderSink
from d3d.runtime.sources import FrameSource
from d3d.runtime.windows import UpscaleOptions, upscale_stream
from d3d.samples import sample_clip


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small random D3Dnet with moving offsets, and its custom-op ONNX export."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = D3Dnet(nf=8, d3d_blocks=1, res_blocks=1).eval()
    move_offsets(model, 0.1, 2.0)
    path = tmp_path_factory.mktemp("model") / "small.onnx"
    export_onnx(model, path, ExportOptions())
    return model, path


def _read_pngs(folder: Path, fmt: str = "rgb24") -> list[np.ndarray]:
    frames = []
    for f in sorted(folder.glob("frame_*.png")):
        with av.open(str(f)) as c:
            frames.append(next(c.decode(video=0)).to_ndarray(format=fmt))
    return frames


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


class _ConstantFrames(FrameSource):
    def __init__(self, n: int) -> None:
        self.path, self.total, self.n = Path("synthetic"), n, n

    def frames(self):
        for i in range(self.n):
            yield i, np.full((4, 6, 3), 3 * i, dtype=np.uint8)


class _RecordingRunner(Runner):
    """Scale-1 'network' that records the frames of each window and returns the centre frame."""

    def __init__(self) -> None:
        super().__init__(D3DnetConfig(scale=1, frames=7))
        self.windows: list[list[float]] = []

    def infer(self, window: np.ndarray) -> np.ndarray:
        self.windows.append([float(v) for v in window[0, 0, :, 0, 0]])
        return window[:, :, 3]


@pytest.mark.parametrize("n", [1, 3, 10])
def test_windows_clamp_indices_at_both_ends(n):
    runner = _RecordingRunner()
    # Frames of one flat value each are all cuts to the histogram detector: this test is about the ends.
    opts = UpscaleOptions(y_only=True, scene_cuts=SceneCuts("off"))
    outputs = list(upscale_stream(_ConstantFrames(n), runner, opts))
    assert [i for i, _, _ in outputs] == list(range(n))

    def y_of(i: int) -> float:
        rgb = torch.full((3, 1, 1), 3 * i / 255.0)
        return float(rgb_to_ycbcr(rgb)[0, 0, 0])

    for i, window in enumerate(runner.windows):
        want = [y_of(min(max(j, 0), n - 1)) for j in range(i - 3, i + 4)]
        np.testing.assert_allclose(window, want, rtol=0, atol=1e-6)


def test_upscale_real_frames_matches_pytorch(small, tmp_path):
    """`d3d upscale` on the CPU backend (ONNX Runtime, shared kernel): 4x width and height, same frame
    count, and the output Y equals the PyTorch model on the same windows."""
    model, onnx_path = small
    n = 9
    out = tmp_path / "y"
    rc = cli(["upscale", "--clip", "carphone", "--onnx", str(onnx_path), "--max-frames", str(n), "--downscale", "4",
              "--y-only", "-o", str(out), "-q"])  # fmt: skip
    assert rc == 0
    got = _read_pngs(out, "gray16le")
    assert len(got) == n and got[0].shape == (36 * 4, 44 * 4)

    # Independent reference: decode, take the luma plane (8-bit limited range: the seed's Y is code / 255),
    # downscale, build clamped windows, run PyTorch.
    import torch.nn.functional as F

    with av.open(str(sample_clip("carphone"))) as c:
        luma = []
        for _, f in zip(range(n), c.decode(video=0), strict=False):
            p = f.planes[0]
            luma.append(np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: f.height, : f.width])
    x = torch.from_numpy(np.stack(luma)).float()[:, None] / 255
    y = F.interpolate(x, size=(36, 44), mode="bicubic", align_corners=False, antialias=True).clamp(min=0)
    for i in range(n):
        idx = [min(max(j, 0), n - 1) for j in range(i - 3, i + 4)]
        with torch.no_grad():
            want = model(y[idx].permute(1, 0, 2, 3)[None])[0, 0].clamp(0, 1).numpy()
        np.testing.assert_allclose(got[i] / 65535.0, want, rtol=0, atol=2e-4, err_msg=f"frame {i}")


def test_upscale_to_video(small, tmp_path):
    _, onnx_path = small
    out = tmp_path / "sr.mp4"
    rc = cli(["upscale", "--clip", "carphone", "--onnx", str(onnx_path), "--max-frames", "5", "--downscale", "4",
              "-o", str(out), "-q", "--summary-json", str(tmp_path / "s.json")])  # fmt: skip
    assert rc == 0
    with av.open(str(out)) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (176, 144)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"] == 5 and summary["output_size"] == [176, 144]
    assert not _leftovers(tmp_path)


def test_tiles_cover_the_frame(small, tmp_path):
    """Tiling with overlap writes every output pixel; away from tile seams it equals the whole-frame run."""
    _, onnx_path = small
    common = ["upscale", "--clip", "carphone", "--onnx", str(onnx_path), "--max-frames", "2", "--downscale", "4",
              "--y-only", "-q"]  # fmt: skip
    assert cli([*common, "-o", str(tmp_path / "whole")]) == 0
    assert cli([*common, "--tile", "24", "--tile-overlap", "6", "-o", str(tmp_path / "tiled")]) == 0
    whole, tiled = _read_pngs(tmp_path / "whole", "gray16le"), _read_pngs(tmp_path / "tiled", "gray16le")
    assert [t.shape for t in tiled] == [w.shape for w in whole]
    # The first tile's core (LR rows/cols 0..11) sees 6 px of real context: close to the whole frame.
    diff = np.abs(whole[0][:24, :24].astype(float) - tiled[0][:24, :24]) / 65535
    assert diff.mean() < 0.02


def _peak_rss(onnx_path: Path, frames: int, out: Path) -> float:
    summary = out.with_suffix(".json")
    cmd = [sys.executable, "-m", "d3d.cli", "upscale", "--clip", "bikes", "--onnx", str(onnx_path), "--max-frames",
           str(frames), "--downscale", "8", "-o", str(out), "-q", "--summary-json", str(summary)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    data = json.loads(summary.read_text())
    assert data["frames"] == frames
    return data["peak_rss_mb"]


def test_memory_does_not_grow_with_video_length(small, tmp_path):
    _, onnx_path = small
    short = _peak_rss(onnx_path, 20, tmp_path / "short.mp4")
    long = _peak_rss(onnx_path, 80, tmp_path / "long.mp4")
    assert long <= short * 1.10, f"peak RSS {long:.0f} MB for 80 frames vs {short:.0f} MB for 20"


def _run_failing(args: list[str], capsys) -> str:
    assert cli(args) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_corrupt_and_truncated_video(small, tmp_path, capsys):
    _, onnx_path = small
    # A file whose index sits at the end (as carphone's): cut in half, it cannot be opened.
    data = sample_clip("carphone").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.mp4"
    err = _run_failing(["upscale", str(tmp_path / "cut.mp4"), "--onnx", str(onnx_path), "-o", str(out), "-q"], capsys)
    assert "cut.mp4: not a readable video" in err
    assert not out.exists() and not _leftovers(tmp_path)

    # A file with its index first (faststart): cut, it opens but ends early -> named frame.
    fast = tmp_path / "fast.mp4"
    with av.open(str(fast), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(30):
            img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = fast.read_bytes()
    (tmp_path / "fastcut.mp4").write_bytes(data[: len(data) // 2])
    err = _run_failing(
        ["upscale", str(tmp_path / "fastcut.mp4"), "--onnx", str(onnx_path), "-o", str(tmp_path / "o2"), "-q"], capsys
    )
    assert "fastcut.mp4" in err and "frame" in err
    # No output; the frames completed before the error stay in d3d's work folder only, as the line says.
    assert not (tmp_path / "o2").exists() and _leftovers(tmp_path) == [tmp_path / ".o2.d3d-work"]
    assert err.endswith(f"frames done and kept in {tmp_path / '.o2.d3d-work'}: rerun with --resume to continue")

    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    err = _run_failing(["upscale", str(tmp_path / "noise.mp4"), "--onnx", str(onnx_path), "-o", str(out)], capsys)
    assert "noise.mp4" in err


def test_bad_frame_folders(small, tmp_path, capsys):
    _, onnx_path = small
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    write_png(unreadable / "0000.png", rgb)
    (unreadable / "0001.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    err = _run_failing(["upscale", str(unreadable), "--onnx", str(onnx_path), "-o", str(out), "-q"], capsys)
    assert "0001.png" in err and "frame 1" in err
    assert not out.exists() and not _leftovers(tmp_path)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(3):
        write_png(mixed / f"{i:04d}.png", rgb if i != 2 else rgb[:20])
    err = _run_failing(["upscale", str(mixed), "--onnx", str(onnx_path), "-o", str(out), "-q"], capsys)
    assert "0002.png" in err and "frame 2" in err and "32x20" in err
    assert not out.exists() and not _leftovers(tmp_path)

    empty = tmp_path / "empty"
    empty.mkdir()
    err = _run_failing(["upscale", str(empty), "--onnx", str(onnx_path), "-o", str(out)], capsys)
    assert "no image frames" in err


def test_frame_folder_round_trip(small, tmp_path):
    """A folder of frames in, PNG frames out (x4)."""
    _, onnx_path = small
    frames = tmp_path / "in"
    sink = PngFolderSink(frames)
    rng = np.random.default_rng(2)
    for _ in range(4):
        sink.write(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8))
    sink.commit()
    assert cli(["upscale", str(frames), "--onnx", str(onnx_path), "-o", str(tmp_path / "out"), "-q"]) == 0
    out = _read_pngs(tmp_path / "out")
    assert len(out) == 4 and out[0].shape == (80, 112, 3)


def test_pytorch_backend_matches_onnxruntime(small, tmp_path):
    """The same ONNX weights through the PyTorch backend (model rebuilt from the file) and ONNX Runtime."""
    _, onnx_path = small
    common = ["upscale", "--clip", "carphone", "--onnx", str(onnx_path), "--max-frames", "3", "--downscale", "4",
              "--y-only", "-q"]  # fmt: skip
    assert cli([*common, "--backend", "pytorch", "-o", str(tmp_path / "pt")]) == 0
    assert cli([*common, "--backend", "onnxruntime", "-o", str(tmp_path / "ort")]) == 0
    for a, b in zip(_read_pngs(tmp_path / "pt", "gray16le"), _read_pngs(tmp_path / "ort", "gray16le"), strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 8  # 8 / 65535 ~ 1.2e-4


def test_network_rate_counts_only_the_frames_the_network_ran():
    from d3d.runtime.executor import Summary

    assert Summary(frames=8, network_seconds=2.0).network_fps == 4.0
    assert Summary(frames=8, network_seconds=2.0, resumed=3).network_fps == 2.5  # 5 frames in 2 s
    assert Summary(frames=8, network_seconds=0.0, resumed=8).network_fps == 0.0
