"""One Runner interface, three backends: TensorRT engine, ONNX Runtime, PyTorch.

A runner takes the network input window ``[N, C, frames, H, W]`` (float32, Y in [0, 1]) and returns
``[N, C, scale*H, scale*W]``. Frames reach it through a ring of ``frames`` slots: ``put(slot, frame)``
stores one converted frame once (on the device, for TensorRT), ``run(slots)`` infers on the window
those slots form. ``infer(window)`` runs an explicit window (tiles, benchmarks).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from d3d.errors import D3DError
from d3d.model import D3DnetConfig

BACKENDS = ("auto", "tensorrt", "onnxruntime", "pytorch")


class Runner(ABC):
    name: str = "runner"
    precision: str = "fp32"
    device: str = "cpu"

    def __init__(self, config: D3DnetConfig) -> None:
        self.config = config
        self._ring: dict[int, np.ndarray] = {}

    def put(self, slot: int, frame: np.ndarray) -> None:
        """Stores one converted frame ``[C, H, W]`` in ring slot ``slot``."""
        self._ring[slot] = frame

    def run(self, slots: Sequence[int]) -> np.ndarray:
        """Infers on the window formed by ``slots`` (``frames`` entries, repeats allowed); ``[C, sH, sW]``."""
        window = np.stack([self._ring[s] for s in slots], axis=1)[None]  # [1, C, T, H, W]
        return self.infer(window)[0]

    @abstractmethod
    def infer(self, window: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        self._ring.clear()

    def describe(self) -> str:
        return f"{self.name} ({self.device}, {self.precision})"


class TorchRunner(Runner):
    """PyTorch with the native DeformConv3d op (CPU, or CUDA with a CUDA build of PyTorch)."""

    name = "pytorch"

    def __init__(self, model, device: str = "cpu", threads: int | None = None) -> None:
        import torch

        super().__init__(model.config)
        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self._torch = torch
        self._model = model.eval().to(device)

    def put(self, slot: int, frame: np.ndarray) -> None:
        # The ring lives on the model's device: each frame is uploaded once.
        self._ring[slot] = self._torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)

    def run(self, slots: Sequence[int]) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            y = self._model(torch.stack([self._ring[s] for s in slots], dim=1)[None])
        return y[0].cpu().numpy()

    def infer(self, window: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            y = self._model(torch.from_numpy(np.ascontiguousarray(window)).to(self.device))
        return y.cpu().numpy()


class OrtRunner(Runner):
    """ONNX Runtime: CPU, or the CUDA execution provider where present."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        from d3d.export import load_model, model_config
        from d3d.runtime.ort import available_providers, create_session

        proto = load_model(onnx_path)
        super().__init__(D3DnetConfig(**model_config(proto, str(onnx_path))))
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available_providers()]
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self._session = create_session(proto, providers, threads)
        self._input = self._session.get_inputs()[0].name
        self.flavour = "custom op" if any(n.domain == "d3d" for n in proto.graph.node) else "portable"

    def infer(self, window: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.ascontiguousarray(window, dtype=np.float32)})[0]

    def describe(self) -> str:
        return f"{self.name} ({self.device}, {self.flavour}, {self.precision})"


def _cuda_check(result):
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise D3DError(f"CUDA error {err} during CUDA-graph capture/launch")
    return values[0] if len(values) == 1 else values


def check_sidecar(engine_path: Path, trt_version: str, gpu: str | None, capability: str | None) -> dict:
    """Reads the engine's JSON sidecar and says clearly what does not match this machine."""
    from d3d.runtime.tensorrt import sidecar_path

    path = sidecar_path(engine_path)
    if not path.is_file():
        raise D3DError(f"{engine_path}: no sidecar {path.name}; rebuild the engine with `d3d build`")
    info = json.loads(path.read_text())
    problems = []
    if info.get("tensorrt_version") != trt_version:
        problems.append(f"built with TensorRT {info.get('tensorrt_version')}, running {trt_version}")
    if capability and info.get("compute_capability") not in (None, capability):
        problems.append(f"built for compute capability {info.get('compute_capability')}, this GPU is {capability}")
    if problems:
        raise D3DError(f"{engine_path}: " + "; ".join(problems) + " — rebuild it with `d3d build` on this machine")
    if gpu and info.get("gpu") not in (None, gpu):
        print(f"note: {engine_path.name} was built on {info.get('gpu')}, running on {gpu}")
    return info


