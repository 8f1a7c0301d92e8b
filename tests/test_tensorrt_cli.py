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


def test_engine_sidecar_mismatch_is_explained(tmp_path):
    import json

    from d3d.errors import D3DError
    from d3d.export.tensorrt import check_sidecar

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(D3DError, match="no sidecar"):
        check_sidecar(engine, "10.13.0", "NVIDIA H100", "9.0")
    (tmp_path / "m.engine.json").write_text(
        json.dumps({"tensorrt_version": "10.9.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"})
    )
    with pytest.raises(D3DError) as info:
        check_sidecar(engine, "10.13.0", "NVIDIA H100", "9.0")
    msg = str(info.value)
    assert "built with TensorRT 10.9.0, running 10.13.0" in msg
    assert "built for compute capability 8.9, this GPU is 9.0" in msg and "rebuild" in msg
    info_ok = check_sidecar(engine, "10.9.0", "NVIDIA L4", "8.9")
    assert info_ok["gpu"] == "NVIDIA L4"


def test_only_a_custom_op_model_needs_the_plugin(tiny_checkpoint, tiny_onnx, tmp_path, monkeypatch):
    """A TensorRT build loads the DeformConv3d plugin for a custom-op model only: a portable model builds
    where no plugin exists; an explicit --plugin must exist; a custom-op model without one is a clear
    SDK-missing error (exit 2), not a failure inside TensorRT."""
    import logging

    from d3d import load_checkpoint
    from d3d.errors import D3DError, SDKMissing
    from d3d.export import ExportOptions, export_onnx
    from d3d.export.tensorrt import plugin_for_model

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    portable = tmp_path / "portable.onnx"
    export_onnx(load_checkpoint(tiny_checkpoint), portable, ExportOptions(portable=True))
    monkeypatch.setenv("D3D_TRT_PLUGIN", str(tmp_path / "absent.so"))  # the search finds nothing usable
    monkeypatch.setattr("d3d.native_libs.trt_plugin_library", lambda: None)
    assert plugin_for_model(portable) is None
    with pytest.raises(SDKMissing, match="plugin"):
        plugin_for_model(tiny_onnx)
    with pytest.raises(D3DError, match="no such plugin library"):
        plugin_for_model(portable, tmp_path / "absent.so")
    lib = tmp_path / "libplugin.so"
    lib.write_bytes(b"\x7fELF")
    assert plugin_for_model(tiny_onnx, lib) == lib
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(D3DError, match="not a readable ONNX model"):
        plugin_for_model(tmp_path / "junk.onnx")
