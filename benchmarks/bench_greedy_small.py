"""Benchmark: the hull greedy's per-call cost on small problems, against a baseline revision.

``method="exact"`` starts from the hull greedy (``budgetopt.greedy._Greedy(problem).solve``),
and on small problems that call is mostly fixed per-call work. For each case, interleaved in
one run:

* ``solve``: median of warm calls of ``_Greedy(problem).solve(total)`` on a problem built
  once (the part ``exact``, ``lp_multiplier`` and ``allocate``'s greedy share);
* ``allocate``: median of warm calls of ``budgetopt.allocate(curves, total)`` (the default
  method, the greedy, front door and result included);

for this checkout and, with ``--baseline REV``, for revision ``REV``'s ``budgetopt`` (exported
with ``git archive`` and imported as another package), with the ratio baseline / this tree.
The two sides' calls alternate one by one, so both see the same machine load; each round
gives a median per side, and the report gives the median of the rounds.
Both must answer identically: the same grid indices, LP value, threshold and stats from
``solve``, the same budgets, utility, bound, threshold and stats from ``allocate`` (checked,
the run stops otherwise). Numba compilation is excluded (one warm-up call per package and
case).

Cases: the seven small Pisinger instances of ``bench_exact_small.py`` (100 classes x 10 or 100
items, per-head grids, non-concave) and one per-token case, 32 x 8 heads x 4,096 tokens of
``bench_allocate.py``'s synthetic curves at 20% kept (large enough for the bracket).

Usage::

    python benchmarks/bench_greedy_small.py --baseline main
    python benchmarks/bench_greedy_small.py --baseline main --rounds 3 --repeat 100
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
from instances_exact import SMALL_PISINGER, pisinger  # noqa: E402


def per_token_case(seed=0):
    """32 x 8 heads, 4,096 tokens of synthetic oracle/scores curves, 20% kept."""
    from bench_allocate import KEPT, make_oracle_scores

    oracle, scores = make_oracle_scores((32, 8), 4096, seed)
    curves = budgetopt.curves_from_scores(oracle, scores)
    return curves, budgetopt.tokens_from_fraction(KEPT, curves.capacity)


def cases(per_token=True):
    """``(name, curves, total)`` of every case."""
    out = []
    for kind, n, m, r, seed in SMALL_PISINGER:
        curves, total = pisinger(kind, n, m, seed, data_range=r)
        out.append((f"{kind} {n}x{m} R={r} seed {seed}", curves, total))
    if per_token:
        curves, total = per_token_case()
        out.append(("per-token 32x8x4096, 20% kept", curves, total))
    return out


class Side:
    """One package's calls on one case."""

    def __init__(self, package, curves, total):
        problem_mod = importlib.import_module(package.__name__ + ".problem")
        greedy_mod = importlib.import_module(package.__name__ + ".greedy")
        self.curves = package.Curves(curves.utility, curves.grid)
        self.problem = problem_mod.build_problem(self.curves)
        solver = greedy_mod._Greedy
        self.solve = lambda: solver(self.problem).solve(total)
        self.allocate = lambda: package.allocate(self.curves, total)


def same_answers(new, base):
    """Whether two sides answer identically (the first difference, or None)."""
    a, b = new.solve(), base.solve()
    if not (np.array_equal(a.idx, b.idx) and a.lp == b.lp and a.threshold == b.threshold and a.stats == b.stats):
        return f"solve differs: {a} vs {b}"
    a, b = new.allocate(), base.allocate()
    if not (np.array_equal(a.budgets, b.budgets) and a.utility == b.utility and a.upper_bound == b.upper_bound
            and a.threshold == b.threshold and a.stats == b.stats):
        return f"allocate differs: {a} vs {b}"
    return None


def interleaved_medians(fns, repeat):
    """Median wall seconds of ``repeat`` calls of each of ``fns`` (a dict), the calls
    alternating between them so that every function sees the same machine load."""
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def run(args, log=print):
    base = baseline_package(args.baseline) if args.baseline else None
    rows = []
    for name, curves, total in cases(not args.no_per_token):
        sides = {"new": Side(budgetopt, curves, total)}
        if base is not None:
            sides["base"] = Side(base, curves, total)
        for side in sides.values():  # warm-up: kernels compiled or loaded
            side.solve(), side.allocate()
        if base is not None:
            diff = same_answers(sides["new"], sides["base"])
            assert diff is None, f"{name}: {diff}"
        repeat = args.repeat if sides["new"].problem.utility.size < 1 << 15 else max(10, args.repeat // 4)
        times = {}
        for _ in range(args.rounds):
            for what in ("solve", "allocate"):
                fns = {f"{what}_{side_name}": getattr(side, what) for side_name, side in sides.items()}
                for key, t in interleaved_medians(fns, repeat).items():
                    times.setdefault(key, []).append(t)
        row = {"case": name, "heads": int(curves.n_heads), "points": int(curves.n_points), "total": int(total),
               "calls_per_round": repeat, **{f"{k}_s": float(np.median(v)) for k, v in times.items()}}
        if base is not None:
            row["solve_ratio"] = row["solve_base_s"] / row["solve_new_s"]
            row["allocate_ratio"] = row["allocate_base_s"] / row["allocate_new_s"]
            row["identical"] = True
        log(line(row))
        rows.append(row)
    return rows


def _us(s):
    return f"{s * 1e6:8.1f} us"


def line(row):
    out = f"{row['case']:<38} solve {_us(row['solve_new_s'])}"
    if "solve_base_s" in row:
        out += f" (baseline {_us(row['solve_base_s'])}, {row['solve_ratio']:5.2f}x)"
    out += f"  allocate {_us(row['allocate_new_s'])}"
    if "allocate_base_s" in row:
        out += f" (baseline {_us(row['allocate_base_s'])}, {row['allocate_ratio']:5.2f}x)"
    return out


def main(argv=None):
    ap = timing_parser(__doc__, baseline_help="git revision timed alongside and checked to answer identically (e.g. main)",
                       rounds=5, rounds_help="interleaved rounds (median of the rounds' medians)")
    ap.add_argument("--repeat", type=int, default=200,
                    help="calls per round on the small cases, a quarter of it on the per-token case (median)")
    ap.add_argument("--no-per-token", action="store_true", help="skip the 32x8x4096 per-token case")
    args, env, out = start_run(ap, "bench_greedy_small", argv)
    t0 = time.perf_counter()
    rows = run(args)
    body = ["median per call; (baseline, baseline / this tree)", ""] + [line(r) for r in rows]
    write_report(out, env, body, rows, started=t0, baseline=args.baseline,
                 baseline_note=" (answers checked identical)")
    return rows


if __name__ == "__main__":
    main()
