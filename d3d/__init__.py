"""d3d-trt: D3Dnet video super-resolution from PyTorch to TensorRT.

Stages: ``d3d`` (model and DeformConv3d op), ``d3d.export`` (ONNX), ``d3d.runtime`` (inference).

The public names are imported on first use (PEP 562), so that ``import d3d.cli`` does not pull in torch:
the command line installs its interrupt handling before any heavy import.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "d3d.checkpoint",
    "load_checkpoint": "d3d.checkpoint",
    "read_state_dict": "d3d.checkpoint",
    "save_checkpoint": "d3d.checkpoint",
    "D3Dnet": "d3d.model",
    "D3DnetConfig": "d3d.model",
    "DeformConv3d": "d3d.modules",
    "DeformConv3dPack": "d3d.modules",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    try:  # `import d3d; d3d.model.X` keeps working: submodules load on first attribute access
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
