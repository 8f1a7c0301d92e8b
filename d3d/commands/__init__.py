"""One module per ``d3d`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
