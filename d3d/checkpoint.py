"""Loading and saving D3Dnet checkpoints in the seed's layout, without unpickling arbitrary objects."""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from d3d.atomic import atomic_write
from d3d.errors import D3DError, summary_line
from d3d.model import D3Dnet, D3DnetConfig

META_KEYS = ("epoch", "loss", "psnr")


class CheckpointError(D3DError, ValueError):
    """A checkpoint could not be used; the message is one line naming the file and the reason."""


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a seed-style ``{'epoch','state_dict','loss','psnr'}`` file or a bare state dict.

    Returns the state dict and the metadata (epoch, loss, psnr where present). Loading uses
    ``weights_only=True``: a file holding anything but tensors and plain containers is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{p}: refused: the file holds objects other than tensors and plain values, which are not "
            f"loaded (weights_only=True): {summary_line(exc)}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint (truncated or corrupt): expected a file saved by torch.save, "
            "such as the .pth.tar files of `d3d train` or the seed"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj:
        state, meta = obj["state_dict"], {k: obj[k] for k in META_KEYS if k in obj}
    else:
        state, meta = obj, {}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{p}: expected a state dict of tensors or a {{'epoch', 'state_dict', 'loss', 'psnr'}} checkpoint"
        )
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{p}: tensor {name} holds {bad} NaN/Inf values: refusing to run these weights")
    return state, meta


def infer_config(state: dict[str, torch.Tensor], source: str = "state dict") -> D3DnetConfig:
    """Derives the architecture from parameter shapes, so any seed-layout checkpoint loads as is."""
    required = ("input.0.weight", "TA.weight", "upscale.0.weight", "upscale.3.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not a D3Dnet state dict (missing keys: {', '.join(missing)})")
    if state["input.0.weight"].dim() != 5 or state["TA.weight"].dim() != 4:
        raise CheckpointError(f"{source}: input.0.weight must be 5-D and TA.weight 4-D (not a D3Dnet state dict)")
    nf, in_channels = state["input.0.weight"].shape[:2]
    frames = state["TA.weight"].shape[1] // nf
    if frames < 1 or state["TA.weight"].shape[1] != frames * nf or state["TA.weight"].shape[0] != nf:
        raise CheckpointError(
            f"{source}: TA.weight has shape {list(state['TA.weight'].shape)}, expected [nf, frames*nf] with nf = {nf}"
        )
    scale = math.isqrt(state["upscale.0.weight"].shape[0] // nf)
    if scale * scale * nf != state["upscale.0.weight"].shape[0]:
        raise CheckpointError(
            f"{source}: upscale.0.weight has {state['upscale.0.weight'].shape[0]} outputs, not nf*scale^2"
        )

    def count(prefix: str) -> int:
        pat = re.compile(rf"^{prefix}\.(\d+)\.dcn0\.weight$")
        return len({m.group(1) for k in state if (m := pat.match(k))})

    return D3DnetConfig(
        scale=scale,
        in_channels=int(in_channels),
        out_channels=int(state["upscale.3.weight"].shape[0]),
        frames=int(frames),
        nf=int(nf),
        d3d_blocks=count("residual_layer"),
        res_blocks=count("reconstruct"),
    )


def _abbrev(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_abbrev(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_abbrev(shapes, 3)}")
    if problems:
        raise CheckpointError(f"{source}: does not match the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: str | os.PathLike[str], **config_overrides: int) -> D3Dnet:
    """Loads a seed or d3d-trt checkpoint into a new D3Dnet in eval mode.

    The architecture is inferred from the parameter shapes; ``config_overrides`` (e.g. ``frames=7``)
    force values and make a mismatching file an error. The file's epoch/loss/psnr end up in
    ``model.checkpoint_meta``.
    """
    state, meta = read_state_dict(path)
    config = infer_config(state, str(path)).as_dict()
    config.update(config_overrides)
    model = D3Dnet(**config)
    load_state_into(model, state, str(path))
    model.checkpoint_meta = meta
    return model.eval()


def save_checkpoint(
    model: D3Dnet, path: str | os.PathLike[str], epoch: int = 0, loss: float = 0.0, psnr: float = 0.0
) -> None:
    """Saves in the seed's layout; written to a temporary file and renamed, so a failure leaves no
    half-written checkpoint."""
    with atomic_write(path) as tmp:
        torch.save({"epoch": epoch, "state_dict": model.state_dict(), "loss": loss, "psnr": psnr}, tmp)
