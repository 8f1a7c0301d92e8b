"""D3Dnet -> ONNX, with DeformConv3d as a ``d3d::DeformConv3d`` node or (portable) standard ops."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

import d3d
from d3d import probes
from d3d.atomic import atomic_write
from d3d.errors import D3DError, summary_line
from d3d.export.portable import form_for, restore_sliced_weights
from d3d.export.precision import MIN_OPSET_BF16, check_precision_opset
from d3d.export.schema import DOMAIN, register_schema
from d3d.export.symbolic import FLAVOURS, export_flavour
from d3d.export.validate import check_custom_nodes
from d3d.model import D3Dnet
from d3d.modules import DeformConv3d

MIN_OPSET = 18
MAX_OPSET = 23
DEFAULT_OPSET = 20
MIN_OPSET_DEFORMCONV = 19  # ONNX DeformConv appeared in opset 19
MIN_OPSET_VOLUME = 20  # 5-D GridSample (the portable form of layers that deform T)
# A frame-wise portable model defaults to GridSample-16 (mode "bilinear"): stock TensorRT's ONNX parser
# reads GridSample-20's "linear" as nearest (NVIDIA/TensorRT#4646), ONNX Runtime's CUDA provider had no
# GridSample-20 kernel before 2026, and OpenVINO imports GridSample-20 only since 2026 (see docs/PORTABLE.md).
PORTABLE_OPSET = 18
INPUT_NAME = "lr"
OUTPUT_NAME = "sr"

META_CONFIG = "d3d.config"
META_FLAVOUR = "d3d.flavour"
META_CHECKPOINT = "d3d.checkpoint_sha256"
META_TOOLCHAIN = "d3d.toolchain"
META_IO = "d3d.io"
META_ALIASES = "d3d.param_aliases"
META_PORTABLE = "d3d.portable_form"
META_PRECISION = "d3d.precision"  # the compute precision of the graph's tensors: fp32, fp16 or bf16
PRECISIONS = ("fp32", "fp16", "bf16")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    opset: int | None = None  # None: DEFAULT_OPSET, or PORTABLE_OPSET for a frame-wise portable model
    dynamic: bool = True  # dynamic batch, height and width; the frame count is fixed by the model
    portable: bool = False  # the gridsample flavour (kept for callers from before --flavour)
    flavour: str | None = None  # custom, gridsample or deformconv; None: gridsample if portable, else custom
    batch: int = 1  # example (and, when static, fixed) input size
    height: int = 64
    width: int = 64
    precision: str = "fp32"  # the graph's tensors: fp32, fp16 (onnxconverter-common) or bf16 (ModelOpt AutoCast)
    io_precision: str = "fp32"  # model input and output: fp32 (Casts at the edges) or the precision


def flavour_of(options: ExportOptions) -> str:
    """The export flavour ``options`` ask for (one of FLAVOURS)."""
    if options.flavour is None:
        return "gridsample" if options.portable else "custom"
    if options.flavour not in FLAVOURS:
        raise D3DError(f"unknown export flavour {options.flavour!r}: use one of {', '.join(FLAVOURS)}")
    if options.portable and options.flavour != "gridsample":
        raise D3DError(f"portable=True is the gridsample flavour, not {options.flavour}")
    return options.flavour


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _deform_layers(model: torch.nn.Module) -> list[DeformConv3d]:
    return [m for m in model.modules() if isinstance(m, DeformConv3d)]


def needs_volume(model: torch.nn.Module) -> bool:
    """Whether the portable flavour of ``model`` holds 5-D GridSample (a layer deforms T), so needs opset 20."""
    return any(form_for(m.deform_dims) == "volume" for m in _deform_layers(model))


def resolve_opset(options: ExportOptions, model: torch.nn.Module) -> int:
    """The opset an export of ``model`` with ``options`` uses (checked)."""
    flavour = flavour_of(options)
    portable = flavour == "gridsample"
    volume = portable and needs_volume(model)
    if flavour == "deformconv":
        check_deformconv_layers(model)
    opset = options.opset
    if opset is None:
        opset = PORTABLE_OPSET if portable and not volume else DEFAULT_OPSET
        if options.precision == "bf16":
            opset = max(opset, MIN_OPSET_BF16)  # exported at once at the opset bf16 needs, not converted later
    check_opset(opset, flavour, volume)
    check_precision_opset(options.precision, opset)
    return opset


def check_deformconv_layers(model: torch.nn.Module) -> None:
    """The deformconv flavour writes 2-D DeformConv per time tap, so no layer may deform T."""
    for name, m in model.named_modules():
        if isinstance(m, DeformConv3d) and m.deform_dims != "HW":
            raise D3DError(
                f"layer {name} deforms {m.deform_dims}: the deformconv flavour (2-D DeformConv per time tap) "
                "takes only layers that deform H and W; use --flavour gridsample or custom"
            )


def check_opset(opset: int, flavour: str | bool, volume: bool = False) -> None:
    """``flavour``: custom, gridsample or deformconv (True/False: gridsample/custom); ``volume``: the
    gridsample model will hold 5-D GridSample (opset 20: GridSample-16 is 4-D only)."""
    if isinstance(flavour, bool):
        flavour = "gridsample" if flavour else "custom"
    low, what = MIN_OPSET, "export"
    if flavour == "gridsample" and volume:
        low, what = MIN_OPSET_VOLUME, "a portable model that deforms T (5-D GridSample)"
    elif flavour == "deformconv":
        low, what = MIN_OPSET_DEFORMCONV, "--flavour deformconv (ONNX DeformConv is opset 19)"
    if not low <= opset <= MAX_OPSET:
        raise D3DError(f"opset {opset} is not supported for {what}: use {low}..{MAX_OPSET}")


def export_onnx(
    model: D3Dnet,
    path: str | os.PathLike[str],
    options: ExportOptions = ExportOptions(),
    checkpoint_sha256: str | None = None,
) -> onnx.ModelProto:
    """Exports ``model`` to ``path`` and returns the saved, shape-inferred and checked model.

    Input ``lr``: ``[N, C, frames, H, W]`` (Y channel in [0, 1]); output ``sr``: ``[N, C, s*H, s*W]``.
    """
    from d3d.export.precision import check_precision

    check_precision(options.precision, options.io_precision)
    model = model.eval()
    opset = resolve_opset(options, model)
    flavour = flavour_of(options)
    cfg = model.config
    x = torch.rand(options.batch, cfg.in_channels, cfg.frames, options.height, options.width)
    dynamic_shapes = None
    if options.dynamic:
        dim = torch.export.Dim
        dynamic_shapes = {
            "x": {0: dim("batch", min=1, max=64), 3: dim("height", min=8, max=8192), 4: dim("width", min=8, max=8192)}
        }
    with export_flavour(flavour), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # the exporter wraps everything in its own error types
            raise D3DError(f"ONNX export failed: {summary_line(exc)}") from exc
    proto = program.model_proto
    if options.dynamic:
        _check_dynamic(proto)
    meta = {
        META_CONFIG: json.dumps(cfg.as_dict(), sort_keys=True),
        META_FLAVOUR: flavour,
        META_TOOLCHAIN: f"d3d-trt {d3d.__version__}, torch {torch.__version__}, onnx {onnx.__version__}",
        META_IO: f"{INPUT_NAME}: [N, {cfg.in_channels}, {cfg.frames}, H, W] Y in [0, 1]; "
        f"{OUTPUT_NAME}: [N, {cfg.out_channels}, {cfg.scale}H, {cfg.scale}W]",
    }
    if checkpoint_sha256:
        meta[META_CHECKPOINT] = checkpoint_sha256
    if flavour == "gridsample":
        meta[META_PORTABLE] = describe_portable([m.deform_dims for m in _deform_layers(model)], opset)
        if options.precision == "bf16":  # opset 18 cannot hold bf16
            meta[META_PORTABLE] = meta[META_PORTABLE].replace(
                f"use opset {PORTABLE_OPSET} for them", f"for them use fp16 or fp32 at opset {PORTABLE_OPSET}"
            )
        log.info("portable model: %s", meta[META_PORTABLE])
    if flavour != "custom":
        # The optimizer folds small weights' per-frame slices into new tensors; put the weight back
        # under its own name so the PyTorch model can be rebuilt from the file (d3d verify).
        restore_sliced_weights(proto, model.state_dict())
    aliases = _param_aliases(model, proto)
    if aliases:
        meta[META_ALIASES] = json.dumps(aliases, sort_keys=True)
    meta[META_PRECISION] = "fp32"  # convert_precision records its own
    onnx.helper.set_model_props(proto, meta)
    if options.precision != "fp32" or options.io_precision != "fp32":
        from d3d.export.precision import convert_precision

        proto = convert_precision(proto, options.precision, options.io_precision)
    proto.producer_name, proto.producer_version = "d3d-trt", d3d.__version__
    register_schema()
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    save_model(proto, path)
    return proto


def describe_portable(deform_dims: list[str], opset: int) -> str:
    """One line on the GridSample form of a portable model whose DeformConv3d layers deform ``deform_dims``."""
    volume = [dims for dims in deform_dims if form_for(dims) == "volume"]
    if not volume:
        note = f"4-D GridSample, one per kernel time index ({len(deform_dims)} DeformConv3d layers)"
        if opset >= 20:
            note += (
                f"; opset {opset} makes it GridSample-20, which stock TensorRT reads as nearest and older ONNX "
                f"Runtime CUDA and OpenVINO releases refuse or run on the CPU: use opset {PORTABLE_OPSET} for them"
            )
        return note
    why = "they deform T" if all("T" in dims for dims in volume) else "5-D form forced"
    return (
        f"5-D GridSample in {len(volume)} of {len(deform_dims)} DeformConv3d layers ({why}): stock TensorRT and "
        "OpenVINO (4-D GridSample only) refuse it; ONNX Runtime's CUDA provider runs it on the GPU only since 2026"
    )


def _check_dynamic(proto: onnx.ModelProto) -> None:
    # torch.onnx.export fixes a dim it cannot trace symbolically (to the example's size) instead of
    # failing; a file that silently takes one batch size or frame size only must not be written.
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [f"{name} {dims[axis].dim_value}" for axis, name in ((0, "batch"), (3, "height"), (4, "width"))]
    fixed = [text for text, axis in zip(fixed, (0, 3, 4), strict=True) if not dims[axis].dim_param]
    if fixed:
        raise D3DError(f"ONNX export could not keep the input dynamic (it fixed {', '.join(fixed)}); use --static")


def portable_form(proto: onnx.ModelProto) -> str | None:
    """The exporter's note on which GridSample form a portable model holds (None for other files)."""
    return {p.key: p.value for p in proto.metadata_props}.get(META_PORTABLE)


