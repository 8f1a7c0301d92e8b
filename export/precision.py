"""The precision of an exported graph: fp32 as exported, fp16 through onnxconverter-common's float16
converter, or bf16 through NVIDIA ModelOpt's ONNX AutoCast (well-kept converters, not a hand-written
rewrite), with a keep-list of layers left in fp32.

TensorRT builds strongly typed (``_trt_build``), so the type of each tensor here is the type the engine
computes in. The DeformConv3d nodes are converted like their neighbours: the schema, the TensorRT plugin
and the ONNX Runtime op take fp16 I/O and keep sampling positions, weights and sums in fp32 inside.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx

from d3d.errors import D3DError, SDKMissing, summary_line

log = logging.getLogger(__name__)

# Operators left in fp32 besides the converter's own list (ops ONNX Runtime has no fp16 kernel for).
# Empty: no D3Dnet layer has been shown to need fp32 (docs/TENSORRT.md, "Precision").
KEEP_FP32_OPS: tuple[str, ...] = ()

# ONNX's operators (Conv, Add, GridSample, DeformConv, ...) take bfloat16 from opset 22 on.
MIN_OPSET_BF16 = 22
BF16_INSTALL = "pip install 'd3d-trt[bf16]'"


def _autocast():
    """ModelOpt's ONNX AutoCast module (the ``bf16`` extra), or SDKMissing naming the install."""
    try:
        from modelopt.onnx import autocast
    except ImportError as exc:
        raise SDKMissing(
            f"bf16 export needs NVIDIA ModelOpt's ONNX AutoCast ({summary_line(exc)}): {BF16_INSTALL}"
        ) from None
    return autocast


def check_precision(precision: str, io_precision: str = "fp32") -> None:
    """Refuses, before any slow work, a precision pair this export cannot make."""
    if precision not in ("fp32", "fp16", "bf16"):
        raise D3DError(f"unknown precision {precision!r}: use fp32, fp16 or bf16")
    if io_precision not in ("fp32", precision):
        raise D3DError(f"--io-precision is fp32 or the model's precision ({precision}), not {io_precision}")
    if precision == "bf16" and not _autocast_installed():
        raise SDKMissing(f"bf16 export needs NVIDIA ModelOpt's ONNX AutoCast (not installed): {BF16_INSTALL}")


def _autocast_installed() -> bool:
    """Whether ModelOpt is installed, without importing it (that takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec("modelopt") is not None
    except ValueError:  # in sys.modules as None: its import is blocked
        return False


def check_precision_opset(precision: str, opset: int) -> None:
    """Refuses an opset that cannot hold ``precision`` (bf16 needs opset 22)."""
    if precision == "bf16" and opset < MIN_OPSET_BF16:
        raise D3DError(
            f"opset {opset} cannot hold bf16: ONNX's operators take bfloat16 from opset {MIN_OPSET_BF16} "
            f"(use --opset {MIN_OPSET_BF16} or leave it out)"
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
    if precision == "bf16":
        converted = _convert_bf16(proto, io_precision)
    else:
        converted = _convert_fp16(proto, io_precision, keep_fp32_nodes)
    from d3d.export.exporter import META_PRECISION

    onnx.helper.set_model_props(
        converted, {**{p.key: p.value for p in converted.metadata_props}, META_PRECISION: precision}
    )
    return converted


def _convert_fp16(proto: onnx.ModelProto, io_precision: str, keep_fp32_nodes: Sequence[str]) -> onnx.ModelProto:
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
    return float16.convert_float_to_float16(
        proto,
        keep_io_types=io_precision == "fp32",
        op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *KEEP_FP32_OPS],
        node_block_list=[*keep_fp32_nodes, *casts_to_fp32],
        check_fp16_ready=False,
    )


def _convert_bf16(proto: onnx.ModelProto, io_precision: str) -> onnx.ModelProto:
    """bf16 through ModelOpt's AutoCast (``convert_to_f16``: every node not in the keep-list, custom
    DeformConv3d nodes included, typed bf16; Casts at the edges for fp32 I/O). The graph must already be
    at opset 22 (the exporter makes it so): AutoCast would otherwise convert it, and the metadata the
    exporter wrote would name the wrong opset."""
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    check_precision_opset("bf16", opset)
    autocast = _autocast()
    from d3d.export.schema import register_schema

    register_schema()  # AutoCast's type inference must know d3d::DeformConv3d
    # Its own logging goes to stdout at INFO; keep it to errors: its warnings here are about the constants
    # it duplicates (renamed back below) and an absent optional input, nothing a user acts on.
    autocast.configure_logging(logging.ERROR)
    # It also warns through the root logger (the ops it keeps in fp32 for want of a bf16 form at this
    # opset), which would install a root handler as a side effect: collected and logged here instead.
    collected = _Collect()
    root = logging.getLogger()
    root.addHandler(collected)
    try:
        converted = autocast.convert_to_f16(
            proto,
            low_precision_type="bf16",
            keep_io_types=io_precision == "fp32",
            op_block_list=list(KEEP_FP32_OPS),
            opset=opset,
        )
    except Exception as exc:  # a converter failure is reported in one line, as the exporter's are
        raise D3DError(f"bf16 conversion (ModelOpt AutoCast) failed: {summary_line(exc)}") from exc
    finally:
        root.removeHandler(collected)
    for message in collected.messages:
        log.info("ModelOpt AutoCast: %s", " ".join(message.split()))
    _restore_shared_names(proto, converted)
    # AutoCast writes a new model without the exporter's metadata (config, flavour, aliases): carried over.
    onnx.helper.set_model_props(converted, {p.key: p.value for p in proto.metadata_props})
    return converted


class _Collect(logging.Handler):
    """Keeps the messages of warnings logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _restore_shared_names(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """AutoCast gives each node its own copy of an initializer that several nodes shared (``b`` becomes
    ``b_1``, ``b_2``). The first copy takes the original name back, so the parameter names and aliases
    the exporter recorded (d3d verify rebuilds the PyTorch model from them) still name an initializer."""
    names_after = {i.name for i in after.graph.initializer}
    gone = {i.name for i in before.graph.initializer} - names_after
    if not gone:
        return
    nodes_after = {n.name: n for n in after.graph.node if n.name}
    renames: dict[str, str] = {}
    for node in before.graph.node:
        twin = nodes_after.get(node.name)
        if twin is None or len(twin.input) != len(node.input):
            continue
        for old, new in zip(node.input, twin.input, strict=True):
            if old in gone and old not in renames.values() and new in names_after and new not in renames:
                renames[new] = old
    for init in after.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in after.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]


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
