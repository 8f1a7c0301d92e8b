"""TensorRT backend: an engine from `d3d build` (with the DeformConv3d plugin), or one built on first use
from an ``--onnx`` model and kept in the engine cache (:mod:`d3d.export.engine_cache`), through pycuda.

Device buffers, one stream, pinned host buffers, asynchronous copies, the frame ring on the device
(each frame uploaded once), and optional CUDA-graph capture of the engine's launch (through cuda-python's
runtime bindings) to cut per-frame launch overhead.

NOT VERIFIED: no GPU with TensorRT was available where this was written (see docs/TENSORRT.md); only the
missing-TensorRT path is tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3d.errors import D3DError
from d3d.model import D3DnetConfig
from d3d.runtime.backends.base import Backend, BackendOptions, Runner


@dataclass
class TensorRTOptions(BackendOptions):
    plugin: Path | None = None  # DeformConv3d plugin library (default: d3d.native_libs finds it)

    def validate(self) -> None:
        super().validate()
        if self.device == "cpu":
            raise D3DError("the tensorrt backend runs on a CUDA GPU only")
        if self.plugin is not None and not Path(self.plugin).is_file():
            raise D3DError(f"{self.plugin}: no such file (--plugin)")


def _cuda_check(result):
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise D3DError(f"CUDA error {err} during CUDA-graph capture/launch")
    return values[0] if len(values) == 1 else values


class TensorRTRunner(Runner):
    """TensorRT engine through pycuda: device buffers, one stream, pinned host buffers, asynchronous
    copies, the frame ring on the device (each frame uploaded once), and optional CUDA-graph capture
    of the engine's launch (through cuda-python's runtime bindings) to cut per-frame launch overhead.

    NOT VERIFIED: no GPU or TensorRT was available where this was written (see docs/TENSORRT.md).
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: Path, options: TensorRTOptions | None = None) -> None:
        from d3d.export.tensorrt import (
            check_sidecar,
            device_description,
            find_plugin_library,
            import_tensorrt,
            load_plugin,
        )

        options = options or TensorRTOptions()
        plugin_library, cuda_graph = options.plugin, options.cuda_graph

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
        self._profile = info.get("profile")

    def check_frame_size(self, h: int, w: int) -> None:
        """The engine's optimization profile bounds the LR frame size: say so before any work."""
        if not self._profile:
            return
        lo, hi = self._profile["min"], self._profile["max"]
        if not (lo[-2] <= h <= hi[-2] and lo[-1] <= w <= hi[-1]):
            raise D3DError(
                f"LR frames are {w}x{h} but the engine's profile takes {lo[-1]}x{lo[-2]} .. {hi[-1]}x{hi[-2]} "
                "(WxH): use --tile, or rebuild the engine with a larger --max-shape"
            )

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


# The profile of an engine built from --onnx on first use: `d3d build`'s defaults (LR batch x H x W).
ONNX_PROFILE_BHW = ((1, 64, 64), (1, 180, 320), (1, 272, 480))


def _create(source, options: TensorRTOptions) -> TensorRTRunner:
    if source.kind == "onnx":
        # Built once per (model, plugin, TensorRT, GPU, precision, profile) and reused from the engine cache.
        from d3d.export import load_model, model_config
        from d3d.export.engine_cache import tensorrt_engine

        cfg = model_config(load_model(source.path), str(source.path))
        profile = [(b, cfg["in_channels"], cfg["frames"], h, w) for b, h, w in ONNX_PROFILE_BHW]
        # None: the engine has the graph's precision (strongly typed); options.precision is not a build choice.
        return TensorRTRunner(tensorrt_engine(source.path, None, profile, options.plugin).path, options)
    return TensorRTRunner(source.path, options)


def _unavailable() -> str | None:
    import importlib.util

    from d3d.export.tensorrt import gpu_present

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'd3d-trt[tensorrt]' on a machine with an NVIDIA GPU)"
    if not gpu_present():
        return "no CUDA GPU is available"
    return None


BACKENDS = [
    Backend(
        "tensorrt",
        "TensorRT engine from `d3d build`, or from --onnx built once into the engine cache (NVIDIA GPU)",
        TensorRTOptions,
        _create,
        _unavailable,
        sources=("engine", "onnx"),
        missing_sdk=True,
    )
]
