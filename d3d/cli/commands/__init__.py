"""One module per ``d3d`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Shared argument types and groups live here so every command checks sizes and paths the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def dims_arg(layout: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type for positive sizes written like ``layout`` (e.g. ``"HxW"`` -> ``"32x48"``)."""
    n = len(layout.split("x"))

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.lower().split("x"))
        except ValueError:
            values = ()
        if len(values) != n or min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected {layout} with positive integers, got {text!r}")
        return values

    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type for integers >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)


def add_model_source(parser: argparse.ArgumentParser, engine: bool = True) -> None:
    """--checkpoint / --onnx / --engine / --random-init: exactly one names the model (else the shipped one)."""
    g = parser.add_argument_group(
        "model (exactly one; default: the shipped trained model where installed, else an error)"
    )
    g.add_argument("--checkpoint", type=Path, help="D3Dnet checkpoint (.pth.tar)")
    g.add_argument("--onnx", type=Path, help="ONNX model from `d3d export`")
    if engine:
        g.add_argument("--engine", type=Path, help="TensorRT engine from `d3d build` (tensorrt backend)")
    g.add_argument("--random-init", action="store_true", help="run untrained, seeded random weights (for trials)")


def model_source(args: argparse.Namespace):
    from d3d.runtime.models import resolve_source

    return resolve_source(
        random_init=args.random_init,
        checkpoint=args.checkpoint,
        onnx=args.onnx,
        engine=getattr(args, "engine", None),
    )


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file, or a frame folder d3d wrote "
        "(never an input, the current folder or a folder of other files)",
    )
