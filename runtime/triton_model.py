"""The Triton Python-backend model ``d3d serve`` writes into its repository (copied there as ``model.py``).

One LR frame in, the HR frames it completes out. Triton's sequence batcher routes each video's frames,
in order, with their correlation ID and START/END flags; this model keeps one temporal ring per sequence
and follows the local runtime's :class:`~d3d.runtime.scenes.WindowPlan` (edge clamping, scene cuts: the
cut verdict travels with the frame), running the project's own runner (any registered backend).

Tensors cross the backend through DLPack only: with NumPy 2 the backend's ``as_numpy()`` returns zeros
(checked with the nvidia-pytriton 0.7.0 server, Triton 2.51), while ``np.from_dlpack`` and
``Tensor.from_dlpack`` carry every byte (docs/SERVING.md).

Inputs: ``FRAME`` FP32 ``[C, H, W]``, ``INDEX`` INT64 ``[1]`` (the frame's number in its sequence, from
0: a frame out of order is refused), ``CUT`` BOOL ``[1]`` (the frame starts a shot), ``FIRST_OUTPUT``
INT64 ``[1]`` (read on START: frames before it are not computed, for a resumed run). Outputs:
``OUTPUT`` FP32 ``[k, C, sH, sW]`` and ``OUTPUT_INDEX`` INT64 ``[k]``: the k >= 0 frames completed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

PARAMETER = "d3d_model"  # the config.pbtxt parameter holding this model's JSON settings


class _Sequence:
    def __init__(self, frames: int, first_output: int) -> None:
        from d3d.runtime.scenes import WindowPlan

        self.plan = WindowPlan(frames)
        self.ring: dict[int, np.ndarray] = {}
        self.first_output = first_output
        self.shape: tuple[int, ...] | None = None
        self.seen = time.monotonic()

    @property
    def bytes(self) -> int:
        return sum(a.nbytes for a in self.ring.values())


def _local_runner(settings: dict, model_dir: Path):
    """The project's runner for ``settings`` (paths relative to the model's folder, as in a written
    production repository)."""
    import os

    from d3d.runtime.backends import create_runner, get_backend
    from d3d.runtime.models import ModelSource

    if settings.get("ort_ops"):  # the op library shipped inside the repository
        os.environ["D3D_ORT_OPS"] = str(model_dir / settings["ort_ops"])
    source = settings["source"]
    path = source.get("path")
    if path and not Path(path).is_absolute():
        path = model_dir / path
    model = ModelSource(source["kind"], Path(path) if path else None, source.get("sha256"))
    backend = get_backend(settings["backend"])
    options = backend.options(threads=settings.get("threads"), device=settings.get("device", "auto"))
    return create_runner(backend, model, options)


class _WindowModel:
    """Runs each window on a stateless model of the same server (BLS): ``lr`` in, ``sr`` out."""

    def __init__(self, pb, name: str, config: dict) -> None:
        from d3d.export.exporter import INPUT_NAME, OUTPUT_NAME
        from d3d.model import D3DnetConfig

        self.pb, self.name, self.config = pb, name, D3DnetConfig(**config)
        self.input, self.output = INPUT_NAME, OUTPUT_NAME

    def infer(self, window: np.ndarray) -> np.ndarray:
        pb = self.pb
        request = pb.InferenceRequest(
            model_name=self.name,
            inputs=[pb.Tensor.from_dlpack(self.input, np.ascontiguousarray(window, dtype=np.float32))],
            requested_output_names=[self.output],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.name}: {response.error().message()}")
        out = pb.get_output_tensor_by_name(response, self.output)
        if out.is_cpu():
            return np.from_dlpack(out)
        import torch  # a GPU output (TensorRT): copied to the host through torch's DLPack

        return torch.from_dlpack(out).cpu().numpy()

    def close(self) -> None:
        return None


class SequenceError(Exception):
    """A request this model refuses (the sequence keeps its state)."""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        config = json.loads(args["model_config"])
        settings = json.loads(config["parameters"][PARAMETER]["string_value"])
        if settings["backend"] == "window-model":  # a stateless network beside this model (production)
            self.runner = _WindowModel(pb, settings["window_model"], settings["config"])
        else:
            self.runner = _local_runner(settings, Path(args["model_repository"]))
        self.frames = self.runner.config.frames
        self.channels = self.runner.config.in_channels
        self.max_pixels = int(settings.get("max_frame_pixels", 0)) or None
        self.idle_s = float(settings.get("idle_seconds", 600))
        self.sequences: dict[int, _Sequence] = {}
        self.lock = threading.Lock()
        self.open_gauge = self.ring_gauge = None
        try:  # custom metrics (Triton >= 23.05): open sequences and the bytes their rings hold
            gauge = pb.MetricFamily.GAUGE
            # The families must outlive their metrics: both are kept on the model.
            self.families = (
                pb.MetricFamily("d3d_open_sequences", "video sequences with a ring", gauge),
                pb.MetricFamily("d3d_ring_bytes", "bytes held by the sequences' rings", gauge),
            )
            labels = {"model": args["model_name"], "instance": args["model_instance_name"]}
            self.open_gauge, self.ring_gauge = (f.Metric(labels) for f in self.families)
        except (AttributeError, Exception):  # an older backend: serving works without them
            pass
        # A client that dies mid-video never sends END: its ring is dropped after the idle time, as
        # Triton's sequence batcher frees its slot (max_sequence_idle_microseconds, the same value).
        self.stop = threading.Event()
        self.sweeper = threading.Thread(target=self._sweep, name="d3d-sweep", daemon=True)
        self.sweeper.start()
        self._report()

    def _sweep(self) -> None:
        while not self.stop.wait(min(1.0, self.idle_s / 4)):
            now = time.monotonic()
            with self.lock:
                for key in [k for k, s in self.sequences.items() if now - s.seen > self.idle_s]:
                    del self.sequences[key]
                self._report()

    def _report(self) -> None:
        if self.open_gauge is not None:
            self.open_gauge.set(len(self.sequences))
            self.ring_gauge.set(sum(s.bytes for s in self.sequences.values()))

    def _input(self, request, name: str) -> np.ndarray | None:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else np.from_dlpack(tensor)

    def _tensor(self, name: str, array: np.ndarray):
        # DLPack refuses an empty array's strides; an empty tensor has no bytes the NumPy route could garble.
        return self.pb.Tensor.from_dlpack(name, array) if array.size else self.pb.Tensor(name, array)

    def execute(self, requests: list) -> list:
        pb = self.pb
        responses = []
        for request in requests:
            try:
                with self.lock:
                    indices, frames = self._step(request)
                    self._report()
                responses.append(
                    pb.InferenceResponse([self._tensor("OUTPUT", frames), self._tensor("OUTPUT_INDEX", indices)])
                )
            except SequenceError as exc:
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(exc))))
            except Exception as exc:  # the runner's failure: this request fails, the server keeps serving
                responses.append(pb.InferenceResponse(error=pb.TritonError(f"d3d model failed: {exc}")))
        return responses

    def _step(self, request) -> tuple[np.ndarray, np.ndarray]:
        corrid = int(self._input(request, "CORRID").reshape(-1)[0])
        start = bool(self._input(request, "START").reshape(-1)[0])
        end = bool(self._input(request, "END").reshape(-1)[0])
        try:
            return self._frame(request, corrid, start, end)
        finally:
            if end:  # Triton ends the sequence whatever this frame's fate: so does its ring
                self.sequences.pop(corrid, None)

    def _frame(self, request, corrid: int, start: bool, end: bool) -> tuple[np.ndarray, np.ndarray]:
        frame = np.ascontiguousarray(self._input(request, "FRAME"), dtype=np.float32)
        index = int(self._input(request, "INDEX").reshape(-1)[0])
        cut = bool(self._input(request, "CUT").reshape(-1)[0])
        c, h, w = frame.shape
        if c != self.channels:
            raise SequenceError(f"FRAME has {c} channels; the model takes {self.channels}")
        if self.max_pixels is not None and h * w > self.max_pixels:
            raise SequenceError(f"FRAME is {w}x{h}: more than the server's {self.max_pixels} pixels per frame")
        if start:
            first = self._input(request, "FIRST_OUTPUT")
            self.sequences[corrid] = _Sequence(self.frames, 0 if first is None else int(first.reshape(-1)[0]))
        seq = self.sequences.get(corrid)
        if seq is None:
            raise SequenceError(
                f"sequence {corrid} has no ring here (idle longer than {self.idle_s:g} s, or never started): "
                "start it again with the START flag"
            )
        if index != seq.plan.count:
            raise SequenceError(f"sequence {corrid}: frame {index} arrived where frame {seq.plan.count} was expected")
        if seq.shape is not None and frame.shape != seq.shape:
            raise SequenceError(
                f"sequence {corrid}: frame {index} is {w}x{h}x{c}, the sequence's frames are "
                f"{seq.shape[2]}x{seq.shape[1]}x{seq.shape[0]}"
            )
        seq.shape, seq.seen = frame.shape, time.monotonic()
        before, slot, after = seq.plan.push(cut)
        done = [self._run(seq, win) for win in before]
        seq.ring[slot] = frame
        done += [self._run(seq, win) for win in after]
        if end:
            done += [self._run(seq, win) for win in seq.plan.end()]
        done = [d for d in done if d is not None]
        s = self.runner.config.scale
        oc = self.runner.config.out_channels
        frames = np.stack([y for _, y in done]) if done else np.zeros((0, oc, h * s, w * s), np.float32)
        return np.array([i for i, _ in done], dtype=np.int64), np.ascontiguousarray(frames, dtype=np.float32)

    def _run(self, seq: _Sequence, win) -> tuple[int, np.ndarray] | None:
        if win.index < seq.first_output:  # complete on the client already (a resumed run)
            return None
        window = np.stack([seq.ring[s] for s in win.slots], axis=1)[None]  # [1, C, T, H, W], as Runner.run
        return win.index, self.runner.infer(window)[0]

    def finalize(self) -> None:
        self.stop.set()
        self.sweeper.join()
        self.open_gauge = self.ring_gauge = None  # metrics before their families
        self.runner.close()
