"""The DeformConv-19 export flavour (``--flavour deformconv``): standard ONNX ``DeformConv`` nodes, one per
kernel time tap, run in plain ONNX Runtime (no op library of ours) against the PyTorch model and the pure
PyTorch reference op; its refusals are one line."""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import move_offsets

from d3d import D3Dnet, DeformConv3d, save_checkpoint
from d3d.cli import main as cli
from d3d.errors import D3DError
from d3d.export import ExportOptions, export_onnx
from d3d.export.symbolic import export_flavour
from d3d.reference import deform_conv3d_reference

SIZES = [(13, 17), (21, 11)]  # two odd H x W through the same dynamic-shape file


def _plain_session(proto: onnx.ModelProto) -> ort.InferenceSession:
    # No custom op library registered: only ONNX Runtime's own kernels.
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small D3Dnet whose taps move by several pixels (many outside the frame), exported as deformconv."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(3)
    model = D3Dnet(nf=8, d3d_blocks=1, res_blocks=1)
    move_offsets(model, 0.2, 6.0)
    model.eval()
    path = tmp_path_factory.mktemp("deformconv") / "small.onnx"
    proto = export_onnx(model, path, ExportOptions(flavour="deformconv"))
    return model, path, proto


def test_model_matches_pytorch_in_plain_onnxruntime(small):
    model, path, proto = small
    nodes = [n.op_type for n in proto.graph.node]
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    # Two DeformConv3d layers (one block), three time taps each.
    assert nodes.count("DeformConv") == 6 and "GridSample" not in nodes
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [20]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["d3d.flavour"] == "deformconv"
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(onnx.load(path), strict_mode=True), full_check=True)
    session = _plain_session(onnx.load(path))
    gen = torch.Generator().manual_seed(1)
    for h, w in SIZES:
        x = torch.rand(2, 1, 7, h, w, generator=gen)
        got = session.run(None, {"lr": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == expected.shape == (2, 1, 4 * h, 4 * w)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_fp16_model_runs_in_plain_onnxruntime(small):
    """The export's fp16 converter (onnxconverter-common, what ``--precision fp16`` runs) on the deformconv
    graph: every DeformConv is float16 in and out, and plain ONNX Runtime runs it close to fp32 PyTorch."""
    from d3d.export.precision import convert_precision

    model, _, proto = small
    half = onnx.shape_inference.infer_shapes(convert_precision(proto, "fp16"), strict_mode=True)
    onnx.checker.check_model(half, full_check=True)
    typed = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.value_info, *half.graph.input]}
    convs = [n for n in half.graph.node if n.op_type == "DeformConv"]
    assert len(convs) == 6
    assert {typed[name] for n in convs for name in [*n.input, *n.output]} == {onnx.TensorProto.FLOAT16}
    session = _plain_session(half)
    gen = torch.Generator().manual_seed(2)
    for h, w in SIZES:
        x = torch.rand(1, 1, 7, h, w, generator=gen)
        got = session.run(None, {"lr": x.numpy()})[0].astype(np.float64)
        with torch.no_grad():
            expected = model(x).double().numpy()
        psnr = 10 * math.log10(1.0 / float(np.mean((got - expected) ** 2)))
        assert psnr >= 50, psnr
        np.testing.assert_allclose(got, expected, atol=2e-3, rtol=0)


class _Layer(torch.nn.Module):
    def __init__(self, c, o, k, stride, pad, dil, groups, ogroups) -> None:
        super().__init__()
        self.layer = DeformConv3d(c, o, k, stride, pad, dil, groups, ogroups, "HW")

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return self.layer(x, offset)


# (C, O, T, kernel, stride, padding, dilation, groups, offset groups)
# Stride 2 (T, H), dilation 2 (T, W), temporal padding 3: taps of the first and last output frames read
# the zero frames before and after the clip; groups and offset groups.
LAYERS = [(6, 6, 7, (2, 3, 3), (2, 2, 1), (3, 1, 1), (2, 1, 2), 3, 2)]


