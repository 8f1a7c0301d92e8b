"""ONNX -> PyTorch: rebuild the D3Dnet of an exported file (config from its metadata, weights from its
initializers), and check a checkpoint against an exported file."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from d3d.checkpoint import CheckpointError, load_checkpoint, load_state_into
from d3d.errors import D3DError
from d3d.export.exporter import META_CHECKPOINT, file_sha256, model_config, param_aliases
from d3d.model import D3Dnet


def model_from_onnx(proto: onnx.ModelProto, source: str) -> D3Dnet:
    """Rebuilds the PyTorch model of an exported file: config from metadata_props, weights from the
    initializers (the exporter keeps parameter names)."""
    model = D3Dnet(**model_config(proto, source))
    inits = {i.name: _tensor(i) for i in proto.graph.initializer}
    aliases = param_aliases(proto)
    state = {}
    for k, v in model.state_dict().items():
        src = aliases.get(k, k)
        if src in inits:
            state[k] = inits[src].reshape(v.shape) if inits[src].numel() == v.numel() else inits[src]
        elif src == "":  # dropped by the exporter's optimizer as all zeros
            state[k] = torch.zeros_like(v)
    try:
        load_state_into(model, state, source)
    except CheckpointError as exc:
        raise D3DError(f"cannot rebuild the PyTorch model from the ONNX initializers: {exc}") from None
    return model.eval()


def _tensor(init: onnx.TensorProto) -> torch.Tensor:
    """An initializer as a torch tensor; bf16 (a NumPy ml_dtypes array torch cannot take) widened to fp32,
    which holds every bf16 value exactly."""
    array = onnx.numpy_helper.to_array(init)
    if init.data_type == onnx.TensorProto.BFLOAT16:
        array = array.astype("float32")
    return torch.from_numpy(array.copy())


def model_for_checkpoint(proto: onnx.ModelProto, checkpoint: Path, source: str) -> tuple[D3Dnet, list[str]]:
    """Loads the checkpoint and checks it against the ONNX file's config; returns notes for the user."""
    config = model_config(proto, source)
    model = load_checkpoint(checkpoint)
    if model.config.as_dict() != config:
        diff = ", ".join(
            f"{k} {model.config.as_dict()[k]} vs {config.get(k)}"
            for k in config
            if model.config.as_dict()[k] != config[k]
        )
        raise D3DError(f"{checkpoint}: does not match the model config of {source} ({diff})")
    notes = []
    props = {p.key: p.value for p in proto.metadata_props}
    if META_CHECKPOINT in props and props[META_CHECKPOINT] != file_sha256(checkpoint):
        notes.append(f"note: {checkpoint} is not the checkpoint {source} was exported from (sha256 differs)")
    return model, notes
