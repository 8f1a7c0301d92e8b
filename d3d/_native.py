"""Builds and loads the native DeformConv3d op (plugins/torch + plugins/kernels) with ninja.

The extension is compiled on first use (or by ``make setup``) into a cache folder keyed by a hash of
every source file, so an edited kernel is rebuilt and an unchanged one loads in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import torch

from d3d.errors import D3DError, reason, summary_line

REPO_ROOT = Path(__file__).resolve().parent.parent


def _plugins_dir() -> Path:
    """plugins/ of the checkout (editable install) or the copy shipped in the wheel (d3d._plugins)."""
    import importlib.util

    spec = importlib.util.find_spec("d3d._plugins")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return REPO_ROOT / "plugins"


PLUGINS = _plugins_dir()
KERNEL_DIR = PLUGINS / "kernels"
TORCH_DIR = PLUGINS / "torch"

_lock = threading.Lock()
_loaded = False


class NativeBuildError(D3DError, RuntimeError):
    """The native op could not be built or loaded; the message is one line that says why."""


def _sources(with_cuda: bool) -> list[Path]:
    srcs = [TORCH_DIR / "deform_conv3d_op.cpp"]
    if with_cuda:
        srcs.append(TORCH_DIR / "deform_conv3d_op_cuda.cu")
    return srcs


def _openblas_library() -> str | None:
    """The scipy-openblas32 wheel's OpenBLAS, the fp32 GEMM of the CPU forward (None: MKL via ATen)."""
    try:
        import scipy_openblas32
    except ImportError:
        return None
    path = Path(scipy_openblas32.get_lib_dir()) / "libscipy_openblas.so"
    return str(path) if path.is_file() else None


def _source_hash(with_cuda: bool) -> str:
    h = hashlib.sha256(torch.__version__.encode())
    h.update(b"cuda" if with_cuda else b"cpu")
    files = sorted(KERNEL_DIR.glob("*.h*")) + sorted(TORCH_DIR.glob("*")) + [Path(__file__)]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    base = os.environ.get("D3D_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "d3d-trt"
    )
    return Path(base)


def cache_subdir(name: str) -> Path:
    """``cache_dir()/name``, created, where new files can be made in it; else a one-line error naming the
    folder and ``D3D_CACHE_DIR`` (a read-only home, a shared install)."""
    from d3d.outputs import unwritable_reason

    folder = cache_dir() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        why = unwritable_reason(folder)
    except OSError as exc:
        why = reason(exc)
    if why is not None:
        raise D3DError(f"{folder}: cannot write the d3d cache ({why}): set D3D_CACHE_DIR to a writable folder")
    return folder


def load_native(verbose: bool = False) -> None:
    """Builds (if needed) and loads the extension, registering ``torch.ops.d3d.*``.

    Raises:
        NativeBuildError: no C++ compiler, missing sources, or a failed build.
    """
    global _loaded
    verbose = verbose or os.environ.get("D3D_VERBOSE_BUILD") == "1"
    with _lock:
        if _loaded:
            return
        if not (TORCH_DIR / "deform_conv3d_op.cpp").is_file():
            raise NativeBuildError(
                f"native op sources not found under {PLUGINS}; install the project from its checkout (pip install -e .)"
            )
        # CUDA sources only where this PyTorch has CUDA and nvcc is usable.
        with_cuda = torch.cuda.is_available() and torch.version.cuda is not None
        from torch.utils import cpp_extension

        name = f"d3d_ops_{_source_hash(with_cuda)}"
        build_dir = cache_dir() / "torch_ext" / name
        built = build_dir / f"{name}.so"
        openblas = _openblas_library()
        if openblas is not None:  # the op loads it at first use (plugins/kernels/deform_conv3d_openblas.h)
            os.environ.setdefault("D3D_OPENBLAS_LIBRARY", openblas)
        if built.is_file():
            # Built before for exactly these sources: load it without cpp_extension's build lock, which
            # a process killed mid-check leaves behind and every later run would then wait on forever.
            torch.ops.load_library(str(built))
            _loaded = True
            return
        cxx = os.environ.get("CXX", "c++")
        # An up-to-date build in the cache loads without a compiler.
        if not (build_dir / f"{name}.so").is_file() and shutil.which(cxx) is None:
            raise NativeBuildError(
                f"no C++ compiler found ('{cxx}' is not on PATH); install g++ or set CXX to build the DeformConv3d op"
            )
        try:
            build_dir = cache_subdir("torch_ext") / name
            build_dir.mkdir(exist_ok=True)
        except (D3DError, OSError) as exc:  # a failed build, as callers expect (they may fall back)
            raise NativeBuildError(str(exc) if isinstance(exc, D3DError) else f"{build_dir}: {reason(exc)}") from exc
        cflags = ["-O3", "-fopenmp", "-DNDEBUG"]
        if with_cuda:
            cflags.append("-DD3D_WITH_CUDA")
        try:
            cpp_extension.load(
                name=name,
                sources=[str(s) for s in _sources(with_cuda)],
                extra_include_paths=[str(KERNEL_DIR), str(TORCH_DIR)],
                extra_cflags=cflags,
                extra_cuda_cflags=["-O3", "-DD3D_WITH_CUDA", "--expt-relaxed-constexpr"],
                extra_ldflags=["-fopenmp", "-ldl"],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=verbose,
            )
        except Exception as exc:  # cpp_extension raises bare RuntimeError/OSError with the compiler log
            last = summary_line(exc, last=True)
            raise NativeBuildError(
                f"building the native DeformConv3d op failed ({last}); rerun with D3D_VERBOSE_BUILD=1 "
                f"for the compiler log (build folder {build_dir})"
            ) from exc
        _loaded = True


def built_library() -> Path | None:
    """The compiled PyTorch op library for the current sources, where it has been built (else None)."""
    with_cuda = torch.cuda.is_available() and torch.version.cuda is not None
    try:
        name = f"d3d_ops_{_source_hash(with_cuda)}"
    except OSError:
        return None
    path = cache_dir() / "torch_ext" / name / f"{name}.so"
    return path if path.is_file() else None
