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
PRELOAD_BEFORE_ENV = "D3D_CPUID_AVX2_PRELOAD_BEFORE"  # LD_PRELOAD as it was, restored there
# The library (bench/cpuid_avx2.c), from the build folder `make bench` builds it in.
LIBRARY = Path(
    os.environ.get("D3D_CPUID_AVX2_LIB")
    or Path(__file__).resolve().parents[1] / "build" / "bench" / "libd3d_cpuid_avx2.so"
)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def _library_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return LIBRARY.name in f.read()
    except OSError:
        return False


def run_as_avx2_machine() -> str:
    """Call before any timing (and before oneDNN's first primitive). Either re-runs this script with
    AVX-512 hidden from CPUID (never returns), or returns the line that says how the run was capped."""
    flags = _cpu_flags()
    if "avx512f" not in flags:
        return "no AVX-512 on this CPU: every library runs its AVX2 (or narrower) kernels as it is"
    if os.environ.get(MASKED_ENV) == "1" and _library_loaded():
        # Loaded now: child processes (the op's compiler, whose own SIGSEGV handler would take the CPUID
        # traps and crash) run without it.
        before = os.environ.pop(PRELOAD_BEFORE_ENV, "")
        if before:
            os.environ["LD_PRELOAD"] = before
        else:
            os.environ.pop("LD_PRELOAD", None)
        return (
            f"AVX-512 hidden from CPUID for the whole process ({LIBRARY.name}, CPUID faulting): "
            "MLAS, oneDNN, OpenBLAS and the op see an AVX2 CPU"
        )
    if os.environ.get(MASKED_ENV) != "1" and LIBRARY.exists() and "cpuid_fault" in flags:
        preload = " ".join(p for p in (str(LIBRARY), os.environ.get("LD_PRELOAD", "")) if p)
        env = dict(
            os.environ, LD_PRELOAD=preload, **{MASKED_ENV: "1", PRELOAD_BEFORE_ENV: os.environ.get("LD_PRELOAD", "")}
        )
        env.pop("PYTHONFAULTHANDLER", None)  # its SIGSEGV handler would take the CPUID traps and crash
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # read by oneDNN at its first primitive
    if "cpuid_fault" not in flags:
        why = "this CPU has no CPUID faulting"
    elif not LIBRARY.exists():
        why = f"{LIBRARY} not built: make bench builds it"
    else:
        why = f"{LIBRARY.name} did not load"
    return f"oneDNN (F.conv3d) capped at AVX2 (ONEDNN_MAX_CPU_ISA); ONNX Runtime's MLAS is not ({why})"


def select_cpu_path(isa: str | None) -> str | None:
    """``--isa`` of the benchmark scripts, before torch is used: the op's path (``D3D_CPU_ISA``, read by
    both op libraries when they load), and for ``avx2`` the run as an AVX2 machine (may re-run the
    script). Returns run_as_avx2_machine's line, or None."""
    if isa:
        os.environ["D3D_CPU_ISA"] = isa
    return run_as_avx2_machine() if isa == "avx2" else None


def cap_report(capped: str | None) -> list[str]:
    """The report's lines on how the run was capped, once the op has loaded."""
    return [line for line in (capped, check_masked()) if line]


def check_masked() -> str | None:
    """After the op has loaded: a warning line where the mask was asked for but AVX-512 still shows."""
    if os.environ.get(MASKED_ENV) != "1" or not _library_loaded():
        return None
    import torch

    from d3d.ops import cpu_isa_detected

    seen = {"op": cpu_isa_detected(), "torch": torch.backends.cpu.get_cpu_capability()}
    if seen["op"] == "avx2" and seen["torch"] == "AVX2":
        return None
    return f"warning: the CPUID mask did not take everywhere (best path: op {seen['op']}, torch {seen['torch']})"
