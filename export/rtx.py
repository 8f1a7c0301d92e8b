"""Ahead-of-time engine build with TensorRT-RTX, which needs no GPU: proof on a CPU-only machine that
a TensorRT ONNX parser and builder accept a graph. Its Python API has no plugin layers, so this checks
the portable flavour only; the custom-op model needs the DeformConv3d plugin (real TensorRT)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from d3d.errors import D3DError, SDKMissing


def build_engine_rtx(
    onnx_path: Path,
    profile: tuple[Sequence[int], Sequence[int], Sequence[int]],
    compute_capability: str = "SM89",
    input_name: str = "lr",
) -> bytes:
    """Parses and builds ``onnx_path`` for ``compute_capability``; returns the serialized engine."""
    try:
        import tensorrt_rtx_bindings as trt
    except ImportError:
        raise SDKMissing(
            "TensorRT-RTX is not installed: pip install tensorrt-rtx-cu12-libs tensorrt-rtx-cu12-bindings"
        ) from None
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise D3DError(f"{onnx_path}: the TensorRT-RTX ONNX parser refused the model: {errors}")
    config = builder.create_builder_config()
    p = builder.create_optimization_profile()
    p.set_shape(input_name, *[tuple(s) for s in profile])
    config.add_optimization_profile(p)
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, compute_capability), 0)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise D3DError(f"{onnx_path}: TensorRT-RTX could not build an engine for {compute_capability}")
    return bytes(engine)
