"""Test-only probe points: proof that a process has got to a given point, for tests that interrupt it there.

A test must send its signal at a point the process has provably reached, never after a fixed delay (a
delay that suits one machine is too short or too long on the next). Two environment variables, read at
each probe and unset in every real run, where a probe costs two dictionary look-ups:

- ``D3D_TEST_EVENTS=<file>``: every probe appends its name as one line to that file (one ``write`` on a
  file opened for appending, so a reader never sees half a line);
- ``D3D_TEST_HOLD=<name>``: at that probe the main thread waits: a SIGINT/SIGTERM handler's exception
  ends the wait (the interrupt lands exactly there), and SIGUSR1 lets the run go on. The probe's line is
  written as ``held <name>`` once the wait is in place, so a test can wait for it before signalling.

Probes the project emits: ``signals`` (the CLI's handlers are in place: the earliest point a Ctrl-C is one
line and 130), ``command <name>`` (the command's modules are about to be imported), ``network <i>`` (the
network stage is about to compute output frame ``i``), ``train step <n>`` (a training step begins),
``prepare clip <name>`` (``d3d prepare`` starts writing a clip), ``onnx saved`` (an exported ONNX file is
written under its temporary name, not yet renamed into place).
"""

from __future__ import annotations

import os
import signal
import threading
import time

EVENTS_ENV = "D3D_TEST_EVENTS"
HOLD_ENV = "D3D_TEST_HOLD"
HOLD_LIMIT_S = 600.0  # a hold nobody releases ends by itself, so a broken test cannot hang a run for ever


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def reached(point: str) -> None:
    """Marks ``point`` as reached (see the module docstring); holds there where ``D3D_TEST_HOLD`` names it."""
    events = os.environ.get(EVENTS_ENV)
    hold = os.environ.get(HOLD_ENV) == point and threading.current_thread() is threading.main_thread()
    if events:
        _append(events, point)
    if not hold:
        return
    released: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: released.append(signum))
    try:
        if events:
            _append(events, f"held {point}")
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not released and time.monotonic() < deadline:
            time.sleep(0.01)  # a signal's handler runs here; SIGINT/SIGTERM's raise out of the wait
    finally:
        signal.signal(signal.SIGUSR1, previous)
