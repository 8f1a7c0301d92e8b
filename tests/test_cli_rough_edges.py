"""Issue 8, continued: a new user's second review of the safe command line: closed stdout, usage on no
command, unwritable and locked outputs, unknown extensions, --start past the end, corrupt files, train
and eval refusals, list defaults in --help. Each checked for the exit code, the one message line and the
file system afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_S, Probed, fails, snapshot, write_frames

from d3d.cli import main as cli

# --- a new user's second review: the CLI's remaining rough edges ------------------------------------

D3D_EXE = str(Path(sys.executable).parent / "d3d")


def _d3d(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    """The installed executable, as a user runs it (console_main: exit codes, stdout handling)."""
    return subprocess.run([D3D_EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=HANG_S, **kw)


def test_closed_stdout_ends_quietly_with_141(work, tiny_checkpoint):
    """`d3d upscale ... -o - | head -c 100`: the reader goes away mid-stream. Like other tools on EPIPE:
    no message, exit 141 (128 + SIGPIPE, what a shell reports for `yes | head`), nothing left behind."""
    before = snapshot(work)
    cmd = [D3D_EXE, "upscale", "tiny8", "--checkpoint", str(tiny_checkpoint), "--backend", "pytorch", "-o", "-",
           "-q", "--no-estimate"]  # fmt: skip
    # 8 frames of 128x128 y4m are ~400 kB: far more than a pipe buffers, so the writer is blocked on it.
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=HANG_S) == 141, err
    assert "error" not in err and "Traceback" not in err and "Broken pipe" not in err, err
    assert snapshot(work) == before
    # Any command whose reader went away before it printed (`d3d info | true`): the same.
    proc = subprocess.Popen([D3D_EXE, "info"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=HANG_S) == 141 and err == "", err


def test_no_command_prints_the_usage_to_stderr_and_exits_2(tmp_path):
    for args in ([], ["--debug"]):
        r = _d3d(args, tmp_path)
        assert r.returncode == 2 and r.stdout == "", r
        assert r.stderr.startswith("usage: d3d ") and "upscale" in r.stderr
        assert "D3D_CACHE_DIR" in r.stderr  # the environment a read-only cache error points to


def _unwritable(request, tmp_path: Path) -> Path:
    """A place no file can be created in: /proc (for root too), or a read-only folder (chmod for a
    user; for root, which ignores permission bits, the immutable attribute where the file system has it)."""
    if request.param == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        return Path("/proc/d3d-nowhere")
    ro = tmp_path / "readonly"
    ro.mkdir()
    return _lock(request, ro)


def _lock(request, folder: Path) -> Path:
    """Makes ``folder`` take no new files (until the test ends)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        request.addfinalizer(lambda: folder.chmod(0o755))
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
    else:
        pytest.skip("running as root on a file system without chattr +i: no read-only folder to make")
    try:
        (folder / ".probe").write_text("")
    except OSError:
        return folder
    pytest.skip(f"{folder} still takes files")


@pytest.fixture(params=["proc", "read-only folder"])
def unwritable(request, tmp_path) -> Path:
    return _unwritable(request, tmp_path)


