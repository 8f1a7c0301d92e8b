"""Issue 14: `d3d upscale --resume` after failures and at the edges: an interrupt during the final
encode or commit, a failed frame (kept frames resumed, --overwrite starting over), a work folder that is
not ours; and the review of issue 14: kept frames verified by their sha256 and recomputed when damaged,
files a user put into the work folder kept, the kept note naming the flags needed, refusals in words.

The references are uninterrupted runs of the same command: what resume must reproduce.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_S, snapshot, write_frames
from resume_helpers import WORK, _args, _decoded, _fail_once, _refused, _without

from d3d.cli import main as cli
from d3d.errors import Interrupted

# --- Interrupts at the end, failures, and a folder that is not ours ----------------------------------


@pytest.mark.parametrize("out, step", [("out.mp4", "encode"), ("out.mp4", "commit"), ("out", "commit")])
def test_interrupt_during_the_final_encode_or_commit_resumes(tmp_path, tiny_onnx, capsys, monkeypatch, out, step):
    """Every frame was kept when the interrupt came: the resume runs no network and writes the output."""
    from d3d.atomic import AtomicDir, AtomicFile
    from d3d.runtime.sinks import VideoSink

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    ref = "ref" + Path(out).suffix
    assert cli(_args(tiny_onnx, "frames", ref)) == 0
    before = snapshot(tmp_path)
    owner, name = (VideoSink, "finish") if step == "encode" else (AtomicFile, "commit")
    if out == "out":
        owner = AtomicDir
    _fail_once(monkeypatch, owner, name, Interrupted(signal.SIGINT), out)
    capsys.readouterr()
    assert cli(_args(tiny_onnx, "frames", out)) == 130
    work = tmp_path / f".{out}.d3d-work"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"d3d: interrupted (SIGINT); 6 of 6 frames done and kept in {work.name}: rerun with --resume to continue"
    )
    assert _without(snapshot(tmp_path), work.name) == before

    assert cli(_args(tiny_onnx, "frames", out, "--resume")) == 0
    assert "resume: 6 of 6 frames already done" in capsys.readouterr().out
    assert not work.exists()
    if out == "out":
        assert snapshot(tmp_path / out) == snapshot(tmp_path / ref)
    else:
        assert _decoded(tmp_path / out) == _decoded(tmp_path / ref)


def test_signal_inside_the_commit_waits_for_it(tmp_path, tiny_onnx, capsys, monkeypatch):
    """A signal that arrives while the output is renamed into place is taken after the work folder is
    gone: never a complete output beside a work folder that claims it unfinished."""
    import os

    from d3d.atomic import AtomicFile

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 4, size=(32, 32))
    real = AtomicFile.commit

    def commit(self):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once: the handler runs before the next line
        real(self)

    monkeypatch.setattr(AtomicFile, "commit", commit)
    assert cli(_args(tiny_onnx, "frames", "out.mp4")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "d3d: interrupted (SIGINT); out.mp4 was complete and is written"
    )
    assert (tmp_path / "out.mp4").is_file() and not (tmp_path / ".out.mp4.d3d-work").exists()


def test_a_failure_keeps_completed_frames_and_resume_without_a_run_starts_fresh(tmp_path, tiny_onnx, capsys,
                                                                               monkeypatch):  # fmt: skip
    import d3d.runtime.colour as colour
    from d3d.errors import D3DError

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    assert cli(_args(tiny_onnx, "frames", "ref", "--resume")) == 0  # nothing to resume: a fresh run
    assert "resume: no interrupted run of ref to continue: starting from the first frame" in capsys.readouterr().out

    real, calls = colour.finish, []

    def failing(y_sr, frame, *a):
        calls.append(1)
        if len(calls) == 4:
            raise D3DError("disk trouble")
        return real(y_sr, frame, *a)

    monkeypatch.setattr(colour, "finish", failing)
    assert cli(_args(tiny_onnx, "frames", "out")) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "d3d: error: disk trouble; 3 of 6 frames done and kept in .out.d3d-work: rerun with --resume to continue"
    )
    monkeypatch.setattr(colour, "finish", real)
    assert cli(_args(tiny_onnx, "frames", "out", "--resume")) == 0
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "ref")

    # --overwrite (without --resume) discards kept frames of our own and starts over.
    calls.clear()
    monkeypatch.setattr(colour, "finish", failing)
    assert cli(_args(tiny_onnx, "frames", "out2")) == 1
    monkeypatch.setattr(colour, "finish", real)
    assert (tmp_path / ".out2.d3d-work").is_dir()
    assert cli(_args(tiny_onnx, "frames", "out2", "--overwrite")) == 0
    assert snapshot(tmp_path / "out2") == snapshot(tmp_path / "ref")
    assert not (tmp_path / ".out2.d3d-work").exists()

    # A failure before any frame was complete leaves nothing.
    before = snapshot(tmp_path)
    calls.clear()
    monkeypatch.setattr(colour, "finish", lambda *a: (_ for _ in ()).throw(D3DError("at once")))
    assert cli(_args(tiny_onnx, "frames", "out3")) == 1
    assert snapshot(tmp_path) == before


def test_a_work_folder_that_is_not_ours_is_refused_and_kept(tmp_path, tiny_onnx, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 4, size=(32, 32))
    (tmp_path / ".out.d3d-work").mkdir()
    (tmp_path / ".out.d3d-work" / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"], ["--resume"]):
        msg = _refused(_args(tiny_onnx, "frames", "out", *extra), capsys)
        assert "not a d3d work folder" in msg and "move or remove it, or choose another output name" in msg
    assert snapshot(tmp_path) == before


# --- Review of issue 14: kept frames verified, user files kept, messages that say what to do -----------


def _fail_at(monkeypatch, k: int) -> None:
    """The k-th frame's output conversion fails (a D3DError): frames before it are complete and kept."""
    import d3d.runtime.colour as colour
    from d3d.errors import D3DError

    real, calls = colour.finish, []

    def failing(y_sr, frame, *a):
        calls.append(1)
        if len(calls) == k:
            monkeypatch.setattr(colour, "finish", real)
            raise D3DError("disk trouble")
        return real(y_sr, frame, *a)

    monkeypatch.setattr(colour, "finish", failing)


