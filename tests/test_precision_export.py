"""`d3d export --precision fp16|bf16`: the graph's weights and activations in fp16 through
onnxconverter-common or in bf16 through ModelOpt's AutoCast, every DeformConv3d node typed like its
neighbours, fp32 I/O with Casts at the edges (or fp16 I/O), the precision recorded; the custom-op flavour
in fp16 (through our op library's fp16 I/O) run by ONNX Runtime on the CPU, and in bf16 by ONNX's
reference evaluator, against fp32 PyTorch (PSNR on real frames and random inputs at two sizes); a bf16
model refused on ONNX Runtime's CPU provider in one line; TensorRT-RTX building the fp16 and bf16
custom-op models with half / bf16 inputs and output on every plugin layer."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import move_offsets, write_frames

from d3d import D3Dnet
from d3d.cli import main as cli
from d3d.errors import D3DError
from d3d.export import ExportOptions, export_onnx, graph_precision
from d3d.export.precision import check_precision, convert_precision

F16, F32, BF16 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16


def _types(proto: onnx.ModelProto) -> dict[str, int]:
    proto = onnx.shape_inference.infer_shapes(proto)
    infos = [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    types = {vi.name: vi.type.tensor_type.elem_type for vi in infos}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    return types


def _assert_typed_like_neighbours(proto: onnx.ModelProto, elem: int) -> None:
    """Every DeformConv3d input and output, and every Conv weight, in ``elem``; fp32 at the model's edges
    (the input cast where it enters, the output cast back)."""
    types = _types(proto)
    nodes = [n for n in proto.graph.node if n.op_type == "DeformConv3d"]
    assert len(nodes) >= 2
    for n in nodes:
        assert all(types[t] == elem for t in [*n.input, *n.output] if t), n.name
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == elem for n in convs)  # weights in the graph's type
    assert proto.graph.input[0].type.tensor_type.elem_type == F32
    assert proto.graph.output[0].type.tensor_type.elem_type == F32


@pytest.fixture(scope="module")
def fp16_custom(tiny_onnx, tmp_path_factory) -> Path:
    """The session's tiny custom-op export, converted to fp16 (fp32 I/O)."""
    path = tmp_path_factory.mktemp("fp16") / "custom16.onnx"
    onnx.save(convert_precision(onnx.load(tiny_onnx), "fp16"), path)
    return path


def test_fp16_export_types_every_deformconv3d_like_its_neighbours(fp16_custom):
    proto = onnx.load(fp16_custom)
    assert graph_precision(proto) == "fp16"
    assert {p.key: p.value for p in proto.metadata_props}["d3d.precision"] == "fp16"
    _assert_typed_like_neighbours(proto, F16)


def test_fp16_io_precision(tiny_onnx):
    proto = convert_precision(onnx.load(tiny_onnx), "fp16", io_precision="fp16")
    assert proto.graph.input[0].type.tensor_type.elem_type == F16
    assert proto.graph.output[0].type.tensor_type.elem_type == F16
    assert not [n for n in proto.graph.node if n.op_type == "Cast" and n.input[0] == "lr"]  # no Cast at the edge


