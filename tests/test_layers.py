"""The layering contract (d3d <- export <- runtime <- verify/CLI) is checked by `make lint` through
tools/check_layers.py; these tests show that it checks every layer: it passes on the checkout and fails
on an upward import planted in export/ and in d3d/ops.py (in a temporary copy of the tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "check_layers.py"

pytest.importorskip("importlinter", reason="install the project's [dev] extra (import-linter)")


def _copy_tree(dest: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for folder in ("d3d", "export", "runtime", "verify", "plugins"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build*"))
    return dest


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root)], capture_output=True, text=True)


def test_contract_is_kept_and_covers_every_layer():
    proc = _check(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout
    assert "Missing layer" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("path", "line", "expected"),
    [
        ("export/exporter.py", "from d3d.runtime import windows", "d3d.export is not allowed to import d3d.runtime"),
        ("export/symbolic.py", "import d3d.verify", "d3d.export is not allowed to import d3d.verify"),
        ("d3d/ops.py", "from d3d.export import symbolic", "d3d.ops is not allowed to import d3d.export"),
        ("runtime/windows.py", "from d3d.cli.commands import dims_arg", "d3d.runtime is not allowed to import"),
        ("d3d/training/train.py", "from d3d.cli.commands import dims_arg", "d3d.training is not allowed to import"),
        ("d3d/model.py", "from d3d.training import metrics", "d3d.model is not allowed to import d3d.training"),
        ("runtime/sources.py", "from d3d.training import data", "d3d.runtime is not allowed to import d3d.training"),
    ],
)
def test_planted_upward_import_breaks_the_contract(tmp_path, path, line, expected):
    root = _copy_tree(tmp_path)
    target = root / path
    # Inside a function, as the old upward imports were: lazy imports count too.
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {line}\n")
    proc = _check(root)
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and expected in proc.stdout, proc.stdout


def test_an_unplaced_module_fails_the_exhaustive_contract(tmp_path):
    root = _copy_tree(tmp_path)
    (root / "d3d" / "newthing.py").write_text('"""A module nobody placed in a layer."""\n')
    proc = _check(root)
    assert proc.returncode != 0 and "newthing" in proc.stdout + proc.stderr
