"""The output is the input, only sharper: streams copied, colour kept, 10-bit in and out, y4m pipes.

Clips are made here (tiny frames) with PyAV; the model is a tiny random D3Dnet exported to ONNX.
References are independent of the pipeline: packets read back from the input, a numpy bicubic, the
PyTorch model on windows built here.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import HANG_S

from d3d import D3Dnet
from d3d.cli import main as cli
from d3d.export import ExportOptions, export_onnx

N = 8  # frames per clip
H, W = 32, 32  # LR size


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(1)
    model = D3Dnet(nf=4, d3d_blocks=1, res_blocks=1).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_onnx(model, path, ExportOptions())
    return model, path


def _smooth(rng: np.random.Generator, h: int, w: int, lo: int, hi: int) -> np.ndarray:
    """A smooth random plane of code values in [lo, hi] (bicubic of a coarse grid: realistic content)."""
    coarse = torch.from_numpy(rng.random((1, 1, max(2, h // 8), max(2, w // 8)), dtype=np.float32))
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.rint(lo + (hi - lo) * x).astype(np.uint16)


def _yuv_frame(planes: list[np.ndarray], pix_fmt: str, tags: tuple[int, int, int, int] | None = None):
    frame = av.VideoFrame(planes[0].shape[1], planes[0].shape[0], pix_fmt)
    dtype = np.dtype("<u2") if "10" in pix_fmt else np.dtype(np.uint8)
    for plane, a in zip(frame.planes, planes, strict=True):
        buf = np.zeros((plane.height, plane.line_size // dtype.itemsize), dtype=dtype)
        buf[:, : plane.width] = a
        plane.update(buf)
    if tags:
        frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc = tags
    return frame


def _planes(frame) -> list[np.ndarray]:
    dtype = np.dtype("<u2") if "10" in frame.format.name else np.dtype(np.uint8)
    return [
        np.frombuffer(p, dtype=dtype).reshape(-1, p.line_size // dtype.itemsize)[: p.height, : p.width].copy()
        for p in frame.planes
    ]


def _encode(container, stream, frames, pts, time_base: Fraction) -> None:
    """Encodes ``frames`` with timestamps ``pts`` (in ``time_base``) into ``stream``, then flushes it."""
    for f, t in zip(frames, pts, strict=True):
        f.pts, f.time_base = t, time_base
        for p in stream.encode(f):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


def _clip_planes(seed: int, depth: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    lo, hi = (16, 235) if depth == 8 else (64, 940)
    clo, chi = (16, 240) if depth == 8 else (64, 960)
    return [
        [_smooth(rng, H, W, lo, hi), _smooth(rng, H // 2, W // 2, clo, chi), _smooth(rng, H // 2, W // 2, clo, chi)]
        for _ in range(N)
    ]


def _add_audio(container, seconds: float, codec: str = "aac"):
    """A 440 Hz sine, mono 48 kHz; returns the stream and a function that encodes it all."""
    rate = 48000
    s = container.add_stream(codec, rate=rate, layout="mono")
    fmt = s.codec_context.codec.audio_formats[0].name
    samples = np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)

    def encode() -> None:
        step = s.codec_context.frame_size or 1024
        for i in range(0, len(samples), step):
            chunk = samples[i : i + step]
            data = (chunk * 0.5).astype(np.float32) if fmt.startswith("flt") else (chunk * 16000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(data[None], format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
            for p in s.encode(frame):
                container.mux(p)
        for p in s.encode():
            container.mux(p)

    return s, encode


def _packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as c:
        s = next(s for s in c.streams if s.type == kind)
        return [bytes(p) for p in c.demux(s) if p.size]


def _frames(path: Path, **open_args) -> list:
    with av.open(str(path), **open_args) as c:
        return [(f.time, f.format.name, _planes(f)) for f in c.decode(video=0)]


def _upscale(model: Path, *args: str) -> int:
    return cli(["upscale", *args, "--onnx", str(model), "-q", "--no-estimate"])


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# --- Streams: audio, subtitles, chapters, metadata, rotation, timestamps ---------------------------


def test_audio_is_copied_byte_for_byte(tiny, tmp_path):
    """H.264 + AAC in .mp4 with a title and a 90 degree rotation: the output's audio packets are the
    input's, the durations agree within one frame, metadata and rotation are kept."""
    _, model = tiny
    src = tmp_path / "in.mp4"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.set_display_rotation(90)
        c.metadata["title"] = "d3d stream test"
        _, encode_audio = _add_audio(c, N / 25)
        frames = [_yuv_frame([p.astype(np.uint8) for p in planes], "yuv420p") for planes in _clip_planes(0, 8)]
        _encode(c, v, frames, range(len(frames)), Fraction(1, 25))
        encode_audio()
    out = tmp_path / "out.mp4"
    assert _upscale(model, str(src), "-o", str(out)) == 0

    assert _packets(out, "audio") == _packets(src, "audio")
    assert len(_packets(src, "audio")) > 5
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert b.metadata.get("title") == "d3d stream test"
        frames = list(b.decode(video=0))
        assert len(frames) == N and (frames[0].width, frames[0].height) == (4 * W, 4 * H)
        assert round(frames[0].rotation) == 90
        sa, sb = a.streams.audio[0], b.streams.audio[0]
        va, vb = a.streams.video[0], b.streams.video[0]
        frame_s = 1 / 25
        assert abs(float(sa.duration * sa.time_base) - float(sb.duration * sb.time_base)) < frame_s
        assert abs(float(va.duration * va.time_base) - float(vb.duration * vb.time_base)) < frame_s
        assert abs(float(vb.duration * vb.time_base) - float(sb.duration * sb.time_base)) < 2 * frame_s
    assert not _leftovers(tmp_path)


