"""ONNX export: the custom node as the TensorRT plugin expects it, shape inference, ORT and
Polygraphy parity for both flavours, TensorRT-RTX build of the portable flavour, CLI errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
import torch
from conftest import move_offsets

from d3d import D3Dnet, save_checkpoint
from d3d.cli import main as cli
from d3d.export import ExportOptions, export_onnx, load_model, register_schema
from d3d.runtime.ort import create_session
from d3d.verify import VerifyOptions, verify

SIZES = [(24, 40), (37, 29)]  # two H x W through the same dynamic-shape file


def _model(seed: int) -> D3Dnet:
    """A small random D3Dnet whose offset convolutions have non-zero weights and biases large enough to
    move taps by several pixels, many outside the frame."""
    torch.manual_seed(seed)
    model = D3Dnet(nf=8, d3d_blocks=2, res_blocks=1).eval()
    move_offsets(model, 0.2, 12.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    seed = int(torch.randint(0, 2**31, (1,)))
    model = _model(seed)
    out = tmp_path_factory.mktemp("onnx")
    paths = {}
    for portable in (False, True):
        path = out / ("portable.onnx" if portable else "custom.onnx")
        export_onnx(model, path, ExportOptions(portable=portable), checkpoint_sha256="ab" * 32)
        paths[portable] = path
    return model, paths


def test_offsets_move_taps_outside_the_frame(exported):
    model, _ = exported
    x = torch.rand(1, 1, 7, *SIZES[0])
    layer = model.residual_layer[0].dcn0
    with torch.no_grad():
        off = layer.conv_offset(model.input(x))
    h, w = SIZES[0]
    d = off.view(1, 3, 3, 3, 2, 7, h, w)  # (i, j, l) taps, (dh, dw)
    j = torch.arange(3).view(1, 1, 3, 1, 1, 1, 1)
    l_ = torch.arange(3).view(1, 1, 1, 3, 1, 1, 1)
    pos_h = torch.arange(h).view(1, 1, 1, 1, 1, h, 1) - 1 + j + d[..., 0, :, :, :]
    pos_w = torch.arange(w).view(1, 1, 1, 1, 1, 1, w) - 1 + l_ + d[..., 1, :, :, :]
    outside = (pos_h <= -1) | (pos_h >= h) | (pos_w <= -1) | (pos_w >= w)
    assert (off.abs() > 1).float().mean() > 0.3  # the taps really move
    assert 0.01 < outside.float().mean() < 0.99, outside.float().mean()  # some, not all, leave the frame


def test_custom_node_matches_the_plugin_contract(exported):
    _, paths = exported
    proto = onnx.load(paths[False])
    nodes = [n for n in proto.graph.node if n.op_type == "DeformConv3d"]
    assert len(nodes) == 4 and all(n.domain == "d3d" for n in nodes)
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("d3d", 1)}
    producers = {out: n for n in proto.graph.node for out in n.output}
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {
            "strides": [1, 1, 1],
            "pads": [1, 1, 1],
            "dilations": [1, 1, 1],
            "group": 1,
            "offset_group": 1,
            "deform_dims": b"HW",
            "plugin_version": b"1",
            "plugin_namespace": b"d3d",
        }
        # Compact offsets come straight from the offset Conv: no slicing or zero-filling between.
        assert producers[n.input[1]].op_type == "Conv"
        assert len(n.input) == 4 and n.input[3]
    assert not {"Slice", "Split", "ConstantOfShape", "Pad"} & {n.op_type for n in proto.graph.node}


def test_shape_inference_and_full_check(exported):
    _, paths = exported
    register_schema()
    for path in paths.values():
        proto = onnx.shape_inference.infer_shapes(onnx.load(path), check_type=True, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
        typed = {v.name: v for v in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]}
        for node in proto.graph.node:
            for out in node.output:
                assert out in typed, f"{node.op_type} output {out} has no inferred type"
                shape = typed[out].type.tensor_type.shape
                assert typed[out].type.tensor_type.HasField("shape"), f"{out}: no shape"
                assert all(d.HasField("dim_value") or d.HasField("dim_param") for d in shape.dim), out
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "4*height", "4*width"]


def test_metadata_props(exported):
    model, paths = exported
    props = {p.key: p.value for p in onnx.load(paths[False]).metadata_props}
    assert json.loads(props["d3d.config"]) == model.config.as_dict()
    assert props["d3d.checkpoint_sha256"] == "ab" * 32
    assert props["d3d.toolchain"].startswith("d3d-trt ")
    assert props["d3d.flavour"] == "custom"


@pytest.mark.parametrize("portable", [False, True])
def test_polygraphy_parity_two_sizes(exported, portable):
    _, paths = exported
    proto = load_model(paths[portable])
    result = verify(paths[portable], proto, None, VerifyOptions(shapes=SIZES, backends=("pytorch", "onnxruntime")))
    assert result.runners == ["pytorch", "onnxruntime"]
    assert len(result.rows) == 3 and result.passed, result.rows
    assert all(r["max_abs"] <= 1e-4 for r in result.rows)
    if not portable:
        import sys

        # The custom node ran in the native op library, not through onnxruntime-extensions' Python hook.
        assert "onnxruntime_extensions" not in sys.modules


def test_parity_check_can_fail(exported, tmp_path):
    """A perturbed weight in the ONNX file (PyTorch side loaded from the original) must fail."""
    model, paths = exported
    ckpt = tmp_path / "orig.pth.tar"
    save_checkpoint(model, ckpt)
    proto = onnx.load(paths[False])
    init = next(i for i in proto.graph.initializer if i.name == "residual_layer.1.dcn0.weight")
    arr = onnx.numpy_helper.to_array(init) * 1.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(proto, bad)
    assert cli(["verify", str(bad), "--checkpoint", str(ckpt), "--no-real-frames", "--shapes", "24x24"]) == 1


def test_portable_model_has_only_standard_ops(exported):
    _, paths = exported
    proto = onnx.load(paths[True])
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert "GridSample" in {n.op_type for n in proto.graph.node}
    import onnxruntime as ort  # stock ORT, no extensions library

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"lr": np.random.rand(1, 1, 7, 16, 20).astype(np.float32)})[0]
    assert y.shape == (1, 1, 64, 80)


def test_portable_model_builds_with_tensorrt_rtx_on_cpu(exported):
    pytest.importorskip("tensorrt_rtx_bindings", reason="install the project's [rtx] extra")
    from d3d.export.rtx import build_engine_rtx

    _, paths = exported
    engine = build_engine_rtx(paths[True], ((1, 1, 7, 16, 16), (1, 1, 7, 32, 32), (2, 1, 7, 64, 64)))
    assert len(engine) > 10_000


def test_static_export(tmp_path):
    model = _model(0)
    proto = export_onnx(model, tmp_path / "s.onnx", ExportOptions(dynamic=False, height=16, width=24, batch=2))
    dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 1, 64, 96]
    y = create_session(proto).run(None, {"lr": np.random.rand(2, 1, 7, 16, 24).astype(np.float32)})[0]
    assert y.shape == (2, 1, 64, 96)


def test_cli_export_from_checkpoint_and_errors(tmp_path, capsys):
    model = _model(1)
    ckpt = tmp_path / "m.pth.tar"
    save_checkpoint(model, ckpt)
    out = tmp_path / "m.onnx"
    assert cli(["export", str(ckpt), "-o", str(out)]) == 0
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    import hashlib

    assert props["d3d.checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    capsys.readouterr()

    # Unsupported opset: one line, non-zero exit, nothing written.
    assert cli(["export", str(ckpt), "-o", str(tmp_path / "x.onnx"), "--opset", "11"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "opset 11 is not supported" in err
    assert not (tmp_path / "x.onnx").exists()

    # Corrupted ONNX file.
    data = out.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    assert cli(["verify", str(tmp_path / "cut.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cut.onnx: not a valid ONNX model" in err

    # A checkpoint whose config differs from the model's.
    other = tmp_path / "other.pth.tar"
    save_checkpoint(D3Dnet(nf=8, d3d_blocks=1, res_blocks=1), other)
    assert cli(["verify", str(out), "--checkpoint", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not match the model config" in err and "d3d_blocks 1 vs 2" in err


def test_cli_verify_with_rtx_build(exported, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorrt_rtx_bindings", reason="install the project's [rtx] extra")
    _, paths = exported
    report = tmp_path / "r.json"
    rc = cli(
        ["verify", str(paths[True]), "--shapes", "24x24", "--no-real-frames", "--rtx-build", "--report", str(report)]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "PASSED" in out and "TensorRT-RTX: engine built ahead of time" in out
    data = json.loads(report.read_text())
    assert data["passed"] and data["runners"] == ["pytorch", "onnxruntime"] and "tensorrt" in data["skipped"]
    # The custom-op model needs the plugin library (tests/test_rtx_plugin.py builds it): without one, a clear refusal.
    import d3d.native_libs

    monkeypatch.setattr(d3d.native_libs, "trt_plugin_library", lambda: None)
    assert cli(["verify", str(paths[False]), "--shapes", "24x24", "--no-real-frames", "--rtx-build"]) == 1
    assert "need the plugin library libd3d_trt_plugin.so" in capsys.readouterr().err
