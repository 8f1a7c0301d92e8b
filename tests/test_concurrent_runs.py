"""Two runs onto one output (issue 18): the second is refused in one line naming the first d3d process
(its PID), with or without --overwrite / --resume, and the first run's output comes out intact and equal
to an undisturbed run's. The lock dies with its process: after a SIGKILL, --resume proceeds.

The first run is a subprocess held at a probe point (d3d.probes) while the second one is tried in this
process; SIGUSR1 lets the first go on."""

from __future__ import annotations

import signal

import pytest
from conftest import Probed, committed_frames, snapshot, write_frames

from d3d.cli import main as cli
from d3d.locks import lock_path


def _refused(args: list[str], capsys, pid: int) -> str:
    capsys.readouterr()
    assert cli(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("d3d: error: "), lines
    assert f"(PID {pid}" in lines[0] and "another d3d process" in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def frames(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    return tmp_path


def _decoded(path) -> list:
    import av

    with av.open(str(path)) as c:
        return [(f.pts, f.to_ndarray().tobytes()) for f in c.decode(video=0)]


@pytest.mark.parametrize("output", ["out", "out.mkv"])
def test_second_upscale_onto_one_output_is_refused(frames, tiny_onnx, capsys, output):
    codec = ["--codec", "ffv1"] if output.endswith(".mkv") else []
    common = ["upscale", "frames", "--onnx", str(tiny_onnx), "-q", "--no-estimate", *codec]
    ref = f"ref{output[3:]}"
    assert cli([*common, "-o", ref]) == 0  # the undisturbed run
    args = [*common, "-o", output]
    work = frames / f".{output}.d3d-work"
    first = Probed(args, frames, hold="network 2")
    try:
        first.wait_for("held network 2", also=lambda: committed_frames(work) == 2)
        held = snapshot(work)
        for extra in ([], ["--overwrite"], ["--resume"], ["--resume", "--overwrite"]):
            msg = _refused([*args, *extra], capsys, first.proc.pid)
            assert msg.startswith(f"d3d: error: {output}: another d3d process (PID {first.proc.pid}: d3d upscale")
        assert snapshot(work) == held  # the running run's frames untouched
        first.proc.send_signal(signal.SIGUSR1)
        rc, _, err = first.finish()
    finally:
        first.close()
    assert rc == 0, err
    assert not work.exists() and not lock_path(frames / output).exists()
    if output == "out":
        assert snapshot(frames / output) == snapshot(frames / ref)
    else:
        assert _decoded(frames / output) == _decoded(frames / ref)


def test_resume_after_a_killed_run_proceeds(frames, tiny_onnx, capsys):
    """SIGKILL: no handler runs, the lock file stays behind, but its lock died with the process."""
    common = ["upscale", "frames", "--onnx", str(tiny_onnx), "-q", "--no-estimate"]
    assert cli([*common, "-o", "ref"]) == 0
    args = [*common, "-o", "out"]
    work = frames / ".out.d3d-work"
    first = Probed(args, frames, hold="network 3")
    try:
        first.wait_for("held network 3", also=lambda: committed_frames(work) == 3)
        rc, _, _, _ = first.signal(signal.SIGKILL)
    finally:
        first.close()
    assert rc == -signal.SIGKILL
    assert lock_path(frames / "out").exists()
    capsys.readouterr()
    assert cli([*args, "--resume"]) == 0
    assert "resume: 3 of 6 frames already done" in capsys.readouterr().out
    assert snapshot(frames / "out") == snapshot(frames / "ref")
    assert not work.exists() and not lock_path(frames / "out").exists()


def test_second_train_onto_one_run_folder_is_refused(frames, capsys):
    write_frames(frames / "big", 8, size=(64, 64))
    assert cli(["prepare", "big", "-o", "ds", "--holdout-fraction", "0"]) == 0
    small = ["--nf", "4", "--d3d-blocks", "1", "--res-blocks", "1", "--batch", "1", "--patch", "4", "-q"]
    args = ["train", "ds", "-o", "run", "--steps", "3", "--save-every", "1", "--val-every", "1000", *small]
    first = Probed(args, frames, hold="train step 2")
    try:
        first.wait_held()
        kept = snapshot(frames / "run")
        _refused(args, capsys, first.proc.pid)
        _refused([*args[:4], "--steps", "3", "--resume", "run/last.pth.tar", *args[6:]], capsys, first.proc.pid)
        assert snapshot(frames / "run") == kept
        first.proc.send_signal(signal.SIGUSR1)
        rc, out, err = first.finish()
    finally:
        first.close()
    assert rc == 0, err
    assert "done at step 3" in out
    assert not lock_path(frames / "run").exists()


def test_second_prepare_onto_one_output_is_refused(frames, capsys):
    write_frames(frames / "big", 8, size=(64, 64))
    args = ["prepare", "big", "-o", "ds", "--holdout-fraction", "0"]
    first = Probed(args, frames, hold="prepare clip big")
    try:
        first.wait_held()
        _refused(args, capsys, first.proc.pid)
        _refused([*args, "--overwrite"], capsys, first.proc.pid)
        first.proc.send_signal(signal.SIGUSR1)
        rc, _, err = first.finish()
    finally:
        first.close()
    assert rc == 0, err
    assert cli(["prepare", "big", "-o", "ds2", "--holdout-fraction", "0"]) == 0
    assert snapshot(frames / "ds") == snapshot(frames / "ds2")
    assert not lock_path(frames / "ds").exists()
