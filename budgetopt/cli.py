"""The ``budgetopt`` command line.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in
:func:`build_parser`. :func:`main` turns every budgetopt error (and file-system errors) into
exit code 2 with a one-line message on stderr; it never shows a traceback and never leaves a
partial output file (files are written atomically).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from .api import METHODS, allocate
from .exact import c_stdout_to_stderr
from .curves import check_input_file, load_curves, write_atomic
from .errors import BudgetoptError, CurvesFileError, InvalidInputError, InvalidTypeError
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


def _number(convert, accepts, rule):
    """An argparse ``type``: ``convert(text)`` that must satisfy ``accepts``; errors say ``rule``."""

    def parse(text):
        try:
            value = convert(text)
            ok = math.isfinite(value) and accepts(value)
        except (ValueError, OverflowError):  # not a number, or an int too large for a float
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {rule}; got {text!r}")
        return value

    return parse


positive_fraction = _number(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1] (the fraction kept)")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
non_negative_number = _number(float, lambda v: v >= 0, "a number >= 0")
positive_seconds = _number(float, lambda v: v > 0, "a number of seconds > 0")


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
    with c_stdout_to_stderr():
        result = allocate(
            curves, total, method=args.method, min_budget=args.min_budget, max_budget=args.max_budget,
            time_limit=args.time_limit,
        )
    payload = result.to_dict()
    payload["capacity"] = curves.capacity
    payload["kept_fraction"] = result.used / curves.capacity if curves.capacity else 0.0
    if "status" in result.stats:
        payload["status"] = result.stats["status"]
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
            + (f" status={payload['status']}" if "status" in payload else "")
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


# -- profiling: curves, sweep, lukv-table ----------------------------------------------------
def load_npy(path, what):
    """A ``.npy`` array from ``path`` (memory-mapped, never unpickled), errors naming the file."""
    path = check_input_file(path, ".npy file", what)
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise CurvesFileError(f"{path}: not a readable .npy array ({what}; {exc})") from exc
    if not isinstance(data, np.ndarray):
        if hasattr(data, "close"):
            data.close()
        raise CurvesFileError(f"{path}: is an .npz archive; {what} must be a single .npy array")
    return data


def load_pairs(args):
    """``(oracles, scores, labels)`` from ``--oracle`` and ``--scores`` files.

    ``--scores`` is one file shared by every oracle file, or one per oracle file (in order).
    Every file is opened (memory-mapped) before any work, so a missing file fails fast.
    """
    if len(args.scores) not in (1, len(args.oracle)):
        raise UsageError(
            f"--scores takes one file shared by all --oracle files or one per oracle file "
            f"({len(args.oracle)}); got {len(args.scores)}"
        )
    oracles = [load_npy(path, "--oracle") for path in args.oracle]
    shared = {}
    for path in args.scores:
        if path not in shared:
            shared[path] = load_npy(path, "--scores")
    if len(args.scores) == 1:
        scores = shared[args.scores[0]]
    else:
        scores = [shared[path] for path in args.scores]
    return oracles, scores


def name_files(exc, args):
    """Re-raise ``exc`` with argument names like ```oracles[3]``` replaced by the file names."""
    import re

    message = str(exc)
    message = re.sub(r"`oracles?\[(\d+)\]`", lambda m: f"--oracle {args.oracle[int(m.group(1))]}", message)
    message = re.sub(r"`scores\[(\d+)\]`", lambda m: f"--scores {args.scores[int(m.group(1))]}", message)
    message = message.replace("`oracle`", f"--oracle {args.oracle[0]}" if len(args.oracle) == 1 else "--oracle")
    message = message.replace("`scores`", f"--scores {args.scores[0]}" if len(args.scores) == 1 else "--scores")
    return type(exc)(message)


class Progress:
    """Progress over calibration pairs on stderr: tqdm if installed, else a counter; off when
    stderr is not a terminal or ``--no-progress`` is given."""

    def __init__(self, total, enabled, desc):
        self.bar = None
        self.enabled = enabled and sys.stderr.isatty()
        self.desc = desc
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit="pair", file=sys.stderr, leave=False)

    def __call__(self, done, total):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        else:
            sys.stderr.write(f"\r{self.desc}: {done}/{total} pairs")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


def _cmd_curves(args):
    from .curves import Curves, save_curves
    from .profile import curves_from_scores

    output = check_output_path(args.output, (".npz",))
    oracles, scores = load_pairs(args)
    per_pair = scores if isinstance(scores, list) else [scores] * len(oracles)
    utilities = []
    grid = None
    for i, (oracle, score) in enumerate(zip(oracles, per_pair)):
        try:
            curves = curves_from_scores(oracle, score, sink=args.sink, window=args.window)
        except (InvalidInputError, InvalidTypeError) as exc:
            scores_file = args.scores[i if len(args.scores) > 1 else 0]
            message = str(exc).replace("`oracle`", f"--oracle {args.oracle[i]}")
            raise type(exc)(message.replace("`scores`", f"--scores {scores_file}")) from None
        if utilities and curves.utility.shape != utilities[0].shape:
            raise InvalidInputError(
                f"--oracle {args.oracle[i]} has shape {tuple(oracle.shape)}; the first oracle file "
                f"has {tuple(oracles[0].shape)} (all pairs must share one shape)"
            )
        utilities.append(curves.utility)
        grid = curves.grid
    stack = np.stack(utilities)
    utility = stack.mean(axis=0) if args.aggregate == "mean_curve" else np.median(stack, axis=0)
    meta = {
        "sink": args.sink,
        "window": args.window,
        "length": int(oracles[0].shape[-1]),
        "pairs": len(oracles),
        "aggregate": args.aggregate,
        "oracle_files": [os.path.basename(p) for p in args.oracle],
        "scores_files": [os.path.basename(p) for p in args.scores],
    }
    save_curves(output, Curves(utility, grid, meta=meta))
    sys.stderr.write(
        f"wrote {output}: {len(oracles)} pair(s), head shape {utility.shape[:-1]}, "
        f"grid {int(grid[0])}..{int(grid[-1])} tokens\n"
    )
    return 0


def parse_budgets(text):
    """Kept fractions from ``start:stop:step`` (stop included) or ``a,b,c``; each in (0, 1]."""
    try:
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not all(math.isfinite(x) for x in parts) or step <= 0 or stop < start:
                raise argparse.ArgumentTypeError(
                    f"start:stop:step needs finite numbers, step > 0 and stop >= start; got {text!r}"
                )
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 12) for i in range(count)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected start:stop:step (e.g. 0.05:0.95:0.05) or a comma list (e.g. 0.1,0.2); got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"no budgets in {text!r}")
    for value in values:
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"each budget is the fraction of the cache KEPT, in (0, 1]; got {value!r} in {text!r}"
            )
    return values


def plot_frontier(path, budgets, result, title):
    """Utility and its upper bound against the kept fraction, written atomically."""
    from .errors import MissingDependencyError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError(
            "--plot needs matplotlib (pip install 'budgetopt[plot]')"
        ) from exc
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(budgets, result.utility, marker="o", ms=3, label="greedy utility")
        ax.plot(budgets, result.upper_bound, ls="--", label="upper bound (LP)")
        ax.set_xlabel("budget (fraction of the cache kept)")
        ax.set_ylabel("utility")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fmt = Path(path).suffix.lower().lstrip(".")
        write_atomic(path, lambda f: fig.savefig(f, format=fmt))
    finally:
        plt.close(fig)


def _cmd_sweep(args):
    from .api import sweep

    curves = load_source(args)
    plot = check_output_path_named(args.plot, (".png", ".pdf", ".svg"), "--plot") if args.plot else None
    totals = [tokens_from_fraction(b, curves.capacity) for b in args.budgets]
    with c_stdout_to_stderr():
        result = sweep(curves, totals, min_budget=args.min_budget, max_budget=args.max_budget)
    rows = [
        {
            "budget": b,
            "total_tokens": int(result.totals[i]),
            "used": int(result.used[i]),
            "utility": float(result.utility[i]),
            "upper_bound": float(result.upper_bound[i]),
            "gap": float(result.gap[i]),
            "threshold": float(result.threshold[i]),
        }
        for i, b in enumerate(args.budgets)
    ]
    if args.format == "json":
        sys.stdout.write(json.dumps({"capacity": curves.capacity, "rows": rows}) + "\n")
    else:
        out = io.StringIO()
        out.write(f"capacity={curves.capacity} tokens, heads={curves.n_heads}\n")
        out.write(f"{'budget':>8} {'tokens':>10} {'used':>10} {'utility':>12} {'bound':>12} {'gap':>10} {'threshold':>11}\n")
        for r in rows:
            out.write(
                f"{r['budget']:>8.4g} {r['total_tokens']:>10} {r['used']:>10} {r['utility']:>12.6g} "
                f"{r['upper_bound']:>12.6g} {r['gap']:>10.3g} {r['threshold']:>11.4g}\n"
            )
        sys.stdout.write(out.getvalue())
    if plot is not None:
        name = args.curves or "example"
        plot_frontier(plot, args.budgets, result, f"Utility frontier: {os.path.basename(name)}")
        sys.stderr.write(f"wrote {plot}\n")
    return 0


def check_output_path_named(path, suffixes, option):
    """:func:`check_output_path` for an option other than -o/--output."""
    try:
        return check_output_path(path, suffixes)
    except UsageError as exc:
        raise UsageError(str(exc).replace("-o/--output", option)) from None


def _cmd_lukv_table(args):
    from .lukv import lukv_table, save_lukv_table

    output = check_output_path(args.output, (".npy",))
    oracles, scores = load_pairs(args)
    progress = Progress(len(oracles), not args.no_progress, "lukv-table")
    try:
        table = lukv_table(
            oracles,
            scores,
            sink=args.sink,
            window=args.window,
            min_keep_fraction=args.min_keep_fraction,
            layerwise=not args.layer_local,
            aggregate=args.aggregate,
            progress=progress,
            workers=args.workers,
        )
    except (InvalidInputError, InvalidTypeError) as exc:
        raise name_files(exc, args) from None
    finally:
        progress.close()
    save_lukv_table(output, table)
    sys.stderr.write(
        f"wrote {output}: table {table.shape} (rows: compression 1%..99%) from {len(oracles)} pair(s)\n"
    )
    return 0


def fraction_below_one(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); got {text!r}")
    return value


def workers_count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number or -1 (all cores); got {text!r}") from None
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number or -1 (all cores); got {text!r}")
    return value


def add_pair_arguments(parser):
    parser.add_argument("--oracle", nargs="+", required=True, metavar="FILE",
                        help="oracle .npy files (L, H, T), one per calibration pair")
    parser.add_argument("--scores", nargs="+", required=True, metavar="FILE",
                        help="scorer .npy file (L, H, T) shared by all pairs, or one per --oracle file")
    parser.add_argument("--sink", type=non_negative_int, required=True, help="first tokens always kept")
    parser.add_argument("--window", type=non_negative_int, required=True, help="last tokens always kept")


def add_profile_parsers(sub):
    """Register ``curves``, ``sweep`` and ``lukv-table`` on the subparsers ``sub``."""
    p = sub.add_parser("curves", help="utility curves from oracle and scorer arrays")
    add_pair_arguments(p)
    p.add_argument("--aggregate", choices=["mean_curve", "median_curve"], default="mean_curve",
                   help="how several pairs combine: mean (default; expected retained mass) or median per point")
    p.add_argument("-o", "--output", required=True, help="curves file to write (.npz)")
    p.set_defaults(func=_cmd_curves)

    p = sub.add_parser("sweep", help="utility, bound and gap for many budgets")
    add_source_arguments(p)
    p.add_argument("--budgets", type=parse_budgets, default=parse_budgets("0.05:0.95:0.05"),
                   help="fractions KEPT: start:stop:step (stop included) or a comma list "
                        "(default 0.05:0.95:0.05; kvpress compression_ratio = 1 - budget)")
    p.add_argument("--min-budget", type=non_negative_int, help="tokens every head keeps at least")
    p.add_argument("--max-budget", type=non_negative_int, help="tokens any head keeps at most")
    p.add_argument("--plot", help="draw the utility-vs-budget frontier to a .png, .pdf or .svg file")
    p.add_argument("--format", choices=["table", "json"], default="table", help="stdout format")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("lukv-table", help="kvpress LUKVPress prune-ratio table [99, L, H] (.npy)")
    add_pair_arguments(p)
    p.add_argument("--min-keep-fraction", type=fraction_below_one, default=0.01,
                   help="per-head floor as a fraction of T (default 0.01, the published threshold 99)")
    p.add_argument("--layer-local", action="store_true",
                   help="each layer keeps exactly its share (default: one budget across all layers)")
    p.add_argument("--aggregate", choices=["mean_ratio", "mean_curve"], default="mean_ratio",
                   help="average per-pair prune ratios (default, published) or solve the mean curve")
    p.add_argument("--workers", type=workers_count, default=-1,
                   help="pairs solved at once on threads (default -1: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("-o", "--output", required=True, help="table file to write (.npy)")
    p.set_defaults(func=_cmd_lukv_table)


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
    p.add_argument("--time-limit", type=positive_seconds, metavar="S",
                   help="--method exact or milp: stop after S seconds with the best answer and a bound")
    p.add_argument("-o", "--output", help="write the result to a .json or .npz file instead of stdout")
    p.add_argument("--format", choices=["json", "table"], default="json", help="stdout format")
    p.set_defaults(func=_cmd_solve)

    p = sub.add_parser("inspect", help="describe a curves file")
    add_source_arguments(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_cmd_inspect)

    add_profile_parsers(sub)
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
