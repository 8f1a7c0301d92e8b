"""Which weights a run uses, and the ONNX file ONNX Runtime needs for them.

No trained weights are shipped yet: without a checkpoint, runs use the paper's architecture with a
seeded random initialisation, and every run says so. ONNX files for ONNX Runtime are exported on first
use and cached (keyed by the checkpoint's sha256, or by the seed)."""

from __future__ import annotations

import logging
from pathlib import Path

RANDOM_SEED = 0
RANDOM_LABEL = f"random initialisation (seed {RANDOM_SEED}): no trained weights are shipped yet"
# The custom-op flavour runs the shared kernel (about 3x faster on the CPU than the portable graph,
# measured in docs/PERFORMANCE.md).
ORT_FLAVOUR_PORTABLE = False


def _random_model():
    import torch

    from d3d.model import D3Dnet

    torch.manual_seed(RANDOM_SEED)
    return D3Dnet().eval()


def torch_model(checkpoint: Path | None, onnx: Path | None = None):
    """The PyTorch model and a label saying where its weights come from."""
    if checkpoint is not None:
        from d3d.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint), f"checkpoint {checkpoint}"
    if onnx is not None:
        from d3d.export import load_model
        from d3d.export.verify import model_from_onnx

        return model_from_onnx(load_model(onnx), str(onnx)), f"weights of {onnx}"
    return _random_model(), RANDOM_LABEL


def _code_version() -> str:
    """Hash of the code that shapes an export, so a changed model or exporter never reuses a stale file."""
    import hashlib

    import d3d
    from d3d._native import REPO_ROOT

    h = hashlib.sha256(d3d.__version__.encode())
    for rel in ("d3d/model.py", "d3d/modules.py", "export/exporter.py", "export/symbolic.py", "export/portable.py"):
        f = REPO_ROOT / rel
        h.update(f.read_bytes() if f.is_file() else rel.encode())
    return h.hexdigest()[:8]


def onnx_for(checkpoint: Path | None, portable: bool = ORT_FLAVOUR_PORTABLE) -> tuple[Path, str]:
    """A cached ONNX export of the checkpoint (or of the seeded random model)."""
    from d3d._native import cache_dir
    from d3d.export import ExportOptions, export_onnx, file_sha256

    flavour = "portable" if portable else "custom"
    if checkpoint is not None:
        sha = file_sha256(checkpoint)
        key, label = f"{sha[:16]}-{flavour}", f"checkpoint {checkpoint}"
    else:
        sha, key, label = None, f"random-seed{RANDOM_SEED}-{flavour}", RANDOM_LABEL
    path = cache_dir() / "onnx" / f"d3dnet-{key}-{_code_version()}.onnx"
    if not path.is_file():
        model, _ = torch_model(checkpoint)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        print(f"exporting the model to {path} for ONNX Runtime (once)")
        export_onnx(model, path, ExportOptions(portable=portable), checkpoint_sha256=sha)
    return path, label