class TensorRTRunner(Runner):
    """TensorRT engine through pycuda: device buffers, one stream, pinned host buffers, asynchronous
    copies, the frame ring on the device (each frame uploaded once), and optional CUDA-graph capture
    of the engine's launch (through cuda-python's runtime bindings) to cut per-frame launch overhead.

    NOT VERIFIED: no GPU or TensorRT was available where this was written (see docs/TENSORRT.md).
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: Path, plugin_library: Path | None = None, cuda_graph: bool = False) -> None:
        from d3d.runtime.tensorrt import device_description, find_plugin_library, import_tensorrt, load_plugin

        trt = import_tensorrt()
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
        except ImportError:
            raise D3DError("the TensorRT backend needs pycuda: pip install 'd3d-trt[tensorrt]'") from None
        dev = device_description()
        info = check_sidecar(engine_path, trt.__version__, dev["gpu"], dev["compute_capability"])
        super().__init__(D3DnetConfig(**info["model_config"]))
        self.precision = info.get("precision", "fp32")
        self._trt, self._cuda = trt, cuda
        logger = trt.Logger(trt.Logger.WARNING)
        if info.get("plugin"):
            load_plugin(trt, logger, find_plugin_library(plugin_library))
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise D3DError(f"{engine_path}: TensorRT could not deserialize the engine")
        self._context = self._engine.create_execution_context()
        self._stream = cuda.Stream()
        self._in_name, self._out_name = self._engine.get_tensor_name(0), self._engine.get_tensor_name(1)
        self._cuda_graph = cuda_graph
        self._graph_exec = None
        self._io_dtype = trt.nptype(self._engine.get_tensor_dtype(self._in_name))
        self._shape: tuple[int, int] | None = None

    def _allocate(self, h: int, w: int, batch: int = 1) -> None:
        cuda, cfg = self._cuda, self.config
        in_shape = (batch, cfg.in_channels, cfg.frames, h, w)
        out_shape = (batch, cfg.out_channels, cfg.scale * h, cfg.scale * w)
        self._context.set_input_shape(self._in_name, in_shape)
        item = np.dtype(self._io_dtype).itemsize
        self._frame_bytes = cfg.in_channels * h * w * item
        self._d_ring = [cuda.mem_alloc(self._frame_bytes) for _ in range(cfg.frames)]
        self._h_frame = cuda.pagelocked_empty((cfg.in_channels, h, w), self._io_dtype)
        self._d_in = cuda.mem_alloc(int(np.prod(in_shape)) * item)
        self._d_out = cuda.mem_alloc(int(np.prod(out_shape)) * item)
        self._h_out = cuda.pagelocked_empty(out_shape, self._io_dtype)
        self._context.set_tensor_address(self._in_name, int(self._d_in))
        self._context.set_tensor_address(self._out_name, int(self._d_out))
        self._shape = (h, w)
        self._graph_exec = None  # addresses and shapes changed: capture again

    def put(self, slot: int, frame: np.ndarray) -> None:
        h, w = frame.shape[-2:]
        if self._shape != (h, w):
            self._allocate(h, w)
        self._stream.synchronize()  # the staging buffer is reused: the previous upload must be done
        np.copyto(self._h_frame, frame, casting="same_kind")
        self._cuda.memcpy_htod_async(self._d_ring[slot], self._h_frame, self._stream)

    def _launch(self) -> None:
        if not self._context.execute_async_v3(self._stream.handle):
            raise D3DError("TensorRT execution failed (see the log above)")

    def _execute(self) -> None:
        if not self._cuda_graph:
            return self._launch()
        from cuda.bindings import runtime as cudart

        stream = cudart.cudaStream_t(self._stream.handle)
        if self._graph_exec is None:
            self._launch()  # first run outside the capture: TensorRT may allocate lazily
            _cuda_check(
                cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
            )
            self._launch()
            graph = _cuda_check(cudart.cudaStreamEndCapture(stream))
            self._graph_exec = _cuda_check(cudart.cudaGraphInstantiate(graph, 0))
        _cuda_check(cudart.cudaGraphLaunch(self._graph_exec, stream))

    def run(self, slots: Sequence[int]) -> np.ndarray:
        cuda = self._cuda
        # Assemble the [1, C, T, H, W] window from the device ring (C == 1 for D3Dnet's Y input: the
        # frames are contiguous T-slices; for C > 1 each channel plane is copied).
        c, plane = self.config.in_channels, self._frame_bytes // self.config.in_channels
        t = self.config.frames
        for ti, s in enumerate(slots):
            for ci in range(c):
                cuda.memcpy_dtod_async(
                    int(self._d_in) + (ci * t + ti) * plane, int(self._d_ring[s]) + ci * plane, plane, self._stream
                )
        self._execute()
        cuda.memcpy_dtoh_async(self._h_out, self._d_out, self._stream)
        self._stream.synchronize()
        return self._h_out[0].astype(np.float32)

    def infer(self, window: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        n, _, _, h, w = window.shape
        if self._shape != (h, w) or n != 1:
            self._allocate(h, w, n)
        cuda.memcpy_htod_async(self._d_in, np.ascontiguousarray(window, dtype=self._io_dtype), self._stream)
        self._execute()
        cuda.memcpy_dtoh_async(self._h_out, self._d_out, self._stream)
        self._stream.synchronize()
        return self._h_out.astype(np.float32)


def create_runner(
    backend: str,
    *,
    engine: Path | None = None,
    onnx: Path | None = None,
    checkpoint: Path | None = None,
    threads: int | None = None,
    plugin: Path | None = None,
    cuda_graph: bool = False,
) -> tuple[Runner, str]:
    """Builds the runner for ``backend`` from the given model files. Returns it and a line saying which
    weights it uses. ``auto``: TensorRT when an engine and a GPU are present, else ONNX Runtime (CPU)."""
    from d3d.runtime import weights
    from d3d.runtime.tensorrt import gpu_present

    if backend not in BACKENDS:
        raise D3DError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "tensorrt" if engine is not None and gpu_present() else "onnxruntime"
    if backend == "tensorrt":
        if engine is None:
            raise D3DError("the tensorrt backend needs --engine (build one with `d3d build`)")
        return TensorRTRunner(engine, plugin, cuda_graph), f"engine {engine}"
    if backend == "onnxruntime":
        if onnx is None:
            onnx, label = weights.onnx_for(checkpoint)
        else:
            label = f"ONNX {onnx}"
        return OrtRunner(onnx, threads=threads), label
    model, label = weights.torch_model(checkpoint, onnx)
    import torch

    return TorchRunner(model, "cuda" if torch.cuda.is_available() else "cpu", threads), label


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if os.uname().sysname == "Linux" else peak / (1024 * 1024)
