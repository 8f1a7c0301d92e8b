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
