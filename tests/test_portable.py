"""The portable (standard-ops) flavour: the frame-wise decomposition (4-D GridSample per kernel time
index) against the independent reference and against the op's sampling rule worked by hand; the
exported model's GridSample ranks by ONNX shape inference, parity with PyTorch in ONNX Runtime through
Polygraphy (`d3d verify`), a TensorRT-RTX build on the CPU, and the 5-D form where T is deformed."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import onnx
import pytest
import torch
from conftest import move_offsets

from d3d import D3Dnet, DeformConv3d, DeformConv3dPack
from d3d.cli import main as cli
from d3d.errors import D3DError
from d3d.export import ExportOptions, export_onnx, portable_form
from d3d.export.exporter import describe_portable
from d3d.export.portable import deform_conv3d_portable, forced_form, form_for
from d3d.reference import deform_conv3d_reference

SIZES = [(24, 40), (37, 29)]  # two H x W through the same dynamic-shape file

# (N, C, O, T, H, W, kernel, stride, padding, dilation, groups, offset_groups)
LAYERS = [
    (2, 4, 6, 5, 7, 9, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, 1),  # D3Dnet's layer, small
    (1, 8, 4, 6, 9, 7, (3, 3, 2), (2, 2, 1), (1, 1, 0), (1, 2, 1), 2, 4),  # stride 2 (T, H), dilation 2 (H)
    (2, 6, 6, 7, 5, 8, (2, 3, 3), (1, 2, 2), (2, 1, 1), (2, 1, 2), 3, 2),  # dilation 2 (T, W), stride 2 (H, W)
    (1, 4, 2, 3, 6, 5, (3, 1, 3), (3, 1, 1), (4, 0, 1), (1, 1, 1), 1, 2),  # padding > T: some indices read nothing
    (1, 2, 2, 1, 4, 4, (1, 3, 3), (3, 1, 1), (2, 1, 1), (1, 1, 1), 1, 1),  # no tap reads the clip at all
]


def _layer_inputs(spec, deform_dims: str, gen: torch.Generator, dtype=torch.float64):
    n, c, o, t, h, w, k, stride, pad, dil, groups, ogroups = spec
    out = [
        (s + 2 * p - d * (kk - 1) - 1) // st + 1 for s, p, d, kk, st in zip((t, h, w), pad, dil, k, stride, strict=True)
    ]
    x = torch.randn(n, c, t, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(o, c // groups, *k, generator=gen, dtype=dtype)
    bias = torch.randn(o, generator=gen, dtype=dtype)
    # Offsets of a few pixels: taps move, and many leave the frame.
    offset = 3 * torch.randn(n, ogroups * math.prod(k) * len(deform_dims), *out, generator=gen, dtype=dtype)
    return (x, offset, weight, bias, stride, pad, dil, groups, ogroups, deform_dims)


@pytest.mark.parametrize("deform_dims", ["H", "W", "HW"])
@pytest.mark.parametrize("spec", LAYERS, ids=[f"layer{i}" for i in range(len(LAYERS))])
def test_frame_wise_form_matches_reference(spec, deform_dims, gen):
    assert form_for(deform_dims) == "frames"
    args = _layer_inputs(spec, deform_dims, gen)
    expected = deform_conv3d_reference(*args)
    got = deform_conv3d_portable(*args)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("deform_dims", ["T", "TH", "TW", "THW"])
def test_volumetric_form_matches_reference(deform_dims, gen):
    assert form_for(deform_dims) == "volume"
    for spec in LAYERS[:3]:
        args = _layer_inputs(spec, deform_dims, gen)
        expected = deform_conv3d_reference(*args)
        torch.testing.assert_close(deform_conv3d_portable(*args), expected, rtol=1e-10, atol=1e-10)


def test_forced_volumetric_form_still_matches(gen):
    """The 5-D form kept for benchmarks is still the op when forced on an "HW" layer."""
    args = _layer_inputs(LAYERS[1], "HW", gen)
    with forced_form("volume"):
        assert form_for("HW") == "volume"
        got = deform_conv3d_portable(*args)
    torch.testing.assert_close(got, deform_conv3d_reference(*args), rtol=1e-10, atol=1e-10)


def _sample_by_hand(row: list[float], p: float) -> float:
    """The op's rule on one axis: 0 unless -1 < p < size; else linear interpolation of the two
    neighbours, a neighbour outside counting 0."""
    size = len(row)
    if not -1 < p < size:
        return 0.0
    lo = math.floor(p)
    frac = p - lo
    value = 0.0
    if 0 <= lo < size:
        value += (1 - frac) * row[lo]
    if 0 <= lo + 1 < size:
        value += frac * row[lo + 1]
    return value


@pytest.mark.parametrize("axis", ["H", "W"])
def test_frame_wise_form_samples_the_border_as_the_contract_says(axis, gen):
    """Taps at and around -1 and the size (between -1 and 0 only corner 0 counts), against the rule
    worked by hand: GridSample's align_corners=False and zeros padding must reproduce it exactly."""
    size = 5
    targets = [-1.5, -1.0, -0.999, -0.5, -0.25, 0.0, 1.5, 3.0, 4.0, 4.25, 4.5, 4.999, 5.0, 5.5]
    count = len(targets)
    # 1x1x1 kernel, no padding: output (r, q) samples (r + dh, q + dw). Along the deformed axis the
    # frame has `size` pixels; each line across it samples one target position, at every output.
    shape = (size, count) if axis == "H" else (count, size)
    # Values in [1, 2]: positive, so two corners never cancel, and no sample is near zero by chance.
    x = 1 + torch.rand(1, 1, 1, *shape, generator=gen, dtype=torch.float64)
    offset = torch.zeros(1, 2, 1, *shape, dtype=torch.float64)
    target = torch.tensor(targets, dtype=torch.float64)
    if axis == "H":
        offset[0, 0, 0] = target.view(1, count) - torch.arange(size, dtype=torch.float64).view(size, 1)
    else:
        offset[0, 1, 0] = target.view(count, 1) - torch.arange(size, dtype=torch.float64).view(1, size)
    weight = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    y = deform_conv3d_portable(x, offset, weight, None, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, 1, "HW")[0, 0, 0]
    frame = x[0, 0, 0]
    for r in range(shape[0]):
        for q in range(shape[1]):
            line, p = (frame[:, q], targets[q]) if axis == "H" else (frame[r, :], targets[r])
            expected = _sample_by_hand(line.tolist(), p)
            assert abs(float(y[r, q]) - expected) < 1e-12, (axis, p, float(y[r, q]), expected)
    # The test sees interpolation against the zero padding: exactly the ten targets strictly inside
    # (-1, size) give non-zero samples (corner weights down to 0.001 on values >= 1), the four others none.
    per_target = (y.abs() > 1e-4).any(dim=0 if axis == "H" else 1)
    assert per_target.tolist() == [-1 < p < size for p in targets], per_target


