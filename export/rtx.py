"""Ahead-of-time engine builds with TensorRT-RTX, which needs no GPU: proof on a CPU-only machine that a
TensorRT ONNX parser and builder accept a graph — the portable flavour as it is, and the custom-op
model with the DeformConv3d plugin library loaded (``IPluginRegistry::loadLibrary``), which turns each
DeformConv3d node into a ``PLUGIN_V3`` layer and makes the builder call the plugin's build-phase methods
(output shapes, formats, configurePlugin, workspace, serialization, clone; not enqueue). Running such an
engine needs a GPU. Strongly typed: the engine's precision is the graph's (``_trt_build``, which the
TensorRT build shares).

The build runs in a child process (``_rtx_worker.py``) with a symlink ``libtensorrt_rtx.so`` ->
``libtensorrt_rtx.so.1`` on ``LD_LIBRARY_PATH``: TensorRT-RTX's parser dlopens the unversioned name,
which the wheel lacks, and without it the process dies (``terminate called without an active
exception``). A crash of the builder or of a plugin is reported as an error, never inherited.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from d3d._native import cache_dir
from d3d.errors import D3DError, SDKMissing

_WORKER = Path(__file__).resolve().parent / "_rtx_worker.py"
_LIB = "libtensorrt_rtx.so"


@dataclass
class RtxBuild:
    """What a successful build produced: the serialized engine and what the parser made of the graph."""

    engine: bytes
    layers: int
    plugin_layers: int  # PLUGIN_V3 layers (one per DeformConv3d node of a custom-op model)
    log: list[str] = field(default_factory=list)  # the builder's warnings and errors
    strongly_typed: bool = False  # the network was created with the STRONGLY_TYPED flag
    plugin_io_types: list[list[str]] = field(default_factory=list)  # per plugin layer: input dtypes, "->", outputs
    version: str = ""  # TensorRT-RTX's own version string


def _rtx_lib_dir() -> Path:
    """The folder of the TensorRT-RTX wheel's shared libraries."""
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        raise SDKMissing("TensorRT-RTX is not installed: pip install 'd3d-trt[rtx]' (tensorrt-rtx-cu12-libs/-bindings)")
    return Path(next(iter(spec.submodule_search_locations)))


def unversioned_lib_dir() -> Path:
    """A folder holding ``libtensorrt_rtx.so`` -> the wheel's ``libtensorrt_rtx.so.1`` (created once,
    atomically, in the cache folder; ``D3D_CACHE_DIR`` overrides)."""
    target = _rtx_lib_dir() / f"{_LIB}.1"
    if not target.is_file():
        raise D3DError(f"TensorRT-RTX's {target.name} is missing from {target.parent}")
    folder = cache_dir() / "tensorrt_rtx_lib"
    link = folder / _LIB
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{_LIB}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic: concurrent builds see the old or the new link, never none
    return folder


def build_rtx(
    onnx_path: str | os.PathLike[str],
    profile: tuple[Sequence[int], Sequence[int], Sequence[int]],
    plugin_libraries: Sequence[str | os.PathLike[str]] = (),
    compute_capability: str = "SM89",
    input_name: str = "lr",
    timeout_s: float = 600.0,
) -> RtxBuild:
    """Parses ``onnx_path`` with TensorRT-RTX (plugin libraries loaded first) and builds an engine for
    ``compute_capability`` over the optimization profile (min, opt, max) of ``input_name``."""
    onnx_path = Path(onnx_path)
    for lib in plugin_libraries:
        if not Path(lib).is_file():
            raise D3DError(f"plugin library {lib} does not exist")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(unversioned_lib_dir()), str(_rtx_lib_dir()), env.get("LD_LIBRARY_PATH", "")) if p
    )
    with tempfile.TemporaryDirectory(prefix="d3d-rtx-") as tmp:
        out = Path(tmp) / "engine"
        request = {
            "onnx": str(onnx_path.resolve()),
            "output": str(out),
            "plugins": [str(Path(p).resolve()) for p in plugin_libraries],
            "input": input_name,
            "profile": [list(s) for s in profile],
            "compute_capability": compute_capability,
        }
        try:
            proc = subprocess.run(
                [sys.executable, str(_WORKER)],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise D3DError(f"{onnx_path}: the TensorRT-RTX build took longer than {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            how = (
                f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
            )
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise D3DError(f"{onnx_path}: the TensorRT-RTX builder process crashed ({how}): {tail}")
        reply = json.loads(proc.stdout.strip().splitlines()[-1])
        # A plugin's own reasons: TensorRT-RTX's loadLibrary hands it no logger, so it writes them to stderr.
        plugin_lines = [line for line in proc.stderr.splitlines() if line.startswith("[d3d::")]
        if not reply["ok"]:
            reasons = "; ".join(plugin_lines + reply["errors"][:1])
            what = {"load": "could not load a plugin", "parse": "the ONNX parser refused the model"}.get(
                reply["stage"], f"could not build an engine for {compute_capability}"
            )
            raise D3DError(f"{onnx_path}: TensorRT-RTX: {what}: {reasons}")
        return RtxBuild(
            out.read_bytes(),
            reply["layers"],
            reply["plugin_layers"],
            plugin_lines + reply["log"],
            reply["strongly_typed"],
            reply["plugin_io_types"],
            reply["version"],
        )


def build_engine_rtx(
    onnx_path: Path,
    profile: tuple[Sequence[int], Sequence[int], Sequence[int]],
    compute_capability: str = "SM89",
    input_name: str = "lr",
    plugin_libraries: Sequence[str | os.PathLike[str]] = (),
) -> bytes:
    """Parses and builds ``onnx_path`` for ``compute_capability``; returns the serialized engine."""
    return build_rtx(onnx_path, profile, plugin_libraries, compute_capability, input_name).engine


def build_model_rtx(
    onnx_path: Path,
    custom_ops: bool,
    profile: tuple[Sequence[int], Sequence[int], Sequence[int]],
    plugin_library: Path | None = None,
) -> RtxBuild:
    """The build ``d3d verify --rtx-build`` runs: a custom-op model with the DeformConv3d plugin library
    (``plugin_library``, else the one ``d3d.native_libs`` finds), a portable model as it is."""
    libs: list[Path] = []
    if custom_ops:
        from d3d.native_libs import TRT_PLUGIN, trt_plugin_library

        lib = plugin_library or trt_plugin_library()
        if lib is None:
            raise D3DError(
                f"{onnx_path} has DeformConv3d nodes, which need the plugin library {TRT_PLUGIN.filename}: build it "
                f"(make cpp-test, or cmake with -DD3D_TENSORRT_INCLUDE_DIR=...), or pass --plugin / ${TRT_PLUGIN.env}"
            )
        libs.append(lib)
    return build_rtx(onnx_path, profile, libs)
