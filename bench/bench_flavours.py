"""The three export flavours side by side on ONNX Runtime's CPU provider, interleaved in one run.

    python bench/bench_flavours.py [--size 68x160] [--repeats 5] [--threads 2] [--random-init] [--json out.json]

custom: one ``d3d::DeformConv3d`` node per layer, run by our op library (libd3d_ort_ops.so);
gridsample: standard GridSample + Conv (``--flavour gridsample``, alias ``--portable``); deformconv:
standard DeformConv-19 nodes, one per time tap (``--flavour deformconv``). All three exported fp32 in
this run from one model (the shipped one, or seeded random weights as ``d3d bench`` uses).

Each model runs in its own process that imports ONNX Runtime and NumPy only, so its peak resident
memory (VmHWM) is the model's own. The three processes stay alive together and are driven in turn,
one window each per round, the order rotated every round, so a change of the machine's load falls on
all three alike; the medians over the rounds and their ratios are reported, wall time and the
process's CPU time (which moves less with other load). Not a test: the numbers depend on the machine
and on its load, which is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import cpu_description

FLAVOURS = {
    "custom": "d3d::DeformConv3d node, our op library",
    "gridsample": "GridSample + Conv (standard ops)",
    "deformconv": "DeformConv-19 per time tap (standard ops)",
}


def _status_mb(key: str) -> float:
    # VmHWM (peak resident) starts afresh with the exec; ru_maxrss would carry the parent's peak over.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _worker(spec: dict) -> None:
    """Runs in a fresh process (ONNX Runtime and NumPy only): one window per ``run`` line on stdin."""
    import time

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    if spec.get("ops_library"):
        options.register_custom_ops_library(spec["ops_library"])
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    h, w = spec["size"]
    window = np.random.default_rng(0).random((1, 1, 7, h, w), dtype=np.float32)
    print(json.dumps({"loaded_mb": _status_mb("VmRSS"), "onnxruntime": ort.__version__}), flush=True)
    out = None
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        out = session.run(None, {"lr": window})[0]
        print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}), flush=True)
    np.save(spec["output"], out)
    print(json.dumps({"peak_mb": _status_mb("VmHWM")}), flush=True)


def _model(checkpoint: Path | None):
    import torch

    from d3d import D3Dnet, load_checkpoint

    if checkpoint is not None:
        return load_checkpoint(checkpoint).eval(), str(checkpoint)
    torch.manual_seed(0)  # the weights `d3d bench` uses without a checkpoint
    return D3Dnet().eval(), "random weights (seed 0)"


def _export(folder: Path, model) -> dict[str, Path]:
    import logging

    from d3d.export import ExportOptions, export_onnx

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    paths = {}
    for flavour in FLAVOURS:
        path = folder / f"d3dnet_{flavour}.onnx"
        proto = export_onnx(model, path, ExportOptions(flavour=flavour))
        opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        print(f"exported {flavour} (opset {opset}, {path.stat().st_size / 2**20:.1f} MB)", file=sys.stderr)
        paths[flavour] = path
    return paths


class _Worker:
    def __init__(self, spec: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"bench_flavours: a worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._reply()

    def finish(self) -> dict:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        reply = self._reply()
        self.proc.wait()
        return reply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="68x160", help="LR frame HxW (default 68x160: 272x640 out)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each times one window per flavour")
    ap.add_argument("--warmup", type=int, default=1, help="untimed windows per flavour first")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--checkpoint", type=Path, help="model weights (default: the shipped model)")
    ap.add_argument("--random-init", action="store_true", help="seeded random weights instead")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(json.loads(args.worker))
        return
    from d3d.native_libs import ort_ops_library
    from d3d.runtime.models import SHIPPED_MODEL

    library = ort_ops_library()
    if library is None:
        sys.exit("bench_flavours: libd3d_ort_ops.so is not built (make native)")
    checkpoint = None if args.random_init else (args.checkpoint or SHIPPED_MODEL)
    h, w = (int(v) for v in args.size.lower().split("x"))
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="d3d-bench-flavours-") as tmp:
        model, source = _model(checkpoint)
        paths = _export(Path(tmp), model)
        workers = {}
        for flavour, path in paths.items():
            spec = {
                "model": str(path),
                "size": [h, w],
                "threads": args.threads,
                "ops_library": str(library) if flavour == "custom" else None,
                "output": str(Path(tmp) / f"{flavour}.npy"),
            }
            workers[flavour] = _Worker(spec)
        names = list(workers)
        for _ in range(args.warmup):
            for name in names:
                workers[name].run()
        times: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(args.repeats):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]  # rotated: no flavour always runs first
                times[name].append(workers[name].run())
            print(f"round {r + 1}/{args.repeats} done", file=sys.stderr)
        peaks = {name: workers[name].finish() for name in names}
        import numpy as np

        outputs = {name: np.load(Path(tmp) / f"{name}.npy") for name in names}
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    results = {}
    for name in names:
        results[name] = {
            "wall_p50_s": statistics.median(t["wall_s"] for t in times[name]),
            "wall_min_s": min(t["wall_s"] for t in times[name]),
            "cpu_p50_s": statistics.median(t["cpu_s"] for t in times[name]),
            "peak_mb": peaks[name]["peak_mb"],
            "loaded_mb": workers[name].info["loaded_mb"],
            "max_abs_diff_vs_custom": float(np.abs(outputs[name] - outputs["custom"]).max()),
        }
    base = results["custom"]
    version = workers["custom"].info["onnxruntime"]
    print(f"{cpu_description()}, {os.cpu_count()} CPUs, {args.threads} threads, onnxruntime {version}")
    print(f"model: {source}; LR {h}x{w} x 7 frames -> HR {4 * h}x{4 * w}; {args.repeats} rounds, {args.warmup} warm-up")
    print(f"before: {uptime_before}\nafter:  {uptime_after}")
    head = (
        f"{'flavour':<11} {'p50 wall s':>10} {'min s':>7} {'p50 CPU s':>9} {'peak MB':>8} {'loaded MB':>9} "
        f"{'wall x':>7} {'CPU x':>6} {'peak x':>6} {'max |diff|':>10}"
    )
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        print(
            f"{name:<11} {r['wall_p50_s']:10.2f} {r['wall_min_s']:7.2f} {r['cpu_p50_s']:9.2f} {r['peak_mb']:8.0f} "
            f"{r['loaded_mb']:9.0f} {r['wall_p50_s'] / base['wall_p50_s']:7.2f} "
            f"{r['cpu_p50_s'] / base['cpu_p50_s']:6.2f} {r['peak_mb'] / base['peak_mb']:6.2f} "
            f"{r['max_abs_diff_vs_custom']:10.1e}"
        )
    print("(x: ratio to the custom flavour; max |diff|: largest output difference from the custom flavour)")
    if args.json:
        report = {
            "size": [h, w],
            "threads": args.threads,
            "repeats": args.repeats,
            "model": source,
            "cpu": cpu_description(),
            "uptime": [uptime_before, uptime_after],
            "results": results,
            "times": times,
        }
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
