"""Numerical parity of an exported model: PyTorch vs ONNX Runtime (vs TensorRT where installed),
through Polygraphy's Comparator, on seeded random inputs and on real frames.

Verification sits above export and runtime (it uses both), beside the CLI."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator
from polygraphy.comparator.compare import SimpleCompareFunc

from d3d.errors import D3DError
from d3d.export.exporter import INPUT_NAME, OUTPUT_NAME, model_config, resolve_precision
from d3d.export.onnx_import import model_for_checkpoint, model_from_onnx

# Default tolerances per precision (elementwise: an element fails only if it exceeds both).
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "bf16": (6e-2, 6e-2)}


class TorchRunner(BaseRunner):
    """Polygraphy runner for a PyTorch module on any device (Polygraphy's own PytRunner is CUDA-only
    and iterates a single output tensor as if it were a list of outputs)."""

    def __init__(self, model: torch.nn.Module, input_metadata: TensorMetadata, device: str = "cpu", name=None):
        super().__init__(name=name, prefix="pytorch")
        self._model, self._meta, self._device = model, input_metadata, torch.device(device)

    def activate_impl(self):
        self._model = self._model.eval().to(self._device)

    def get_input_metadata_impl(self):
        return self._meta

    def infer_impl(self, feed_dict):
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(feed_dict[INPUT_NAME])).to(self._device)
            start = time.perf_counter()
            y = self._model(x)
            self.inference_time = time.perf_counter() - start
        return OrderedDict([(OUTPUT_NAME, y.cpu().numpy())])

    def deactivate_impl(self):
        pass


@dataclass
class VerifyOptions:
    shapes: Sequence[tuple[int, int]] = ((32, 32), (40, 24))
    batch: int = 1
    seed: int = 0
    real_frames: bool = True
    precision: str | None = None  # None: the graph's (another one is refused: TensorRT builds strongly typed)
    atol: float | None = None
    rtol: float | None = None
    backends: Sequence[str] = ("pytorch", "onnxruntime", "tensorrt")
    plugin_library: Path | None = None


@dataclass
class VerifyResult:
    passed: bool
    atol: float
    rtol: float
    rows: list[dict] = field(default_factory=list)
    runners: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)  # runners whose outputs held NaN/Inf (a failure)


def _inputs(config: dict, opts: VerifyOptions) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(opts.seed)
    frames, ch = config["frames"], config["in_channels"]
    for h, w in opts.shapes:
        x = rng.random((opts.batch, ch, frames, h, w), dtype=np.float32)
        yield f"random {h}x{w}", {INPUT_NAME: x}
    if opts.real_frames and ch == 1:
        from d3d.runtime.sources import read_window_y

        h, w = opts.shapes[0]
        y = read_window_y(frames, (h, w))
        yield f"real frames {h}x{w}", {INPUT_NAME: np.repeat(y[None, None], opts.batch, axis=0)}


def profile_for(config: dict, shapes: Sequence[tuple[int, int]], batch: int) -> tuple[tuple[int, ...], ...]:
    """A TensorRT optimization profile (min, opt, max input shapes) covering every verification input."""
    hs, ws = [s[0] for s in shapes], [s[1] for s in shapes]
    ch, frames = config["in_channels"], config["frames"]
    hi = (batch, ch, frames, max(hs), max(ws))
    return (1, ch, frames, min(hs), min(ws)), hi, hi


def _tensorrt_runner(model_path: Path, opts: VerifyOptions, config: dict):
    """A Polygraphy TensorRT runner with the DeformConv3d plugin, or a reason why there is none."""
    from d3d.export.tensorrt import build_engine_bytes, find_plugin_library
    from d3d.runtime.backends import get_backend

    why = get_backend("tensorrt").unavailable()
    if why:
        return None, why

    try:
        from polygraphy.backend.trt import TrtRunner
    except ImportError as exc:
        return None, f"Polygraphy's TensorRT backend is unavailable ({exc})"
    plugin = opts.plugin_library or find_plugin_library()
    profile = profile_for(config, opts.shapes, opts.batch)
    engine = build_engine_bytes(model_path, profile=profile, plugin_library=plugin)
    from polygraphy.backend.trt import EngineFromBytes

    return TrtRunner(EngineFromBytes(engine), name="tensorrt"), None


def tolerances(opts: VerifyOptions) -> tuple[float, float]:
    for name, value in (("--atol", opts.atol), ("--rtol", opts.rtol)):
        if value is not None and not value >= 0:  # also NaN
            raise D3DError(f"{name} must be >= 0, got {value}")
    atol, rtol = TOLERANCES[opts.precision or "fp32"]
    return (opts.atol if opts.atol is not None else atol, opts.rtol if opts.rtol is not None else rtol)


def verify(model_path: Path, proto: onnx.ModelProto, checkpoint: Path | None, opts: VerifyOptions) -> VerifyResult:
    from d3d.runtime.ort import create_session

    source = str(model_path)
    config = model_config(proto, source)
    opts = dataclasses.replace(opts, precision=resolve_precision(proto, opts.precision, source))
    notes: list[str] = []
    if checkpoint is not None:
        model, notes = model_for_checkpoint(proto, checkpoint, source)
    else:
        model = model_from_onnx(proto, source)
    meta = TensorMetadata().add(INPUT_NAME, np.float32, (opts.batch, config["in_channels"], config["frames"], -1, -1))
    runners: list[BaseRunner] = []
    skipped: dict[str, str] = {}
    if "pytorch" in opts.backends:
        runners.append(TorchRunner(model, meta, name="pytorch"))
    if "onnxruntime" in opts.backends:
        runners.append(OnnxrtRunner(lambda: create_session(proto), name="onnxruntime"))
    if "tensorrt" in opts.backends:
        runner, why = _tensorrt_runner(model_path, opts, config)
        if runner is None:
            skipped["tensorrt"] = why
        else:
            runners.append(runner)
    if len(runners) < 2:
        raise D3DError(f"need at least two backends to compare, have {[r.name for r in runners]}")
    atol, rtol = tolerances(opts)

    labelled = list(_inputs(config, opts))
    results = Comparator.run(runners, data_loader=[feed for _, feed in labelled])
    # NaN compared with NaN is "equal" to the comparator: any non-finite output fails on its own.
    nonfinite = []
    for runner_name, iterations in results:
        for (label, _), outputs in zip(labelled, iterations, strict=True):
            for out_name, value in outputs.items():
                bad = int((~np.isfinite(np.asarray(value, dtype=np.float32))).sum())
                if bad:
                    nonfinite.append(f"{runner_name.split('-')[0]} gave {bad} NaN/Inf values in {out_name} ({label})")

    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
    rows = []
    # One AccuracyResult per comparison function (we pass one): runner pair -> per-iteration outputs.
    for (name0, name1), iterations in accuracy[0].items():
        for (label, _), outputs in zip(labelled, iterations, strict=True):
            for out_name, r in outputs.items():
                rows.append(
                    {
                        "reference": name0.split("-")[0],
                        "backend": name1.split("-")[0],
                        "input": label,
                        "output": out_name,
                        "max_abs": float(r.max_absdiff),
                        "mean_abs": float(r.mean_absdiff),
                        "max_rel": float(r.max_reldiff),
                        "mean_rel": float(r.mean_reldiff),
                        "passed": bool(r),
                    }
                )
    return VerifyResult(
        passed=bool(accuracy) and all(r["passed"] for r in rows) and not nonfinite,
        atol=atol,
        rtol=rtol,
        rows=rows,
        runners=[r.name for r in runners],
        skipped=skipped,
        notes=notes,
        nonfinite=nonfinite,
    )


def format_table(result: VerifyResult) -> str:
    head = f"{'comparison':<26} {'input':<20} {'max abs':>10} {'mean abs':>10} {'max rel':>10} {'mean rel':>10}  result"
    lines = [head, "-" * len(head)]
    for r in result.rows:
        pair = f"{r['reference']} vs {r['backend']}"
        lines.append(
            f"{pair:<26} {r['input']:<20} {r['max_abs']:10.3e} {r['mean_abs']:10.3e} {r['max_rel']:10.3e} "
            f"{r['mean_rel']:10.3e}  {'ok' if r['passed'] else 'FAIL'}"
        )
    lines.append(f"tolerance: atol {result.atol:g}, rtol {result.rtol:g} (elementwise)")
    return "\n".join(lines)


VERIFY_BACKENDS = ("pytorch", "onnxruntime", "tensorrt")  # runners Polygraphy compares here


def report_json(result: VerifyResult, model_path: Path) -> str:
    """The comparison as JSON text (the CLI writes it through the output policy)."""
    report = {
        "model": str(model_path),
        "passed": result.passed,
        "atol": result.atol,
        "rtol": result.rtol,
        "runners": result.runners,
        "skipped": result.skipped,
        "rows": result.rows,
    }
    return json.dumps(report, indent=1)
