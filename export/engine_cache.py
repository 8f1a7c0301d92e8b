"""Engines built once: a cache of serialized TensorRT / TensorRT-RTX engines under ``cache_dir()/engines``.

An engine is valid only for the exact inputs it was built from, so the key holds every one of them: the
ONNX file's sha256, the DeformConv3d plugin library's sha256 (a custom-op model runs the plugin's code;
a rebuilt plugin may serialize other fields), the builder and its version, the GPU (name and compute
capability; for an ahead-of-time TensorRT-RTX build, the target compute capability), the precision (the
graph's: builds are strongly typed, so it is the ONNX file's recorded ``d3d.precision``) and
the optimization profile (min/opt/max). As vs-mlrt does, the file name spells the settings out, plus a
short hash of the whole key: ``<onnx sha8>_<builder>-<version>_<gpu>_<precision>_<BxHxW min-opt-max>_<key12>.engine``.

Beside each engine, ``<engine>.json`` records every key field, the engine's sha256 and size, and the
fields the TensorRT runner checks (:func:`d3d.export.tensorrt.check_sidecar`). Both files are written
atomically, sidecar first: a reader never sees a half-written engine, and a lookup hits only where the
sidecar's key equals the one asked for and the engine's bytes match its recorded sha256 (so concurrent
builders of one key, each renaming a complete file into place, can at worst cost a rebuild, never hand
out a wrong engine). :func:`clear` deletes only files whose sidecar proves the cache wrote them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from d3d.atomic import atomic_write
from d3d.errors import D3DError, reason
from d3d.export.exporter import file_sha256

logger = logging.getLogger(__name__)

TOOL = "d3d-trt engine cache"
FORMAT = 2  # bumped when the key or the sidecar changes meaning: old entries then miss (2: the graph's precision)
SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"

Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def engines_dir() -> Path:
    """The cache folder (``$D3D_CACHE_DIR/engines``, else ``~/.cache/d3d-trt/engines``)."""
    from d3d._native import cache_dir

    return cache_dir() / "engines"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. ``gpu`` is None for an ahead-of-time build (no device)."""

    onnx_sha256: str
    plugin_sha256: str | None  # None for a model without DeformConv3d nodes
    builder: str  # "tensorrt" or "tensorrt-rtx"
    builder_version: str
    gpu: str | None
    compute_capability: str  # "8.9" (the device's) or "SM89" (a TensorRT-RTX target)
    precision: str
    profile: Profile  # (min, opt, max) of the input

    def fields(self) -> dict:
        d = asdict(self)
        d["profile"] = [list(s) for s in self.profile]
        return d

    def digest(self) -> str:
        """sha256 of the canonical JSON of every field (and the cache format)."""
        payload = json.dumps({"format": FORMAT, **self.fields()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def file_name(self) -> str:
        """The readable name: the settings, then 12 hex digits of :meth:`digest` (which decides)."""

        def bhw(shape: Sequence[int]) -> str:
            return "x".join(str(v) for v in (shape[0], *shape[-2:]))  # batch x H x W of [B, C, T, H, W]

        gpu = re.sub(r"[^A-Za-z0-9.]+", "-", self.gpu).strip("-") + "-" if self.gpu else ""
        parts = [
            self.onnx_sha256[:8],
            f"{self.builder}-{self.builder_version}",
            f"{gpu}{self.compute_capability.replace('.', '')}".lower(),
            self.precision,
            "-".join(bhw(s) for s in self.profile),
            self.digest()[:12],
        ]
        return "_".join(re.sub(r"[^A-Za-z0-9.\-]+", "-", p) for p in parts) + SUFFIX

    @classmethod
    def from_fields(cls, d: dict) -> EngineKey:
        return cls(**{**d, "profile": tuple(tuple(int(v) for v in s) for s in d["profile"])})


def engine_key(
    onnx_path: str | os.PathLike[str],
    *,
    plugin: str | os.PathLike[str] | None,
    builder: str,
    builder_version: str,
    gpu: str | None,
    compute_capability: str,
    precision: str,
    profile: Sequence[Sequence[int]],
) -> EngineKey:
    """The key of an engine of ``onnx_path`` (hashing it and ``plugin``, where one is loaded)."""
    if len(profile) != 3:
        raise D3DError(f"an optimization profile is (min, opt, max), got {len(profile)} shapes")
    return EngineKey(
        onnx_sha256=file_sha256(onnx_path),
        plugin_sha256=file_sha256(plugin) if plugin is not None else None,
        builder=builder,
        builder_version=str(builder_version),
        gpu=gpu,
        compute_capability=str(compute_capability),
        precision=precision,
        profile=tuple(tuple(int(v) for v in s) for s in profile),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class CachedEngine:
    path: Path
    built: bool  # False: a hit, returned without building
    info: dict  # the sidecar


def sidecar_of(engine: Path) -> Path:
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict | None:
    """Our sidecar's contents, or None where ``path`` is not one the cache wrote."""
    try:
        info = json.loads(path.read_text())
        key = EngineKey.from_fields(info["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(info, dict) or info.get("tool") != TOOL or info.get("format") != FORMAT:
        return None
    # Proof of ownership: the name is the one this key gives, and the sidecar names that engine.
    if info.get("engine") != key.file_name() or path.name != key.file_name() + SIDECAR_SUFFIX:
        return None
    return info


def lookup(key: EngineKey, root: Path | None = None) -> CachedEngine | None:
    """The cached engine for ``key``, where a complete, matching one is there."""
    path = (root or engines_dir()) / key.file_name()
    info = _read_sidecar(sidecar_of(path))
    if info is None or info["key"] != key.fields() or not path.is_file():
        return None
    if path.stat().st_size != info.get("engine_bytes") or file_sha256(path) != info.get("engine_sha256"):
        logger.info("cached engine %s does not match its sidecar: rebuilding it", path.name)
        return None
    return CachedEngine(path, False, info)


def get_or_build(
    key: EngineKey,
    build: Callable[[], bytes],
    extra: dict | None = None,
    root: Path | None = None,
) -> CachedEngine:
    """The engine for ``key`` from the cache, else ``build()``'s (stored first). ``extra``: more sidecar
    fields (e.g. the model config and paths, which the runner reads but which are not part of the key)."""
    hit = lookup(key, root)
    if hit is not None:
        logger.debug("engine cache hit: %s", hit.path)
        return hit
    if root is None:
        from d3d._native import cache_subdir

        root = cache_subdir("engines")  # a one-line error naming D3D_CACHE_DIR before a minutes-long build
    path = root / key.file_name()
    logger.info("building engine %s (once; cached in %s)", path.name, path.parent)
    start = time.perf_counter()
    engine = build()
    if not engine:
        raise D3DError(f"the {key.builder} builder returned no engine")
    seconds = time.perf_counter() - start
    info = {
        **(extra or {}),
        "tool": TOOL,
        "format": FORMAT,
        "engine": path.name,
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "engine_bytes": len(engine),
        "key": key.fields(),
        "key_sha256": key.digest(),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 2),
        # The fields the TensorRT runner checks (d3d.export.tensorrt.check_sidecar) and reads.
        "tensorrt_version": key.builder_version,
        "gpu": key.gpu,
        "compute_capability": key.compute_capability,
        "precision": key.precision,
        "profile": dict(zip(("min", "opt", "max"), (list(s) for s in key.profile), strict=True)),
    }
    # Sidecar first: an engine is never in place without the sidecar that proves it ours.
    try:
        with atomic_write(sidecar_of(path)) as tmp:
            tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
        with atomic_write(path) as tmp:
            tmp.write_bytes(engine)
    except OSError as exc:
        raise D3DError(
            f"{path}: cannot write the engine cache ({reason(exc)}): set D3D_CACHE_DIR to a writable folder"
        ) from exc
    return CachedEngine(path, True, info)


def entries(root: Path | None = None) -> list[tuple[Path, dict]]:
    """Every engine the cache wrote (with its sidecar), by name."""
    root = root or engines_dir()
    if not root.is_dir():
        return []
    found = []
    for side in sorted(root.glob(f"*{SUFFIX}{SIDECAR_SUFFIX}")):
        info = _read_sidecar(side)
        if info is not None:
            found.append((root / info["engine"], info))
    return found


def clear(root: Path | None = None) -> int:
    """Deletes the cache's own engines and sidecars (nothing else in the folder); returns how many engines."""
    count = 0
    for engine, _ in entries(root):
        try:
            engine.unlink(missing_ok=True)
            sidecar_of(engine).unlink(missing_ok=True)
        except OSError as exc:
            done = f" after removing {count}" if count else ""
            raise D3DError(
                f"{engine}: cannot remove it ({reason(exc)}){done}: the cache folder {engine.parent} "
                "takes no changes; clear it as its owner"
            ) from exc
        count += 1
    return count


# --- Builders ------------------------------------------------------------------------------------------


def tensorrt_engine(
    onnx_path: Path,
    precision: str | None,
    profile: Sequence[Sequence[int]],
    plugin: Path | None = None,
    root: Path | None = None,
) -> CachedEngine:
    """A TensorRT engine of ``onnx_path`` for this machine's GPU, built on first use (GPU machines only).
    ``precision``: None or the graph's own (another one is refused: builds are strongly typed).
    ``plugin``: the DeformConv3d library (default: searched), loaded where the model has DeformConv3d nodes."""
    import d3d
    from d3d.export import has_custom_nodes, load_model, model_config, resolve_precision
    from d3d.export.tensorrt import build_engine_bytes, device_description, find_plugin_library, import_tensorrt

    trt = import_tensorrt()
    dev = device_description()
    if dev["gpu"] is None:
        raise D3DError("building a TensorRT engine needs a CUDA GPU; none was found")
    proto = load_model(onnx_path)
    precision = resolve_precision(proto, precision, str(onnx_path))
    plugin_lib = find_plugin_library(plugin) if has_custom_nodes(proto) else None
    key = engine_key(
        onnx_path,
        plugin=plugin_lib,
        builder="tensorrt",
        builder_version=trt.__version__,
        gpu=dev["gpu"],
        compute_capability=dev["compute_capability"],
        precision=precision,
        profile=profile,
    )
    extra = {
        "model_config": model_config(proto, str(onnx_path)),
        "onnx": str(onnx_path),
        "plugin": str(plugin_lib) if plugin_lib else None,
        "d3d_trt_version": d3d.__version__,
    }
    return get_or_build(
        key,
        lambda: build_engine_bytes(onnx_path, tuple(profile), plugin_lib),  # type: ignore[arg-type]
        extra,
        root,
    )


def rtx_version() -> str:
    """The installed TensorRT-RTX version (from the wheel's metadata: its bindings load only in the build
    process)."""
    import importlib.metadata as md

    from d3d.errors import SDKMissing

    for dist in ("tensorrt-rtx-cu12-bindings", "tensorrt-rtx-cu12-libs", "tensorrt-rtx"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    raise SDKMissing("TensorRT-RTX is not installed: pip install 'd3d-trt[rtx]'")


def rtx_engine(
    onnx_path: Path,
    profile: Sequence[Sequence[int]],
    plugin: Path | None = None,
    compute_capability: str = "SM89",
    root: Path | None = None,
) -> CachedEngine:
    """A TensorRT-RTX engine built ahead of time (on the CPU) for ``compute_capability``, cached; the
    DeformConv3d plugin ``plugin`` is loaded (and keyed) where given. The precision (keyed) is the
    graph's: TensorRT-RTX builds strongly typed."""
    import onnx

    from d3d.export import graph_precision
    from d3d.export.rtx import build_rtx

    precision = graph_precision(onnx.load(str(onnx_path), load_external_data=False))

    key = engine_key(
        onnx_path,
        plugin=plugin,
        builder="tensorrt-rtx",
        builder_version=rtx_version(),
        gpu=None,
        compute_capability=compute_capability,
        precision=precision,
        profile=profile,
    )
    libs = [plugin] if plugin is not None else []
    extra = {"onnx": str(onnx_path), "plugin": str(plugin) if plugin else None}
    return get_or_build(key, lambda: build_rtx(onnx_path, tuple(profile), libs, compute_capability).engine, extra, root)  # type: ignore[arg-type]
