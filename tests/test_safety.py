"""Issue 8: every defect class of the safe command line, each checked for the exit code, the single
message line and the file system afterwards (everything that was there is there, byte for byte, and
nothing new is left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from conftest import HANG_S, Probed, snapshot, write_frames, write_png

from d3d.cli import main as cli


def fails(args: list[str], capsys, code: int = 1, quiet: bool = False) -> str:
    """Runs the CLI, expects exit ``code`` and exactly one stderr line starting with ``d3d: error:``
    (``quiet``: and nothing on stdout, i.e. the command refused before starting any work)."""
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


# --- 1. output policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [".", "..", "tiny8", "tiny8/out", "sub"])
def test_output_never_replaces_cwd_inputs_or_foreign_folders(work, tiny_onnx, capsys, target):
    """`-o . --overwrite` (the reported data loss), output = input, output inside the input, and a folder
    of someone else's files: all refused, nothing touched."""
    before = snapshot(work.parent if target == ".." else work)
    msg = fails(["upscale", "tiny8", "--onnx", str(tiny_onnx), "-o", target, "--overwrite", "-q"], capsys)
    assert target.split("/")[0].strip(".") in msg or "current folder" in msg
    assert snapshot(work.parent if target == ".." else work) == before


def test_input_inside_output_is_refused(work, tiny_onnx, capsys):
    (work / "outer").mkdir()
    write_frames(work / "outer" / "frames", 2)
    before = snapshot(work)
    msg = fails(["upscale", "outer/frames", "--onnx", str(tiny_onnx), "-o", "outer", "--overwrite", "-q"], capsys)
    assert "overlaps the input" in msg
    assert snapshot(work) == before


def test_frame_folder_replaced_only_when_our_manifest_lists_everything(work, tiny_onnx, capsys):
    args = ["upscale", "tiny8", "--onnx", str(tiny_onnx), "-o", "out", "-q", "--no-estimate"]
    assert cli(args) == 0
    first = snapshot(work / "out")
    assert ".d3d-manifest.json" in first and len(first) == 9  # 8 frames + manifest
    # Without --overwrite: refused.
    msg = fails(args, capsys)
    assert "already exists" in msg and "--overwrite" in msg
    # Our own output: replaced with --overwrite (same content again, nothing left behind).
    capsys.readouterr()
    assert cli([*args, "--overwrite"]) == 0
    assert snapshot(work / "out") == first
    assert not [p for p in work.iterdir() if p.name.startswith(".")]
    # A user's own file that looks like ours: the folder is no longer ours to delete.
    write_png(work / "out" / "frame_000099.png", __import__("numpy").zeros((4, 4, 3), "uint8"))
    before = snapshot(work)
    msg = fails([*args, "--overwrite"], capsys)
    assert "frame_000099.png" in msg and "did not write" in msg
    assert snapshot(work) == before
    # A frame folder d3d never wrote (no manifest), even with our file names.
    (work / "theirs").mkdir()
    (work / "theirs" / "frame_000001.png").write_bytes(b"user's frame")
    before = snapshot(work)
    msg = fails(["upscale", "tiny8", "--onnx", str(tiny_onnx), "-o", "theirs", "--overwrite", "-q"], capsys)
    assert "not a folder written by d3d" in msg
    assert snapshot(work) == before


def test_export_to_an_existing_folder_and_unwritable_outputs(work, capsys):
    before = snapshot(work)
    msg = fails(["export", "--random-init", "--nf", "4", "--d3d-blocks", "1", "--res-blocks", "1", "-o", "sub"], capsys)
    assert "is a folder" in msg
    msg = fails(["export", "--random-init", "--nf", "4", "-o", "notes.txt/model.onnx"], capsys)
    assert "cannot write there" in msg
    msg = fails(["export", "--random-init", "--nf", "4", "-o", "notes.txt"], capsys)
    assert "already exists" in msg
    assert snapshot(work) == before


