"""`pip install .` (non-editable) into a fresh virtual environment: `d3d upscale` works from the installed
copy, and the ONNX cache key follows the installed exporter code (not files of a checkout)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_frames

from d3d._native import cache_dir
from d3d.native_libs import CMAKE_LIBRARIES, ORT_OPS, build_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding a wheel-style install of this project. Its dependencies (torch, onnx, ...)
    come from this environment through a .pth path entry; d3d itself only from the install."""
    tmp = tmp_path_factory.mktemp("install")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    target_site = Path(
        subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       check=True, capture_output=True, text=True).stdout.strip()
    )  # fmt: skip
    # A plain path entry: the dependencies import, but this environment's .pth files (the editable
    # install's finder among them) are not run, so `d3d` can come only from the new install.
    (target_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # Built from a copy of the sources: an in-tree build would write build/lib and *.egg-info into the
    # checkout (build/ is CMake's folder).
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *[p.name for p in ROOT.glob("LICENSE*")]):
        shutil.copy(ROOT / name, src / name)
    for folder in ("d3d", "export", "runtime", "verify", "plugins"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build*"))
    # The documented wheel step (docs/ONNXRUNTIME.md): CMake's library folders go into d3d/_lib/<subdir>/.
    for lib in CMAKE_LIBRARIES:
        if (build_dir() / lib.subdir / lib.filename).is_file():
            shutil.copytree(build_dir() / lib.subdir, src / "d3d" / "_lib" / lib.subdir)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", str(src)],
        capture_output=True, text=True, cwd=tmp, env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return venv, target_site


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **env})


def test_installed_copy_upscales_and_keys_its_cache_on_its_own_code(installed, tmp_path, tiny_checkpoint):
    if not (build_dir() / ORT_OPS.subdir / ORT_OPS.filename).is_file():
        pytest.skip(f"{ORT_OPS.filename} is not built (make native, with ../shared's ONNX Runtime headers)")
    venv, target_site = installed
    py, d3d_exe = venv / "bin" / "python", venv / "bin" / "d3d"
    # A private cache for the ONNX export; the compiled PyTorch op is shared (same sources, same key).
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "torch_ext").symlink_to(cache_dir() / "torch_ext", target_is_directory=True)
    # No build folder and no overrides: every native library must come from the installed copy.
    env = {"D3D_CACHE_DIR": str(cache), "PYTHONPATH": "", "D3D_BUILD_DIR": str(tmp_path / "nobuild")}
    env |= {lib.env: "" for lib in CMAKE_LIBRARIES}
    where = subprocess.run(
        [str(py), "-c", "import d3d, d3d.export.exporter, d3d.runtime.backends, d3d.verify; "
         "print(d3d.__file__); print(d3d.export.exporter.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env}, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(target_site) for p in where), where

    write_frames(tmp_path / "frames", 8, size=(32, 32))
    proc = _run([str(d3d_exe), "upscale", "frames", "--checkpoint", str(tiny_checkpoint), "-o", "out", "-q"],
                tmp_path, env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "done: 8 frames (1.png .. 8.png) 32x32 -> 128x128" in proc.stdout
    assert len(list((tmp_path / "out").glob("frame_*.png"))) == 8

    key_code = "from d3d.runtime.models import exporter_code_hash; print(exporter_code_hash())"
    key1 = subprocess.run([str(py), "-c", key_code], cwd=tmp_path, capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.strip()  # fmt: skip
    cached = [p.name for p in (cache / "onnx").glob("*.onnx")]
    assert len(cached) == 1 and key1 in cached[0]
    exporter = target_site / "d3d" / "export" / "exporter.py"
    exporter.write_text(exporter.read_text() + "\n# changed after install\n")
    key2 = subprocess.run([str(py), "-c", key_code], cwd=tmp_path, capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.strip()  # fmt: skip
    assert key2 != key1

    # The locator from the installed copy: the compiled op of these sources, and each CMake library the
    # wheel carries, from inside the install (no build folder to fall back on).
    info = _run([str(d3d_exe), "info", "--json"], tmp_path, env)
    assert info.returncode == 0, info.stderr
    libs = json.loads(info.stdout)["native_libraries"]
    for lib in CMAKE_LIBRARIES:
        shipped = target_site / "d3d" / "_lib" / lib.subdir / lib.filename
        assert libs[lib.key] == (str(shipped) if shipped.is_file() else None), (lib.key, libs[lib.key])
    assert libs["ort_ops_library"] is not None
    assert libs["torch_op_library"] and Path(libs["torch_op_library"]).is_file()
