"""What each of the greedy's faster paths gains on the calls a user makes, against the plain form.

The greedy has a plain form, every head's full hull, the LP part and the repair in one compiled
call (``_kernels_greedy.solve_one``), and two faster paths that give the same answers bit for
bit. Each is timed here against the plain form in the same run (interleaved rounds, medians of
warm calls; numba compilation excluded), and the answers are checked to be identical:

* **the bracket** (``budgetopt.bracket``: hulls built only where the threshold can fall), on
  ``allocate(curves, total)`` at 20% kept for 32 x 8 heads at 4,096 and 32,768 tokens and
  5,120 heads at 1,023 tokens; the plain form is ``bracket.worthwhile`` answering ``False``;
* **the sweep** (``_Greedy.solve_many``: one sorted order of all hull segments for many
  totals), on ``budgetopt.sweep`` of an LU-KV table's 99 totals (32 x 8 x 4,096) and on
  ``lukv_table`` end to end (``--pairs`` pairs, one thread); the plain form solves each total
  alone.

Curves: the seeded synthetic oracle and scores of ``bench_allocate.py``. Usage::

    python benchmarks/bench_greedy_paths.py              # about a minute
    python benchmarks/bench_greedy_paths.py --rounds 5 --pairs 4
    python benchmarks/bench_greedy_paths.py --quick --rounds 1 --calls 1 --pairs 1   # seconds; a test

Writes ``bench_greedy_paths.{txt,json}`` into a new folder under ``benchmarks/out/``
(``--record``: ``benchmarks/results/``; ``--out STEM``: anywhere).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import start_run, write_report  # noqa: E402
from bench_allocate import make_oracle_scores  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt import bracket, greedy  # noqa: E402
from budgetopt.profile import curves_from_scores  # noqa: E402
from budgetopt.rounding import tokens_evicted  # noqa: E402

SIZES = (("32x8 heads, 4096 tokens", (32, 8), 4096), ("5120 heads, 1023 tokens", (160, 32), 1023),
         ("32x8 heads, 32768 tokens", (32, 8), 32768))


@contextmanager
def without_bracket():
    """Every single total solved by the plain form (full hulls, one compiled call)."""
    saved = bracket.worthwhile
    bracket.worthwhile = lambda problem: False
    try:
        yield
    finally:
        bracket.worthwhile = saved


@contextmanager
def without_sweep():
    """Each total of a sweep solved alone (as ``allocate`` would), by the plain form."""
    saved = greedy._Greedy.solve_many

    def one_by_one(self, totals):
        with without_bracket():
            return [self.solve(int(t)) for t in totals]

    greedy._Greedy.solve_many = one_by_one
    try:
        with without_bracket():
            yield
    finally:
        greedy._Greedy.solve_many = saved


def median_ms(fn, calls):
    """Median of ``calls`` warm calls of ``fn``, in milliseconds (one warm-up call first)."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def compare(name, fn, plain, rounds, calls, same):
    """Row for ``fn`` against ``fn`` under the ``plain`` context, interleaved rounds."""
    fast, slow = [], []
    for _ in range(rounds):
        fast.append(median_ms(fn, calls))
        with plain():
            slow.append(median_ms(fn, calls))
    with plain():
        reference = fn()
    row = {"case": name, "fast_ms": statistics.median(fast), "plain_ms": statistics.median(slow),
           "identical": bool(same(fn(), reference))}
    row["plain_over_fast"] = row["plain_ms"] / row["fast_ms"]
    return row


def same_allocation(a, b):
    return (np.array_equal(a.budgets, b.budgets) and a.utility == b.utility and a.upper_bound == b.upper_bound
            and a.threshold == b.threshold)


def same_sweep(a, b):
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("budgets", "utility", "upper_bound", "threshold"))


def run(args):
    rows = []
    for label, shape, length in SIZES[:1] if args.quick else SIZES:
        oracle, scores = make_oracle_scores(shape, length, 0)
        curves = curves_from_scores(oracle, scores, sink=4, window=32)
        total = budgetopt.tokens_from_fraction(0.2, int(np.prod(shape)) * length)
        rows.append(compare(f"allocate, {label}", lambda c=curves, t=total: budgetopt.allocate(c, t), without_bracket,
                            args.rounds, args.calls, same_allocation))
        rows[-1]["hull_points_fraction"] = budgetopt.allocate(curves, total).stats["hull_points_fraction"]
    oracle, scores = make_oracle_scores((32, 8), 4096, 1)
    curves = curves_from_scores(oracle, scores, sink=4, window=32)
    n = 32 * 8 * 4096
    floor = 32 * 8 * 36
    totals = [max(n - tokens_evicted((i + 1) / 100, n), floor) for i in range(99)]
    rows.append(compare("sweep of 99 totals, 32x8 heads, 4096 tokens", lambda: budgetopt.sweep(curves, totals),
                        without_sweep, args.rounds, max(1, args.calls // 3), same_sweep))
    pairs = [make_oracle_scores((32, 8), 4096, 10 + i) for i in range(args.pairs)]
    rows.append(compare(f"lukv_table, {args.pairs} pairs of 32x8 heads, 4096 tokens, 1 thread",
                        lambda: budgetopt.lukv_table([o for o, _ in pairs], [s for _, s in pairs], sink=4, window=32),
                        without_sweep, args.rounds, 1, np.array_equal))
    return rows


def line(row):
    return (f"{row['case']:<62} fast path {row['fast_ms']:8.1f} ms   plain {row['plain_ms']:8.1f} ms   "
            f"plain / fast {row['plain_over_fast']:5.2f}x   answers identical: {row['identical']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--calls", type=int, default=7, help="warm calls per round (median)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs of the lukv_table case")
    parser.add_argument("--quick", action="store_true", help="the first allocate size only, for the tests")
    started = time.perf_counter()
    args, env, out = start_run(parser, "bench_greedy_paths", argv)
    rows = run(args)
    body = ["median per call, this tree; plain: the fast path switched off in the same run", ""]
    write_report(out, env, body + [line(r) for r in rows], rows, started=started)
    return rows


if __name__ == "__main__":
    main()
