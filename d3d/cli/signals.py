"""SIGINT and SIGTERM for the command line: one line and exit 130/143, from the first moment the project's
code runs to the end of the command.

Three phases. While :mod:`d3d.cli` itself is being imported, a signal is only noted
(:func:`defer_until_console_main`), because nothing could clean up yet. From :func:`take_over` (the first
thing ``console_main`` does, which then raises a noted signal) every signal raises
:class:`~d3d.errors.Interrupted`, also while the command's modules are imported. Around the command
itself, :func:`raising_interrupts` does the same, and the CLI reports it with :func:`report_interrupt`
after the command cleaned up.

This module imports only the standard library and :mod:`d3d.errors` (after the deferral is in place), so
it is the first thing the package runs.
"""

from __future__ import annotations

import os
import signal
import sys

# Signals that arrived while d3d.cli was still being imported: taken once console_main starts.
early: list[int] = []


def started_as_entry_point() -> bool:
    """This process is the ``d3d`` executable or ``python -m d3d.cli``; importing :mod:`d3d.cli` as a
    library (tests, a notebook) must never touch the process's signal handlers."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == "d3d":
        return True
    # `python -m d3d.cli`: while the package is imported, runpy has not yet put the module's path into
    # argv[0] (it is "-m"), so the interpreter's own command line says which module it runs.
    args = list(getattr(sys, "orig_argv", []))[1:]
    while args:
        arg = args.pop(0)
        if arg == "-m":
            return bool(args) and args[0] in ("d3d.cli", "d3d.cli.__main__")
        if arg.startswith("-m"):
            return arg[2:] in ("d3d.cli", "d3d.cli.__main__")
        if arg in ("-W", "-X"):  # an option with its value in the next argument
            args = args[1:]
        elif not arg.startswith("-") or arg == "-c":
            return False  # a script or -c: not our entry point
    return False


IS_ENTRY_POINT = started_as_entry_point()


def defer_until_console_main() -> None:
    """Note SIGINT/SIGTERM instead of dying with Python's traceback (only at the entry point)."""
    if IS_ENTRY_POINT:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: early.append(signum))


defer_until_console_main()

import contextlib  # noqa: E402 - after the deferral, on purpose
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from d3d.errors import Interrupted, kept  # noqa: E402

# Signals the handler below received: whatever exception unwinds after one is reported as the interrupt
# (an interrupt inside a library's import can surface as another error, e.g. a RecursionError from torch).
received: list[int] = []


def raise_interrupt(signum, frame):
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread; later ones are ignored while the
    first unwinds, so the cleanup (aborting partial outputs) always completes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    received.append(signum)
    raise Interrupted(signum)


def take_over() -> None:
    """:func:`raise_interrupt` for the whole process from here on, the command's imports included (torch's
    alone take seconds). A signal noted during the CLI's own import is the caller's to raise (``early``)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, raise_interrupt)


@contextlib.contextmanager
def raising_interrupts() -> Iterator[None]:
    """:func:`raise_interrupt` for the block (where this is the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received.clear()  # main() may run more than once in a process (tests)
    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def report_interrupt(signum: int, exc: BaseException | None = None) -> int:
    """One line; it names what the command kept on purpose (a resumable checkpoint), if anything."""
    note = kept(exc) if exc is not None else None
    what = note if note else "partial outputs removed"
    print(f"d3d: interrupted ({signal.Signals(signum).name}); {what}", file=sys.stderr)
    return 128 + int(signum)