def test_unwritable_outputs_are_refused_before_any_work(work, unwritable, tiny_checkpoint, capsys):
    """Every writing command refuses an output where no file can be created, in one line naming it,
    before the slow part: the model is never loaded (a corrupt checkpoint goes unnoticed), nothing runs."""
    (work / "corrupt.pth.tar").write_bytes(tiny_checkpoint.read_bytes()[:4000])
    write_frames(work / "big", 8, size=(64, 64))
    assert cli(["prepare", "big", "-o", "ds", "--holdout-fraction", "0.5", "--stride", "1"]) == 0
    capsys.readouterr()
    before = snapshot(work)
    ck = ["--checkpoint", "corrupt.pth.tar"]
    commands = {
        "upscale": ["upscale", "tiny8", *ck, "-o", "{}/out.mp4"],
        "upscale frames": ["upscale", "tiny8", *ck, "-o", "{}/frames"],
        "--summary-json": ["upscale", "tiny8", *ck, "-o", "out", "--summary-json", "{}/s.json"],
        "export": ["export", "corrupt.pth.tar", "-o", "{}/m.onnx"],
        "build": ["build", "m.onnx", "-o", "{}/m.engine"],
        "prepare": ["prepare", "big", "-o", "{}/ds"],
        "train": ["train", "ds", "-o", "{}/run", "--steps", "1"],
        "train --resume": ["train", "ds", "-o", "{}/run", "--resume", "corrupt.pth.tar"],
        "eval --json": ["eval", "ds", *ck, "--json", "{}/e.json"],
        "bench --json": ["bench", *ck, "--json", "{}/b.json", "--backends", "pytorch"],
    }
    for name, args in commands.items():
        target = next(a for a in args if "{}" in a).format(unwritable)
        # quiet: nothing started (upscale prints its model line, bench "benchmarking ...", train its plan)
        msg = fails([a.format(unwritable) for a in args], capsys, quiet=True)
        assert msg.startswith(f"d3d: error: {target}") and "cannot write there" in msg, (name, msg)
        assert "internal error" not in msg, (name, msg)
    assert snapshot(work) == before


def test_read_only_output_folder_is_refused_before_replacing(work, request, tiny_checkpoint, capsys):
    """`--overwrite` of a d3d-written folder that was made read-only: refused up front (replacing moves
    it aside, which would fail only after the whole run), nothing touched."""
    args = ["upscale", "tiny8", "--checkpoint", str(tiny_checkpoint), "--backend", "pytorch", "-o", "out", "-q",
            "--no-estimate", "--max-frames", "1"]  # fmt: skip
    assert cli(args) == 0
    capsys.readouterr()
    _lock(request, work / "out")
    before = snapshot(work)
    msg = fails([*args, "--overwrite"], capsys, quiet=True)
    assert msg.startswith("d3d: error: out (output): cannot replace it (cannot create files in"), msg
    assert snapshot(work) == before


def test_output_under_a_file_says_the_parent_is_not_a_folder(work, tiny_checkpoint, capsys):
    before = snapshot(work)
    msg = fails(["upscale", "tiny8", "--checkpoint", str(tiny_checkpoint), "-o", "notes.txt/out"], capsys)
    assert f"{work / 'notes.txt'} is a file, not a folder" in msg and "not writable" not in msg
    msg = fails(["prepare", "tiny8", "-o", "notes.txt/deeper/ds"], capsys)
    assert "notes.txt is a file, not a folder" in msg
    assert snapshot(work) == before


def test_read_only_cache_is_one_line_naming_d3d_cache_dir(work, unwritable, tiny_checkpoint, monkeypatch, capsys):
    """The first use of a checkpoint on ONNX Runtime exports it into the cache: a cache that takes no
    files is one line saying which folder and what to set, before the model loads."""
    monkeypatch.setenv("D3D_CACHE_DIR", str(unwritable / "cache"))
    before = snapshot(work)
    msg = fails(["upscale", "tiny8", "--checkpoint", str(tiny_checkpoint), "--backend", "onnxruntime", "-o", "o"],
                capsys)  # fmt: skip
    assert msg.startswith(f"d3d: error: {unwritable / 'cache' / 'onnx'}: cannot write the d3d cache"), msg
    assert "set D3D_CACHE_DIR to a writable folder" in msg
    assert snapshot(work) == before