def _mkv_with_subtitles(tmp_path: Path) -> tuple[Path, list[float]]:
    """FFV1 video at a variable frame rate, PCM audio, SRT subtitles and two chapters, in .mkv."""
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,200\nhello\n\n2\n00:00:00,200 --> 00:00:00,400\nworld\n")
    src = tmp_path / "in.mkv"
    times_ms = [0, 40, 100, 120, 200, 260, 300, 380]  # variable frame rate
    with av.open(str(srt)) as subs_in, av.open(str(src), "w") as c:
        v = c.add_stream("ffv1", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.codec_context.time_base = Fraction(1, 1000)
        sub = c.add_stream_from_template(subs_in.streams[0])
        _, encode_audio = _add_audio(c, 0.4, "pcm_s16le")
        c.set_chapters(
            [
                {"id": 1, "start": 0, "end": 200, "time_base": Fraction(1, 1000), "metadata": {"title": "one"}},
                {"id": 2, "start": 200, "end": 400, "time_base": Fraction(1, 1000), "metadata": {"title": "two"}},
            ]
        )
        frames = [_yuv_frame([p.astype(np.uint8) for p in planes], "yuv420p") for planes in _clip_planes(1, 8)]
        _encode(c, v, frames, times_ms, Fraction(1, 1000))
        for p in subs_in.demux(subs_in.streams[0]):
            if p.size:
                p.stream = sub
                c.mux(p)
        encode_audio()
    return src, [t / 1000 for t in times_ms]


def test_subtitles_survive_into_mkv_and_are_refused_for_mp4(tiny, tmp_path, capsys):
    _, model = tiny
    src, times = _mkv_with_subtitles(tmp_path)
    out = tmp_path / "out.mkv"
    assert _upscale(model, str(src), "-o", str(out)) == 0
    assert _packets(out, "subtitle") == _packets(src, "subtitle")
    assert _packets(out, "audio") == _packets(src, "audio")
    got = _frames(out)
    assert [round(t, 3) for t, _, _ in got] == times  # variable frame rate: every timestamp kept
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert [ch["metadata"].get("title") for ch in b.chapters()] == ["one", "two"]
        assert [(ch["start"] * ch["time_base"]) for ch in b.chapters()] == [
            ch["start"] * ch["time_base"] for ch in a.chapters()
        ]
    capsys.readouterr()

    mp4 = tmp_path / "out.mp4"
    assert _upscale(model, str(src), "-o", str(mp4)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("d3d: error:"), err
    assert "(subtitle, srt)" in err and ".mkv" in err and "--drop-unsupported-streams" in err
    assert not mp4.exists() and not _leftovers(tmp_path)

    assert _upscale(model, str(src), "-o", str(mp4), "--drop-unsupported-streams") == 0
    with av.open(str(mp4)) as b:
        types = [s.type for s in b.streams]  # (mp4 keeps chapters in a data track of its own)
        assert types[:2] == ["video", "audio"] and "subtitle" not in types
    assert _packets(mp4, "audio") == _packets(src, "audio")


# --- Colour: 10-bit BT.709 limited range, planes kept ------------------------------------------------


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    x = np.abs(x)
    return np.where(
        x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1, np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0)
    )


def _bicubic_up(plane: np.ndarray, s: int) -> np.ndarray:
    """Separable bicubic x``s`` in float64 (Keys, a = -0.75, half-pixel centres, edges replicated)."""

    def along(x: np.ndarray, axis: int) -> np.ndarray:
        n = x.shape[axis]
        src = (np.arange(n * s) + 0.5) / s - 0.5
        base = np.floor(src).astype(int)
        out = 0.0
        for k in range(-1, 3):
            idx = np.clip(base + k, 0, n - 1)
            w = _cubic(src - (base + k))
            out = out + np.take(x, idx, axis=axis) * (w[:, None] if axis == 0 else w[None, :])
        return out

    return along(along(plane.astype(np.float64), 0), 1)


BT709_LIMITED = (1, 1, 1, 1)  # matrix bt709, range limited (tv), primaries bt709, transfer bt709


def _ten_bit_clip(tmp_path: Path) -> tuple[Path, list[list[np.ndarray]]]:
    src = tmp_path / "in10.mkv"
    clip = _clip_planes(2, 10)
    with av.open(str(src), "w") as c:
        v = c.add_stream("ffv1", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p10le"
        cc = v.codec_context
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = BT709_LIMITED
        frames = [_yuv_frame(planes, "yuv420p10le", BT709_LIMITED) for planes in clip]
        _encode(c, v, frames, range(len(frames)), Fraction(1, 25))
    return src, clip


def _tags(path: Path) -> tuple:
    with av.open(str(path)) as c:
        f = next(c.decode(video=0))
        return f.format.name, (int(f.colorspace), int(f.color_range), int(f.color_primaries), int(f.color_trc))


def test_ten_bit_bt709_keeps_depth_tags_and_planes(tiny, tmp_path):
    model, onnx = tiny
    src, clip = _ten_bit_clip(tmp_path)
    assert _tags(src) == ("yuv420p10le", BT709_LIMITED)

    out = tmp_path / "out.mkv"  # lossless, so the planes can be compared to their references
    # Its frames are unrelated random images, each a scene cut to the detector: the reference below clamps
    # at the clip's ends only.
    assert _upscale(onnx, str(src), "-o", str(out), "--codec", "ffv1", "--scene-cuts", "off") == 0
    assert _tags(out) == ("yuv420p10le", BT709_LIMITED)
    got = _frames(out)
    assert len(got) == N
    for (_, _, planes), inp in zip(got, clip, strict=True):
        for c in (1, 2):  # chroma: the bicubic x4 of the input's chroma planes, in code values
            want = np.clip(np.rint(_bicubic_up(inp[c], 4)), 0, 1023)
            assert planes[c].shape == (4 * H // 2, 4 * W // 2)
            assert np.abs(planes[c].astype(int) - want).max() <= 1

    # Luma: the network on the luma plane read as the seed's Y (limited 10-bit: code / (4 * 255)).
    y = torch.from_numpy(np.stack([p[0] for p in clip]).astype(np.float32) / 1020.0)[:, None]
    for i in (0, N // 2):
        idx = [min(max(j, 0), N - 1) for j in range(i - 3, i + 4)]
        with torch.no_grad():
            want = model(y[idx].permute(1, 0, 2, 3)[None])[0, 0].numpy()
        want = np.clip(np.rint(want * 1020.0), 0, 1023)
        assert np.abs(got[i][2][0].astype(int) - want).max() <= 1, f"frame {i}"

    # The default encoder (x264) writes 10 bits with the same tags.
    x264 = tmp_path / "out.mp4"
    assert _upscale(onnx, str(src), "-o", str(x264)) == 0
    assert _tags(x264) == ("yuv420p10le", BT709_LIMITED)


# --- Pipes ------------------------------------------------------------------------------------------


def test_y4m_pipe_in_and_out_gives_the_file_path_frames(tiny, tmp_path):
    _, onnx = tiny
    y4m = tmp_path / "in.y4m"
    with av.open(str(y4m), "w", format="yuv4mpegpipe") as c:
        v = c.add_stream("wrapped_avframe", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        frames = [_yuv_frame([p.astype(np.uint8) for p in planes], "yuv420p") for planes in _clip_planes(3, 8)]
        _encode(c, v, frames, range(len(frames)), Fraction(1, 25))

    ref = tmp_path / "ref.mkv"
    assert _upscale(onnx, str(y4m), "-o", str(ref), "--codec", "ffv1") == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "d3d.cli", "upscale", "-", "-o", "-", "--onnx", str(onnx), "--no-estimate"]
    with open(y4m, "rb") as stdin:
        proc = subprocess.run(cmd, stdin=stdin, capture_output=True, env=env, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.startswith(b"YUV4MPEG2 W128 H128 ")  # nothing but the stream on stdout
    assert b"done: 8 frames" in proc.stderr
    piped = tmp_path / "piped.y4m"
    piped.write_bytes(proc.stdout)
    a, b = _frames(ref), _frames(piped)
    assert len(a) == len(b) == N
    for (_, fa, pa), (_, fb, pb) in zip(a, b, strict=True):
        assert fa == fb == "yuv420p"
        for x, y in zip(pa, pb, strict=True):
            np.testing.assert_array_equal(x, y)


# --- Interrupts with the overlapping threads ---------------------------------------------------------


def test_interrupt_while_writing_a_video_with_audio(tiny, tmp_path):
    """SIGINT while the decoder, network and writer threads run on a clip with audio into .mp4: exit 130
    within 2 s, one line, no output and no temporary file (the writer owns the container until it stops):
    only the frames completed so far, in d3d's work folder."""
    import signal

    from conftest import Probed, snapshot

    _, onnx = tiny
    src = tmp_path / "in.mp4"
    frames = 200
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 2 * W, 2 * H, "yuv420p"
        _, encode_audio = _add_audio(c, frames / 25)
        rng = np.random.default_rng(4)
        images = (rng.integers(0, 255, (2 * H, 2 * W, 3), dtype=np.uint8) for _ in range(frames))
        _encode(c, v, (av.VideoFrame.from_ndarray(a, format="rgb24") for a in images), range(frames), Fraction(1, 25))
        encode_audio()
    before = snapshot(tmp_path)
    args = ["upscale", "in.mp4", "--onnx", onnx, "-o", "out.mp4", "-q", "--no-estimate"]
    # Held before frame 150 only so that it cannot end before the signal: it lands while the threads run.
    run = Probed(args, tmp_path, hold="network 150")
    try:
        # frames are being written (the video being encoded is in the work folder until complete)
        run.wait_for(
            "network 20",
            also=lambda: any(p.stat().st_size > 10_000 for p in tmp_path.glob(".out.mp4.d3d-work/.out.*.mp4")),
        )
        rc, _, err, seconds = run.signal(signal.SIGINT)
    finally:
        run.close()
    assert rc == 130, err
    assert "Traceback" not in err
    assert seconds < 2.0, (seconds, err)
    # No output, no temporary file; the frames completed so far stay in d3d's work folder for --resume.
    work = ".out.mp4.d3d-work"
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(work)} == before
    kept = len(list((tmp_path / work / "frames").glob("[!.]*.npz")))
    assert kept >= 1 and not list((tmp_path / work).glob(".out.*.mp4"))  # the temporary video is gone
    assert err.strip().splitlines()[-1] == (
        f"d3d: interrupted (SIGINT); {kept} of {frames} frames done and kept in {work}: rerun with --resume to continue"
    )
