"""D3Dnet layout against the seed's reference, checkpoint round trips, and refusals."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import d3d
from d3d import CheckpointError, D3Dnet, DeformConv3dPack, load_checkpoint, save_checkpoint

REFERENCE = json.loads((Path(__file__).parent / "data" / "d3dnet_x4_state_dict.json").read_text())


def test_parameter_names_and_shapes_match_seed():
    model = D3Dnet()
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    want = [(p["name"], p["shape"]) for p in REFERENCE["parameters"]]
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == REFERENCE["total_parameters"] == 2_579_941


def test_forward_shape(native, gen):
    model = D3Dnet().eval()
    with torch.no_grad():
        y = model(torch.rand(1, 1, 7, 32, 32, generator=gen))
    assert y.shape == (1, 1, 128, 128)
    assert torch.isfinite(y).all()


def _seed_layout_file(path: Path, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A checkpoint as the seed's train.py writes it, built from the reference names alone."""
    state = {p["name"]: torch.randn(p["shape"], generator=gen) * 0.01 for p in REFERENCE["parameters"]}
    torch.save({"epoch": 35, "state_dict": state, "loss": [0.01, 0.02], "psnr": [30.5, 31.0]}, path)
    return state


def test_seed_checkpoint_loads_without_remapping(tmp_path, gen):
    state = _seed_layout_file(tmp_path / "model4_epoch35.pth.tar", gen)
    model = load_checkpoint(tmp_path / "model4_epoch35.pth.tar")
    assert model.config == d3d.D3DnetConfig()
    assert model.checkpoint_meta["epoch"] == 35
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_checkpoint_round_trip_and_bare_state_dict(native, tmp_path, gen):
    model = D3Dnet(scale=2, frames=5, nf=16, d3d_blocks=2, res_blocks=1).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05, generator=gen)
    save_checkpoint(model, tmp_path / "a.pth.tar", epoch=3, loss=0.5, psnr=30.0)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    x = torch.rand(1, 1, 5, 12, 10, generator=gen)
    with torch.no_grad():
        want = model(x)
        for name in ("a.pth.tar", "bare.pth"):
            loaded = load_checkpoint(tmp_path / name)
            assert loaded.config == model.config
            torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)
    assert load_checkpoint(tmp_path / "a.pth.tar").checkpoint_meta == {"epoch": 3, "loss": 0.5, "psnr": 30.0}
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = str(marker)
    torch.save({"epoch": 1, "state_dict": {"x": evil}, "loss": 0, "psnr": 0}, tmp_path / "evil.pth.tar")
    # Prove that the payload does run when unpickled unsafely (so the test can fail).
    with pytest.raises(CheckpointError, match=r"evil\.pth\.tar: refused"):
        load_checkpoint(tmp_path / "evil.pth.tar")
    assert not marker.exists()
    pickle.loads(pickle.dumps(evil))
    assert marker.exists()


def test_truncated_file(tmp_path, gen):
    _seed_layout_file(tmp_path / "full.pth.tar", gen)
    data = (tmp_path / "full.pth.tar").read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth\.tar: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pth.tar")


def test_missing_and_unexpected_keys_are_named(tmp_path, gen):
    state = D3Dnet().state_dict()
    state.pop("residual_layer.2.dcn1.conv_offset.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"epoch": 0, "state_dict": state, "loss": 0, "psnr": 0}, tmp_path / "m.pth.tar")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "m.pth.tar")
    msg = str(info.value)
    assert "\n" not in msg
    assert "missing keys: residual_layer.2.dcn1.conv_offset.bias" in msg
    assert "unexpected keys: extra.weight" in msg


def test_config_override_mismatch_is_reported(tmp_path):
    torch.save(D3Dnet(nf=16, d3d_blocks=1, res_blocks=1).state_dict(), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(tmp_path / "small.pth", nf=32)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pth")


@pytest.mark.parametrize("dims", ["T", "H", "W", "TH", "TW", "HW", "THW"])
def test_pack_module_any_deform_dims(native, gen, dims):
    layer = DeformConv3dPack(4, 6, kernel_size=3, padding=1, deform_dims=dims, offset_groups=2)
    assert layer.conv_offset.out_channels == 2 * 27 * len(dims)
    assert layer.conv_offset.weight.abs().sum() == 0  # zero-initialised: starts as a plain convolution
    x = torch.randn(2, 4, 3, 6, 5, generator=gen, requires_grad=True)
    torch.testing.assert_close(
        layer(x), torch.nn.functional.conv3d(x, layer.weight, layer.bias, padding=1), atol=1e-5, rtol=1e-5
    )
    layer.conv_offset.weight.data.normal_(0, 0.1, generator=gen)
    layer(x).square().sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_no_compiler_gives_one_line(tmp_path):
    """With no cached build and no C++ compiler, `d3d info` says so in one line."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CXX": "/nonexistent/c++", "D3D_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "d3d.cli", "info"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "no C++ compiler found ('/nonexistent/c++'" in err
