"""Benchmark: how far is the greedy from the optimum, and how fast does ``method="exact"`` prove it?

For each instance (families in ``benchmarks/instances_exact.py``) one run records:

* the greedy's utility, its certificate ``upper_bound - utility`` and its true gap (the proven
  optimum minus its utility);
* ``method="exact"``: time to proof (or to the time limit), status, core size and DP states;
* ``method="milp"`` (HiGHS, ``mip_rel_gap`` 0) under the same time limit, with its status;
* ``method="cvxpy"`` (HiGHS, no time limit) on instances of at most ``--cvxpy-max-options``
  options where ``milp`` finished, and ``method="dp"`` where it needs at most
  ``--dp-max-updates`` cell updates;
* whether every method that finished agrees with the proven optimum.

Families: concave saturating per-token curves; attention-derived per-token curves
(``curves_from_scores`` of heads with varying concentration and scorer fidelity) at 32 x 8
heads x 4,096 tokens and 5,120 heads x 1,023 tokens; random-walk (non-monotone) per-token
curves; Pisinger's multiple-choice knapsack classes (uncorrelated, weakly correlated,
strongly correlated, subset-sum, zig-zag) with 100 and 1,000 classes x 10 and 100 items,
data range R = 1,000 and 10,000; and the strongly correlated classes with a random fraction
below 0.001 added to every profit (``strongly-fractional``, R = 1,000), where the bounds
that need integral utilities do not apply.

Numba compilation is excluded by a warm-up solve. ``exact``, ``greedy`` and ``milp`` times
are the best of ``--repeat`` runs (one when a run takes over a second; ``milp``'s include
building the model); ``exact`` and ``greedy`` calls that take a fraction of a millisecond are
repeated until their runs add up to 50 ms (at most 100 runs), as the machine's jitter is as
long as such a call. ``cvxpy`` and ``dp`` run once.

Usage::

    python benchmarks/bench_exact.py                  # the full run
    python benchmarks/bench_exact.py --time-limit 10  # milp/exact limit per instance (s)
    python benchmarks/bench_exact.py --quick          # tiny sizes (the test suite runs this)
    python benchmarks/bench_exact.py --families pisinger-strongly,pisinger-subset_sum
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import add_output_options, output_path, record  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt.curves import write_atomic  # noqa: E402
from budgetopt.errors import ProblemTooLargeError  # noqa: E402
from instances_exact import (  # noqa: E402
    PISINGER_KINDS, attention, concave, non_monotone, pisinger, strongly_fractional,
)


# -- instances -----------------------------------------------------------------------------
def instances(quick, seeds, families=None):
    """``(family, size label, seed, curves, total)`` in run order; only the ``families``
    named (``concave``, ``pisinger-strongly``, ...) when given."""
    out = []
    if quick:
        token_sizes = {"concave": [(8, 33)], "attention": [(8, 33)], "non_monotone": [(8, 33)]}
        pis_sizes = [(10, 5)]
        ranges = [100]
    else:
        token_sizes = {
            "concave": [(256, 4097)],
            "attention": [(256, 4097), (5120, 1024)],
            "non_monotone": [(256, 4097)],
        }
        pis_sizes = [(100, 10), (100, 100), (1000, 10), (1000, 100)]
        ranges = [1000, 10000]
    makers = {"concave": concave, "attention": attention, "non_monotone": non_monotone}
    for family, sizes in token_sizes.items():
        if families and family not in families:
            continue
        for heads, points in sizes:
            for seed in range(seeds):
                curves, total = makers[family](heads, points, seed)
                out.append((family, f"{heads}x{points}", seed, curves, total))
    for kind in PISINGER_KINDS:
        if families and f"pisinger-{kind}" not in families:
            continue
        for R in ranges:
            for classes, items in pis_sizes:
                for seed in range(seeds):
                    curves, total = pisinger(kind, classes, items, seed, data_range=R)
                    out.append((f"pisinger-{kind}", f"{classes}x{items} R={R}", seed, curves, total))
    # not one of Pisinger's classes: the strongly correlated ones made non-integral
    if not families or "strongly-fractional" in families:
        for classes, items in pis_sizes:
            for seed in range(seeds):
                curves, total = strongly_fractional(classes, items, seed, data_range=ranges[0])
                out.append(("strongly-fractional", f"{classes}x{items} R={ranges[0]}", seed, curves, total))
    return out


# -- one instance --------------------------------------------------------------------------
#: exact and greedy runs go on until they add up to this many seconds (at most 100 runs).
FILL_SECONDS = 0.05


def best_of(fn, repeat, fill=0.0):
    """Best time of ``repeat`` runs (one only when a run takes over a second); more runs,
    up to 100, while all runs together have taken less than ``fill`` seconds (a call of a
    fraction of a millisecond is as long as the machine's jitter, as in ``timeit``'s
    autorange)."""
    best, result, spent, runs = np.inf, None, 0.0, 0
    while runs < repeat or (spent < fill and runs < 100):
        t0 = time.perf_counter()
        result = fn()
        took = time.perf_counter() - t0
        best, spent, runs = min(best, took), spent + took, runs + 1
        if best > 1.0:
            break
    return best, result


def run_one(family, size, seed, curves, total, args):
    n_options = int(curves.utility.size)
    row = {"family": family, "size": size, "seed": seed, "options": n_options, "total": int(total)}
    tg, g = best_of(lambda: budgetopt.allocate(curves, total), args.repeat, FILL_SECONDS)
    row.update(greedy_s=tg, greedy_utility=g.utility, certificate=g.gap)
    te, e = best_of(lambda: budgetopt.allocate(curves, total, method="exact", time_limit=args.time_limit),
                    args.repeat, FILL_SECONDS)
    s = e.stats
    row.update(
        exact_s=te, exact_status=e.status, exact_utility=e.utility, exact_bound=e.upper_bound,
        core_heads=s["core_heads"], core_options=s["core_options"], states=s["states"],
        tolerance=s["tolerance"], exact_proved_by=s["proved_by"], value_step=s["value_step"],
    )
    # milp, same limit, where the model is not too large
    t0 = time.perf_counter()
    if args.milp_max_options is not None and n_options > args.milp_max_options:
        row.update(milp_s=None, milp_status="skipped", milp_utility=None, milp_bound=None)
    else:
        try:
            tm, m = best_of(lambda: budgetopt.allocate(curves, total, method="milp", time_limit=args.time_limit),
                            args.repeat)
            row.update(milp_s=tm, milp_status=m.status, milp_utility=m.utility, milp_bound=m.upper_bound)
        except budgetopt.SolverError as exc:
            row.update(milp_s=time.perf_counter() - t0, milp_status=f"failed: {exc}", milp_utility=None,
                       milp_bound=None)
    # cvxpy where milp finished and the model is small
    row.update(cvxpy_s=None, cvxpy_status="skipped", cvxpy_utility=None)
    if row["milp_status"] == "optimal" and n_options <= args.cvxpy_max_options:
        t0 = time.perf_counter()
        c = budgetopt.allocate(curves, total, method="cvxpy")
        row.update(cvxpy_s=time.perf_counter() - t0, cvxpy_status="optimal", cvxpy_utility=c.utility)
    # dp where it fits
    row.update(dp_s=None, dp_status="skipped", dp_utility=None)
    try:
        from budgetopt import baselines as exact_module

        limit = exact_module.DP_MAX_UPDATES
        exact_module.DP_MAX_UPDATES = args.dp_max_updates
        try:
            t0 = time.perf_counter()
            d = budgetopt.allocate(curves, total, method="dp")
            row.update(dp_s=time.perf_counter() - t0, dp_status="optimal", dp_utility=d.utility)
        finally:
            exact_module.DP_MAX_UPDATES = limit
    except ProblemTooLargeError:
        row["dp_status"] = "too large"
    # the proven optimum: exact's, else milp's or dp's when they finished
    optimum = None
    for name in ("exact", "milp", "dp"):
        if row[f"{name}_status"] == "optimal":
            optimum = row[f"{name}_utility"]
            break
    row["optimum"] = optimum
    row["true_gap"] = None if optimum is None else optimum - g.utility
    # agreement with it (tolerance: 1e-9 of the utilities' scale, as exact's)
    tol = s["tolerance"]
    checks = []
    if optimum is not None:
        for name in ("exact", "milp", "cvxpy", "dp"):
            if row[f"{name}_status"] == "optimal":
                checks.append(abs(row[f"{name}_utility"] - optimum) <= tol)
        checks.append(g.utility <= optimum + tol)
        checks.append(e.utility <= optimum + tol and e.upper_bound >= optimum - tol)
    row["agree"] = all(checks)
    row["speedup_vs_milp"] = row["milp_s"] / te if row["milp_status"] == "optimal" and e.status == "optimal" else None
    return row


# -- report --------------------------------------------------------------------------------
def _t(x):
    return "-" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")


def _g(x):
    return "-" if x is None else f"{x:.6g}"


_PROOF = {"lagrangian_bound": "lagr", "cardinality_bound": "card", "core_dp": "dp", None: "-"}


def report(res):
    env = res["environment"]
    m, v = env["machine"], env["versions"]
    lines = [
        "bench_exact: optimality gap of the greedy and time to proof of method='exact'",
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['platform']}",
        f"versions: python {v['python']}, numpy {v['numpy']}, numba {v['numba']}, scipy {v['scipy']}",
        f"commit: {env['git']['commit']} (uncommitted in budgetopt/: {len(env['git']['uncommitted'])})",
        f"command: {env['command']}",
        f"time limit (exact and milp): {res['time_limit']} s; total run {res['seconds']:.0f} s"
        + ("" if res.get("complete", True) else " (INCOMPLETE: the run was cut short)"),
        f"load average at the start {m['loadavg_start']}, at the end {m.get('loadavg_end')}",
        "",
        f"{'family':<24}{'size':<19}{'seed':>4} {'greedy':>12} {'optimum':>12} {'true gap':>9} {'certif.':>9}"
        f" {'exact':>10} {'milp':>10} {'speedup':>8} {'cvxpy':>9} {'dp':>9}  agree  proof",
    ]
    for r in res["rows"]:
        exact_t = _t(r["exact_s"]) + ("" if r["exact_status"] == "optimal" else "*")
        milp_t = _t(r["milp_s"]) + ("" if r["milp_status"] in ("optimal", "skipped") else "*")
        sp = "-" if r["speedup_vs_milp"] is None else f"{r['speedup_vs_milp']:.0f}x"
        lines.append(
            f"{r['family']:<24}{r['size']:<19}{r['seed']:>4} {r['greedy_utility']:>12.6g} {_g(r['optimum']):>12}"
            f" {_g(r['true_gap']):>9} {r['certificate']:>9.3g} {exact_t:>10} {milp_t:>10} {sp:>8}"
            f" {_t(r['cvxpy_s']):>9} {_t(r['dp_s']):>9}  {'yes' if r['agree'] else 'NO':<5}"
            f"  {_PROOF[r['exact_proved_by']]}"
        )
    s = res["summary"]
    lines += [
        "",
        "* = stopped at the time limit without a proof (exact: best found and a valid bound; milp: HiGHS's)."
        + ("" if res.get("milp_max_options") is None else
           f" milp '-' = skipped (more than {res['milp_max_options']:,} grid points)."),
        "proof: what proved exact's answer optimal: lagr = the Lagrangian (LP) bound after reduced-cost fixing,"
        " card = the cardinality bound, dp = the core DP.",
        f"exact proved {s['exact_proved']}/{s['instances']} instances, {s['exact_under_1s']} of them in under 1 s;"
        f" milp proved {s['milp_proved']}/{s['instances']}.",
        f"where both proved: exact/milp speed-up median {_g(s['speedup_median'])}x, min {_g(s['speedup_min'])}x;"
        f" instances at >= 100x: {s['speedup_100x']}/{s['both_proved']}.",
        f"every finished method agrees with the proven optimum: {s['all_agree']}",
    ]
    return "\n".join(lines) + "\n"


def summarise(rows):
    sp = [r["speedup_vs_milp"] for r in rows if r["speedup_vs_milp"] is not None]
    return {
        "instances": len(rows),
        "exact_proved": sum(r["exact_status"] == "optimal" for r in rows),
        "exact_under_1s": sum(r["exact_status"] == "optimal" and r["exact_s"] < 1 for r in rows),
        "milp_proved": sum(r["milp_status"] == "optimal" for r in rows),
        "both_proved": len(sp),
        "speedup_median": float(np.median(sp)) if sp else None,
        "speedup_min": float(min(sp)) if sp else None,
        "speedup_100x": sum(x >= 100 for x in sp),
        "all_agree": all(r["agree"] for r in rows),
    }


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    families = sorted({r["family"] for r in res["rows"]})
    markers = "os^vD<>ph*"
    lim = res["time_limit"]
    for i, fam in enumerate(families):
        rows = [r for r in res["rows"] if r["family"] == fam and r["milp_s"] is not None]
        if not rows:
            continue  # milp skipped on the whole family
        ax.scatter([r["milp_s"] for r in rows], [r["exact_s"] for r in rows], marker=markers[i % len(markers)],
                   label=fam, alpha=0.8)
    lo = 1e-4
    ax.plot([lo, lim * 2], [lo, lim * 2], "k-", lw=0.8, label="equal time")
    ax.plot([lo * 100, lim * 2], [lo, lim * 2 / 100], "k--", lw=0.8, label="100x faster")
    ax.axhline(1.0, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"milp (HiGHS) seconds (limit {lim} s)")
    ax.set_ylabel(f'method="exact" seconds (limit {lim} s)')
    ax.set_title("Time to proof of optimality, per instance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds); for the test suite")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds per instance for exact and milp")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per family and size")
    parser.add_argument("--repeat", type=int, default=None, help="exact, greedy and milp timing: best of this many")
    parser.add_argument("--families", default=None,
                        help="comma-separated families to run (default: all), e.g. pisinger-strongly,concave")
    parser.add_argument("--cvxpy-max-options", type=int, default=20_000)
    parser.add_argument("--milp-max-options", type=int, default=None,
                        help="skip milp on instances with more grid points than this (default: never skip)")
    parser.add_argument("--dp-max-updates", type=int, default=200_000_000)
    add_output_options(parser, "bench_exact", out_help="results .json (the report goes next to it as .txt)")
    parser.add_argument("--plot", default=None, help="plot .png (default: next to --out; none in --quick)")
    args = parser.parse_args(argv)
    args.time_limit = args.time_limit or (2.0 if args.quick else 10.0)
    args.seeds = args.seeds or 1
    args.repeat = args.repeat or (1 if args.quick else 3)
    out = Path(output_path(args.out, args.record, "bench_exact", ".json"))
    t_start = time.perf_counter()
    env = record("bench_exact.py", argv)
    warm, wt = pisinger("strongly", 10, 5, 0, data_range=100)
    budgetopt.allocate(warm, wt, method="exact")  # compile / load the kernels
    rows = []
    families = None if args.families is None else set(args.families.split(","))
    known = {"concave", "attention", "non_monotone", "strongly-fractional"} | {f"pisinger-{k}" for k in PISINGER_KINDS}
    if families is not None and not families <= known:
        parser.error(f"--families: unknown {sorted(families - known)}; known: {sorted(known)}")
    todo = instances(args.quick, args.seeds, families)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, (family, size, seed, curves, total) in enumerate(todo):
        rows.append(run_one(family, size, seed, curves, total, args))
        r = rows[-1]
        print(f"{family} {size} seed {seed}: exact {r['exact_status']} {_t(r['exact_s'])}, "
              f"milp {r['milp_status']} {_t(r['milp_s'])}", file=sys.stderr, flush=True)
        env["machine"]["loadavg_end"] = list(os.getloadavg())
        res = {"environment": env, "time_limit": args.time_limit, "milp_max_options": args.milp_max_options,
               "rows": rows, "summary": summarise(rows),
               "seconds": time.perf_counter() - t_start, "complete": i + 1 == len(todo)}
        text = report(res)  # rewritten after every instance: a cut-short run keeps what it did
        write_atomic(out, lambda f: f.write(json.dumps(res, indent=2).encode()))
        write_atomic(out.with_suffix(".txt"), lambda f: f.write(text.encode()))
    if args.plot or not args.quick:
        plot(res, Path(args.plot) if args.plot else out.with_suffix(".png"))
    sys.stdout.write(text)
    return res


if __name__ == "__main__":
    main()