def _moving_offsets(model: torch.nn.Module) -> torch.nn.Module:
    """Offset convolutions with weights and biases large enough to move taps by several pixels, many
    outside the frame (a fresh D3Dnet's are zero)."""
    move_offsets(model, 0.2, 12.0)
    return model.eval()


def _grid_sample_ranks(proto: onnx.ModelProto) -> list[tuple[int, int]]:
    """(rank of X, rank of grid) of every GridSample, by ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    typed = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    ranks = []
    for node in inferred.graph.node:
        if node.op_type == "GridSample":
            ranks.append(tuple(len(typed[name].type.tensor_type.shape.dim) for name in node.input[:2]))
    return ranks


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small D3Dnet whose taps move, exported portable with the defaults."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = _moving_offsets(D3Dnet(nf=8, d3d_blocks=2, res_blocks=1))
    path = tmp_path_factory.mktemp("portable") / "small.onnx"
    proto = export_onnx(model, path, ExportOptions(portable=True))
    return model, path, proto


def test_default_d3dnet_portable_model_has_only_4d_grid_sample(tmp_path):
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(0)
    proto = export_onnx(D3Dnet(), tmp_path / "d3dnet.onnx", ExportOptions(portable=True))
    ranks = _grid_sample_ranks(onnx.load(tmp_path / "d3dnet.onnx"))
    # Ten DeformConv3d layers (5 blocks x 2), three kernel time indices each.
    assert ranks == [(4, 4)] * 30
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    samplers = [n for n in proto.graph.node if n.op_type == "GridSample"]
    modes = {onnx.helper.get_attribute_value(a) for n in samplers for a in n.attribute}
    assert modes == {b"bilinear", b"zeros", 0}  # GridSample-16: mode, padding_mode, align_corners
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert portable_form(proto) == "4-D GridSample, one per kernel time index (10 DeformConv3d layers)"
    assert _dims(proto.graph.input[0]) == ["batch", 1, 7, "height", "width"]
    assert _dims(proto.graph.output[0]) == ["batch", 1, "4*height", "4*width"]


def test_small_portable_model_keeps_parameters_and_dynamic_dims(small):
    model, _, proto = small
    inits = {i.name for i in proto.graph.initializer}
    # The optimizer folds small weights' per-index slices; the exporter puts the weights back by name.
    assert {name for name in model.state_dict() if name.endswith("dcn0.weight") and "residual" in name} <= inits
    assert _grid_sample_ranks(proto) == [(4, 4)] * 12
    assert _dims(proto.graph.input[0]) == ["batch", 1, 7, "height", "width"]


def test_small_portable_model_matches_pytorch_through_polygraphy(small, tmp_path, capsys):
    """`d3d verify` rebuilds the PyTorch model from the file and compares it with ONNX Runtime through
    Polygraphy, at two frame sizes through the one dynamic file."""
    model, path, _ = small
    x = torch.rand(1, 1, 7, *SIZES[0])
    with torch.no_grad():
        off = model.residual_layer[0].dcn0.conv_offset(model.input(x))
    h, w = SIZES[0]
    d = off.view(1, 3, 3, 3, 2, 7, h, w)  # (i, j, l) taps, (dh, dw)
    pos_h = torch.arange(h).view(h, 1) - 1 + torch.arange(3).view(1, 3, 1, 1, 1, 1) + d[:, :, :, :, 0]
    pos_w = torch.arange(w) - 1 + torch.arange(3).view(1, 1, 3, 1, 1, 1) + d[:, :, :, :, 1]
    outside = (pos_h <= -1) | (pos_h >= h) | (pos_w <= -1) | (pos_w >= w)
    assert (off.abs() > 1).float().mean() > 0.3  # the taps really move
    assert 0.01 < outside.float().mean() < 0.99  # some, not all, leave the frame

    report = tmp_path / "verify.json"
    shapes = ["x".join(map(str, s)) for s in SIZES]
    argv = ["verify", str(path), "--shapes", *shapes, "--no-real-frames", "--backends", "pytorch", "onnxruntime"]
    assert cli([*argv, "--report", str(report)]) == 0, capsys.readouterr()
    rows = json.loads(report.read_text())["rows"]
    assert [r["input"] for r in rows] == [f"random {s}" for s in shapes]
    assert all(r["passed"] and r["max_abs"] <= 1e-4 for r in rows), rows


def test_small_portable_model_builds_with_tensorrt_rtx_on_cpu(small):
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="install the project's [rtx] extra")
    from d3d.export.rtx import build_engine_rtx

    _, path, _ = small
    # What TensorRT's parser makes of every GridSample: bilinear (a GridSample-20 "linear" mode is read as
    # nearest by stock TensorRT's parser, NVIDIA/TensorRT#4646), zeros outside, 4-D.
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(path.read_bytes())
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    samplers = [layer for layer in layers if layer.type == trt.LayerType.GRID_SAMPLE]
    assert len(samplers) == 12
    for layer in samplers:
        layer.__class__ = trt.IGridSampleLayer
        assert layer.interpolation_mode == trt.InterpolationMode.LINEAR
        assert layer.sample_mode == trt.SampleMode.FILL and not layer.align_corners
        assert len(layer.get_input(0).shape) == 4
    engine = build_engine_rtx(path, ((1, 1, 7, 16, 16), (1, 1, 7, 32, 32), (2, 1, 7, 48, 48)))
    assert len(engine) > 10_000


def _time_deformed_d3dnet(nf: int = 8) -> D3Dnet:
    """A D3Dnet whose deformable layers deform T too (the paper's model deforms H and W only)."""
    model = D3Dnet(nf=nf, d3d_blocks=1, res_blocks=1)
    block = model.residual_layer[0]
    block.dcn0 = DeformConv3dPack(nf, nf, kernel_size=3, padding=1, deform_dims="THW")
    block.dcn1 = DeformConv3dPack(nf, nf, kernel_size=3, padding=1, deform_dims="TW")
    move_offsets(model, 0.1, 2.0)
    return model.eval()


def test_time_deformed_model_exports_5d_and_matches(tmp_path):
    import onnxruntime as ort

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = _time_deformed_d3dnet()
    # GridSample-16 is 4-D only: asking for opset 18 is refused before any work.
    with pytest.raises(D3DError, match="opset 18 is not supported for a portable model that deforms T"):
        export_onnx(model, tmp_path / "t18.onnx", ExportOptions(portable=True, opset=18))
    assert not (tmp_path / "t18.onnx").exists()

    proto = export_onnx(model, tmp_path / "t.onnx", ExportOptions(portable=True))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert sorted(_grid_sample_ranks(proto)) == [(5, 5), (5, 5)]  # one per T-deformed layer
    assert portable_form(proto).startswith("5-D GridSample in 2 of 2 DeformConv3d layers (they deform T)")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for h, w in SIZES:
        x = torch.rand(2, 1, 7, h, w)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"lr": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_portable_note_warns_about_grid_sample_20():
    assert describe_portable(["HW"] * 3, 18) == "4-D GridSample, one per kernel time index (3 DeformConv3d layers)"
    note = describe_portable(["HW"] * 3, 20)
    assert "GridSample-20" in note and "nearest" in note and "use opset 18" in note
    assert describe_portable(["HW", "THW"], 20).startswith("5-D GridSample in 1 of 2 DeformConv3d layers")


def test_cli_export_portable_says_which_form(tmp_path, capsys):
    out = tmp_path / "p.onnx"
    argv = ["export", "--random-init", "--nf", "4", "--d3d-blocks", "1", "--res-blocks", "1", "--portable"]
    assert cli([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "opset 18" in printed and "dynamic batch/height/width" in printed
    assert "portable form: 4-D GridSample, one per kernel time index (2 DeformConv3d layers)" in printed
    assert out.is_file()


class _Layer(torch.nn.Module):
    """One DeformConv3d with its offsets as a second input, for a layer-level ONNX export."""

    def __init__(self, spec, deform_dims: str) -> None:
        super().__init__()
        _, c, o, _, _, _, k, stride, pad, dil, groups, ogroups = spec
        self.layer = DeformConv3d(c, o, k, stride, pad, dil, groups, ogroups, deform_dims)

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return self.layer(x, offset)


def test_strided_grouped_layer_exports_with_dynamic_shapes(tmp_path, gen):
    """Stride 2 and dilation 2 in T, groups and offset groups, through torch.onnx.export with dynamic
    batch/H/W (example batch 1), then ONNX Runtime at other batch and frame sizes vs the reference."""
    import onnxruntime as ort

    from d3d.export.symbolic import export_flavour

    # kernel (2, 3, 3), stride (2, 2, 1), padding (2, 1, 1), dilation (2, 1, 2), groups 3, offset groups 2
    spec = (1, 6, 6, 7, 11, 13, (2, 3, 3), (2, 2, 1), (2, 1, 1), (2, 1, 2), 3, 2)
    module = _Layer(spec, "HW").eval()
    x, offset, *_ = _layer_inputs(spec, "HW", gen, dtype=torch.float32)
    dim = torch.export.Dim
    batch, hh, ww = dim("batch", min=1, max=8), dim("height", min=6, max=64), dim("width", min=6, max=64)
    oh, ow = dim("oh", min=3, max=64), dim("ow", min=3, max=64)
    shapes = {"x": {0: batch, 3: hh, 4: ww}, "offset": {0: batch, 3: oh, 4: ow}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with export_flavour(True), torch.no_grad():
        program = torch.onnx.export(module, (x, offset), dynamo=True, opset_version=18, dynamic_shapes=shapes)
    proto = program.model_proto
    assert _dims(proto.graph.input[0])[0] == "batch" and _dims(proto.graph.input[1])[0] == "batch"
    assert _grid_sample_ranks(proto) == [(4, 4)] * 2  # kT = 2
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for n, h, w in [(2, 11, 13), (3, 9, 8)]:
        args = _layer_inputs((n, *spec[1:4], h, w, *spec[6:]), "HW", gen, dtype=torch.float32)
        got = session.run(None, dict(zip(names, (args[0].numpy(), args[1].numpy()), strict=True)))[0]
        with torch.no_grad():
            expected = deform_conv3d_reference(
                args[0], args[1], module.layer.weight, module.layer.bias, *spec[7:], "HW"
            )
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-3)
