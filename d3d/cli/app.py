"""The ``d3d`` command line: one subcommand per stage of the pipeline.

Every user error is one line, ``d3d: error: ...``, exit 1 (2 where an optional SDK such as TensorRT is
missing; 2 with the usage for ``d3d`` without a command). An unexpected internal error is one line too,
with a pointer to ``--debug`` for the traceback. SIGINT/SIGTERM print one line and exit 130/143 after the
running command cleaned up (:mod:`d3d.cli.signals`). A closed standard output (``d3d upscale ... -o - |
head``) ends the run quietly with exit 141, as a tool killed by SIGPIPE (:mod:`d3d.cli.stdout`). Library
code logs (logger ``d3d``); only the CLI prints.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence

from d3d import probes
from d3d.cli import signals
from d3d.cli.stdout import EXIT_BROKEN_PIPE, quiet_stdout, stdout_closed, stdout_for
from d3d.errors import D3DError, Interrupted, kept, reason, summary_line

# name -> (module, help); modules are imported only when their command runs, so `d3d --help` is fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("d3d.cli.commands.info", "show versions, backends and native libraries (--json for machines)"),
    "upscale": ("d3d.cli.commands.upscale", "upscale a video or frame folder (the main job)"),
    "serve": ("d3d.cli.commands.serve", "serve the model with Triton Inference Server (one sequence per video)"),
    "export": ("d3d.cli.commands.export", "export a checkpoint to ONNX (custom DeformConv3d node or --portable)"),
    "verify": ("d3d.cli.commands.verify", "compare PyTorch, ONNX Runtime and TensorRT outputs with Polygraphy"),
    "build": ("d3d.cli.commands.build", "build a TensorRT engine (with the DeformConv3d plugin) from an ONNX file"),
    "bench": ("d3d.cli.commands.bench", "latency, throughput and peak memory per backend"),
    "cache": ("d3d.cli.commands.cache", "list or clear the TensorRT engines built once and cached"),
    "prepare": ("d3d.cli.commands.prepare", "video or frame folders -> Vimeo-90K septuplet or Vid4 test layout"),
    "train": ("d3d.cli.commands.train", "train D3Dnet (the seed's recipe; resumable; torchrun for several processes)"),
    "eval": ("d3d.cli.commands.eval", "PSNR/SSIM on Vid4/SPMC/Vimeo-layout data against bicubic (the seed's protocol)"),
}


# Environment variables a user may need (listed by `d3d --help`; the error that needs one names it).
ENVIRONMENT = """environment:
  D3D_CACHE_DIR        cache folder: ONNX exports made on first use, the built PyTorch op, TensorRT
                       engines (default: $XDG_CACHE_HOME/d3d-trt, else ~/.cache/d3d-trt); set it to a
                       writable folder where that one is read-only
  D3D_MEMORY_LIMIT_MB  memory upscale's estimate may plan for (default: the memory available)
  D3D_ORT_OPS          the ONNX Runtime DeformConv3d library (default: searched, see `d3d info`)
  D3D_TRT_PLUGIN       the TensorRT DeformConv3d plugin library (default: searched)
  D3D_BUILD_DIR        the CMake build folder searched for both (default: <checkout>/build)
  D3D_TRITONSERVER     the tritonserver binary d3d serve runs (default: the one make setup unpacked)

