"""SIGINT/SIGTERM on a running `d3d`: one line, exit 130/143 within 2 s of the signal, no output and no
temporary file; only d3d's work folder stays where it holds completed frames (the line then says how many
and to rerun with --resume, which finishes the output and removes it).

Every signal here is sent at a point the process has provably reached (d3d.probes: a probe line it wrote,
or a point it is held at), never after a delay. Where a test means "while X runs", the process is also
held at a later point, so that it cannot finish before the signal arrives: the signal lands in X or, at
the latest, at that hold. A process that ended before its point fails the test (Probed.wait_for).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Probed, committed_frames, snapshot, write_frames

from d3d import D3Dnet, save_checkpoint
from d3d.cli import main as cli

WORK = ".out.d3d-work"  # d3d's work folder of output "out"
D3D_EXE = str(Path(sys.executable).parent / "d3d")  # the console script a user runs
PROMISE_S = 2.0  # README: a run exits within 2 s of SIGINT/SIGTERM (also with both cores busy)


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory):
    """A model whose time goes into its DeformConv3d layers (nf 16, 3 deformable blocks, no 2-D blocks)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("slow") / "slow.pth.tar"
    save_checkpoint(D3Dnet(nf=16, d3d_blocks=3, res_blocks=1), path)
    return path


def _upscale(work: Path, ckpt: Path, backend: str, hold: str | None, output: str = "out") -> Probed:
    args = ["upscale", "frames", "--checkpoint", ckpt, "--backend", backend, "-o", output, "-q", "--no-estimate"]
    return Probed(args, work, hold=hold)


def _kept_frames(folder: Path) -> int:
    return len([p for p in folder.iterdir() if not p.name.startswith(".")]) if folder.is_dir() else 0


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
    kept = _kept_frames(tmp_path / work / "frames")
    assert 1 <= kept <= total
    assert not [p.name for p in (tmp_path / work).iterdir() if p.name.startswith(".")]  # no temporary video
    assert line == (
        f"d3d: interrupted ({name}); {kept} of {total} frames done and kept in {work}: rerun with --resume to continue"
    )
    return kept


def _clean_exit(rc: int, err: str, seconds: float, sig: int) -> None:
    assert rc == 128 + sig, err
    assert "Traceback" not in err and "terminate called" not in err, err
    assert seconds < PROMISE_S, (seconds, err)


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_after_frames_were_written(tmp_path, slow_checkpoint, backend, sig, monkeypatch):
    """Held before frame 2, once frames 0 and 1 are in the work folder: exactly those two are kept."""
    write_frames(tmp_path / "frames", 8, size=(48, 48))
    before = snapshot(tmp_path)
    run = _upscale(tmp_path, slow_checkpoint, backend, hold="network 2")
    try:
        run.wait_for("held network 2", also=lambda: committed_frames(tmp_path / WORK) == 2)
        rc, _, err, seconds = run.signal(sig)
    finally:
        run.close()
    _clean_exit(rc, err, seconds, sig)
    assert _check_left(tmp_path, before, err, sig) == 2
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
    """Signalled as the network starts frame 0 (most of its time is inside DeformConv3d nodes); held before
    frame 1, so the signal lands in frame 0's network run or, at the latest, at that hold."""
    write_frames(tmp_path / "frames", 8, size=(64, 64))
    before = snapshot(tmp_path)
    run = _upscale(tmp_path, slow_checkpoint, backend, hold="network 1")
    try:
        run.wait_for("network 0")
        rc, _, err, seconds = run.signal(signal.SIGINT)
    finally:
        run.close()
    _clean_exit(rc, err, seconds, signal.SIGINT)
    assert _check_left(tmp_path, before, err, signal.SIGINT) <= 1


def test_interrupt_while_encoding_a_video(tmp_path, slow_checkpoint):
    """A video output: held before frame 4 once frames 0-3 went to the encoder (and are kept); the
    temporary file being encoded is removed, nothing else changes."""
    write_frames(tmp_path / "frames", 8, size=(48, 48))
    before = snapshot(tmp_path)
    work = ".out.mp4.d3d-work"
    run = _upscale(tmp_path, slow_checkpoint, "onnxruntime", hold="network 4", output="out.mp4")
    try:
        run.wait_for(
            "held network 4",
            also=lambda: committed_frames(tmp_path / work) == 4 and any(tmp_path.glob(f"{work}/.out.*.mp4")),
        )
        rc, _, err, seconds = run.signal(signal.SIGTERM)
    finally:
        run.close()
    _clean_exit(rc, err, seconds, signal.SIGTERM)
    assert _check_left(tmp_path, before, err, signal.SIGTERM, work=work) == 4


