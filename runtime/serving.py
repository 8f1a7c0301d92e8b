"""Serving with Triton Inference Server: the server binary, the model repository, the server process.

The binary is the ``tritonserver`` of the ``nvidia-pytriton`` wheel, unpacked (never installed: the
``pytriton`` package pins NumPy < 2) into ``<venv>/tritonserver`` by ``make setup``
(``tools/unpack_tritonserver.py``), with its Python backend and the stub for this Python. The model is
:mod:`d3d.runtime.triton_model` behind Triton's sequence batcher (docs/SERVING.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from d3d.errors import D3DError, SDKMissing

MODEL_NAME = "d3dnet"
UNPACKED = Path(sys.prefix) / "tritonserver"  # where tools/unpack_tritonserver.py puts the wheel's server
ENV_SERVER = "D3D_TRITONSERVER"  # an explicit tritonserver binary
WAIT_SLICE_S = 0.05


@dataclass(frozen=True)
class ServerInstall:
    binary: Path
    backends: Path  # --backend-directory (holds python/ with the stub)


def find_server(explicit: Path | None = None) -> ServerInstall:
    """The tritonserver to run: ``explicit``, else $D3D_TRITONSERVER, else the one ``make setup``
    unpacked into the venv, else ``tritonserver`` on the PATH; :class:`SDKMissing` (exit 2) if none."""
    env = os.environ.get(ENV_SERVER)
    candidates = [Path(explicit)] if explicit else [Path(env)] if env else []
    if not candidates:
        candidates.append(UNPACKED / "pytriton" / "tritonserver" / "bin" / "tritonserver")
        found = shutil.which("tritonserver")
        if found:
            candidates.append(Path(found))
    for binary in candidates:
        if binary.is_file() and os.access(binary, os.X_OK):
            backends = binary.resolve().parent.parent / "backends"
            if not (backends / "python" / "libtriton_python.so").is_file():
                raise SDKMissing(f"{binary}: no Python backend in {backends} (the d3d model needs it)")
            return ServerInstall(binary, backends)
    where = f"{candidates[0]}" if explicit or env else "the venv (make setup) or on the PATH"
    raise SDKMissing(
        f"no tritonserver binary in {where}: run `make setup` (it unpacks the server of the nvidia-pytriton wheel) "
        f"or set {ENV_SERVER}"
    )


def check_ports(host: str, ports: dict[str, int]) -> None:
    """One-line error naming the first flag whose port is taken on ``host``."""
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As the server binds: a port left in TIME_WAIT by closed connections is free, a listener is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise D3DError(f"{flag} {port}: {host}:{port} is taken ({exc.strerror or exc})") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- The model repository -------------------------------------------------------------------------


@dataclass
class ModelSettings:
    """What the server-side model runs: the runner's backend and options, and the model source."""

    source: dict  # ModelSource fields: kind, path, sha256
    backend: str = "onnxruntime"
    threads: int | None = None
    device: str = "auto"
    max_frame_pixels: int = 1920 * 1088  # LR pixels per frame the server accepts
    idle_seconds: float = 600.0  # a sequence without a new request for this long is freed (docs/SERVING.md)
    identity: dict = field(default_factory=dict)  # what clients put in their resume fingerprint


def sequence_config(name: str, backend: str, idle_seconds: float, instances: int, kind: str) -> str:
    """The config.pbtxt of a sequence model taking one frame per request (``FRAME``, ``INDEX``, ``CUT``,
    ``FIRST_OUTPUT``) and returning the frames it completes (``OUTPUT``, ``OUTPUT_INDEX``).

    The Oldest strategy schedules any ready sequence's next frame on any free instance, so concurrent
    videos interleave (the Direct strategy would bind a video to an instance until its END). No batching
    (max_batch_size 0): each frame runs as the local runner runs it, which keeps outputs bit-identical."""
    return f"""name: "{name}"
backend: "{backend}"
max_batch_size: 0
input [
  {{ name: "FRAME" data_type: TYPE_FP32 dims: [ -1, -1, -1 ] }},
  {{ name: "INDEX" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "CUT" data_type: TYPE_BOOL dims: [ 1 ] }},
  {{ name: "FIRST_OUTPUT" data_type: TYPE_INT64 dims: [ 1 ] optional: true }}
]
output [
  {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1, -1, -1, -1 ] }},
  {{ name: "OUTPUT_INDEX" data_type: TYPE_INT64 dims: [ -1 ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: {round(idle_seconds * 1e6)}
  oldest {{ max_candidate_sequences: 1024 max_queue_delay_microseconds: 0 }}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
instance_group [ {{ count: {instances} kind: {kind} }} ]
"""


