"""``d3d verify``: PyTorch vs ONNX Runtime (vs TensorRT where installed) through Polygraphy."""

from __future__ import annotations

import argparse
from pathlib import Path

from d3d.cli.commands import add_output_flags, dims_arg, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="ONNX file exported by d3d export")
    parser.add_argument(
        "--checkpoint", type=Path, help="compare against this checkpoint (default: weights from the ONNX file)"
    )
    parser.add_argument(
        "--shapes",
        type=dims_arg("HxW"),
        nargs="+",
        default=[(32, 32), (40, 24)],
        help="LR sizes HxW of the random inputs",
    )
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size of the inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--no-real-frames", action="store_true", help="skip the real-footage input")
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        help="precision of the model (default: the graph's, from `d3d export --precision`; another is refused)",
    )
    parser.add_argument("--atol", type=float, help="absolute tolerance (default per precision: fp32 1e-4)")
    parser.add_argument("--rtol", type=float, help="relative tolerance (default per precision: fp32 1e-3)")
    from d3d.runtime.backends import backend_names
    from d3d.verify import VERIFY_BACKENDS

    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(VERIFY_BACKENDS),
        choices=[b for b in backend_names() if b in VERIFY_BACKENDS],
        help="runners to compare; the first is the reference",
    )
    parser.add_argument("--plugin", type=Path, help="DeformConv3d TensorRT plugin library")
    parser.add_argument(
        "--rtx-build",
        action="store_true",
        help="also build a TensorRT-RTX engine ahead of time (no GPU needed; a custom-op model loads the "
        "DeformConv3d plugin library: --plugin, else $D3D_TRT_PLUGIN or build/tensorrt/)",
    )
    parser.add_argument("--report", type=Path, help="write the comparison as JSON")
    add_output_flags(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="show Polygraphy's own log")


def run(args: argparse.Namespace) -> int:
    from polygraphy.logger import G_LOGGER

    from d3d.errors import D3DError
    from d3d.export import load_model
    from d3d.outputs import check_target, write_output
    from d3d.verify import VerifyOptions, format_table, report_json, verify

    G_LOGGER.module_severity = G_LOGGER.ERROR if not args.verbose else G_LOGGER.INFO
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise D3DError(f"{args.checkpoint}: no such file (--checkpoint)")
    if args.plugin is not None and not args.plugin.is_file():
        raise D3DError(f"{args.plugin}: no such file (--plugin)")
    for name, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value is not None and not value >= 0:  # before any slow work; NaN too
            raise D3DError(f"{name} must be >= 0, got {value}")
    inputs = (args.model, args.checkpoint, args.plugin)
    if args.report:
        check_target(args.report, inputs=inputs, overwrite=args.overwrite, what="--report")
    proto = load_model(args.model)
    opts = VerifyOptions(
        shapes=args.shapes,
        batch=args.batch,
        seed=args.seed,
        real_frames=not args.no_real_frames,
        precision=args.precision,
        atol=args.atol,
        rtol=args.rtol,
        backends=args.backends,
        plugin_library=args.plugin,
    )
    result = verify(args.model, proto, args.checkpoint, opts)
    for note in result.notes:
        print(note)
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")
    print(format_table(result))
    if args.rtx_build:
        _rtx_build(args, proto)
    if args.report:
        write_output(args.report, report_json(result, args.model), inputs=inputs, overwrite=args.overwrite)
    for line in result.nonfinite:
        print(line)
    if result.nonfinite:
        print("FAILED: non-finite outputs")
    else:
        print("PASSED" if result.passed else "FAILED: outside tolerance")
    return 0 if result.passed else 1


def _rtx_build(args: argparse.Namespace, proto) -> None:
    from d3d.export import has_custom_nodes, model_config
    from d3d.export.rtx import build_model_rtx
    from d3d.verify import profile_for

    lo, _, hi = profile_for(model_config(proto, str(args.model)), args.shapes, args.batch)
    built = build_model_rtx(args.model, has_custom_nodes(proto), (lo, hi, hi), args.plugin)
    plugins = f", {built.plugin_layers} DeformConv3d plugin layers" if built.plugin_layers else ""
    print(
        f"TensorRT-RTX: engine built ahead of time for SM89 ({len(built.engine) / 1e6:.1f} MB{plugins}), "
        f"profile {lo} .. {hi}"
    )
