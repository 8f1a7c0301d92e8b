"""The parts of ``bench/gpu_check.py`` (``make gpu-check``) that can run without a GPU: arguments, the
no-GPU refusal, the parity checks (run here on the CPU op against the pure-PyTorch reference, and shown
to fail on a wrong op), report writing. The GPU parts themselves have not run in CI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sizes", "180"], "expected HxW"),
        (["--sizes", "4x320"], "H, W >= 8"),
        (["--repeat", "0"], "--repeat must be >= 1"),
        (["--trt-include", "/nonexistent"], "has no NvInferRuntime.h"),
    ],
)
def test_bad_arguments(gc, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        gc.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_defaults(gc):
    args = gc.parse_args([])
    assert args.sizes == [(180, 320), (68, 160)] and args.build == Path("build-gpu") and args.repeat == 20


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the refusal path does not apply")
def test_without_a_gpu_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("gpu-check: error: no CUDA GPU") and not (tmp_path / "o").exists()


def test_make_target_uses_the_existing_python_only():
    """make gpu-check neither creates the pinned venv nor installs anything."""
    out = subprocess.run(["make", "-n", "gpu-check"], capture_output=True, text=True, cwd=REPO).stdout
    assert "bench/gpu_check.py" in out
    assert "venv" not in out and "pip install" not in out


def test_parity_checks_pass_for_the_cpu_op_and_fail_for_a_wrong_one(gc, native):
    from d3d.ops import deform_conv3d, deform_conv3d_reference

    gen = torch.Generator().manual_seed(0)
    rows = gc.compare_forward(deform_conv3d, deform_conv3d_reference, "cpu", ("float32", "float64"), gen)
    assert len(rows) == 2 * len(gc.PARITY_CASES) and all(r["passed"] for r in rows), rows

    def shifted(*args, **kw):  # a 0.1 % error: over the fp32 tolerance
        y = deform_conv3d(*args, **kw)
        return y + 1e-3 * y.abs().max()

    rows = gc.compare_forward(shifted, deform_conv3d_reference, "cpu", ("float32",), gen)
    assert not any(r["passed"] for r in rows)
    grads = gc.compare_gradients(deform_conv3d, deform_conv3d_reference, "cpu", gen)
    assert len(grads) == 4 * len(gc.PARITY_CASES) and all(r["passed"] for r in grads), grads


def test_report_files_and_verdict(gc, tmp_path):
    report = {
        "environment": {"date": "2026-11-26", "torch": "2.11", "cuda": "13.0", "python": "3.11", "machine": "m"},
        "build": {"ok": True, "plugin": True, "harness_gpu": "GPU: enqueue fp32 vs CPU fp64: max abs error 1e-06"},
        "forward": [{"case": 0, "dtype": "float16", "error": 3e-3, "tolerance": 1e-2, "passed": True}],
        "gradients": [{"case": 0, "grad": "offset", "error": 2e-5, "tolerance": 1e-4, "passed": True}],
        "op_bench": [
            {"size": "180x320", "dtype": "float16", "deform_conv3d_ms": 4.0, "conv3d_cudnn_ms": 1.0, "ratio": 4.0,
             "deform_tflops": 5.0, "cudnn_tflops": 20.0}
        ],
        "network": [{"size": "180x320", "output": "720x1280", "dtype": "float16", "eager_ms": 50.0, "graph_ms": 40.0,
                     "graph_fps": 25.0, "peak_mem_mb": 900.0}],
        "errors": {},
    }  # fmt: skip
    gc.write_report(tmp_path, report)
    assert json.loads((tmp_path / "gpu_check.json").read_text())["build"]["plugin"] is True
    md = (tmp_path / "gpu_check.md").read_text()
    assert "RESULT: PASSED" in md and "| 180x320 | 720x1280 | float16 | 50.0 | 40.0 | 25.0 | 900 |" in md
    report["gradients"][0]["passed"] = False
    assert not gc.passed(report) and "RESULT: FAILED" in gc.format_table(report)
    report["gradients"][0]["passed"] = True
    report["build"]["ok"] = False
    assert not gc.passed(report)


def test_harness_line_is_found(gc):
    log = "seed 1\nGPU: enqueue NOT run (no CUDA device: none)\n435 checks, 0 failed\n"
    assert gc.harness_gpu_line(log) == "GPU: enqueue NOT run (no CUDA device: none)"
    assert gc.harness_gpu_line("nothing") is None
    # ctest -V prefixes lines with the test number; the release and ASan runs print the same lines.
    log = (
        "4: GPU: enqueue fp32 vs CPU fp64: max abs error 1e-07\n5: GPU: enqueue fp32 vs CPU fp64: max abs error 1e-07\n"
    )
    log += "5: GPU: enqueue fp16 vs CPU fp64: max abs error 1e-03\n"
    assert gc.harness_gpu_line(log) == (
        "GPU: enqueue fp32 vs CPU fp64: max abs error 1e-07; GPU: enqueue fp16 vs CPU fp64: max abs error 1e-03"
    )


def test_dry_run_prints_the_sm90_build_list_and_a_budget_within_8_minutes(tmp_path):
    """CI's check of make gpu-check without a GPU: the build list (sm_90 only, just the targets it needs,
    the harness under compute-sanitizer) and a time budget that fits the 8-minute limit."""
    trt = REPO.parent / "shared" / "third_party" / "tensorrt-10.16" / "include"
    argv = [sys.executable, str(SCRIPT), "--dry-run", "--build", str(tmp_path / "b")]
    if (trt / "NvInferRuntime.h").is_file():
        argv += ["--trt-include", str(trt)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "-DCMAKE_CUDA_ARCHITECTURES=90-real" in out and "native" not in out
    build = next(line for line in out.splitlines() if line.startswith("step build:"))
    assert "--target d3d_kernels_cuda" in build
    if "--trt-include" in argv:
        assert "d3d_trt_plugin test_trt_harness" in build
        assert "step memcheck: compute-sanitizer --tool memcheck" in out
    total = next(line for line in out.splitlines() if line.startswith("budget total"))
    seconds, limit = int(total.split()[2]), int(total.split()[5])
    assert limit == 480 and 0 < seconds <= limit
    assert not (tmp_path / "b").exists()  # nothing was built


def test_psnr_against_hand_computed_values(gc):
    """The fp16-vs-fp32 figure of the network rows: 10 log10(peak^2 / MSE)."""
    want = torch.zeros(2, 3)
    assert gc.psnr_db(want + 0.1, want) == pytest.approx(20.0)  # MSE 0.01
    assert gc.psnr_db(want + 0.5, want, peak=0.5) == pytest.approx(0.0)
    assert gc.psnr_db(want, want) == float("inf")
