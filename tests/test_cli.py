"""The d3d command line: help for every command, and `d3d bench` producing real measurements."""

from __future__ import annotations

import json

import pytest
import torch

from d3d import D3Dnet, save_checkpoint
from d3d.cli import COMMANDS
from d3d.cli import main as cli


def test_top_level_help_lists_every_command(capsys):
    assert cli([]) == 2  # no command: the usage goes to stderr, exit 2 (argparse's convention)
    captured = capsys.readouterr()
    assert captured.out == ""
    for name in COMMANDS:
        assert name in captured.err
    with pytest.raises(SystemExit) as info:
        cli(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        cli([name, "--help"])
    assert info.value.code == 0
    assert "usage: d3d " + name in capsys.readouterr().out


def test_bench_measures_two_backends(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "small.pth.tar"
    save_checkpoint(D3Dnet(nf=8, d3d_blocks=1, res_blocks=1), ckpt)
    report = tmp_path / "bench.json"
    rc = cli(["bench", "--backends", "pytorch", "onnxruntime", "--checkpoint", str(ckpt), "--sizes", "16x24",
              "--iterations", "2", "--json", str(report)])  # fmt: skip
    assert rc == 0
    rows = json.loads(report.read_text())["rows"]
    assert [r["backend"].split()[0] for r in rows] == ["pytorch", "onnxruntime"]
    for r in rows:
        assert r["hr"] == [64, 96]
        assert 0 < r["p50_ms"] <= r["p95_ms"]
        assert r["peak_rss_mb"] > 50 and r["frames_per_s"] > 0
        # The whole pipeline (decode, network, encode) timed beside the network, serial and overlapped.
        # (Values only: ratios between them are measurements, too noisy on a shared machine to assert.)
        assert r["pipeline_frames"] == 8 and r["pipeline_fps"] > 0 and r["pipeline_serial_fps"] > 0
        assert r["pipeline_network_fps"] > 0 and r["pipeline_io_fps"] > 0
    out = capsys.readouterr().out
    assert "p50 ms" in out
    # The CPU's instruction sets and the DeformConv3d kernel path, in the report and the JSON.
    from d3d.ops import cpu_isa

    assert f"DeformConv3d CPU kernel path: {cpu_isa()}" in out
    assert f"kernel path: {cpu_isa()}" in json.loads(report.read_text())["cpu"]
