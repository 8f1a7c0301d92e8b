"""The native ONNX Runtime op library (libd3d_ort_ops.so): the exported custom-op model in plain
ONNX Runtime without torch, every feature of the op against the fp64 reference, and errors that come
back as exceptions (never an abort)."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import move_offsets
from onnx import TensorProto, helper, numpy_helper

from d3d import D3Dnet
from d3d.errors import D3DError
from d3d.export import ExportOptions, export_onnx
from d3d.native_libs import ort_ops_library
from d3d.ops import deform_conv3d_reference, output_size
from d3d.runtime.ort import create_session

LIB = ort_ops_library()
pytestmark = pytest.mark.skipif(
    LIB is None,
    reason="libd3d_ort_ops.so not built (make native with ../shared/third_party's ONNX Runtime headers)",
)


def _node_model(attrs: dict, w: np.ndarray, b: np.ndarray | None, elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """One DeformConv3d node as the exporter writes it: X and offset inputs with dynamic sizes, W/B constants."""
    inputs = ["x", "offset", "w"] + (["b"] if b is not None else [])
    node = helper.make_node("DeformConv3d", inputs, ["y"], domain="d3d", **attrs)
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    dyn = ["n", "c", "t", "h", "w"]
    graph = helper.make_graph(
        [node],
        "deform_conv3d",
        [
            helper.make_tensor_value_info("x", elem, dyn),
            helper.make_tensor_value_info("offset", elem, ["n", "oc", "t2", "h2", "w2"]),
        ],
        [helper.make_tensor_value_info("y", elem, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("d3d", 1)])


def _attrs(st, pd, dl, g, og, dims) -> dict:
    return {
        "strides": list(st),
        "pads": list(pd),
        "dilations": list(dl),
        "group": g,
        "offset_group": og,
        "deform_dims": dims,
        "plugin_version": "1",
        "plugin_namespace": "d3d",
    }


# (N, C, O, (T, H, W), kernel, stride, padding, dilation, groups, offset_groups, bias)
CASES = [
    (2, 4, 6, (5, 6, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, 1, True),
    (1, 4, 4, (6, 7, 9), (3, 1, 3), (1, 1, 2), (2, 0, 1), (2, 1, 1), 2, 2, False),
    (2, 6, 4, (4, 9, 8), (1, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 2, 3, True),
    (1, 4, 2, (7, 5, 6), (3, 3, 3), (1, 1, 1), (2, 2, 2), (2, 2, 2), 1, 2, True),
    (1, 6, 6, (3, 13, 17), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 3, 2, False),  # several CPU tiles
]


@pytest.mark.parametrize(
    "case,dims", [*itertools.product(CASES[:4], ["T", "H", "W", "TH", "TW", "HW", "THW"]), (CASES[4], "HW")]
)
def test_op_equals_reference(gen, case, dims):
    n, c, o, size, k, st, pd, dl, g, og, with_bias = case
    x = torch.randn(n, c, *size, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c // g, *k, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64) if with_bias else None
    out = output_size(size, k, st, pd, dl)
    oshape = (n, og * k[0] * k[1] * k[2] * len(dims), *out)
    off = torch.randn(oshape, generator=gen, dtype=torch.float64) * 1.5
    far = torch.rand(oshape, generator=gen) < 0.15  # taps thrown past the faces of the volume
    off = torch.where(far, torch.sign(off) * (max(size) + 2.0), off)
    f32 = [t.float().numpy() for t in (x, off, w)]
    proto = _node_model(_attrs(st, pd, dl, g, og, dims), f32[2], b.float().numpy() if b is not None else None)
    sess = create_session(proto)
    got = sess.run(None, {"x": f32[0], "offset": f32[1]})[0]
    want = deform_conv3d_reference(
        *(torch.from_numpy(a).double() for a in f32),
        b.float().double() if b is not None else None,
        stride=st,
        padding=pd,
        dilation=dl,
        groups=g,
        offset_groups=og,
        deform_dims=dims,
    ).numpy()
    assert got.shape == want.shape
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= 2e-6, f"max relative error {rel:.3e}"


BAD_ATTRS = [
    ({"strides": [1, -1, 1]}, "stride along H"),
    ({"group": 0}, "group must be >= 1"),
    ({"deform_dims": "XYZ"}, "deform_dims may contain only"),
    ({"pads": [1, 1, 1, 1, 1, 1]}, "'pads' must have 3 values"),
    ({"plugin_version": "2"}, "plugin_version"),
    ({"dilations": [1.0, 1.0, 1.0]}, "dilations"),
]


@pytest.mark.parametrize("case,dims", [(CASES[1], "HW"), (CASES[2], "THW"), (CASES[3], "TW")])
def test_fp16_io_is_the_fp32_op_rounded(gen, case, dims):
    """fp16 I/O: inputs widened to fp32, the same fp32 kernel, the output rounded to fp16 once. So the
    fp16 node's output equals the fp32 node's output (on the same fp16-representable inputs) rounded to
    fp16, exactly; taps past the faces of the volume included."""
    n, c, o, size, k, st, pd, dl, g, og, with_bias = case
    x = torch.randn(n, c, *size, generator=gen).half().numpy()
    w = (torch.randn(o, c // g, *k, generator=gen) * 0.3).half().numpy()
    b = torch.randn(o, generator=gen).half().numpy() if with_bias else None
    oshape = (n, og * k[0] * k[1] * k[2] * len(dims), *output_size(size, k, st, pd, dl))
    off = (torch.randn(oshape, generator=gen) * (max(size) / 2)).half().numpy()  # some taps land outside
    attrs = _attrs(st, pd, dl, g, og, dims)
    f16 = create_session(_node_model(attrs, w, b, TensorProto.FLOAT16))
    f32 = create_session(_node_model(attrs, w.astype(np.float32), None if b is None else b.astype(np.float32)))
    got = f16.run(None, {"x": x, "offset": off})[0]
    want = f32.run(None, {"x": x.astype(np.float32), "offset": off.astype(np.float32)})[0]
    assert got.dtype == np.float16 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, want.astype(np.float16))


@pytest.mark.parametrize("bad,message", BAD_ATTRS)
def test_bad_attribute_is_an_exception_at_session_creation(bad, message):
    attrs = {**_attrs((1, 1, 1), (1, 1, 1), (1, 1, 1), 1, 1, "HW"), **bad}
    proto = _node_model(attrs, np.zeros((2, 2, 3, 3, 3), np.float32), None)
    with pytest.raises(D3DError, match=message) as info:
        create_session(proto)
    assert "\n" not in str(info.value)


def test_bad_input_shape_is_an_exception_at_run_time():
    proto = _node_model(
        _attrs((1, 1, 1), (1, 1, 1), (1, 1, 1), 1, 1, "HW"), np.zeros((2, 2, 3, 3, 3), np.float32), None
    )
    sess = create_session(proto)
    x = np.zeros((1, 2, 3, 4, 5), np.float32)
    with pytest.raises(Exception, match="offset has 27 channels, expected"):
        sess.run(None, {"x": x, "offset": np.zeros((1, 27, 3, 4, 5), np.float32)})
    with pytest.raises(Exception, match="input channels"):
        sess.run(None, {"x": np.zeros((1, 3, 3, 4, 5), np.float32), "offset": np.zeros((1, 54, 3, 4, 5), np.float32)})


def test_missing_library_is_a_one_line_error(tmp_path, monkeypatch):
    import d3d.native_libs as nl

    monkeypatch.setenv("D3D_BUILD_DIR", str(tmp_path))
    monkeypatch.delenv("D3D_ORT_OPS", raising=False)
    monkeypatch.setattr(nl, "PACKAGE_DIR", tmp_path)
    proto = _node_model(
        _attrs((1, 1, 1), (1, 1, 1), (1, 1, 1), 1, 1, "HW"), np.zeros((2, 2, 3, 3, 3), np.float32), None
    )
    with pytest.raises(D3DError, match=r"libd3d_ort_ops\.so was not found; build it with `make native`"):
        create_session(proto)


# --- The exported model in plain ONNX Runtime: a fresh venv with onnxruntime + numpy, no torch --------

_PLAIN_ORT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np
    import onnxruntime as ort

    lib, model, data, bad = sys.argv[1:5]
    result = {"torch_importable": importlib.util.find_spec("torch") is not None}
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    ref = np.load(data)
    result["max_abs_err"] = {}
    for key in sorted(k for k in ref.files if k.startswith("x_")):
        y = sess.run(None, {sess.get_inputs()[0].name: ref[key]})[0]
        want = ref["y_" + key[2:]]
        result["max_abs_err"][key[2:]] = float(np.abs(y - want).max()) if y.shape == want.shape else None
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    try:
        ort.InferenceSession(bad, so, providers=["CPUExecutionProvider"])
        result["bad_attribute"] = "accepted"
    except Exception as exc:
        result["bad_attribute"] = type(exc).__name__ + ": " + str(exc)
    print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory) -> Path:
    """A new virtual environment with only onnxruntime and numpy (from pip's cache where it has them)."""
    root = tmp_path_factory.mktemp("plain_venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    py = root / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "onnxruntime", "numpy"],
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0:
        lines = (pip.stderr or pip.stdout).strip().splitlines()
        pytest.skip(f"cannot install onnxruntime + numpy into a fresh venv: {lines[-1] if lines else pip.returncode}")
    return py


def test_exported_model_runs_in_plain_onnxruntime_from_a_copied_folder(plain_venv, tmp_path):
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = D3Dnet(nf=8, d3d_blocks=1, res_blocks=1).eval()
    move_offsets(model, 0.1, 4.0)  # offsets of several pixels: many taps land outside the frame
    onnx_path = tmp_path / "d3dnet.onnx"
    export_onnx(model, onnx_path, ExportOptions())
    # Two frame sizes through the one dynamic file.
    arrays = {}
    for h, w in [(12, 16), (9, 13)]:
        x = torch.rand(1, model.config.in_channels, model.config.frames, h, w)
        with torch.no_grad():
            arrays[f"y_{h}x{w}"] = model(x).numpy()
        arrays[f"x_{h}x{w}"] = x.numpy()
    np.savez(tmp_path / "ref.npz", **arrays)
    # A model with a bad attribute (negative stride).
    proto = onnx.load(onnx_path)
    node = next(n for n in proto.graph.node if n.domain == "d3d")
    for a in node.attribute:
        if a.name == "strides":
            a.ints[1] = -1
    onnx.save(proto, tmp_path / "bad.onnx")
    # Only a copy of the library's folder travels.
    folder = shutil.copytree(LIB.parent, tmp_path / "copied_ort_ops")
    script = tmp_path / "run.py"
    script.write_text(_PLAIN_ORT)
    args = [str(folder / LIB.name), str(onnx_path), str(tmp_path / "ref.npz"), str(tmp_path / "bad.onnx")]
    proc = subprocess.run(
        [str(plain_venv), str(script), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, f"exit {proc.returncode} (an abort is -6): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch_importable"] is False
    assert set(result["max_abs_err"]) == {"12x16", "9x13"}
    for size, err in result["max_abs_err"].items():
        assert err is not None and err <= 1e-4, f"{size}: max abs error {err}"
    assert "stride along H must be in [1, 2^20], got -1" in result["bad_attribute"]
