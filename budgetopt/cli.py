"""The ``budgetopt`` command line.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in
:func:`build_parser`. :func:`main` turns every budgetopt error (and file-system errors) into
exit code 2 with a one-line message on stderr; it never shows a traceback and never leaves a
partial output file (files are written atomically).
"""

from __future__ import annotations

import sys
import warnings

# Standard library and budgetopt's own light modules only: numpy and the solvers load inside
# the commands, once main() listens for Ctrl-C. The console script imports this module before
# main() runs, so a Ctrl-C during these imports ends the program here, the way main() would.
try:
    import argparse
    import io
    import math
    import os
    from importlib import resources
    from pathlib import Path

    from ._cli_common import (
        Parser,
        UsageError,
        check_output_path,
        dumps,
        fraction_below_one,
        non_negative_int,
        non_negative_number,
        positive_fraction,
        positive_int,
        positive_seconds,
        run_guarded,
        workers_count,
        write_json,
    )
    from ._limits import MAX_TOKENS, MAX_TOKENS_TEXT
    from ._progress import Progress
    from .cli_convert import add_convert_command
    from .cli_evaluate import add_evaluate_command
    from .cli_profile import (add_profile_command, check_pair_source, cmd_curves_from_runs, cmd_lukv_table_from_runs,
                              grid_unit, grid_words)
    from .errors import CurvesFileError, InvalidInputError
except KeyboardInterrupt:  # pragma: no cover - timing-dependent, exercised by a subprocess test
    sys.stderr.write("budgetopt: interrupted\n")
    raise SystemExit(130) from None

__all__ = ["main", "console", "build_parser"]

EXAMPLE = "example_curves.npz"
#: Most budgets one ``sweep --budgets start:stop:step`` may ask for (checked before building them).
MAX_SWEEP_BUDGETS = 10_000


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


def input_paths(args):
    """The files a command reads (an output must not be one of them)."""
    paths = []
    if getattr(args, "curves", None):
        paths.append(args.curves)
    if getattr(args, "example", False):
        paths.append(example_path())
    paths.extend(getattr(args, "oracle", None) or [])
    paths.extend(getattr(args, "scores", None) or [])
    return paths


def load_source(args):
    from .curves import load_curves

    if args.example and args.curves:
        raise UsageError("give either a curves file or --example, not both")
    if args.example:
        return load_curves(example_path())
    if not args.curves:
        raise UsageError("a curves file is required (or --example)")
    return load_curves(args.curves)


def format_table(budgets, title):
    """Per-layer table: one row per layer (first head axis), one column per head."""
    import numpy as np

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
    import numpy as np

    from ._io import c_stdout_to_stderr, write_atomic
    from .api import allocate
    from .rounding import tokens_from_fraction

    curves = load_source(args)
    inputs = input_paths(args)
    output = check_output_path(args.output, (".json", ".npz"), inputs=inputs) if args.output is not None else None
    if args.budget is not None:
        total = tokens_from_fraction(args.budget, curves.capacity)
    elif args.tokens is not None:
        total = args.tokens
    else:
        exact = args.avg_tokens * curves.n_heads
        if exact >= MAX_TOKENS:
            raise UsageError(
                f"--avg-tokens {args.avg_tokens:g} is too large: times {curves.n_heads} heads it asks "
                f"for more than {MAX_TOKENS_TEXT} tokens"
            )
        total = int(math.floor(exact + 1e-9))
    with c_stdout_to_stderr():
        result = allocate(
            curves, total, method=args.method, min_budget=args.min_budget, max_budget=args.max_budget,
            time_limit=args.time_limit,
        )
    payload = result.to_dict()
    payload["capacity"] = curves.capacity
    payload["kept_fraction"] = result.used / curves.capacity if curves.capacity else 0.0
    if output is not None and output.suffix.lower() == ".npz":
        scalars = {k: np.array(v) for k, v in payload.items() if k not in ("budgets", "head_shape")}
        write_atomic(output, lambda f: np.savez(f, budgets=result.budgets, **scalars), inputs=inputs)
    elif output is not None:
        write_json(output, payload, inputs)
    elif args.format == "table":
        title = (
            f"method={result.method} used={result.used}/{result.total_budget} {grid_unit(curves)} "
            f"({payload['kept_fraction']:.1%} of {curves.capacity}) utility={result.utility:.6g} "
            f"upper_bound={result.upper_bound:.6g} gap={result.gap:.3g} status={result.status}"
        )
        sys.stdout.write(format_table(result.budgets, title))
    else:
        sys.stdout.write(dumps(payload) + "\n")
    return 0


