"""The ``d3d`` command line, the top floor: nothing else in ``d3d`` imports it.

- :mod:`d3d.cli.signals`: SIGINT/SIGTERM as one line and 130/143, deferred from the very first import;
- :mod:`d3d.cli.stdout`: a standard output whose reader went away (141 or keep going);
- :mod:`d3d.cli.app`: the parser, the ``COMMANDS`` table, ``main`` (one-line errors) and ``console_main``;
- :mod:`d3d.cli.commands`: one module per subcommand, imported only when it runs.

This package and its ``__main__`` import no torch, so ``d3d --help`` and the signal handling start fast.
"""

from __future__ import annotations

# isort: off
# Interrupts first: at the entry point (the `d3d` executable, `python -m d3d.cli`) d3d.cli.signals defers
# SIGINT/SIGTERM before anything else of the CLI is imported; a signal now is noted and taken once
# console_main starts. Imported as a library, it leaves the process's handlers alone.
from d3d.cli import signals
from d3d import probes

if signals.IS_ENTRY_POINT:
    probes.reached("signals deferred")

from d3d.cli.app import COMMANDS, build_parser, console_main, main
# isort: on

__all__ = ["COMMANDS", "build_parser", "console_main", "main"]