def _kept_run(tmp_path, model, out: str, k: int, monkeypatch, capsys, *extra: str) -> str:
    """A run of ``frames`` -> ``out`` that fails at frame k (k-1 kept); returns its error line."""
    _fail_at(monkeypatch, k)
    assert cli(_args(model, "frames", out, *extra)) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("out, damage", [("out", "truncated"), ("out.mkv", "replaced"), ("out.mkv", "missing")])
def test_damaged_kept_frames_are_recomputed(tmp_path, tiny_onnx, capsys, monkeypatch, out, damage):
    """A kept frame whose file no longer has the sha256 recorded when it was written (truncated, or a
    valid file with other content) is not used: the network recomputes from it, and the output equals an
    uninterrupted run's. A torn last log line (a kill while appending) is ignored."""
    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    extra = ("--codec", "ffv1") if out.endswith(".mkv") else ()
    ref = "ref" + Path(out).suffix
    assert cli(_args(tiny_onnx, "frames", ref, *extra)) == 0
    _kept_run(tmp_path, tiny_onnx, out, 5, monkeypatch, capsys, *extra)
    work = tmp_path / WORK.format(Path(out).suffix)
    log = work / "frames.sha256"
    assert len(log.read_text().splitlines()) == 4
    bad = work / "frames" / ("frame_000002.png" if out == "out" else "000002.npz")
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:40])
    elif damage == "replaced":
        np.savez_compressed(bad, rgb=np.zeros((10, 10, 3), np.uint8))  # readable, but not the frame written
    else:
        bad.unlink()
    with log.open("a") as f:
        f.write("000003.npz 12ab")  # torn: no newline
    assert cli(_args(tiny_onnx, "frames", out, *extra, "--resume")) == 0
    said = capsys.readouterr().out
    why = "is missing" if damage == "missing" else "was changed or damaged since it was written"
    assert (
        f"resume: 2 of 6 frames already done in {work.name} (frames/{bad.name} {why}: the network recomputes "
        "from there); the network continues from input frame 2" in said
    ), said
    assert not work.exists()
    if out == "out":
        assert snapshot(tmp_path / out) == snapshot(tmp_path / ref)
    else:
        assert _decoded(tmp_path / out) == _decoded(tmp_path / ref)


