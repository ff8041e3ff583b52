"""Benchmark: the per-call cost of ``method="exact"`` on small Pisinger instances, against ``milp``.

The seven instances are those of ``bench_exact.py``'s run where ``exact`` was less than 100x
faster than ``milp`` (both proved optimality): each ``exact`` call took 0.6-4 ms there, most of
it fixed per-call work rather than search. For each instance, interleaved in one run:

* ``exact`` of this checkout: median of ``--repeat`` warm calls of
  ``budgetopt.allocate(curves, total, method="exact")``;
* with ``--baseline REV``, the same calls of revision ``REV``'s ``budgetopt`` (exported with
  ``git archive`` into a temporary folder and imported as another package), checked to give
  the same budgets and utility;
* ``milp`` (HiGHS, ``mip_rel_gap`` 0): median of ``--milp-repeat`` calls (model building
  included, as in ``bench_exact.py``);

and the speed-up of each ``exact`` over ``milp``. Numba compilation is excluded (one warm-up
call per package and instance).

Usage::

    python benchmarks/bench_exact_small.py --baseline main
    python benchmarks/bench_exact_small.py --repeat 50 --milp-repeat 5
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import baseline_package, start_run, timing_parser, write_report  # noqa: E402

import budgetopt  # noqa: E402
from instances_exact import SMALL_PISINGER, pisinger  # noqa: E402


def median_seconds(fn, repeat):
    """Median wall seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(args, log=print):
    base = baseline_package(args.baseline) if args.baseline else None
    rows = []
    for kind, n, m, r, seed in SMALL_PISINGER:
        curves, total = pisinger(kind, n, m, seed, data_range=r)
        cases = {"exact": lambda c=curves: budgetopt.allocate(c, total, method="exact")}
        if base is not None:
            bc = base.Curves(curves.utility, curves.grid)
            cases["baseline"] = lambda c=bc: base.allocate(c, total, method="exact")
        answers = {name: fn() for name, fn in cases.items()}  # warm-up (kernels loaded)
        e = answers["exact"]
        assert e.status == "optimal"
        if base is not None:
            b = answers["baseline"]
            same = bool(np.array_equal(e.budgets, b.budgets) and e.utility == b.utility
                        and e.upper_bound == b.upper_bound and e.status == getattr(b, "status", b.stats.get("status")))
            assert same, f"{kind} {n}x{m} R={r} seed {seed}: the baseline answers differently"
        times = {name: [] for name in cases}
        times["milp"] = []
        for i in range(args.milp_repeat):  # rounds: each sees the same machine load
            for name, fn in cases.items():
                times[name].append(median_seconds(fn, max(1, args.repeat // args.milp_repeat)))
            t0 = time.perf_counter()
            mi = budgetopt.allocate(curves, total, method="milp")
            times["milp"].append(time.perf_counter() - t0)
            assert mi.status == "optimal" and abs(mi.utility - e.utility) <= 1e-6 * max(1.0, abs(e.utility))
        row = {"kind": kind, "classes": n, "items": m, "data_range": r, "seed": seed,
               "proved_by": e.stats["proved_by"], "utility": e.utility,
               **{f"{name}_s": float(np.median(t)) for name, t in times.items()}}
        row["speedup"] = row["milp_s"] / row["exact_s"]
        if base is not None:
            row["baseline_speedup"] = row["milp_s"] / row["baseline_s"]
            row["vs_baseline"] = row["baseline_s"] / row["exact_s"]
        log(line(row))
        rows.append(row)
    return rows


def line(row):
    name = f"{row['kind']:<13} {row['classes']}x{row['items']:<4} R={row['data_range']:<6} seed {row['seed']}"
    out = f"{name}  exact {row['exact_s'] * 1e3:6.2f} ms"
    if "baseline_s" in row:
        out += f"  baseline {row['baseline_s'] * 1e3:6.2f} ms ({row['vs_baseline']:.2f}x)"
    out += f"  milp {row['milp_s'] * 1e3:7.1f} ms  speed-up {row['speedup']:6.1f}x"
    if "baseline_speedup" in row:
        out += f" (baseline {row['baseline_speedup']:.1f}x)"
    return out + f"  [{row['proved_by']}]"


def main(argv=None):
    ap = timing_parser(__doc__, baseline_help="git revision whose exact is timed alongside (e.g. main)")
    ap.add_argument("--repeat", type=int, default=30, help="warm exact calls per instance (median; >= 20)")
    ap.add_argument("--milp-repeat", type=int, default=3, help="milp calls per instance (median)")
    args, env, out = start_run(ap, "bench_exact_small", argv)
    t0 = time.perf_counter()
    rows = run(args)
    reached = sum(r["speedup"] >= 100 for r in rows)
    body = [line(r) for r in rows] + ["", f"{reached} of {len(rows)} at 100x or more"]
    write_report(out, env, body, rows, started=t0, baseline=args.baseline)

if __name__ == "__main__":
    main()
