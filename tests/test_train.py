"""``d3d train``: exact resume after an interruption, torchrun (gloo) equals one process on the combined
batches, checkpoints in the seed's layout."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HANG_S

from d3d.checkpoint import load_checkpoint, read_state_dict
from d3d.training.data import prepare_vimeo, write_png
from d3d.training.train import StepInfo, TrainConfig, Trainer, state_path

TINY = {"nf": 4, "d3d_blocks": 1, "res_blocks": 1, "patch": 4}


@pytest.fixture(scope="module")
def septuplets(tmp_path_factory) -> Path:
    """17 frames of a moving random texture, 64x64 (LR 16x16): 4 training and 1 test septuplets."""
    root = tmp_path_factory.mktemp("train")
    clip = root / "clip"
    clip.mkdir()
    rng = np.random.default_rng(1234)
    tex = (rng.random((82, 100, 3)) * 255).astype(np.uint8)
    for i in range(17):
        write_png(clip / f"{i:02d}.png", np.ascontiguousarray(tex[i : i + 64, 2 * i : 2 * i + 64]))
    prepare_vimeo([clip], root / "data", stride=1, holdout="clip:10-17")
    return root / "data"


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = {"batch": 2, "epoch_samples": 4, "lr_step": 1, "epochs": 3, "save_every": 1, **TINY}
    base.update(kw)
    return TrainConfig(data=str(data), out=str(out), **base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path)[0]


def test_interrupted_and_resumed_equals_uninterrupted(septuplets, tmp_path, native):
    torch.set_num_threads(1)  # one thread: the same float summation order in both runs
    full = Trainer(_config(septuplets, tmp_path / "full"), progress=False)
    assert full.steps_per_epoch == 2 and full.total_steps == 6
    full.run()

    def interrupt(info: StepInfo) -> None:
        if info.step == 3:  # mid-epoch, after one learning-rate decay
            raise KeyboardInterrupt

    part = Trainer(_config(septuplets, tmp_path / "part"), on_step=interrupt, progress=False)
    with pytest.raises(KeyboardInterrupt):
        part.run()
    last = tmp_path / "part" / "last.pth.tar"
    assert torch.load(state_path(last), weights_only=True)["step"] == 3
    resumed = Trainer(_config(septuplets, tmp_path / "part"), resume=last, progress=False)
    assert resumed.step == 3
    resumed.run()

    a, b = _weights(tmp_path / "full" / "last.pth.tar"), _weights(last)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Different from the start: training did move the weights.
    init = Trainer(_config(septuplets, tmp_path / "init"), progress=False).model.state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(4e-4 * 0.5**3)

    # The checkpoint is in the seed's layout and loads with d3d.load_checkpoint.
    ckpt = torch.load(last, weights_only=True)
    assert sorted(ckpt) == ["epoch", "loss", "psnr", "state_dict"]
    assert ckpt["epoch"] == 3 and len(ckpt["loss"]) == 3
    model = load_checkpoint(last)
    assert dataclasses.asdict(model.config)["nf"] == 4
    # A different recipe cannot resume this run.
    with pytest.raises(Exception, match="different recipe"):
        Trainer(_config(septuplets, tmp_path / "part", lr=1e-3), resume=last, progress=False)


def test_cli_train_runs_and_reports(septuplets, tmp_path, native):
    from d3d.cli import main

    out = tmp_path / "run"
    args = ["train", str(septuplets), "-o", str(out), "--nf", "4", "--d3d-blocks", "1", "--res-blocks", "1"]
    args += ["--patch", "4", "--batch", "2", "--steps", "2", "--epoch-samples", "4", "-q", "--threads", "1"]
    assert main(args) == 0
    assert (out / "best.pth.tar").is_file() and (out / "last.state.pt").is_file()
    assert (out / "best.json").is_file()
    assert main(["train", str(tmp_path / "nowhere"), "-o", str(out)]) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
def test_torchrun_two_ranks_equal_one_process_on_combined_batches(septuplets, tmp_path, native):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not found")
    common = ["train", str(septuplets), "--nf", "4", "--d3d-blocks", "1", "--res-blocks", "1", "--patch", "4"]
    common += ["--steps", "3", "--epoch-samples", "8", "--lr-step", "1", "-q", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = str(torchrun) if torchrun.is_file() else "torchrun"

    def train(*prefix: str, batch: int, out: str) -> subprocess.CompletedProcess:
        run = subprocess.run([*prefix, "-m", "d3d.cli", *common, "--batch", str(batch), "-o", str(tmp_path / out)],
                             env=env, capture_output=True, text=True, timeout=HANG_S)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        return run

    ddp = train(launcher, "--standalone", "--nproc_per_node", "2", batch=2, out="ddp")
    train(sys.executable, batch=4, out="one")
    assert "2 process(es), global batch 4" in ddp.stdout
    a, b = _weights(tmp_path / "ddp" / "last.pth.tar"), _weights(tmp_path / "one" / "last.pth.tar")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # Each rank drew its own shard: one rank on its half alone would not give these weights.
    train(sys.executable, batch=2, out="half")
    c = _weights(tmp_path / "half" / "last.pth.tar")
    assert any(not torch.allclose(a[k], c[k], rtol=1e-5, atol=1e-6) for k in a)
