"""Strongly typed engine builds: the engine's precision is the ONNX graph's, never a builder flag.

The flag logic is checked against stand-ins for TensorRT 10, TensorRT 11 and TensorRT-RTX; the graph's
precision is read from hand-made graphs; the real builds are TensorRT-RTX's (ahead of time, no GPU):
an fp16 graph builds strongly typed, and `d3d build --builder tensorrt-rtx` builds without TensorRT."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from d3d.cli import main as cli
from d3d.errors import D3DError
from d3d.export import graph_precision, resolve_precision
from d3d.export._trt_build import strongly_typed_flags
from d3d.export.exporter import META_CONFIG, META_PRECISION

PROFILE = ((1, 1, 7, 8, 8), (1, 1, 7, 16, 16), (1, 1, 7, 24, 24))


def _module(name: str, version: str, has_flag: bool = True):
    flags = SimpleNamespace(STRONGLY_TYPED=5) if has_flag else SimpleNamespace()
    return SimpleNamespace(__name__=name, __version__=version, NetworkDefinitionCreationFlag=flags)


@pytest.mark.parametrize(
    "module,expected",
    [
        (_module("tensorrt", "10.16.0"), 1 << 5),  # 10: strongly typed only when asked
        (_module("tensorrt", "11.1.0"), 0),  # 11: the flag is deprecated, strong typing the only mode
        (_module("tensorrt_rtx_bindings", "1.7.1"), 1 << 5),  # TensorRT-RTX: the flag, as on 10
        (_module("tensorrt", "12.0.0", has_flag=False), 0),  # a future module without the flag
    ],
)
def test_strongly_typed_flag_per_module(module, expected):
    assert strongly_typed_flags(module) == expected


def _conv_graph(dtype: int, precision_meta: str | None = None) -> onnx.ModelProto:
    """lr (fp32) -> Cast -> Conv3d 3x3x3 in ``dtype`` -> Cast -> sr (fp32): a strongly typed fp16/bf16
    layer with fp32 edges, the shape a `d3d export --precision` model has."""
    np_type = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}[dtype]
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1, 1, 3, 3, 3)).astype(np_type) * 0.1, "w")
    nodes = [
        helper.make_node("Cast", ["lr"], ["x"], to=dtype),
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 6),
        helper.make_node("Cast", ["y"], ["sr"], to=TensorProto.FLOAT),
    ]
    dims = ["B", 1, 7, "H", "W"]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, dims)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {META_CONFIG: json.dumps({"in_channels": 1, "frames": 7})}
    if precision_meta is not None:
        meta[META_PRECISION] = precision_meta
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def test_graph_precision_from_metadata_else_initializers():
    assert graph_precision(_conv_graph(TensorProto.FLOAT)) == "fp32"
    assert graph_precision(_conv_graph(TensorProto.FLOAT16)) == "fp16"  # no metadata: the weights' type
    assert graph_precision(_conv_graph(TensorProto.FLOAT, "bf16")) == "bf16"  # recorded wins
    with pytest.raises(D3DError, match="is not one of fp32, fp16, bf16"):
        graph_precision(_conv_graph(TensorProto.FLOAT, "int8"))


def test_another_precision_is_refused_naming_the_export():
    proto = _conv_graph(TensorProto.FLOAT)
    assert resolve_precision(proto, None) == "fp32" and resolve_precision(proto, "fp32") == "fp32"
    with pytest.raises(D3DError) as info:
        resolve_precision(proto, "fp16", "m.onnx")
    msg = str(info.value)
    assert "\n" not in msg and "m.onnx is an fp32 graph" in msg and "`d3d export --precision fp16`" in msg


def test_cli_build_refuses_another_precision_in_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (the project's [rtx] extra)")
    path = tmp_path / "m.onnx"
    onnx.save(_conv_graph(TensorProto.FLOAT16, "fp16"), path)
    out = tmp_path / "m.engine"
    rc = cli(["build", str(path), "-o", str(out), "--builder", "tensorrt-rtx", "--precision", "bf16"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and err.startswith("d3d: error:")
    assert "is an fp16 graph" in err and "`d3d export --precision bf16`" in err
    assert not out.exists()


# --- real builds: TensorRT-RTX on the CPU ------------------------------------------------------------


@pytest.fixture
def rtx(monkeypatch, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (the project's [rtx] extra)")
    from d3d.export import rtx

    monkeypatch.setenv("D3D_CACHE_DIR", str(tmp_path / "cache"))
    return rtx


def test_rtx_builds_an_fp16_graph_strongly_typed(rtx, tmp_path):
    from d3d.export import engine_cache

    path = tmp_path / "fp16.onnx"
    onnx.save(_conv_graph(TensorProto.FLOAT16), path)
    built = rtx.build_rtx(path, PROFILE)
    assert built.strongly_typed and built.layers >= 3 and len(built.engine) > 1000
    assert built.version.startswith("1.")
    # The engine cache keys the graph's precision: the same graph in fp32 is another engine.
    fp16 = engine_cache.rtx_engine(path, PROFILE)
    assert fp16.built and fp16.info["key"]["precision"] == "fp16" and "_fp16_" in fp16.path.name
    path32 = tmp_path / "fp32.onnx"
    onnx.save(_conv_graph(TensorProto.FLOAT), path32)
    fp32 = engine_cache.rtx_engine(path32, PROFILE)
    assert fp32.info["key"]["precision"] == "fp32" and fp32.path != fp16.path


def test_cli_build_with_tensorrt_rtx_never_imports_tensorrt(rtx, tiny_onnx, tmp_path, capsys, monkeypatch):
    from d3d.native_libs import trt_plugin_library

    plugin = trt_plugin_library()
    if plugin is None:
        pytest.skip("libd3d_trt_plugin.so is not built: `make cpp-test` builds it (or set D3D_TRT_PLUGIN)")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # any `import tensorrt` now fails: exit 2
    out = tmp_path / "tiny.engine"
    args = ["build", str(tiny_onnx), "-o", str(out), "--builder", "tensorrt-rtx", "--plugin", str(plugin)]
    shapes = ["--min-shape", "1x16x16", "--opt-shape", "1x16x24", "--max-shape", "1x24x24"]
    assert cli([*args, *shapes]) == 0, capsys.readouterr().err
    assert "tensorrt-rtx, fp32" in capsys.readouterr().out
    info = json.loads(Path(str(out) + ".json").read_text())
    assert info["builder"] == "tensorrt-rtx" and info["precision"] == "fp32" and info["compute_capability"] == "SM89"
    engine = out.read_bytes()
    assert len(engine) > 100_000 and b"DeformConv3d" in engine  # our plugin's layers are in it
