"""The ``budgetopt`` command line.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in
:func:`build_parser`. :func:`main` turns every budgetopt error (and file-system errors) into
exit code 2 with a one-line message on stderr; it never shows a traceback and never leaves a
partial output file (files are written atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from .api import METHODS, allocate
from .curves import load_curves, write_atomic
from .errors import BudgetoptError, InvalidInputError
from .hull import hull_gap
from .rounding import tokens_from_fraction

__all__ = ["main", "build_parser"]

EXAMPLE = "example_curves.npz"


class UsageError(InvalidInputError):
    """A command-line argument is wrong (reported like argparse's own errors)."""


# -- helpers shared by subcommands -----------------------------------------------------------
def example_path():
    """Path of the example curves shipped with the package."""
    return Path(str(resources.files("budgetopt.data").joinpath(EXAMPLE)))


def add_source_arguments(parser):
    """``CURVES`` positional or ``--example``."""
    parser.add_argument("curves", nargs="?", help="curves file (.npz with keys utility, grid, meta)")
    parser.add_argument(
        "--example",
        action="store_true",
        help="use the example shipped with budgetopt (32 layers x 8 KV heads, attention-derived)",
    )


def load_source(args):
    if args.example and args.curves:
        raise UsageError("give either a curves file or --example, not both")
    if args.example:
        return load_curves(example_path())
    if not args.curves:
        raise UsageError("a curves file is required (or --example)")
    return load_curves(args.curves)


def positive_fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1]; got {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1] (the fraction kept); got {text!r}")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0; got {text!r}")
    return value


def non_negative_number(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0; got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0; got {text!r}")
    return value


@contextlib.contextmanager
def stdout_to_stderr():
    """Send C-level stdout to stderr for the duration (solver banners, e.g. HiGHS's)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 at all
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def check_output_path(path, suffixes):
    """Reject an output path with an unknown suffix or a missing directory before any work."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise UsageError(f"-o/--output must end in {' or '.join(suffixes)}; got {path!r}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o/--output: directory {str(parent)!r} does not exist")
    if p.is_dir():
        raise UsageError(f"-o/--output: {path!r} is a directory")
    return p


def write_json(path, payload):
    text = json.dumps(payload) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def format_table(budgets, title):
    """Per-layer table: one row per layer (first head axis), one column per head."""
    b = np.asarray(budgets)
    rows = b.reshape(b.shape[0], -1) if b.ndim >= 1 else b.reshape(1, 1)
    if b.ndim == 1:
        rows = b.reshape(1, -1)
    width = max(5, len(str(int(rows.max(initial=0)))) + 1)
    heads = rows.shape[1]
    out = io.StringIO()
    out.write(title + "\n")
    out.write("layer " + "".join(f"{f'h{j}':>{width}}" for j in range(heads)) + f"{'total':>{width + 3}}\n")
    for i, row in enumerate(rows):
        out.write(f"{i:>5} " + "".join(f"{int(v):>{width}}" for v in row) + f"{int(row.sum()):>{width + 3}}\n")
    return out.getvalue()


# -- solve ---------------------------------------------------------------------------------
def _cmd_solve(args):
    curves = load_source(args)
    output = check_output_path(args.output, (".json", ".npz")) if args.output else None
    if args.budget is not None:
        total = tokens_from_fraction(args.budget, curves.capacity)
    elif args.tokens is not None:
        total = args.tokens
    else:
        total = int(math.floor(args.avg_tokens * curves.n_heads + 1e-9))
    with stdout_to_stderr():
        result = allocate(
            curves, total, method=args.method, min_budget=args.min_budget, max_budget=args.max_budget
        )
    payload = result.to_dict()
    payload["capacity"] = curves.capacity
    payload["kept_fraction"] = result.used / curves.capacity if curves.capacity else 0.0
    if output is not None and output.suffix.lower() == ".npz":
        scalars = {k: np.array(v) for k, v in payload.items() if k not in ("budgets", "head_shape")}
        write_atomic(output, lambda f: np.savez(f, budgets=result.budgets, **scalars))
    elif output is not None:
        write_json(output, payload)
    elif args.format == "table":
        title = (
            f"method={result.method} used={result.used}/{result.total_budget} tokens "
            f"({payload['kept_fraction']:.1%} of {curves.capacity}) utility={result.utility:.6g} "
            f"upper_bound={result.upper_bound:.6g} gap={result.gap:.3g}"
        )
        sys.stdout.write(format_table(result.budgets, title))
    else:
        sys.stdout.write(json.dumps(payload) + "\n")
    return 0


# -- inspect -------------------------------------------------------------------------------
def _cmd_inspect(args):
    curves = load_source(args)
    gaps = hull_gap(curves)
    grid = curves.grid
    worst = np.unravel_index(int(np.argmax(gaps)), gaps.shape)
    info = {
        "head_shape": list(curves.head_shape),
        "heads": curves.n_heads,
        "points_per_head": curves.n_points,
        "grid": "shared" if curves.shared_grid else "per-head",
        "grid_min": int(grid.min()),
        "grid_max": int(grid.max()),
        "capacity": curves.capacity,
        "concave": bool(np.all(gaps <= 0)),
        "concave_heads": int((gaps <= 0).sum()),
        "largest_hull_gap": float(gaps.max()),
        "largest_hull_gap_head": [int(i) for i in worst],
        "utility_min": float(curves.utility.min()),
        "utility_max": float(curves.utility.max()),
        "meta": curves.meta,
    }
    if args.format == "json":
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            sys.stdout.write(f"{key:<{width}}  {value}\n")
    return 0


# -- parser and entry point ----------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        prog="budgetopt",
        description="Per-head KV-cache budget allocation (LU-KV hull greedy with a certificate, exact baselines).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("solve", help="allocate a total budget across heads")
    add_source_arguments(p)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--budget",
        type=positive_fraction,
        help="fraction of the full cache KEPT, in (0, 1] (kvpress compression_ratio = 1 - budget)",
    )
    budget.add_argument("--tokens", type=non_negative_int, help="total tokens kept over all heads")
    budget.add_argument("--avg-tokens", type=non_negative_number, help="mean tokens kept per head")
    p.add_argument("--method", default="greedy", choices=list(METHODS), help="solver (default: greedy)")
    p.add_argument("--min-budget", type=non_negative_int, help="tokens every head keeps at least")
    p.add_argument("--max-budget", type=non_negative_int, help="tokens any head keeps at most")
    p.add_argument("-o", "--output", help="write the result to a .json or .npz file instead of stdout")
    p.add_argument("--format", choices=["json", "table"], default="json", help="stdout format")
    p.set_defaults(func=_cmd_solve)

    p = sub.add_parser("inspect", help="describe a curves file")
    add_source_arguments(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv=None):
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 1 internal error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        parser.exit(2, f"budgetopt {args.command}: error: {exc}\n")
    except BudgetoptError as exc:
        sys.stderr.write(f"budgetopt {args.command}: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"budgetopt {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("budgetopt: interrupted\n")
        return 130
    except Exception as exc:  # a bug: say so plainly, without a traceback
        sys.stderr.write(
            f"budgetopt {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(please report this with the command that caused it)\n"
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
