"""The one engine build that TensorRT (10, 11) and TensorRT-RTX share; the module is a parameter.

Strongly typed: the engine's precision is that of the ONNX graph's tensors, never a builder flag.
TensorRT 11 removed the precision builder flags (``kFP16``, ``kBF16``, ...) and is strongly typed only
(11.1 deprecates the ``kSTRONGLY_TYPED`` network flag), TensorRT-RTX has no FP16/BF16 builder flag
either, and TensorRT 10 is strongly typed when the network flag is set. So this sets that flag where
the module still has it and is not TensorRT >= 11, and no precision flag anywhere.

Imports only the standard library: ``_rtx_worker.py`` (a bare child process, no torch) runs it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class BuildFailed(Exception):
    """A build step refused; ``stage`` is "parse" or "build", ``errors`` the parser's or builder's words."""

    def __init__(self, stage: str, errors: list[str]):
        super().__init__("; ".join(errors) or stage)
        self.stage, self.errors = stage, errors


@dataclass
class BuiltEngine:
    engine: bytes
    layers: int
    plugin_layers: int  # PLUGIN_V3 layers (one per DeformConv3d node of a custom-op model)
    strongly_typed: bool  # the network flag was set (False on TensorRT >= 11, where it is the only mode)
    plugin_io_types: list[list[str]] = field(default_factory=list)  # per plugin layer: input and output dtypes


def strongly_typed_flags(trt) -> int:
    """The ``create_network`` flags of a strongly typed network for module ``trt``."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        return 0  # a module without the flag is strongly typed only
    if trt.__name__ == "tensorrt" and int(trt.__version__.split(".")[0]) >= 11:
        return 0  # deprecated on 11: strongly typed is the only mode
    return 1 << int(flag)


def _plugin_io_types(trt, network) -> list[list[str]]:
    types = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.PLUGIN_V3:
            ins = [str(layer.get_input(j).dtype) for j in range(layer.num_inputs) if layer.get_input(j) is not None]
            outs = [str(layer.get_output(j).dtype) for j in range(layer.num_outputs)]
            types.append([*ins, "->", *outs])
    return types


def build_serialized(
    trt,
    logger,
    onnx_path: str,
    profile: tuple[Sequence[int], Sequence[int], Sequence[int]] | None,
    input_name: str = "lr",
    *,
    workspace_gib: float | None = None,
    optimization_level: int | None = None,
    timing_cache: bytes | None = None,
    compute_capability: str | None = None,
    builder=None,
) -> tuple[BuiltEngine, bytes | None]:
    """Parses ``onnx_path`` into a strongly typed network of module ``trt`` (plugins already loaded by
    the caller) and builds a serialized engine. ``compute_capability`` (TensorRT-RTX, e.g. "SM89"):
    build ahead of time for that target. Returns the engine and the updated timing cache (where one was
    given). ``builder``: the one whose plugin registry loaded the plugins (TensorRT-RTX), else a new one.
    Raises :class:`BuildFailed`."""
    builder = builder if builder is not None else trt.Builder(logger)
    flags = strongly_typed_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read(), onnx_path):
            raise BuildFailed("parse", [str(parser.get_error(i)) for i in range(parser.num_errors)])
    kinds = [network.get_layer(i).type for i in range(network.num_layers)]
    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    if profile is not None:
        p = builder.create_optimization_profile()
        p.set_shape(input_name, *[tuple(s) for s in profile])
        config.add_optimization_profile(p)
    if compute_capability is not None:
        if not hasattr(trt.ComputeCapability, compute_capability):
            known = ", ".join(n for n in dir(trt.ComputeCapability) if n.startswith("SM"))
            raise BuildFailed("build", [f"unknown compute capability {compute_capability!r} (known: {known})"])
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, compute_capability), 0)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache)
        config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BuildFailed("build", ["build_serialized_network returned no engine (see the builder's log)"])
    built = BuiltEngine(
        bytes(engine),
        network.num_layers,
        kinds.count(trt.LayerType.PLUGIN_V3),
        bool(flags),
        _plugin_io_types(trt, network),
    )
    return built, (bytes(memoryview(config.get_timing_cache().serialize())) if cache is not None else None)
