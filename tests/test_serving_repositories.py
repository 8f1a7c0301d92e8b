"""``d3d serve --write-only``: the model repositories written for a production Triton (python,
onnxruntime and tensorrt platforms) parse against Triton's model-config schema (tritonclient's protobuf)
and hold the files their configs name. Nothing is served: no tritonserver is needed.
"""

from __future__ import annotations

import json

import pytest
from conftest import serve_extra

from d3d.cli import main as cli

serve_extra("tritonclient.grpc")  # the schema is tritonclient's


# --- Repositories for a production Triton --------------------------------------------------------------


def _parse_config(path):
    """config.pbtxt parsed against Triton's model-config schema (tritonclient's protobuf): an unknown
    field, a wrong type or an unknown enum value is an error."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _fake_engine(tmp_path):
    """Stand-ins: no TensorRT here, so the plan and the plugin are placeholder bytes (the repository is
    checked, not run); the sidecar is what d3d build writes."""
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"not a real plan")
    config = {"scale": 4, "in_channels": 1, "out_channels": 1, "frames": 7, "nf": 8, "d3d_blocks": 1, "res_blocks": 1}
    (tmp_path / "model.plan.json").write_text(
        json.dumps({"tensorrt_version": "10.16.0", "precision": "fp16", "model_config": config})
    )
    plugin = tmp_path / "libd3d_trt_plugin.so"
    plugin.write_bytes(b"\x7fELF placeholder")
    return engine, plugin


@pytest.mark.parametrize("platform", ["python", "onnxruntime", "tensorrt"])
def test_write_only_repositories_follow_tritons_schema(platform, tiny_checkpoint, tmp_path, capsys):
    from d3d.runtime.serving import MODEL_NAME, WINDOW_MODEL

    out = tmp_path / "repo"
    if platform == "tensorrt":
        engine, plugin = _fake_engine(tmp_path)
        model = ["--engine", str(engine), "--plugin", str(plugin)]
    else:
        model = ["--checkpoint", str(tiny_checkpoint)]
    assert cli(["serve", "--write-only", str(out), "--platform", platform, *model]) == 0
    front = _parse_config(out / MODEL_NAME / "config.pbtxt")
    assert front.backend == "python" and front.max_batch_size == 0
    sb = front.sequence_batching
    assert sb.HasField("oldest") and sb.max_sequence_idle_microseconds == 600_000_000
    from tritonclient.grpc import model_config_pb2

    kind = model_config_pb2.ModelSequenceBatching.Control.Kind.Name
    kinds = {c.name: kind(c.control[0].kind) for c in sb.control_input}
    assert kinds == {
        "START": "CONTROL_SEQUENCE_START",
        "END": "CONTROL_SEQUENCE_END",
        "CORRID": "CONTROL_SEQUENCE_CORRID",
    }
    assert [i.name for i in front.input] == ["FRAME", "INDEX", "CUT", "FIRST_OUTPUT"]
    settings = json.loads(front.parameters["d3d_model"].string_value)
    assert (out / MODEL_NAME / "1" / "model.py").is_file()
    readme = (out / "README.md").read_text()
    assert "tritonserver --model-repository=/models" in readme
    if platform == "python":
        assert settings["backend"] == "onnxruntime" and (out / MODEL_NAME / "1" / "model.onnx").is_file()
        assert (out / MODEL_NAME / settings["ort_ops"]).is_file()
        assert not (out / WINDOW_MODEL).exists()
        return
    assert settings["backend"] == "window-model" and settings["window_model"] == WINDOW_MODEL
    window = _parse_config(out / WINDOW_MODEL / "config.pbtxt")
    assert [i.name for i in window.input] == ["lr"] and list(window.input[0].dims) == [1, 1, 7, -1, -1]
    if platform == "onnxruntime":
        assert window.platform == "onnxruntime_onnx"
        assert list(window.model_operations.op_library_filename) == ["/models/d3dnet_window/libd3d_ort_ops.so"]
        assert (out / WINDOW_MODEL / "1" / "model.onnx").is_file() and (
            out / WINDOW_MODEL / "libd3d_ort_ops.so"
        ).is_file()
    else:
        assert window.platform == "tensorrt_plan" and window.default_model_filename == "model.plan"
        assert (out / WINDOW_MODEL / "1" / "model.plan").read_bytes() == b"not a real plan"
        assert (out / WINDOW_MODEL / "1" / "model.plan.json").is_file() and "10.16.0" in readme
        assert "--backend-config=tensorrt,plugins=/models/plugins/libd3d_trt_plugin.so" in readme
        assert (out / "plugins" / "libd3d_trt_plugin.so").is_file()
