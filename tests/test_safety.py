"""Issue 8: every defect class of the safe command line, each checked for the exit code, the single
message line and the file system afterwards (everything that was there is there, byte for byte, and
nothing new is left)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from conftest import fails, snapshot, write_frames, write_png

from d3d.cli import main as cli

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
    import d3d.cli.commands.info as info

    monkeypatch.setattr(info, "collect", lambda: 1 / 0)
    msg = fails(["info", "--json"], capsys)
    assert "internal error: ZeroDivisionError" in msg and "--debug" in msg
    assert cli(["--debug", "info", "--json"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_file_system_errors_are_user_errors_naming_the_file(work, monkeypatch, capsys):
    """A permission or disk-full error no command turned into words still is one user line naming the
    file: the machine's state, not a bug."""
    import errno

    import d3d.cli.commands.info as info

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