def test_report_outputs_follow_the_policy(work, tiny_checkpoint, capsys):
    before = snapshot(work)
    msg = fails(["bench", "--checkpoint", str(tiny_checkpoint), "--json", "notes.txt", "--backends", "pytorch"], capsys)
    assert "already exists" in msg
    msg = fails(["verify", "x.onnx", "--report", "."], capsys)
    assert "current folder" in msg
    assert snapshot(work) == before


# --- 2. ONNX files validated when they load -------------------------------------------------------------


def _with_attr(src: Path, dst: Path, name: str, value) -> None:
    proto = onnx.load(str(src))
    node = next(n for n in proto.graph.node if n.op_type == "DeformConv3d")
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))
    onnx.save(proto, str(dst))


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("strides", [1, -1, 1], "stride along H must be in [1, 2^20], got -1"),
        ("group", 0, "group must be >= 1, got 0"),
        ("deform_dims", "XYZ", 'only the letters T, H, W, got "XYZ"'),
        ("deform_dims", "WH", "in T, H, W order"),
        ("pads", [0, 0], "pads needs 3 values"),
        ("plugin_version", "99", 'plugin_version must be "1"'),
        ("plugin_namespace", "other", 'plugin_namespace must be "d3d"'),
    ],
)
@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_bad_deform_conv3d_attributes_are_one_line(work, tiny_onnx, capsys, name, value, words, backend):
    bad = work / "bad.onnx"
    _with_attr(tiny_onnx, bad, name, value)
    before = snapshot(work)
    msg = fails(["upscale", "tiny8", "--onnx", "bad.onnx", "--backend", backend, "-o", "out.mp4", "-q"], capsys)
    assert "bad.onnx: node" in msg and "DeformConv3d" in msg and words in msg
    assert snapshot(work) == before


# --- 3. named inputs exist; one model source; the summary names it ----------------------------------


@pytest.mark.parametrize("flag", ["--engine", "--onnx", "--checkpoint", "--plugin"])
def test_missing_named_files_are_errors(work, tiny_onnx, capsys, flag):
    before = snapshot(work)
    extra = ["--onnx", str(tiny_onnx), "--backend", "tensorrt"] if flag == "--plugin" else []
    msg = fails(["upscale", "tiny8", flag, "nothere.bin", *extra, "-o", "out", "-q"], capsys)
    assert "nothere.bin" in msg
    assert snapshot(work) == before


def test_conflicting_or_absent_model_sources(work, tiny_onnx, tiny_checkpoint, capsys, monkeypatch):
    import d3d.runtime.models

    # As in an install without the shipped model file: no model named is an error, never random weights.
    monkeypatch.setattr(d3d.runtime.models, "SHIPPED_MODEL", work / "no-shipped-model.pth.tar")
    before = snapshot(work)
    msg = fails(["upscale", "tiny8", "--onnx", str(tiny_onnx), "--checkpoint", str(tiny_checkpoint), "-o", "o"], capsys)
    assert "conflicting model sources" in msg and str(tiny_onnx) in msg and str(tiny_checkpoint) in msg
    msg = fails(["upscale", "tiny8", "--random-init", "--onnx", str(tiny_onnx), "-o", "o"], capsys)
    assert "--random-init" in msg and str(tiny_onnx) in msg
    msg = fails(["upscale", "tiny8", "-o", "o"], capsys)
    assert "--random-init" in msg and "--checkpoint" in msg
    msg = fails(["export", "--random-init", str(tiny_checkpoint), "-o", "m.onnx"], capsys)
    assert "conflicting" in msg and str(tiny_checkpoint) in msg
    assert snapshot(work) == before


def test_no_model_named_runs_the_shipped_model_and_says_so(work, capsys):
    from d3d.runtime.models import SHIPPED_MODEL

    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"no shipped model at {SHIPPED_MODEL}")
    assert cli(["upscale", "tiny8", "-o", "o", "-q", "--no-estimate"]) == 0
    sha = __import__("hashlib").sha256(SHIPPED_MODEL.read_bytes()).hexdigest()
    assert f"checkpoint {SHIPPED_MODEL} (sha256 {sha})" in capsys.readouterr().out
    assert len(list((work / "o").glob("frame_*.png"))) == 8


