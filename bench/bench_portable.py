"""The portable ONNX model before and after issue 12, side by side in one run, on ONNX Runtime (CPU).

    python bench/bench_portable.py [--size 68x160] [--iterations 3] [--threads 2] [--json out.json]

"before": every DeformConv3d as one 5-D GridSample over all 27 taps plus one 1x1x1 Conv (opset 20), the
form the exporter wrote until then. "after": what ``d3d export --portable`` writes now for D3Dnet, one
4-D GridSample and one 1x1x1 Conv per kernel time index, partial outputs summed (opset 18). Same model
(the paper's x4 D3Dnet, seeded random weights as ``d3d bench`` uses), same input window.

Each model runs in its own process that imports ONNX Runtime and NumPy only, so its peak resident
memory is the model's own: reported as the peak (ru_maxrss) and the resident size after the session
was created (weights, graph) — their difference is what inference added. Not a test: the numbers
depend on the machine and on its load, which is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import cpu_description

FORMS = {"before": "5-D GridSample per layer (opset 20)", "after": "4-D GridSample per kernel time index (opset 18)"}


def _worker(spec: dict) -> tuple[dict, object]:
    """Runs in a fresh process: ONNX Runtime and NumPy only."""
    import statistics
    import time

    import numpy as np
    import onnxruntime as ort

    def status_mb(key: str) -> float:
        # VmHWM (peak resident) starts afresh with the exec; ru_maxrss would carry the parent's peak over.
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.enable_cpu_mem_arena = spec["arena"]
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    loaded = status_mb("VmRSS")
    h, w = spec["size"]
    window = np.random.default_rng(0).random((1, 1, 7, h, w), dtype=np.float32)
    for _ in range(spec["warmup"]):
        session.run(None, {"lr": window})
    times = []
    for _ in range(spec["iterations"]):
        t0 = time.perf_counter()
        out = session.run(None, {"lr": window})[0]
        times.append(time.perf_counter() - t0)
    return {
        "p50_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "rss_after_load_mb": loaded,
        "peak_rss_mb": status_mb("VmHWM"),
        "onnxruntime": ort.__version__,
    }, out


def _export(folder: Path) -> dict[str, Path]:
    import logging

    import torch

    from d3d import D3Dnet
    from d3d.export import ExportOptions, export_onnx, portable_form
    from d3d.export.portable import forced_form

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(0)  # the weights `d3d bench` uses without a checkpoint
    model = D3Dnet().eval()
    paths = {}
    for name in FORMS:
        path = folder / f"d3dnet_portable_{name}.onnx"
        with forced_form("volume" if name == "before" else None):
            proto = export_onnx(model, path, ExportOptions(portable=True, opset=20 if name == "before" else None))
        print(f"exported {name}: {portable_form(proto)}", file=sys.stderr)
        paths[name] = path
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="68x160", help="LR frame HxW (default 68x160: 272x640 out)")
    ap.add_argument("--iterations", type=int, default=3, help="timed windows per model")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument(
        "--no-arena", action="store_true", help="ONNX Runtime without its CPU memory arena (plain malloc/free)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import numpy as np

        spec = json.loads(args.worker)
        row, out = _worker(spec)
        np.save(spec["output"], out)
        print(json.dumps(row))
        return
    h, w = (int(v) for v in args.size.lower().split("x"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="d3d-bench-portable-") as tmp:
        paths = _export(Path(tmp))
        for name, path in paths.items():
            spec = {
                "model": str(path),
                "size": [h, w],
                "threads": args.threads,
                "arena": not args.no_arena,
                "warmup": args.warmup,
                "iterations": args.iterations,
                "output": str(Path(tmp) / f"{name}.npy"),
            }
            load_before = os.getloadavg()[0]
            print(f"running {name} ...", file=sys.stderr)
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                sys.exit(f"bench_portable: the {name} model failed: {proc.stderr.strip().splitlines()[-1:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["load_1min"] = [load_before, os.getloadavg()[0]]
            row["file_mb"] = path.stat().st_size / 2**20
            results[name] = row
        import numpy as np

        outputs = [np.load(Path(tmp) / f"{name}.npy") for name in FORMS]
        max_diff = float(np.abs(outputs[0] - outputs[1]).max())
    ort_version = results["after"]["onnxruntime"]
    print(f"{cpu_description()}, {os.cpu_count()} CPUs, {args.threads} threads, onnxruntime {ort_version}")
    arena = "without" if args.no_arena else "with"
    print(
        f"LR {h}x{w} -> HR {4 * h}x{4 * w}, {args.iterations} timed windows after {args.warmup} warm-up, {arena} arena"
    )
    head = f"{'model':<8} {'form':<46} {'p50 s':>8} {'min s':>8} {'peak MB':>8} {'loaded MB':>9} {'load 1m':>11}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        load = "{:.1f}->{:.1f}".format(*r["load_1min"])
        print(
            f"{name:<8} {FORMS[name]:<46} {r['p50_s']:8.2f} {r['min_s']:8.2f} {r['peak_rss_mb']:8.0f} "
            f"{r['rss_after_load_mb']:9.0f} {load:>11}"
        )
    before, after = results["before"], results["after"]
    print(
        f"after/before: time {after['p50_s'] / before['p50_s']:.2f}x, peak memory "
        f"{after['peak_rss_mb'] / before['peak_rss_mb']:.2f}x; outputs differ by at most {max_diff:.1e}"
    )
    if args.json:
        report = {
            "size": [h, w],
            "threads": args.threads,
            "arena": not args.no_arena,
            "cpu": cpu_description(),
            "max_abs_diff": max_diff,
            "results": results,
        }
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
