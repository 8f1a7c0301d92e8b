"""Child process of ``d3d.export.rtx``: parses an ONNX file with TensorRT-RTX, optionally with plugin
libraries loaded, and builds a serialized engine ahead of time through the build function TensorRT
uses too (``_trt_build.build_serialized``, strongly typed). Imports only the standard library, that
module and ``tensorrt_rtx_bindings`` (no torch, fast to start); runs in its own process because
TensorRT-RTX's parser needs ``libtensorrt_rtx.so`` on ``LD_LIBRARY_PATH`` (read only at process start),
and so that a crash inside the builder or a plugin cannot take the caller down.

Request (JSON on stdin): onnx, output, plugins, input, profile [min, opt, max], compute_capability.
Reply (one JSON line on stdout): ok, stage, errors, log, plugin_layers, layers, strongly_typed,
plugin_io_types, version.
"""

from __future__ import annotations

import json
import sys

# Run as a script: its own folder is sys.path[0], so the sibling module imports without the d3d package.
from _trt_build import BuildFailed, build_serialized


def run(req: dict) -> dict:
    import tensorrt_rtx_bindings as trt

    class Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg) -> None:
            if severity <= trt.ILogger.WARNING:
                self.lines.append(str(msg))

    logger = Log()
    reply: dict = {"ok": False, "stage": "load", "errors": [], "log": logger.lines, "plugin_layers": 0, "layers": 0}
    reply["version"] = trt.__version__
    # load_library, never the library's d3dRegisterPlugins: TensorRT-RTX's IPluginRegistry has another vtable.
    builder = trt.Builder(logger)
    registry = builder.get_plugin_registry()
    for lib in req["plugins"]:
        if not registry.load_library(lib):
            reply["errors"].append(f"could not load plugin library {lib}")
            return reply
    try:
        built, _ = build_serialized(
            trt,
            logger,
            req["onnx"],
            req["profile"],
            req["input"],
            compute_capability=req["compute_capability"],
            builder=builder,
        )
    except BuildFailed as exc:
        reply["stage"], reply["errors"] = exc.stage, exc.errors
        return reply
    with open(req["output"], "wb") as f:
        f.write(built.engine)
    reply.update(
        ok=True,
        stage="done",
        layers=built.layers,
        plugin_layers=built.plugin_layers,
        strongly_typed=built.strongly_typed,
        plugin_io_types=built.plugin_io_types,
    )
    return reply


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.stdin.read()))), flush=True)
