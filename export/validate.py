"""Load-time validation of ``d3d::DeformConv3d`` nodes against the op spec (docs/deform_conv3d_spec.md).

The same rules, and the same wording, as ``plugins/kernels/deform_conv3d_attrs.h``: a bad attribute in
an ONNX file is refused when the file loads, with a message naming the node, instead of reaching a
custom op (where an error used to abort the process).
"""

from __future__ import annotations

import onnx

from d3d._plugins.contract import (
    DEFAULT_DEFORM_DIMS,
    DEFAULT_DILATION,
    DEFAULT_GROUP,
    DEFAULT_OFFSET_GROUP,
    DEFAULT_PAD,
    DEFAULT_STRIDE,
    DOMAIN,
    MAX_ATTR,
    OP_TYPE,
    PLUGIN_VERSION,
)
from d3d.errors import D3DError

PLUGIN_NAMESPACE = DOMAIN
_AXES = "THW"
# ONNX name: (word in messages, lowest valid value, default where the node leaves it out)
_INTS3 = {
    "strides": ("stride", 1, DEFAULT_STRIDE),
    "pads": ("padding", 0, DEFAULT_PAD),
    "dilations": ("dilation", 1, DEFAULT_DILATION),
}
_DEFAULT_INT = {"group": DEFAULT_GROUP, "offset_group": DEFAULT_OFFSET_GROUP}
_MAX_ATTR_TEXT = f"2^{MAX_ATTR.bit_length() - 1}"  # as validate_attrs words it (a power of two)
_KNOWN = {*_INTS3, "group", "offset_group", "deform_dims", "plugin_version", "plugin_namespace"}
_TYPES = {
    "strides": onnx.AttributeProto.INTS,
    "pads": onnx.AttributeProto.INTS,
    "dilations": onnx.AttributeProto.INTS,
    "group": onnx.AttributeProto.INT,
    "offset_group": onnx.AttributeProto.INT,
    "deform_dims": onnx.AttributeProto.STRING,
    "plugin_version": onnx.AttributeProto.STRING,
    "plugin_namespace": onnx.AttributeProto.STRING,
}


def deform_dims_error(dims: str) -> str:
    """ "" when ``dims`` is an ordered, non-empty subset of "THW", else the reason (as the C++ parser)."""
    if not dims or len(dims) > 3:
        return f'deform_dims must be a non-empty ordered subset of "THW", got "{dims}"'
    next_axis = 0
    for ch in dims:
        if ch not in _AXES:
            return f'deform_dims may contain only the letters T, H, W, got "{dims}"'
        if _AXES.index(ch) < next_axis:
            return f'deform_dims letters must appear once each in T, H, W order, got "{dims}"'
        next_axis = _AXES.index(ch) + 1
    return ""


def attrs_error(attrs: dict) -> str:
    """ "" when the attribute values satisfy the spec, else the first reason (``validate_attrs``)."""
    for key, (word, low, default) in _INTS3.items():
        values = list(attrs.get(key, [default] * 3))
        if len(values) != 3:
            return f"{key} needs 3 values (T, H, W), got {len(values)}"
        for axis, v in zip(_AXES, values, strict=True):
            if not low <= v <= MAX_ATTR:
                return f"{word} along {axis} must be in [{low}, {_MAX_ATTR_TEXT}], got {v}"
    for key, default in _DEFAULT_INT.items():
        v = attrs.get(key, default)
        if not 1 <= v <= MAX_ATTR:
            return f"{key} must be >= 1, got {v}"
    err = deform_dims_error(attrs.get("deform_dims", DEFAULT_DEFORM_DIMS))
    if err:
        return err
    for key, ours in (("plugin_version", PLUGIN_VERSION), ("plugin_namespace", PLUGIN_NAMESPACE)):
        if key in attrs and attrs[key] != ours:
            return f'{key} must be "{ours}" (this toolchain\'s DeformConv3d plugin), got "{attrs[key]}"'
    return ""


