"""``d3d eval``: Y-channel PSNR/SSIM of a model against bicubic on Vid4/SPMC, Vimeo-list or video data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from d3d.cli.commands import add_model_source, add_output_flags, model_source, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from d3d.runtime.backends import backend_names

    parser.add_argument(
        "data",
        nargs="*",
        type=Path,
        help="Vid4/SPMC-layout folders (scene/hr, scene/lr_x4), Vimeo-layout folders (sep_testlist.txt) or "
        "video files (LR made by the MATLAB-style x1/4 resize)",
    )
    parser.add_argument("--clip", action="append", help="a bundled sample clip, e.g. carphone (repeatable)")
    parser.add_argument("--start", type=int, default=0, help="video sources: first frame")
    parser.add_argument("--max-frames", type=int, help="video sources: at most this many frames")
    parser.add_argument(
        "--protocol",
        choices=["seed", "basicsr"],
        default="seed",
        help="seed: truncate to 8 bits, 8-pixel border, zero-padded SSIM, first/last 2 frames left out; "
        "basicsr: round, border = scale, valid-window SSIM, all frames",
    )
    add_model_source(parser)
    src = parser.add_argument_group("backend")
    src.add_argument(
        "--backend", choices=["auto", *backend_names(local=True)], default="pytorch", help="where the model runs"
    )
    src.add_argument("--plugin", type=Path, help="DeformConv3d TensorRT plugin library (default: searched)")
    src.add_argument("--threads", type=positive_int, help="CPU threads for ONNX Runtime / PyTorch")
    src.add_argument("--bicubic-only", action="store_true", help="score the bicubic baseline alone (no model)")
    parser.add_argument("--json", type=Path, help="write the per-clip and mean scores as JSON")
    add_output_flags(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _clips(args: argparse.Namespace, scale: int):
    from d3d.errors import D3DError
    from d3d.samples import sample_clip
    from d3d.training.data import IMAGE_EXTENSIONS, clip_from_video, load_vid4, load_vimeo_test

    sources = list(args.data) + [sample_clip(c) for c in args.clip or []]
    if not sources:
        raise D3DError("give test data (folders or videos) or --clip NAME")
    clips = []
    for s in sources:
        if s.is_dir() and (s / "sep_testlist.txt").is_file():
            found = load_vimeo_test(s, scale)
            if not found:
                raise D3DError(
                    f"{s / 'sep_testlist.txt'}: lists no test septuplets: nothing to score (prepare the data with "
                    "--holdout, or a --holdout-fraction above 0)"
                )
            clips += found
        elif s.is_dir():
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in s.iterdir()):
                raise D3DError(f"{s}: a bare frame folder; convert it with `d3d prepare --layout vid4` first")
            clips += load_vid4(s, scale)
        else:
            clips.append(clip_from_video(s, scale, args.start, args.max_frames))
    return clips


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from d3d.errors import D3DError
    from d3d.outputs import check_target, write_output
    from d3d.training.evaluate import evaluate_clip, summarise
    from d3d.training.metrics import PROTOCOLS

    if args.start < 0 or (args.max_frames is not None and args.max_frames < 1):
        raise D3DError("--start must be >= 0 and --max-frames >= 1")
    protocol = PROTOCOLS[args.protocol]
    infer, label, scale, frames = None, "bicubic only", 4, 7
    runner = None
    source_model = None if args.bicubic_only else model_source(args)
    inputs = (*args.data, source_model.path if source_model else None, args.plugin)
    if args.json:  # before any slow work: the report may not replace anything but our own output
        check_target(args.json, inputs=inputs, overwrite=args.overwrite, what="--json")
    if source_model is not None:
        from d3d.runtime.backends import choose_backend, create_runner

        backend = choose_backend(args.backend, source_model.kind)
        options = backend.options(threads=args.threads)
        if args.plugin is not None:
            if not hasattr(options, "plugin"):
                raise D3DError(f"--plugin is a tensorrt option; the {backend.name} backend does not load plugins")
            options.plugin = args.plugin
        options.validate()
        runner = create_runner(backend, source_model, options)
        label = f"{source_model.describe()} on {runner.describe()}"
        scale, frames = runner.config.scale, runner.config.frames
        if runner.config.in_channels != 1:
            raise D3DError("d3d eval scores Y-channel models (in_channels=1)")
        infer = runner.infer
    clips = _clips(args, scale)
    if not clips:  # a score over nothing would read as a result
        raise D3DError("no test clips found in the data given")
    print(f"model: {label} | protocol: {protocol.name} | {len(clips)} clip(s)")
    results = []
    with tqdm(total=sum(len(c.hr) for c in clips), unit="frame", disable=args.quiet, dynamic_ncols=True) as bar:
        for clip in clips:
            try:
                results.append(evaluate_clip(clip, infer, protocol, scale, frames, on_frame=bar.update))
            except ValueError as exc:
                raise D3DError(str(exc)) from None
    if runner is not None:
        runner.close()
    summary = summarise(results, protocol)
    width = max(len(n) for n in summary["clips"]) if summary["clips"] else 4
    cols = list(summary["mean"])
    print(f"{'clip':<{width}}  " + "  ".join(f"{c:>13}" for c in cols))
    for name, row in [*summary["clips"].items(), ("mean", summary["mean"])]:
        print(f"{name:<{width}}  " + "  ".join(f"{row[c]:>13.4f}" for c in cols))
    if "psnr" in summary["mean"]:
        gain = summary["mean"]["psnr"] - summary["mean"]["bicubic_psnr"]
        print(f"mean PSNR gain over bicubic: {gain:+.2f} dB ({protocol.name} protocol)")
    if args.json:
        write_output(args.json, json.dumps(summary, indent=1) + "\n", inputs=inputs, overwrite=args.overwrite)
        print(f"wrote {args.json}")
    return 0
