"""``d3d prepare``: videos or frame folders -> the Vimeo-90K septuplet layout or the Vid4/SPMC layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from d3d.scenecut import DEFAULT_THRESHOLD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="*", type=Path, help="video files or frame folders (default: --clip)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="dataset folder to create")
    parser.add_argument(
        "--clip",
        action="append",
        default=None,
        help="a bundled sample clip (bikes, bigbuckbunny, carphone); repeatable",
    )
    parser.add_argument(
        "--layout",
        choices=["vimeo", "vid4"],
        default="vimeo",
        help="vimeo: septuplets + sep_trainlist/sep_testlist (training); vid4: scene/hr, scene/lr_x4 (testing)",
    )
    parser.add_argument("--scale", type=int, default=4, help="LR = MATLAB-style bicubic x1/scale of HR")
    parser.add_argument(
        "--cut-threshold", type=float, default=DEFAULT_THRESHOLD, help="scene-cut histogram distance in (0, 1]"
    )
    parser.add_argument("--stride", type=int, default=2, help="vimeo: frames between the starts of septuplets")
    parser.add_argument(
        "--holdout",
        help="frames held out for testing, CLIP:START-END[,...] (END exclusive; CLIP is the file stem); "
        "vimeo: septuplets inside go to sep_testlist, none outside overlaps them; vid4: the frames written",
    )
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.15,
        help="vimeo: without --holdout for a clip, its last fraction of frames is held out",
    )
    parser.add_argument("--start", type=int, default=0, help="vid4: first frame")
    parser.add_argument("--max-frames", type=int, help="use at most this many frames of each source")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset folder d3d wrote (never the input, the current folder or a folder of other files)",
    )


def run(args: argparse.Namespace) -> int:
    from d3d.locks import exclusive

    with exclusive(args.output, what="dataset folder"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from d3d.errors import D3DError
    from d3d.outputs import check_target
    from d3d.samples import sample_clip
    from d3d.training.data import prepare_vid4, prepare_vimeo

    sources = list(args.sources) + [sample_clip(c) for c in args.clip or []]
    if not sources:
        raise D3DError("give video files or frame folders, or --clip NAME")
    # Before any work: never the input, the current folder, or a folder d3d did not write (d3d.outputs).
    check_target(args.output, inputs=sources, overwrite=args.overwrite, folder=True, what="--output")
    if args.scale < 1 or args.stride < 1 or not 0 <= args.holdout_fraction < 1:
        raise D3DError("--scale and --stride must be >= 1, --holdout-fraction in [0, 1)")
    if not 0 < args.cut_threshold <= 1:
        raise D3DError("--cut-threshold must be in (0, 1]")
    names = [s.stem if s.is_file() else s.name for s in sources]
    if len(set(names)) != len(names):
        raise D3DError(f"two sources share a name: {names}")
    if args.layout == "vimeo":
        plans = prepare_vimeo(
            sources,
            args.output,
            args.scale,
            args.stride,
            args.cut_threshold,
            args.holdout,
            args.holdout_fraction,
            args.max_frames,
            progress=print,
        )
        n_train = sum(len(p.train) for p in plans)
        n_test = sum(len(p.test) for p in plans)
        print(f"wrote {args.output}: {n_train} training and {n_test} test septuplets")
    else:
        scenes = prepare_vid4(
            sources,
            args.output,
            args.scale,
            args.cut_threshold,
            args.start,
            args.max_frames,
            args.holdout,
            progress=print,
        )
        print(f"wrote {args.output}: {len(scenes)} scenes")
    return 0
