"""Child process of ``d3d.export.rtx``: parses an ONNX file with TensorRT-RTX, optionally with plugin
libraries loaded, and builds a serialized engine ahead of time. Imports only the standard library and
``tensorrt_rtx_bindings`` (no torch, fast to start); runs in its own process because TensorRT-RTX's
parser needs ``libtensorrt_rtx.so`` on ``LD_LIBRARY_PATH`` (read only at process start), and so that a
crash inside the builder or a plugin cannot take the caller down.

Request (JSON on stdin): onnx, output, plugins, input, profile [min, opt, max], compute_capability.
Reply (one JSON line on stdout): ok, stage, errors, log, plugin_layers, layers.
"""

from __future__ import annotations

import json
import sys


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
    builder = trt.Builder(logger)
    # load_library, never the library's d3dRegisterPlugins: TensorRT-RTX's IPluginRegistry has another vtable.
    registry = builder.get_plugin_registry()
    for lib in req["plugins"]:
        if not registry.load_library(lib):
            reply["errors"].append(f"could not load plugin library {lib}")
            return reply
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    reply["stage"] = "parse"
    with open(req["onnx"], "rb") as f:
        parsed = parser.parse(f.read())
    if not parsed:
        reply["errors"] = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        return reply
    reply["layers"] = network.num_layers
    kinds = [network.get_layer(i).type for i in range(network.num_layers)]
    reply["plugin_layers"] = kinds.count(trt.LayerType.PLUGIN_V3)
    reply["stage"] = "build"
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(req["input"], *[tuple(s) for s in req["profile"]])
    config.add_optimization_profile(profile)
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, req["compute_capability"]), 0)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        reply["errors"] = ["build_serialized_network returned no engine"]
        return reply
    with open(req["output"], "wb") as f:
        f.write(bytes(engine))
    reply["ok"] = True
    return reply


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.stdin.read()))), flush=True)
