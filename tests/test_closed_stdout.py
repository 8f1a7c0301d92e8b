"""A closed standard output (issue 18): a command whose product is a file finishes its work, writes it and
exits 0 when the reader of its messages has gone (`d3d upscale ... -o x.mp4 | head -1`); a command whose
product is stdout (`info`, `cache list`, `upscale -o -`) ends quietly with 141.

The reader is gone before the process writes anything (the read end of its stdout pipe is closed before it
starts), so its first message meets the closed pipe: no race with how fast it prints."""

from __future__ import annotations

import os
import subprocess
import sys

import av
import onnx
import pytest
from conftest import HANG_S, write_frames

from d3d.cli import COMMANDS

D3D = [sys.executable, "-m", "d3d.cli"]


def _run_with_closed_stdout(args: list[str], cwd, stdin=None) -> tuple[int, str]:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([*D3D, *map(str, args)], cwd=cwd, stdout=write_end, stderr=subprocess.PIPE,
                              stdin=stdin, text=True, timeout=HANG_S)  # fmt: skip
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


def test_upscale_to_a_file_finishes(tmp_path, tiny_onnx):
    write_frames(tmp_path / "frames", 4, size=(32, 32))
    rc, err = _run_with_closed_stdout(["upscale", "frames", "--onnx", tiny_onnx, "-o", "piped.mp4"], tmp_path)
    assert rc == 0, err
    with av.open(str(tmp_path / "piped.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "piped.mp4"]  # no work folder, no lock


def test_export_prepare_and_train_finish(tmp_path, tiny_checkpoint):
    rc, err = _run_with_closed_stdout(["export", tiny_checkpoint, "-o", "m.onnx"], tmp_path)
    assert rc == 0, err
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    write_frames(tmp_path / "big", 8, size=(64, 64))
    rc, err = _run_with_closed_stdout(["prepare", "big", "-o", "ds", "--holdout-fraction", "0"], tmp_path)
    assert rc == 0, err
    assert (tmp_path / "ds" / "sep_trainlist.txt").read_text().strip()
    small = ["--nf", "4", "--d3d-blocks", "1", "--res-blocks", "1", "--batch", "1", "--patch", "4", "--steps", "1"]
    rc, err = _run_with_closed_stdout(["train", "ds", "-o", "run", *small], tmp_path)
    assert rc == 0, err
    assert (tmp_path / "run" / "last.pth.tar").is_file()


@pytest.mark.parametrize("args", [["info"], ["cache", "list"]])
def test_stdout_products_end_quietly_with_141(tmp_path, args):
    rc, err = _run_with_closed_stdout(args, tmp_path)
    assert (rc, err) == (141, "")


def test_upscale_to_stdout_ends_quietly_with_141(tmp_path, tiny_onnx):
    write_frames(tmp_path / "frames", 4, size=(32, 32))
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, err = _run_with_closed_stdout(["upscale", "frames", "--onnx", tiny_onnx, "-o", "-", "-q"], tmp_path)
    assert rc == 141, err
    assert [line.split(":")[0] for line in err.splitlines()] == ["input", "estimate"]  # messages, then quiet
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_every_command_says_whether_stdout_is_its_product():
    """The closed-stdout rule is per command: a new command whose product is stdout must say so."""
    import argparse
    import importlib

    on_stdout = {name: getattr(importlib.import_module(mod), "product_on_stdout", None) for name, (mod, _) in
                 COMMANDS.items()}  # fmt: skip
    assert on_stdout["info"](argparse.Namespace()) is True
    assert on_stdout["cache"](argparse.Namespace(action="list")) is True
    assert on_stdout["cache"](argparse.Namespace(action="clear")) is False
    assert on_stdout["upscale"](argparse.Namespace(output="-")) is True
    assert on_stdout["upscale"](argparse.Namespace(output="x.mp4")) is False
    messages_only = {"export", "verify", "build", "prepare", "train", "eval", "serve"}
    assert {n for n, f in on_stdout.items() if f is None} == messages_only