def pbtxt_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid protobuf text-format string


def write_python_repository(
    root: Path, settings: ModelSettings, instances: int = 1, env_path: Path | None = None
) -> Path:
    """A repository serving ``settings`` with the project's runner in Triton's Python backend;
    ``env_path``: the Python environment (a venv: its ``bin/activate``) the stub runs in. Returns the
    model folder."""
    from d3d.runtime import triton_model

    model_dir = root / MODEL_NAME
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(triton_model.__file__, model_dir / "1" / "model.py")
    payload = {
        "source": settings.source,
        "backend": settings.backend,
        "threads": settings.threads,
        "device": settings.device,
        "max_frame_pixels": settings.max_frame_pixels,
        "idle_seconds": settings.idle_seconds,
        "identity": settings.identity,
    }
    kind = "KIND_GPU" if settings.device == "cuda" else "KIND_CPU"
    text = sequence_config(MODEL_NAME, "python", settings.idle_seconds, instances, kind)
    params = [f'  {{ key: "{triton_model.PARAMETER}" value: {{ string_value: {pbtxt_string(json.dumps(payload))} }} }}']
    if env_path is not None:
        params.append(f'  {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: {pbtxt_string(str(env_path))} }} }}')
    text += "parameters [\n" + ",\n".join(params) + "\n]\n"
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


def serving_env() -> Path:
    """The venv the Python backend's stub runs in (this one): the backend sources its ``bin/activate``."""
    prefix = Path(sys.prefix)
    if not (prefix / "bin" / "activate").is_file():
        raise D3DError(
            f"{prefix}: d3d serve runs the model in this Python environment, which must be a virtual environment "
            "(the server's Python backend activates it): run from the venv `make setup` makes"
        )
    return prefix


# --- The server process ---------------------------------------------------------------------------


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


