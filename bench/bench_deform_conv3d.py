"""DeformConv3d at D3Dnet's layer shape, side by side in one run: the PyTorch op (native CPU kernel),
the ONNX Runtime op (libd3d_ort_ops.so, the same kernel with OpenBLAS) and ``F.conv3d`` of the same
shape and multiply-adds (oneDNN), optionally the pure-PyTorch reference. Then the layer folded to 2-D
(frames into the batch, a 1x3x3 kernel): our op against ONNX Runtime's built-in ``DeformConv``
(opset 19) on the same work.

    python bench/bench_deform_conv3d.py [--sizes 32x32 68x160 180x320] [--repeat 5] [--json out.json]
        [--isa generic|avx2|avx512]

The CPU's instruction sets and the kernel path taken (D3D_CPU_ISA, which --isa sets) are printed first.
``--isa avx2`` on an AVX-512 machine runs the whole comparison as an AVX2 machine would: it re-runs
itself with AVX-512 hidden from CPUID (build/bench/libd3d_cpuid_avx2.so, where the CPU has CPUID
faulting), so oneDNN (``F.conv3d``) and ONNX Runtime's MLAS (its DeformConv) take their AVX2 kernels
too; without CPUID faulting it caps oneDNN alone and says so (bench/avx2_machine.py).

64 -> 64 channels, 3x3x3 kernel, padding 1, T = 7, deform_dims "HW", offsets N(0, 1) px (taps between
pixels, some past the frame), fp32, forward, median time per call. Not a test: ratios depend on the
machine, so they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from functools import partial

import numpy as np
from avx2_machine import cap_report, select_cpu_path
from timing import interleaved_median_times, median_times


def _ort_session(w: np.ndarray, b: np.ndarray, threads: int, pads: tuple[int, int, int] = (1, 1, 1)):
    """A one-node custom-op model through the runtime's session factory (the native library)."""
    from onnx import TensorProto, helper, numpy_helper

    from d3d.runtime.ort import create_session

    node = helper.make_node(
        "DeformConv3d",
        ["x", "offset", "w", "b"],
        ["y"],
        domain="d3d",
        strides=[1, 1, 1],
        pads=list(pads),
        dilations=[1, 1, 1],
        group=1,
        offset_group=1,
        deform_dims="HW",
    )
    graph = helper.make_graph(
        [node],
        "layer",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("offset", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("d3d", 1)])
    return create_session(model, threads=threads, allow_spinning=False)  # timed interleaved with others