exit status: 0 done, 1 error, 2 missing SDK (e.g. TensorRT) or no command, 130/143 interrupted
(SIGINT/SIGTERM), 141 standard output closed by its reader (e.g. `| head`)"""


def _as_typed(value: object) -> str:
    """A default as a user would type it: ``68x160`` for sizes, space-separated lists."""
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "x".join(map(str, value))
    if isinstance(value, list | tuple):
        return " ".join(_as_typed(v) for v in value)
    return str(value)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has a meaningful one, written as it would be typed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return action.help or ""
        if isinstance(action.default, list | tuple) and "%(default)" not in (action.help or ""):
            return f"{action.help or ''} (default: {_as_typed(action.default).replace('%', '%%')})"
        return super()._get_help_string(action) or ""


class UsageError(D3DError):
    """A command-line mistake found by argparse."""


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: one line (printed by :func:`main`), exit 1."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _RawEpilogFormatter(HelpFormatter):
    """Keeps the top-level epilog's line breaks (the environment table)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    import d3d

    parser = Parser(
        prog="d3d",
        description="D3Dnet video super-resolution: PyTorch -> ONNX -> TensorRT, with parity checks.",
        epilog=ENVIRONMENT,
        formatter_class=_RawEpilogFormatter,
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


# File-system conditions, not bugs: reported as a user error naming the file (where no command did).
_FS_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
    errno.ENAMETOOLONG, errno.EFBIG, errno.EMFILE,
}  # fmt: skip
# The machine's, not d3d's, even where the failing call named no file (a full disk inside an encoder).
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def main(argv: Sequence[str] | None = None) -> int:
    parser, subparsers = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Let the chosen command add its own arguments before parsing.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    run: Callable[[argparse.Namespace], int] | None = None
    module = None
    if chosen in COMMANDS:
        probes.reached(f"command {chosen}")
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
    if run is None:  # no command: the usage on stderr, exit 2 (argparse's convention)
        parser.print_help(sys.stderr)
        return 2
    debug = bool(args.debug)
    # An interrupt during the command's imports that a library swallowed.
    if signals.IS_ENTRY_POINT and signals.received:
        return signals.report_interrupt(signals.received[0])
    try:
        with signals.raising_interrupts(), _log_to_stderr(debug), stdout_for(module, args):
            return int(run(args) or 0)
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        return signals.report_interrupt(signum, exc)
    except D3DError as exc:
        if debug:
            traceback.print_exc()
        if signals.received:
            return signals.report_interrupt(signals.received[0], exc)
        note = kept(exc)
        print(f"d3d: error: {summary_line(exc)}" + (f"; {note}" if note else ""), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if signals.received:
            return signals.report_interrupt(signals.received[0], exc)
        if isinstance(exc, BrokenPipeError) and stdout_closed():
            # The reader of stdout went away (`-o - | head`): no message, as other tools on EPIPE; the
            # command's outputs were aborted on the way out.
            quiet_stdout()
            return EXIT_BROKEN_PIPE
        note = f"; {kept(exc)}" if kept(exc) else ""
        if isinstance(exc, OSError) and exc.errno in _FS_ERRNOS and exc.filename:
            print(f"d3d: error: {exc.filename}: {reason(exc)}{note}", file=sys.stderr)
            return 1
        if isinstance(exc, OSError) and exc.errno in _MACHINE_ERRNOS:
            print(f"d3d: error: {reason(exc)}{note}", file=sys.stderr)
            return 1
        print(
            f"d3d: error: internal error: {type(exc).__name__}: {summary_line(exc)} "
            f"(re-run with --debug for the traceback){note}",
            file=sys.stderr,
        )
        return 1


def console_main() -> None:
    """The ``d3d`` executable. After an interrupt, the outputs are already cleaned up when :func:`main`
    returns; the process then ends without interpreter finalization, where freeing an ONNX Runtime
    session whose run was stopped mid-graph can abort the process (observed with the
    onnxruntime-extensions op bridge) and turn exit 130 into a crash."""
    try:
        # For the whole process, the command's imports included (torch's alone take seconds).
        signals.take_over()
        probes.reached("signals")
        if signals.early:  # arrived while d3d.cli was still being imported
            raise Interrupted(signals.early[0])
        rc = main()
    except (Interrupted, KeyboardInterrupt) as exc:  # before main's own handling (the command's imports)
        rc = signals.report_interrupt(exc.signum if isinstance(exc, Interrupted) else signal.SIGINT, exc)
    except BaseException as exc:
        if not signals.received:  # a real error outside main's own handling: Python's report
            raise
        # An interrupt inside an import can surface as another error.
        rc = signals.report_interrupt(signals.received[0], exc)
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)
