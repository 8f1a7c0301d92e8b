"""Triton backend: the frames of a video streamed to a ``d3d serve`` server (or any Triton serving the
repository it writes), one sequence per video, each LR frame sent once.

The server keeps the temporal ring and applies the runtime's window rules
(:class:`~d3d.runtime.scenes.WindowPlan`); this runner sends each frame with its index and cut verdict
over one gRPC stream (several requests in flight) and hands back the completed frames in order, so the
pipeline's decoding, progress, streams kept, resume and summary are those of a local run. The model is
the server's: its identity (weights' sha256, runner, architecture) is part of :meth:`describe`, and so of
a resume's fingerprint.
"""

from __future__ import annotations

import json
import queue
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from d3d.errors import D3DError, SDKMissing
from d3d.model import D3DnetConfig
from d3d.runtime.backends.base import Backend, BackendOptions, Runner

WAIT_SLICE_S = 0.05  # how often a waiting thread looks for signals
DEFAULT_URL = "127.0.0.1:8001"
MODEL_NAME = "d3dnet"
PARAMETER = "d3d_model"  # the config parameter d3d serve writes (d3d.runtime.triton_model.PARAMETER)


@dataclass
class TritonOptions(BackendOptions):
    url: str = DEFAULT_URL  # the server's gRPC HOST:PORT
    model: str = MODEL_NAME
    in_flight: int = 4  # requests sent ahead of the responses (network latency hides behind compute)

    def validate(self) -> None:
        super().validate()
        where = "the server decides it (d3d serve --{0})"
        if self.threads is not None:
            raise D3DError("--threads with --backend triton: " + where.format("threads"))
        if self.device != "auto":
            raise D3DError("--device with --backend triton: " + where.format("device"))
        if self.precision != "fp32" or self.cuda_graph:
            raise D3DError("the triton backend runs the server's model as served (fp32, no --cuda-graph)")
        if self.tile:
            raise D3DError("--tile with --backend triton: the server keeps whole frames in its ring; use d3d serve "
                           "--max-frame-pixels to bound them")  # fmt: skip
        if self.in_flight < 1:
            raise D3DError(f"in_flight must be >= 1, got {self.in_flight}")


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise SDKMissing("the triton backend needs tritonclient: pip install 'd3d-trt[serve]'") from None
    return grpcclient


