"""d3d-trt: D3Dnet video super-resolution from PyTorch to TensorRT.

Stages: ``d3d`` (model and DeformConv3d op), ``d3d.export`` (ONNX), ``d3d.runtime`` (inference).
"""

from d3d.checkpoint import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint
from d3d.model import D3Dnet, D3DnetConfig
from d3d.modules import DeformConv3d, DeformConv3dPack

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "D3Dnet",
    "D3DnetConfig",
    "DeformConv3d",
    "DeformConv3dPack",
    "__version__",
    "load_checkpoint",
    "read_state_dict",
    "save_checkpoint",
]