# -- inspect -------------------------------------------------------------------------------
def _cmd_inspect(args):
    import numpy as np

    from .curves import hull_gap

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
        sys.stdout.write(dumps(info) + "\n")
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            sys.stdout.write(f"{key:<{width}}  {value}\n")
    return 0


# -- profiling: curves, sweep, lukv-table ----------------------------------------------------
def load_npy(path, what):
    """A ``.npy`` array from ``path`` (memory-mapped, never unpickled), errors naming the file."""
    from ._io import check_input_file, read_npy

    path = check_input_file(path, ".npy file", what)
    try:
        return read_npy(path, mmap=True)
    except CurvesFileError as exc:
        raise CurvesFileError(f"{exc} ({what})") from None


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


def check_pairs(args, oracles, scores, *, three_axes=False, one_length=True):
    """Check every (oracle, scores) pair with the library's rules, naming the files, and
    that all oracle files share one shape (of three axes if ``three_axes``; only the head
    shape unless ``one_length``), before any work."""
    from .profile import check_profile_arrays

    for i, oracle in enumerate(oracles):
        score = scores[i] if isinstance(scores, list) else scores
        scores_file = args.scores[i if len(args.scores) > 1 else 0]
        check_profile_arrays(oracle, score, args.sink, args.window,
                             oracle_name=f"--oracle {args.oracle[i]}", scores_name=f"--scores {scores_file}",
                             quoted=False)
        if three_axes and oracle.ndim != 3:
            raise InvalidInputError(
                f"--oracle {args.oracle[i]} must have shape (L, H, T) (layers, KV heads, tokens); "
                f"got {tuple(oracle.shape)}"
            )
        if oracle.shape[slice(None) if one_length else slice(-1)] != oracles[0].shape[
                slice(None) if one_length else slice(-1)]:
            raise InvalidInputError(
                f"--oracle {args.oracle[i]} has shape {tuple(oracle.shape)}; the first oracle file "
                f"has {tuple(oracles[0].shape)} (all pairs must share one shape)"
            )


