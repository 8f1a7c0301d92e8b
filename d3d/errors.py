"""User-facing errors: the CLI prints their message as one line and exits with ``exit_code``."""

import re


class D3DError(Exception):
    """An error whose message is complete and meant for the user (no traceback)."""

    exit_code = 1


def summary_line(exc: BaseException, last: bool = False) -> str:
    """One line of an exception's message for a user-facing error (the first, or the last for
    compiler-style logs), or its type name when it has no message."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return lines[-1] if last else lines[0]


def reason(exc: BaseException) -> str:
    """Why an OS, FFmpeg (PyAV) or image-library call failed, in words: without the error number and the
    file name those append (``[Errno 1094995529] Invalid data found when processing input: 'x.mp4'`` ->
    ``invalid data found when processing input``). The whole exception stays in ``--debug`` tracebacks."""
    text = str(getattr(exc, "strerror", None) or str(exc).strip().split("\n")[0])
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r"(:\s*)?'[^']*'$", "", text).strip()  # the file name PIL/PyAV append
    return (text[:1].lower() + text[1:]) if text else type(exc).__name__


def add_kept(exc: BaseException, kept: str) -> None:
    """Records on ``exc`` what a failed or interrupted run kept on purpose (e.g. a resumable checkpoint):
    the CLI says so instead of "partial outputs removed"; a traceback shows it as a note."""
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(kept)
    exc.d3d_kept = kept  # type: ignore[attr-defined]


def kept(exc: BaseException) -> str | None:
    """What :func:`add_kept` recorded on ``exc``, or None."""
    return getattr(exc, "d3d_kept", None)


class SDKMissing(D3DError):
    """An optional SDK (TensorRT, TensorRT-RTX, ...) is not installed: exit code 2, as the README says."""

    exit_code = 2


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwinds like KeyboardInterrupt (outputs are aborted on the way out)
    and the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(signal.Signals(signum).name)
