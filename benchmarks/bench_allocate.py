"""Benchmark: budgetopt.allocate against the published LU-KV offline solver and a numpy pass.

One run measures, on seeded synthetic per-token curves, and prints a report and writes
``bench_allocate.json`` into a new folder under ``benchmarks/out/`` (``--record``: the committed
``benchmarks/results/bench_allocate.json``):

1. **Anchor.** The published LU-KV offline solver's algorithm, re-expressed plainly in this
   file (:func:`anchor_keep`): per head, the lower convex hull of the cumulative discard loss
   in a Python loop, then a ``heapq`` min-heap evicting one token at a time until the kept
   fraction is reached. It reads the same curves as ``allocate``. As a cross-check, the
   independent test reference ``tests/reference_lukv.py`` (which starts from the raw
   oracle/scores arrays, as the published script does) is run on the same data; its kept
   counts should match the anchor's.
2. **A numpy pass.** ``allocate`` relative to ``utility.sum()`` (and to
   ``np.diff(utility, axis=-1)``) over the same float64 array, measured in interleaved rounds
   so both see the same machine load, with a breakdown of ``allocate`` into its stages
   (``build_problem``, the bracketed LP and its kernels, the rest) and, for comparison, the
   previous path that builds every head's full hull.
3. Both of the above for 256 heads x 4,097 points (a 32 x 8 model at 4,096 tokens) and
   5,120 heads x 1,024 points (160 x 32 heads at 1,023 tokens).
4. allocate / ``utility.sum()`` at 5%, 20%, 50% and 90% kept on the 256 x 4,097 curves and on
   random-walk curves of the same size.
5. ``method="dp"`` at 100 heads x 10 options x 50,000 and x 100,000 budget units, and the
   message it gives for a problem over its limit.
6. The numba on-disk cache: ``python -m budgetopt solve --example --budget 0.2`` twice in
   fresh processes sharing a new, empty ``NUMBA_CACHE_DIR``, counting numba's
   ``NUMBA_DEBUG_CACHE`` lines (saved = compiled, loaded = read from the cache).

Numba compilation is excluded from every in-process timing by a warm-up call. Times are
medians of repeated runs; speed is stated as ratios measured in the same run.

Usage::

    python benchmarks/bench_allocate.py                 # the full run (a few minutes)
    python benchmarks/bench_allocate.py --rounds 10     # fewer timing rounds
    python benchmarks/bench_allocate.py --anchor-runs 1 # run the slow anchor once per size
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from _env import add_output_options, output_path, record  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt import _kernels, _kernels_bracket, _kernels_greedy  # noqa: E402
from budgetopt.curves import write_atomic  # noqa: E402
from budgetopt import bracket as bracket_module  # noqa: E402
from budgetopt.hull import upper_hulls  # noqa: E402
from budgetopt.problem import build_problem  # noqa: E402
from reference_lukv import lukv_reference_prune_ratios  # noqa: E402

KEPT = 0.2  # fraction kept (kvpress compression_ratio 0.8)


# -- data ----------------------------------------------------------------------------------
def make_oracle_scores(head_shape, length, seed):
    """Seeded synthetic oracle masses and scorer values, shaped ``(*head_shape, length)``.

    Each head has its own concentration: oracle mass ~ Gamma(shape) with a per-head shape in
    [0.05, 2] (small shapes give a few tokens most of the mass, as in sharp heads), an
    attention sink on token 0 and a mild recency bump, normalised to sum 1 per head. The
    scorer sees ``log oracle`` plus noise whose scale differs per head (some heads are
    scored well, some poorly).
    """
    rng = np.random.default_rng(seed)
    shape = rng.uniform(0.05, 2.0, head_shape + (1,))
    mass = rng.gamma(shape, size=head_shape + (length,))
    mass[..., 0] += rng.uniform(0.0, 0.3, head_shape) * mass.sum(axis=-1)
    mass *= 1.0 + np.exp((np.arange(length) - length) / (0.02 * length))
    oracle = mass / mass.sum(axis=-1, keepdims=True)
    noise = rng.uniform(0.3, 2.0, head_shape + (1,))
    scores = np.log(oracle + 1e-12) + noise * rng.standard_normal(oracle.shape)
    return oracle, scores


# -- the anchor: the published offline solver, plainly --------------------------------------
def _lower_hull(points):
    """Indices of the lower convex hull of ``(i, points[i])``; collinear points dropped."""
    hull = [0]
    for k in range(1, len(points)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (b - a) * (points[k] - points[a]) - (k - a) * (points[b] - points[a]) <= 0:
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def anchor_keep(utility, total):
    """Tokens each head keeps under LU-KV's offline solver, for ``total`` kept tokens in all.

    ``utility``: (H, T + 1) per-token curves (``utility[h, b]`` = value of keeping ``b``).
    Per head, the cumulative loss of discarding ``d`` tokens is ``utility[h, T] -
    utility[h, T - d]``; each discard costs the slope of the lower-hull segment it lies on.
    Every head starts full; a min-heap keyed ``(cost, head)`` evicts one token at a time.
    """
    heads, points = utility.shape
    length = points - 1
    costs = []
    for h in range(heads):
        row = utility[h]
        loss = (row[length] - row[::-1]).tolist()  # loss[d], d = 0 .. T
        hull = _lower_hull(loss)
        per_discard = [0.0] * length
        for a, b in zip(hull[:-1], hull[1:]):
            slope = (loss[b] - loss[a]) / (b - a)
            for d in range(a, b):
                per_discard[d] = slope
        costs.append(per_discard)
    keep = [length] * heads
    heap = [(costs[h][0], h, 0) for h in range(heads)]
    heapq.heapify(heap)
    to_discard = heads * length - total
    discarded = 0
    while discarded < to_discard and heap:
        _, h, d = heapq.heappop(heap)
        keep[h] -= 1
        discarded += 1
        if d + 1 < length:
            heapq.heappush(heap, (costs[h][d + 1], h, d + 1))
    return np.array(keep, dtype=np.int64)


# -- timing helpers -------------------------------------------------------------------------
def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def timed_both(fn):
    """(wall seconds, this thread's CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    c1, w1 = time.thread_time(), time.perf_counter()
    return w1 - w0, c1 - c0


def median_time(fn, n):
    return float(np.median([timed(fn)[0] for _ in range(n)]))


def median_both(fn, n):
    runs = np.array([timed_both(fn) for _ in range(n)])
    return float(np.median(runs[:, 0])), float(np.median(runs[:, 1]))


def utility_of(curves, keep):
    u = curves.utility2d
    return float(u[np.arange(u.shape[0]), np.asarray(keep).reshape(-1)].sum())


def first_round_survivors(utility):
    """Fraction of points the hull kernel's first pruning round keeps (unit grid)."""
    left = utility[:, 1:-1] - utility[:, :-2]
    right = utility[:, 2:] - utility[:, 1:-1]
    dropped = int((left <= right).sum())
    return 1.0 - dropped / utility.size


# -- sections -------------------------------------------------------------------------------
def bench_size(label, head_shape, length, seed, rounds, anchor_runs, run_reference):
    oracle, scores = make_oracle_scores(head_shape, length, seed)
    t_curves, curves = timed(lambda: budgetopt.curves_from_scores(oracle, scores))
    utility = curves.utility  # float64 (*head_shape, T + 1)
    total = budgetopt.tokens_from_fraction(KEPT, curves.capacity)
    out = {
        "label": label,
        "head_shape": list(head_shape),
        "heads": curves.n_heads,
        "points": curves.n_points,
        "context_tokens": length,
        "capacity": curves.capacity,
        "total_budget": total,
        "kept_fraction": KEPT,
        "seed": seed,
        "curves_from_scores_s": t_curves,
    }

    # Warm-up (numba compilation, caches).
    alloc = budgetopt.allocate(curves, total)
    out["allocate"] = {
        "used": alloc.used,
        "utility": alloc.utility,
        "upper_bound": alloc.upper_bound,
        "gap": alloc.gap,
        "threshold": alloc.threshold,
        "hull_segments": alloc.stats["hull_segments"],
    }

    # Interleaved rounds: each round times the numpy passes, allocate and each of its stages,
    # so ratios are taken under the same load.
    # Wall time is the headline; this thread's CPU time is recorded beside it because the
    # machine is shared (CPU time leaves out the time the process waits for a core).
    problem = build_problem(curves)
    spare = total - problem.floor_total
    hulls = upper_hulls(problem)
    last = hulls.offsets[1:] - 1
    seg = np.setdiff1d(np.arange(hulls.verts.shape[0]), last)
    heads_of = np.repeat(np.arange(problem.n_heads), np.diff(hulls.offsets))
    grid_rows = problem.grid[heads_of * problem.per_head]
    xs = grid_rows[np.arange(len(heads_of)), hulls.verts]
    seg_slopes = hulls.slopes[seg]
    seg_costs = (xs[seg + 1] - xs[seg]).astype(np.int64)
    # Inputs of the bracket's kernels, as allocate computes them.
    args = (problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi)
    head_step = max(1, problem.n_heads // bracket_module._SAMPLE_HEADS)
    sigma = _kernels_bracket.sample_threshold(*args, bracket_module._OCTAVE_SHIFT, head_step, spare)
    chunk_max = np.empty((problem.n_heads, -(-int((problem.hi - problem.lo).max()) // _kernels_bracket._CHUNK)))
    _kernels_bracket.tilted_chunk_max(*args, sigma, chunk_max)
    arg = np.empty(problem.n_heads, np.int64)
    robust = np.empty(problem.n_heads, np.bool_)
    idx = np.empty(problem.n_heads, np.int64)
    calls = []
    real_argmax = _kernels_bracket.tilted_argmax
    _kernels_bracket.tilted_argmax = lambda *a: calls.append(a[7]) or real_argmax(*a)
    try:
        bracket = bracket_module.bracketed_lp(problem, spare, idx)
    finally:
        _kernels_bracket.tilted_argmax = real_argmax

    def full_hull_lp():  # the previous path: every head's full hull, then the greedy
        h = upper_hulls(problem)
        return _kernels_greedy.greedy_solve(*args[:3], h.offsets, h.verts, h.slopes, spare, np.empty_like(idx))

    # Each entry: (function, calls per round). A round times each step as the median of
    # that many back-to-back calls, so every step, numpy's included, is measured warm: the
    # array is in cache for all of them alike (a single call right after another step would
    # find part of it evicted, which favours whichever side is timed back to back).
    steps = {
        "sum": (lambda: utility.sum(), 21),
        "diff": (lambda: np.diff(utility, axis=-1), 5),
        "allocate": (lambda: budgetopt.allocate(curves, total), 7),
        "build_problem": (lambda: build_problem(curves), 3),
        "bracketed_lp": (lambda: bracket_module.bracketed_lp(problem, spare, idx), 3),
        "sample_threshold": (lambda: _kernels_bracket.sample_threshold(*args, bracket_module._OCTAVE_SHIFT, head_step, spare), 3),
        "tilted_chunk_max": (lambda: _kernels_bracket.tilted_chunk_max(*args, sigma, chunk_max), 3),
        "tilted_argmax": (lambda: _kernels_bracket.tilted_argmax(*args, sigma, chunk_max, sigma * 1.01, arg, robust), 3),
        "full_hull_lp": (full_hull_lp, 3),
        "upper_hulls": (lambda: upper_hulls(problem), 3),
        # The threshold search over every full-hull segment (weighted radix selection).
        "threshold_select": (lambda: _kernels._weighted_threshold(seg_slopes.copy(), seg_costs.copy(), spare), 3),
    }
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for _ in range(rounds):
        for key, (fn, n) in steps.items():
            w, c = median_both(fn, n)
            wall[key].append(w)
            cpu[key].append(c)
    wall = {k: np.array(v) for k, v in wall.items()}
    cpu = {k: np.array(v) for k, v in cpu.items()}
    med = {k: float(np.median(v)) for k, v in wall.items()}
    allocate_s = med["allocate"]
    out["timing"] = {
        "rounds": rounds,
        "allocate_s": allocate_s,
        "allocate_min_s": float(wall["allocate"].min()),
        "numpy_sum_s": med["sum"],
        "numpy_diff_s": med["diff"],
        "allocate_over_sum": float(np.median(wall["allocate"] / wall["sum"])),
        "allocate_over_diff": float(np.median(wall["allocate"] / wall["diff"])),
        "allocate_over_sum_of_minima": float(wall["allocate"].min() / wall["sum"].min()),
        "cpu_allocate_s": float(np.median(cpu["allocate"])),
        "cpu_numpy_sum_s": float(np.median(cpu["sum"])),
        "cpu_numpy_diff_s": float(np.median(cpu["diff"])),
        "cpu_allocate_over_sum": float(np.median(cpu["allocate"] / cpu["sum"])),
        "cpu_allocate_over_diff": float(np.median(cpu["allocate"] / cpu["diff"])),
        "full_hull_lp_over_sum": float(np.median(wall["full_hull_lp"] / wall["sum"])),
        "allocate_bare_array_s": median_time(lambda: budgetopt.allocate(utility, total), max(5, rounds // 3)),
        "curves_construction_s": median_time(lambda: budgetopt.Curves(utility, curves.grid), max(5, rounds // 3)),
    }
    stages = ("build_problem", "bracketed_lp", "sample_threshold", "tilted_chunk_max", "tilted_argmax",
              "full_hull_lp", "upper_hulls", "threshold_select")
    cpu_rest = cpu["allocate"] - cpu["build_problem"] - cpu["bracketed_lp"]
    out["breakdown"] = {
        **{f"{k}_s": med[k] for k in stages},
        **{f"cpu_{k}_s": float(np.median(cpu[k])) for k in stages},
        "cpu_rest_s": float(np.median(cpu_rest)),
        **{f"cpu_share_{k}": float(np.median(cpu[k] / cpu["allocate"])) for k in stages},
        "bracket_argmax_calls": len(calls),
        "bracket_multipliers_over_estimate": [float(lam / sigma) for lam in calls],
        "bracket_estimate_over_threshold": float(sigma / alloc.threshold),
        "bracket_hull_points_fraction": alloc.stats["hull_points_fraction"],
        "bracket_answered": bracket is not None,
        "full_hull_cpu_ns_per_point": float(np.median(cpu["upper_hulls"])) / utility.size * 1e9,
        "first_prune_round_keeps": first_round_survivors(curves.utility2d),
        "hull_vertices_mean": float(np.diff(hulls.offsets).mean()),
    }

    # The anchor on the same curves.
    runs, cpu_runs = [], []
    keep = None
    for _ in range(anchor_runs):
        c0 = time.thread_time()
        seconds, keep = timed(lambda: anchor_keep(curves.utility2d, total))
        cpu_runs.append(time.thread_time() - c0)
        runs.append(seconds)
    anchor_s = float(np.median(runs))
    anchor_cpu_s = float(np.median(cpu_runs))
    anchor_util = utility_of(curves, keep)
    same = np.array_equal(keep, alloc.budgets.reshape(-1))
    out["anchor"] = {
        "runs_s": runs,
        "seconds": anchor_s,
        "kept_total": int(keep.sum()),
        "utility": anchor_util,
        "allocate_minus_anchor_utility": alloc.utility - anchor_util,
        "same_budgets_as_allocate": bool(same),
        "heads_differing_from_allocate": int((keep != alloc.budgets.reshape(-1)).sum()),
        "speedup_allocate": anchor_s / allocate_s,
        "cpu_runs_s": cpu_runs,
        "cpu_speedup_allocate": anchor_cpu_s / out["timing"]["cpu_allocate_s"],
    }

    if run_reference:
        layers_heads = (int(np.prod(head_shape[:-1])), head_shape[-1])
        seconds, ratios = timed(lambda: lukv_reference_prune_ratios(
            oracle.reshape(layers_heads + (length,)), scores.reshape(layers_heads + (length,)),
            0, 0, [1.0 - KEPT], 0,
        ))
        ref_keep = np.rint((1.0 - ratios[0]) * length).astype(np.int64).reshape(-1)
        out["reference_lukv"] = {
            "seconds": seconds,
            "kept_total": int(ref_keep.sum()),
            "utility": utility_of(curves, ref_keep),
            "heads_differing_from_anchor": int((ref_keep != keep).sum()),
            "speedup_allocate": seconds / allocate_s,
        }
    return out


def _dp_curves(heads, options, max_tokens, seed):
    """Shared grid 0, 1 and ``options - 2`` random token counts up to ``max_tokens``."""
    rng = np.random.default_rng(seed)
    rest = np.sort(rng.choice(np.arange(2, max_tokens + 1), options - 2, replace=False))
    grid = np.concatenate([[0, 1], rest]).astype(np.int64)
    utility = np.cumsum(rng.gamma(0.5, 1.0, (heads, options)), axis=1)  # increasing, not concave
    return budgetopt.Curves(utility, grid)


def bench_other_cases(rounds):
    """allocate / utility.sum() beyond the headline case: other budgets on the same kind of
    curves, and random-walk curves (nearly straight, so the threshold pins the hulls down
    less and the bracket covers more of each curve)."""
    oracle, scores = make_oracle_scores((32, 8), 4096, 0)
    attention = budgetopt.curves_from_scores(oracle, scores)
    rng = np.random.default_rng(0)
    walk = budgetopt.Curves(np.cumsum(rng.random((256, 4097)), axis=1))
    cases = []
    for name, curves in (("attention-like", attention), ("random walk", walk)):
        for kept in (0.05, 0.2, 0.5, 0.9):
            total = budgetopt.tokens_from_fraction(kept, curves.capacity)
            a = budgetopt.allocate(curves, total)  # warm-up
            ratios = []
            times = []
            for _ in range(rounds):
                s = median_time(lambda: curves.utility.sum(), 21)
                t = median_time(lambda: budgetopt.allocate(curves, total), 7)
                ratios.append(t / s)
                times.append(t)
            cases.append({
                "curves": name,
                "kept_fraction": kept,
                "allocate_s": float(np.median(times)),
                "allocate_over_sum": float(np.median(ratios)),
                "hull_points_fraction": a.stats["hull_points_fraction"],
            })
    return cases


def bench_dp():
    budgetopt.allocate(_dp_curves(3, 4, 10, 0), 12, method="dp")  # warm-up (compilation)
    cases = []
    for units in (50_000, 100_000):
        curves = _dp_curves(100, 10, units // 50, 1)  # capacity ~ 2x the budget: it binds
        total = units - 1  # budget units 0 .. total, i.e. ``units`` cells per head
        t, a = timed(lambda: budgetopt.allocate(curves, total, method="dp"))
        milp = budgetopt.allocate(curves, total, method="milp")
        greedy = budgetopt.allocate(curves, total)
        cases.append({
            "heads": 100,
            "options": 10,
            "budget_units": a.stats["budget_units"] + 1,
            "unit_tokens": a.stats["unit"],
            "cell_updates": a.stats["cell_updates"],
            "seconds": t,
            "ns_per_update": t / a.stats["cell_updates"] * 1e9,
            "utility": a.utility,
            "milp_utility": milp.utility,
            "greedy_utility": greedy.utility,
            "greedy_upper_bound": greedy.upper_bound,
        })
    too_big = _dp_curves(100, 10, 100_000, 2)
    try:
        budgetopt.allocate(too_big, 3_000_000, method="dp")
        refusal = {"raised": None, "message": None}
    except budgetopt.BudgetoptError as exc:
        refusal = {"raised": type(exc).__name__, "message": str(exc)}
    refusal["case"] = "100 heads x 10 options, grid up to 100,000 tokens, total_budget 3,000,000"
    return {"cases": cases, "refusal": refusal}


def bench_cache():
    cmd = [sys.executable, "-m", "budgetopt", "solve", "--example", "--budget", "0.2"]
    runs = []
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache_dir:
        env = dict(os.environ, NUMBA_DEBUG_CACHE="1", NUMBA_CACHE_DIR=cache_dir)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        for i in range(2):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            text = proc.stdout + proc.stderr
            runs.append({
                "run": i + 1,
                "returncode": proc.returncode,
                "wall_s": wall,
                "data_saved": len(re.findall(r"\[cache\] data saved", text)),
                "data_loaded": len(re.findall(r"\[cache\] data loaded", text)),
                "index_saved": len(re.findall(r"\[cache\] index saved", text)),
            })
    return {
        "command": "NUMBA_DEBUG_CACHE=1 NUMBA_CACHE_DIR=<new empty dir> python -m budgetopt solve --example --budget 0.2",
        "runs": runs,
        "second_run_compiles": runs[1]["data_saved"] > 0,
    }


# -- report ---------------------------------------------------------------------------------
def _ms(s):
    return f"{s * 1e3:.3f} ms"


def report(res):
    m, v, g = res["machine"], res["versions"], res["git"]
    lines = [
        "budgetopt core allocator benchmark",
        f"machine : {m['cpu_model']}, {m['cores']} cores; load avg start {m['loadavg_start'][0]:.2f}, "
        f"end {m['loadavg_end'][0]:.2f}",
        f"versions: python {v['python']}, numpy {v['numpy']}, numba {v['numba']}, scipy {v['scipy']}",
        f"commit  : {g['commit']}" + (" (budgetopt/ has uncommitted changes)" if g["uncommitted"] else ""),
        f"command : {res['command']}",
        "",
    ]
    for s in res["sizes"]:
        t, b, a = s["timing"], s["breakdown"], s["anchor"]
        lines += [
            f"== {s['heads']} heads x {s['points']} points (head shape {tuple(s['head_shape'])}), "
            f"keep {s['kept_fraction']:.0%} = {s['total_budget']} of {s['capacity']} tokens",
            f"  allocate (median of {t['rounds']} rounds x 7 calls)   {_ms(t['allocate_s'])}   (min {_ms(t['allocate_min_s'])})",
            f"  utility.sum()  ({t['rounds']} rounds x 21 calls)   {_ms(t['numpy_sum_s'])}   allocate / sum  = {t['allocate_over_sum']:.1f}x"
            f"   [goal <= 10x: {'met' if t['allocate_over_sum'] <= 10 else 'NOT met'}]",
            f"  np.diff(utility, axis=-1)         {_ms(t['numpy_diff_s'])}   allocate / diff = {t['allocate_over_diff']:.1f}x",
            f"  CPU time (this thread): allocate {_ms(t['cpu_allocate_s'])}, sum {_ms(t['cpu_numpy_sum_s'])}, "
            f"diff {_ms(t['cpu_numpy_diff_s'])}: allocate / sum = {t['cpu_allocate_over_sum']:.1f}x, "
            f"allocate / diff = {t['cpu_allocate_over_diff']:.1f}x",
            f"  breakdown (CPU time): build_problem {_ms(b['cpu_build_problem_s'])}, bracketed LP "
            f"{_ms(b['cpu_bracketed_lp_s'])} ({b['cpu_share_bracketed_lp']:.0%}), rest (repair, result) {_ms(b['cpu_rest_s'])}",
            f"    bracketed LP: estimate {_ms(b['cpu_sample_threshold_s'])} (estimate / threshold "
            f"{b['bracket_estimate_over_threshold']:.3f}), chunk pass {_ms(b['cpu_tilted_chunk_max_s'])}, "
            f"{b['bracket_argmax_calls']} maximiser passes x {_ms(b['cpu_tilted_argmax_s'])}, hulls built over "
            f"{b['bracket_hull_points_fraction']:.1%} of the points",
            f"    previous path (every head's full hull + greedy) {_ms(b['cpu_full_hull_lp_s'])} = "
            f"{t['full_hull_lp_over_sum']:.1f}x sum; full hull {b['full_hull_cpu_ns_per_point']:.1f} ns/point, "
            f"{b['hull_vertices_mean']:.0f} vertices/head; radix selection over all its segments {_ms(b['cpu_threshold_select_s'])}",
            f"  (allocate on a bare array {_ms(t['allocate_bare_array_s'])}; Curves() construction alone "
            f"{_ms(t['curves_construction_s'])}; curves_from_scores {s['curves_from_scores_s']:.2f} s)",
            f"  anchor (Python hull + heapq)      {a['seconds']:.2f} s  runs {[round(x, 2) for x in a['runs_s']]}",
            f"  speed-up allocate vs anchor       {a['speedup_allocate']:.0f}x   [goal >= 100x: "
            f"{'met' if a['speedup_allocate'] >= 100 else 'NOT met'}]   (CPU time: {a['cpu_speedup_allocate']:.0f}x)",
            f"  utility allocate {s['allocate']['utility']:.9f}  anchor {a['utility']:.9f}  "
            f"(allocate - anchor = {a['allocate_minus_anchor_utility']:.3g}; "
            f"{'same budgets' if a['same_budgets_as_allocate'] else str(a['heads_differing_from_allocate']) + ' heads differ'})"
            f"   [goal same or higher: {'met' if a['allocate_minus_anchor_utility'] >= -1e-9 else 'NOT met'}]",
            f"  allocate upper bound {s['allocate']['upper_bound']:.9f}, gap {s['allocate']['gap']:.3g}, used {s['allocate']['used']}",
        ]
        if "reference_lukv" in s:
            r = s["reference_lukv"]
            lines.append(
                f"  tests/reference_lukv.py from oracle/scores: {r['seconds']:.2f} s ({r['speedup_allocate']:.0f}x allocate), "
                f"{r['heads_differing_from_anchor']} heads differ from the anchor, utility {r['utility']:.9f}"
            )
        lines.append("")
    lines.append("== other budgets and curves (256 heads x 4097 points; median of rounds of 7 calls vs 21 sums)")
    for c in res["other_cases"]:
        lines.append(
            f"  {c['curves']:>14}, keep {c['kept_fraction']:.0%}: allocate {_ms(c['allocate_s'])} = "
            f"{c['allocate_over_sum']:.1f}x sum; hulls built over {c['hull_points_fraction']:.1%} of the points"
        )
    lines.append("")
    lines.append("== method=\"dp\"")
    for c in res["dp"]["cases"]:
        lines.append(
            f"  {c['heads']} heads x {c['options']} options x {c['budget_units']} budget units = "
            f"{c['cell_updates']:.3g} cell updates: {c['seconds']:.2f} s ({c['ns_per_update']:.2f} ns/update); "
            f"utility {c['utility']:.6f} (milp {c['milp_utility']:.6f}, greedy {c['greedy_utility']:.6f})"
        )
    r = res["dp"]["refusal"]
    lines += [f"  over the limit ({r['case']}): {r['raised']}: {r['message']}", ""]
    lines.append("== numba cache (two fresh processes, one new cache dir)")
    for run in res["cache"]["runs"]:
        lines.append(
            f"  run {run['run']}: wall {run['wall_s']:.2f} s, exit {run['returncode']}, "
            f"[cache] data saved {run['data_saved']}, data loaded {run['data_loaded']}"
        )
    lines.append(f"  second run compiles: {res['cache']['second_run_compiles']}")
    lines.append(f"\ntotal benchmark time {res['benchmark_seconds']:.0f} s")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="timing rounds per size (default 30)")
    parser.add_argument("--anchor-runs", type=int, default=2, help="anchor runs per size (default 2)")
    parser.add_argument("--no-reference", action="store_true", help="skip the tests/reference_lukv.py cross-check")
    add_output_options(parser, "bench_allocate", out_help="results .json")
    args = parser.parse_args(argv)
    out = Path(output_path(args.out, args.record, "bench_allocate", ".json"))
    t_start = time.perf_counter()
    res = record("bench_allocate.py", argv)
    sizes = [("32x8 model, 4096 tokens", (32, 8), 4096, 0), ("5120 heads, 1023 tokens", (160, 32), 1023, 1)]
    res["sizes"] = [
        bench_size(label, shape, length, seed, args.rounds, args.anchor_runs, not args.no_reference)
        for label, shape, length, seed in sizes
    ]
    res["other_cases"] = bench_other_cases(max(3, args.rounds // 4))
    res["dp"] = bench_dp()
    res["cache"] = bench_cache()
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["benchmark_seconds"] = time.perf_counter() - t_start
    text = report(res)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: f.write(json.dumps(res, indent=2).encode()))
    print(f"\nwrote {os.path.relpath(out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
