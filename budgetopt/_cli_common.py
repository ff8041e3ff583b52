"""What the command-line modules share: number parsers for flags, output-path checks and
writers, and :func:`run_guarded`, which turns errors and signals into exit
codes.

Standard library only at module level: the console script imports this module before it can
report a Ctrl-C, so numpy and the solvers load inside :func:`run_guarded`, when a command
needs them. Imports go one way: ``cli`` and ``cli_profile`` use this module, never the reverse.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

from ._limits import MAX_TOKENS, MAX_TOKENS_TEXT
from .errors import BudgetoptError, CurvesFileError, InvalidInputError

__all__ = [
    "Parser",
    "UsageError",
    "number_parser",
    "check_output_path",
    "check_table_output",
    "dumps",
    "write_json",
    "Terminated",
    "run_guarded",
]


class UsageError(InvalidInputError):
    """A command-line argument is wrong (reported like argparse's own errors)."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that names a mistyped option before anything else.

    argparse checks required arguments before it looks at unknown ones, so ``solve
    --budjet 0.2`` would be told that ``--budget`` is required. Here any error is first
    replaced by the first unknown option, with the closest known one when there is one
    ("unrecognized argument --budjet; did you mean --budget?"). Subcommand parsers made by
    ``add_subparsers().add_parser`` are of this class too.
    """

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        unknown = self._first_unknown_option(getattr(self, "_given", ()))
        if unknown is not None:
            parser, name = unknown
            message = f"unrecognized argument {name}"
            known = [o for o in parser._option_string_actions if o.startswith("--")]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]}?"
            if parser is not self:  # the subcommand's usage line, as argparse gives it
                parser.error(message)
        super().error(message)

    def _first_unknown_option(self, args):
        """``(parser, option)`` for the first ``--option`` in ``args`` that the parser it is
        meant for (this one, or the subcommand named before it) does not know; else None."""
        commands = {}
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                commands = action.choices
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if commands and not arg.startswith("-"):  # the command: judge the rest by its parser
                return commands[arg]._first_unknown_option(args[i + 1:]) if arg in commands else None
            if not arg.startswith("--") or len(arg) < 3:
                continue  # values, negative numbers and short options are argparse's to judge
            name = arg.split("=", 1)[0]
            if not any(o.startswith(name) for o in self._option_string_actions):
                return self, name
        return None


# -- flags -------------------------------------------------------------------------------------
def number_parser(convert, accepts, rule, *, below=None):
    """An argparse ``type``: ``convert(text)`` that must satisfy ``accepts``; errors say ``rule``.

    ``below``, when given, is an exclusive upper limit (in tokens) reported as "too large".
    Non-finite floats are refused whatever ``accepts`` says.

    Examples
    --------
    >>> half = number_parser(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
    >>> half("0.5")
    0.5
    >>> half("2")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a number in (0, 1]; got '2'
    """

    def parse(text):
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"
        try:
            value = convert(text)
        except (ValueError, OverflowError):  # not a number (or more digits than Python parses)
            raise argparse.ArgumentTypeError(f"must be {rule}; got {shown!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {rule} (finite); got {shown!r}")
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {rule}; got {shown!r}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"is too large: must be below {MAX_TOKENS_TEXT} tokens; got {shown!r}")
        return value

    return parse


positive_fraction = number_parser(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1] (the fraction kept)")
non_negative_int = number_parser(int, lambda v: v >= 0, "a whole number >= 0", below=MAX_TOKENS)
positive_int = number_parser(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_number = number_parser(float, lambda v: v >= 0, "a number >= 0", below=float(MAX_TOKENS))
positive_number = number_parser(float, lambda v: v > 0, "a number > 0")
fraction_below_one = number_parser(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
positive_seconds = number_parser(float, lambda v: v > 0, "a number of seconds > 0")


def workers_count(text):
    """The argparse ``type`` of ``--workers``: the rule and wording of
    :func:`budgetopt._checks.check_workers` (imported here, at parse time, since
    ``_checks`` needs numpy and this module loads before it)."""
    from ._checks import WORKERS_RULE, workers_ok

    return number_parser(int, workers_ok, WORKERS_RULE)(text)


# -- outputs -----------------------------------------------------------------------------------
def check_output_path(path, suffixes, *, option="-o/--output", inputs=(), within=()):
    """Reject a bad output path before any work: an empty name, a name ending in a separator,
    an unknown suffix, a missing directory, a destination that is not a regular file, that
    is one of ``inputs`` or that lies inside one of the directories ``within`` (the run or
    model directories the command reads). Returns the path as given (a symlink is written
    through)."""
    from ._io import check_output_file

    if path == "":
        raise UsageError(f"{option} needs a file name; got an empty string")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise UsageError(f"{option} {path!r} names a directory; give a file name ending in {' or '.join(suffixes)}")
    if Path(path).suffix.lower() not in suffixes:
        raise UsageError(f"{option} must end in {' or '.join(suffixes)}; got {path!r}")
    try:
        check_output_file(path, inputs=inputs, within=within)
    except CurvesFileError as exc:
        raise UsageError(f"{option}: {exc}") from None
    return Path(path)


def check_table_output(path, *, option="-o/--output", inputs=(), within=()):
    """:func:`check_output_path` for an LU-KV table (``.npy``) and for the JSON description
    written beside it (``TABLE.json``), which gets the same rules: it must not be an input
    (say the calibration file), nor inside a run or model directory the command reads."""
    from ._io import check_output_file
    from .runs import table_meta_path

    table = check_output_path(path, (".npy",), option=option, inputs=inputs, within=within)
    sidecar = table_meta_path(table)
    try:
        check_output_file(sidecar, inputs=inputs, within=within)
    except CurvesFileError as exc:
        raise UsageError(f"{option}: the table's description {exc}") from None
    return table


def dumps(payload):
    """Standard JSON text: non-finite floats (never expected) become null, not NaN/Infinity.

    Examples
    --------
    >>> dumps({"gap": float("nan"), "used": [1, 2]})
    '{"gap": null, "used": [1, 2]}'
    """

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(payload), allow_nan=False)


def write_json(path, payload, inputs=()):
    """``payload`` as one line of standard JSON, written atomically to ``path``."""
    from ._io import write_atomic

    text = dumps(payload) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), inputs=inputs)


# -- exit codes --------------------------------------------------------------------------------
class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (or SIGHUP) while the CLI
    runs, so that pending writes remove their temporary files before it exits."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def run_guarded(build_parser, argv, *, prog="budgetopt", exiting=False):
    """Parse ``argv`` with ``build_parser()`` and run the chosen command ``args.func(args)``;
    returns the exit code.

    0 ok, 2 bad input (one line on stderr, no traceback), 1 internal error (one line),
    130 after Ctrl-C, 128 + N after signal N such as SIGTERM. ``build_parser`` is called
    inside the guard, so a Ctrl-C while it imports the library is reported like any other.
    Once a signal has arrived, whatever error follows is reported as that signal: an
    interrupted import can surface as an ``ImportError`` (NumPy's does).

    With ``exiting`` (the process exits with the code right after), a Ctrl-C that arrives
    once the command has finished is ignored instead of killing the interpreter on its way
    out: the output is complete and the code stands.
    """
    received = []
    in_hook = False
    timers = []

    def on_signal(signum, frame):
        received.append(signum)
        if in_hook:  # never raise inside the hook below: deliver the signal again shortly
            timers.append(_redeliver(signum))
            return
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    def on_unraisable(unraisable):
        # A signal that lands in a callback from C code (numba's compiler calls back into Python
        # through ctypes) raises there, and ctypes prints the exception and carries on as if
        # nothing happened. Deliver it again, so that it lands in ordinary Python code.
        nonlocal in_hook
        if received and isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            in_hook = True
            try:
                timers.append(_redeliver(received[-1]))
            finally:
                in_hook = False
        else:
            previous_hook(unraisable)

    previous_hook, sys.unraisablehook = sys.unraisablehook, on_unraisable
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, on_signal)
            except ValueError:  # not the main thread: leave signals alone
                pass
    where = prog
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        where = f"{prog} {args.command}"
        try:
            return args.func(args)
        except UsageError as exc:
            parser.exit(2, f"{where}: error: {exc}\n")
    except SystemExit:
        raise
    except BaseException as exc:
        code, line = _outcome(exc, received, prog, where)
        if code is None:
            raise
        sys.stderr.write(line)
        return code
    finally:
        for timer in timers:  # the command has ended: its code stands
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if exiting and sig == signal.SIGINT else handler)
        sys.unraisablehook = previous_hook


def _redeliver(signum, delay=0.01):
    """Signal ``signum`` to the main thread again after ``delay`` seconds (from another thread,
    so that the handler does not run before the caller has returned); returns the timer."""
    import _thread

    timer = threading.Timer(delay, _thread.interrupt_main, (signum,))
    timer.daemon = True
    timer.start()
    return timer


def _outcome(exc, received, prog, where):
    """``(exit code, stderr line)`` for ``exc``; ``(None, None)`` to let it propagate."""
    signum = received[0] if received else None
    if signum is None and isinstance(exc, KeyboardInterrupt):
        signum = signal.SIGINT
    if signum is None and isinstance(exc, Terminated):
        signum = exc.signum
    if signum == signal.SIGINT:
        return 130, f"{prog}: interrupted\n"
    if signum is not None:
        return 128 + signum, f"{prog}: terminated by {signal.Signals(signum).name}\n"
    if isinstance(exc, BudgetoptError):
        return 2, f"{where}: error: {exc}\n"
    if isinstance(exc, OSError):
        return 2, f"{where}: error: {exc.strerror or exc}: {exc.filename or ''}\n"
    if isinstance(exc, RecursionError):
        return 2, f"{where}: error: input nested too deeply\n"
    if isinstance(exc, MemoryError):
        return 2, f"{where}: error: out of memory\n"
    if isinstance(exc, Exception):  # a bug: say so plainly, without a traceback
        return 1, (f"{where}: internal error: {type(exc).__name__}: {exc} "
                   "(please report this with the command that caused it)\n")
    return None, None
