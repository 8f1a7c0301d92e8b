"""PSNR/SSIM on Y: a hand-computed PSNR, SSIM against scikit-image and SciPy, the seed's Y coefficients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from d3d.training.metrics import BASICSR, SEED, clip_mean, frame_scores, rgb_to_y, ssim, ssim_map


def test_rgb_to_y_endpoints():
    # BT.601 studio swing: black -> 16/255, white -> 235/255 (65.481 + 128.553 + 24.966 = 219).
    rgb = np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    y = rgb_to_y(rgb)
    np.testing.assert_allclose(y[0], [16 / 255, 235 / 255, (65.481 + 16) / 255], rtol=0, atol=1e-15)


def test_psnr_seed_protocol_by_hand():
    # 24x24 frames; the 8-pixel border is cropped, so the huge error planted there must not count.
    hr = torch.full((24, 24), 0.5, dtype=torch.float64)  # floor(127.5) = 127
    sr = hr + 2 / 255  # floor(129.5) = 129: every kept pixel off by 2/255
    sr[0, :] = 0.0
    sr[:, -1] = 1.0
    p, _ = frame_scores(sr, hr, SEED)
    assert p == pytest.approx(10 * math.log10(255**2 / 4), abs=1e-9)  # 42.1102 dB
    # Truncation, not rounding: 0.5 + 0.9/255 -> floor(128.4) = 128 vs 127 -> off by 1/255 everywhere,
    # where rounding would make both 128 and the PSNR infinite.
    p, _ = frame_scores(hr + 0.9 / 255, hr, SEED)
    assert p == pytest.approx(20 * math.log10(255), abs=1e-9)
    # BasicSR rounds the output (128.4 -> 128) and compares with the unrounded 127.5 ground truth.
    p, _ = frame_scores(hr + 0.9 / 255, hr, BASICSR)
    assert p == pytest.approx(10 * math.log10(255**2 / 0.25), abs=1e-9)


def test_ssim_matches_scikit_image(gen):
    skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is a dev dependency")
    a = torch.rand(40, 52, generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.rand(40, 52, generator=gen, dtype=torch.float64)).clamp(0, 1)
    want = skimage_metrics.structural_similarity(
        a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert ssim(a, b, 1.0, "valid") == pytest.approx(want, abs=1e-12)
    # On 8-bit scale, as BasicSR scores.
    want255 = skimage_metrics.structural_similarity(
        a.numpy() * 255, b.numpy() * 255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim(a * 255, b * 255, 255.0, "valid") == pytest.approx(want255, abs=1e-12)


def test_seed_ssim_is_zero_padded_gaussian(gen):
    # The seed filters with F.conv2d(padding=5), i.e. zero padding; SciPy's convolve with mode="constant"
    # is an independent implementation of the same filter. Its interior equals the "valid" map.
    ndimage = pytest.importorskip("scipy.ndimage")
    a = torch.rand(30, 34, generator=gen, dtype=torch.float64).numpy()
    b = np.clip(a + 0.1 * torch.randn(30, 34, generator=gen, dtype=torch.float64).numpy(), 0, 1)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()

    def f(x):
        return ndimage.convolve(x, win, mode="constant", cval=0.0)

    mx, my = f(a), f(b)
    sxx, syy, sxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    want = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    got = ssim_map(a, b, 1.0, "same").numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[5:-5, 5:-5], ssim_map(a, b, 1.0, "valid").numpy(), rtol=0, atol=1e-12)


def test_clip_mean_leaves_out_two_frames_each_end():
    assert clip_mean([100.0, 100.0, 1.0, 2.0, 3.0, 100.0, 100.0], SEED) == 2.0
    assert clip_mean([1.0, 2.0, 3.0], BASICSR) == 2.0


def test_eval_cli_json_and_bicubic_column(tmp_path, gen, native):
    """``d3d eval`` on a tiny Vid4-layout scene: the JSON layout of the issue, and the bicubic column
    recomputed here with NumPy from the protocol's words (x4 MATLAB resize of the LR RGB, Y, floor to
    8 bits, 8-pixel border, first and last 2 frames left out)."""
    import json

    from d3d import D3Dnet, save_checkpoint
    from d3d.cli import main
    from d3d.training.data import write_png
    from d3d.training.imresize import imresize

    scene = tmp_path / "vid4" / "walk"
    (scene / "hr").mkdir(parents=True)
    (scene / "lr_x4").mkdir()
    tex = (torch.rand(56, 60, 3, generator=gen) * 255).to(torch.uint8).numpy()
    hrs, lrs = [], []
    for i in range(6):
        hr = np.ascontiguousarray(tex[i : i + 48, i : i + 52])  # 52 wide: cropped to 48 (multiple of 16)
        hrs.append(hr)
        lrs.append(imresize(hr, 0.25))
        write_png(scene / "hr" / f"hr_{i + 1:02d}.png", hr)
        write_png(scene / "lr_x4" / f"lr_{i + 1:02d}.png", lrs[-1])
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth.tar"
    save_checkpoint(D3Dnet(nf=4, d3d_blocks=1, res_blocks=1), ckpt)
    out = tmp_path / "scores.json"
    assert main(["eval", str(tmp_path / "vid4"), "--checkpoint", str(ckpt), "--json", str(out), "-q"]) == 0
    scores = json.loads(out.read_text())
    assert set(scores) == {"clips", "mean"}
    assert set(scores["clips"]["walk"]) == {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}

    coeffs = np.array([65.481, 128.553, 24.966]) / 255
    values = []
    for i in range(2, 4):  # frames 3 and 4 of 6
        # The LR pixels as written (not resized again: a sum landing on x.5 can round either way between two
        # runs of the fp64 resize, BLAS summation order differing, and move the PSNR by ~2e-4 dB; seen once in CI).
        lr = lrs[i].astype(np.float64) / 255
        bic = np.clip(imresize(lr, 4.0), 0, 1)[:48, :48] @ coeffs + 16 / 255
        # The ground truth's Y as d3d eval keeps it: from RGB/255 in float32, stored as float32 (a float64 Y
        # floors differently where Y*255 is within ~1e-5 of an integer: one pixel, 2e-4 dB, seen once in CI).
        rgb = (hrs[i][:48, :48].astype(np.float32) / 255).astype(np.float64)
        gt = (rgb @ coeffs + 16 / 255).astype(np.float32).astype(np.float64)
        a, b = np.floor(bic * 255)[8:-8, 8:-8], np.floor(gt * 255)[8:-8, 8:-8]
        values.append(10 * np.log10(255**2 / np.mean((a - b) ** 2)))
    assert scores["clips"]["walk"]["bicubic_psnr"] == pytest.approx(np.mean(values), abs=1e-6)
    assert scores["mean"]["psnr"] == scores["clips"]["walk"]["psnr"]
    assert main(["eval", str(tmp_path / "nothing"), "--bicubic-only"]) == 1