class Server:
    """A running tritonserver on ``host``: started by :meth:`start`, ready after :meth:`wait_ready`,
    stopped by :meth:`stop` (SIGTERM: Triton finishes in-flight requests, up to ``exit_timeout`` s)."""

    def __init__(
        self,
        install: ServerInstall,
        repository: Path,
        ports: Ports,
        host: str = "127.0.0.1",
        log: Path | None = None,
        exit_timeout: int = 30,
    ) -> None:
        self.install, self.repository, self.ports, self.host = install, repository, ports, host
        self.log_path = log or repository / "tritonserver.log"
        self.exit_timeout = exit_timeout
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        p = self.ports
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.install.backends}",
            f"--http-address={self.host}",
            f"--http-port={p.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={p.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={p.metrics}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
        ]

    def start(self) -> None:
        check_ports(self.host, {"--http-port": self.ports.http, "--grpc-port": self.ports.grpc,
                                "--metrics-port": self.ports.metrics})  # fmt: skip
        self._log = open(self.log_path, "ab")  # the server writes it for its lifetime
        # Its own session: a terminal's Ctrl-C reaches d3d, which stops the server in order.
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.ports.http}{path}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/v2/health/ready"), timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Polls the readiness endpoint until the model is loaded; a one-line error where the server exits
        first (its log's last error line) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise D3DError(f"tritonserver exited ({self.process.returncode}) before it was ready: {self.why()}")
            if time.monotonic() > deadline:
                self.stop()
                raise D3DError(f"tritonserver was not ready after {timeout:g} s (log: {self.log_path})")
            time.sleep(WAIT_SLICE_S * 4)

    def why(self) -> str:
        """The most telling line of the server's log (an error, else its last line)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"see {self.log_path}"
        errors = [ln for ln in lines if ("error" in ln.lower() or ln.startswith("E")) and "NVML" not in ln]
        line = (errors or lines or [""])[-1].strip()
        return f"{line[:300]} (log: {self.log_path})"

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Asks the server to finish its in-flight requests and exit; waits for it (killed after
        ``exit_timeout`` + 10 s). Its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(self.exit_timeout + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


# --- Repositories for a production Triton (d3d serve --write-only) ---------------------------------

PLATFORMS = ("python", "onnxruntime", "tensorrt")
WINDOW_MODEL = "d3dnet_window"  # the stateless network behind the ring (onnxruntime, tensorrt)


def window_config(
    platform: str, frames: int, in_channels: int, out_channels: int, op_library: str | None, kind: str = "KIND_GPU"
) -> str:
    """The stateless network: one window ``lr`` [1, C, T, H, W] in, ``sr`` [1, C, sH, sW] out."""
    from d3d.export.exporter import INPUT_NAME, OUTPUT_NAME

    text = f"""name: "{WINDOW_MODEL}"
platform: "{"tensorrt_plan" if platform == "tensorrt" else "onnxruntime_onnx"}"
max_batch_size: 0
input [ {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ 1, {in_channels}, {frames}, -1, -1 ] }} ]
output [ {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ 1, {out_channels}, -1, -1 ] }} ]
instance_group [ {{ count: 1 kind: {kind} }} ]
"""
    if platform == "tensorrt":
        text += 'default_model_filename: "model.plan"\n'
    if op_library:
        text += f"model_operations {{ op_library_filename: {pbtxt_string(op_library)} }}\n"
    return text


@dataclass
class ProductionFiles:
    """What a production repository is made of (paths on this machine)."""

    onnx: Path | None = None  # the ONNX model (python and onnxruntime platforms)
    ort_ops: Path | None = None  # libd3d_ort_ops.so (its OpenBLAS beside it is copied too)
    engine: Path | None = None  # the TensorRT plan (its JSON sidecar beside it is copied too)
    plugin: Path | None = None  # libd3d_trt_plugin.so


def write_production_repository(
    root: Path,
    platform: str,
    files: ProductionFiles,
    settings: ModelSettings,
    container_root: str = "/models",
    instances: int = 1,
) -> list[Path]:
    """A complete repository for a Triton container, mounted there at ``container_root``: the front
    sequence model (the ring, :mod:`d3d.runtime.triton_model`) and, for onnxruntime and tensorrt, the
    stateless window model it calls in-process (BLS); a README with the command line. Returns the
    config.pbtxt files written."""
    from d3d.runtime import triton_model

    if platform not in PLATFORMS:
        raise D3DError(f"unknown --platform {platform!r}: use {', '.join(PLATFORMS)}")
    front = root / MODEL_NAME
    (front / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(triton_model.__file__, front / "1" / "model.py")
    cfg = settings.identity["config"]
    payload: dict = {"max_frame_pixels": settings.max_frame_pixels, "idle_seconds": settings.idle_seconds,
                     "identity": settings.identity, "device": settings.device}  # fmt: skip
    configs = [front / "config.pbtxt"]
    lines = []
    if platform == "python":
        # The project's runner inside the front model: ONNX Runtime on the exported model and op library.
        _copy(files.onnx, front / "1" / "model.onnx", "the ONNX model")
        payload.update(backend=settings.backend, threads=settings.threads,
                       source={"kind": "onnx", "path": "1/model.onnx", "sha256": settings.source.get("sha256")},
                       ort_ops=_copy_ort_ops(files.ort_ops, front))  # fmt: skip
    else:
        window = root / WINDOW_MODEL
        (window / "1").mkdir(parents=True, exist_ok=True)
        payload.update(backend="window-model", window_model=WINDOW_MODEL, config=cfg)
        op_library = None
        if platform == "onnxruntime":
            _copy(files.onnx, window / "1" / "model.onnx", "the ONNX model")
            op_library = f"{container_root}/{WINDOW_MODEL}/{_copy_ort_ops(files.ort_ops, window)}"
        else:
            _copy(files.engine, window / "1" / "model.plan", "the TensorRT engine (--engine)")
            sidecar = files.engine.with_name(files.engine.name + ".json")
            if sidecar.is_file():
                shutil.copyfile(sidecar, window / "1" / "model.plan.json")
                lines.append(f"engine sidecar: {sidecar.read_text().strip()}")
            (root / "plugins").mkdir(exist_ok=True)
            _copy(files.plugin, root / "plugins" / "libd3d_trt_plugin.so", "the TensorRT plugin (--plugin)")
        kind = "KIND_CPU" if settings.device == "cpu" else "KIND_GPU"
        text = window_config(platform, cfg["frames"], cfg["in_channels"], cfg["out_channels"], op_library, kind)
        (window / "config.pbtxt").write_text(text)
        configs.append(window / "config.pbtxt")
    # The front model holds the ring (host memory); it runs the network itself only on --platform python.
    kind = "KIND_GPU" if platform == "python" and settings.device == "cuda" else "KIND_CPU"
    text = sequence_config(MODEL_NAME, "python", settings.idle_seconds, instances, kind)
    text += f'parameters [ {{ key: "{triton_model.PARAMETER}" value: {{ string_value: '
    text += f"{pbtxt_string(json.dumps(payload))} }} }} ]\n"
    (front / "config.pbtxt").write_text(text)
    (root / "README.md").write_text(_production_readme(platform, container_root, lines))
    return configs


def _copy(src: Path | None, dst: Path, what: str) -> None:
    if src is None or not Path(src).is_file():
        raise D3DError(f"{src or 'nothing given'}: no such file ({what})")
    shutil.copyfile(src, dst)


def _copy_ort_ops(library: Path | None, folder: Path) -> str:
    """Copies the ONNX Runtime op library and the OpenBLAS beside it into ``folder``: its name."""
    if library is None or not Path(library).is_file():
        raise D3DError("no libd3d_ort_ops.so: build it (make native) or set D3D_ORT_OPS")
    library = Path(library)
    for lib in [library, *library.parent.glob("libscipy_openblas*.so*")]:
        shutil.copyfile(lib, folder / lib.name)
    return library.name


def _production_readme(platform: str, container_root: str, notes: list[str]) -> str:
    command = f"tritonserver --model-repository={container_root}"
    if platform == "tensorrt":
        command += f" --backend-config=tensorrt,plugins={container_root}/plugins/libd3d_trt_plugin.so"
    need = {
        "python": "Triton's Python backend; d3d-trt and onnxruntime installed in the container's Python "
        "(`pip install d3d-trt onnxruntime`, the same d3d-trt version that wrote this repository)",
        "onnxruntime": "Triton's ONNX Runtime backend with ONNX Runtime >= 1.29 (the op library is built against "
        "its C API 29) and the Python backend with d3d-trt installed (the front model imports its window plan)",
        "tensorrt": "Triton's TensorRT backend with the TensorRT version the engine was built with (its sidecar, "
        "model.plan.json, names it; an engine runs only on that version and GPU architecture) and the Python "
        "backend with d3d-trt installed",
    }[platform]
    return f"""# d3d-trt model repository ({platform})

Written by `d3d serve --write-only --platform {platform}`. Mount this folder at `{container_root}` in a Triton
Inference Server container and run:

    {command}

Clients: `d3d upscale VIDEO -o OUT --backend triton --url HOST:8001` (one sequence per video, each frame
sent once).

Needs: {need}.

Layout: `{MODEL_NAME}/` is the front model: Triton's sequence batcher (correlation ID, START/END, Oldest
strategy) routes each video's frames to it in order; it keeps the temporal ring per video and applies the
runtime's window rules (edge clamping, scene cuts).{
        f" It sends each complete window to `{WINDOW_MODEL}/`, the stateless network, inside the server (BLS)."
        if platform != "python"
        else " It runs the network itself (ONNX Runtime with the DeformConv3d op library)."
    }
{"".join(f"{os.linesep}{n}{os.linesep}" for n in notes)}
What was verified where: docs/SERVING.md of d3d-trt.
"""