def test_interrupt_during_the_first_use_export(tmp_path, slow_checkpoint):
    """SIGINT while the checkpoint's export to the ONNX cache is written but not yet renamed into place:
    no output, no cache file, no temporary file."""
    from d3d._native import cache_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "torch_ext").symlink_to(cache_dir() / "torch_ext", target_is_directory=True)
    write_frames(tmp_path / "frames", 4, size=(32, 32))
    before = snapshot(tmp_path / "frames")
    args = ["upscale", "frames", "--checkpoint", slow_checkpoint, "-o", "out", "-q"]
    run = Probed(args, tmp_path, hold="onnx saved", env={"D3D_CACHE_DIR": str(cache)})
    try:
        run.wait_held()
        assert [p.name for p in (cache / "onnx").iterdir() if not p.name.startswith(".")] == []
        assert [p for p in (cache / "onnx").iterdir() if p.name.startswith(".")]  # the export's temporary file
        rc, _, err, seconds = run.signal(signal.SIGINT)
    finally:
        run.close()
    _clean_exit(rc, err, seconds, signal.SIGINT)
    assert err.strip().splitlines()[-1] == "d3d: interrupted (SIGINT); partial outputs removed"
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert list((cache / "onnx").iterdir()) == []  # neither a half-written export nor its temporary file
    assert snapshot(tmp_path / "frames") == before


# --- Start-up: from the first line of d3d's code that can take a signal ---------------------------------
# Before it (the interpreter's own start and `import d3d`, README: "Interrupting d3d") Python's default
# handling applies; that window is not asserted on, as nothing of d3d's can run in it.


def _one_line(err: str, sig: int) -> None:
    lines = err.strip().splitlines()
    assert lines == [f"d3d: interrupted ({signal.Signals(sig).name}); partial outputs removed"], err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_signal_once_the_handlers_are_in_place(tmp_path, sig, entry):
    """At `signals`: console_main's handlers are installed, nothing else of the command has run yet."""
    run = Probed(["info", "--json"], tmp_path, hold="signals", exe=D3D_EXE if entry == "console script" else None)
    try:
        run.wait_held()
        rc, out, err, seconds = run.signal(sig)
    finally:
        run.close()
    _clean_exit(rc, err, seconds, sig)
    _one_line(err, sig)
    assert out == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_signal_while_the_cli_module_is_imported_is_taken_after_it(tmp_path, sig, entry):
    """At `signals deferred` (d3d.cli.signals has run, the CLI's own imports are under way) a signal is noted,
    then taken as soon as console_main starts: the same one line. SIGUSR1 lets the held process go on.
    Both entry points: under `python -m d3d.cli` the package is imported while argv[0] is still "-m"."""
    run = Probed(
        ["info", "--json"], tmp_path, hold="signals deferred", exe=D3D_EXE if entry == "console script" else None
    )
    try:
        run.wait_held()
        run.proc.send_signal(sig)
        rc, out, err, seconds = run.signal(signal.SIGUSR1)
    finally:
        run.close()
    _clean_exit(rc, err, seconds, sig)
    _one_line(err, sig)
    assert out == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_command_is_imported(tmp_path, tiny_onnx, sig):
    """At `command upscale` (torch and the command's modules are about to be imported, which takes seconds):
    one line and 130/143, SIGTERM as SIGINT. Held before the first frame, so it cannot finish first."""
    write_frames(tmp_path / "frames", 8, size=(32, 32))
    before = snapshot(tmp_path)
    args = ["upscale", "frames", "--onnx", tiny_onnx, "-o", "out", "-q", "--no-estimate"]
    run = Probed(args, tmp_path, hold="network 0", exe=D3D_EXE)
    try:
        run.wait_for("command upscale")
        rc, _, err, seconds = run.signal(sig)
    finally:
        run.close()
    _clean_exit(rc, err, seconds, sig)
    _one_line(err, sig)
    assert snapshot(tmp_path) == before


def test_importing_the_cli_as_a_library_leaves_the_signal_handlers_alone():
    """`import d3d.cli` (tests, a notebook) is not the entry point: no probe, Python's own SIGINT handling."""
    code = (
        "import signal, sys; before = signal.getsignal(signal.SIGINT); import d3d.cli; "
        "sys.exit(0 if signal.getsignal(signal.SIGINT) is before and not d3d.cli.signals.IS_ENTRY_POINT else 3)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
