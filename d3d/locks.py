"""One d3d process per output: an exclusive lock held for the life of a run.

Two runs onto one output (``d3d upscale -o same.mp4`` twice, two ``d3d train`` on one run folder) would
write one work folder together, or the second would discard the first one's frames as an "interrupted
run". Each run that writes an output therefore holds ``fcntl.flock`` on ``.<output name>.d3d-lock``
beside it, from before its first check of the output to its end. The kernel releases the lock when the
process dies, however it dies, so a killed run leaves no stale lock (only the small file, which the next
run takes over and removes). The PID and command line written into the file are only for the message
that refuses a second run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from d3d.errors import D3DError


class OutputBusy(D3DError):
    """Another d3d process holds the output's lock."""


def lock_path(output: Path) -> Path:
    """The lock file of ``output``: a hidden sibling (the output and its work folder may not exist yet)."""
    return output.parent / f".{output.name}.d3d-lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another d3d process"
    return f"another d3d process (PID {pid}{f': {command}' if command else ''})"


def _acquire(path: Path) -> int | None:
    """The locked file's descriptor; None where no lock file can be made there (the run's own checks of
    the output then refuse the place in their words). Raises :class:`OutputBusy`."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise OutputBusy(who) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have removed the file between our open and our lock: then we hold a
        # lock on a file nobody else can find, and must take the one at the path instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def exclusive(output: Path, what: str = "output") -> Iterator[None]:
    """Holds ``output``'s lock for the block, or refuses in one line naming the process that holds it."""
    path = lock_path(Path(output))
    try:
        fd = _acquire(path)
    except OutputBusy as exc:
        raise OutputBusy(
            f"{output}: {exc} is writing this {what} now: wait for it to end, or stop it first (its work folder "
            "is its own while it runs)"
        ) from None
    if fd is None:
        yield
        return
    try:
        os.ftruncate(fd, 0)
        command = " ".join(["d3d", *sys.argv[1:3]]) if sys.argv else "d3d"
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        # Removed while still held: a process waiting on the old file sees it gone and takes a new one.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