def server_message(exc: BaseException) -> str:
    """A Triton client error as one line."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(text).split())


class TritonRunner(Runner):
    name = "triton"
    remote = True  # the network runs elsewhere: no local estimate of its time or memory

    def __init__(self, options: TritonOptions) -> None:
        grpcclient = _grpc()
        self.url, self.model, self.in_flight = options.url, options.model, options.in_flight
        try:
            self._client = grpcclient.InferenceServerClient(self.url)
            if not self._client.is_server_live():
                raise D3DError(f"the Triton server at {self.url} is not live")
            if not self._client.is_model_ready(self.model):
                raise D3DError(f"the Triton server at {self.url} has no ready model {self.model!r} (d3d serve)")
            config = self._client.get_model_config(self.model, as_json=True)["config"]
        except grpcclient.InferenceServerException as exc:
            raise D3DError(f"cannot reach a Triton server at {self.url}: {server_message(exc)}") from None
        try:
            settings = json.loads(config["parameters"][PARAMETER]["string_value"])
            self.identity = settings["identity"]
            self.max_pixels = int(settings.get("max_frame_pixels") or 0)
        except (KeyError, TypeError, ValueError):
            raise D3DError(f"model {self.model!r} at {self.url} is not a d3d serve model (no {PARAMETER})") from None
        super().__init__(D3DnetConfig(**self.identity["config"]))
        self.device = "server"
        self.latencies: list[float] = []  # seconds from each request's send to its response (d3d bench)

    def describe(self) -> str:
        i = self.identity
        return f"triton {self.model} (server: {i['runner']}; {i['weights']}; d3d {i['d3d']})"

    def check_frame_size(self, h: int, w: int) -> None:
        if self.max_pixels and h * w > self.max_pixels:
            raise D3DError(
                f"{w}x{h} LR frames exceed the server's {self.max_pixels} pixels per frame "
                "(d3d serve --max-frame-pixels)"
            )

    def infer(self, window: np.ndarray) -> np.ndarray:
        raise D3DError("the triton backend streams whole videos (d3d upscale); it does not run single windows")

    def stream_frames(self, items: Iterable, opts, clock: list[float]) -> Iterator:
        """The pipeline's network stage (:func:`d3d.runtime.windows._network`) through the server: yields
        ``(InFrame, y_sr)`` in frame order (``y_sr`` None for the ``opts.done`` frames kept by a resumed
        run, which the server does not compute) and other items as they come."""
        from d3d.runtime.frames import InFrame

        grpcclient = _grpc()
        responses: queue.Queue = queue.Queue()
        sequence = secrets.randbits(63) | 1  # a correlation ID no other client picks (0 means none)
        pending: dict[int, object] = {}  # index -> frame sent, waiting for its output
        ready: dict[int, np.ndarray] = {}
        state = {"sent": 0, "received": 0, "next": 0}
        sent_at: dict[str, float] = {}

        def send(frame, index: int, end: bool) -> None:
            inputs = [
                grpcclient.InferInput("FRAME", list(frame.y.shape), "FP32"),
                grpcclient.InferInput("INDEX", [1], "INT64"),
                grpcclient.InferInput("CUT", [1], "BOOL"),
            ]
            inputs[0].set_data_from_numpy(np.ascontiguousarray(frame.y, dtype=np.float32))
            inputs[1].set_data_from_numpy(np.array([index], dtype=np.int64))
            inputs[2].set_data_from_numpy(np.array([bool(frame.cut) and index > 0]))
            sent_at[str(index)] = time.perf_counter()
            if index == 0:
                inputs.append(grpcclient.InferInput("FIRST_OUTPUT", [1], "INT64"))
                inputs[-1].set_data_from_numpy(np.array([opts.done], dtype=np.int64))
            try:
                self._client.async_stream_infer(
                    self.model, inputs, request_id=str(index), sequence_id=sequence,
                    sequence_start=index == 0, sequence_end=end,
                )  # fmt: skip
            except grpcclient.InferenceServerException as exc:
                # A broken stream: the callback has the cause (the server gone, say), the exception not.
                detail = next((e for _, e in list(responses.queue) if e is not None), exc)
                raise D3DError(f"Triton server {self.url}: {server_message(detail)}") from None
            state["sent"] += 1

        def collect(block: bool) -> None:
            t0 = time.perf_counter()
            while True:
                try:
                    result, error = responses.get(timeout=WAIT_SLICE_S) if block else responses.get_nowait()
                except queue.Empty:
                    if block:
                        continue
                    return
                state["received"] += 1
                if error is not None:
                    raise D3DError(f"Triton server {self.url}: {server_message(error)}")
                for i, y in zip(result.as_numpy("OUTPUT_INDEX").tolist(), result.as_numpy("OUTPUT"), strict=True):
                    ready[int(i)] = y
                if block:
                    clock[0] += time.perf_counter() - t0
                    return

        def completed():
            while state["next"] in pending and (state["next"] < opts.done or state["next"] in ready):
                i = state["next"]
                yield pending.pop(i), ready.pop(i, None)
                state["next"] += 1

        def callback(result, error) -> None:
            if result is not None:
                t0 = sent_at.pop(result.get_response().id, None)
                if t0 is not None:
                    self.latencies.append(time.perf_counter() - t0)
            responses.put((result, error))

        self._client.start_stream(callback=callback)
        finished = False
        try:
            held, n = None, -1  # the newest frame goes out once the next shows it is not the last
            for item in items:
                if not isinstance(item, InFrame):
                    yield item
                    continue
                n += 1
                pending[n] = item
                if held is not None:
                    send(held, n - 1, end=False)
                held = item
                while state["sent"] - state["received"] >= self.in_flight:
                    collect(block=True)
                collect(block=False)
                yield from completed()
            if held is not None:
                send(held, n, end=True)
            while state["received"] < state["sent"]:
                collect(block=True)
            yield from completed()
            if pending:
                raise D3DError(f"Triton server {self.url} returned no output for frame {min(pending)}")
            finished = True
        finally:
            try:
                self._client.stop_stream(cancel_requests=not finished)
            except Exception:  # the stream is gone with the server: nothing left to stop
                pass

    def close(self) -> None:
        super().close()
        try:
            self._client.close()
        except Exception:
            pass


def _create(source, options: TritonOptions) -> TritonRunner:
    return TritonRunner(options)


def _unavailable() -> str | None:
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        return "tritonclient is not installed (pip install 'd3d-trt[serve]')"
    return None


BACKENDS = [
    Backend(
        "triton",
        "a d3d serve (Triton Inference Server) model over gRPC: --url HOST:PORT; the server's model and runner",
        TritonOptions,
        _create,
        _unavailable,
        sources=("checkpoint", "onnx", "random", "engine"),
        missing_sdk=True,
        remote=True,
    )
]
