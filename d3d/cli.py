"""The ``d3d`` command line: one subcommand per stage of the pipeline.

Every user error is one line, ``d3d: error: ...``, exit 1 (2 where an optional SDK such as TensorRT is
missing). An unexpected internal error is one line too, with a pointer to ``--debug`` for the
traceback. SIGINT/SIGTERM print one line and exit 130/143 after the running command cleaned up.
Library code logs (logger ``d3d``); only this module and the commands print.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence

from d3d.errors import D3DError, Interrupted, summary_line

# name -> (module, help); modules are imported only when their command runs, so `d3d --help` is fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("d3d.commands.info", "show versions, backends and native libraries (--json for machines)"),
    "upscale": ("d3d.commands.upscale", "upscale a video or frame folder (the main job)"),
    "export": ("d3d.commands.export", "export a checkpoint to ONNX (custom DeformConv3d node or --portable)"),
    "verify": ("d3d.commands.verify", "compare PyTorch, ONNX Runtime and TensorRT outputs with Polygraphy"),
    "build": ("d3d.commands.build", "build a TensorRT engine (with the DeformConv3d plugin) from an ONNX file"),
    "bench": ("d3d.commands.bench", "latency, throughput and peak memory per backend"),
    "cache": ("d3d.commands.cache", "list or clear the TensorRT engines built once and cached"),
    "prepare": ("d3d.commands.prepare", "video or frame folders -> Vimeo-90K septuplet or Vid4 test layout"),
    "train": ("d3d.commands.train", "train D3Dnet (the seed's recipe; resumable; torchrun for several processes)"),
    "eval": ("d3d.commands.eval", "PSNR/SSIM on Vid4/SPMC/Vimeo-layout data against bicubic (the seed's protocol)"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return action.help or ""
        return super()._get_help_string(action) or ""


class UsageError(D3DError):
    """A command-line mistake found by argparse."""


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: one line (printed by :func:`main`), exit 1."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    import d3d

    parser = Parser(
        prog="d3d",
        description="D3Dnet video super-resolution: PyTorch -> ONNX -> TensorRT, with parity checks.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"d3d-trt {d3d.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logging"
        )
        subparsers[name] = p
    return parser, subparsers


# Signals the handler below received: whatever exception unwinds after one is reported as the interrupt
# (an interrupt inside a library's import can surface as another error, e.g. a RecursionError from torch).
_received: list[int] = []


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread; later ones are ignored while the
    first unwinds, so the cleanup (aborting partial outputs) always completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _received.append(signum)
        raise Interrupted(signum)

    _received.clear()  # main() may run more than once in a process (tests)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _log_to_stderr(debug: bool) -> Iterator[None]:
    log = logging.getLogger("d3d")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("d3d: %(message)s"))
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


def _note(exc: BaseException) -> str:
    """What a command attached to the exception for the user's one line (e.g. how to resume)."""
    note = getattr(exc, "d3d_note", None)
    return f"; {note}" if note else ""


def _report_interrupt(signum: int, exc: BaseException | None = None) -> int:
    note = getattr(exc, "d3d_note", None) or "partial outputs removed"
    print(f"d3d: interrupted ({signal.Signals(signum).name}); {note}", file=sys.stderr)
    return 128 + int(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser, subparsers = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Let the chosen command add its own arguments before parsing.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    run: Callable[[argparse.Namespace], int] | None = None
    if chosen in COMMANDS:
        module = importlib.import_module(COMMANDS[chosen][0])
        module.add_arguments(subparsers[chosen])
        run = module.run
    try:
        args = parser.parse_args(argv)
        if run is None and argv and chosen is not None:
            parser.error(f"unknown command {chosen!r}; choose one of {', '.join(COMMANDS)}")
    except UsageError as exc:
        print(f"d3d: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if run is None:
        parser.print_help()
        return 0 if not argv or argv == ["--debug"] else 1
    debug = bool(args.debug)
    try:
        with _signals_raise(), _log_to_stderr(debug):
            return int(run(args) or 0)
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        return _report_interrupt(signum, exc)
    except D3DError as exc:
        if debug:
            traceback.print_exc()
        if _received:
            return _report_interrupt(_received[0], exc)
        print(f"d3d: error: {summary_line(exc)}{_note(exc)}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if _received:
            return _report_interrupt(_received[0], exc)
        print(
            f"d3d: error: internal error: {type(exc).__name__}: {summary_line(exc)} "
            f"(re-run with --debug for the traceback){_note(exc)}",
            file=sys.stderr,
        )
        return 1


def console_main() -> None:
    """The ``d3d`` executable. After an interrupt, the outputs are already cleaned up when :func:`main`
    returns; the process then ends without interpreter finalization, where freeing an ONNX Runtime
    session whose run was stopped mid-graph can abort the process (observed with the
    onnxruntime-extensions op bridge) and turn exit 130 into a crash."""
    try:
        rc = main()
    except KeyboardInterrupt:  # before main's own handling is in place (the command's imports)
        print("d3d: interrupted (SIGINT)", file=sys.stderr)
        rc = 128 + signal.SIGINT
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    console_main()
