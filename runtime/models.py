"""Which model a run uses (one named source, checked before any work), and the ONNX file ONNX Runtime
needs for it.

Sources, in order: ``--random-init`` when asked for; else the one explicit ``--checkpoint``, ``--onnx``
or ``--engine``; else the trained model shipped with the package (:data:`SHIPPED_MODEL`) where it
exists; else an error asking for one. ONNX files for ONNX Runtime are exported on first use into a cache
keyed by the weights' sha256 and a hash of the installed exporter code.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import d3d
from d3d.errors import D3DError, reason
from d3d.export.exporter import file_sha256

logger = logging.getLogger(__name__)

RANDOM_SEED = 0
SHIPPED_MODEL = Path(d3d.__file__).resolve().parent / "models" / "d3dnet_x4.pth.tar"
# The custom-op flavour runs the shared kernel, faster on the CPU than the standard-ops flavours
# (side-by-side figures in docs/PERFORMANCE.md).
ORT_FLAVOUR = "custom"
# Modules whose code shapes an exported file: their installed sources key the ONNX cache.
EXPORT_CODE_MODULES = (
    "d3d.model",
    "d3d.modules",
    "d3d.export.exporter",
    "d3d.export.symbolic",
    "d3d.export.portable",
    "d3d.export.deformconv19",
    "d3d.export.schema",
)


@dataclass(frozen=True)
class ModelSource:
    """One model: ``kind`` is "checkpoint", "onnx", "engine" or "random"."""

    kind: str
    path: Path | None = None
    sha256: str | None = None
    seed: int = RANDOM_SEED

    def describe(self) -> str:
        """What the summary prints: the file and its sha256, or "random"."""
        if self.kind == "random":
            return f"random (untrained, seed {self.seed}: --random-init)"
        return f"{self.kind} {self.path} (sha256 {self.sha256})"


def resolve_source(
    *,
    random_init: bool = False,
    checkpoint: Path | None = None,
    onnx: Path | None = None,
    engine: Path | None = None,
    shipped: Path | None = None,
) -> ModelSource:
    """The single model source the options name (else ``shipped``, by default the shipped trained model);
    conflicting or missing sources are errors."""
    shipped = SHIPPED_MODEL if shipped is None else shipped
    given = [(f"--{k}", Path(v)) for k, v in (("checkpoint", checkpoint), ("onnx", onnx), ("engine", engine)) if v]
    named = ([("--random-init", None)] if random_init else []) + given
    if len(named) > 1:
        (a, pa), (b, pb) = named[0], named[1]
        both = f"{a}{' ' + str(pa) if pa else ''} and {b}{' ' + str(pb) if pb else ''}"
        raise D3DError(f"conflicting model sources: {both}; give exactly one")
    for flag, path in given:
        if not path.is_file():
            raise D3DError(f"{path}: no such file ({flag})")
    if random_init:
        return ModelSource("random")
    if given:
        flag, path = given[0]
        return ModelSource(flag[2:], path, file_sha256(path))
    if shipped.is_file():
        return ModelSource("checkpoint", shipped, file_sha256(shipped))
    raise D3DError(
        f"no model given and the shipped model {shipped} is missing: pass --checkpoint, --onnx or --engine, "
        "or --random-init to run untrained weights"
    )


def random_model():
    """The paper's architecture with the seeded random initialisation ``--random-init`` runs."""
    import torch

    from d3d.model import D3Dnet

    torch.manual_seed(RANDOM_SEED)
    return D3Dnet().eval()


def torch_model(source: ModelSource):
    """The PyTorch model of ``source`` (a checkpoint, an exported ONNX file, or random)."""
    if source.kind == "checkpoint":
        from d3d.checkpoint import load_checkpoint

        return load_checkpoint(source.path)
    if source.kind == "onnx":
        from d3d.export import load_model
        from d3d.export.onnx_import import model_from_onnx

        return model_from_onnx(load_model(source.path), str(source.path))
    if source.kind == "random":
        return random_model()
    raise D3DError(f"{source.path}: a TensorRT engine runs only on the tensorrt backend")


def exporter_code_hash() -> str:
    """Hash of the installed code that shapes an export (found through the imported modules' files,
    so it works from a wheel install too): a changed model or exporter never reuses a stale file."""
    import importlib

    h = hashlib.sha256(d3d.__version__.encode())
    for name in EXPORT_CODE_MODULES:
        module = importlib.import_module(name)
        h.update(name.encode())
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def onnx_for(source: ModelSource, flavour: str = ORT_FLAVOUR) -> Path:
    """The ONNX file for ``source``: the file itself, or a cached export of the checkpoint / random model
    in ``flavour`` (custom, gridsample or deformconv; the cache file is named by it)."""
    from d3d._native import cache_dir, cache_subdir
    from d3d.export import ExportOptions, export_onnx

    if source.kind == "onnx":
        return source.path
    if source.kind == "engine":
        raise D3DError(f"{source.path}: a TensorRT engine runs only on the tensorrt backend")
    from d3d.export.symbolic import FLAVOURS

    if flavour not in FLAVOURS:
        raise D3DError(f"unknown export flavour {flavour!r}: use one of {', '.join(FLAVOURS)}")
    # Files cached before the flavours were named ("-portable-") carry an older exporter-code hash, so
    # they would not be found under any name this code makes: they are simply exported again.
    key = f"{source.sha256[:16]}" if source.kind == "checkpoint" else f"random-seed{source.seed}"
    name = f"d3dnet-{key}-{flavour}-{exporter_code_hash()}.onnx"
    path = cache_dir() / "onnx" / name
    if not path.is_file():
        path = cache_subdir("onnx") / name  # a one-line error naming D3D_CACHE_DIR before the model loads
        model = torch_model(source)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        logger.info("exporting the model to %s for ONNX Runtime (once)", path)
        try:
            export_onnx(model, path, ExportOptions(flavour=flavour), checkpoint_sha256=source.sha256)
        except OSError as exc:
            raise D3DError(
                f"{path}: cannot write the d3d cache ({reason(exc)}): set D3D_CACHE_DIR to a writable folder"
            ) from exc
    return path
