"""One locator for the native libraries CMake builds, used by every command.

Search order for each library: its environment override, the CMake build folder of a checkout
(``$D3D_BUILD_DIR``, else ``<checkout>/build``), then the copy a non-editable install ships
(``d3d/_lib/<subdir>/``). CMake writes each library into its own sub-folder of the build folder, with
anything it needs at run time beside it, so copying that folder is enough to use it elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_ROOT = PACKAGE_DIR.parent  # the repository root for a checkout / editable install


@dataclass(frozen=True)
class NativeLibrary:
    """Where one CMake-built library lives: ``<build>/<subdir>/<filename>``."""

    key: str  # the name `d3d info --json` reports
    filename: str
    subdir: str
    env: str  # environment variable that overrides the search


TRT_PLUGIN = NativeLibrary("trt_plugin_library", "libd3d_trt_plugin.so", "tensorrt", "D3D_TRT_PLUGIN")
ORT_OPS = NativeLibrary("ort_ops_library", "libd3d_ort_ops.so", "onnxruntime", "D3D_ORT_OPS")
CMAKE_LIBRARIES = (TRT_PLUGIN, ORT_OPS)


def build_dir() -> Path:
    """The CMake build folder of the checkout (``$D3D_BUILD_DIR`` overrides)."""
    return Path(os.environ.get("D3D_BUILD_DIR") or CHECKOUT_ROOT / "build")


def candidates(lib: NativeLibrary) -> list[Path]:
    """Every place searched for ``lib``, in order."""
    found = [Path(os.environ[lib.env])] if os.environ.get(lib.env) else []
    return [*found, build_dir() / lib.subdir / lib.filename, PACKAGE_DIR / "_lib" / lib.subdir / lib.filename]


def find_library(lib: NativeLibrary) -> Path | None:
    """The first existing candidate, or None where the library was not built."""
    return next((p for p in candidates(lib) if p.is_file()), None)


def trt_plugin_library() -> Path | None:
    return find_library(TRT_PLUGIN)


def ort_ops_library() -> Path | None:
    return find_library(ORT_OPS)
