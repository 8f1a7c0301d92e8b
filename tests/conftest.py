"""Shared fixtures. Randomness is fresh each run; the seed is printed so a failure can be replayed
with D3D_TEST_SEED=<seed>."""

from __future__ import annotations

import os
import random

import pytest
import torch


def pytest_report_header(config):
    return f"d3d test seed: {_SEED} (set D3D_TEST_SEED to replay)"


_SEED = int(os.environ.get("D3D_TEST_SEED", random.SystemRandom().randrange(2**31)))


@pytest.fixture
def gen() -> torch.Generator:
    """A torch.Generator seeded from the run's seed plus the test's name."""
    import zlib

    name = os.environ.get("PYTEST_CURRENT_TEST", "")
    return torch.Generator().manual_seed(_SEED + zlib.crc32(name.split(" ")[0].encode()))


@pytest.fixture(scope="session")
def native() -> None:
    import d3d.ops

    d3d.ops.ensure_native()


# --- Small models, frames and file-system snapshots for the CLI tests ---------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small D3Dnet checkpoint (nf=8, one block of each kind), saved once per session."""
    from d3d import D3Dnet, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth.tar"
    save_checkpoint(D3Dnet(nf=8, d3d_blocks=1, res_blocks=1), path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    """The custom-op ONNX export of :func:`tiny_checkpoint`."""
    import logging

    from d3d import load_checkpoint
    from d3d.export import ExportOptions, export_onnx, file_sha256

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    path = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_onnx(load_checkpoint(tiny_checkpoint), path, ExportOptions(), checkpoint_sha256=file_sha256(tiny_checkpoint))
    return path


def write_png(path, rgb) -> None:
    import av

    with av.open(str(path), "w", format="image2") as out:
        s = out.add_stream("png", rate=1)
        s.height, s.width, s.pix_fmt = rgb.shape[0], rgb.shape[1], "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(p)
        for p in s.encode():
            out.mux(p)


def write_frames(folder, n: int = 8, size: tuple[int, int] = (32, 32), names=None, seed: int = 0):
    """``n`` random RGB PNG frames named ``1.png`` .. ``n.png`` (or ``names``)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names or [f"{k}.png" for k in range(1, n + 1)]:
        write_png(folder / name, rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return folder


def snapshot(root) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``root``, by relative path, hidden ones included."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
