"""User-facing errors: the CLI prints their message as one line and exits with ``exit_code``."""


class D3DError(Exception):
    """An error whose message is complete and meant for the user (no traceback)."""

    exit_code = 1
