"""``d3d train``: the seed's training recipe, resumable, on one process or under torchrun."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="dataset in the Vimeo-90K septuplet layout (see `d3d prepare`)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="run folder: checkpoints, training state")
    m = parser.add_argument_group("model (default: the paper's)")
    m.add_argument("--scale", type=int, default=4, help="upscaling factor")
    m.add_argument("--nf", type=int, default=64, help="feature channels")
    m.add_argument("--d3d-blocks", type=int, default=5, help="residual D3D blocks")
    m.add_argument("--res-blocks", type=int, default=6, help="2-D residual blocks")
    r = parser.add_argument_group("recipe (default: the seed's)")
    r.add_argument("--patch", type=int, default=32, help="LR crop size")
    r.add_argument("--batch", type=int, default=64, help="samples per step and process")
    r.add_argument("--lr", type=float, default=4e-4, help="Adam learning rate")
    r.add_argument("--lr-step", type=int, default=6, help="halve (--gamma) the learning rate every N epochs")
    r.add_argument("--gamma", type=float, default=0.5, help="learning-rate factor at each --lr-step")
    r.add_argument("--epochs", type=int, default=35, help="epochs in all (the seed trains 35)")
    r.add_argument(
        "--epoch-samples", type=int, default=0, help="samples per epoch (default: one pass over sep_trainlist.txt)"
    )
    r.add_argument("--seed", type=int, default=0, help="seed of the initialisation, crops and data order")
    s = parser.add_argument_group("run")
    s.add_argument("--steps", type=int, default=0, help="stop after this many optimizer steps in all")
    s.add_argument("--time-budget", type=float, help="stop (and save) after this many minutes of this process")
    s.add_argument("--resume", type=Path, help="continue from a checkpoint with its .state.pt beside it")
    s.add_argument("--save-every", type=int, default=50, help="save last.pth.tar every N steps (and every epoch)")
    s.add_argument("--val-every", type=int, default=0, help="validate every N steps (default: every epoch)")
    s.add_argument("--threads", type=int, help="CPU threads per process")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from d3d.locks import exclusive

    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 holds the run folder for all ranks
        return _run(args)
    with exclusive(args.output, what="run folder"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from d3d.errors import D3DError
    from d3d.outputs import check_location, check_target, check_writable

    for name in ("scale", "nf", "patch", "batch", "epochs", "lr_step"):
        if getattr(args, name) < 1:
            raise D3DError(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.d3d_blocks, args.res_blocks, args.steps, args.epoch_samples, args.save_every, args.val_every) < 0:
        raise D3DError("block counts, --steps, --epoch-samples, --save-every and --val-every must be >= 0")
    # The output policy (d3d.outputs): never the current folder or the data; a new run never writes into a
    # folder that holds files (a previous run's checkpoints are continued with --resume, never replaced).
    # Checked by rank 0 only: under torchrun the other ranks may start after it has created the folder.
    if int(os.environ.get("RANK", "0")) == 0:
        check_location(args.output, inputs=(args.data,), what="--output")
        if args.resume is None:
            if args.output.is_dir() and any(args.output.iterdir()):
                raise D3DError(
                    f"{args.output}: already holds files (a previous run?): continue it with --resume "
                    f"{args.output / 'last.pth.tar'}, or give a new run folder"
                )
            check_target(args.output, inputs=(args.data,), folder=True, what="--output")
        # Checkpoints go inside the run folder: it (or where it would be created) must take files.
        check_writable(args.output, what="--output", inside=True)
    created = _first_missing(args.output)  # removed again where the run fails before saving anything
    before = _signature(args.output / "last.pth.tar")
    try:
        return _train(args)
    except BaseException as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            _after_failure(exc, args.output, created, before)
        raise


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (what the run will create)."""
    missing = None
    for p in [folder, *folder.parents]:
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


def _after_failure(exc: BaseException, out: Path, created: Path | None, before: tuple[int, int] | None) -> None:
    """A failed or interrupted run leaves nothing it created, except a checkpoint it saved to resume from,
    which the error then names (an interrupt's line names it already: the trainer noted it)."""
    from d3d.errors import add_kept, kept

    last = out / "last.pth.tar"
    now = _signature(last)
    if now is not None:
        if now != before and kept(exc) is None:
            add_kept(exc, f"kept {last}: continue with --resume {last}")
        return
    if created is None:
        return
    # Only folders that are empty: whatever someone else put there meanwhile stays.
    for folder in [out, *out.parents]:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == created:
            return


def _train(args: argparse.Namespace) -> int:
    # The trainer's log lines reach stderr through the CLI's handler of the "d3d" logger (a root handler
    # here printed each of them twice, and in-process outlived the run).
    from d3d.training.train import TrainConfig, Trainer

    cfg = TrainConfig(
        data=str(args.data),
        out=str(args.output),
        scale=args.scale,
        nf=args.nf,
        d3d_blocks=args.d3d_blocks,
        res_blocks=args.res_blocks,
        patch=args.patch,
        batch=args.batch,
        lr=args.lr,
        lr_step=args.lr_step,
        gamma=args.gamma,
        epochs=args.epochs,
        epoch_samples=args.epoch_samples,
        max_steps=args.steps,
        seed=args.seed,
        save_every=args.save_every,
        val_every=args.val_every,
    )
    budget = None if args.time_budget is None else args.time_budget * 60
    trainer = Trainer(cfg, resume=args.resume, time_budget_s=budget, progress=not args.quiet, threads=args.threads)
    if trainer.rank == 0:
        print(
            f"training D3Dnet(nf={cfg.nf}, d3d_blocks={cfg.d3d_blocks}, res_blocks={cfg.res_blocks}) on "
            f"{len(trainer.train_set)} septuplets ({args.data}), {trainer.world} process(es), global batch "
            f"{trainer.global_batch}, {trainer.steps_per_epoch} steps/epoch, from step {trainer.step} to "
            f"{trainer.total_steps}"
        )
    best = trainer.run()
    if trainer.rank == 0:
        print(f"done at step {trainer.step}: {best}")
    if trainer.distributed:
        import torch.distributed as dist

        # Every rank waits for rank 0's last validation and save before the group goes; a rank leaving
        # early made gloo abort the others ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    return 0
