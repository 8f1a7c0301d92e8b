"""``d3d upscale``: the main job. Video file or frame folder in, x4 video or PNG frames out."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from d3d.cli.commands import add_model_source, add_output_flags, int_at_least, model_source, positive_int
from d3d.runtime.video import ENCODERS, is_pipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from d3d.runtime.backends import backend_names

    parser.add_argument(
        "input", nargs="?", type=Path, help="video file, frame folder, or - for a y4m stream on stdin (default: --clip)"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="video file (.mp4 .mkv .mov .avi .webm .m4v; see --codec), folder of PNG frames (a name without an "
        "extension, or an existing folder), or - for a y4m stream on stdout",
    )
    parser.add_argument("--clip", default="bikes", help="bundled sample clip used when no INPUT is given")
    add_model_source(parser)
    be = parser.add_argument_group("backend")
    be.add_argument(
        "--backend",
        choices=["auto", *backend_names()],
        default="auto",
        help="auto: tensorrt for an --engine, else onnxruntime (CPU)",
    )
    be.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the backend runs")
    be.add_argument("--plugin", type=Path, help="DeformConv3d TensorRT plugin library (default: searched)")
    be.add_argument("--threads", type=positive_int, help="CPU threads for ONNX Runtime / PyTorch")
    be.add_argument(
        "--url", metavar="HOST:PORT", help="triton: the d3d serve server's gRPC address (default: 127.0.0.1:8001)"
    )
    be.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay the engine launch as a CUDA graph")
    be.add_argument("--no-estimate", action="store_true", help="skip the time/memory estimate (and its check)")
    run = parser.add_argument_group("frames")
    run.add_argument(
        "--start", type=int_at_least(0), default=0, help="first input frame (a --scene-cuts FILE still counts from 0)"
    )
    run.add_argument("--max-frames", type=positive_int, help="upscale at most this many frames")
    run.add_argument(
        "--downscale",
        type=positive_int,
        default=1,
        help="bicubic pre-downscale by this factor (make LR from HR footage)",
    )
    run.add_argument("--tile", type=int_at_least(0), default=0, help="LR tile size, 0 = whole frame (saves memory)")
    run.add_argument("--tile-overlap", type=int_at_least(0), default=8, help="LR context pixels around each tile")
    run.add_argument(
        "--scene-cuts",
        default="detect",
        metavar="detect|off|FILE",
        help="where windows stop, as at the clip's ends: detect (the luma-histogram detector of d3d prepare), "
        "off, or FILE: frame indices that start a shot (comma, space or line separated, # comments), counted "
        "from the input's first frame whatever --start is (docs/VIDEO.md)",
    )
    run.add_argument(
        "--cut-threshold",
        type=float,
        metavar="T",
        help="--scene-cuts detect: histogram distance in (0, 1] above which a frame starts a shot (default 0.17, "
        "as d3d prepare)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--codec", choices=ENCODERS, default="libx264", help="video encoder (ffv1: lossless, for .mkv)")
    out.add_argument("--crf", type=int_at_least(0), default=18, help="x264/x265 quality (lower is better)")
    out.add_argument(
        "--drop-unsupported-streams",
        action="store_true",
        help="leave out input streams the output container cannot carry (default: refuse)",
    )
    out.add_argument(
        "--serial", action="store_true", help="decode, infer and encode in one thread (no overlap; for comparison)"
    )
    out.add_argument("--y-only", action="store_true", help="write the network's Y output as 16-bit PNG frames")
    add_output_flags(out)
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of this output from its last completed frame (frames are kept in "
        ".<output name>.d3d-work beside the output until it is written; --overwrite without --resume discards "
        "them); refused in one line where a setting or the model differs; with no interrupted run, starts "
        "from the first frame; a pipe (-) in or out runs without a work folder (it cannot be resumed)",
    )
    out.add_argument("--summary-json", type=Path, help="also write the summary as JSON")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def product_on_stdout(args: argparse.Namespace) -> bool:
    """`-o -`: the video is written to stdout, so a closed stdout ends the run (exit 141); with a file
    output the run goes on when stdout's reader goes away."""
    return is_pipe(args.output)


