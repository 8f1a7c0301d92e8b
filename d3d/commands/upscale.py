"""``d3d upscale``: the main job. Video file or frame folder in, x4 video or PNG frames out."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", type=Path, help="video file or folder of frames (default: --clip)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="video file (.mp4/.mkv/...: H.264) or folder of PNG frames"
    )
    parser.add_argument("--clip", default="bikes", help="bundled sample clip used when no INPUT is given")
    src = parser.add_argument_group("model (default: the embedded ONNX Runtime backend)")
    src.add_argument("--engine", type=Path, help="TensorRT engine from `d3d build`")
    src.add_argument("--onnx", type=Path, help="ONNX model from `d3d export`")
    src.add_argument("--checkpoint", type=Path, help="D3Dnet checkpoint (.pth.tar)")
    src.add_argument(
        "--backend",
        choices=["auto", "tensorrt", "onnxruntime", "pytorch"],
        default="auto",
        help="auto: TensorRT when an engine and a GPU are present, else ONNX Runtime on the CPU",
    )
    src.add_argument("--plugin", type=Path, help="DeformConv3d TensorRT plugin library")
    src.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime / PyTorch")
    src.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay the engine launch as a CUDA graph")
    run = parser.add_argument_group("frames")
    run.add_argument("--start", type=int, default=0, help="first input frame")
    run.add_argument("--max-frames", type=int, help="upscale at most this many frames")
    run.add_argument(
        "--downscale", type=int, default=1, help="bicubic pre-downscale by this factor (make LR from HR footage)"
    )
    run.add_argument("--tile", type=int, default=0, help="LR tile size for frames larger than the engine profile")
    run.add_argument("--tile-overlap", type=int, default=8, help="LR context pixels around each tile")
    out = parser.add_argument_group("output")
    out.add_argument("--crf", type=int, default=18, help="H.264 quality (lower is better)")
    out.add_argument("--y-only", action="store_true", help="write the network's Y output as 16-bit PNG frames")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output")
    out.add_argument("--summary-json", type=Path, help="also write the summary as JSON")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from d3d.errors import D3DError
    from d3d.runtime.pipeline import UpscaleOptions, open_sink, open_source, run_upscale
    from d3d.runtime.runners import create_runner
    from d3d.samples import sample_clip

    if args.downscale < 1 or args.start < 0 or (args.max_frames is not None and args.max_frames < 1):
        raise D3DError("--downscale and --max-frames must be >= 1, --start >= 0")
    path = args.input or sample_clip(args.clip)
    source = open_source(path, args.start, args.max_frames)
    runner, weights = create_runner(
        args.backend,
        engine=args.engine,
        onnx=args.onnx,
        checkpoint=args.checkpoint,
        threads=args.threads,
        plugin=args.plugin,
        cuda_graph=args.cuda_graph,
    )
    sink = open_sink(args.output, source.fps, y16=args.y_only, overwrite=args.overwrite, crf=args.crf)
    print(f"input: {path} | backend: {runner.describe()} | weights: {weights}")
    opts = UpscaleOptions(args.tile, args.tile_overlap, args.downscale, args.y_only)
    with tqdm(total=source.total, unit="frame", disable=args.quiet, dynamic_ncols=True) as bar:
        summary = run_upscale(source, runner, sink, opts, progress=bar)
    summary.weights = weights
    runner.close()
    (iw, ih), (ow, oh) = summary.input_size, summary.output_size
    print(
        f"done: {summary.frames} frames {iw}x{ih} -> {ow}x{oh} in {summary.seconds:.1f} s "
        f"({summary.fps:.2f} frames/s) | {summary.backend} | peak memory {summary.peak_rss_mb:.0f} MB | "
        f"wrote {args.output}"
    )
    if args.summary_json:
        record = {**dataclasses.asdict(summary), "fps": summary.fps, "output": str(args.output)}
        args.summary_json.write_text(json.dumps(record, indent=1))
    return 0
