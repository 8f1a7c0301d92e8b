"""``--isa avx2`` of the benchmark scripts (bench/avx2_machine.py): on an AVX-512 machine with CPUID
faulting the script re-runs itself with AVX-512 hidden from CPUID, and PyTorch (its oneDNN/ATen
dispatch) then sees an AVX2 CPU; elsewhere the report says which cap applied instead. A machine without
AVX-512 or CPUID faulting, or without the library built (ctest's build), skips the masked case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "build" / "bench" / "libd3d_cpuid_avx2.so"
# What a benchmark does first, then what the process sees afterwards.
PROBE = (
    "import sys; sys.path.insert(0, 'bench'); from avx2_machine import run_as_avx2_machine; "
    "line = run_as_avx2_machine(); import os, torch; "
    "print(line); print('capability', torch.backends.cpu.get_cpu_capability()); "
    "print('onednn', os.environ.get('ONEDNN_MAX_CPU_ISA')); print('preload', os.environ.get('LD_PRELOAD'))"
)


def _flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))


def _probe(**env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ONEDNN_MAX_CPU_ISA", "D3D_CPUID_AVX2")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=full | env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_masked_process_sees_avx2():
    flags = _flags()
    if "avx512f" not in flags or "cpuid_fault" not in flags:
        pytest.skip("not run: this CPU has no AVX-512 to hide or no CPUID faulting")
    if not LIBRARY.exists():
        pytest.skip(f"not run: {LIBRARY} not built (make cpp-test builds it)")
    # PYTHONFAULTHANDLER's SIGSEGV handler would take the CPUID traps: the re-run must drop it.
    out = _probe(D3D_CPUID_AVX2_LIB=str(LIBRARY), PYTHONFAULTHANDLER="1")
    assert "AVX-512 hidden from CPUID" in out
    assert "capability AVX2" in out  # PyTorch's own CPUID check, not ours
    assert "onednn None" in out  # not needed: oneDNN sees AVX2 itself
    assert "preload None" in out  # children (the op's compiler) run without the mask


def test_without_library_caps_onednn_and_says_why():
    if "avx512f" not in _flags():
        pytest.skip("not run: this CPU has no AVX-512, nothing is capped")
    out = _probe(D3D_CPUID_AVX2_LIB="/nonexistent/libd3d_cpuid_avx2.so")
    assert "ONNX Runtime's MLAS is not" in out
    assert "onednn AVX2" in out
    assert "capability AVX512" in out  # unmasked: PyTorch still sees AVX-512
