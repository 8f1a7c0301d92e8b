"""No parity check that a broken model passes: an ONNX file whose weights hold NaN/Inf is refused at load
(as such a checkpoint is), `d3d verify` fails on any non-finite output even where every backend agrees
(NaN compared with NaN), and negative or NaN tolerances are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from d3d.cli import main as cli
from d3d.errors import D3DError
from d3d.export import load_model


def _with_first_conv_weight(tiny_onnx, tmp_path, value: float, whole: bool = False):
    proto = onnx.load(tiny_onnx)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    init = next(i for i in proto.graph.initializer if i.name == conv.input[1])
    w = numpy_helper.to_array(init).copy()
    if whole:
        w[...] = value
    else:
        w.flat[0] = value
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = tmp_path / "bad.onnx"
    onnx.save(proto, path)
    return path, init.name


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_onnx_with_nonfinite_weights_is_refused(tiny_onnx, tmp_path, capsys, value):
    path, name = _with_first_conv_weight(tiny_onnx, tmp_path, value)
    with pytest.raises(D3DError, match=f"initializer {name} holds 1 NaN/Inf values"):
        load_model(path)
    assert cli(["verify", str(path), "--shapes", "16x16", "--no-real-frames"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refusing to run these weights" in err


def test_verify_fails_on_nonfinite_outputs_all_backends_agree_on(tiny_onnx, tmp_path, capsys):
    # Finite weights so large that the first convolution overflows: every backend gives Inf/NaN alike.
    path, _ = _with_first_conv_weight(tiny_onnx, tmp_path, 3e38, whole=True)
    args = ["verify", str(path), "--shapes", "16x16", "--no-real-frames", "--backends", "pytorch", "onnxruntime"]
    assert cli(args) == 1
    out = capsys.readouterr().out
    assert "NaN/Inf values" in out and "FAILED: non-finite outputs" in out and "PASSED" not in out


@pytest.mark.parametrize("flag,value", [("--atol", "-1"), ("--rtol", "-0.5"), ("--atol", "nan")])
def test_negative_or_nan_tolerance_is_refused(tiny_onnx, capsys, flag, value):
    assert cli(["verify", str(tiny_onnx), flag, value]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{flag} must be >= 0" in err