def node_attrs(node: onnx.NodeProto) -> tuple[dict, str]:
    """The node's attribute values, and a reason where one is unknown or of the wrong type."""
    values: dict = {}
    for a in node.attribute:
        if a.name not in _KNOWN:
            return values, f"unknown attribute {a.name!r}"
        if a.type != _TYPES[a.name]:
            return values, f"attribute {a.name!r} has the wrong type ({onnx.AttributeProto.AttributeType.Name(a.type)})"
        v = onnx.helper.get_attribute_value(a)
        values[a.name] = v.decode(errors="replace") if isinstance(v, bytes) else (list(v) if a.type == a.INTS else v)
    return values, ""


def _weight_error(node: onnx.NodeProto, attrs: dict, inits: dict[str, onnx.TensorProto]) -> str:
    """Group divisibility where the weight is an initializer (the usual case): known before any input."""
    w = inits.get(node.input[2]) if len(node.input) > 2 else None
    if w is None:
        return ""
    if len(w.dims) != 5:
        return f"weight must be 5-D [O, C/group, kT, kH, kW], got {list(w.dims)}"
    group = attrs.get("group", DEFAULT_GROUP)
    if w.dims[0] % group != 0:
        return f"output channels ({w.dims[0]}) must be divisible by group ({group})"
    if len(node.input) > 3 and node.input[3] in inits:
        b = inits[node.input[3]]
        if list(b.dims) != [w.dims[0]]:
            return f"bias must be [{w.dims[0]}], got {list(b.dims)}"
    return ""


def _static_dims(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor name -> dims (None where symbolic): inferred afresh where shape inference succeeds, else
    as the file records them (an inconsistent file fails inference but still states its shapes)."""
    from d3d.export.schema import register_schema

    register_schema()
    graph = proto.graph
    try:
        fresh = onnx.ModelProto()
        fresh.CopyFrom(proto)
        del fresh.graph.value_info[:]
        graph = onnx.shape_inference.infer_shapes(fresh).graph
    except Exception:  # checked against the file's own value_info instead
        pass
    dims: dict[str, list[int | None]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in proto.graph.initializer:
        dims[init.name] = list(init.dims)
    return dims


def _shape_error(node: onnx.NodeProto, attrs: dict, dims: dict[str, list[int | None]]) -> str:
    """Channel arithmetic of ``make_shape`` where shapes are known statically (channels always are in
    an exported D3Dnet): a mismatch found here never reaches a custom op at run time."""
    x, off, w = (dims.get(name) for name in node.input[:3])
    if not w or len(w) != 5:
        return ""
    group, offset_group = attrs.get("group", DEFAULT_GROUP), attrs.get("offset_group", DEFAULT_OFFSET_GROUP)
    if x and len(x) == 5 and x[1] is not None:
        c = x[1]
        if w[1] * group != c:
            return f"weight has {w[1]} input channels per group, expected C/group = {c // group} (C = {c})"
        if c % offset_group != 0:
            return f"input channels ({c}) must be divisible by offset_group ({offset_group})"
    if off and len(off) == 5 and off[1] is not None:
        want = offset_group * w[2] * w[3] * w[4] * len(attrs.get("deform_dims", DEFAULT_DEFORM_DIMS))
        if off[1] != want:
            return f"offset has {off[1]} channels, expected offset_group * kT*kH*kW * len(deform_dims) = {want}"
    return ""


def check_custom_nodes(proto: onnx.ModelProto, source: str) -> None:
    """Raises a one-line :class:`D3DError` naming the first ``d3d`` node that breaks the op spec."""
    inits = {i.name: i for i in proto.graph.initializer}
    dims: dict[str, list[int | None]] | None = None
    for node in proto.graph.node:
        if node.domain != DOMAIN:
            continue
        label = f"{source}: node {node.name or '(unnamed)'} ({node.op_type})"
        if node.op_type != OP_TYPE:
            raise D3DError(f"{label}: unknown operator in domain {DOMAIN!r} (this toolchain has {OP_TYPE} only)")
        if not 3 <= len(node.input) <= 4 or len(node.output) != 1:
            raise D3DError(f"{label}: needs inputs X, offset, W (and optional B) and one output")
        attrs, err = node_attrs(node)
        err = err or attrs_error(attrs) or _weight_error(node, attrs, inits)
        if not err:
            dims = _static_dims(proto) if dims is None else dims
            err = _shape_error(node, attrs, dims)
        if err:
            raise D3DError(f"{label}: {err}")