def run(args: argparse.Namespace) -> int:
    from d3d.locks import exclusive

    if is_pipe(args.output):
        return _run_locked(args)
    # One run per output: a second one would share the work folder, or discard its frames as a stale run's.
    with exclusive(args.output):
        return _run_locked(args)


def _run_locked(args: argparse.Namespace) -> int:
    from d3d.errors import D3DError
    from d3d.outputs import write_output
    from d3d.runtime.backends import choose_backend
    from d3d.runtime.scenes import SceneCuts, describe_cuts
    from d3d.runtime.sinks import check_sink
    from d3d.samples import sample_clip

    # Everything named must exist, and no output may endanger anything, before any slow work.
    if args.backend == "triton":  # the server's model runs: a local one named here would not
        named = [f for f in ("checkpoint", "onnx", "engine", "random_init") if getattr(args, f, None)]
        if named:
            flag = "--" + named[0].replace("_", "-")
            raise D3DError(f"{flag} with --backend triton: the server's model runs (choose it with d3d serve {flag})")
    source_model = model_source(args)
    backend = choose_backend(args.backend, source_model.kind)
    options = backend.options(
        device=args.device, threads=args.threads, cuda_graph=args.cuda_graph, tile=args.tile,
        tile_overlap=args.tile_overlap,
    )  # fmt: skip
    if args.plugin is not None:
        if not hasattr(options, "plugin"):
            raise D3DError(f"--plugin is a tensorrt option; the {backend.name} backend does not load plugins")
        options.plugin = args.plugin
    if args.url is not None:
        if not hasattr(options, "url"):
            raise D3DError(f"--url is a triton option; the {backend.name} backend runs here")
        options.url = args.url
    options.validate()
    path = args.input or sample_clip(args.clip)
    scenes = SceneCuts.parse(args.scene_cuts, args.cut_threshold)
    inputs = (path, source_model.path, args.plugin, Path(scenes.path) if scenes.path else None)
    check_sink(args.output, args.y_only, args.overwrite, inputs)
    work = _work_folder(args, path, inputs)
    # From the claim on, every way out says what the work folder keeps (kept frames survive a failure at
    # any point, model loading included) and which flags continue the run.
    try:
        summary, say = _checked_run(args, path, source_model, backend, options, scenes, inputs, work)
    except BaseException as exc:
        if work is not None:
            _kept_note(exc, args, work)
        raise
    summary.weights = summary.weights or source_model.describe()  # a server's model is set by _run
    (iw, ih), (ow, oh) = summary.input_size, summary.output_size
    cuts = describe_cuts(scenes, summary.cuts)
    print(
        f"done: {summary.frames} frames ({summary.first_file} .. {summary.last_file}) {iw}x{ih} -> {ow}x{oh} "
        f"in {summary.seconds:.1f} s ({summary.fps:.2f} frames/s; network alone {summary.network_fps:.2f}"
        f"{f' on the {summary.frames - summary.resumed} it ran' if summary.resumed else ''}) | "
        f"{summary.backend} | colour: {summary.colour} | model: {summary.weights} | scene cuts: {cuts} | "
        f"peak memory {summary.peak_rss_mb:.0f} MB | wrote {'stdout' if is_pipe(args.output) else args.output}",
        file=say,
    )
    if args.summary_json:
        record = {
            **dataclasses.asdict(summary),
            "fps": summary.fps,
            "network_fps": summary.network_fps,
            "output": str(args.output),
        }
        write_output(args.summary_json, json.dumps(record, indent=1), inputs=inputs, overwrite=args.overwrite)
    return 0


