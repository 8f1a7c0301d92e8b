"""One output frame of the paper's D3Dnet on the CPU, side by side in one run: the PyTorch model, the
same model with each deformable convolution run as a plain ``conv3d`` (its "dense twin": the offset
convolutions still run, their output is dropped), and the custom-op ONNX export in ONNX Runtime,
called in turn round after round (bench/timing.py::interleaved_median_times), so the machine's drift
hits the three alike. The ONNX Runtime session's pool threads do not spin after a run (they would take
a core from the next call), as in d3d upscale's sessions.

    python bench/bench_frame.py [--size 68x160] [--repeat 3] [--offset-std 0.15] [--json out.json]
        [--breakdown] [--isa generic|avx2|avx512]

--breakdown also says where the PyTorch frame's CPU time goes: the offset convolutions, the
deformable convolutions (our op) and the rest, from module hooks (process CPU time, summed over
--repeat frames). --isa (D3D_CPU_ISA) chooses the kernel path; the path taken is printed. ``--isa avx2``
on an AVX-512 machine runs the frame as an AVX2 machine would, oneDNN and ONNX Runtime's MLAS included
(AVX-512 hidden from CPUID where the CPU has CPUID faulting; else oneDNN alone is capped, and the report
says so: bench/avx2_machine.py).

Seeded random weights in the paper's configuration (x4, 7 frames, nf 64, 5 + 6 blocks). The offset
convolutions get random weights too (``--offset-std``; 0 keeps the seed's zero initialisation, where
every tap lands on a pixel), so the deformable layers sample between pixels as a trained model does.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from avx2_machine import cap_report, select_cpu_path
from timing import interleaved_median_times


def _breakdown(model, packs, x, repeat: int) -> dict:
    """CPU seconds per frame of the offset convolutions, the deformable convolutions and the rest."""
    spent = {"offset_convs_cpu_s": 0.0, "packs": 0.0, "frame": 0.0}
    started: dict[int, float] = {}
    handles = []
    for m, key in [(m, "packs") for m in packs] + [(m.conv_offset, "offset_convs_cpu_s") for m in packs]:
        handles.append(m.register_forward_pre_hook(lambda mod, _i: started.__setitem__(id(mod), time.process_time())))
        handles.append(
            m.register_forward_hook(
                lambda mod, _i, _o, key=key: spent.__setitem__(key, spent[key] + time.process_time() - started[id(mod)])
            )
        )
    model(x)  # warm-up
    for k in spent:
        spent[k] = 0.0
    for _ in range(repeat):
        t0 = time.process_time()
        model(x)
        spent["frame"] += time.process_time() - t0
    for hnd in handles:
        hnd.remove()
    per = {k: v / repeat for k, v in spent.items()}
    return {
        "frame_cpu_s": per["frame"],
        "offset_convs_cpu_s": per["offset_convs_cpu_s"],
        "deform_convs_cpu_s": per["packs"] - per["offset_convs_cpu_s"],
        "rest_cpu_s": per["frame"] - per["packs"],
    }


def _dense_forward(self, input: torch.Tensor) -> torch.Tensor:
    """DeformConv3dPack.forward with the deformable convolution replaced by conv3d."""
    self.conv_offset(input)  # kept: the twin does the same offset work
    return F.conv3d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def main() -> None:
    from d3d.model import D3Dnet
    from d3d.modules import DeformConv3dPack
    from d3d.ops import cpu_kernel_summary, ensure_native

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="68x160", help="LR HxW")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--offset-std", type=float, default=0.15, help="std of the offset convolutions' weights")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="where the PyTorch frame's CPU time goes")
    ap.add_argument("--isa", choices=["generic", "avx2", "avx512"], help="force the kernel path (D3D_CPU_ISA)")
    ap.add_argument("--json")
    args = ap.parse_args()
    capped = select_cpu_path(args.isa)  # may re-run this script
    h, w = (int(v) for v in args.size.lower().split("x"))
    ensure_native()
    torch.manual_seed(0)
    model = D3Dnet().eval()
    packs = [m for m in model.modules() if isinstance(m, DeformConv3dPack)]
    if args.offset_std > 0:
        for m in packs:
            torch.nn.init.normal_(m.conv_offset.weight, 0.0, args.offset_std)
    x = torch.rand(1, model.config.in_channels, model.config.frames, h, w)
    row: dict = {"lr": [h, w], "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0]}
    with torch.no_grad():
        # Offsets the deformable layers see (first layer), to say what the run samples.
        first = packs[0]
        seen = []
        hook = first.conv_offset.register_forward_hook(lambda _m, _i, o: seen.append(o.abs().mean().item()))
        model(x)
        hook.remove()
        row["mean_abs_offset_px_first_layer"] = seen[0]
        if args.breakdown:
            row["breakdown"] = _breakdown(model, packs, x, args.repeat)
        twin = copy.deepcopy(model)
        for m in twin.modules():
            if isinstance(m, DeformConv3dPack):
                m.forward = _dense_forward.__get__(m)
        fns = {"pytorch": lambda: model(x), "dense_twin": lambda: twin(x)}
        if not args.no_ort:
            from d3d.export import ExportOptions, export_onnx, load_model
            from d3d.runtime.ort import create_session

            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "d3dnet.onnx"
                export_onnx(model, path, ExportOptions())
                # no spinning pool threads after a run: they would take a core from the next timed call
                sess = create_session(load_model(path), threads=torch.get_num_threads(), allow_spinning=False)
            feed = {sess.get_inputs()[0].name: x.numpy()}
            fns["onnxruntime"] = lambda: sess.run(None, feed)
        # called in turn, round after round: the machine's drift hits all of them alike
        for name, (wall, cpu) in interleaved_median_times(fns, args.repeat).items():
            row[f"{name}_s"], row[f"{name}_cpu_s"] = wall, cpu
    print(f"LR {h}x{w}, {row['threads']} threads, load average {row['load_avg']:.2f} at start")
    print(cpu_kernel_summary())
    for line in cap_report(capped):
        print(line)
    row["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
    row["avx2_machine"] = capped
    print(f"mean |offset| of the first deformable layer: {row['mean_abs_offset_px_first_layer']:.2f} px")
    print(f"PyTorch model      {row['pytorch_s'] * 1e3:8.0f} ms")
    twin_ratio = row["pytorch_s"] / row["dense_twin_s"]
    print(f"dense twin         {row['dense_twin_s'] * 1e3:8.0f} ms   (model / twin {twin_ratio:.2f}x)")
    if "onnxruntime_s" in row:
        ort_ratio = row["onnxruntime_s"] / row["pytorch_s"]
        print(f"ONNX Runtime       {row['onnxruntime_s'] * 1e3:8.0f} ms   (ORT / PyTorch {ort_ratio:.2f}x)")
    cpu = {k[:-6]: v for k, v in row.items() if k.endswith("_cpu_s")}
    print("CPU time: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in cpu.items()))
    if "breakdown" in row:
        b = row["breakdown"]
        print(
            f"PyTorch frame CPU time {b['frame_cpu_s'] * 1e3:.0f} ms: "
            + ", ".join(
                f"{name} {b[key] * 1e3:.0f} ms ({b[key] / b['frame_cpu_s']:.0%})"
                for name, key in (
                    ("offset convs", "offset_convs_cpu_s"),
                    ("deformable convs", "deform_convs_cpu_s"),
                    ("rest", "rest_cpu_s"),
                )
            )
        )
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
