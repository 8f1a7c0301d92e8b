"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable


def median_times(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn`` over ``repeat`` calls after a warm-up (on a
    shared machine CPU time moves less with the other load than wall time does)."""
    return interleaved_median_times({"fn": fn}, repeat)["fn"]


def interleaved_median_times(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[float, float]]:
    """Median wall and process CPU time of each of ``fns`` over ``repeat`` rounds that call every one in
    turn, after one warm-up each: a shared machine's drifting load then hits all of them alike, where
    blocks of calls one function after another would put the drift into the ratios. Each round starts
    one function later, so no function always runs right after the same other one."""
    for fn in fns.values():
        fn()
    names = list(fns)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeat):
        for i in range(len(names)):
            k = names[(r + i) % len(names)]
            t0, c0 = time.perf_counter(), time.process_time()
            fns[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


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
