"""``d3d info``: what is installed, which backends can run here, and where the native libraries are."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform

DISTRIBUTIONS = (
    "torch",
    "onnx",
    "onnxruntime",
    "scipy-openblas32",
    "polygraphy",
    "av",
    "tensorrt",
    "tensorrt-rtx-cu12-bindings",
    "pycuda",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts); builds nothing")
    parser.add_argument("--no-build", action="store_true", help="do not build the native PyTorch op")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def collect() -> dict:
    """Versions, backends (with the reason where one cannot run) and native library paths."""
    import d3d
    from d3d import native_libs
    from d3d._native import built_library
    from d3d.runtime.backends import registry

    backends = {}
    for name, b in registry().items():
        why = b.unavailable()
        backends[name] = {"available": why is None, "reason": why, "description": b.description}
    torch_op = built_library()
    return {
        "d3d_trt": d3d.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "versions": {dist: _version(dist) for dist in DISTRIBUTIONS},
        "backends": backends,
        "available_backends": [n for n, b in backends.items() if b["available"]],
        "native_libraries": {
            "torch_op_library": str(torch_op) if torch_op else None,
            native_libs.ORT_OPS.key: str(p) if (p := native_libs.ort_ops_library()) else None,
            native_libs.TRT_PLUGIN.key: str(p) if (p := native_libs.trt_plugin_library()) else None,
        },
    }


def product_on_stdout(args: argparse.Namespace) -> bool:
    """What `info` prints is its product: a closed stdout ends it (exit 141)."""
    return True


def run(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(collect(), indent=1))
        return 0
    import torch

    if not args.no_build:
        from d3d.ops import ensure_native

        ensure_native()
    info = collect()
    print(f"d3d-trt {info['d3d_trt']}, Python {info['python']}, {info['machine']}")
    print(f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()})")
    for dist, version in info["versions"].items():
        if dist != "torch":
            print(f"{dist}: {version or 'not installed'}")
    for name, b in info["backends"].items():
        print(f"backend {name}: {'available' if b['available'] else 'unavailable: ' + b['reason']}")
    for key, path in info["native_libraries"].items():
        print(f"{key}: {path or 'not built'}")
    return 0
