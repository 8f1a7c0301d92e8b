"""``d3d serve``: Triton Inference Server on a model, one sequence per video, each frame sent once.

Writes a model repository (the project's runner in Triton's Python backend behind the sequence batcher)
and runs the ``tritonserver`` that ``make setup`` unpacked, on loopback by default, until SIGINT/SIGTERM
(in-flight requests finished, one line). Clients: ``d3d upscale --backend triton --url HOST:GRPC_PORT``.
docs/SERVING.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from d3d.cli.commands import add_model_source, int_at_least, model_source, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from d3d.runtime.backends import registry

    add_model_source(parser)
    local = [n for n, b in registry().items() if not getattr(b, "remote", False)]
    parser.add_argument("--backend", choices=local, default="onnxruntime", help="the runner the server-side model uses")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where that runner runs")
    parser.add_argument("--threads", type=positive_int, help="CPU threads of each model instance's runner")
    parser.add_argument(
        "--instances", type=positive_int, default=1, help="model instances (each runs one frame at a time)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the server listens on (loopback by default)")
    parser.add_argument("--http-port", type=int_at_least(1), default=8000, help="HTTP/REST port (health, readiness)")
    parser.add_argument("--grpc-port", type=int_at_least(1), default=8001, help="gRPC port (clients' --url)")
    parser.add_argument("--metrics-port", type=int_at_least(1), default=8002, help="Prometheus metrics port")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds a video's sequence may go without a new request before the server frees it (a client that "
        "died); Triton counts from the last request's arrival, and a client sends its next frame only as a "
        "response comes, so keep it above (videos per instance) x (seconds per frame) x 2 under full load",
    )
    parser.add_argument(
        "--max-frame-pixels",
        type=positive_int,
        default=1920 * 1088,
        help="largest LR frame (width x height) a request may carry",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        help="write the model repository here (default: a temporary folder removed on exit)",
    )
    parser.add_argument("--tritonserver", type=Path, help="the tritonserver binary (default: $D3D_TRITONSERVER, "
                        "else the one make setup unpacked into the venv, else PATH)")  # fmt: skip
    parser.add_argument(
        "--exit-timeout", type=int_at_least(0), default=30, help="seconds in-flight requests get to finish on stop"
    )
    prod = parser.add_argument_group("a repository for a production Triton container (nothing is started)")
    prod.add_argument(
        "--write-only",
        type=Path,
        metavar="DIR",
        help="write a complete model repository into DIR (new or empty) for a Triton container, with a README "
        "giving the tritonserver command",
    )
    prod.add_argument(
        "--platform",
        choices=["python", "onnxruntime", "tensorrt"],
        default="python",
        help="python: the project's runner in the Python backend; onnxruntime / tensorrt: the ring in a Python "
        "model in front of Triton's ONNX Runtime or TensorRT backend (tensorrt needs --engine)",
    )
    prod.add_argument("--plugin", type=Path, help="--platform tensorrt: the DeformConv3d plugin library "
                      "(default: searched, as d3d build)")  # fmt: skip
    prod.add_argument("--container-root", default="/models", help="where the repository is mounted in the container")


def model_identity(source, runner) -> dict:
    """What a client's resume fingerprint records of the server's model: weights, runner, architecture."""
    import d3d

    weights = source.describe() if source.kind == "random" else f"{source.kind} sha256 {source.sha256}"
    return {"weights": weights, "runner": runner.describe(), "config": runner.config.as_dict(), "d3d": d3d.__version__}


def run(args: argparse.Namespace) -> int:
    import signal
    import tempfile

    from d3d.errors import D3DError, Interrupted
    from d3d.runtime.backends import create_runner, get_backend
    from d3d.runtime.serving import (
        MODEL_NAME,
        ModelSettings,
        Ports,
        Server,
        find_server,
        serving_env,
        write_python_repository,
    )

    if args.idle_timeout <= 0:
        raise D3DError(f"--idle-timeout must be > 0, got {args.idle_timeout:g}")
    if args.write_only is not None:
        return _write_only(args)
    if args.plugin is not None:
        raise D3DError("--plugin goes with --write-only --platform tensorrt")
    install = find_server(args.tritonserver)
    env = serving_env()
    source = model_source(args)
    if source.kind == "engine":
        raise D3DError("--engine: d3d serve runs ONNX Runtime or PyTorch here; an engine goes into a production "
                       "repository (--write-only DIR --platform tensorrt)")  # fmt: skip
    backend = get_backend(args.backend)
    # The runner is built here once: its errors are one line before any server starts, and its
    # description (device, flavour) becomes the model identity clients fingerprint.
    runner = create_runner(backend, source, backend.options(threads=args.threads, device=args.device))
    try:
        identity = model_identity(source, runner)
    finally:
        runner.close()
    settings = ModelSettings(
        source={"kind": source.kind, "path": str(source.path) if source.path else None, "sha256": source.sha256},
        backend=backend.name, threads=args.threads, device=args.device, max_frame_pixels=args.max_frame_pixels,
        idle_seconds=args.idle_timeout, identity=identity,
    )  # fmt: skip
    tmp = None
    if args.repository is None:
        tmp = tempfile.TemporaryDirectory(prefix="d3d-serve-")
        repository = Path(tmp.name)
    else:
        repository = args.repository
        if (repository / MODEL_NAME).exists():
            raise D3DError(f"{repository / MODEL_NAME}: exists; give an empty or new --repository")
        repository.mkdir(parents=True, exist_ok=True)
    try:
        write_python_repository(repository, settings, args.instances, env)
        ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
        server = Server(install, repository, ports, args.host, exit_timeout=args.exit_timeout)
        server.start()
        try:
            server.wait_ready()
            print(
                f"serving {MODEL_NAME} ({identity['runner']}; {identity['weights']}) on {args.host}: "
                f"gRPC {ports.grpc} (d3d upscale --backend triton --url {args.host}:{ports.grpc}), "
                f"HTTP {ports.http} (/v2/health/ready), metrics {ports.metrics} (/metrics); log {server.log_path}",
                flush=True,
            )
            while server.process.poll() is None:
                _wait(server.process)
            raise D3DError(f"tritonserver exited ({server.process.returncode}): {server.why()}")
        except Interrupted as exc:
            code = server.stop()
            name = signal.Signals(exc.signum).name
            print(f"d3d serve: stopped on {name}: in-flight requests finished, tritonserver exited ({code})",
                  file=sys.stderr)  # fmt: skip
            return 0
        finally:
            server.stop()
    finally:
        if tmp is not None:
            tmp.cleanup()


def _wait(process) -> None:
    """Waits a short slice for ``process`` (signals reach this thread between slices)."""
    import subprocess

    try:
        process.wait(0.2)
    except subprocess.TimeoutExpired:
        pass


def _write_only(args: argparse.Namespace) -> int:
    """``--write-only DIR``: the repository for a production Triton, written to a temporary sibling and
    renamed (nothing is left behind on failure)."""
    import json

    import d3d
    from d3d.atomic import atomic_dir
    from d3d.errors import D3DError
    from d3d.native_libs import ort_ops_library, trt_plugin_library
    from d3d.runtime.backends import create_runner, get_backend
    from d3d.runtime.models import onnx_for
    from d3d.runtime.serving import ModelSettings, ProductionFiles, write_production_repository

    out = args.write_only
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise D3DError(f"{out}: exists and is not an empty folder (--write-only writes a new repository)")
    source = model_source(args)
    if args.platform == "tensorrt":
        if source.kind != "engine":
            raise D3DError("--platform tensorrt serves a TensorRT engine: give --engine FILE (from d3d build)")
        sidecar = source.path.with_name(source.path.name + ".json")
        try:
            info = json.loads(sidecar.read_text())
            config = info["model_config"]
        except (OSError, ValueError, KeyError):
            raise D3DError(
                f"{source.path}: no readable sidecar {sidecar.name}; rebuild the engine with d3d build"
            ) from None
        runner = f"tensorrt plan (TensorRT {info.get('tensorrt_version')}, {info.get('precision')})"
        identity = {"weights": f"engine sha256 {source.sha256}", "config": config, "d3d": d3d.__version__,
                    "runner": runner}  # fmt: skip
        files = ProductionFiles(engine=source.path, plugin=args.plugin or trt_plugin_library())
    else:
        if source.kind == "engine":
            raise D3DError(f"--engine goes with --platform tensorrt, not {args.platform}")
        backend = get_backend("onnxruntime")
        runner = create_runner(backend, source, backend.options(threads=args.threads))
        try:
            identity = model_identity(source, runner)
        finally:
            runner.close()
        files = ProductionFiles(onnx=onnx_for(source), ort_ops=ort_ops_library())
    if args.platform != "python":
        identity["runner"] = f"{args.platform} backend of the container ({identity['runner']} here)"
    settings = ModelSettings(source={"sha256": source.sha256}, backend="onnxruntime", threads=args.threads,
                             device=args.device, max_frame_pixels=args.max_frame_pixels,
                             idle_seconds=args.idle_timeout, identity=identity)  # fmt: skip
    with atomic_dir(out) as tmp:
        configs = write_production_repository(tmp, args.platform, files, settings, args.container_root, args.instances)
    names = ", ".join(str(out / c.relative_to(tmp)) for c in configs)
    print(f"wrote {out} ({args.platform}): {names}; the tritonserver command is in {out / 'README.md'}")
    return 0
