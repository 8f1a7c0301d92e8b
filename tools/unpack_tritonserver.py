"""Unpacks the tritonserver binary of the nvidia-pytriton wheel into <venv>/tritonserver (``make setup``).

Only the server, its Python backend and its bundled libraries are taken, in the wheel's own layout (the
binary's RPATH finds ``nvidia_pytriton.libs`` three folders up); the Python-backend stub for this
interpreter's version is copied beside ``libtriton_python.so``, where the backend looks for it. The
``pytriton`` Python package is never installed: it pins NumPy < 2.

usage: python tools/unpack_tritonserver.py WHEEL DEST
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

KEEP = ("pytriton/tritonserver/bin/", "pytriton/tritonserver/backends/", "pytriton/tritonserver/python_backend_stubs/",
        "nvidia_pytriton.libs/")  # fmt: skip


def main(wheel: Path, dest: Path) -> int:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename.startswith(KEEP) and not info.is_dir():
                path = Path(z.extract(info, tmp))
                mode = (info.external_attr >> 16) & 0o777
                os.chmod(path, (mode & 0o755) or 0o644)
    server = tmp / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        print(f"unpack_tritonserver: the wheel has no Python backend stub for Python {version}", file=sys.stderr)
        return 1
    shutil.copy2(stub, server / "backends" / "python" / stub.name)
    for exe in (server / "bin" / "tritonserver", server / "backends" / "python" / stub.name):
        exe.chmod(0o755)
    shutil.rmtree(server / "python_backend_stubs")  # the other Python versions' stubs
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"unpack_tritonserver: {dest}/pytriton/tritonserver/bin/tritonserver")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