def test_an_unreadable_kept_frame_is_one_error_then_recomputed(tmp_path, tiny_onnx, capsys, monkeypatch):
    """A kept .npz that matches its record yet cannot be read (written damaged) is one error line, never
    an internal error, and is removed, so the next --resume recomputes it instead of failing again."""
    import hashlib

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    extra = ("--codec", "ffv1")
    assert cli(_args(tiny_onnx, "frames", "ref.mkv", *extra)) == 0
    _kept_run(tmp_path, tiny_onnx, "out.mkv", 5, monkeypatch, capsys, *extra)
    work = tmp_path / WORK.format(".mkv")
    bad = work / "frames" / "000001.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    log = work / "frames.sha256"
    log.write_text(log.read_text().replace(
        log.read_text().splitlines()[1], f"000001.npz {hashlib.sha256(bad.read_bytes()).hexdigest()}"
    ))  # fmt: skip
    msg = _refused(_args(tiny_onnx, "frames", "out.mkv", *extra, "--resume"), capsys)
    assert f"{bad.relative_to(tmp_path)}: the kept frame cannot be read (BadZipFile" in msg and "internal" not in msg
    assert msg.endswith(f"1 of 6 frames done and kept in {work.name}: rerun with --resume to continue"), msg
    assert not bad.exists()
    assert cli(_args(tiny_onnx, "frames", "out.mkv", *extra, "--resume")) == 0
    assert "resume: 1 of 6 frames already done" in capsys.readouterr().out
    assert _decoded(tmp_path / "out.mkv") == _decoded(tmp_path / "ref.mkv")


def test_an_edited_input_file_is_noticed_anywhere_in_it(tmp_path):
    """The input's identity is the sha256 of the whole file: one byte changed in the middle (same size,
    past the first and last MiB) changes it."""
    from d3d.runtime.resume import _input_identity

    f = tmp_path / "in.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes())
    f.write_bytes(bytes(data))
    import hashlib

    first = _input_identity(f)
    assert hashlib.sha256(data).hexdigest() in first and first.startswith(f"{3 << 20} bytes")
    data[len(data) // 2] ^= 1
    f.write_bytes(bytes(data))
    assert _input_identity(f) != first and hashlib.sha256(data).hexdigest() in _input_identity(f)


def test_files_a_user_put_into_the_work_folder_stay(tmp_path, tiny_onnx, capsys, monkeypatch):
    """Only what d3d wrote is removed from its work folder; anything else stays (a warning names it) and
    never becomes part of a PNG output."""
    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    assert cli(_args(tiny_onnx, "frames", "ref")) == 0
    _kept_run(tmp_path, tiny_onnx, "out", 4, monkeypatch, capsys)
    work = tmp_path / WORK.format("")
    (work / "notes.txt").write_text("my notes")
    (work / "sub").mkdir()
    (work / "sub" / "x.txt").write_text("x")
    (work / "frames" / "mine.txt").write_text("mine")
    assert cli(_args(tiny_onnx, "frames", "out", "--resume")) == 0
    err = capsys.readouterr().err
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "ref")  # mine.txt is not in the output
    assert "left in place" in err and "notes.txt" in err and "sub" in err and "mine.txt" in err, err
    assert {k: v for k, v in snapshot(work).items() if k != "settings.json"} == {
        "mine.txt": b"mine", "notes.txt": b"my notes", "sub": None, "sub/x.txt": b"x"
    }  # fmt: skip

    # --overwrite discards the kept frames of a failed run, not the user's files.
    (work / "settings.json").unlink()
    shutil.rmtree(work / "sub")
    (work / "mine.txt").unlink()
    (work / "notes.txt").unlink()
    work.rmdir()
    _kept_run(tmp_path, tiny_onnx, "out2", 4, monkeypatch, capsys)
    work2 = tmp_path / WORK.format("2")
    (work2 / "notes.txt").write_text("my notes")
    assert cli(_args(tiny_onnx, "frames", "out2", "--overwrite")) == 0
    assert snapshot(tmp_path / "out2") == snapshot(tmp_path / "ref")
    assert (work2 / "notes.txt").read_text() == "my notes" and not (work2 / "frames").exists()
    assert not (work2 / "frames.sha256").exists()


