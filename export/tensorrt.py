"""TensorRT: engine building (with the DeformConv3d plugin library) and the engine sidecar.

Checkpoint -> engine file is export, so this lives here; the TensorRT runner (``d3d.runtime``)
imports the loading helpers from here, never the other way round.

Everything here imports ``tensorrt`` lazily; where it is missing, :class:`TensorRTMissing` says what
to install and exits with code 2. NOT VERIFIED in this project's CI: no TensorRT builder can be
installed there (see docs/TENSORRT.md); only the missing-TensorRT path is tested.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from d3d.errors import D3DError, SDKMissing, summary_line

logger = logging.getLogger(__name__)

Shape = Sequence[int]


class TensorRTMissing(SDKMissing):
    pass


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTMissing(
            "TensorRT is not installed: on a machine with an NVIDIA GPU run "
            "`pip install 'd3d-trt[tensorrt]'` (or `pip install tensorrt`), or install the TensorRT SDK "
            "and add its python/ wheel; then build the plugin with CMake (see docs/TENSORRT.md)"
        ) from None
    return trt


def find_plugin_library(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The DeformConv3d plugin library: an explicit path (which must exist), else the one
    :func:`d3d.native_libs.trt_plugin_library` finds ($D3D_TRT_PLUGIN, the build folder, the install)."""
    from d3d import native_libs

    if explicit is not None:
        if not Path(explicit).is_file():
            raise D3DError(f"{explicit}: no such plugin library")
        return Path(explicit)
    found = native_libs.trt_plugin_library()
    if found is not None:
        return found
    raise TensorRTMissing(
        f"the DeformConv3d TensorRT plugin ({native_libs.TRT_PLUGIN.filename}) was not found: build it with "
        "`cmake -S . -B build -DD3D_TENSORRT_INCLUDE_DIR=/path/to/TensorRT/include && cmake --build build`, "
        "or pass --plugin / set D3D_TRT_PLUGIN"
    )


def load_plugin(trt, logger, library: Path) -> None:
    registry = trt.get_plugin_registry()
    if registry.load_library(str(library)) is None:
        raise D3DError(f"{library}: TensorRT could not load the plugin library")


def plugin_for_model(onnx_path: Path, explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The plugin library a build of ``onnx_path`` loads: an explicit one always (it must exist), else the
    one found where the model has DeformConv3d nodes; None for a portable model, which needs none."""
    if explicit is not None:
        return find_plugin_library(explicit)
    import onnx

    from d3d.export.exporter import has_custom_nodes

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # any parse failure is the file's fault
        raise D3DError(f"{onnx_path}: not a readable ONNX model ({summary_line(exc)})") from None
    return find_plugin_library() if has_custom_nodes(proto) else None


def build_engine_bytes(
    onnx_path: Path,
    profile: tuple[Shape, Shape, Shape] | None = None,
    plugin_library: Path | None = None,
    timing_cache: Path | None = None,
    optimization_level: int = 3,
    workspace_gib: float = 4.0,
    input_name: str = "lr",
) -> bytes:
    """Parses ``onnx_path`` with TensorRT's ONNX parser (the DeformConv3d plugin loaded where given or
    where the model needs it) and builds a serialized engine, strongly typed: its precision is the
    graph's (:func:`d3d.export.graph_precision`; no precision builder flag exists on TensorRT 11)."""
    from d3d.export._trt_build import BuildFailed, build_serialized

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    plugin = plugin_for_model(onnx_path, plugin_library)
    if plugin is not None:
        load_plugin(trt, logger, plugin)
    cache = None
    if timing_cache is not None:
        cache = timing_cache.read_bytes() if timing_cache.is_file() else b""
    try:
        built, new_cache = build_serialized(
            trt,
            logger,
            str(onnx_path),
            profile,
            input_name,
            workspace_gib=workspace_gib,
            optimization_level=optimization_level,
            timing_cache=cache,
        )
    except BuildFailed as exc:
        what = "TensorRT's ONNX parser refused the model" if exc.stage == "parse" else "TensorRT failed to build"
        raise D3DError(f"{onnx_path}: {what}: {'; '.join(exc.errors)}") from None
    if timing_cache is not None and new_cache is not None:
        timing_cache.write_bytes(new_cache)
    return built.engine


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def device_description(ordinal: int = 0) -> dict:
    """Name and compute capability of a GPU, asked of the CUDA driver (libcuda) directly, so it works
    with a CPU-only build of PyTorch. ``{"gpu": None, ...}`` where there is no driver or device."""
    none = {"gpu": None, "compute_capability": None}
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return none
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= ordinal:
        return none
    dev = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
        return none
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetName(name, len(name), dev)
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
    return {"gpu": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}


def gpu_present() -> bool:
    return device_description()["gpu"] is not None


def write_sidecar(engine_path: Path, info: dict) -> None:
    from d3d.atomic import atomic_write

    with atomic_write(sidecar_path(engine_path)) as tmp:
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True))


def check_sidecar(engine_path: Path, trt_version: str, gpu: str | None, capability: str | None) -> dict:
    """Reads the engine's JSON sidecar and says clearly what does not match this machine. A different
    GPU of the same compute capability is only logged."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise D3DError(f"{engine_path}: no sidecar {path.name}; rebuild the engine with `d3d build`")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise D3DError(f"{path}: unreadable engine sidecar ({exc})") from None
    problems = []
    if info.get("tensorrt_version") != trt_version:
        problems.append(f"built with TensorRT {info.get('tensorrt_version')}, running {trt_version}")
    if capability and info.get("compute_capability") not in (None, capability):
        problems.append(f"built for compute capability {info.get('compute_capability')}, this GPU is {capability}")
    if problems:
        raise D3DError(f"{engine_path}: " + "; ".join(problems) + " — rebuild it with `d3d build` on this machine")
    if gpu and info.get("gpu") not in (None, gpu):
        logger.info("note: %s was built on %s, running on %s", engine_path.name, info.get("gpu"), gpu)
    return info
