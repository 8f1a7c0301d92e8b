"""SIGINT/SIGTERM on a running `d3d upscale`: one line, exit 130/143 within 2 s, no output and no
temporary file; only d3d's work folder stays where it holds completed frames (the line then says how many
and to rerun with --resume, which finishes the output and removes it) — after a frame was written, and
while the network (its DeformConv3d nodes) runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import snapshot, write_frames

from d3d import D3Dnet, save_checkpoint
from d3d.cli import main as cli

WORK = ".out.d3d-work"  # d3d's work folder of output "out"


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory):
    """A model whose time goes into its DeformConv3d layers (nf 16, 3 deformable blocks, no 2-D blocks)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("slow") / "slow.pth.tar"
    save_checkpoint(D3Dnet(nf=16, d3d_blocks=3, res_blocks=1), path)
    return path


def _start(work: Path, ckpt: Path, backend: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "d3d.cli", "upscale", "frames", "--checkpoint", str(ckpt), "--backend", backend,
           "-o", "out", "-q", "--no-estimate"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("the run never reached the point to interrupt")
        time.sleep(0.01)


def _check_left(tmp_path: Path, before: dict, err: str, sig: int, total: int = 8, work: str = WORK) -> int:
    """The output is absent, everything but d3d's work folder is as before, and the last line says what
    stays: nothing (no frame was complete) or the frames kept and how to continue. Returns frames kept."""
    line = err.strip().splitlines()[-1]
    name = signal.Signals(sig).name
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(work)} == before  # no output, no temporary file
    if not (tmp_path / work).exists():
        assert line == f"d3d: interrupted ({name}); partial outputs removed"
        return 0
    kept = len([p for p in (tmp_path / work / "frames").iterdir() if not p.name.startswith(".")])
    assert 1 <= kept <= total
    assert not [p.name for p in (tmp_path / work).iterdir() if p.name.startswith(".")]  # no temporary video
    assert line == (
        f"d3d: interrupted ({name}); {kept} of {total} frames done and kept in {work}: rerun with --resume to continue"
    )
    return kept


def _interrupt(proc: subprocess.Popen, sig: int) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err, time.monotonic() - t0


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_after_a_frame_was_written(tmp_path, slow_checkpoint, backend, sig, monkeypatch):
    write_frames(tmp_path / "frames", 8, size=(48, 48))
    before = snapshot(tmp_path)
    proc = _start(tmp_path, slow_checkpoint, backend)
    _wait_for(lambda: (tmp_path / WORK / "frames" / "frame_000000.png").is_file(), proc)
    rc, err, seconds = _interrupt(proc, sig)
    assert rc == 128 + sig, err
    # One line about the interrupt (a first run may log the ONNX export before it), no traceback/abort.
    assert "Traceback" not in err and "terminate called" not in err
    assert seconds < 2.0
    assert _check_left(tmp_path, before, err, sig) >= 1
    # The kept frames are d3d's own: a --resume run finishes the output and removes them.
    monkeypatch.chdir(tmp_path)
    args = ["upscale", "frames", "--checkpoint", str(slow_checkpoint), "--backend", backend, "-o", "out", "-q",
            "--no-estimate", "--resume"]  # fmt: skip
    assert cli(args) == 0
    assert not (tmp_path / WORK).exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".d3d-manifest.json",
        *(f"frame_{i:06d}.png" for i in range(8)),
    ]


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_interrupt_while_the_network_runs(tmp_path, slow_checkpoint, backend):
    """Interrupted once the model is loaded and inference started (the run prints its model line first);
    most of its time is spent inside DeformConv3d nodes, where the signal lands."""
    write_frames(tmp_path / "frames", 8, size=(64, 64))
    before = snapshot(tmp_path)
    proc = _start(tmp_path, slow_checkpoint, backend)
    assert proc.stdout.readline().startswith("input: ")  # printed once the model is loaded
    _wait_for(lambda: (tmp_path / WORK / "frames").is_dir(), proc)  # the sink exists: frames are being computed
    time.sleep(0.2)
    rc, err, seconds = _interrupt(proc, signal.SIGINT)
    assert rc == 130, err
    assert "terminate called" not in err and "Traceback" not in err
    assert seconds < 2.0
    _check_left(tmp_path, before, err, signal.SIGINT)


def test_interrupt_while_encoding_a_video(tmp_path, slow_checkpoint):
    """A video output: the temporary file being encoded is removed, nothing else changes."""
    write_frames(tmp_path / "frames", 8, size=(48, 48))
    before = snapshot(tmp_path)
    cmd = [sys.executable, "-m", "d3d.cli", "upscale", "frames", "--checkpoint", str(slow_checkpoint), "--backend",
           "onnxruntime", "-o", "out.mp4", "-q", "--no-estimate"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(tmp_path.glob(".out.mp4.d3d-work/.out.*.mp4")), proc)  # encoded in the work folder
    time.sleep(0.5)
    rc, err, seconds = _interrupt(proc, signal.SIGTERM)
    assert rc == 143, err
    assert seconds < 2.0
    _check_left(tmp_path, before, err, signal.SIGTERM, work=".out.mp4.d3d-work")


def test_interrupt_during_the_first_use_export(tmp_path, slow_checkpoint):
    """SIGINT while the checkpoint is exported to the ONNX cache: no output, no cache file, no temp file."""
    import os

    from d3d._native import cache_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "torch_ext").symlink_to(cache_dir() / "torch_ext", target_is_directory=True)
    write_frames(tmp_path / "frames", 4, size=(32, 32))
    before = snapshot(tmp_path / "frames")
    cmd = [sys.executable, "-m", "d3d.cli", "upscale", "frames", "--checkpoint", str(slow_checkpoint), "-o", "out",
           "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "D3D_CACHE_DIR": str(cache)})  # fmt: skip
    assert "exporting the model" in proc.stderr.readline()
    time.sleep(0.3)
    rc, err, seconds = _interrupt(proc, signal.SIGINT)
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "d3d: interrupted (SIGINT); partial outputs removed"
    assert seconds < 2.0
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    cached = list((cache / "onnx").iterdir()) if (cache / "onnx").exists() else []
    assert cached == []  # neither a half-written export nor its temporary file
    assert snapshot(tmp_path / "frames") == before


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5])
def test_sigint_during_start_up_is_one_line(tmp_path, delay):
    """Ctrl-C while the executable is still importing (torch, the command's modules): one line, exit 130,
    never a traceback (or, where the command finished first, a normal exit)."""
    exe = Path(sys.executable).parent / "d3d"
    proc = subprocess.Popen([str(exe), "info", "--json"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        json.loads(out)  # finished before the signal arrived
        return
    assert proc.returncode == 130, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("d3d: interrupted"), err