def test_the_video_being_encoded_stays_inside_the_work_folder(tmp_path, tiny_onnx, capsys, monkeypatch):
    """A killed run (simulated: the temporary video is not removed) leaves nothing beside the output; the
    temporary video is in the work folder, and the resumed run removes it with the folder."""
    from d3d.atomic import AtomicFile

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    before = snapshot(tmp_path)
    monkeypatch.setattr(AtomicFile, "abort", lambda self: None)  # as SIGKILL: nothing cleans up
    _kept_run(tmp_path, tiny_onnx, "out.mp4", 4, monkeypatch, capsys)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    work = tmp_path / WORK.format(".mp4")
    assert _without(snapshot(tmp_path), work.name) == before
    assert [p.name for p in work.glob(".out.*.mp4")], sorted(p.name for p in work.iterdir())
    assert cli(_args(tiny_onnx, "frames", "out.mp4", "--resume")) == 0
    assert "left in place" not in capsys.readouterr().err
    assert not work.exists() and (tmp_path / "out.mp4").is_file()
    assert _without(snapshot(tmp_path), "out.mp4") == before


def test_disk_full_while_keeping_a_frame(tmp_path, tiny_onnx, capsys, monkeypatch):
    """ENOSPC while a frame is written: the partial temporary is removed, and the one error line says
    which frames are kept and how to continue."""
    import errno

    import d3d.runtime.resume as resume

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    real, calls = resume.write_png_frame, []

    def full(path, image, y16=False):
        calls.append(1)
        if len(calls) == 4:
            path.write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, image, y16)

    monkeypatch.setattr(resume, "write_png_frame", full)
    msg = _refused(_args(tiny_onnx, "frames", "out"), capsys)
    work = tmp_path / WORK.format("")
    assert msg == (
        f"d3d: error: {work.name}/frames/frame_000003.png: cannot keep the frame (No space left on device); "
        f"3 of 6 frames done and kept in {work.name}: rerun with --resume to continue"
    )
    assert sorted(p.name for p in (work / "frames").iterdir()) == [f"frame_00000{k}.png" for k in range(3)]


def test_an_os_error_elsewhere_carries_the_kept_note(tmp_path, tiny_onnx, monkeypatch):
    """Any exception that leaves the run (here an OSError from the encoder) carries what is kept."""
    import errno

    from d3d.cli import build_parser
    from d3d.cli.commands import upscale
    from d3d.errors import kept
    from d3d.runtime.sinks import VideoSink

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    real, calls = VideoSink.write, []

    def full(self, frame):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", "out.mp4")
        real(self, frame)

    monkeypatch.setattr(VideoSink, "write", full)
    parser, commands = build_parser()
    upscale.add_arguments(commands["upscale"])
    with pytest.raises(OSError) as info:
        upscale.run(parser.parse_args(_args(tiny_onnx, "frames", "out.mp4")))
    # the third frame was kept before the encoder failed on it
    assert kept(info.value) == "3 of 6 frames done and kept in .out.mp4.d3d-work: rerun with --resume to continue"