def _deformconv19_session(w2: np.ndarray, b: np.ndarray, threads: int):
    """ONNX Runtime's built-in DeformConv (opset 19), one 3x3 node: x [N, C, H, W], offset [N, 18, H, W]."""
    from onnx import TensorProto, helper, numpy_helper

    from d3d.runtime.ort import create_session

    node = helper.make_node("DeformConv", ["x", "w", "offset", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "layer2d",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("offset", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w2, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    # Without spinning, ONNX Runtime's pool threads do not take a core from the call timed next (our
    # op): measured 2026-12-04 on 2 cores, ours 133 ms beside a spinning session, 94 ms beside this one;
    # ONNX Runtime's own time 146 vs 142 ms.
    return create_session(model, threads=threads, allow_spinning=False)


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=_size, nargs="+", default=[(32, 32), (68, 160), (180, 320)], help="LR HxW")
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--reference", action="store_true", help="also time the pure-PyTorch reference (slow)")
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime op")
    ap.add_argument("--no-2d", action="store_true", help="skip the 2-D comparison with ONNX Runtime's DeformConv")
    ap.add_argument("--isa", choices=["generic", "avx2", "avx512"], help="force the kernel path (D3D_CPU_ISA)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    capped = select_cpu_path(args.isa)  # may re-run this script
    import torch
    import torch.nn.functional as F

    from d3d.ops import deform_conv3d, deform_conv3d_reference, ensure_native

    ensure_native()
    from d3d.ops import cpu_instruction_sets, cpu_isa, cpu_kernel_summary

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    c = args.channels
    w = torch.randn(c, c, 3, 3, 3) * 0.05
    b = torch.randn(c)
    sess = None
    if not args.no_ort:
        from d3d.errors import D3DError

        try:
            sess = _ort_session(w.numpy(), b.numpy(), threads)
        except D3DError as exc:
            print(f"ONNX Runtime op skipped: {exc}")
    load = os.getloadavg()[0]
    head = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} threads"
    print(f"{head}, load average {load:.2f} at start")
    print(cpu_kernel_summary())
    for line in cap_report(capped):
        print(line)
    print(f"{'LR':>8} {'torch op ms':>12} {'ORT op ms':>10} {'conv3d ms':>10} {'torch/conv':>11} {'ORT/conv':>9}")
    rows = []
    for h, wd in args.sizes:
        x = torch.randn(1, c, args.frames, h, wd)
        off = torch.randn(1, 27 * 2, args.frames, h, wd)
        kw = dict(padding=1, deform_dims="HW")
        row = {"lr": [h, wd]}
        fns = {"torch_op": partial(deform_conv3d, x, off, w, b, **kw), "conv3d": partial(F.conv3d, x, w, b, padding=1)}
        if sess is not None:
            fns["ort_op"] = partial(sess.run, None, {"x": x.numpy(), "offset": off.numpy()})
        with torch.no_grad():
            for name, (wall, cpu) in interleaved_median_times(fns, args.repeat).items():
                row[f"{name}_s"], row[f"{name}_cpu_s"] = wall, cpu
            if args.reference:
                ref = partial(deform_conv3d_reference, x, off, w, b, **kw)
                row["reference_s"] = median_times(ref, max(1, args.repeat // 2))[0]
        ort_ms = f"{row['ort_op_s'] * 1e3:10.1f}" if "ort_op_s" in row else f"{'-':>10}"
        ort_ratio = f"{row['ort_op_s'] / row['conv3d_s']:8.2f}x" if "ort_op_s" in row else f"{'-':>9}"
        print(
            f"{h}x{wd:<5} {row['torch_op_s'] * 1e3:12.1f} {ort_ms} {row['conv3d_s'] * 1e3:10.1f} "
            f"{row['torch_op_s'] / row['conv3d_s']:10.2f}x {ort_ratio}"
            + (f"  reference {row['reference_s'] * 1e3:.0f} ms" if "reference_s" in row else "")
        )
        cpu = {k[:-6]: v for k, v in row.items() if k.endswith("_cpu_s")}
        print(
            f"{'':8} CPU time: "
            + ", ".join(f"{k} {v * 1e3:.1f} ms ({v / cpu['conv3d']:.2f}x conv3d)" for k, v in cpu.items())
        )
        rows.append(row)
    rows2d = [] if args.no_2d else _bench_2d(args, w, b, threads, deform_conv3d)
    if args.json:
        with open(args.json, "w") as f:
            meta = {"torch": torch.__version__, "threads": threads, "load_avg": load, "kernel_path": cpu_isa()}
            meta["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
            meta["avx2_machine"] = capped
            json.dump({**meta, "isa": cpu_instruction_sets(), "rows": rows, "rows_2d": rows2d}, f, indent=1)


def _bench_2d(args, w, b, threads: int, deform_conv3d) -> list[dict]:
    """D3Dnet's layer folded to 2-D: the frames are the batch of one 3x3 deformable convolution. Our op
    runs it as a 1x3x3 DeformConv3d on [1, C, T, H, W]; ONNX Runtime's DeformConv on [T, C, H, W]; the
    same multiply-adds, the offsets in each one's layout. Our op both as the PyTorch op and in ONNX Runtime
    (the same kernel; in ONNX Runtime its output comes from the session's arena, as DeformConv's does,
    where PyTorch maps a fresh output each call). Interleaved, median of --repeat."""
    import torch

    from d3d.errors import D3DError

    w2 = w[:, :, 1].contiguous()  # [O, C, 3, 3]
    ours_ort = None
    if not args.no_ort:
        try:
            ours_ort = _ort_session(w2[:, :, None].numpy(), b.numpy(), threads, pads=(0, 1, 1))
        except D3DError as exc:
            print(f"ONNX Runtime op skipped in 2-D: {exc}")
    try:
        sess = _deformconv19_session(w2.numpy(), b.numpy(), threads)
    except Exception as exc:  # an ONNX Runtime without DeformConv on this provider
        print(f"2-D comparison skipped: ONNX Runtime DeformConv: {str(exc).splitlines()[0]}")
        return []
    print(
        f"\n2-D layer (frames into batch, 3x3): {'LR':>8} {'our op ms':>10} {'ORT DeformConv ms':>18} {'ORT/ours':>9}"
        f" {'our ORT op ms':>14} {'DeformConv/our ORT op':>22}"
    )
    rows = []
    c, t = w.shape[1], args.frames
    for h, wd in args.sizes:
        x = torch.randn(1, c, t, h, wd)
        off = torch.randn(1, 18, t, h, wd)
        x2 = x[0].transpose(0, 1).contiguous().numpy()  # [T, C, H, W]
        off2 = off[0].transpose(0, 1).contiguous().numpy()
        fns = {
            "ours": partial(deform_conv3d, x, off, w2[:, :, None], b, padding=(0, 1, 1), deform_dims="HW"),
            "ort_deformconv": partial(sess.run, None, {"x": x2, "offset": off2}),
        }
        if ours_ort is not None:
            fns["ours_ort"] = partial(ours_ort.run, None, {"x": x.numpy(), "offset": off.numpy()})
        with torch.no_grad():
            times = interleaved_median_times(fns, args.repeat)
        row = {"lr": [h, wd]} | {f"{k}_s": v[0] for k, v in times.items()}
        ours_ort_cols = (
            f" {row['ours_ort_s'] * 1e3:14.1f} {row['ort_deformconv_s'] / row['ours_ort_s']:21.2f}x"
            if "ours_ort_s" in row
            else ""
        )
        print(
            f"{'':35} {h}x{wd:<5} {row['ours_s'] * 1e3:10.1f} {row['ort_deformconv_s'] * 1e3:18.1f} "
            f"{row['ort_deformconv_s'] / row['ours_s']:8.2f}x" + ours_ort_cols
        )
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
