"""The ``d3d`` command line: one subcommand per stage of the pipeline.

Errors meant for the user (bad files, missing tools) print one line, ``d3d: error: ...``, and exit
non-zero; tracebacks are kept for real bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from d3d.errors import D3DError

# name -> (module, help); modules are imported only when their command runs, so `d3d --help` is fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("d3d.commands.info", "show versions, backends and build the native op"),
    "upscale": ("d3d.commands.upscale", "upscale a video or frame folder (the main job)"),
    "export": ("d3d.commands.export", "export a checkpoint to ONNX (custom DeformConv3d node or --portable)"),
    "verify": ("d3d.commands.verify", "compare PyTorch, ONNX Runtime and TensorRT outputs with Polygraphy"),
    "build": ("d3d.commands.build", "build a TensorRT engine (with the DeformConv3d plugin) from an ONNX file"),
    "bench": ("d3d.commands.bench", "latency, throughput and peak memory per backend"),
    "prepare": ("d3d.commands.prepare", "video or frame folders -> Vimeo-90K septuplet or Vid4 test layout"),
    "train": ("d3d.commands.train", "train D3Dnet (the seed's recipe; resumable; torchrun for several processes)"),
    "eval": ("d3d.commands.eval", "PSNR/SSIM on Vid4/SPMC/Vimeo-layout data against bicubic (the seed's protocol)"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="d3d",
        description="D3Dnet video super-resolution: PyTorch -> ONNX -> TensorRT, with parity checks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (_, help_text) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    parser, subparsers = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Let the chosen command add its own arguments before parsing.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    run: Callable[[argparse.Namespace], int] | None = None
    if chosen in COMMANDS:
        module = importlib.import_module(COMMANDS[chosen][0])
        module.add_arguments(subparsers[chosen])
        run = module.run
    args = parser.parse_args(argv)
    if run is None:
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(run(args) or 0)
    except D3DError as exc:
        print(f"d3d: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("d3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
