"""Training D3Dnet with the seed's recipe, resumable and multi-process.

The recipe (``code/train.py`` of the seed): septuplets from ``sep_trainlist.txt``, random 32x32 LR crops
with random flips and transposition, Y channel, MSE on the centre frame, Adam (lr 4e-4), StepLR every 6
epochs x0.5, 35 epochs of one pass over the list each.

Exact resume: the data order and every augmentation draw are functions of ``(seed, epoch, position
in the epoch)``, not of a running random state, so a run restarted from its last checkpoint and training
state file continues with the very samples an uninterrupted run would have drawn. The RNG states are
saved too (nothing in the recipe draws from them, but user code might).

Multi-process: under ``torchrun`` every rank takes its own ``batch`` samples of each global batch of
``batch * world_size`` (rank r: positions ``r*batch ... r*batch+batch-1``), and DistributedDataParallel
averages the gradients, which equals one process training on the combined batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from d3d import probes
from d3d.atomic import atomic_write
from d3d.checkpoint import load_state_into, read_state_dict
from d3d.errors import D3DError, Interrupted, add_kept
from d3d.model import D3Dnet
from d3d.training.data import SeptupletSet

log = logging.getLogger(__name__)

STATE_SUFFIX = ".state.pt"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in the training state, so a resume can check it."""

    data: str
    out: str
    scale: int = 4
    nf: int = 64
    d3d_blocks: int = 5
    res_blocks: int = 6
    patch: int = 32
    batch: int = 64  # per process
    lr: float = 4e-4
    lr_step: int = 6  # epochs
    gamma: float = 0.5
    epochs: int = 35
    epoch_samples: int = 0  # samples per epoch; 0: one pass over the train list (the seed)
    max_steps: int = 0  # 0: no limit besides epochs
    seed: int = 0
    save_every: int = 50  # steps; also at every epoch end
    val_every: int = 0  # steps; 0: at every epoch end

    def model_kwargs(self) -> dict[str, int]:
        return {"scale": self.scale, "nf": self.nf, "d3d_blocks": self.d3d_blocks, "res_blocks": self.res_blocks}


# Fields that may change on resume (the run's length and bookkeeping, not its arithmetic).
RESUMABLE_CHANGES = {"out", "epochs", "max_steps", "save_every", "val_every", "data"}


@dataclass
class StepInfo:
    step: int
    epoch: int
    loss: float
    psnr: float
    lr: float


def state_path(checkpoint: Path) -> Path:
    name = checkpoint.name.removesuffix(".pth.tar")
    return checkpoint.with_name(name + STATE_SUFFIX)


def epoch_order(n: int, samples: int, seed: int, epoch: int) -> list[int]:
    """The data order of an epoch: concatenated random permutations of the ``n`` septuplets."""
    order: list[int] = []
    k = 0
    while len(order) < samples:
        g = torch.Generator().manual_seed(hash_seed(seed, epoch, k))
        order.extend(torch.randperm(n, generator=g).tolist())
        k += 1
    return order[:samples]


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and processes, unlike ``hash``)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, position, 1]))


def batch_psnr(sr: torch.Tensor, hr: torch.Tensor) -> float:
    """The seed's training PSNR: both truncated to 8 bits, 8-pixel border left out (when the patch
    allows), over the whole batch."""
    a, b = (sr.detach() * 255).int().float() / 255, (hr * 255).int().float() / 255
    if a.shape[-1] > 16 and a.shape[-2] > 16:
        a, b = a[..., 8:-8, 8:-8], b[..., 8:-8, 8:-8]
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(1 / mse)


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }


