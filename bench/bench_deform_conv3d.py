"""Native DeformConv3d vs the pure-PyTorch reference at D3Dnet's layer shape, side by side in one run.

    python bench/bench_deform_conv3d.py [--sizes 32 64] [--repeat 5] [--json out.json]

Prints median forward time per call and the native/reference speed ratio. Not a test: ratios depend
on the machine, so they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial

import torch

from d3d.ops import deform_conv3d, deform_conv3d_reference, ensure_native


def _median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="square LR frame sizes")
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    ensure_native()
    torch.manual_seed(0)
    rows = []
    c = args.channels
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'shape':>26} {'native ms':>10} {'reference ms':>13} {'ratio':>7}")
    for s in args.sizes:
        x = torch.randn(1, c, args.frames, s, s)
        w = torch.randn(c, c, 3, 3, 3) * 0.05
        b = torch.randn(c)
        off = torch.randn(1, 27 * 2, args.frames, s, s)
        kw = dict(padding=1, deform_dims="HW")
        with torch.no_grad():
            t_native = _median_time(partial(deform_conv3d, x, off, w, b, **kw), args.repeat)
            t_ref = _median_time(partial(deform_conv3d_reference, x, off, w, b, **kw), max(1, args.repeat // 2))
        shape = f"{c}->{c} 3x3x3 T={args.frames} {s}x{s}"
        rows.append({"shape": shape, "native_s": t_native, "reference_s": t_ref, "ratio": t_ref / t_native})
        print(f"{shape:>26} {t_native * 1e3:10.1f} {t_ref * 1e3:13.1f} {t_ref / t_native:6.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