def test_summary_names_the_model_and_natural_frame_order(work, tiny_checkpoint, capsys):
    names = [f"{k}.png" for k in range(1, 13)]
    write_frames(work / "twelve", names=names, size=(16, 16))
    assert cli(["upscale", "twelve", "--checkpoint", str(tiny_checkpoint), "--backend", "pytorch", "-o", "o",
                "-q", "--summary-json", "s.json"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    sha = __import__("hashlib").sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert f"checkpoint {tiny_checkpoint} (sha256 {sha})" in out
    assert "(1.png .. 12.png)" in out
    summary = json.loads((work / "s.json").read_text())
    assert summary["first_file"] == "1.png" and summary["last_file"] == "12.png"

    from d3d.runtime.sources import FolderSource

    assert [f.name for f in FolderSource(work / "twelve").files] == names


def test_natural_order_reaches_the_network(work):
    """Frame k of the folder holds value k: the windows the runner sees are in 1, 2, ..., 12 order."""
    import numpy as np

    from d3d.model import D3DnetConfig
    from d3d.runtime.backends import Runner
    from d3d.runtime.sources import FolderSource
    from d3d.runtime.windows import UpscaleOptions, upscale_stream

    folder = work / "valued"
    folder.mkdir()
    for k in range(1, 13):
        write_png(folder / f"{k}.png", np.full((4, 4, 3), 10 * k, dtype=np.uint8))

    class Centre(Runner):
        def __init__(self):
            super().__init__(D3DnetConfig(scale=1, frames=3))

        def infer(self, window):
            return window[:, :, 1]

    outs = [y for _, y, _ in upscale_stream(FolderSource(folder), Centre(), UpscaleOptions(y_only=True))]
    centre = [float(y[0, 0, 0]) for y in outs]
    assert centre == sorted(centre) and len(set(centre)) == 12


def test_random_weights_only_when_asked_and_named(work, capsys):
    assert cli(["upscale", "tiny8", "--random-init", "--max-frames", "1", "--backend", "pytorch", "-o", "o.mp4",
                "-q", "--no-estimate"]) == 0  # fmt: skip
    assert "model: random (untrained" in capsys.readouterr().out


# --- 5. one line per error, --debug, --version, help --------------------------------------------------


def _bad_checkpoint(path: Path, **changes) -> Path:
    from d3d import D3Dnet

    state = D3Dnet(nf=4, d3d_blocks=1, res_blocks=1).state_dict()
    state.update(changes)
    torch.save({"epoch": 0, "state_dict": state, "loss": 0.0, "psnr": 0.0}, path)
    return path


def test_user_errors_are_one_line(work, tiny_onnx, capsys):
    before = snapshot(work)
    fails(["upscale", "tiny8", "--checkpoint", "missing.pth.tar", "-o", "o", "-q"], capsys)
    msg = fails(["upscale", "tiny8", "--onnx", str(tiny_onnx), "--downscale", "64", "-o", "o", "-q"], capsys)
    assert "--downscale 64 is larger than the 32x32 frames" in msg
    msg = fails(["export", "--random-init", "--nf", "0", "-o", "m.onnx"], capsys)
    assert "--nf" in msg and ">= 1" in msg
    msg = fails(["bench", "--random-init", "--iterations", "0"], capsys)
    assert "--iterations" in msg
    assert snapshot(work) == before
    _bad_checkpoint(work / "ta.pth.tar", **{"TA.weight": torch.zeros(4, 27, 1, 1)})
    _bad_checkpoint(work / "nan.pth.tar", **{"reconstruct.0.dcn1.bias": torch.tensor([0.0, float("nan"), 0, 0])})
    before = snapshot(work)
    msg = fails(["upscale", "tiny8", "--checkpoint", "ta.pth.tar", "--backend", "pytorch", "-o", "o"], capsys)
    assert "TA.weight" in msg
    msg = fails(["export", "nan.pth.tar", "-o", "m.onnx"], capsys)
    assert "reconstruct.0.dcn1.bias" in msg and "NaN/Inf" in msg
    assert snapshot(work) == before


def test_missing_sdk_exits_2_once(work, capsys):
    pytest.importorskip("onnxruntime")
    if __import__("importlib").util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    before = snapshot(work)
    msg = fails(["bench", "--random-init", "--backends", "tensorrt", "--sizes", "8x8"], capsys, code=2)
    assert msg.count("d3d: error:") == 1 and "TensorRT is not installed" in msg
    assert snapshot(work) == before


def test_internal_errors_point_to_debug(work, monkeypatch, capsys):
    import d3d.commands.info as info

    monkeypatch.setattr(info, "collect", lambda: 1 / 0)
    msg = fails(["info", "--json"], capsys)
    assert "internal error: ZeroDivisionError" in msg and "--debug" in msg
    assert cli(["--debug", "info", "--json"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_file_system_errors_are_user_errors_naming_the_file(work, monkeypatch, capsys):
    """A permission or disk-full error no command turned into words still is one user line naming the
    file: the machine's state, not a bug."""
    import errno

    import d3d.commands.info as info

    def denied():
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/shared/file")

    monkeypatch.setattr(info, "collect", denied)
    msg = fails(["info", "--json"], capsys)
    assert msg == "d3d: error: /srv/shared/file: permission denied"

    # A full disk inside a library call that names no file (an encoder) is the machine's state too, and
    # what the command kept on purpose is named after it.
    def full():
        from d3d.errors import add_kept

        exc = OSError(errno.ENOSPC, "No space left on device")
        add_kept(exc, "3 of 8 frames done and kept in .out.d3d-work: rerun with --resume to continue")
        raise exc

    monkeypatch.setattr(info, "collect", full)
    msg = fails(["info", "--json"], capsys)
    assert msg == (
        "d3d: error: no space left on device; 3 of 8 frames done and kept in .out.d3d-work: rerun with "
        "--resume to continue"
    )

    def too_long():
        raise OSError(errno.ENAMETOOLONG, "File name too long", "/tmp/" + "a" * 300)

    monkeypatch.setattr(info, "collect", too_long)
    assert fails(["info", "--json"], capsys).endswith("a: file name too long")


def test_version_and_help_with_defaults(capsys):
    from d3d.cli import COMMANDS, build_parser

    with pytest.raises(SystemExit) as e:
        cli(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("d3d-trt ")
    with pytest.raises(SystemExit):
        cli(["upscale", "--help"])
    assert "(default: auto)" in capsys.readouterr().out
    _, subs = build_parser()
    import importlib

    for name, (module, _) in COMMANDS.items():
        importlib.import_module(module).add_arguments(subs[name])
        for action in subs[name]._actions:
            if action.help is not None and action.help != "==SUPPRESS==":
                assert action.help.strip(), f"{name} {action.option_strings}"
            elif action.help is None:
                raise AssertionError(f"{name} {action.option_strings or action.dest} has no help text")


# --- 7. info --json ----------------------------------------------------------------------------------


def test_info_json_reports_versions_backends_and_libraries(capsys, monkeypatch, tmp_path):
    import d3d

    monkeypatch.setenv("D3D_ORT_OPS", str(tmp_path / "libfake_ort.so"))
    (tmp_path / "libfake_ort.so").write_bytes(b"")
    monkeypatch.setenv("D3D_TRT_PLUGIN", str(tmp_path / "absent.so"))
    monkeypatch.setenv("D3D_BUILD_DIR", str(tmp_path / "nobuild"))
    assert cli(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["d3d_trt"] == d3d.__version__
    assert (
        info["versions"]["torch"] == torch.__version__.split("+")[0] or info["versions"]["torch"] == torch.__version__
    )
    assert "onnxruntime" in info["available_backends"] and "pytorch" in info["available_backends"]
    libs = info["native_libraries"]
    assert set(libs) == {"torch_op_library", "ort_ops_library", "trt_plugin_library"}
    assert libs["ort_ops_library"] == str(tmp_path / "libfake_ort.so")
    assert libs["trt_plugin_library"] is None or Path(libs["trt_plugin_library"]).is_file()


@pytest.mark.parametrize(
    ("dims", "words"),
    [
        ([8, 8, 1, 3, 3], "offset has 54 channels, expected offset_group * kT*kH*kW * len(deform_dims) = 18"),
        ([8, 4, 3, 3, 3], "weight has 4 input channels per group, expected C/group = 8"),
    ],
)
def test_inconsistent_deform_conv3d_shapes_are_refused_at_load(work, tiny_onnx, capsys, dims, words):
    """Channel arithmetic that would fail inside the op at run time is refused when the file loads."""
    import numpy as np

    proto = onnx.load(str(tiny_onnx))
    node = next(n for n in proto.graph.node if n.op_type == "DeformConv3d")
    init = next(i for i in proto.graph.initializer if i.name == node.input[2])
    init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(dims, np.float32), name=init.name))
    onnx.save(proto, str(work / "bad.onnx"))
    before = snapshot(work)
    msg = fails(["upscale", "tiny8", "--onnx", "bad.onnx", "-o", "out.mp4", "-q"], capsys)
    assert "bad.onnx: node" in msg and words in msg
    assert snapshot(work) == before


def test_prepare_follows_the_output_policy(work, capsys):
    """`prepare --overwrite` replaces only a dataset folder d3d wrote (its manifest lists the whole tree);
    never the input, the current folder, or a folder of someone else's files."""
    big = work / "big"
    write_frames(big, 8, size=(64, 64))
    assert cli(["prepare", "big", "-o", "ds", "--holdout-fraction", "0"]) == 0
    capsys.readouterr()
    before = snapshot(work)
    assert "already exists" in fails(["prepare", "big", "-o", "ds"], capsys)
    assert "the input" in fails(["prepare", "big", "-o", "big", "--overwrite"], capsys)
    assert "current folder" in fails(["prepare", "big", "-o", ".", "--overwrite"], capsys)
    assert "written by d3d" in fails(["prepare", "big", "-o", "sub", "--overwrite"], capsys)
    (work / "ds" / "sequences" / "mine.txt").write_text("a user's file inside the dataset")
    before = snapshot(work)
    assert "did not write" in fails(["prepare", "big", "-o", "ds", "--overwrite"], capsys)
    assert snapshot(work) == before
    (work / "ds" / "sequences" / "mine.txt").unlink()
    assert cli(["prepare", "big", "-o", "ds", "--overwrite", "--holdout-fraction", "0"]) == 0


def test_train_never_writes_over_a_run_or_its_data(work, capsys):
    big = work / "big"
    write_frames(big, 8, size=(64, 64))
    assert cli(["prepare", "big", "-o", "ds", "--holdout-fraction", "0"]) == 0
    (work / "run").mkdir()
    (work / "run" / "last.pth.tar").write_bytes(b"an earlier run's checkpoint")
    capsys.readouterr()
    before = snapshot(work)
    msg = fails(["train", "ds", "-o", "run", "--steps", "1"], capsys)
    assert "already holds files" in msg and "--resume" in msg
    assert "the input" in fails(["train", "ds", "-o", "ds/run", "--steps", "1"], capsys)
    assert "current folder" in fails(["train", "ds", "-o", ".", "--steps", "1"], capsys)
    assert "not a folder" in fails(["train", "ds", "-o", "notes.txt", "--steps", "1"], capsys)
    assert snapshot(work) == before


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
