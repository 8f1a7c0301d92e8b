"""The backend registry: every backend module is found, options are typed and checked, and a new backend
is one file (planted here in a temporary folder on the package's search path)."""

from __future__ import annotations

import textwrap

import pytest
from conftest import write_frames

import d3d.runtime.backends as backends
from d3d.cli import main as cli
from d3d.errors import D3DError


def test_registry_lists_every_backend_module():
    names = backends.backend_names()
    assert {"onnxruntime", "onnxruntime-portable", "pytorch", "tensorrt"} <= set(names)
    for b in backends.registry().values():
        assert b.description and issubclass(b.options, backends.BackendOptions)
    # Each backend's options are its own dataclass with the shared fields.
    trt = backends.get_backend("tensorrt").options()
    assert {"device", "precision", "threads", "streams", "cuda_graph", "tile", "plugin"} <= set(vars(trt))


@pytest.mark.parametrize(
    ("backend", "fields", "words"),
    [
        ("onnxruntime", {"precision": "fp16"}, "fp32 only"),
        ("onnxruntime", {"cuda_graph": True}, "TensorRT option"),
        ("pytorch", {"threads": 0}, "--threads must be >= 1"),
        ("pytorch", {"tile": 16, "tile_overlap": 8}, "leaves no core"),
        ("tensorrt", {"device": "cpu"}, "CUDA GPU only"),
    ],
)
def test_options_are_checked(backend, fields, words):
    b = backends.get_backend(backend)
    with pytest.raises(D3DError, match=words):
        b.options(**fields).validate()


def test_a_new_backend_is_one_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "nearest.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from d3d.model import D3DnetConfig
            from d3d.runtime.backends.base import Backend, BackendOptions, Runner

            class Nearest(Runner):
                name = "nearest"
                def infer(self, window):
                    centre = window[:, :, window.shape[2] // 2]
                    return centre.repeat(4, axis=2).repeat(4, axis=3)

            BACKENDS = [Backend("nearest", "nearest-neighbour x4 (test)", BackendOptions,
                                lambda source, options: Nearest(D3DnetConfig()), lambda: None)]
            """
        )
    )
    monkeypatch.setattr(backends, "__path__", [*backends.__path__, str(tmp_path)])
    monkeypatch.setattr(backends, "_REGISTRY", {})
    assert "nearest" in backends.backend_names()
    write_frames(tmp_path / "frames", 3, size=(8, 8))
    out = tmp_path / "out"
    assert cli(["upscale", str(tmp_path / "frames"), "--random-init", "--backend", "nearest", "-o", str(out),
                "-q", "--no-estimate"]) == 0  # fmt: skip
    assert "backend: nearest" in capsys.readouterr().out
    assert len(list(out.glob("frame_*.png"))) == 3
