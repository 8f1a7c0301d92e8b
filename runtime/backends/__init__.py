"""The backend registry: name -> :class:`Backend` (factory, availability check, description, options).

Every module in this package that defines ``BACKENDS`` (a list of :class:`Backend`) is found here, so
adding a backend is one file. The CLI's ``--backend`` choices, ``d3d bench``, ``d3d verify`` and
``d3d info`` all read :func:`registry`.
"""

from __future__ import annotations

import importlib
import pkgutil

from d3d.errors import D3DError, SDKMissing
from d3d.runtime.backends.base import Backend, BackendOptions, Runner, peak_rss_mb

__all__ = [
    "Backend",
    "BackendOptions",
    "Runner",
    "available_backends",
    "backend_names",
    "create_runner",
    "get_backend",
    "peak_rss_mb",
    "registry",
]

_REGISTRY: dict[str, Backend] = {}


def registry() -> dict[str, Backend]:
    """Every backend module's entries, by name (modules found once, on first use)."""
    if not _REGISTRY:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.name.startswith("_") or info.name == "base":
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for backend in getattr(module, "BACKENDS", []):
                if backend.name in _REGISTRY:
                    raise RuntimeError(f"backend {backend.name!r} is registered twice")
                _REGISTRY[backend.name] = backend
    return _REGISTRY


def backend_names(local: bool = False) -> list[str]:
    """Every backend's name; ``local``: only those that run the model in this process (not a server's)."""
    return [name for name, b in registry().items() if not (local and b.remote)]


def get_backend(name: str) -> Backend:
    backends = registry()
    if name not in backends:
        raise D3DError(f"unknown backend {name!r}; choose one of {', '.join(backends)}")
    return backends[name]


def available_backends() -> dict[str, str | None]:
    """name -> None where it can run here, else the reason it cannot."""
    return {name: b.unavailable() for name, b in registry().items()}


def choose_backend(name: str, source_kind: str) -> Backend:
    """``auto``: TensorRT for an engine, else ONNX Runtime (the default, CPU)."""
    if name == "auto":
        name = "tensorrt" if source_kind == "engine" else "onnxruntime"
    return get_backend(name)


def create_runner(backend: Backend, source, options: BackendOptions | None = None) -> Runner:
    """Checks that ``backend`` can run here, then builds its runner for the model ``source``."""
    why = backend.unavailable()
    if why:
        raise (SDKMissing if backend.missing_sdk else D3DError)(f"the {backend.name} backend cannot run here: {why}")
    return backend.create(source, options)
