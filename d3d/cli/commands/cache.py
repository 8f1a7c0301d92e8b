"""``d3d cache list|clear``: the engines the engine cache built (:mod:`d3d.export.engine_cache`)."""

from __future__ import annotations

import argparse
import datetime
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "the cache folder: $D3D_CACHE_DIR/engines, else $XDG_CACHE_HOME/d3d-trt/engines or ~/.cache/d3d-trt/engines"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="list or clear")
    ls = sub.add_parser("list", help="one line per cached engine: its key fields, size and date")
    ls.add_argument("--json", action="store_true", help="print a JSON list (the sidecars, with path and size)")
    sub.add_parser("clear", help="delete the cached engines and their sidecars (nothing else in the folder)")


def _line(path, info: dict) -> str:
    key = info["key"]
    profile = " ".join("x".join(map(str, s)) for s in key["profile"])
    gpu = f"{key['gpu']} (cc {key['compute_capability']})" if key["gpu"] else f"target {key['compute_capability']}"
    plugin = key["plugin_sha256"][:12] if key["plugin_sha256"] else "none"
    size = path.stat().st_size if path.is_file() else 0
    built = datetime.datetime.fromtimestamp(path.stat().st_mtime) if path.is_file() else None
    when = built.strftime("%Y-%m-%d %H:%M") if built else "engine missing"
    return (
        f"{path.name} | onnx {key['onnx_sha256'][:12]} | plugin {plugin} | {key['builder']} {key['builder_version']} "
        f"| {gpu} | {key['precision']} | profile {profile} | {size / 1e6:.1f} MB | {when}"
    )


def product_on_stdout(args: argparse.Namespace) -> bool:
    """`cache list` prints its product; `cache clear` goes on when stdout closes."""
    return args.action == "list"


def run(args: argparse.Namespace) -> int:
    from d3d.export import engine_cache

    root = engine_cache.engines_dir()
    found = engine_cache.entries(root)
    if args.action == "clear":
        n = engine_cache.clear(root)
        print(f"removed {n} cached engine{'s' if n != 1 else ''} from {root}")
        return 0
    if args.json:
        records = [
            {**info, "path": str(path), "size": path.stat().st_size if path.is_file() else None} for path, info in found
        ]
        print(json.dumps(records, indent=1, sort_keys=True))
        return 0
    print(f"{len(found)} cached engine{'s' if len(found) != 1 else ''} in {root}")
    for path, info in found:
        print(_line(path, info))
    return 0
