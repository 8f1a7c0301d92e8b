"""``d3d demo``: D3Dnet on seven real frames (the centre one upscaled), written as PNG.

A stand-in for the main job until ``d3d upscale`` exists: it shows the whole PyTorch path on real
footage. Without ``--checkpoint`` the weights are random (seeded) and the output says so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", default="bikes", help="bundled sample clip (bikes, bigbuckbunny, carphone)")
    parser.add_argument("--input", type=Path, help="a video file instead of the sample clip")
    parser.add_argument("--checkpoint", type=Path, help="D3Dnet checkpoint (.pth.tar); default: random weights")
    parser.add_argument("--start", type=int, default=0, help="first frame of the 7-frame window")
    parser.add_argument("--crop", type=int, default=96, help="centre crop of the LR frames (0 = full frame)")
    parser.add_argument("-o", "--output", type=Path, default=Path("out/demo_x4.png"), help="output PNG")


def _read_frames(path: Path, start: int, count: int) -> list[np.ndarray]:
    import av

    from d3d.errors import D3DError

    frames = []
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i >= start:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == count:
                    break
    except av.error.FFmpegError as exc:
        raise D3DError(f"{path}: cannot decode video ({exc})") from None
    if len(frames) < count:
        raise D3DError(f"{path}: needs {count} frames from frame {start}, found {len(frames)}")
    return frames


def run(args: argparse.Namespace) -> int:
    import torch

    from d3d import D3Dnet, load_checkpoint
    from d3d.color import rgb_to_ycbcr, ycbcr_to_rgb
    from d3d.samples import sample_clip

    path = args.input or sample_clip(args.clip)
    if args.checkpoint:
        model, weights = load_checkpoint(args.checkpoint), str(args.checkpoint)
    else:
        torch.manual_seed(0)
        model, weights = D3Dnet().eval(), "random initialisation (seed 0): no trained weights are shipped yet"
    frames = model.config.frames
    rgb = torch.from_numpy(np.stack(_read_frames(path, args.start, frames))).permute(0, 3, 1, 2).float() / 255
    if args.crop:
        h, w = rgb.shape[-2:]
        c = min(args.crop, h, w)
        rgb = rgb[..., (h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c]
    ycbcr = rgb_to_ycbcr(rgb)  # [T, 3, H, W]
    y = ycbcr[:, :1].permute(1, 0, 2, 3).unsqueeze(0)  # [1, 1, T, H, W]
    t0 = time.perf_counter()
    with torch.no_grad():
        sr_y = model(y)[0]  # [1, sH, sW]
    seconds = time.perf_counter() - t0
    cbcr = torch.nn.functional.interpolate(
        ycbcr[frames // 2, 1:].unsqueeze(0), scale_factor=model.config.scale, mode="bicubic", align_corners=False
    )[0]
    out = ycbcr_to_rgb(torch.cat([sr_y, cbcr])).clamp(0, 1)
    img = (out.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    _write_png(img, args.output)
    print(f"input: {path.name}, frames {args.start}..{args.start + frames - 1}, LR {tuple(y.shape[-2:])}")
    print(f"weights: {weights}")
    print(f"output: {args.output} {img.shape[1]}x{img.shape[0]} ({seconds:.2f} s forward on the CPU)")
    return 0


def _write_png(img: np.ndarray, path: Path) -> None:
    import av

    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = img.shape[1], img.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
