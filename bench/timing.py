"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable


def median_times(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn`` over ``repeat`` calls after a warm-up (on a
    shared machine CPU time moves less with the other load than wall time does)."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def cpu_description() -> str:
    """The CPU's model name and widest x86 vector ISA (``AVX-512``, ``AVX2``, ``no AVX2``), for a report."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        isa = "AVX-512" if " avx512f" in text else "AVX2" if " avx2" in text else "no AVX2"
        return f"{name}, {isa}"
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
