"""Held-out comparison of lukv_table's aggregates: "mean_ratio" (published) vs "mean_curve".

A table is profiled on calibration questions and judged on other questions of other
contexts: its row for compression ``c`` becomes integer keep counts by the kvpress rule
(``keep_counts_from_prune_ratios``), and we measure the oracle mass those counts retain on each
held-out question (the scorer's top tokens plus sink and window), as a fraction of that
question's total mass. Uniform budgets and each question's own optimum (its own single-pair
solve, an unreachable upper reference) bracket the two aggregates.

Data (synthetic, structured; no model): each head has its own attention concentration
(gamma shape), its own sensitivity to the question (how much the question reshuffles which
tokens matter) and its own weight; a question also rescales each head's mass (some questions
lean on some heads). A context's questions share its base importance and its scorer array
(log base importance + noise, like a prefill-time scorer). Everything is seeded.

Usage::

    python benchmarks/heldout_aggregate.py                 # defaults below
    python benchmarks/heldout_aggregate.py --splits 10 --length 2048
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from budgetopt.lukv import compression_ratios, lukv_table  # noqa: E402
from budgetopt.profile import curves_from_scores  # noqa: E402
from budgetopt.rounding import keep_counts_from_prune_ratios  # noqa: E402


def make_world(rng, layers, heads, length):
    """Per-head traits shared by every context and question."""
    return {
        "concentration": rng.uniform(0.05, 1.5, (layers, heads, 1)),
        "sensitivity": rng.uniform(0.1, 2.0, (layers, heads, 1)),
        "weight": rng.lognormal(0.0, 0.5, (layers, heads, 1)),
        "shape": (layers, heads, length),
    }


def make_context(rng, world, questions, scorer_noise):
    base = rng.gamma(world["concentration"], size=world["shape"]) + 1e-12
    scores = np.log(base) + rng.normal(scale=scorer_noise, size=base.shape)
    oracles = []
    for _ in range(questions):
        o = base * np.exp(world["sensitivity"] * rng.normal(size=base.shape))
        o /= o.sum(axis=-1, keepdims=True)
        o *= world["weight"] * rng.lognormal(0.0, 0.7, world["shape"][:2] + (1,))
        oracles.append(o)
    return oracles, scores


def retained(table_rows, curves, length, sink, window):
    """Fraction of a question's oracle mass kept by each table row (kvpress rounding)."""
    counts = keep_counts_from_prune_ratios(table_rows, length)  # (rows, L, H)
    counts = np.maximum(counts, sink + window)
    idx = counts - (sink + window)
    u = curves.utility  # (L, H, K)
    kept = np.take_along_axis(u[None], idx[..., None], axis=-1)[..., 0].sum(axis=(1, 2))
    return kept / u[..., -1].sum()


def add_world_arguments(parser):
    """The synthetic world's size and noise, and how many worlds (shared with bench_quality.py)."""
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--contexts", type=int, default=12, help="contexts per split (half calibrate, half held out)")
    parser.add_argument("--questions", type=int, default=4, help="questions per context")
    parser.add_argument("--scorer-noise", type=float, default=1.0)
    parser.add_argument("--splits", type=int, default=5, help="independent synthetic worlds (seeds)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_world_arguments(parser)
    parser.add_argument("--rows", default="50,75,90,95", help="compression percents to report")
    args = parser.parse_args(argv)
    rows = [int(r) - 1 for r in args.rows.split(",")]
    ratios = compression_ratios()
    t0 = time.perf_counter()

    names = ["uniform", "mean_ratio", "mean_curve", "own optimum"]
    results = {name: [] for name in names}  # each: (splits, rows) mean held-out retained fraction
    for split in range(args.splits):
        rng = np.random.default_rng(split)
        world = make_world(rng, args.layers, args.heads, args.length)
        contexts = [make_context(rng, world, args.questions, args.scorer_noise) for _ in range(args.contexts)]
        half = args.contexts // 2
        cal_o = [o for oracles, _ in contexts[:half] for o in oracles]
        cal_s = [s for oracles, s in contexts[:half] for _ in oracles]
        tables = {
            "uniform": np.broadcast_to(ratios[:, None, None], (99, args.layers, args.heads)),
            "mean_ratio": lukv_table(cal_o, cal_s, sink=args.sink, window=args.window, aggregate="mean_ratio"),
            "mean_curve": lukv_table(cal_o, cal_s, sink=args.sink, window=args.window, aggregate="mean_curve"),
        }
        scores_per_name = {name: [] for name in names}
        for oracles, scores in contexts[half:]:
            for o in oracles:
                curves = curves_from_scores(o, scores, sink=args.sink, window=args.window)
                for name, table in tables.items():
                    scores_per_name[name].append(retained(table[rows], curves, args.length, args.sink, args.window))
                own = lukv_table([o], scores, sink=args.sink, window=args.window)
                scores_per_name["own optimum"].append(retained(own[rows], curves, args.length, args.sink, args.window))
        for name in names:
            results[name].append(np.mean(scores_per_name[name], axis=0))

    print(f"held-out retained oracle mass (fraction of total), mean over {args.splits} splits "
          f"(std over splits in brackets); {args.layers}x{args.heads} heads, T={args.length}, "
          f"sink={args.sink}, window={args.window}; per split {args.contexts // 2 * args.questions} calibration "
          f"and {(args.contexts - args.contexts // 2) * args.questions} held-out questions")
    header = "compression " + "".join(f"{name:>22}" for name in names)
    print(header)
    for j, r in enumerate(rows):
        cells = []
        for name in names:
            vals = np.array(results[name])[:, j]
            cells.append(f"{vals.mean():.4f} ({vals.std():.4f})")
        print(f"{ratios[r]:>11.2f} " + "".join(f"{c:>22}" for c in cells))
    diff = np.array(results["mean_curve"]) - np.array(results["mean_ratio"])
    print("mean_curve - mean_ratio per split (rows as above):")
    for s in range(args.splits):
        print(f"  split {s}: " + " ".join(f"{d:+.4f}" for d in diff[s]))
    wins = int((diff > 0).sum())
    print(f"mean_curve higher in {wins} of {diff.size} (split, row) cells; "
          f"mean difference {diff.mean():+.4f}")
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
