"""User-facing errors: the CLI prints their message as one line and exits with ``exit_code``."""


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