def _param_aliases(model: D3Dnet, proto: onnx.ModelProto) -> dict[str, str]:
    """The optimizer merges byte-identical initializers and drops all-zero Conv biases. Records, for
    each parameter whose name disappeared, the initializer that now holds its value ("" when it was
    dropped as all zeros), so the PyTorch model can be rebuilt from the file."""
    inits = {i.name: i for i in proto.graph.initializer}
    aliases = {}
    for name, value in model.state_dict().items():
        if name in inits:
            continue
        raw = value.detach().cpu().contiguous().numpy().tobytes()
        for init_name, init in inits.items():
            # Same bytes (a folded reshape, as in the portable flavour, keeps them).
            if math.prod(init.dims) == value.numel() and onnx.numpy_helper.to_array(init).tobytes() == raw:
                aliases[name] = init_name
                break
        else:
            if not value.any():
                aliases[name] = ""
    return aliases


def save_model(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Atomic save: a failure leaves no half-written file."""
    with atomic_write(path) as tmp:
        onnx.save_model(proto, str(tmp))
        probes.reached("onnx saved")  # written, not yet in place


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Loads and checks an ONNX file; a clear one-line error for a missing or corrupt file."""
    p = Path(path)
    if not p.is_file():
        raise D3DError(f"{p}: no such file")
    try:
        proto = onnx.load_model(str(p))
        register_schema()
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise D3DError(f"{p}: not a valid ONNX model ({summary_line(exc)})") from None
    check_custom_nodes(proto, str(p))
    check_finite_weights(proto, str(p))
    return proto


def check_finite_weights(proto: onnx.ModelProto, source: str = "model") -> None:
    """Refuses a graph whose floating initializers hold NaN or Inf, as a checkpoint with them is refused
    (d3d.checkpoint): such weights make NaN outputs that compare "equal" and frames written silently."""
    from onnx import numpy_helper

    floating = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    for init in proto.graph.initializer:
        if init.data_type not in floating:
            continue
        values = numpy_helper.to_array(init).astype(np.float32)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise D3DError(
                f"{source}: initializer {init.name} holds {bad} NaN/Inf values: refusing to run these weights"
            )


def param_aliases(proto: onnx.ModelProto) -> dict[str, str]:
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props.get(META_ALIASES, "{}"))


