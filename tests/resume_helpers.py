"""Helpers shared by the `d3d upscale --resume` tests (test_resume.py, test_resume_failures.py)."""

from __future__ import annotations

from pathlib import Path

import av

from d3d.cli import main as cli

WORK = ".out{}.d3d-work"


def _args(model: Path, inp: str, out: str, *extra: str) -> list[str]:
    return ["upscale", inp, "--onnx", str(model), "-o", out, "-q", "--no-estimate", *extra]


def _refused(args: list[str], capsys) -> str:
    assert cli(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("d3d: error: "), lines
    return lines[0]


def _without(snap: dict, prefix: str) -> dict:
    return {k: v for k, v in snap.items() if not k.startswith(prefix)}


def _decoded(path: Path) -> dict:
    from test_video_streams import _planes

    with av.open(str(path)) as c:
        out = {
            "metadata": {k: v for k, v in c.metadata.items() if k != "encoder"},
            "streams": [(s.type, s.codec_context.name) for s in c.streams],
            "frames": [(f.pts, f.format.name, [p.tobytes() for p in _planes(f)]) for f in c.decode(video=0)],
        }
    with av.open(str(path)) as c:
        out["audio"] = [(p.pts, p.dts, bytes(p)) for s in c.streams.audio for p in c.demux(s) if p.size]
    return out


def _fail_once(monkeypatch, owner, name: str, exc: BaseException, target: str) -> None:
    """``owner.name`` raises ``exc`` the first time it is called for ``target`` (the output's path)."""
    from d3d.runtime.sinks import VideoSink

    real = getattr(owner, name)

    def patched(self, *a, **k):
        path = self._file.path if isinstance(self, VideoSink) else self.path
        if path.name != target:  # e.g. the work folder's own atomic creation
            return real(self, *a, **k)
        monkeypatch.setattr(owner, name, real)
        raise exc

    monkeypatch.setattr(owner, name, patched)
