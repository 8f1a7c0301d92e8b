"""The time/memory estimate printed before a run: close to the measured peak of a real (small) run, and
a refusal with the numbers and a --tile hint where an (injected) memory limit is too small."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import snapshot, write_frames

from d3d import D3Dnet, save_checkpoint

ESTIMATE = re.compile(r"estimate: (\d+)x(\d+) LR on (\S+): ~([\d.]+) s/frame, peak memory ~(\d+) MB")


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    """Wide enough (nf 32) that activations are a visible part of the process's memory at 128x128."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wide") / "wide.pth.tar"
    save_checkpoint(D3Dnet(nf=32, d3d_blocks=1, res_blocks=1), path)
    return path


def _upscale(work, ckpt, backend, env=None, out="out"):
    cmd = [sys.executable, "-m", "d3d.cli", "upscale", "frames", "--checkpoint", str(ckpt), "--backend", backend,
           "-o", out, "-q", "--summary-json", f"{out}.json"]  # fmt: skip
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
def test_estimate_is_within_50_percent_of_the_measured_peak(tmp_path, wide_checkpoint, backend):
    write_frames(tmp_path / "frames", 4, size=(128, 128))
    proc = _upscale(tmp_path, wide_checkpoint, backend)
    assert proc.returncode == 0, proc.stderr
    m = ESTIMATE.search(proc.stdout)
    assert m, proc.stdout
    assert (int(m[1]), int(m[2])) == (128, 128) and m[3] == backend
    est_s, est_mb = float(m[4]), float(m[5])
    summary = json.loads((tmp_path / "out.json").read_text())
    measured_mb, measured_s = summary["peak_rss_mb"], summary["seconds"] / summary["frames"]
    assert 0.5 * measured_mb <= est_mb <= 1.5 * measured_mb, (est_mb, measured_mb)
    # Time is noisier on a shared machine: the order of magnitude must be right.
    assert measured_s / 4 <= est_s <= measured_s * 4, (est_s, measured_s)


def test_refusal_with_an_injected_memory_limit(tmp_path, wide_checkpoint):
    write_frames(tmp_path / "frames", 4, size=(128, 128))
    proc = _upscale(tmp_path, wide_checkpoint, "pytorch")
    assert proc.returncode == 0, proc.stderr
    est_mb = float(ESTIMATE.search(proc.stdout)[5])
    before = snapshot(tmp_path)
    limit = est_mb * 0.8
    proc = _upscale(tmp_path, wide_checkpoint, "pytorch", env={"D3D_MEMORY_LIMIT_MB": f"{limit:.0f}"}, out="out2")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("d3d: error: estimated peak memory"), proc.stderr
    assert f"{limit:.0f} MB available" in lines[0] and "128x128" in lines[0] and "--tile" in lines[0]
    assert snapshot(tmp_path) == before
    hint = re.search(r"--tile (\d+)", lines[0])
    if hint:  # the suggested tile really fits under the same limit
        env = {"D3D_MEMORY_LIMIT_MB": f"{limit:.0f}"}
        cmd = ["--tile", hint[1]]
        proc = subprocess.run(
            [sys.executable, "-m", "d3d.cli", "upscale", "frames", "--checkpoint", str(wide_checkpoint), "--backend",
             "pytorch", "-o", "out3", "-q", "--max-frames", "2", *cmd], cwd=tmp_path, capture_output=True, text=True,
            env={**os.environ, **env},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr


def test_peak_memory_is_this_process_not_its_parent():
    """The run summary's peak memory: a child started by a process that once held 600 MB reports its
    own peak. Linux's ru_maxrss carries the parent's peak across fork and exec (it made the test above
    fail whenever the test runner had grown large)."""
    child = "from d3d.runtime.backends.base import peak_rss_mb; print(peak_rss_mb())"
    parent = (
        "import subprocess, sys; big = bytearray(600 << 20); big[::4096] = b'x' * len(big[::4096]); "
        f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout)"
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout
    assert float(out.split()[-1]) < 400, out