def model_config(proto: onnx.ModelProto, source: str = "model") -> dict[str, int]:
    props = {p.key: p.value for p in proto.metadata_props}
    if META_CONFIG not in props:
        raise D3DError(f"{source}: no {META_CONFIG} metadata: not exported by d3d-trt (pass --checkpoint)")
    try:
        config = json.loads(props[META_CONFIG])
        bad = [k for k, v in config.items() if not isinstance(v, int) or v < 1]
    except (ValueError, AttributeError):
        config, bad = {}, ["(unreadable)"]
    if bad:
        raise D3DError(f"{source}: {META_CONFIG} metadata has invalid sizes: {', '.join(bad)} (each must be >= 1)")
    return config


def has_custom_nodes(proto: onnx.ModelProto) -> bool:
    return any(n.domain == DOMAIN for n in proto.graph.node)


_ELEM_PRECISION = {
    onnx.TensorProto.FLOAT: "fp32",
    onnx.TensorProto.FLOAT16: "fp16",
    onnx.TensorProto.BFLOAT16: "bf16",
}


def graph_precision(proto: onnx.ModelProto) -> str:
    """The precision of the graph's tensors: the ``d3d.precision`` metadata, else (a file from before it
    was recorded) the floating type most of the initializers hold, else fp32."""
    recorded = {p.key: p.value for p in proto.metadata_props}.get(META_PRECISION)
    if recorded is not None:
        if recorded not in PRECISIONS:
            raise D3DError(f"{META_PRECISION} metadata {recorded!r} is not one of {', '.join(PRECISIONS)}")
        return recorded
    counts: dict[str, int] = {}
    for init in proto.graph.initializer:
        kind = _ELEM_PRECISION.get(init.data_type)
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else "fp32"


def resolve_precision(proto: onnx.ModelProto, requested: str | None, source: str = "model") -> str:
    """The precision a TensorRT engine of ``proto`` has: the graph's (builds are strongly typed). A
    different ``requested`` one is refused, naming the export that makes the right file."""
    actual = graph_precision(proto)
    if requested is not None and requested != actual:
        raise D3DError(
            f"{source} is an {actual} graph and TensorRT builds strongly typed (the engine has the graph's "
            f"precision): for {requested}, export it with `d3d export --precision {requested}`, or drop --precision"
        )
    return actual
