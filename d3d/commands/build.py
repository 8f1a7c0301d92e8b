"""``d3d build``: ONNX (custom-op or portable) -> TensorRT engine file + JSON sidecar."""

from __future__ import annotations

import argparse
from pathlib import Path

from d3d.commands import add_output_flags, dims_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="ONNX file from d3d export")
    parser.add_argument("-o", "--output", type=Path, required=True, help="engine file to write")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16", help="engine precision")
    parser.add_argument("--min-shape", type=dims_arg("BxHxW"), default=(1, 64, 64), help="profile minimum BxHxW (LR)")
    parser.add_argument("--opt-shape", type=dims_arg("BxHxW"), default=(1, 180, 320), help="profile optimum BxHxW")
    parser.add_argument("--max-shape", type=dims_arg("BxHxW"), default=(1, 272, 480), help="profile maximum BxHxW")
    parser.add_argument("--timing-cache", type=Path, help="timing cache file (read if present, then updated)")
    parser.add_argument("--opt-level", type=int, default=3, choices=range(6), help="builder optimization level")
    parser.add_argument("--workspace", type=float, default=4.0, help="workspace limit in GiB")
    parser.add_argument("--plugin", type=Path, help="DeformConv3d plugin library (default: searched)")
    add_output_flags(parser)


def run(args: argparse.Namespace) -> int:
    import datetime
    import json

    import d3d
    from d3d.errors import D3DError
    from d3d.export import file_sha256, has_custom_nodes, load_model, model_config
    from d3d.export.tensorrt import (
        build_engine_bytes,
        device_description,
        find_plugin_library,
        import_tensorrt,
        sidecar_path,
        write_sidecar,
    )
    from d3d.outputs import check_target, write_output

    if not all(lo <= opt <= hi for lo, opt, hi in zip(args.min_shape, args.opt_shape, args.max_shape, strict=True)):
        raise D3DError("the profile must satisfy min <= opt <= max in batch, height and width")
    if args.plugin is not None and not args.plugin.is_file():
        raise D3DError(f"{args.plugin}: no such file (--plugin)")
    inputs = (args.model, args.plugin, args.timing_cache)
    check_target(args.output, inputs=inputs, overwrite=args.overwrite, what="--output")
    check_target(sidecar_path(args.output), inputs=inputs, overwrite=args.overwrite, what="engine sidecar")
    trt = import_tensorrt()  # exits 2 with install advice where TensorRT is missing
    proto = load_model(args.model)
    config = model_config(proto, str(args.model))
    plugin = find_plugin_library(args.plugin) if has_custom_nodes(proto) else None
    ch, frames = config["in_channels"], config["frames"]
    profile = tuple((b, ch, frames, h, w) for b, h, w in (args.min_shape, args.opt_shape, args.max_shape))
    engine = build_engine_bytes(
        args.model,
        precision=args.precision,
        profile=profile,
        plugin_library=plugin,
        timing_cache=args.timing_cache,
        optimization_level=args.opt_level,
        workspace_gib=args.workspace,
    )
    write_output(args.output, engine, inputs=inputs, overwrite=args.overwrite)
    info = {
        "tensorrt_version": trt.__version__,
        **device_description(),
        "precision": args.precision,
        "profile": {"min": profile[0], "opt": profile[1], "max": profile[2]},
        "model_config": config,
        "onnx": str(args.model),
        "onnx_sha256": file_sha256(args.model),
        "plugin": str(plugin) if plugin else None,
        "d3d_trt_version": d3d.__version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_sidecar(args.output, info)
    print(f"wrote {args.output} ({len(engine) / 1e6:.1f} MB, {args.precision}) and {args.output.name}.json")
    print(json.dumps(info["profile"]))
    return 0
