"""Checks the import-linter contracts of pyproject.toml against the package as it installs.

The stages live in top-level folders mapped into the ``d3d`` package by setuptools' ``package-dir``
(``export/`` -> ``d3d.export`` ...). import-linter reads a package from one folder on disk, so on the
checkout it finds no ``d3d.runtime`` ("Missing layer") and a layer it cannot find checks nothing.
This script copies the Python sources into a temporary tree laid out as installed, then runs
import-linter there. ``--root`` checks another copy of the tree (the tests plant violations in one).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def stage(root: Path, dest: Path) -> None:
    """Copies every mapped package's ``.py`` files from ``root`` into ``dest`` at their import path."""
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setup["package-dir"]
    for package, folder in mapping.items():
        src, target = root / folder, dest.joinpath(*package.split("."))
        for f in src.rglob("*.py"):
            rel = f.relative_to(src)
            # A sub-folder mapped as its own package is copied by its own entry.
            if any((src / rel.parts[0]) == root / other for other in mapping.values() if other != folder):
                continue
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)


def check(root: Path) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="d3d-layers-") as tmp:
        stage(root, Path(tmp))
        shutil.copyfile(root / "pyproject.toml", Path(tmp) / "pyproject.toml")
        # The staged tree first on sys.path (ahead of an editable install's finder, which comes last).
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[2], no_cache=True, no_logo=True))"
        )
        return subprocess.run(
            [sys.executable, "-c", code, tmp, str(Path(tmp) / "pyproject.toml")],
            cwd=tmp,
            capture_output=True,
            text=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="checkout to check")
    args = parser.parse_args()
    proc = check(args.root.resolve())
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