def _set_rng_states(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state((s["numpy"][0], s["numpy"][1].numpy().astype(np.uint32), *s["numpy"][2:]))
    random.setstate((s["python_version"], tuple(s["python"]), s["python_gauss"]))


class Trainer:
    """One training run; ``run()`` trains until the epochs, ``max_steps`` or the time budget are used up."""

    def __init__(
        self,
        config: TrainConfig,
        resume: Path | None = None,
        time_budget_s: float | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        progress: bool = True,
        threads: int | None = None,
    ) -> None:
        self.cfg = config
        self.time_budget_s = time_budget_s
        self.on_step = on_step
        self.show_progress = progress
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        if threads:
            torch.set_num_threads(threads)
        if self.distributed:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = torch.device(
            f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
        )
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        root = Path(config.data)
        self.train_set = SeptupletSet(root, "sep_trainlist.txt", config.scale, config.patch)
        self.val_set = (
            SeptupletSet(root, "sep_testlist.txt", config.scale, config.patch)
            if (root / "sep_testlist.txt").is_file()
            else None
        )
        if len(self.train_set) == 0:
            raise D3DError(f"{root}/sep_trainlist.txt lists no septuplets")
        if self.val_set is not None and len(self.val_set) == 0:
            self.val_set = None
        self.epoch_samples = config.epoch_samples or len(self.train_set)
        self.global_batch = config.batch * self.world
        if self.epoch_samples < self.global_batch:
            raise D3DError(
                f"an epoch of {self.epoch_samples} samples is smaller than one global batch ({self.global_batch}); "
                "raise --epoch-samples or lower --batch"
            )
        self.steps_per_epoch = self.epoch_samples // self.global_batch

        torch.manual_seed(config.seed)
        self.model = D3Dnet(**config.model_kwargs()).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_step, gamma=config.gamma)
        self.step = 0  # optimizer steps done
        self.saved_step: int | None = None  # the step of the last.pth.tar this process saved
        self.history: dict[str, list[float]] = {"loss": [], "psnr": [], "val_psnr": []}
        self.best_psnr = -math.inf
        self._epoch_loss: list[float] = []
        self._epoch_psnr: list[float] = []
        if resume is not None:
            self._resume(Path(resume))
        self.net: torch.nn.Module = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    # ------------------------------------------------------------------------------ bookkeeping
    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def total_steps(self) -> int:
        total = self.cfg.epochs * self.steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def _resume(self, path: Path) -> None:
        spath = state_path(path)
        if not spath.is_file():
            raise D3DError(f"{spath}: missing (the training state that resuming {path.name} needs)")
        state_dict, _ = read_state_dict(path)
        load_state_into(self.model, state_dict, str(path))
        try:
            st = torch.load(spath, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable state file is a user-facing error
            raise D3DError(
                f"{spath}: not a readable training state (truncated or corrupt): expected the {STATE_SUFFIX} file "
                f"`d3d train` saves beside {path.name}"
            ) from exc
        saved = st["config"]
        # A field the saved run predates counts as its default.
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        diffs = [
            f"{k}: {saved.get(k, defaults[k])!r} -> {v!r}"
            for k, v in dataclasses.asdict(self.cfg).items()
            if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v
        ]
        if diffs:
            raise D3DError(f"cannot resume {path.name} with a different recipe ({'; '.join(diffs)})")
        if st["world_size"] != self.world:
            raise D3DError(f"{path.name} was trained with {st['world_size']} processes, resuming with {self.world}")
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step = int(st["step"])
        self.history = {k: list(v) for k, v in st["history"].items()}
        self.best_psnr = float(st["best_psnr"])
        self._epoch_loss, self._epoch_psnr = list(st["epoch_loss"]), list(st["epoch_psnr"])
        _set_rng_states(st["rng"])
        log.info("resumed %s at step %d", path, self.step)

    def save(self, name: str) -> Path:
        """Checkpoint (seed layout) + training state, each written atomically (state first, so a
        checkpoint never lacks its state)."""
        path = self.out / f"{name}.pth.tar"
        epoch = self.step // self.steps_per_epoch
        order = epoch_order(len(self.train_set), self.epoch_samples, self.cfg.seed, epoch)
        state = {
            "config": dataclasses.asdict(self.cfg),
            "world_size": self.world,
            "step": self.step,
            "epoch": epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "data_order": torch.tensor(order, dtype=torch.int64),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "best_psnr": self.best_psnr,
            "epoch_loss": self._epoch_loss,
            "epoch_psnr": self._epoch_psnr,
            "rng": _rng_states(),
        }
        with atomic_write(state_path(path)) as tmp:
            torch.save(state, tmp)
        ckpt = {
            "epoch": epoch,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "loss": list(self.history["loss"]),
            "psnr": list(self.history["psnr"]),
        }
        with atomic_write(path) as tmp:
            torch.save(ckpt, tmp)
        if name == "last":
            self.saved_step = self.step
        return path

    def kept(self) -> str | None:
        """What a stopped run leaves to continue from (rank 0's last.pth.tar, also one an earlier run of a
        resumed folder saved), in words, or None."""
        last = self.out / "last.pth.tar"
        if self.rank != 0 or not last.is_file():
            return None
        at = f" (step {self.saved_step})" if self.saved_step is not None else ""
        return f"kept {last}{at}: continue with --resume {last}"

    # --------------------------------------------------------------------------------- training
    def _batch(self, epoch: int, step_in_epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = self._order_cache.get(epoch)
        if order is None:
            order = epoch_order(len(self.train_set), self.epoch_samples, self.cfg.seed, epoch)
            self._order_cache = {epoch: order}
        first = step_in_epoch * self.global_batch + self.rank * self.cfg.batch
        lrs, hrs = [], []
        for pos in range(first, first + self.cfg.batch):
            lr, hr = self.train_set.sample(order[pos], sample_rng(self.cfg.seed, epoch, pos))
            lrs.append(lr)
            hrs.append(hr)
        return torch.stack(lrs).to(self.device), torch.stack(hrs).to(self.device)

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean PSNR (the seed's training PSNR) on the centre crops of the held-out septuplets."""
        if self.val_set is None:
            return None
        self.model.eval()
        values = []
        for i in range(len(self.val_set)):
            lr, hr = self.val_set.sample(i, None)
            sr = self.model(lr[None].to(self.device)).clamp(0, 1)
            values.append(batch_psnr(sr, hr[None, :, 3].to(self.device)))
        self.model.train()
        return float(np.mean(values))

    def bicubic_validation(self) -> float | None:
        """The validation PSNR of bicubic (MATLAB-style x``scale`` of the LR Y crop): the bar to beat."""
        if self.val_set is None:
            return None
        from d3d.training.imresize import imresize

        values = []
        for i in range(len(self.val_set)):
            lr, hr = self.val_set.sample(i, None)
            up = imresize(lr[0, 3].to(torch.float64), float(self.cfg.scale)).clamp(0, 1)
            values.append(batch_psnr(up[None, None], hr[None, :, 3].to(torch.float64)))
        return float(np.mean(values))

    def _end_of_epoch(self, epoch: int) -> None:
        self.scheduler.step()
        self.history["loss"].append(float(np.mean(self._epoch_loss)) if self._epoch_loss else 0.0)
        self.history["psnr"].append(float(np.mean(self._epoch_psnr)) if self._epoch_psnr else 0.0)
        self._epoch_loss, self._epoch_psnr = [], []

    def _maybe_validate_and_save(self, epoch_end: bool, final: bool) -> None:
        val_due = (self.cfg.val_every and self.step % self.cfg.val_every == 0) or (not self.cfg.val_every and epoch_end)
        save_due = epoch_end or final or (self.cfg.save_every and self.step % self.cfg.save_every == 0)
        if self.rank != 0:
            return
        if val_due or final:
            v = self.validate()
            if v is not None:
                self.history["val_psnr"].append(v)
                self._log(f"step {self.step}: validation PSNR {v:.3f} dB on {len(self.val_set)} held-out septuplets")
                if v > self.best_psnr:
                    self.best_psnr = v
                    self.save("best")
                    self._write_best_info(v)
        if save_due or val_due:
            self.save("last")

    def _write_best_info(self, v: float) -> None:
        info = {"step": self.step, "val_psnr": v, "config": dataclasses.asdict(self.cfg), "world_size": self.world}
        with atomic_write(self.out / "best.json") as tmp:
            tmp.write_text(json.dumps(info, indent=1))

    def _log(self, msg: str) -> None:
        # Through the progress bar while it shows (so the line does not break it), else the logger.
        if self._bar is not None and not self._bar.disable:
            self._bar.write(msg)
        else:
            log.info(msg)

    def run(self) -> Path | None:
        """Trains; returns the path of the best (or, without a validation set, the last) checkpoint."""
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        self._order_cache: dict[int, list[int]] = {}
        self._bar = None
        start = time.monotonic()
        total = self.total_steps
        self._bar = tqdm(
            total=total,
            initial=self.step,
            unit="step",
            disable=not self.show_progress or self.rank != 0,
            dynamic_ncols=True,
        )
        if self.rank == 0 and self.val_set is not None:
            self._log(f"bicubic validation PSNR {self.bicubic_validation():.3f} dB (the bar to beat)")
        self.model.train()
        consistent = True  # False while a step is half done: an interrupt then must not save it
        try:
            while self.step < total:
                probes.reached(f"train step {self.step}")
                epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
                lr, hr = self._batch(epoch, in_epoch)
                consistent = False
                sr = self.net(lr)
                target = hr[:, :, 3]
                loss = F.mse_loss(sr, target)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.step += 1
                p = batch_psnr(sr, target)
                loss_value = loss.item()
                self._epoch_loss.append(loss_value)
                self._epoch_psnr.append(p)
                epoch_end = self.step % self.steps_per_epoch == 0
                if epoch_end:
                    self._end_of_epoch(epoch)
                consistent = True
                cur_lr = self.optimizer.param_groups[0]["lr"]
                self._bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.2e}", psnr=f"{p:.2f}", lr=f"{cur_lr:.1e}")
                self._bar.update()
                over_budget = self.time_budget_s is not None and time.monotonic() - start >= self.time_budget_s
                self._maybe_validate_and_save(epoch_end, final=self.step >= total or over_budget)
                if self.on_step is not None:
                    self.on_step(StepInfo(self.step, epoch, loss_value, p, cur_lr))
                if over_budget and self.step < total:
                    self._log(
                        f"time budget used up at step {self.step}/{total}; "
                        f"continue with --resume {self.out / 'last.pth.tar'}"
                    )
                    break
        except (KeyboardInterrupt, Interrupted) as exc:
            # Save the last completed step (never a half-done one), then let the interrupt through, saying
            # what it kept (the CLI prints that instead of "partial outputs removed").
            if self.rank == 0 and self.step > 0 and consistent and self.saved_step != self.step:
                self.save("last")
            note = self.kept()
            if note:
                add_kept(exc, note)
            raise
        finally:
            self._bar.close()
        best = self.out / "best.pth.tar"
        return best if best.is_file() else self.out / "last.pth.tar"
