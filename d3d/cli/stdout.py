"""Standard output whose reader went away (``d3d upscale ... -o - | head``).

A command whose product is stdout then ends quietly with exit 141, as a tool killed by SIGPIPE; every
other command keeps going and writes its product (a log reader closing early must not cost the run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

# 128 + SIGPIPE: what a shell reports for a tool that SIGPIPE ended (`yes | head` -> 141).
EXIT_BROKEN_PIPE = 141


def stdout_closed() -> bool:
    """The reader of standard output went away (a pipe whose read end is closed reports POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True  # no poll() here, or stdout already gone: the BrokenPipeError was about it


def quiet_stdout() -> None:
    """Points stdout at /dev/null so the interpreter's final flush cannot fail (and print) again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class MessagesStdout:
    """Standard output for a command whose product is not stdout (a file, an engine, a run folder): once its
    reader goes away (``... | head -1``), later messages are dropped and the run goes on to write its product."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.closed_by_reader = False

    def _call(self, name: str, *args):
        if self.closed_by_reader:
            return len(args[0]) if args else None
        try:
            return getattr(self._stream, name)(*args)
        except BrokenPipeError:
            self.closed_by_reader = True
            quiet_stdout()  # what the stream still buffers now flushes into /dev/null
            return len(args[0]) if args else None

    def write(self, text: str) -> int:
        return self._call("write", text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def stdout_for(module, args: argparse.Namespace) -> Iterator[None]:
    """A command declares ``product_on_stdout(args)`` where its product is stdout (``info``, ``cache list``,
    ``upscale -o -``): a closed stdout then ends it quietly with 141. Every other run keeps going."""
    on_stdout = getattr(module, "product_on_stdout", None)
    if on_stdout is not None and on_stdout(args):
        yield
        return
    previous = sys.stdout
    sys.stdout = MessagesStdout(previous)
    try:
        yield
    finally:
        sys.stdout = previous
