"""``d3d bench``: per-backend latency per output frame (p50, p95), throughput and peak memory.

Each backend runs in its own process, so its peak memory is its own. Results are measurements for
the machine at hand, side by side in one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from d3d.commands import dims_arg

BACKENDS = ("pytorch", "onnxruntime", "onnxruntime-portable", "tensorrt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["pytorch", "onnxruntime"])
    parser.add_argument("--sizes", type=dims_arg("HxW"), nargs="+", default=[(68, 160)], help="LR sizes HxW")
    parser.add_argument("--iterations", type=int, default=5, help="timed windows per backend and size")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, help="weights (default: seeded random initialisation)")
    parser.add_argument("--engine", type=Path, help="TensorRT engine (for the tensorrt backend)")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def _measure(spec: dict) -> dict:
    """Runs inside the worker process."""
    import statistics
    import time

    import numpy as np

    from d3d.runtime import runners, weights
    from d3d.runtime.runners import peak_rss_mb

    backend = spec["backend"]
    ckpt = Path(spec["checkpoint"]) if spec["checkpoint"] else None
    if backend.startswith("onnxruntime"):
        onnx, label = weights.onnx_for(ckpt, portable=backend.endswith("portable"))
        runner = runners.OrtRunner(onnx, threads=spec["threads"])
    else:
        engine = Path(spec["engine"]) if spec["engine"] else None
        runner, label = runners.create_runner(backend, engine=engine, checkpoint=ckpt, threads=spec["threads"])
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
            }
        )
    peak = peak_rss_mb()
    for r in rows:
        r["peak_rss_mb"] = peak
        r["weights"] = label
    return {"rows": rows}


def run(args: argparse.Namespace) -> int:
    from d3d.errors import D3DError

    if args.worker:
        print(json.dumps(_measure(json.loads(args.worker))))
        return 0
    rows = []
    skipped = {}
    for backend in args.backends:
        spec = {
            "backend": backend,
            "sizes": args.sizes,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "engine": str(args.engine) if args.engine else None,
            "threads": args.threads,
        }
        print(f"benchmarking {backend} ...", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", "d3d.cli", "bench", "--worker", json.dumps(spec)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            skipped[backend] = lines[-1] if lines else f"exit code {proc.returncode}"
            continue
        rows += json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    if not rows:
        raise D3DError("no backend could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    head = f"{'backend':<36} {'LR':>9} {'HR':>10} {'p50 ms':>9} {'p95 ms':>9} {'frames/s':>9} {'peak MB':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        lr, hr = "x".join(map(str, r["lr"])), "x".join(map(str, r["hr"]))
        print(
            f"{r['backend']:<36} {lr:>9} {hr:>10} {r['p50_ms']:9.1f} {r['p95_ms']:9.1f} "
            f"{r['frames_per_s']:9.3f} {r['peak_rss_mb']:8.0f}"
        )
    for backend, why in skipped.items():
        print(f"skipped {backend}: {why}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=1))
    return 0