def _checked_run(args, path, source_model, backend, options, scenes, inputs, work):
    """The rest of the checks, then the run: (summary, the stream messages go to)."""
    from d3d.errors import D3DError
    from d3d.outputs import check_target
    from d3d.runtime.backends import create_runner
    from d3d.runtime.sinks import plan_streams
    from d3d.runtime.sources import open_source

    if is_pipe(path) and sys.stdin.isatty():
        raise D3DError("input - reads a y4m stream from stdin: pipe one in (`ffmpeg ... -f yuv4mpegpipe - | d3d ...`)")
    if args.summary_json:
        check_target(args.summary_json, inputs=inputs, overwrite=args.overwrite, what="--summary-json")
        if not is_pipe(args.output) and Path(args.summary_json).resolve() == Path(args.output).resolve():
            raise D3DError(f"{args.summary_json}: --summary-json and --output are the same path")
    # With a y4m stream on stdout, every message goes to stderr.
    say = sys.stderr if is_pipe(args.output) else sys.stdout
    source = open_source(path, args.start, args.max_frames)
    try:
        if work is not None:
            work.total = source.total
        copies = plan_streams(args.output, source, args.drop_unsupported_streams)
        if source.size is not None:
            h, w = source.size
            lr = (h // args.downscale, w // args.downscale)
            if min(lr) < 1:
                raise D3DError(f"--downscale {args.downscale} is larger than the {w}x{h} frames of {path}")
        else:
            lr = None

        runner = create_runner(backend, source_model, options)
        try:
            summary = _run(
                args, path, source, source_model, backend.name, runner, lr, inputs, copies, say, scenes, work
            )
        finally:
            runner.close()  # release the backend's threads before any exit, interrupted or not
    finally:
        source.close()
    return summary, say


def _kept_note(exc: BaseException, args, work) -> None:
    """Attaches to ``exc`` what the work folder keeps, for the CLI's one line: the frames and the flags
    that continue the run (--overwrite too where the output exists by now, as a resume needs it then)."""
    from d3d.errors import add_kept
    from d3d.runtime.resume import SettingsDiffer

    if isinstance(exc, SettingsDiffer):  # its own line says what to do; continuing is what it refused
        return
    if work.committed:  # a signal taken once the commit was done
        add_kept(exc, f"{args.output} was complete and is written")
    elif work.complete and work.path.is_dir():
        output = Path(args.output)
        flags = "--resume --overwrite" if output.exists() or output.is_symlink() else "--resume"
        add_kept(
            exc, f"{_frames(work.complete, work.total)} done and kept in {work.path}: rerun with {flags} to continue"
        )


def _frames(n: int, total: int | None) -> str:
    """``3 of 8 frames``, or ``3 frames`` where the input does not say how many it has."""
    return f"{n} of {total} frames" if total else f"{n} frame{'' if n == 1 else 's'}"


def _work_folder(args, path: Path, inputs):
    """The work folder that makes the run resumable (None for a y4m pipe in or out), checked before any
    slow work: an earlier run's frames are refused without --resume or --overwrite."""
    from d3d.runtime.resume import WorkFolder
    from d3d.runtime.sources import VIDEO_EXTENSIONS

    if is_pipe(args.output) or is_pipe(path):
        if args.resume:  # a script may always pass --resume: a pipe's run simply cannot be continued
            where = "output - (stdout)" if is_pipe(args.output) else "input - (stdin)"
            print(f"resume: the {where} is a pipe, which cannot be resumed: running without a work folder",
                  file=sys.stderr)  # fmt: skip
        return None
    png = args.output.suffix.lower() not in VIDEO_EXTENSIONS
    work = WorkFolder(args.output, png=png, y16=args.y_only)
    work.claim(resume=args.resume, overwrite=args.overwrite, inputs=inputs)
    return work


def _run(args, path, source, source_model, backend_name: str, runner, lr, inputs, copies, say, scenes, work=None):
    """Estimate (and refuse what cannot fit), then stream the frames into the sink."""
    from tqdm import tqdm

    from d3d.errors import D3DError
    from d3d.runtime.estimate import estimate_run
    from d3d.runtime.executor import run_upscale
    from d3d.runtime.resume import ResumableSink, fingerprint, input_listing
    from d3d.runtime.sinks import open_sink
    from d3d.runtime.windows import UpscaleOptions

    # A server's model (triton) is the server's, whatever the local model flags say.
    model_text = f"the server's ({runner.identity['weights']})" if getattr(runner, "remote", False) else None
    print(f"input: {'stdin (y4m)' if is_pipe(path) else path} | backend: {runner.describe()} | "
          f"model: {model_text or source_model.describe()}", file=say)  # fmt: skip
    done = 0  # frames kept by an interrupted run (--resume): no network for them
    if work is not None:
        listing = input_listing(path)  # a frame folder's files, read once
        settings = fingerprint(args, path, source.plane_format, source_model, runner, scenes, listing)
        work.check_settings(settings, listing)
        bad = f" ({work.bad}: the network recomputes from there)" if work.bad else ""
        if work.resuming:
            done = work.done
            if source.total is not None and done >= source.total:
                rest = "nothing left for the network"
            else:  # in the input's numbering, as --start and the scene cuts count
                rest = f"the network continues from input frame {args.start + done}"
            print(f"resume: {_frames(done, source.total)} already done in {work.path}{bad}; {rest}", file=say)
        elif args.resume and work.bad:
            print(f"resume: no usable frame in {work.path}{bad}: starting from the first frame", file=say)
        elif args.resume:
            print(f"resume: no interrupted run of {args.output} to continue: starting from the first frame", file=say)
    if lr is not None:
        runner.check_frame_size(*lr)
        all_kept = source.total is not None and done >= source.total  # no network time to estimate
        remote = getattr(runner, "remote", False)  # a server's time and memory are not this machine's
        if not args.no_estimate and not all_kept and not remote:
            est = estimate_run(runner, lr, args.tile, args.tile_overlap)
            avail = f"{est.available_mb:.0f} MB available" if est.available_mb is not None else "available unknown"
            print(
                f"estimate: {lr[1]}x{lr[0]} LR on {backend_name}: ~{est.seconds_per_frame:.2f} s/frame, "
                f"peak memory ~{est.peak_mb:.0f} MB ({avail})",
                file=say,
            )
            if not est.fits():
                tile = est.suggest_tile(args.tile_overlap)
                hint = f"try --tile {tile}" if tile else "use a smaller --tile or --downscale"
                raise D3DError(
                    f"estimated peak memory {est.peak_mb:.0f} MB for {lr[1]}x{lr[0]} LR frames exceeds the "
                    f"{est.available_mb:.0f} MB available: {hint}"
                )
    scale = runner.config.scale
    size = (lr[0] * scale, lr[1] * scale) if lr is not None else None
    sink = None  # PNG frames of a resumable run go into the work folder, then become the output
    if work is not None:
        try:
            work.start(settings, listing)
        except BaseException as exc:
            work.release()
            if isinstance(exc, OSError):
                raise D3DError(f"{work.path}: cannot write the work folder ({exc.strerror or exc})") from None
            raise
    if work is None or not work.png:
        # A video being encoded stays inside the work folder until its commit: a killed run leaves it
        # there, where the next run of this output removes it.
        try:
            sink = open_sink(args.output, source, y16=args.y_only, overwrite=args.overwrite, crf=args.crf,
                             inputs=inputs, codec=args.codec, copies=copies, size=size,
                             tmp_dir=None if work is None else work.path)  # fmt: skip
        except BaseException:
            if work is not None:
                work.release()
            raise
    if work is not None:
        sink = ResumableSink(work, sink, source.plane_format)
    opts = UpscaleOptions(args.tile, args.tile_overlap, args.downscale, args.y_only, overlap=not args.serial,
                          scene_cuts=scenes, done=done)  # fmt: skip
    with tqdm(total=source.total, unit="frame", disable=args.quiet, dynamic_ncols=True, file=sys.stderr) as bar:
        summary = run_upscale(source, runner, sink, opts, progress=bar)
    summary.weights = model_text or ""
    return summary
