"""PyTorch backend: the model with the native DeformConv3d op (CPU, or CUDA with a CUDA build).

Runs in the calling thread: a signal's exception arrives between the model's Python-level operations,
so an interrupt stops within one layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from d3d.errors import D3DError
from d3d.runtime.backends.base import Backend, BackendOptions, Runner


@dataclass
class TorchOptions(BackendOptions):
    def validate(self) -> None:
        super().validate()
        if self.cuda_graph:
            raise D3DError("--cuda-graph is a TensorRT option")


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, model, options: TorchOptions | None = None) -> None:
        import torch

        options = options or TorchOptions()
        super().__init__(model.config)
        if options.threads:
            torch.set_num_threads(options.threads)
        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise D3DError("the pytorch backend has no CUDA device here (CPU build of PyTorch or no GPU)")
        if options.precision != "fp32" and device == "cpu":
            raise D3DError(f"the pytorch backend runs {options.precision} on CUDA only")
        self.device, self.precision = device, options.precision
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[options.precision]
        self._torch = torch
        self._model = model.eval().to(device=device, dtype=self._dtype)

    def put(self, slot: int, frame: np.ndarray) -> None:
        # The ring lives on the model's device: each frame is uploaded once.
        self._ring[slot] = self._torch.from_numpy(np.ascontiguousarray(frame)).to(self.device, self._dtype)

    def run(self, slots: Sequence[int]) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            y = self._model(torch.stack([self._ring[s] for s in slots], dim=1)[None])
        return y[0].float().cpu().numpy()

    def infer(self, window: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            y = self._model(torch.from_numpy(np.ascontiguousarray(window)).to(self.device, self._dtype))
        return y.float().cpu().numpy()


def _create(source, options: TorchOptions) -> TorchRunner:
    from d3d.runtime.models import torch_model

    return TorchRunner(torch_model(source), options)


BACKENDS = [
    Backend(
        "pytorch",
        "PyTorch with the native DeformConv3d op (CPU, or CUDA with a CUDA build of PyTorch)",
        TorchOptions,
        _create,
        lambda: None,
    )
]