def _cmd_curves(args):
    from .curves import Curves, save_curves
    from .profile import curves_from_pairs

    if check_pair_source(args):
        return cmd_curves_from_runs(args)

    inputs = input_paths(args)
    output = check_output_path(args.output, (".npz",), inputs=inputs)
    oracles, scores = load_pairs(args)
    check_pairs(args, oracles, scores, one_length=False)
    curves = curves_from_pairs(oracles, scores, sink=args.sink, window=args.window, aggregate=args.aggregate,
                               resolution=args.resolution)
    meta = dict(curves.meta, oracle_files=[os.path.basename(p) for p in args.oracle],
                scores_files=[os.path.basename(p) for p in args.scores])
    save_curves(output, Curves(curves.utility, curves.grid, meta=meta))
    sys.stderr.write(f"wrote {output}: {len(oracles)} pair(s), head shape {curves.head_shape}, {grid_words(curves)}\n")
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
            span = (stop - start) / step
            if not span < MAX_SWEEP_BUDGETS:  # also catches an overflow to inf
                raise argparse.ArgumentTypeError(
                    f"{text!r} asks for more than {MAX_SWEEP_BUDGETS} budgets (the limit per sweep); "
                    "use a larger step"
                )
            count = int(math.floor(span + 1e-9)) + 1
            values = [round(start + i * step, 12) for i in range(count)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
            if len(values) > MAX_SWEEP_BUDGETS:
                raise argparse.ArgumentTypeError(
                    f"more than {MAX_SWEEP_BUDGETS} budgets (the limit per sweep); got {len(values)}"
                )
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
    from ._io import write_atomic
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
    from ._io import c_stdout_to_stderr
    from .api import sweep
    from .rounding import tokens_from_fraction

    curves = load_source(args)
    plot = None
    if args.plot is not None:
        plot = check_output_path(args.plot, (".png", ".pdf", ".svg"), option="--plot", inputs=input_paths(args))
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
    if plot is not None:  # first, so a plot that cannot be written stops the command before any output
        name = args.curves or "example"
        plot_frontier(plot, args.budgets, result, f"Utility frontier: {os.path.basename(name)}")
        sys.stderr.write(f"wrote {plot}\n")
    if args.format == "json":
        sys.stdout.write(dumps({"capacity": curves.capacity, "rows": rows}) + "\n")
    else:
        out = io.StringIO()
        out.write(f"capacity={curves.capacity} {grid_unit(curves)}, heads={curves.n_heads}\n")
        out.write(f"{'budget':>8} {'tokens':>10} {'used':>10} {'utility':>12} {'bound':>12} {'gap':>10} {'threshold':>11}\n")
        for r in rows:
            out.write(
                f"{r['budget']:>8.4g} {r['total_tokens']:>10} {r['used']:>10} {r['utility']:>12.6g} "
                f"{r['upper_bound']:>12.6g} {r['gap']:>10.3g} {r['threshold']:>11.4g}\n"
            )
        sys.stdout.write(out.getvalue())
    return 0


def _cmd_lukv_table(args):
    from .lukv import lukv_table, save_lukv_table

    if check_pair_source(args):
        return cmd_lukv_table_from_runs(args)

    output = check_output_path(args.output, (".npy",), inputs=input_paths(args))
    oracles, scores = load_pairs(args)
    check_pairs(args, oracles, scores, three_axes=True)
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
    finally:
        progress.close()
    save_lukv_table(output, table)
    sys.stderr.write(
        f"wrote {output}: table {table.shape} (rows: compression 1%..99%) from {len(oracles)} pair(s)\n"
    )
    return 0


def add_pair_arguments(parser):
    parser.add_argument("runs", nargs="*", metavar="RUN",
                        help="profile run directories (budgetopt profile), shards merged; or use --oracle/--scores")
    parser.add_argument("--oracle", nargs="+", metavar="FILE",
                        help="oracle .npy files (L, H, T), one per calibration pair")
    parser.add_argument("--scores", nargs="+", metavar="FILE",
                        help="scorer .npy file (L, H, T) shared by all pairs, or one per --oracle file")
    parser.add_argument("--sink", type=non_negative_int, help="first tokens always kept (default with RUN: the run's)")
    parser.add_argument("--window", type=non_negative_int, help="last tokens always kept (default with RUN: the run's)")


def add_profile_parsers(sub):
    """Register ``curves``, ``sweep`` and ``lukv-table`` on the subparsers ``sub``."""
    p = sub.add_parser("curves", help="utility curves from oracle and scorer arrays")
    add_pair_arguments(p)
    p.add_argument("--aggregate", choices=["mean_curve", "median_curve"], default="mean_curve",
                   help="how several pairs combine: mean (default; expected retained mass) or median per point")
    p.add_argument("--resolution", type=positive_int,
                   help="points of a relative grid (fraction of each context kept, k/R); default: token grid "
                        "when all contexts have one length, else 1000 (per mille)")
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


# -- plot ----------------------------------------------------------------------------------
def parse_head(text):
    """A head index ``L,H`` (comma-separated integers, one per head axis)."""
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a head is comma-separated integers such as 0,3; got {text!r}") from None
    if any(v < 0 for v in parts):
        raise argparse.ArgumentTypeError(f"head indices must be >= 0; got {text!r}")
    return parts


def whole_percent(text):
    """A compression ratio that names an LU-KV table row: 0.01, 0.02, ..., 0.99."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.01 - 1e-9 <= value <= 0.99 + 1e-9
            and abs(value * 100 - round(value * 100)) < 1e-6):
        raise argparse.ArgumentTypeError(
            f"must be a whole-percent compression ratio in 0.01..0.99 (a table row); got {text!r}")
    return value


def _cmd_plot(args):
    from . import plot
    from ._io import c_stdout_to_stderr
    from .api import allocate
    from .rounding import tokens_from_fraction

    output = check_output_path(args.output, plot.FIGURE_SUFFIXES, inputs=[*input_paths(args), args.table])
    if bool(args.heads) == bool(args.heatmap):
        raise UsageError("give either --heads L,H [L,H ...] (curves and hulls) or --heatmap (the allocation)")
    if args.heads:
        args.heads = list(dict.fromkeys(args.heads))  # a head named twice is drawn once
        if len(args.heads) > plot.MAX_FIGURE_HEADS:
            raise UsageError(f"--heads: at most {plot.MAX_FIGURE_HEADS} distinct heads in one figure; "
                             f"got {len(args.heads)}")
    if args.table:
        if args.curves or args.example:
            raise UsageError("give either a curves file (or --example) or --table, not both")
        if args.heads:
            raise UsageError("--table draws a heatmap of one row; use --heatmap, not --heads")
        if args.compression is None:
            raise UsageError("--table needs --compression (the table row, e.g. 0.8)")
        if args.budget is not None or args.min_budget is not None or args.max_budget is not None:
            raise UsageError("--budget, --min-budget and --max-budget apply to curves, not to --table")
        from .lukv import load_lukv_table

        table = load_lukv_table(args.table)
        row = int(round(args.compression * 100)) - 1
        fig = plot.allocation_heatmap(
            1.0 - table[row], label="fraction of T kept",
            title=f"{os.path.basename(args.table)}: compression {args.compression:g} "
                  f"(keeps {1 - args.compression:.0%} on average)")
    else:
        if args.compression is not None:
            raise UsageError("--compression selects a --table row; with curves use --budget")
        curves = load_source(args)
        total = tokens_from_fraction(args.budget, curves.capacity) if args.budget is not None else None
        name = os.path.basename(args.curves) if args.curves else "example"
        if args.heads:
            for head in args.heads:
                if len(head) != len(curves.head_shape) or any(v >= n for v, n in zip(head, curves.head_shape)):
                    raise UsageError(
                        f"--heads {','.join(map(str, head))}: not a head of {name} (head shape "
                        f"{'x'.join(map(str, curves.head_shape))})")
            with c_stdout_to_stderr():
                fig = plot.curves_figure(curves, args.heads, total_budget=total,
                                         min_budget=args.min_budget, max_budget=args.max_budget)
        else:
            if total is None:
                raise UsageError("--heatmap of curves needs --budget (the fraction kept)")
            with c_stdout_to_stderr():
                result = allocate(curves, total, min_budget=args.min_budget, max_budget=args.max_budget)
            unit = grid_unit(curves)
            tokens = unit == "tokens"
            fig = plot.allocation_heatmap(
                result.budgets, title=f"{name}: budget {args.budget:g} ({result.used} of {curves.capacity}"
                f"{' tokens' if tokens else ''})", label="tokens kept" if tokens else f"kept ({unit})")
    plot.save_figure(fig, output)
    sys.stderr.write(f"wrote {output}\n")
    return 0


def add_plot_parser(sub):
    """Register ``plot`` on the subparsers ``sub``."""
    p = sub.add_parser("plot", help="draw curves and hulls, or an allocation heatmap (needs matplotlib)")
    add_source_arguments(p)
    p.add_argument("--heads", nargs="+", type=parse_head, metavar="L,H",
                   help="draw these heads' curves, upper hulls and (with --budget) budgets")
    p.add_argument("--heatmap", action="store_true", help="draw the allocation as a layers x KV-heads heatmap")
    p.add_argument("--budget", type=positive_fraction,
                   help="fraction of the full cache KEPT, in (0, 1] (kvpress compression_ratio = 1 - budget)")
    p.add_argument("--min-budget", type=non_negative_int, help="tokens every head keeps at least")
    p.add_argument("--max-budget", type=non_negative_int, help="tokens any head keeps at most")
    p.add_argument("--table", metavar="TABLE.npy", help="an LU-KV prune-ratio table [99, L, H] instead of curves")
    p.add_argument("--compression", type=whole_percent,
                   help="with --table: the row to draw (kvpress compression_ratio, 0.01..0.99)")
    p.add_argument("-o", "--output", required=True, help="figure file to write (.png, .pdf or .svg)")
    p.set_defaults(func=_cmd_plot)


# -- parser and entry point ----------------------------------------------------------------
def build_parser():
    """The ``budgetopt`` argument parser (imports the solvers, for ``--method``'s choices)."""
    from .api import METHODS

    from . import __version__

    parser = Parser(
        prog="budgetopt",
        description="Per-head KV-cache budget allocation (LU-KV hull greedy with a certificate, exact baselines).",
    )
    parser.add_argument("--version", action="version", version=f"budgetopt {__version__}")
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
    add_plot_parser(sub)
    add_profile_command(sub)
    add_convert_command(sub)
    add_evaluate_command(sub)
    return parser


def main(argv=None):
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 1 internal error, 130 after
    Ctrl-C, 128 + N after signal N such as SIGTERM)."""
    return run_guarded(_build_parser_announcing, argv)


def console():
    """The ``budgetopt`` console script and ``python -m budgetopt``: :func:`main` for a process
    that exits with its code right after (a late Ctrl-C no longer kills the finished run)."""
    warnings.formatwarning = _one_line_warning
    return run_guarded(_build_parser_announcing, None, exiting=True)


def _one_line_warning(message, category, filename, lineno, line=None):
    """Warnings in the console script: one line, without the source line that raised them."""
    return f"budgetopt: warning: {message}\n"


COMPILING_NOTICE = (
    "budgetopt: compiling the solvers for this machine (once per installation: later runs "
    "load them from the cache)\n"
)


def _build_parser_announcing():
    """:func:`build_parser`, and on a terminal, one stderr line when kernels start compiling
    (the first run of an installation can spend seconds there before printing anything)."""
    parser = build_parser()  # imports the solvers, hence the compiled kernels' module
    if sys.stderr.isatty():
        from ._kernels_jit import announce_compiling

        announce_compiling(lambda: (sys.stderr.write(COMPILING_NOTICE), sys.stderr.flush()))
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