@pytest.mark.parametrize("spec", LAYERS)
def test_layer_with_stride_dilation_padding_matches_reference(spec):
    """One layer through torch.onnx.export (dynamic batch/H/W), then plain ONNX Runtime at two odd sizes
    against the pure-PyTorch reference op in fp64."""
    c, o, t, k, stride, pad, dil, groups, ogroups = spec
    module = _Layer(c, o, k, stride, pad, dil, groups, ogroups).eval()
    gen = torch.Generator().manual_seed(5)

    def inputs(n, h, w):
        out = [
            (s + 2 * p - d * (kk - 1) - 1) // st + 1
            for s, p, d, kk, st in zip((t, h, w), pad, dil, k, stride, strict=True)
        ]
        x = torch.randn(n, c, t, h, w, generator=gen)
        offset = 3 * torch.randn(n, ogroups * math.prod(k) * 2, *out, generator=gen)
        return x, offset

    dim = torch.export.Dim
    batch, hh, ww = dim("batch", min=1, max=8), dim("height", min=6, max=64), dim("width", min=6, max=64)
    oh, ow = dim("oh", min=3, max=64), dim("ow", min=3, max=64)
    shapes = {"x": {0: batch, 3: hh, 4: ww}, "offset": {0: batch, 3: oh, 4: ow}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with export_flavour("deformconv"), torch.no_grad():
        program = torch.onnx.export(module, inputs(1, 9, 11), dynamo=True, opset_version=19, dynamic_shapes=shapes)
    proto = program.model_proto
    assert [n.op_type for n in proto.graph.node].count("DeformConv") == k[0]
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(proto, strict_mode=True), full_check=True)
    session = _plain_session(proto)
    names = [i.name for i in session.get_inputs()]
    for n, h, w in [(2, 11, 13), (3, 9, 7)]:
        x, offset = inputs(n, h, w)
        got = session.run(None, dict(zip(names, (x.numpy(), offset.numpy()), strict=True)))[0]
        layer = module.layer
        expected = deform_conv3d_reference(
            x.double(),
            offset.double(),
            layer.weight.double(),
            layer.bias.double(),
            stride,
            pad,
            dil,
            groups,
            ogroups,
            "HW",
        )
        np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-4, rtol=0)


def test_layer_that_deforms_t_is_refused_in_one_line(tmp_path):
    model = D3Dnet(nf=4, d3d_blocks=1, res_blocks=1)
    layer = next(m for m in model.modules() if isinstance(m, DeformConv3d))
    layer.deform_dims = "THW"  # refused before anything runs the layer
    with pytest.raises(D3DError) as info:
        export_onnx(model, tmp_path / "t.onnx", ExportOptions(flavour="deformconv"))
    assert "\n" not in str(info.value) and "deforms THW" in str(info.value)
    assert not (tmp_path / "t.onnx").exists()


def test_cli_refusals_are_one_line(tmp_path, capsys):
    ckpt = tmp_path / "m.pth"
    save_checkpoint(D3Dnet(nf=4, d3d_blocks=1, res_blocks=1), ckpt)
    out = tmp_path / "x.onnx"
    cases = [
        (["--portable", "--flavour", "deformconv"], "--portable is the alias of --flavour gridsample"),
        (["--portable", "--flavour", "gridsample"], "--portable is the alias of --flavour gridsample"),
        (["--flavour", "deformconv", "--opset", "18"], "opset 18 is not supported for --flavour deformconv"),
    ]
    for extra, message in cases:
        assert cli(["export", str(ckpt), "-o", str(out), *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("d3d: error: ") and message in err, err
        assert not out.exists()


def test_onnxruntime_deformconv_backend_exports_and_caches_by_flavour(tiny_checkpoint, tmp_path, monkeypatch):
    """`--backend onnxruntime-deformconv` on a checkpoint: the automatic export is the deformconv flavour,
    cached under a name that says so, and its output equals the PyTorch model's."""
    from d3d import load_checkpoint
    from d3d.runtime.backends import create_runner, get_backend
    from d3d.runtime.models import onnx_for, resolve_source

    monkeypatch.setenv("D3D_CACHE_DIR", str(tmp_path / "cache"))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    source = resolve_source(checkpoint=tiny_checkpoint)
    with pytest.raises(D3DError, match="unknown export flavour 'portable'"):
        onnx_for(source, "portable")
    runner = create_runner(get_backend("onnxruntime-deformconv"), source)
    try:
        assert runner.flavour == "deformconv" and "deformconv" in runner.describe()
        # the product sessions do not keep ONNX Runtime's pool threads spinning after a run
        spin = runner._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        assert spin == "0", spin
        cached = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
        assert len(cached) == 1 and "-deformconv-" in cached[0].name
        x = torch.rand(1, 1, 7, 12, 20, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = load_checkpoint(tiny_checkpoint).eval()(x).numpy()
        np.testing.assert_allclose(runner.infer(x.numpy()), expected, atol=1e-4, rtol=0)
    finally:
        runner.close()
