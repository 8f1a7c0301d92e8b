"""``d3d build``: ONNX (custom-op or portable) -> TensorRT or TensorRT-RTX engine file + JSON sidecar.

Strongly typed: the engine's precision is the ONNX graph's (``d3d export --precision``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from d3d.cli.commands import add_output_flags, dims_arg

BUILDERS = ("tensorrt", "tensorrt-rtx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="ONNX file from d3d export")
    parser.add_argument("-o", "--output", type=Path, required=True, help="engine file to write")
    parser.add_argument(
        "--builder",
        choices=BUILDERS,
        default="tensorrt",
        help="tensorrt (for this machine's GPU; default) or tensorrt-rtx (ahead of time, no GPU needed; "
        "does not import tensorrt)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        help="engine precision (default: the graph's, recorded by `d3d export --precision`; builds are "
        "strongly typed, so another one is refused)",
    )
    parser.add_argument("--min-shape", type=dims_arg("BxHxW"), default=(1, 64, 64), help="profile minimum BxHxW (LR)")
    parser.add_argument("--opt-shape", type=dims_arg("BxHxW"), default=(1, 180, 320), help="profile optimum BxHxW")
    parser.add_argument("--max-shape", type=dims_arg("BxHxW"), default=(1, 272, 480), help="profile maximum BxHxW")
    parser.add_argument(
        "--compute-capability",
        default="SM89",
        help="tensorrt-rtx only: the GPU architecture to build for (default SM89)",
    )
    parser.add_argument("--timing-cache", type=Path, help="tensorrt only: timing cache file (read if present, updated)")
    parser.add_argument("--opt-level", type=int, default=3, choices=range(6), help="tensorrt only: optimization level")
    parser.add_argument("--workspace", type=float, default=4.0, help="tensorrt only: workspace limit in GiB")
    parser.add_argument("--plugin", type=Path, help="DeformConv3d plugin library (default: searched)")
    add_output_flags(parser)


def run(args: argparse.Namespace) -> int:
    import datetime
    import json

    import d3d
    from d3d.errors import D3DError
    from d3d.export import file_sha256, has_custom_nodes, load_model, model_config, resolve_precision
    from d3d.export.tensorrt import device_description, find_plugin_library, sidecar_path, write_sidecar
    from d3d.outputs import check_target, write_output

    if not all(lo <= opt <= hi for lo, opt, hi in zip(args.min_shape, args.opt_shape, args.max_shape, strict=True)):
        raise D3DError("the profile must satisfy min <= opt <= max in batch, height and width")
    if args.plugin is not None and not args.plugin.is_file():
        raise D3DError(f"{args.plugin}: no such file (--plugin)")
    inputs = (args.model, args.plugin, args.timing_cache)
    check_target(args.output, inputs=inputs, overwrite=args.overwrite, what="--output")
    check_target(sidecar_path(args.output), inputs=inputs, overwrite=args.overwrite, what="engine sidecar")
    # The builder's SDK first: where it is missing, exit 2 with install advice before reading anything.
    if args.builder == "tensorrt-rtx":
        from d3d.export.engine_cache import rtx_version

        version = rtx_version()
        trt = None
    else:
        from d3d.export.tensorrt import import_tensorrt

        trt = import_tensorrt()
        version = trt.__version__
    proto = load_model(args.model)
    precision = resolve_precision(proto, args.precision, str(args.model))
    config = model_config(proto, str(args.model))
    plugin = find_plugin_library(args.plugin) if has_custom_nodes(proto) else None
    ch, frames = config["in_channels"], config["frames"]
    profile = tuple((b, ch, frames, h, w) for b, h, w in (args.min_shape, args.opt_shape, args.max_shape))
    if trt is None:
        from d3d.export.rtx import build_rtx

        built = build_rtx(args.model, profile, [plugin] if plugin else [], args.compute_capability)
        engine, version = built.engine, built.version or version
        target = {"gpu": None, "compute_capability": args.compute_capability}
    else:
        from d3d.export.tensorrt import build_engine_bytes

        engine = build_engine_bytes(
            args.model,
            profile=profile,
            plugin_library=plugin,
            timing_cache=args.timing_cache,
            optimization_level=args.opt_level,
            workspace_gib=args.workspace,
        )
        target = device_description()
    write_output(args.output, engine, inputs=inputs, overwrite=args.overwrite)
    info = {
        "builder": args.builder,
        "tensorrt_version": version,
        **target,
        "precision": precision,
        "profile": {"min": profile[0], "opt": profile[1], "max": profile[2]},
        "model_config": config,
        "onnx": str(args.model),
        "onnx_sha256": file_sha256(args.model),
        "plugin": str(plugin) if plugin else None,
        "d3d_trt_version": d3d.__version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_sidecar(args.output, info)
    print(f"wrote {args.output} ({len(engine) / 1e6:.1f} MB, {args.builder}, {precision}) and {args.output.name}.json")
    print(json.dumps(info["profile"]))
    return 0
