"""Benchmark: the per-call cost of the front door (``build_problem``, ``allocate``) on small problems.

On small problems the work around the solver (checking and converting the arguments,
building the :class:`~budgetopt.problem.Problem`, packing the result) is a visible share of
an ``allocate`` call. For each case, this checkout and, with ``--baseline REV``, revision
``REV``'s ``budgetopt`` (exported with ``git archive`` into a temporary folder and imported
as another package) are timed in interleaved rounds, each round one batch of calls per side
(so both see the same machine load; which side goes first alternates); the figure is the
median over rounds of the mean call in a batch:

* ``build``: ``build_problem(curves)`` on one :class:`~budgetopt.Curves`, called again and
  again (what ``allocate`` pays before its solver);
* ``fresh``: ``build_problem(Curves(utility, grid))``, a new ``Curves`` each call (what a
  caller who passes new arrays every time pays before the solver);
* ``greedy``: ``allocate(curves, total)``;
* ``exact``: ``allocate(curves, total, method="exact")``.

Cases: the seven small Pisinger instances of ``bench_exact_small.py`` (per-head integer grids,
integral float64 utilities) and one per-token problem, 32 x 8 heads x 4,097 points of concave
curves at 20% kept (``instances_exact.concave``). Each side's answers are checked to agree
(the problem's arrays and totals; every field of both allocations, ``stats`` included).
Numba compilation is excluded (warm-up calls first).

Usage::

    python benchmarks/bench_front_door.py --baseline main
    python benchmarks/bench_front_door.py --rounds 9 --batch-ms 2
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import baseline_package, start_run, timing_parser, write_report  # noqa: E402

import budgetopt  # noqa: E402
from instances_exact import SMALL_PISINGER, concave, pisinger  # noqa: E402

OPS = ("build", "fresh", "greedy", "exact")


def cases(quick=False):
    """``(name, curves, total)`` of every case (``quick``: two small ones)."""
    out = []
    for kind, n, m, r, seed in SMALL_PISINGER[:1] if quick else SMALL_PISINGER:
        curves, total = pisinger(kind, n, m, seed, data_range=r)
        out.append((f"{kind} {n}x{m} R={r} seed {seed}", curves, total))
    heads, points = ((4, 2), 257) if quick else ((32, 8), 4097)
    flat, total = concave(int(np.prod(heads)), points, 0)
    out.append((f"per-token {'x'.join(map(str, heads))}x{points}",
                budgetopt.Curves(flat.utility.reshape(*heads, points)), total))
    return out


def calls_of(pkg, curves, total):
    """The four timed calls of package ``pkg`` (this checkout or the baseline) on one case."""
    own = pkg.Curves(curves.utility, curves.grid)  # each side validates its own Curves
    u, g = np.array(curves.utility), np.array(curves.grid)  # writable arrays, as a caller has
    build = importlib.import_module(pkg.__name__ + ".problem").build_problem
    return {
        "build": lambda: build(own),
        "fresh": lambda: build(pkg.Curves(u, g)),
        "greedy": lambda: pkg.allocate(own, total),
        "exact": lambda: pkg.allocate(own, total, method="exact"),
    }


def same_problem(a, b):
    return (a.per_head == b.per_head and a.floor_total == b.floor_total and a.ceiling_total == b.ceiling_total
            and all(np.array_equal(getattr(a, n), getattr(b, n)) and getattr(a, n).dtype == getattr(b, n).dtype
                    for n in ("utility", "grid", "lo", "hi", "unit_steps")))


def same_allocation(a, b):
    fields = ("used", "total_budget", "utility", "upper_bound", "gap", "threshold", "method")
    return (np.array_equal(a.budgets, b.budgets) and a.budgets.dtype == b.budgets.dtype
            and all(getattr(a, f) == getattr(b, f) for f in fields) and a.stats == b.stats)


def batch_size(fn, batch_ms):
    """Calls per batch so that one batch takes about ``batch_ms`` milliseconds."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(batch_ms * 1e-3 / once))


def per_call(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def run(args, log=print):
    base = baseline_package(args.baseline) if args.baseline else None
    sides = {"new": budgetopt} if base is None else {"new": budgetopt, "baseline": base}
    rows = []
    for name, curves, total in cases(args.quick):
        fns = {side: calls_of(pkg, curves, total) for side, pkg in sides.items()}
        answers = {side: {op: f() for op, f in calls.items()} for side, calls in fns.items()}  # warm-up
        new = answers["new"]
        assert new["exact"].status == "optimal", name
        if base is not None:
            old = answers["baseline"]
            assert same_problem(new["build"], old["build"]) and same_problem(new["fresh"], old["build"]), name
            for op in ("greedy", "exact"):
                assert same_allocation(new[op], old[op]), f"{name}: {op} answers differently from the baseline"
        row = {"case": name, "heads": curves.n_heads, "points": curves.n_points, "total": total,
               "exact_proved_by": new["exact"].stats["proved_by"]}
        for op in OPS:
            sizes = {side: batch_size(fns[side][op], args.batch_ms) for side in fns}
            calls = max(sizes.values())
            times = {side: [] for side in fns}
            order = list(fns)
            for _ in range(args.rounds):
                for side in order:
                    times[side].append(per_call(fns[side][op], calls))
                order.reverse()  # neither side always runs first
            for side, t in times.items():
                row[f"{op}_{side}_s"] = float(np.median(t))
            if base is not None:
                row[f"{op}_ratio"] = row[f"{op}_baseline_s"] / row[f"{op}_new_s"]
        log(line(row))
        rows.append(row)
    return rows


def line(row):
    parts = [f"{row['case']:<38}"]
    for op in OPS:
        text = f"{op} {row[f'{op}_new_s'] * 1e6:8.1f}"
        if f"{op}_ratio" in row:
            text += f" / {row[f'{op}_baseline_s'] * 1e6:8.1f} ({row[f'{op}_ratio']:4.2f}x)"
        parts.append(text)
    return "  ".join(parts)


def main(argv=None):
    ap = timing_parser(__doc__, baseline_help="git revision timed alongside (e.g. main)", rounds=15,
                       rounds_help="interleaved rounds per figure (median)")
    ap.add_argument("--batch-ms", type=float, default=3.0, help="about this long per batch of calls")
    ap.add_argument("--quick", action="store_true", help="two small cases, for the tests")
    args, env, out = start_run(ap, "bench_front_door", argv)
    t0 = time.perf_counter()
    rows = run(args)
    legend = ("per-call median, microseconds: this checkout" + (" / baseline (baseline / this)" if args.baseline else "")
              + "; build = build_problem(curves), fresh = build_problem(Curves(u, g)), greedy and exact = allocate")
    write_report(out, env, [legend, ""] + [line(r) for r in rows], rows, started=t0, baseline=args.baseline)
    return rows


if __name__ == "__main__":
    main()
