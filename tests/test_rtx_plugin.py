"""The DeformConv3d plugin in a real TensorRT builder: TensorRT-RTX (no GPU needed) loads
libd3d_trt_plugin.so with ``loadLibrary``, its ONNX parser turns each DeformConv3d node of an exported
custom-op model into a PLUGIN_V3 layer, and the builder makes an engine over a dynamic H x W profile,
calling the plugin's build-phase methods. A node with a bad attribute is refused by the parser with the
plugin's reason, and the build process survives it. Nothing here runs an engine (that needs a GPU)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import pytest
import torch
from conftest import move_offsets

from d3d import D3Dnet
from d3d.cli import main as cli
from d3d.errors import D3DError
from d3d.export import ExportOptions, export_onnx
from d3d.native_libs import trt_plugin_library

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (the project's [rtx] extra)")
from d3d.export import rtx

PROFILE = ((1, 1, 7, 16, 16), (1, 1, 7, 24, 40), (2, 1, 7, 48, 64))  # several H x W, batch 1..2


@pytest.fixture(scope="module")
def plugin() -> Path:
    lib = trt_plugin_library()
    if lib is None:
        pytest.skip(
            "libd3d_trt_plugin.so is not built: `make cpp-test` builds it against ../shared's TensorRT headers "
            "(or set D3D_TRT_PLUGIN)"
        )
    return lib


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory) -> tuple[Path, int]:
    """A small D3Dnet exported with DeformConv3d nodes, whose offset convolutions move the taps by pixels."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = D3Dnet(nf=8, d3d_blocks=1, res_blocks=1).eval()
    move_offsets(model, 0.2, 12.0)
    layer = model.residual_layer[0].dcn0
    with torch.no_grad():
        off = layer.conv_offset(model.input(torch.rand(1, 1, 7, 16, 16)))
    assert off.abs().max() > 2  # taps land pixels away from the regular grid
    path = tmp_path_factory.mktemp("rtx") / "custom.onnx"
    proto = export_onnx(model, path, ExportOptions())
    nodes = sum(n.op_type == "DeformConv3d" for n in proto.graph.node)
    assert nodes >= 2
    return path, nodes


def test_unversioned_library_link(tmp_path, monkeypatch):
    monkeypatch.setenv("D3D_CACHE_DIR", str(tmp_path))
    folder = rtx.unversioned_lib_dir()
    link = folder / "libtensorrt_rtx.so"
    assert link.is_symlink() and link.resolve() == (rtx._rtx_lib_dir() / "libtensorrt_rtx.so.1").resolve()
    assert rtx.unversioned_lib_dir() == folder  # reused, not recreated


def test_custom_op_model_builds_with_the_plugin(plugin, custom_model):
    path, nodes = custom_model
    built = rtx.build_rtx(path, PROFILE, [plugin])
    assert built.plugin_layers == nodes  # every DeformConv3d node became our plugin
    assert len(built.engine) > 100_000
    # getFieldsToSerialize's fields are in the engine, for createPlugin(kRUNTIME) when it is loaded.
    assert b"DeformConv3d" in built.engine and b"deform_dims" in built.engine
    assert not [line for line in built.log if line.startswith("[d3d::")], built.log  # the plugin logged no error


def test_custom_op_model_without_the_plugin_is_refused(custom_model):
    path, _ = custom_model
    with pytest.raises(D3DError, match="refused the model") as info:
        rtx.build_rtx(path, PROFILE)
    assert "DeformConv3d" in str(info.value) and "crashed" not in str(info.value)


@pytest.mark.parametrize(
    "attr,value,reason",
    [
        ("deform_dims", b"XY", "deform_dims may contain only the letters T, H, W"),
        ("group", 0, "group must be >= 1"),
        ("strides", [1, 0, 1], "stride along H"),
        ("plugin_namespace", b"mmcv", None),  # no creator in that namespace: the parser's own refusal
    ],
)
def test_bad_attribute_is_refused_by_the_parser(plugin, custom_model, tmp_path, attr, value, reason):
    path, _ = custom_model
    proto = onnx.load(path)
    node = next(n for n in proto.graph.node if n.op_type == "DeformConv3d")
    a = next(a for a in node.attribute if a.name == attr)
    if isinstance(value, bytes):
        a.s = value
    elif isinstance(value, list):
        del a.ints[:]
        a.ints.extend(value)
    else:
        a.i = value
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    with pytest.raises(D3DError) as info:
        rtx.build_rtx(bad, PROFILE, [plugin])
    msg = str(info.value)
    # A parser refusal reported by a build process that exited normally, not a crash.
    assert "the ONNX parser refused the model" in msg and "crashed" not in msg, msg
    if reason is not None:
        assert reason in msg and "[d3d::DeformConv3d]" in msg, msg


def test_builder_crash_is_an_error_not_inherited(plugin, custom_model, tmp_path, monkeypatch):
    worker = tmp_path / "worker.py"
    worker.write_text("import os\nos.abort()\n")
    monkeypatch.setattr(rtx, "_WORKER", worker)
    with pytest.raises(D3DError, match=r"builder process crashed \(signal SIGABRT\)"):
        rtx.build_rtx(custom_model[0], PROFILE, [plugin])


def test_missing_plugin_library_is_one_line(custom_model, tmp_path):
    with pytest.raises(D3DError, match="does not exist"):
        rtx.build_rtx(custom_model[0], PROFILE, [tmp_path / "nope.so"])


def test_cli_verify_rtx_build_of_a_custom_op_model(plugin, custom_model, capsys):
    path, nodes = custom_model
    args = ["verify", str(path), "--shapes", "16x24", "--no-real-frames", "--rtx-build", "--plugin", str(plugin)]
    assert cli([*args, "--backends", "pytorch", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert f"{nodes} DeformConv3d plugin layers" in out and "TensorRT-RTX: engine built ahead of time" in out
    assert os.environ.get("LD_LIBRARY_PATH", "").find("tensorrt_rtx_lib") < 0  # the caller's env is untouched