@pytest.mark.parametrize(
    "precision,io,message",
    [
        ("fp32", "fp16", "--io-precision is fp32 or the model's precision (fp32)"),
        ("bf16", "fp16", "--io-precision is fp32 or the model's precision (bf16)"),
        ("int8", "fp32", "unknown precision 'int8'"),
    ],
)
def test_unavailable_precisions_are_refused(precision, io, message):
    with pytest.raises(D3DError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_precision(precision, io)


def test_cli_refuses_bf16_below_opset_22_before_exporting(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli(["export", "--random-init", "--nf", "8", "--precision", "bf16", "--opset", "20", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "opset 20 cannot hold bf16" in err and not out.exists()


def test_cli_bf16_without_modelopt_exits_2_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt", None)  # as if the [bf16] extra were not installed
    out = tmp_path / "m.onnx"
    assert cli(["export", "--random-init", "--nf", "8", "--precision", "bf16", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ModelOpt" in err and "d3d-trt[bf16]" in err and not out.exists()


def _psnr(ref: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def test_fp16_models_on_the_cpu_psnr(tmp_path):
    """The custom-op flavour exported with `precision="fp16"` runs end to end in ONNX Runtime on the CPU
    (through our op library's fp16 I/O: widened to fp32, computed, narrowed); its output
    against fp32 PyTorch's, on real frames (bikes 100-106) and random inputs at two sizes, is >= 50 dB."""
    from d3d.runtime.ort import create_session
    from d3d.runtime.sources import read_window_y

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = D3Dnet(nf=8, d3d_blocks=1, res_blocks=1).eval()
    move_offsets(model, 0.2)  # taps moved off the grid
    rng = np.random.default_rng(1)
    # The custom-op flavour only: a GridSample export costs ~35 s here, over the CI budget; its fp16
    # figures in docs/TENSORRT.md were measured once, outside the tests.
    for portable in (False,):
        path = tmp_path / f"m16_{portable}.onnx"
        opts = ExportOptions(portable=portable, precision="fp16", height=16, width=16)
        proto = export_onnx(model, path, opts)
        assert graph_precision(proto) == "fp16"
        kind = "GridSample" if portable else "DeformConv3d"
        assert any(n.op_type == kind for n in proto.graph.node)
        session = create_session(proto)
        for h, w in ((16, 24), (33, 20)):
            for x in (rng.random((1, 1, 7, h, w), dtype=np.float32), read_window_y(7, (h, w), start=100)[None, None]):
                with torch.no_grad():
                    ref = model(torch.from_numpy(x)).numpy()
                got = session.run(None, {"lr": x})[0]
                assert got.dtype == np.float32 and np.isfinite(got).all()
                assert _psnr(ref, got) >= 50, (kind, h, w, _psnr(ref, got))


def test_rtx_builds_the_fp16_custom_model_with_half_plugin_layers(fp16_custom, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (the project's [rtx] extra)")
    from d3d.export import rtx
    from d3d.native_libs import trt_plugin_library

    plugin = trt_plugin_library()
    if plugin is None:
        pytest.skip("libd3d_trt_plugin.so is not built: `make cpp-test` builds it (or set D3D_TRT_PLUGIN)")
    built = rtx.build_rtx(fp16_custom, ((1, 1, 7, 16, 16), (1, 1, 7, 24, 24), (1, 1, 7, 32, 32)), [plugin])
    assert built.strongly_typed and built.plugin_layers >= 2
    for io in built.plugin_io_types:  # every DeformConv3d layer: half in, half out (no fp32 around it)
        assert io[-2] == "->" and set(io) == {"DataType.HALF", "->"}, io
    # `d3d build --builder tensorrt-rtx` records the graph's precision.
    out = tmp_path / "m.engine"
    shapes = ["--min-shape", "1x16x16", "--opt-shape", "1x24x24", "--max-shape", "1x32x32"]
    args = ["build", str(fp16_custom), "-o", str(out), "--builder", "tensorrt-rtx", "--plugin", str(plugin)]
    assert cli([*args, *shapes]) == 0
    assert json.loads(Path(str(out) + ".json").read_text())["precision"] == "fp16"


def test_fp16_export_of_a_model_that_overflows_is_refused_naming_the_layer(tmp_path, capsys):
    """A checkpoint whose first convolution is scaled so its activations on real frames pass fp16's
    65504: `d3d export --precision fp16` refuses in one line naming that layer and writes nothing; the
    same model unscaled is within range (its peaks are reported, largest first)."""
    from d3d import save_checkpoint
    from d3d.export.precision import FP16_MAX, check_fp16_range
    from d3d.runtime.sources import read_window_y

    torch.manual_seed(0)
    model = D3Dnet(nf=8, d3d_blocks=1, res_blocks=1).eval()
    frames = [torch.from_numpy(read_window_y(7, (32, 32), start=100))[None, None]]
    peaks = check_fp16_range(model, frames)
    assert peaks[0][1] >= peaks[-1][1] and peaks[0][1] * 2 < FP16_MAX
    first = next(name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv3d))
    with torch.no_grad():
        model.get_submodule(first).weight.mul_(1e6)
    ckpt, out = tmp_path / "big.pth.tar", tmp_path / "big.onnx"
    save_checkpoint(model, ckpt)
    assert cli(["export", str(ckpt), "--precision", "fp16", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fp16 would overflow" in err and f"{first} (" in err, err
    assert not out.exists()


# --- bf16: ModelOpt's ONNX AutoCast (the [bf16] extra) ----------------------------------------------


def _offset_model() -> D3Dnet:
    torch.manual_seed(0)
    model = D3Dnet(nf=8, d3d_blocks=1, res_blocks=1).eval()
    for m in model.modules():
        if hasattr(m, "conv_offset"):
            torch.nn.init.normal_(m.conv_offset.weight, 0.0, 0.2)  # taps moved off the grid
    return model


@pytest.fixture(scope="module")
def bf16_custom(tmp_path_factory) -> tuple[D3Dnet, Path]:
    """A tiny model with off-grid offsets and its custom-op export with `precision="bf16"` (fp32 I/O)."""
    pytest.importorskip("modelopt", reason="NVIDIA ModelOpt is not installed (the project's [bf16] extra)")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model = _offset_model()
    path = tmp_path_factory.mktemp("bf16") / "custom_bf16.onnx"
    export_onnx(model, path, ExportOptions(precision="bf16", height=16, width=16))
    return model, path


def test_bf16_export_types_every_deformconv3d_like_its_neighbours(bf16_custom):
    from d3d.export.exporter import model_config, param_aliases
    from d3d.export.onnx_import import model_from_onnx

    model, path = bf16_custom
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    assert graph_precision(proto) == "bf16" and props["d3d.precision"] == "bf16"
    assert props["d3d.flavour"] == "custom" and model_config(proto)["nf"] == 8  # the exporter's metadata kept
    assert next(o.version for o in proto.opset_import if o.domain == "") == 22  # ONNX's bf16 ops
    _assert_typed_like_neighbours(proto, BF16)
    # Every recorded alias still names an initializer, so the PyTorch model rebuilds from the file,
    # its weights those of the model rounded to bf16.
    names = {i.name for i in proto.graph.initializer}
    assert all(target in names for target in param_aliases(proto).values() if target)
    rebuilt = model_from_onnx(proto, str(path)).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(rebuilt[name], value.to(torch.bfloat16).float()), name


def test_bf16_model_against_fp32_pytorch_psnr(bf16_custom):
    """ONNX Runtime's CPU provider has no bf16 kernels, so the bf16 graph is run by ONNX's own reference
    evaluator (NumPy, bf16 tensors through ml_dtypes), the DeformConv3d node by the PyTorch op in fp32
    with its output rounded to bf16 as the plugin contract says; against fp32 PyTorch, random inputs and
    real frames (bikes 100-106) at two sizes, >= 50 dB (measured 57-62 dB)."""
    import ml_dtypes
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    from d3d.ops import deform_conv3d
    from d3d.runtime.sources import read_window_y

    class DeformConv3d(OpRun):
        op_domain = "d3d"

        def _run(self, x, offset, w, b=None, strides=None, pads=None, dilations=None, group=None, **attrs):
            assert x.dtype == ml_dtypes.bfloat16 and w.dtype == ml_dtypes.bfloat16  # typed like its neighbours
            t = [None if a is None else torch.from_numpy(a.astype(np.float32)) for a in (x, offset, w, b)]
            geometry = (tuple(strides), tuple(pads), tuple(dilations))
            y = deform_conv3d(*t, *geometry, group, attrs["offset_group"], attrs["deform_dims"])
            return (y.numpy().astype(x.dtype),)

    model, path = bf16_custom
    evaluator = ReferenceEvaluator(onnx.load(path), new_ops=[DeformConv3d])
    rng = np.random.default_rng(1)
    for h, w in ((16, 24), (33, 20)):
        for x in (rng.random((1, 1, 7, h, w), dtype=np.float32), read_window_y(7, (h, w), start=100)[None, None]):
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            got = evaluator.run(None, {"lr": x})[0]
            assert got.dtype == np.float32 and np.isfinite(got).all()
            assert 50 <= _psnr(ref, got) < 90, (h, w, _psnr(ref, got))  # < 90: really computed in bf16


def test_bf16_model_on_onnx_runtime_cpu_is_refused_in_one_line(bf16_custom, tmp_path, capsys):
    from d3d.runtime.ort import create_session

    _, path = bf16_custom
    with pytest.raises(D3DError, match="bf16 model and ONNX Runtime's CPU provider has no bfloat16 kernels"):
        create_session(onnx.load(path))
    frames = tmp_path / "frames"
    write_frames(frames, n=3, size=(16, 16))
    out = tmp_path / "out"
    assert cli(["upscale", str(frames), "--onnx", str(path), "-o", str(out), "--backend", "onnxruntime"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("d3d: error:") and "bfloat16" in err and not out.exists()


def test_rtx_builds_the_bf16_custom_model_with_bf16_plugin_layers(bf16_custom, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (the project's [rtx] extra)")
    from d3d.export import rtx
    from d3d.native_libs import trt_plugin_library

    plugin = trt_plugin_library()
    if plugin is None:
        pytest.skip("libd3d_trt_plugin.so is not built: `make cpp-test` builds it (or set D3D_TRT_PLUGIN)")
    _, path = bf16_custom
    built = rtx.build_rtx(path, ((1, 1, 7, 16, 16), (1, 1, 7, 24, 24), (1, 1, 7, 32, 32)), [plugin])
    assert built.strongly_typed and built.plugin_layers >= 2
    for io in built.plugin_io_types:  # every DeformConv3d layer: bf16 in, bf16 out (no fp32 around it)
        assert io[-2] == "->" and set(io) == {"DataType.BF16", "->"}, io
    out = tmp_path / "m.engine"
    shapes = ["--min-shape", "1x16x16", "--opt-shape", "1x24x24", "--max-shape", "1x32x32"]
    args = ["build", str(path), "-o", str(out), "--builder", "tensorrt-rtx", "--plugin", str(plugin)]
    assert cli([*args, *shapes]) == 0
    assert json.loads(Path(str(out) + ".json").read_text())["precision"] == "bf16"
