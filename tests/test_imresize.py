"""MATLAB-style bicubic imresize: a case worked by hand from MATLAB's algorithm, and agreement with
BasicSR's ``matlab_functions.imresize`` (an independent port the SR community uses) on random images."""

from __future__ import annotations

import importlib.util
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from d3d.training.imresize import cubic, imresize, resize_matrix

REPO = Path(__file__).resolve().parents[1]


def test_cubic_kernel_values():
    # Keys' kernel with a = -0.5 at hand-computed points.
    x = torch.tensor([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5], dtype=torch.float64)
    want = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0]
    assert cubic(x).tolist() == want


def test_hand_worked_shrink_by_two():
    # Column [0, 0, 0, 1] shrunk x1/2. Output 1: u = 1/0.5 + 0.5*(1 - 2) = 1.5, taps -3..6, kernel
    # widened to 8: weights 0.5*cubic(0.5*(u - i)) = [0, -3/256, -9/256, 29/256, 111/256, 111/256,
    # 29/256, -9/256, -3/256, 0] (sum 1). Symmetric padding of [1 2 3 4]: index 5 -> 4, 6 -> 3, so
    # pixel 4 gets -9/256 (tap 4) - 3/256 (tap 5) = -12/256. Output 2: u = 3.5, taps -1..8: pixel 4
    # gets tap 4 (111/256) + tap 5 (29/256, mirrored) = 140/256.
    img = np.array([[0.0], [0.0], [0.0], [1.0]])
    out = imresize(img, 0.5)
    assert out.shape == (2, 1)
    np.testing.assert_allclose(out[:, 0], [-12 / 256, 140 / 256], rtol=0, atol=1e-15)
    # uint8 in, uint8 out: rounded and clipped as MATLAB does.
    out8 = imresize((img * 255).astype(np.uint8), 0.5)
    assert out8.dtype == np.uint8 and out8[:, 0].tolist() == [0, round(255 * 140 / 256)]


def test_rows_sum_to_one_and_constant_is_kept():
    for n, scale in ((17, 0.25), (9, 4.0), (30, 0.5), (5, 1 / 3)):
        m = resize_matrix(n, int(np.ceil(n * scale)), scale)
        torch.testing.assert_close(m.sum(1), torch.ones(m.shape[0], dtype=torch.float64), rtol=0, atol=1e-12)
    np.testing.assert_allclose(imresize(np.full((12, 20, 3), 0.3), 0.25), 0.3, atol=1e-14)


def _basicsr_sdist() -> Path | None:
    env = os.environ.get("D3D_BASICSR_SDIST")
    if env:
        return Path(env)
    found = sorted((REPO / ".venv" / "sdists").glob("basicsr-*.tar.gz"))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def basicsr_imresize(tmp_path_factory):
    """BasicSR's matlab_functions.py, loaded alone from the basicsr source distribution (its package
    ``__init__`` imports far more than this one file needs)."""
    sdist = _basicsr_sdist()
    if sdist is None or not sdist.is_file():
        pytest.skip("basicsr sdist not found: `make setup` downloads it to .venv/sdists (or set D3D_BASICSR_SDIST)")
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("basicsr/utils/matlab_functions.py")), None)
        if member is None:
            pytest.skip(f"{sdist} has no basicsr/utils/matlab_functions.py")
        path = tmp_path_factory.mktemp("basicsr") / "matlab_functions.py"
        path.write_bytes(tar.extractfile(member).read())
    spec = importlib.util.spec_from_file_location("basicsr_matlab_functions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.imresize


@pytest.mark.parametrize(
    ("shape", "scale"),
    [
        ((64, 48, 3), 0.25),
        ((37, 52, 3), 0.25),
        ((20, 28, 3), 0.5),
        ((11, 9, 3), 4.0),
        ((23, 30), 0.25),
        ((16, 12), 3.0),
    ],
)
def test_matches_basicsr(basicsr_imresize, gen, shape, scale):
    img = torch.rand(shape, generator=gen, dtype=torch.float64).numpy()
    ours = imresize(img, scale)
    theirs = basicsr_imresize(img.astype(np.float32), scale)  # BasicSR computes in float32
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)
