"""ONNX Runtime sessions for d3d models.

The portable flavour runs in stock ONNX Runtime. The custom-op flavour runs with the project's native
custom-op library (``libd3d_ort_ops.so``, built by CMake from ``plugins/onnxruntime`` and the shared
kernel source) registered on the session options: ONNX Runtime then runs the ``d3d::DeformConv3d``
nodes exactly as exported, on its own thread pool, with no Python and no PyTorch in the loop. Errors
inside the op come back as ONNX Runtime exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from d3d.errors import D3DError, summary_line
from d3d.export.schema import DOMAIN
from d3d.native_libs import ORT_OPS, ort_ops_library

BUILD_HINT = "build it with `make native` (or cmake -DD3D_ORT_INCLUDE_DIR=<onnxruntime headers>), or set D3D_ORT_OPS"


def ops_library() -> Path:
    """The custom-op library, or a one-line D3DError saying how to build it."""
    path = ort_ops_library()
    if path is None:
        raise D3DError(f"the ONNX Runtime op library {ORT_OPS.filename} was not found; {BUILD_HINT}")
    return path


def create_session(
    proto: onnx.ModelProto,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    allow_spinning: bool = True,
):
    """An ``onnxruntime.InferenceSession`` for either flavour of a d3d model. ``allow_spinning=False`` stops
    the pool threads spinning on after a run, where they would take cores from whatever runs next (the
    runtime's decode and encode threads, the benchmarks' side-by-side timings); the runtime's backend
    and the benchmarks pass it."""
    import onnxruntime as ort

    check_cpu_precision(proto, providers)
    custom_ops = any(n.domain == DOMAIN for n in proto.graph.node)
    options = _session_options(custom_ops, threads)
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=list(providers))
    except Exception as exc:
        raise D3DError(f"ONNX Runtime cannot load the model: {summary_line(exc)}") from None


def check_cpu_precision(proto: onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
    """Refuses, in one line, a bf16 graph on the CPU provider alone: ONNX Runtime 1.32's CPU provider has
    no bfloat16 kernel for Conv, Add, LeakyRelu, Resize, GridSample or DeformConv (checked), and the op
    library takes fp32 and fp16 only, so the session would fail with a type error on the first node."""
    from d3d.export.exporter import graph_precision

    if graph_precision(proto) == "bf16" and all(p == "CPUExecutionProvider" for p in providers):
        raise D3DError(
            "this is a bf16 model and ONNX Runtime's CPU provider has no bfloat16 kernels (Conv, Add, ...): "
            "run it with TensorRT (`d3d build`), or export with --precision fp16 or fp32 for the CPU"
        )


def _session_options(custom_ops: bool, threads: int | None = None):
    """Quiet session options, with the DeformConv3d library registered where the model needs it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if custom_ops:
        library = ops_library()
        try:
            options.register_custom_ops_library(str(library))
        except Exception as exc:
            raise D3DError(f"ONNX Runtime cannot load {library}: {summary_line(exc)}") from None
    return options


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())