def test_unknown_output_extension_is_refused(work, tiny_checkpoint, capsys):
    """`-o out.xyz` once wrote a frame folder named out.xyz; a name without an extension still is a
    frame folder, and so is an existing folder whatever its name."""
    before = snapshot(work)
    for name in ("out.xyz", "out.png"):
        msg = fails(["upscale", "tiny8", "--checkpoint", str(tiny_checkpoint), "-o", name], capsys)
        assert f"{name}: unknown output type" in msg and ".mp4" in msg and ".mkv" in msg and "folder" in msg
    assert snapshot(work) == before
    (work / "frames.v2").mkdir()
    assert cli(["upscale", "tiny8", "--checkpoint", str(tiny_checkpoint), "--backend", "pytorch", "-o", "frames.v2",
                "-q", "--no-estimate", "--max-frames", "2"]) == 0  # fmt: skip
    assert sorted(p.name for p in (work / "frames.v2").iterdir()) == [
        ".d3d-manifest.json",
        "frame_000000.png",
        "frame_000001.png",
    ]


def _video(path: Path, frames: int) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.height, s.width, s.pix_fmt = 32, 32, "yuv420p"
        for k in range(frames):
            rgb = np.full((32, 32, 3), 20 * k, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def test_start_past_the_end_names_both_numbers(work, tiny_checkpoint, capsys):
    before = snapshot(work)
    ck = ["--checkpoint", str(tiny_checkpoint), "--backend", "pytorch", "-o", "o"]
    msg = fails(["upscale", "tiny8", "--start", "20", *ck], capsys)
    assert "--start 20 is past the end: the folder has 8 frames (0 to 7)" in msg
    msg = fails(["upscale", "tiny8", "--start", "8", *ck], capsys)
    assert "--start 8 is past the end: the folder has 8 frames" in msg
    _video(work / "five.mp4", 5)
    before = snapshot(work)
    msg = fails(["upscale", "five.mp4", "--start", "9", *ck], capsys)
    assert "five.mp4: --start 9 is past the end: the video has 5 frames (0 to 4)" in msg
    msg = fails(["eval", "five.mp4", "--start", "9", "--bicubic-only"], capsys)
    assert "five.mp4: --start 9 is past the end: it has 5 frames (0 to 4)" in msg
    msg = fails(["prepare", "tiny8", "--layout", "vid4", "--start", "8", "-o", "v4"], capsys)
    assert "tiny8: --start 8 is past the end: it has 8 frames (0 to 7)" in msg
    # Frames left, but no shot long enough for a scene: an empty test set is refused, not written.
    assert cli(["prepare", "tiny8", "--layout", "vid4", "--start", "3", "-o", "v4"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "d3d: error: no shot of at least 7 frames in the frames chosen: no scene to write"
    )
    assert snapshot(work) == before


def test_eval_on_no_test_clips_is_an_error(work, capsys):
    write_frames(work / "big", 8, size=(64, 64))
    assert cli(["prepare", "big", "-o", "ds", "--holdout-fraction", "0"]) == 0
    capsys.readouterr()
    before = snapshot(work)
    msg = fails(["eval", "ds", "--bicubic-only"], capsys)
    assert "ds/sep_testlist.txt: lists no test septuplets" in msg
    assert snapshot(work) == before


def test_corrupt_files_are_named_without_raw_numbers(work, tiny_checkpoint, capsys):
    """PyAV and PIL append error codes, byte counts and offsets; the line says which file is bad and what
    was expected; --debug keeps the library's own words in the traceback."""
    import re

    (work / "bad.mp4").write_bytes(os.urandom(3000))
    frames = write_frames(work / "badframes", 3)
    (frames / "2.png").write_bytes((frames / "2.png").read_bytes()[:60])  # truncated
    (work / "cut.pth.tar").write_bytes(tiny_checkpoint.read_bytes()[:5000])
    before = snapshot(work)
    run = ["--backend", "pytorch", "-o", "o", "-q", "--no-estimate"]
    cases = [
        (["upscale", "bad.mp4", "--checkpoint", str(tiny_checkpoint), *run], "bad.mp4: not a readable video ("),
        (["upscale", "badframes", "--checkpoint", str(tiny_checkpoint), *run],
         f"{Path('badframes') / '2.png'}: frame 1: not a readable image (corrupt, truncated or not an image file)"),
        (["upscale", "tiny8", "--checkpoint", "cut.pth.tar", *run],
         "cut.pth.tar: not a readable PyTorch checkpoint (truncated or corrupt)"),
        (["eval", "bad.mp4", "--bicubic-only"], "bad.mp4: not a readable video ("),
    ]  # fmt: skip
    for args, words in cases:
        msg = fails(args, capsys)
        assert words in msg, msg
        assert "expected" in msg or "image file" in msg, msg
        assert not re.search(r"\d{3,}|Errno|avcodec", msg), msg
    assert cli(["--debug", "upscale", "bad.mp4", "--checkpoint", str(tiny_checkpoint), *run]) == 1
    assert "Invalid data found when processing input" in capsys.readouterr().err
    assert snapshot(work) == before


def _dataset(work: Path) -> Path:
    write_frames(work / "big", 8, size=(64, 64))
    assert cli(["prepare", "big", "-o", "ds", "--holdout-fraction", "0"]) == 0
    return work / "ds"


def test_failed_train_leaves_no_run_folder(work, capsys):
    ds = _dataset(work)
    frame = ds / "LR_x4" / "big" / "00000" / "im4.png"
    frame.write_bytes(b"not a png")
    capsys.readouterr()
    before = snapshot(work)
    small = ["--nf", "4", "--d3d-blocks", "1", "--res-blocks", "1", "--batch", "1", "--patch", "4", "-q"]
    msg = fails(["train", "ds", "-o", "run", "--steps", "2", *small], capsys)
    assert f"{frame.relative_to(work)}: not a readable image" in msg and "internal error" not in msg
    msg = fails(["train", "ds", "-o", "new/deeper/run", "--steps", "2", *small], capsys)
    assert "not a readable image" in msg
    frame.unlink()  # a septuplet the list names, missing a frame
    before = snapshot(work)
    msg = fails(["train", "ds", "-o", "run", "--steps", "2", *small], capsys)
    assert f"{frame.relative_to(work)}: no such file" in msg
    assert snapshot(work) == before  # neither run/ nor new/ (nor new/deeper/) is left


def test_interrupted_train_says_what_it_kept(work, capsys):
    """Ctrl-C keeps the last completed step as a checkpoint to resume from, and says so, instead of
    "partial outputs removed"."""
    _dataset(work)
    capsys.readouterr()
    cmd = [D3D_EXE, "train", "ds", "-o", "run", "--steps", "100000", "--epochs", "100000", "--nf", "4",
           "--d3d-blocks", "1", "--res-blocks", "1", "--batch", "1", "--patch", "4", "--save-every", "1",
           "--val-every", "1000000", "-q"]  # fmt: skip
    # Held before step 3: steps 0-2 are done and saved (--save-every 1), so the kept step is known.
    run = Probed(cmd[1:], work, hold="train step 3", exe=cmd[0])
    try:
        run.wait_held()
        rc, _, err, _ = run.signal(signal.SIGINT)
    finally:
        run.close()
    assert rc == 130, err
    last = Path("run") / "last.pth.tar"
    line = err.strip().splitlines()[-1]
    step = torch.load(work / "run" / "last.state.pt", weights_only=True)["step"]
    assert step == 3
    assert line == f"d3d: interrupted (SIGINT); kept {last} (step {step}): continue with --resume {last}", err
    assert "partial outputs removed" not in err and "Traceback" not in err


def test_help_shows_list_defaults_as_typed(capsys):
    with pytest.raises(SystemExit):
        cli(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: pytorch onnxruntime)" in out and "(default: 68x160)" in out
    from d3d.cli import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit):
            cli([name, "--help"])
        out = capsys.readouterr().out
        assert "(default: [" not in out and "(default: (" not in out and "PosixPath" not in out, name
