"""``d3d bench``: per-backend latency per output frame (p50, p95), throughput and peak memory.

Each backend runs in its own process, so its peak memory is its own. Results are measurements for
the machine at hand, side by side in one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

from d3d.cli.commands import add_model_source, add_output_flags, dims_arg, int_at_least, model_source, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from d3d.runtime.backends import backend_names

    names = backend_names()
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=names,
        default=["pytorch", "onnxruntime"],
        metavar="BACKEND",
        help=f"backends to run, of: {', '.join(names)}",
    )
    parser.add_argument("--sizes", type=dims_arg("HxW"), nargs="+", default=[(68, 160)], metavar="HxW", help="LR sizes")
    parser.add_argument("--iterations", type=positive_int, default=5, help="timed windows per backend and size")
    parser.add_argument("--warmup", type=int_at_least(0), default=1, help="untimed windows before timing")
    add_model_source(parser)
    parser.add_argument("--threads", type=positive_int, help="CPU threads")
    parser.add_argument(
        "--pipeline-frames",
        type=int_at_least(0),
        default=8,
        help="also time the whole pipeline (decode, network, encode) on a clip of this many frames, 0 = skip",
    )
    tri = parser.add_argument_group("triton (the model served by Triton, streams of frames)")
    tri.add_argument("--url", metavar="HOST:PORT", help="a running d3d serve's gRPC address (default: start one "
                     "on free loopback ports with this model and --threads)")  # fmt: skip
    tri.add_argument("--streams", type=positive_int, nargs="+", default=[1, 2, 4, 8], metavar="N",
                     help="numbers of concurrent streams (videos) to measure")  # fmt: skip
    tri.add_argument("--stream-frames", type=positive_int, default=8, help="frames each stream sends")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    add_output_flags(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def _measure(spec: dict) -> dict:
    """Runs inside the worker process."""
    import statistics
    import time

    import numpy as np

    from d3d.runtime.backends import create_runner, get_backend, peak_rss_mb
    from d3d.runtime.models import ModelSource

    backend = get_backend(spec["backend"])
    source = ModelSource(**{**spec["source"], "path": Path(spec["source"]["path"]) if spec["source"]["path"] else None})
    runner = create_runner(backend, source, backend.options(threads=spec["threads"]))
    cfg = runner.config
    rows = []
    rng = np.random.default_rng(0)
    for h, w in spec["sizes"]:
        window = rng.random((1, cfg.in_channels, cfg.frames, h, w), dtype=np.float32)
        for _ in range(spec["warmup"]):
            runner.infer(window)
        times = []
        for _ in range(spec["iterations"]):
            t0 = time.perf_counter()
            runner.infer(window)
            times.append(time.perf_counter() - t0)
        pipe = _pipeline(runner, h, w, spec.get("pipeline_frames", 0))
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        rows.append(
            {
                "backend": runner.describe(),
                "lr": [h, w],
                "hr": [h * cfg.scale, w * cfg.scale],
                "p50_ms": statistics.median(times) * 1e3,
                "p95_ms": p95 * 1e3,
                "frames_per_s": 1.0 / statistics.median(times),
                **pipe,
            }
        )
    peak = peak_rss_mb()
    for r in rows:
        r["peak_rss_mb"] = peak
        r["model"] = source.describe()
    return {"rows": rows}


PIPELINE_REPEATS = 3


def _pipeline(runner, h: int, w: int, frames: int) -> dict:
    """Frames/s of the whole pipeline on an H.264 clip of ``frames`` LR frames into an H.264 file:
    serial (one thread) and overlapped (decode and encode threads beside the network)."""
    import tempfile

    from d3d.runtime.timing import synthetic_clip, time_io, time_network, time_pipeline

    if frames <= 0:
        return {}
    with tempfile.TemporaryDirectory(prefix="d3d-bench-") as tmp:
        clip = synthetic_clip(Path(tmp) / "in.mp4", h, w, frames)
        time_pipeline(runner, clip, Path(tmp) / "warm.mp4", overlap=True)  # warm caches and threads
        # Interleaved repeats, best of each: on a shared machine, load from others comes and goes.
        serial, overlapped, network, io = 0.0, 0.0, 0.0, 0.0
        for i in range(PIPELINE_REPEATS):
            io = max(io, time_io(clip, Path(tmp) / f"io{i}.mp4", runner.config.scale))
            serial = max(serial, time_pipeline(runner, clip, Path(tmp) / f"s{i}.mp4", overlap=False).fps)
            overlapped = max(overlapped, time_pipeline(runner, clip, Path(tmp) / f"o{i}.mp4", overlap=True).fps)
            network = max(network, time_network(runner, clip))
    return {
        "pipeline_frames": frames,
        "pipeline_serial_fps": serial,
        "pipeline_fps": overlapped,
        "pipeline_network_fps": network,  # the network alone on the same frames
        "pipeline_io_fps": io,  # decode + conversions + encode alone (what the overlap hides)
    }


def product_on_stdout(args: argparse.Namespace) -> bool:
    """A worker process (``--worker``) returns its figures on stdout to the parent."""
    return bool(getattr(args, "worker", None))


def run(args: argparse.Namespace) -> int:
    from d3d.errors import D3DError, SDKMissing
    from d3d.outputs import check_target, write_output
    from d3d.runtime.backends import get_backend

    if args.worker:
        print(json.dumps(_measure(json.loads(args.worker))))
        return 0
    source = model_source(args)
    if args.json:
        check_target(args.json, inputs=(source.path,), overwrite=args.overwrite, what="--json")
    rows = []
    skipped: dict[str, str] = {}
    codes: dict[str, int] = {}
    streams: list[dict] = []
    for backend in args.backends:
        if get_backend(backend).remote:
            why = get_backend(backend).unavailable()
            if why:
                skipped[backend], codes[backend] = why, 2
                continue
            print(f"benchmarking {backend} ...", flush=True)
            streams = _bench_streams(args, source)
            continue
        spec = {
            "backend": backend,
            "sizes": args.sizes,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "source": {**source.__dict__, "path": str(source.path) if source.path else None},
            "threads": args.threads,
            "pipeline_frames": args.pipeline_frames,
        }
        entry = get_backend(backend)
        why = entry.unavailable()
        if why:  # no process to start: say why, as a run of that backend would
            skipped[backend], codes[backend] = why, 2 if entry.missing_sdk else 1
            continue
        print(f"benchmarking {backend} ...", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "d3d.cli", "bench", "--worker", json.dumps(spec)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            why = lines[-1] if lines else f"exit code {proc.returncode}"
            skipped[backend] = why.removeprefix("d3d: error: ")
            codes[backend] = proc.returncode
            continue
        rows += json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    if not rows and not streams:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        # Exit 2 where every backend failed for a missing SDK, as a single run of that backend would.
        raise (SDKMissing if codes and all(c == 2 for c in codes.values()) else D3DError)(
            f"no backend could run: {why}"
        )
    head = (
        f"{'backend':<36} {'LR':>9} {'HR':>10} {'p50 ms':>9} {'p95 ms':>9} {'frames/s':>9} "
        f"{'net f/s':>9} {'pipe f/s':>9} {'serial':>9} {'peak MB':>8}"
    )
    if streams:
        _print_streams(streams)
    if rows:
        print(head)
        print("-" * len(head))
    for r in rows:
        lr, hr = "x".join(map(str, r["lr"])), "x".join(map(str, r["hr"]))
        pipe = f"{'-':>9} {'-':>9} {'-':>9}"
        if "pipeline_fps" in r:
            pipe = f"{r['pipeline_network_fps']:9.3f} {r['pipeline_fps']:9.3f} {r['pipeline_serial_fps']:9.3f}"
        print(
            f"{r['backend']:<36} {lr:>9} {hr:>10} {r['p50_ms']:9.1f} {r['p95_ms']:9.1f} "
            f"{r['frames_per_s']:9.3f} {pipe} {r['peak_rss_mb']:8.0f}"
        )
    if any("pipeline_fps" in r for r in rows):
        print(
            "frames/s: the network on random windows; on a clip (H.264 in and out): net f/s the network alone, "
            "pipe f/s decode + network + encode overlapped, serial the same in one thread"
        )
        print(
            "I/O alone (decode, conversions, encode) per row: "
            + ", ".join(f"{r['pipeline_io_fps']:.1f} frames/s" for r in rows if "pipeline_io_fps" in r)
        )
    print(f"model: {source.describe()}")
    from d3d.ops import cpu_kernel_summary

    cpu_line = cpu_kernel_summary()
    print(cpu_line)
    for backend, why in skipped.items():
        print(f"skipped {backend}: {why}")
    if args.json:
        report = json.dumps(
            {"model": source.describe(), "cpu": cpu_line, "rows": rows, "streams": streams, "skipped": skipped},
            indent=1,
        )
        write_output(args.json, report, inputs=(source.path,), overwrite=args.overwrite)
    return 0


def _bench_streams(args: argparse.Namespace, source) -> list[dict]:
    """Triton: for each size and number of concurrent streams, output frames/s over all streams and the
    p50/p99 of each request's round trip, next to the local runner the server runs (one stream, same
    frames, same process as this bench)."""
    import contextlib
    import statistics
    import threading
    import time

    import numpy as np

    from d3d.runtime.backends import create_runner, get_backend
    from d3d.runtime.frames import InFrame
    from d3d.runtime.windows import UpscaleOptions, _network

    out: list[dict] = []
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(_bench_server(source, args.threads))
        local_backend = get_backend("onnxruntime")
        local = create_runner(local_backend, source, local_backend.options(threads=args.threads))
        stack.callback(local.close)
        remote_backend = get_backend("triton")
        for h, w in args.sizes:
            rng = np.random.default_rng(0)
            clip = [rng.random((1, h, w), dtype=np.float32) for _ in range(args.stream_frames)]

            def frames(clip=clip):
                return (InFrame(i, y) for i, y in enumerate(clip))

            t0 = time.perf_counter()
            for _ in _network(frames(), local, UpscaleOptions(), [0.0]):
                pass
            local_fps = len(clip) / (time.perf_counter() - t0)
            for n in args.streams:
                runners = [create_runner(remote_backend, source, remote_backend.options(url=url)) for _ in range(n)]
                errors: list[BaseException] = []

                def stream(runner, errors=errors):
                    try:
                        for _ in _network(frames(), runner, UpscaleOptions(), [0.0]):
                            pass
                    except BaseException as exc:
                        errors.append(exc)

                threads = [threading.Thread(target=stream, args=(r,)) for r in runners]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                seconds = time.perf_counter() - t0
                latencies = sorted(x for r in runners for x in r.latencies)
                for r in runners:
                    r.close()
                if errors:
                    raise errors[0]
                p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
                out.append({
                    "backend": runners[0].describe(), "lr": [h, w], "streams": n, "frames": n * len(clip),
                    "frames_per_s": n * len(clip) / seconds, "p50_ms": statistics.median(latencies) * 1e3,
                    "p99_ms": p99 * 1e3, "local_frames_per_s": local_fps, "local": local.describe(),
                })  # fmt: skip
    return out


@contextlib.contextmanager
def _bench_server(source, threads):
    """A d3d serve server for the bench on free loopback ports: its gRPC address."""
    import tempfile

    from d3d.cli.commands.serve import model_identity
    from d3d.runtime.backends import create_runner, get_backend
    from d3d.runtime.serving import (
        ModelSettings,
        Ports,
        Server,
        find_server,
        free_port,
        serving_env,
        write_python_repository,
    )  # fmt: skip

    install, env = find_server(), serving_env()
    backend = get_backend("onnxruntime")
    runner = create_runner(backend, source, backend.options(threads=threads))
    identity = model_identity(source, runner)
    runner.close()
    settings = ModelSettings(source={"kind": source.kind, "path": str(source.path) if source.path else None,
                                     "sha256": source.sha256}, threads=threads, identity=identity)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="d3d-bench-serve-") as tmp:
        write_python_repository(Path(tmp), settings, env_path=env)
        server = Server(install, Path(tmp), Ports(free_port(), free_port(), free_port()), exit_timeout=5)
        server.start()
        try:
            server.wait_ready()
            yield f"127.0.0.1:{server.ports.grpc}"
        finally:
            server.stop()


def _print_streams(rows: list[dict]) -> None:
    head = (
        f"{'triton (server)':<36} {'LR':>9} {'streams':>8} {'frames/s':>9} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'local f/s':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        lr = "x".join(map(str, r["lr"]))
        print(
            f"{'all streams together':<36} {lr:>9} {r['streams']:>8} {r['frames_per_s']:9.3f} {r['p50_ms']:9.1f} "
            f"{r['p99_ms']:9.1f} {r['local_frames_per_s']:10.3f}"
        )
    print(f"server: {rows[0]['backend']}; local: {rows[0]['local']} in this process, one stream, the same frames")
    print("p50/p99: each request's round trip (one LR frame in, the frames it completes out)")
