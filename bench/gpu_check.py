"""One command for a machine with an NVIDIA GPU (``make gpu-check``): builds the CUDA op and the TensorRT
plugin, checks the CUDA op against the CPU op, runs the plugin harness's ``enqueue`` on the GPU, and
benchmarks the op against cuDNN's ``conv3d`` and the whole network per frame (eager and CUDA graph).

    python bench/gpu_check.py [--out gpu-check] [--build build-gpu] [--trt-include DIR] [--sizes 180x320]

Uses the PyTorch already installed (any CUDA build; it never creates a virtual environment or downloads
anything) and the package from this source tree (or an install made with ``pip install --no-deps
--no-build-isolation .``). The TensorRT plugin and its harness need TensorRT's headers (``--trt-include``:
copy ``../shared/third_party/tensorrt-10.16/include`` along); without them that part is skipped and
reported as such. Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``; exit 0 when every check
passed, 1 when one failed, 2 when there is no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def use_source_tree() -> None:
    """Makes ``import d3d`` find this source tree's package unless one is installed, with ``d3d._plugins``
    mapped to ``plugins/`` as pyproject's package-dir does (the model layer reads the op contract there)."""
    import importlib.util

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if importlib.util.find_spec("d3d._plugins") is None:
        folder = REPO / "plugins"
        spec = importlib.util.spec_from_file_location(
            "d3d._plugins", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["d3d._plugins"] = module
        spec.loader.exec_module(module)


use_source_tree()

# Normalised tolerance per I/O type: max |got - want| / max |want|. Positions, weights and sums are fp32
# for every type; fp16/bf16 round the inputs, the column buffer and the output.
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
GRAD_TOLERANCE = 1e-4  # fp32 gradients, CUDA (atomics) vs CPU

# (N, C, O, T, H, W, kernel, stride, pad, dilation, groups, offset_groups, deform_dims)
PARITY_CASES: list[tuple] = [
    (1, 16, 16, 5, 20, 24, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, 1, "HW"),  # D3Dnet's layer, small
    (2, 8, 12, 4, 13, 11, (3, 3, 3), (1, 2, 1), (2, 1, 0), (2, 1, 1), 2, 2, "THW"),
    (1, 6, 4, 3, 9, 17, (1, 3, 5), (1, 1, 2), (0, 1, 2), (1, 2, 1), 2, 3, "TW"),
]


def dims(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or int(m[1]) < 8 or int(m[2]) < 8:
        raise argparse.ArgumentTypeError(f"expected HxW with H, W >= 8, got {text!r}")
    return int(m[1]), int(m[2])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for gpu_check.json / .md")
    ap.add_argument("--build", type=Path, default=Path("build-gpu"), help="CMake build folder (own, not build/)")
    ap.add_argument("--trt-include", type=Path, help="TensorRT headers (NvInferRuntime.h) for the plugin")
    ap.add_argument(
        "--cuda-arch", default="90-real", help="CMAKE_CUDA_ARCHITECTURES (default 90-real: sm_90 only, the H200)"
    )
    ap.add_argument("--skip-build", action="store_true", help="skip the CMake build and ctest")
    ap.add_argument("--sizes", type=dims, nargs="+", default=[(180, 320), (68, 160)], help="LR sizes HxW")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per benchmark (median reported)")
    ap.add_argument("--no-network", action="store_true", help="skip the whole-network benchmark")
    ap.add_argument(
        "--dry-run", action="store_true", help="print the build steps and the time budget, run nothing (no GPU needed)"
    )
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.trt_include is not None and not (args.trt_include / "NvInferRuntime.h").is_file():
        ap.error(f"--trt-include {args.trt_include} has no NvInferRuntime.h")
    return args


# --- Building ---------------------------------------------------------------------------------------


# Seconds one build step may take before it is stopped and reported as failed (a hang must not cost the
# GPU lease the checks after it): about 3x what the budget below allows each.
STEP_TIMEOUT_S = {"configure": 120, "build": 300, "ctest": 240, "memcheck": 240}


def _run(name: str, cmd: list[str], log) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    try:
        return subprocess.run(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            timeout=STEP_TIMEOUT_S.get(name),
        ).returncode
    except subprocess.TimeoutExpired:
        log.write(f"step {name}: stopped after {STEP_TIMEOUT_S[name]} s\n")
        return 124


def harness_gpu_line(ctest_log: str) -> str | None:
    """The harness's lines about enqueue on the GPU ('GPU: enqueue ...', one per I/O type), joined; None
    if it printed none. ctest -V may print the release and the ASan run's: each distinct line once."""
    lines = [
        line.strip()[line.strip().index("GPU: enqueue") :] for line in ctest_log.splitlines() if "GPU: enqueue" in line
    ]
    return "; ".join(dict.fromkeys(lines)) if lines else None


# Seconds each part may take on the check machine (one H200, 16 cores): the whole run must fit 8 minutes.
TIME_BUDGET_S = {
    "CUDA op build (torch.utils.cpp_extension, sm_90)": 90,
    "CMake build of the plugin + harness (sm_90 only) and ctest": 90,
    "compute-sanitizer memcheck of the harness run": 45,
    "CUDA op vs CPU op (fp32/fp16/bf16) and gradients": 30,
    "op vs cuDNN conv3d (fp32/fp16/bf16 at each size)": 60,
    "network per output frame (eager, CUDA graph)": 90,
}
TIME_LIMIT_S = 8 * 60


def build_steps(build: Path, trt_include: Path | None, arch: str) -> list[tuple[str, list[str]]]:
    """The CMake steps: only the CUDA kernels, and the plugin with its harness where TensorRT headers are
    given; ctest runs the harness alone, then compute-sanitizer memcheck runs it again."""
    # No ASan build: compute-sanitizer refuses a process whose ASan runtime is not loaded first (seen on
    # the H200, 2026-12-04); on the GPU memcheck is the memory checker, ASan runs on the CPU in CI.
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
        "-DD3D_BUILD_TESTS=ON",
        "-DD3D_SANITIZERS=OFF",
    ]
    targets = ["d3d_kernels_cuda"]
    if trt_include is not None:
        args.append(f"-DD3D_TENSORRT_INCLUDE_DIR={trt_include.resolve()}")
        targets += ["d3d_trt_plugin", "test_trt_harness"]
    jobs = str(os.cpu_count() or 2)
    steps = [
        ("configure", ["cmake", "-S", str(REPO), "-B", str(build), *args]),
        ("build", ["cmake", "--build", str(build), "-j", jobs, "--target", *targets]),
    ]
    if trt_include is not None:
        harness = [str(build / "test_trt_harness"), str(build / "tensorrt" / "libd3d_trt_plugin.so")]
        steps.append(("ctest", ["ctest", "--test-dir", str(build), "--output-on-failure", "-V", "-R", "^trt_harness$"]))
        steps.append(("memcheck", ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1", *harness]))
    return steps


def dry_run(args: argparse.Namespace) -> int:
    """Prints what a run would build and its time budget; exit 1 if the budget exceeds the limit."""
    print(
        f"gpu-check --dry-run: CUDA architectures {args.cuda_arch}; LR sizes "
        + ", ".join(f"{h}x{w}" for h, w in args.sizes)
    )
    for name, cmd in build_steps(args.build, args.trt_include, args.cuda_arch):
        print(f"step {name}: {' '.join(cmd)}")
    total = sum(TIME_BUDGET_S.values())
    for name, sec in TIME_BUDGET_S.items():
        print(f"budget {sec:4d} s  {name}")
    print(f"budget total {total} s of {TIME_LIMIT_S} s")
    return 0 if total <= TIME_LIMIT_S else 1


def cmake_build(build: Path, trt_include: Path | None, arch: str, log_path: Path) -> dict:
    """Configures, builds and runs ctest; the plugin and its harness where TensorRT headers are given."""
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        return {"ok": False, "error": "cmake or nvcc is not on PATH"}
    result: dict = {"plugin": trt_include is not None, "log": str(log_path)}
    steps = build_steps(build, trt_include, arch)
    if trt_include is not None and shutil.which("compute-sanitizer") is None:
        steps = [st for st in steps if st[0] != "memcheck"]
        result["memcheck"] = None  # reported as not run
    with open(log_path, "w") as log:
        for name, cmd in steps:
            rc = _run(name, cmd, log)
            result[name] = rc == 0
            if rc != 0:
                break
    text = log_path.read_text(errors="replace")
    result["harness_gpu"] = harness_gpu_line(text)
    last = steps[-1][0]
    result["ok"] = bool(result.get(last)) and (trt_include is None or bool(result.get("ctest")))
    if trt_include is not None and result["ok"]:
        # The harness must have run enqueue on the GPU, not skipped it.
        result["ok"] = result["harness_gpu"] is not None and "NOT run" not in result["harness_gpu"]
    return result


# --- CUDA op vs CPU op ------------------------------------------------------------------------------


def make_case(case: tuple, gen, offset_scale: float = 2.0) -> dict:
    """fp64 CPU tensors and keyword arguments of one parity case."""
    import torch

    from d3d.ops import output_size

    n, c, o, t, h, w, k, s, p, d, g, og, dd = case
    out = output_size((t, h, w), k, s, p, d)
    x = torch.rand(n, c, t, h, w, generator=gen, dtype=torch.float64)
    off = torch.rand(n, og * k[0] * k[1] * k[2] * len(dd), *out, generator=gen, dtype=torch.float64) - 0.5
    weight = (torch.rand(o, c // g, *k, generator=gen, dtype=torch.float64) - 0.5) / (
        c // g * k[0] * k[1] * k[2]
    ) ** 0.5
    bias = torch.rand(o, generator=gen, dtype=torch.float64) - 0.5
    kw = {"stride": s, "padding": p, "dilation": d, "groups": g, "offset_groups": og, "deform_dims": dd}
    return {"tensors": (x, 2 * offset_scale * off, weight, bias), "kwargs": kw}


def _norm_err(got, want) -> float:
    scale = float(want.abs().max()) or 1.0
    return float((got.double() - want.double()).abs().max()) / scale


def compare_forward(op: Callable, reference: Callable, device: str, dtypes: Sequence[str], gen) -> list[dict]:
    """op on ``device`` in each I/O type vs ``reference`` on the CPU in fp32 (fp64 for a float64 check) on
    the same rounded inputs."""
    import torch

    rows = []
    for i, case in enumerate(PARITY_CASES):
        data = make_case(case, gen)
        for name in dtypes:
            dtype = getattr(torch, name)
            rounded = [t.to(dtype) for t in data["tensors"]]
            with torch.no_grad():
                got = op(*[t.to(device) for t in rounded], **data["kwargs"]).cpu()
                ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
                want = reference(*[t.to(ref_dtype) for t in rounded], **data["kwargs"])
            err = _norm_err(got, want)
            tol = TOLERANCE.get(name, 1e-10)
            rows.append({"case": i, "dtype": name, "error": err, "tolerance": tol, "passed": err <= tol})
    return rows


def compare_gradients(op: Callable, reference: Callable, device: str, gen) -> list[dict]:
    """fp32 gradients of input, offset, weight and bias: op on ``device`` vs ``reference`` on the CPU."""
    import torch

    rows = []
    for i, case in enumerate(PARITY_CASES):
        data = make_case(case, gen)
        grads = []
        for fn, dev in ((op, device), (reference, "cpu")):
            leaves = [t.float().to(dev).requires_grad_() for t in data["tensors"]]
            y = fn(*leaves, **data["kwargs"])
            g_out = torch.linspace(-1, 1, y.numel(), dtype=torch.float32).reshape(y.shape).to(dev)
            (y * g_out).sum().backward()
            grads.append([t.grad.cpu() for t in leaves])
        for name, got, want in zip(("input", "offset", "weight", "bias"), *grads, strict=True):
            err = _norm_err(got, want)
            rows.append(
                {"case": i, "grad": name, "error": err, "tolerance": GRAD_TOLERANCE, "passed": err <= GRAD_TOLERANCE}
            )
    return rows


# --- Benchmarks -------------------------------------------------------------------------------------


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_op(
    sizes: Sequence[tuple[int, int]], repeat: int, dtypes: Sequence[str] = ("float32", "float16", "bfloat16")
) -> list[dict]:
    """D3Dnet's deformable layer (64 -> 64, 3x3x3, T = 7, deform HW, random offsets) vs F.conv3d (cuDNN)."""
    import torch
    import torch.nn.functional as F

    from d3d.ops import deform_conv3d

    rows = []
    for h, w in sizes:
        for name in dtypes:
            dtype = getattr(torch, name)
            x = torch.rand(1, 64, 7, h, w, device="cuda", dtype=dtype)
            wt = torch.randn(64, 64, 3, 3, 3, device="cuda", dtype=dtype) * 0.02
            b = torch.randn(64, device="cuda", dtype=dtype)
            off = torch.randn(1, 27 * 2, 7, h, w, device="cuda", dtype=dtype)
            with torch.no_grad():
                t_op = _median_ms(lambda: deform_conv3d(x, off, wt, b, padding=1, deform_dims="HW"), repeat)  # noqa: B023
                t_cudnn = _median_ms(lambda: F.conv3d(x, wt, b, padding=1), repeat)  # noqa: B023
            gflop = 2 * 64 * 64 * 27 * 7 * h * w / 1e9
            rows.append(
                {
                    "size": f"{h}x{w}",
                    "dtype": name,
                    "deform_conv3d_ms": t_op,
                    "conv3d_cudnn_ms": t_cudnn,
                    "ratio": t_op / t_cudnn,
                    "deform_tflops": gflop / t_op,
                    "cudnn_tflops": gflop / t_cudnn,
                }
            )
    return rows


def _time_network(model, x, repeat: int) -> dict:
    """Eager and CUDA-graph time of one forward pass (one output frame)."""
    import torch

    row: dict = {}
    with torch.no_grad():
        row["eager_ms"] = _median_ms(lambda: model(x), repeat)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    model(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                y = model(x)
            graph.replay()
            torch.cuda.synchronize()
            row["graph_matches_eager"] = _norm_err(y.float().cpu(), model(x).float().cpu()) < 1e-3
            row["graph_ms"] = _median_ms(graph.replay, repeat)
            row["graph_fps"] = 1000.0 / row["graph_ms"]
        except Exception as exc:  # report, don't stop: capture can fail on some stacks
            row["graph_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return row


def psnr_db(got, want, peak: float = 1.0) -> float:
    """PSNR of ``got`` against ``want`` (frames in [0, peak]), in dB; inf when they are equal."""
    import math

    mse = float((got.double() - want.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def bench_network(
    sizes: Sequence[tuple[int, int]], repeat: int, dtypes: Sequence[str] = ("float32", "float16")
) -> list[dict]:
    """The paper's D3Dnet (x4, 7 frames, seeded random weights) per output frame: eager and CUDA graph; for
    each type after fp32, the output's PSNR against the fp32 model's on the same input."""
    import torch

    from d3d import D3Dnet

    rows = []
    for h, w in sizes:
        reference = None
        for name in dtypes:
            dtype = getattr(torch, name)
            torch.manual_seed(0)
            torch.cuda.reset_peak_memory_stats()
            model = D3Dnet().eval().to("cuda", dtype)
            x = torch.rand(1, 1, 7, h, w, device="cuda").to(dtype)  # the same frames for every type
            row = {"size": f"{h}x{w}", "output": f"{4 * h}x{4 * w}", "dtype": name, **_time_network(model, x, repeat)}
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            with torch.no_grad():
                y = model(x).float().cpu()
            if name == "float32":
                reference = y
            elif reference is not None:
                row["psnr_vs_fp32_db"] = psnr_db(y.clamp(0, 1), reference.clamp(0, 1))
            rows.append(row)
            torch.cuda.empty_cache()
    return rows


# --- Report -----------------------------------------------------------------------------------------


def passed(report: dict) -> bool:
    checks = [r["passed"] for r in report.get("forward", []) + report.get("gradients", [])]
    build = report.get("build", {})
    return bool(checks) and all(checks) and (build.get("skipped") or build.get("ok", False))


def format_table(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# gpu-check, {env['date']}",
        "",
        f"{env.get('gpu', '?')} (sm_{env.get('capability', '?')}), torch {env['torch']}, CUDA {env.get('cuda')}, "
        f"{env['python']}, {env['machine']}",
        "",
    ]
    build = report.get("build", {})
    if build.get("skipped"):
        lines.append("Build: skipped (--skip-build)")
    else:
        lines.append(
            f"Build: {'ok' if build.get('ok') else 'FAILED'}; plugin {'built' if build.get('plugin') else 'not built'}"
            f"; harness on the GPU: {build.get('harness_gpu') or 'not run'}"
        )
    lines += ["", "| check | case | type | error (normalised) | tolerance | result |", "|---|---|---|---|---|---|"]
    for r in report.get("forward", []) + report.get("gradients", []):
        check, dtype = (f"grad {r['grad']}", "float32") if "grad" in r else ("forward", r["dtype"])
        verdict = "ok" if r["passed"] else "FAIL"
        lines.append(f"| {check} | {r['case']} | {dtype} | {r['error']:.2e} | {r['tolerance']:.0e} | {verdict} |")
    if report.get("op_bench"):
        lines += [
            "",
            "| LR size | type | DeformConv3d ms | cuDNN conv3d ms | ratio | TFLOP/s (ours / cuDNN) |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["op_bench"]:
            lines.append(
                f"| {r['size']} | {r['dtype']} | {r['deform_conv3d_ms']:.3f} | {r['conv3d_cudnn_ms']:.3f} | "
                f"{r['ratio']:.1f}x | {r['deform_tflops']:.2f} / {r['cudnn_tflops']:.2f} |"
            )
    if report.get("network"):
        lines += [
            "",
            "| LR size | output | type | eager ms/frame | CUDA graph ms/frame | fps (graph) | peak MB | PSNR vs fp32 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in report["network"]:
            graph = f"{r['graph_ms']:.1f}" if "graph_ms" in r else r.get("graph_error", "-")
            fps = f"{r['graph_fps']:.1f}" if "graph_fps" in r else "-"
            psnr = f"{r['psnr_vs_fp32_db']:.1f} dB" if "psnr_vs_fp32_db" in r else "-"
            cells = [r["size"], r["output"], r["dtype"], f"{r['eager_ms']:.1f}", graph, fps]
            cells += [f"{r['peak_mem_mb']:.0f}", psnr]
            lines.append("| " + " | ".join(cells) + " |")
    for name, err in report.get("errors", {}).items():
        lines.append(f"\nerror in {name}: {err}")
    lines += ["", f"RESULT: {'PASSED' if passed(report) else 'FAILED'}"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """gpu_check.json and gpu_check.md, each written to a temporary name and renamed (never half-written)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(report, indent=1)), ("gpu_check.md", format_table(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def environment() -> dict:
    import torch

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "machine": platform.node(),
    }
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        env.update({"gpu": torch.cuda.get_device_name(), "capability": f"{cap[0]}{cap[1]}"})
    return env


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    import torch

    if not torch.cuda.is_available() or torch.version.cuda is None:
        print(
            f"gpu-check: error: no CUDA GPU visible to this PyTorch ({torch.__version__}, CUDA {torch.version.cuda}); "
            "run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch",
            file=sys.stderr,
        )
        return 2
    arch = args.cuda_arch.split("-")[0]
    if arch.isdigit() and len(arch) >= 2:  # the CUDA op for the same architecture only (90 -> "9.0")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{arch[:-1]}.{arch[-1]}")
    from d3d.ops import deform_conv3d, ensure_native

    report: dict = {"environment": environment(), "errors": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        ensure_native()  # builds the CUDA op (torch.utils.cpp_extension)
        op_ok = torch._C._dispatch_has_kernel_for_dispatch_key("d3d::deform_conv3d", "CUDA")
        if not op_ok:
            report["errors"]["cuda_op"] = "the native op was built without CUDA kernels"
    except Exception as exc:  # the plugin build and harness below still run and report
        op_ok = False
        report["errors"]["cuda_op"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
    report["op_build_s"] = time.time() - t0
    print(f"CUDA op {'built/loaded' if op_ok else 'FAILED'} in {report['op_build_s']:.0f} s", flush=True)
    write_report(args.out, report)
    if args.skip_build:
        report["build"] = {"skipped": True}
    else:
        report["build"] = cmake_build(args.build, args.trt_include, args.cuda_arch, args.out / "cmake.log")
        print(f"CMake build + ctest: {'ok' if report['build']['ok'] else 'FAILED'} (log {args.out / 'cmake.log'})")
        write_report(args.out, report)
    gen = torch.Generator().manual_seed(0)
    cpu_op = deform_conv3d  # the same op on CPU tensors: the CPU build of the kernels
    sections = (
        []
        if not op_ok
        else [
            (
                "forward",
                lambda: compare_forward(deform_conv3d, cpu_op, "cuda", ("float32", "float16", "bfloat16"), gen),
            ),
            ("gradients", lambda: compare_gradients(deform_conv3d, cpu_op, "cuda", gen)),
            ("op_bench", lambda: bench_op(args.sizes, args.repeat)),
        ]
    )
    if not args.no_network:
        sections.append(("network", lambda: bench_network(args.sizes, args.repeat)))
    for name, fn in sections:
        t1 = time.time()
        try:
            report[name] = fn()
            print(f"{name}: done in {time.time() - t1:.0f} s", flush=True)
        except Exception as exc:  # one failing section must not lose the others' results
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
        write_report(args.out, report)
    text = format_table(report)
    print(text)
    print(f"report: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    return 0 if passed(report) and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
