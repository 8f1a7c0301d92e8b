"""ONNX schema of ``d3d::DeformConv3d`` (opset 1) with type and shape inference.

Registering it lets ``onnx.shape_inference.infer_shapes`` propagate shapes through the custom node
and ``onnx.checker.check_model(full_check=True)`` validate its attributes. Symbolic dims pass through
wherever the output extent equals the input's (stride 1, "same" padding, as in D3Dnet); otherwise a
known dim is computed and an unknown one stays symbolic under a derived name.
"""

from __future__ import annotations

import onnx
from onnx import defs

from d3d._plugins.contract import (
    DEFAULT_DILATION,
    DEFAULT_PAD,
    DEFAULT_STRIDE,
    DOMAIN,
    OP_TYPE,
    OPSET_VERSION,
    PLUGIN_VERSION,
    conv_out_add,
    conv_out_size,
)

VERSION = OPSET_VERSION

_ATTRS = {
    "strides": (defs.OpSchema.AttrType.INTS, "stride per axis (T, H, W)"),
    "pads": (defs.OpSchema.AttrType.INTS, "symmetric zero padding per axis (T, H, W)"),
    "dilations": (defs.OpSchema.AttrType.INTS, "dilation per axis (T, H, W)"),
    "group": (defs.OpSchema.AttrType.INT, "channel groups"),
    "offset_group": (defs.OpSchema.AttrType.INT, "input-channel groups sharing one offset field"),
    "deform_dims": (defs.OpSchema.AttrType.STRING, "deformed axes: ordered non-empty subset of THW"),
    "plugin_version": (defs.OpSchema.AttrType.STRING, f'TensorRT plugin version ("{PLUGIN_VERSION}")'),
    "plugin_namespace": (defs.OpSchema.AttrType.STRING, f'TensorRT plugin namespace ("{DOMAIN}")'),
}


def _attr(ctx, name: str, default):
    a = ctx.get_attribute(name)
    if a is None:
        return default
    return onnx.helper.get_attribute_value(onnx.AttributeProto.FromString(a) if isinstance(a, bytes) else a)


def _infer(ctx) -> None:
    x_type = ctx.get_input_type(0)
    w_type = ctx.get_input_type(2)
    if x_type is None:
        return
    out = onnx.TypeProto()
    out.tensor_type.elem_type = x_type.tensor_type.elem_type
    if x_type.tensor_type.HasField("shape") and w_type is not None and w_type.tensor_type.HasField("shape"):
        xd, wd = x_type.tensor_type.shape.dim, w_type.tensor_type.shape.dim
        if len(xd) != 5 or len(wd) != 5:
            raise onnx.shape_inference.InferenceError("DeformConv3d: X and W must be 5-D")
        strides = list(_attr(ctx, "strides", [DEFAULT_STRIDE] * 3))
        pads = list(_attr(ctx, "pads", [DEFAULT_PAD] * 3))
        dils = list(_attr(ctx, "dilations", [DEFAULT_DILATION] * 3))
        for name, v in (("strides", strides), ("pads", pads), ("dilations", dils)):
            if len(v) != 3:
                raise onnx.shape_inference.InferenceError(f"DeformConv3d: {name} needs 3 values, got {len(v)}")
        shape = out.tensor_type.shape
        shape.dim.add().CopyFrom(xd[0])
        shape.dim.add().CopyFrom(wd[0])
        for a in range(3):
            d, kd = xd[2 + a], wd[2 + a]
            new = shape.dim.add()
            if d.HasField("dim_value") and kd.HasField("dim_value"):
                new.dim_value = conv_out_size(d.dim_value, pads[a], dils[a], kd.dim_value, strides[a])
            elif kd.HasField("dim_value") and strides[a] == 1 and conv_out_add(pads[a], dils[a], kd.dim_value) == -1:
                new.CopyFrom(d)  # "same" convolution (out == in): the symbolic extent passes through
            elif d.HasField("dim_param"):
                new.dim_param = f"{d.dim_param}_dc3d_out"
    ctx.set_output_type(0, out)


def _make_schema() -> defs.OpSchema:
    fp = defs.OpSchema.FormalParameter
    schema = defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        VERSION,
        "Deformable 3-D convolution (docs/deform_conv3d_spec.md).",
        inputs=[
            fp("X", "T", "input [N, C, T, H, W]"),
            fp("offset", "T", "compact offsets [N, G_off*K*len(deform_dims), T', H', W']"),
            fp("W", "T", "weight [O, C/group, kT, kH, kW]"),
            fp("B", "T", "bias [O]", param_option=defs.OpSchema.FormalParameterOption.Optional),
        ],
        outputs=[fp("Y", "T", "output [N, O, T', H', W']")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "I/O type")],
        attributes=[defs.OpSchema.Attribute(name, kind, doc, required=False) for name, (kind, doc) in _ATTRS.items()],
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def register_schema() -> None:
    """Registers the schema once per process (idempotent)."""
    try:
        defs.get_schema(OP_TYPE, VERSION, DOMAIN)
        return
    except defs.SchemaError:
        pass
    defs.register_schema(_make_schema())
