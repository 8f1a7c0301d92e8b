"""``d3d export``: D3Dnet checkpoint -> ONNX (custom DeformConv3d node, or standard ops: --flavour
gridsample (alias --portable) or deformconv)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from d3d.cli.commands import add_output_flags, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", type=Path, help="D3Dnet checkpoint (.pth.tar or state dict)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    add_output_flags(parser)
    parser.add_argument(
        "--opset",
        type=int,
        help="ONNX opset, 18..23 (default: 20; 18 for --flavour gridsample, whose 4-D GridSample then is "
        "GridSample-16, or 20 where a layer deforms T; at least 19 for --flavour deformconv; 22 and up for "
        "--precision bf16)",
    )
    parser.add_argument(
        "--flavour",
        choices=["custom", "gridsample", "deformconv"],
        help="how DeformConv3d is written (default custom): custom = one d3d::DeformConv3d node per layer (our "
        "TensorRT plugin / ONNX Runtime op library); gridsample = standard GridSample + Conv (stock TensorRT, ONNX "
        "Runtime, OpenVINO); deformconv = standard DeformConv-19 nodes, one per time tap (stock TensorRT >= 10.1, "
        "ONNX Runtime CPU; only layers that deform H and W)",
    )
    parser.add_argument(
        "--portable",
        action="store_true",
        help="alias of --flavour gridsample",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="type of the graph's weights and activations (default fp32; fp16 through onnxconverter-common, "
        "refused where a layer's activations on real frames would overflow it; bf16 through NVIDIA ModelOpt's "
        "AutoCast, the [bf16] extra, opset 22); a TensorRT engine built from the file has this precision "
        "(strongly typed)",
    )
    parser.add_argument(
        "--io-precision",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="type of the model's input and output (default fp32, with Casts at the edges; or the --precision)",
    )
    parser.add_argument("--static", action="store_true", help="fixed input shape instead of dynamic batch/H/W")
    parser.add_argument("--batch", type=positive_int, default=1, help="example / static batch size")
    parser.add_argument("--height", type=positive_int, default=64, help="example / static LR height")
    parser.add_argument("--width", type=positive_int, default=64, help="example / static LR width")
    g = parser.add_argument_group("without weights (--random-init)")
    g.add_argument("--random-init", action="store_true", help="export a randomly initialised model")
    g.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    g.add_argument("--scale", type=positive_int, default=4, help="upscaling factor")
    g.add_argument("--frames", type=positive_int, default=7, help="input frames per window (odd)")
    g.add_argument("--channels", type=positive_int, default=1, help="input/output channels (1 = Y)")
    g.add_argument("--nf", type=positive_int, default=64, help="feature channels")
    g.add_argument("--d3d-blocks", type=positive_int, default=5, help="deformable 3-D blocks")
    g.add_argument("--res-blocks", type=positive_int, default=6, help="2-D residual blocks")
    g.add_argument(
        "--offset-init-std",
        type=float,
        default=0.0,
        help="with --random-init: std of the offset convolutions' weights (0 = zero, as in the seed)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from d3d import D3Dnet, load_checkpoint
    from d3d.errors import D3DError
    from d3d.export import ExportOptions, check_opset, export_onnx, file_sha256, portable_form
    from d3d.export.precision import check_precision, check_precision_opset
    from d3d.outputs import check_target

    if args.portable and args.flavour is not None:
        raise D3DError(
            f"--portable is the alias of --flavour gridsample: give one of them, not with --flavour {args.flavour}"
        )
    flavour = "gridsample" if args.portable else (args.flavour or "custom")
    if args.opset is not None:
        check_opset(args.opset, flavour)  # before any slow work
        check_precision_opset(args.precision, args.opset)
    check_precision(args.precision, args.io_precision)
    if args.random_init and args.checkpoint is not None:
        raise D3DError(f"conflicting model sources: --random-init and checkpoint {args.checkpoint}; give exactly one")
    if not args.random_init and args.checkpoint is None:
        raise D3DError("give a checkpoint to export, or --random-init for untrained weights")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise D3DError(f"{args.checkpoint}: no such file (checkpoint)")
    check_target(args.output, inputs=(args.checkpoint,), overwrite=args.overwrite, what="--output")
    sha = None
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint)
        sha = file_sha256(args.checkpoint)
        source = f"checkpoint {args.checkpoint} (sha256 {sha})"
    else:
        torch.manual_seed(args.seed)
        model = D3Dnet(args.scale, args.channels, args.channels, args.frames, args.nf, args.d3d_blocks, args.res_blocks)
        if args.offset_init_std:
            for m in model.modules():
                if hasattr(m, "conv_offset"):
                    torch.nn.init.normal_(m.conv_offset.weight, 0.0, args.offset_init_std)
        source = f"random (untrained, seed {args.seed})"
    options = ExportOptions(
        opset=args.opset,
        dynamic=not args.static,
        flavour=flavour,
        batch=args.batch,
        height=args.height,
        width=args.width,
        precision=args.precision,
        io_precision=args.io_precision,
    )
    if args.precision == "fp16":  # bf16 has fp32's range
        _check_range(model)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        proto = export_onnx(model, args.output, options, checkpoint_sha256=sha)
    except OSError as exc:
        raise D3DError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    from d3d._plugins.contract import DOMAIN

    custom = sum(1 for n in proto.graph.node if n.domain == DOMAIN)
    deformconv = sum(1 for n in proto.graph.node if n.domain in ("", "ai.onnx") and n.op_type == "DeformConv")
    described = {
        "custom": f"custom op ({custom} DeformConv3d nodes)",
        "gridsample": "gridsample (standard ops)",
        "deformconv": f"deformconv ({deformconv} standard DeformConv nodes)",
    }[flavour]
    shape = "static" if args.static else "dynamic batch/height/width"
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    print(f"wrote {args.output}: {described}, {args.precision}, opset {opset}, {shape}, from {source}")
    if flavour == "gridsample":
        print(f"portable form: {portable_form(proto)}")
    return 0


def _check_range(model) -> None:
    """Runs the model on real frames (bikes 100-106, a 64x64 crop; random frames for a model that is not
    Y-only) and refuses fp16 where a layer's activations would overflow it; prints the largest."""
    import torch

    from d3d.export.precision import FP16_MAX, check_fp16_range

    cfg = model.config
    if cfg.in_channels == 1:
        from d3d.runtime.sources import read_window_y

        inputs = [torch.from_numpy(read_window_y(cfg.frames, (64, 64), start=s))[None, None] for s in (100, 212)]
        what = "bikes frames 100-106 and 212-218"
    else:
        inputs = [torch.rand(1, cfg.in_channels, cfg.frames, 64, 64, generator=torch.Generator().manual_seed(0))]
        what = "random frames"
    peaks = check_fp16_range(model.eval(), inputs)
    top = ", ".join(f"{n} {v:.3g}" for n, v in peaks[:3])
    print(f"fp16 range on {what}: largest activations {top} (fp16 max {FP16_MAX:g})")
