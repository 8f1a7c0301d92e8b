"""The ``d3d`` command line: one subcommand per stage of the pipeline.

Every user error is one line, ``d3d: error: ...``, exit 1 (2 where an optional SDK such as TensorRT is
missing; 2 with the usage for ``d3d`` without a command). An unexpected internal error is one line too,
with a pointer to ``--debug`` for the traceback. SIGINT/SIGTERM print one line and exit 130/143 after the
running command cleaned up. A closed standard output (``d3d upscale ... -o - | head``) ends the run
quietly with exit 141, as a tool killed by SIGPIPE. Library code logs (logger ``d3d``); only this module
and the commands print.
"""

from __future__ import annotations

# Interrupts first, before any other import: from here on a Ctrl-C or SIGTERM is one line and 130/143.
# Only where this module is the process's entry point (the `d3d` executable, `python -m d3d.cli`):
# importing d3d, or this module, as a library never touches signal handlers. Until console_main takes
# over (a few milliseconds: this module's own imports), a signal is only noted, then taken there.
import os
import signal
import sys

_early_signals: list[int] = []
_IS_ENTRY_POINT = __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "d3d"
if _IS_ENTRY_POINT:
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, lambda signum, frame: _early_signals.append(signum))

import argparse  # noqa: E402 - after the handlers, on purpose
import contextlib  # noqa: E402
import errno  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402

from d3d import probes  # noqa: E402
from d3d.errors import D3DError, Interrupted, kept, reason, summary_line  # noqa: E402

if _IS_ENTRY_POINT:
    probes.reached("signals deferred")  # a signal now is noted, and taken once console_main starts

# name -> (module, help); modules are imported only when their command runs, so `d3d --help` is fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("d3d.commands.info", "show versions, backends and native libraries (--json for machines)"),
    "upscale": ("d3d.commands.upscale", "upscale a video or frame folder (the main job)"),
    "serve": ("d3d.commands.serve", "serve the model with Triton Inference Server (one sequence per video)"),
    "export": ("d3d.commands.export", "export a checkpoint to ONNX (custom DeformConv3d node or --portable)"),
    "verify": ("d3d.commands.verify", "compare PyTorch, ONNX Runtime and TensorRT outputs with Polygraphy"),
    "build": ("d3d.commands.build", "build a TensorRT engine (with the DeformConv3d plugin) from an ONNX file"),
    "bench": ("d3d.commands.bench", "latency, throughput and peak memory per backend"),
    "cache": ("d3d.commands.cache", "list or clear the TensorRT engines built once and cached"),
    "prepare": ("d3d.commands.prepare", "video or frame folders -> Vimeo-90K septuplet or Vid4 test layout"),
    "train": ("d3d.commands.train", "train D3Dnet (the seed's recipe; resumable; torchrun for several processes)"),
    "eval": ("d3d.commands.eval", "PSNR/SSIM on Vid4/SPMC/Vimeo-layout data against bicubic (the seed's protocol)"),
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


# Signals the handler below received: whatever exception unwinds after one is reported as the interrupt
# (an interrupt inside a library's import can surface as another error, e.g. a RecursionError from torch).
_received: list[int] = []


def _raise_interrupt(signum, frame):
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread; later ones are ignored while the
    first unwinds, so the cleanup (aborting partial outputs) always completes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _received.append(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """:func:`_raise_interrupt` for the block (where this is the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()  # main() may run more than once in a process (tests)
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
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


def _report_interrupt(signum: int, exc: BaseException | None = None) -> int:
    """One line; it names what the command kept on purpose (a resumable checkpoint), if anything."""
    note = kept(exc) if exc is not None else None
    what = note if note else "partial outputs removed"
    print(f"d3d: interrupted ({signal.Signals(signum).name}); {what}", file=sys.stderr)
    return 128 + int(signum)


# 128 + SIGPIPE: what a shell reports for a tool that SIGPIPE ended (`yes | head` -> 141).
EXIT_BROKEN_PIPE = 141
# File-system conditions, not bugs: reported as a user error naming the file (where no command did).
_FS_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
    errno.ENAMETOOLONG, errno.EFBIG, errno.EMFILE,
}  # fmt: skip
# The machine's, not d3d's, even where the failing call named no file (a full disk inside an encoder).
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _stdout_closed() -> bool:
    """The reader of standard output went away (a pipe whose read end is closed reports POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True  # no poll() here, or stdout already gone: the BrokenPipeError was about it


def _quiet_stdout() -> None:
    """Points stdout at /dev/null so the interpreter's final flush cannot fail (and print) again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class _MessagesStdout:
    """Standard output for a command whose product is not stdout (a file, an engine, a run folder): once its
    reader goes away (``... | head -1``), later messages are dropped and the run goes on to write its product
    (a log reader closing early must not cost the run)."""

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
            _quiet_stdout()  # what the stream still buffers now flushes into /dev/null
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
def _stdout_for(module, args: argparse.Namespace) -> Iterator[None]:
    """A command declares ``product_on_stdout(args)`` where its product is stdout (``info``, ``cache list``,
    ``upscale -o -``): a closed stdout then ends it quietly with 141. Every other run keeps going."""
    on_stdout = getattr(module, "product_on_stdout", None)
    if on_stdout is not None and on_stdout(args):
        yield
        return
    previous = sys.stdout
    sys.stdout = _MessagesStdout(previous)
    try:
        yield
    finally:
        sys.stdout = previous


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
    if _IS_ENTRY_POINT and _received:  # an interrupt during the command's imports that a library swallowed
        return _report_interrupt(_received[0])
    try:
        with _signals_raise(), _log_to_stderr(debug), _stdout_for(module, args):
            return int(run(args) or 0)
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        return _report_interrupt(signum, exc)
    except D3DError as exc:
        if debug:
            traceback.print_exc()
        if _received:
            return _report_interrupt(_received[0], exc)
        note = kept(exc)
        print(f"d3d: error: {summary_line(exc)}" + (f"; {note}" if note else ""), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if _received:
            return _report_interrupt(_received[0], exc)
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            # The reader of stdout went away (`-o - | head`): no message, as other tools on EPIPE; the
            # command's outputs were aborted on the way out.
            _quiet_stdout()
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
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _raise_interrupt)
        probes.reached("signals")
        if _early_signals:  # arrived while this module was still being imported
            raise Interrupted(_early_signals[0])
        rc = main()
    except (Interrupted, KeyboardInterrupt) as exc:  # before main's own handling (the command's imports)
        rc = _report_interrupt(exc.signum if isinstance(exc, Interrupted) else signal.SIGINT, exc)
    except BaseException as exc:
        if not _received:  # a real error outside main's own handling: Python's report
            raise
        rc = _report_interrupt(_received[0], exc)  # an interrupt inside an import can surface as another error
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    console_main()
