"""``--isa avx2`` of the benchmark scripts: an AVX-512 machine measured as an AVX2 machine would run.

Forcing only our kernel's path (``D3D_CPU_ISA=avx2``) would pit it against oneDNN's and MLAS's AVX-512
kernels. Where the CPU has CPUID faulting (``cpuid_fault`` in /proc/cpuinfo) the script re-runs itself
with ``build/bench/libd3d_cpuid_avx2.so`` preloaded (bench/cpuid_avx2.c), which hides AVX-512 from CPUID
for the whole process: ONNX Runtime's MLAS, oneDNN, OpenBLAS and our kernel then all choose their AVX2
kernels. Elsewhere it caps oneDNN alone (``ONEDNN_MAX_CPU_ISA=AVX2``; MLAS has no such switch) and says
so in the report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MASKED_ENV = "D3D_CPUID_AVX2"  # set in the re-run process
LIBRARY = Path(__file__).resolve().parents[1] / "build" / "bench" / "libd3d_cpuid_avx2.so"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def run_as_avx2_machine() -> str:
    """Call first, before torch or ONNX Runtime is imported. Either re-runs this script with AVX-512
    hidden from CPUID (never returns), or returns the line that says how the run was capped."""
    os.environ["D3D_CPU_ISA"] = "avx2"  # read by both op libraries when they load
    flags = _cpu_flags()
    if "avx512f" not in flags:
        return "no AVX-512 on this CPU: every library runs its AVX2 (or narrower) kernels as it is"
    if os.environ.get(MASKED_ENV) == "1":
        return (
            f"AVX-512 hidden from CPUID for the whole process ({LIBRARY.name}, CPUID faulting): "
            "MLAS, oneDNN, OpenBLAS and the op see an AVX2 CPU"
        )
    if LIBRARY.exists() and "cpuid_fault" in flags:
        preload = " ".join(p for p in (str(LIBRARY), os.environ.get("LD_PRELOAD", "")) if p)
        env = dict(os.environ, LD_PRELOAD=preload, **{MASKED_ENV: "1"})
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # read by oneDNN at its first primitive
    why = "no CPUID faulting on this CPU" if LIBRARY.exists() else f"{LIBRARY} not built: make bench builds it"
    return f"oneDNN (F.conv3d) capped at AVX2 (ONEDNN_MAX_CPU_ISA); ONNX Runtime's MLAS is not ({why})"


def check_masked() -> str | None:
    """After the op has loaded: a warning line where the mask was asked for but AVX-512 still shows."""
    if os.environ.get(MASKED_ENV) != "1":
        return None
    import torch

    from d3d.ops import cpu_isa_detected

    seen = {"op": cpu_isa_detected(), "torch": torch.backends.cpu.get_cpu_capability()}
    if seen["op"] == "avx2" and seen["torch"] == "AVX2":
        return None
    return f"warning: the CPUID mask did not take everywhere (best path: op {seen['op']}, torch {seen['torch']})"
