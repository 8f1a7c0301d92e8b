"""ONNX export of D3Dnet: the ``d3d::DeformConv3d`` custom node (for the TensorRT plugin) or a
portable standard-ops flavour."""

from d3d.export.exporter import (
    ExportOptions,
    check_opset,
    export_onnx,
    file_sha256,
    graph_precision,
    has_custom_nodes,
    load_model,
    model_config,
    portable_form,
    resolve_precision,
    save_model,
)
from d3d.export.schema import register_schema

__all__ = [
    "ExportOptions",
    "check_opset",
    "export_onnx",
    "file_sha256",
    "graph_precision",
    "has_custom_nodes",
    "load_model",
    "model_config",
    "portable_form",
    "register_schema",
    "resolve_precision",
    "save_model",
]
