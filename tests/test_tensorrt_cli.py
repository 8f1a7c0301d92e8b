"""`d3d build` where TensorRT is not installed: a clear message, exit code 2, nothing written."""

from __future__ import annotations

import importlib.util

import pytest

from d3d.cli import main as cli


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_without_tensorrt_exits_2(tmp_path, capsys):
    out = tmp_path / "m.engine"
    assert cli(["build", str(tmp_path / "any.onnx"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "TensorRT is not installed" in err and "pip install" in err
    assert not out.exists()


def test_build_rejects_inverted_profile(tmp_path, capsys):
    rc = cli(["build", "x.onnx", "-o", str(tmp_path / "e"), "--min-shape", "1x90x90", "--opt-shape", "1x64x64"])
    assert rc == 1
    assert "min <= opt <= max" in capsys.readouterr().err
