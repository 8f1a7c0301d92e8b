"""The precision of an exported graph: fp32 as exported, or fp16 through onnxconverter-common's float16
converter (a well-kept converter, not a hand-written rewrite), with a keep-list of layers left in fp32.

TensorRT builds strongly typed (``_trt_build``), so the type of each tensor here is the type the engine
computes in. The DeformConv3d nodes are converted like their neighbours: the schema, the TensorRT plugin
and the ONNX Runtime op take fp16 I/O and keep sampling positions, weights and sums in fp32 inside.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx

from d3d.errors import D3DError

log = logging.getLogger(__name__)

# Operators left in fp32 besides the converter's own list (ops ONNX Runtime has no fp16 kernel for).
# Empty: no D3Dnet layer has been shown to need fp32 (docs/TENSORRT.md, "Precision").
KEEP_FP32_OPS: tuple[str, ...] = ()


def check_precision(precision: str, io_precision: str = "fp32") -> None:
    """Refuses, before any slow work, a precision pair this export cannot make."""
    if precision not in ("fp32", "fp16", "bf16"):
        raise D3DError(f"unknown precision {precision!r}: use fp32, fp16 or bf16")
    if io_precision not in ("fp32", precision):
        raise D3DError(f"--io-precision is fp32 or the model's precision ({precision}), not {io_precision}")
    if precision == "bf16":
        raise D3DError(
            "bf16 export is not available yet: onnxconverter-common converts to float16 only "
            "(use --precision fp16, or fp32)"
        )


def convert_precision(
    proto: onnx.ModelProto,
    precision: str,
    io_precision: str = "fp32",
    keep_fp32_nodes: Sequence[str] = (),
) -> onnx.ModelProto:
    """``proto`` with weights and activations in ``precision``; model inputs and outputs in
    ``io_precision`` (fp32: Casts at the edges), the precision recorded in its metadata.
    ``keep_fp32_nodes``: node names left in fp32."""
    check_precision(precision, io_precision)
    if precision == "fp32":
        return proto
    from onnxconverter_common import float16

    from d3d.export.schema import register_schema

    register_schema()  # the converter's shape inference must know d3d::DeformConv3d
    # The converter retypes a Cast's output to fp16 but not its ``to`` attribute (the GridSample flavour's
    # index arithmetic casts to float): kept, each such Cast gets a Cast to fp16 after it instead.
    casts_to_fp32 = [
        n.name
        for n in proto.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)
    ]
    converted = float16.convert_float_to_float16(
        proto,
        keep_io_types=io_precision == "fp32",
        op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *KEEP_FP32_OPS],
        node_block_list=[*keep_fp32_nodes, *casts_to_fp32],
        check_fp16_ready=False,
    )
    from d3d.export.exporter import META_PRECISION

    onnx.helper.set_model_props(
        converted, {**{p.key: p.value for p in converted.metadata_props}, META_PRECISION: precision}
    )
    return converted


FP16_MAX = 65504.0  # the largest finite float16


def activation_peaks(model, inputs) -> list[tuple[str, float]]:
    """Each leaf layer of ``model`` (a torch module) with the largest absolute value of its output over
    ``inputs`` (input tensors), in fp32; largest first."""
    import torch

    peaks: dict[str, float] = {}

    def hook(name):
        def record(_module, _args, out):
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                peaks[name] = max(peaks.get(name, 0.0), float(out.detach().abs().float().max()))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return sorted(peaks.items(), key=lambda kv: -kv[1])


def check_fp16_range(model, inputs, headroom: float = 2.0) -> list[tuple[str, float]]:
    """Refuses an fp16 export where a layer's activations on ``inputs`` come within ``headroom`` of
    fp16's largest value (65504) or pass it: fp16 would turn them into Inf and the frames into NaN.
    Returns the peaks (largest first) for the caller to report."""
    peaks = activation_peaks(model, inputs)
    over = [(n, v) for n, v in peaks if not v * headroom < FP16_MAX]  # NaN counts as over
    if over:
        named = ", ".join(f"{n} ({v:.3g})" for n, v in over[:4])
        raise D3DError(
            f"fp16 would overflow: {len(over)} layer(s) reach within {headroom:g}x of fp16's 65504 on real frames: "
            f"{named}; export with --precision fp32"
        )
    return peaks
