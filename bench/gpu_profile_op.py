"""Where the CUDA forward's time goes, by kernel (torch.profiler), at D3Dnet's layer: 64 -> 64, 3x3x3,
T = 7, deform HW, random offsets, one LR size. Needs a CUDA GPU; run after ``make gpu-check`` built the op.

    python bench/gpu_profile_op.py [--size 180x320] [--dtype float16]
"""

from __future__ import annotations

import argparse
import sys

from gpu_check import use_source_tree  # bench/ is this script's folder

use_source_tree()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="180x320", help="LR size HxW")
    ap.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from d3d.ops import deform_conv3d

    h, w = (int(v) for v in args.size.split("x"))
    dt = getattr(torch, args.dtype)
    x = torch.rand(1, 64, 7, h, w, device="cuda", dtype=dt)
    wt = torch.randn(64, 64, 3, 3, 3, device="cuda", dtype=dt) * 0.02
    b = torch.randn(64, device="cuda", dtype=dt)
    off = torch.randn(1, 54, 7, h, w, device="cuda", dtype=dt)
    with torch.no_grad():
        for _ in range(3):
            deform_conv3d(x, off, wt, b, padding=1, deform_dims="HW")
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.repeat):
                deform_conv3d(x, off, wt, b, padding=1, deform_dims="HW")
            torch.cuda.synchronize()
    print(f"{args.size} {args.dtype}, {args.repeat} calls:")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
