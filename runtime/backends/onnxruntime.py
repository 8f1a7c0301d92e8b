"""ONNX Runtime backend: CPU (the default backend), or the CUDA execution provider where present.

Session creation is :mod:`d3d.runtime.ort`'s; this module adds the runner. Each run happens in a worker
thread while the calling (main) thread waits in short slices, so SIGINT/SIGTERM are handled promptly
even while a custom-op node runs: the handler's exception reaches the waiting thread, which sets
``RunOptions.terminate`` (ONNX Runtime stops before the next node) and lets the worker finish. No
exception is ever raised inside a custom op, whichever library implements it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3d.errors import D3DError, summary_line
from d3d.model import D3DnetConfig
from d3d.runtime.backends.base import Backend, BackendOptions, Runner

WAIT_SLICE_S = 0.05  # how often the waiting thread wakes up for signals


@dataclass
class OrtOptions(BackendOptions):
    flavour: str = "custom"  # for checkpoints: the export flavour run (custom, gridsample or deformconv)

    def validate(self) -> None:
        super().validate()
        if self.precision != "fp32":
            raise D3DError(f"the onnxruntime backend runs fp32 only, not {self.precision}")
        if self.cuda_graph:
            raise D3DError("--cuda-graph is a TensorRT option")


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, options: OrtOptions | None = None) -> None:
        from d3d.export import load_model, model_config
        from d3d.runtime.ort import available_providers, create_session

        options = options or OrtOptions()
        proto = load_model(onnx_path)  # validates every DeformConv3d node against the op spec
        super().__init__(D3DnetConfig(**model_config(proto, str(onnx_path))))
        wanted = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        providers = wanted.get(options.device) or ["CUDAExecutionProvider", "CPUExecutionProvider"]
        have = available_providers()
        if options.device == "cuda" and "CUDAExecutionProvider" not in have:
            raise D3DError("ONNX Runtime has no CUDA execution provider here (install onnxruntime-gpu)")
        providers = [p for p in providers if p in have]
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        # Pool threads that spin on after a run take cores from the video pipeline's decode and encode
        # threads (and from the Python between runs): `d3d upscale` of 20 frames on 2 cores, Zen 5, three
        # alternating pairs: 4.72-4.89 frames/s without spinning, 4.54-4.59 with (docs/PERFORMANCE.md).
        self._session = create_session(proto, providers, options.threads, allow_spinning=False)
        self._input = self._session.get_inputs()[0].name
        self.flavour = flavour_name(proto)

    def infer(self, window: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        feed = {self._input: np.ascontiguousarray(window, dtype=np.float32)}
        run_options = ort.RunOptions()
        result: dict[str, object] = {}

        def work() -> None:
            try:
                result["y"] = self._session.run(None, feed, run_options)[0]
            except BaseException as exc:  # handed to the waiting thread
                result["error"] = exc

        worker = threading.Thread(target=work, name="d3d-onnxruntime-run", daemon=True)
        try:
            worker.start()
            while worker.is_alive():
                worker.join(WAIT_SLICE_S)
        except BaseException:
            run_options.terminate = True  # checked by ONNX Runtime between nodes
            if worker.ident is not None:
                worker.join()
            # The worker's exception holds ONNX Runtime's frames (and so the session): drop it, so the
            # session can be released before interpreter shutdown, where freeing it aborts.
            result.clear()
            raise
        if "error" in result:
            why = summary_line(result.pop("error"))  # type: ignore[arg-type]
            raise D3DError(f"ONNX Runtime failed: {why}")
        return result["y"]  # type: ignore[return-value]

    def close(self) -> None:
        import gc

        super().close()
        # Release the session (and its threads) now: freed during interpreter shutdown it can abort.
        self._session = None
        gc.collect()

    def describe(self) -> str:
        return f"{self.name} ({self.device}, {self.flavour}, {self.precision})"


def _create(source, options: OrtOptions) -> OrtRunner:
    from d3d.runtime.models import onnx_for

    return OrtRunner(onnx_for(source, options.flavour), options)


def _create_portable(source, options: OrtOptions) -> OrtRunner:
    options.flavour = "gridsample"
    return _create(source, options)


def _create_deformconv(source, options: OrtOptions) -> OrtRunner:
    options.flavour = "deformconv"
    return _create(source, options)


def _unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    return None


BACKENDS = [
    Backend(
        "onnxruntime",
        "ONNX Runtime with the custom DeformConv3d op (CPU; CUDA EP where present)",
        OrtOptions,
        _create,
        _unavailable,
    ),
    Backend(
        "onnxruntime-portable",
        "ONNX Runtime on the standard-ops (GridSample) export of a checkpoint",
        OrtOptions,
        _create_portable,
        _unavailable,
    ),
    Backend(
        "onnxruntime-deformconv",
        "ONNX Runtime on the standard DeformConv-19 export of a checkpoint (no op library)",
        OrtOptions,
        _create_deformconv,
        _unavailable,
    ),
]


def flavour_name(proto) -> str:
    """How the runner names a model's flavour: the exporter's ``d3d.flavour`` metadata (custom op,
    gridsample, deformconv), else (a file from elsewhere) custom op or standard ops by its nodes."""
    from d3d.export.exporter import META_FLAVOUR
    from d3d.export.schema import DOMAIN

    recorded = {p.key: p.value for p in proto.metadata_props}.get(META_FLAVOUR)
    if recorded == "custom" or any(n.domain == DOMAIN for n in proto.graph.node):
        return "custom op"
    if recorded in ("gridsample", "deformconv"):
        return recorded
    if recorded == "portable":  # files exported before --flavour
        return "gridsample"
    return "standard ops"
