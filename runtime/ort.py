"""ONNX Runtime sessions for d3d models.

The portable flavour runs in stock ONNX Runtime. The custom-op flavour runs on the CPU through
onnxruntime-extensions: its Python custom ops live in domain ``ai.onnx.contrib`` and take only scalar
or string attributes, so the ``d3d::DeformConv3d`` nodes are rewritten for ORT in memory (domain
mapped, list attributes encoded as "a,b,c"); the file on disk is unchanged. The op body calls the
native PyTorch op, i.e. the CPU build of ``plugins/kernels``: no second implementation of the math.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import onnx

from d3d.errors import D3DError, summary_line
from d3d.export.schema import DOMAIN, OP_TYPE

ORT_DOMAIN = "ai.onnx.contrib"
_LIST_ATTRS = ("strides", "pads", "dilations")
_INT_ATTRS = ("group", "offset_group")
_STR_ATTRS = ("deform_dims", "plugin_version", "plugin_namespace")
_DEFAULTS = {
    "strides": [1, 1, 1],
    "pads": [0, 0, 0],
    "dilations": [1, 1, 1],
    "group": 1,
    "offset_group": 1,
    "deform_dims": "THW",
    "plugin_version": "1",
    "plugin_namespace": DOMAIN,
}

_lock = threading.Lock()
_registered = False


def _register_pyop() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        from onnxruntime_extensions import PyCustomOpDef, onnx_op

        attrs = {name: PyCustomOpDef.dt_string for name in (*_LIST_ATTRS, *_STR_ATTRS)}
        attrs.update({name: PyCustomOpDef.dt_int64 for name in _INT_ATTRS})

        @onnx_op(op_type=OP_TYPE, inputs=[PyCustomOpDef.dt_float] * 4, outputs=[PyCustomOpDef.dt_float], attrs=attrs)
        def _deform_conv3d(x, offset, weight, bias, **a):
            import torch

            from d3d.ops import deform_conv3d

            def ints(s: str) -> list[int]:
                return [int(v) for v in s.split(",")]

            with torch.no_grad():
                y = deform_conv3d(
                    torch.from_numpy(np.ascontiguousarray(x)),
                    torch.from_numpy(np.ascontiguousarray(offset)),
                    torch.from_numpy(np.ascontiguousarray(weight)),
                    torch.from_numpy(np.ascontiguousarray(bias)),
                    ints(a["strides"]),
                    ints(a["pads"]),
                    ints(a["dilations"]),
                    int(a["group"]),
                    int(a["offset_group"]),
                    a["deform_dims"],
                )
            return y.numpy()

        _registered = True


def rewrite_for_ort(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Returns a copy whose DeformConv3d nodes run as onnxruntime-extensions Python ops."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    zero_bias: dict[str, str] = {}
    for node in graph.node:
        if node.domain != DOMAIN or node.op_type != OP_TYPE:
            continue
        values = dict(_DEFAULTS)
        values.update({a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
        for name in _STR_ATTRS:
            if isinstance(values[name], bytes):
                values[name] = values[name].decode()
        del node.attribute[:]
        for name in _LIST_ATTRS:
            node.attribute.append(onnx.helper.make_attribute(name, ",".join(str(int(v)) for v in values[name])))
        for name in _INT_ATTRS:
            node.attribute.append(onnx.helper.make_attribute(name, int(values[name])))
        for name in _STR_ATTRS:
            node.attribute.append(onnx.helper.make_attribute(name, str(values[name])))
        node.domain = ORT_DOMAIN
        if len(node.input) < 4 or not node.input[3]:
            # The Python op has a fixed arity: a missing bias becomes a zero initializer.
            w = next(i for i in graph.initializer if i.name == node.input[2])
            name = zero_bias.setdefault(w.name, f"{w.name}__zero_bias")
            if not any(i.name == name for i in graph.initializer):
                graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(w.dims[0], dtype=np.float32), name=name))
            del node.input[3:]
            node.input.append(name)
    opsets = [o for o in model.opset_import if o.domain not in (DOMAIN, ORT_DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend([*opsets, onnx.helper.make_opsetid(ORT_DOMAIN, 1)])
    return model


def create_session(
    proto: onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None
):
    """An ``onnxruntime.InferenceSession`` for either flavour of a d3d model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if any(n.domain == DOMAIN for n in proto.graph.node):
        from onnxruntime_extensions import get_library_path

        _register_pyop()
        options.register_custom_ops_library(get_library_path())
        proto = rewrite_for_ort(proto)
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=list(providers))
    except Exception as exc:
        raise D3DError(f"ONNX Runtime cannot load the model: {summary_line(exc)}") from None


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())
