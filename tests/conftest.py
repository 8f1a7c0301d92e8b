"""Shared fixtures. Randomness is fresh each run; the seed is printed so a failure can be replayed
with D3D_TEST_SEED=<seed>."""

from __future__ import annotations

import os
import random

import pytest
import torch


def pytest_report_header(config):
    return f"d3d test seed: {_SEED} (set D3D_TEST_SEED to replay)"


_SEED = int(os.environ.get("D3D_TEST_SEED", random.SystemRandom().randrange(2**31)))


@pytest.fixture
def gen() -> torch.Generator:
    """A torch.Generator seeded from the run's seed plus the test's name."""
    import zlib

    name = os.environ.get("PYTEST_CURRENT_TEST", "")
    return torch.Generator().manual_seed(_SEED + zlib.crc32(name.split(" ")[0].encode()))


@pytest.fixture(scope="session")
def native() -> None:
    import d3d.ops

    d3d.ops.ensure_native()


def move_offsets(model, weight_std: float, bias_std: float | None = None):
    """Draws the offset convolutions of a D3Dnet (zero at creation, as in the seed) from normal
    distributions so that its deformable layers sample off the grid: ``weight_std`` makes the offsets
    depend on the input, ``bias_std`` (where given) shifts every tap by about that many pixels. Each
    layer's weight is drawn before its bias, in module order. Returns the model."""
    for m in model.modules():
        if hasattr(m, "conv_offset"):
            torch.nn.init.normal_(m.conv_offset.weight, 0.0, weight_std)
            if bias_std is not None:
                torch.nn.init.normal_(m.conv_offset.bias, 0.0, bias_std)
    return model


# --- Small models, frames and file-system snapshots for the CLI tests ---------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small D3Dnet checkpoint (nf=8, one block of each kind), saved once per session."""
    from d3d import D3Dnet, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth.tar"
    save_checkpoint(D3Dnet(nf=8, d3d_blocks=1, res_blocks=1), path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    """The custom-op ONNX export of :func:`tiny_checkpoint`."""
    import logging

    from d3d import load_checkpoint
    from d3d.export import ExportOptions, export_onnx, file_sha256

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    path = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_onnx(load_checkpoint(tiny_checkpoint), path, ExportOptions(), checkpoint_sha256=file_sha256(tiny_checkpoint))
    return path


def write_png(path, rgb) -> None:
    import av

    with av.open(str(path), "w", format="image2") as out:
        s = out.add_stream("png", rate=1)
        s.height, s.width, s.pix_fmt = rgb.shape[0], rgb.shape[1], "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(p)
        for p in s.encode():
            out.mux(p)


def write_frames(folder, n: int = 8, size: tuple[int, int] = (32, 32), names=None, seed: int = 0):
    """``n`` random RGB PNG frames named ``1.png`` .. ``n.png`` (or ``names``)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names or [f"{k}.png" for k in range(1, n + 1)]:
        write_png(folder / name, rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return folder


def snapshot(root) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``root``, by relative path, hidden ones included."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# --- Processes interrupted at a point they have provably reached (d3d.probes) ----------------------------

# Guards against a hang only, never a verdict: reaching any probe takes seconds here (model loading, an
# export); 600 s is over 50x the slowest measured on a 2-core machine with both cores busy.
HANG_S = 600.0


def committed_frames(work) -> int:
    """Frames of a work folder that are complete in the runtime's own sense: in place *and* recorded in
    its log (runtime/resume.py renames a frame, then appends its sha256). Waiting on the frame files alone
    races with the writer thread's log line (seen once in 16 runs: a snapshot taken between the two)."""
    from pathlib import Path

    from d3d.runtime.resume import LOG

    folder = Path(work) / "frames"
    files = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
    log = Path(work) / LOG
    logged = len(log.read_text().splitlines()) if log.is_file() else 0
    return logged if logged == len(files) else -1  # -1: a frame is between its rename and its log line


class Probed:
    """A ``d3d`` subprocess reporting its probe points (``D3D_TEST_EVENTS``), optionally held at one of them
    (``D3D_TEST_HOLD``), so that a test sends its signal at a known point instead of after a delay."""

    def __init__(self, args, cwd, hold: str | None = None, env: dict | None = None, exe: str | None = None):
        import subprocess
        import sys
        import tempfile
        from pathlib import Path

        fd, name = tempfile.mkstemp(prefix="d3d-events-", suffix=".log")  # outside the tests' snapshots
        os.close(fd)
        self.events = Path(name)
        self.hold = hold
        full_env = {**os.environ, **(env or {}), "D3D_TEST_EVENTS": name}
        if hold:
            full_env["D3D_TEST_HOLD"] = hold
        cmd = [exe] if exe else [sys.executable, "-m", "d3d.cli"]
        self.proc = subprocess.Popen([*cmd, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=full_env)  # fmt: skip

    def lines(self) -> list[str]:
        return self.events.read_text().splitlines()

    def wait_for(self, point: str, also=lambda: True) -> None:
        """Until the process has reported ``point`` (and ``also()`` holds); a process that ended first is
        a failure of the test's set-up, reported with what it printed."""
        import time

        t0 = time.monotonic()
        while not (point in self.lines() and also()):
            if self.proc.poll() is not None:
                _, err = self.proc.communicate()
                raise AssertionError(f"exited ({self.proc.returncode}) before {point!r}: {err[-2000:]}")
            if time.monotonic() - t0 > HANG_S:
                self.proc.kill()
                raise AssertionError(f"never reached {point!r} in {HANG_S:.0f} s (hung?): {self.lines()}")
            time.sleep(0.005)

    def wait_held(self) -> None:
        self.wait_for(f"held {self.hold}")

    def signal(self, sig) -> tuple[int, str, str, float]:
        """Sends ``sig``; (exit code, stdout, stderr, seconds from the signal to the exit)."""
        import subprocess
        import time

        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, out, err, time.monotonic() - t0

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=HANG_S)
        return self.proc.returncode, out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.events.unlink(missing_ok=True)


# --- shared by the command-line safety tests (test_safety.py, test_cli_rough_edges.py) ---------------


def fails(args: list[str], capsys, code: int = 1, quiet: bool = False) -> str:
    """Runs the CLI, expects exit ``code`` and exactly one stderr line starting with ``d3d: error:``
    (``quiet``: and nothing on stdout, i.e. the command refused before starting any work)."""
    from d3d.cli import main as cli

    assert cli(args) == code
    captured = capsys.readouterr()
    assert not quiet or captured.out == "", captured.out
    err = captured.err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("d3d: error: ") and "\x1b[" not in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder with an input frame folder, a user's file and a sub-folder; cwd is inside it."""
    write_frames(tmp_path / "tiny8", 8)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.bin").write_bytes(os.urandom(64))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def serve_extra(module: str):
    """Imports ``module`` of the serve extra (part of ``make setup``), else skips the calling test module;
    under CI=true a missing extra is an error instead."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - the serve extra is part of make setup
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{module.split('.')[0]} is not installed (the serve extra)", allow_module_level=True)