def test_the_kept_note_names_the_flags_needed(tmp_path, tiny_onnx, capsys, monkeypatch):
    """An --overwrite run of an existing output needs --overwrite again to resume: the note says so, and
    that command continues it. A --resume interrupted while the model loads still keeps the frames."""
    import d3d.runtime.backends as backends

    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    assert cli(_args(tiny_onnx, "frames", "ref")) == 0
    assert cli(_args(tiny_onnx, "frames", "out")) == 0
    line = _kept_run(tmp_path, tiny_onnx, "out", 4, monkeypatch, capsys, "--overwrite")
    assert line.endswith("3 of 6 frames done and kept in .out.d3d-work: rerun with --resume --overwrite to continue")

    real = backends.create_runner  # an interrupt while the model loads, before the work folder is touched
    monkeypatch.setattr(backends, "create_runner", lambda *a: (_ for _ in ()).throw(Interrupted(signal.SIGINT)))
    assert cli(_args(tiny_onnx, "frames", "out", "--resume", "--overwrite")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "d3d: interrupted (SIGINT); 3 of 6 frames done and kept in .out.d3d-work: rerun with --resume --overwrite "
        "to continue"
    )
    monkeypatch.setattr(backends, "create_runner", real)
    assert cli(_args(tiny_onnx, "frames", "out", "--resume", "--overwrite")) == 0
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "ref")


def test_settings_refusal_in_words(tmp_path, tiny_onnx, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 6, size=(32, 32))
    line = _kept_run(tmp_path, tiny_onnx, "out", 2, monkeypatch, capsys)
    assert line.endswith("1 of 6 frames done and kept in .out.d3d-work: rerun with --resume to continue")
    assert "holds 1 frame of" in _refused(_args(tiny_onnx, "frames", "out"), capsys)
    msg = _refused(_args(tiny_onnx, "frames", "out", "--resume", "--max-frames", "5", "--y-only"), capsys)
    assert "--max-frames unset then, 5 now" in msg and "--y-only no then, yes now" in msg, msg
    assert msg.endswith(
        "rerun with the earlier settings, or pass --overwrite instead of --resume to discard the kept frames "
        "and start over"
    )
    write_frames(tmp_path / "frames", 1, size=(32, 32), names=["3.png"], seed=9)
    msg = _refused(_args(tiny_onnx, "frames", "out", "--resume"), capsys)
    assert "(input folder: 3.png changed (size or modification time))" in msg, msg


def test_resume_counts_in_input_frames_and_skips_the_estimate_when_all_are_kept(tmp_path, tiny_onnx, capsys,
                                                                                monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    write_frames(tmp_path / "frames", 8, size=(32, 32))
    _kept_run(tmp_path, tiny_onnx, "out", 4, monkeypatch, capsys, "--start", "2")
    assert cli(_args(tiny_onnx, "frames", "out", "--start", "2", "--resume")) == 0
    assert "3 of 6 frames already done in .out.d3d-work; the network continues from input frame 5" in (
        capsys.readouterr().out
    )

    from d3d.atomic import AtomicDir

    _fail_once(monkeypatch, AtomicDir, "commit", Interrupted(signal.SIGINT), "out2")
    assert cli(_args(tiny_onnx, "frames", "out2")) == 130
    capsys.readouterr()
    args = [a for a in _args(tiny_onnx, "frames", "out2", "--resume") if a != "--no-estimate"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "8 of 8 frames already done in .out2.d3d-work; nothing left for the network" in out
    assert "estimate:" not in out
    assert cli([a for a in _args(tiny_onnx, "frames", "out3") if a != "--no-estimate"]) == 0
    assert "estimate:" in capsys.readouterr().out  # where the network runs, it is estimated


def test_resume_with_a_pipe_runs_without_a_work_folder(tmp_path, tiny_onnx):
    write_frames(tmp_path / "frames", 3, size=(32, 32))
    proc = subprocess.run(
        [sys.executable, "-m", "d3d.cli", *_args(tiny_onnx, "frames", "-", "--resume")],
        cwd=tmp_path, capture_output=True, timeout=HANG_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"YUV4MPEG2")
    err = proc.stderr.decode()
    assert "resume: the output - (stdout) is a pipe, which cannot be resumed: running without a work folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]
