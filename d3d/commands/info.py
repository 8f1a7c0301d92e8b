"""``d3d info``: what is installed, which backends can run, and a build of the native op."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-build", action="store_true", help="do not build the native op")


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace) -> int:
    import torch

    import d3d

    print(f"d3d-trt {d3d.__version__}, Python {platform.python_version()}, {platform.machine()}")
    print(f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()})")
    for dist in ("onnx", "onnxruntime", "onnxruntime-extensions", "polygraphy", "av", "tensorrt", "pycuda"):
        print(f"{dist}: {_version(dist)}")
    if not args.no_build:
        from d3d.ops import ensure_native

        ensure_native()
        print("native DeformConv3d op: built and loaded (torch.ops.d3d.deform_conv3d)")
    return 0
