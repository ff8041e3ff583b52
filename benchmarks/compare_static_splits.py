"""Two static splits of one profile run, head by head: the LU-KV table against the mean-curve optimum.

The LU-KV table (``budgetopt.lukv_table_from_run``, default ``aggregate="mean_ratio"``)
averages each calibration pair's prune ratios; ``allocate`` on ``curves_from_run`` solves the
run's mean curves. Both spend the same share of the cache. For each compression this prints
both splits' per-layer kept fractions, how far they differ per head, and the heads the
mean-curve split gives most more than the table (``layer/head: table -> allocate``)::

    python benchmarks/compare_static_splits.py --run RUN --compression 0.5 0.75 0.9

``RUN`` is a ``budgetopt profile`` output (for instance the 2k run of
``benchmarks/results/evaluate_smollm2_2k/README.md``). Writes ``compare_static_splits.txt``
(and ``.json``) into a new folder under ``benchmarks/out/`` (``--record``:
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import describe, profile_run_or_exit, start_run, table_row  # noqa: E402

import budgetopt  # noqa: E402


def splits(run, compression):
    """``(table, allocate)`` kept fractions ``(layers, kv_heads)`` at ``compression``."""
    table, _ = budgetopt.lukv_table_from_run(run)
    keep_table = 1.0 - table[int(round(compression * 100)) - 1]
    curves = budgetopt.curves_from_run(run)
    total = budgetopt.tokens_from_fraction(1.0 - compression, curves.capacity)
    keep_alloc = budgetopt.allocate(curves, total).budgets / curves.grid.max()
    return keep_table, keep_alloc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a budgetopt profile output folder")
    parser.add_argument("--compression", type=table_row, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--top", type=int, default=6, help="heads listed per compression")
    early, _ = parser.parse_known_args(argv)  # bad arguments end here, before start_run makes a folder
    run = profile_run_or_exit(early.run, parser)
    args, env, out = start_run(parser, "compare_static_splits", argv)
    lines = describe(env) + [f"command : {env['command']}", f"run     : {run!r}", ""]
    rows = []
    for c in args.compression:
        keep_table, keep_alloc = splits(run, c)
        diff = keep_alloc - keep_table
        order = np.argsort(diff.ravel(), kind="stable")[::-1][: args.top]
        heads = np.unravel_index(order, diff.shape)
        top = [(int(l), int(h), float(keep_table[l, h]), float(keep_alloc[l, h])) for l, h in zip(*heads)]
        rows.append({"compression": c, "table": keep_table.tolist(), "allocate": keep_alloc.tolist(),
                     "mean_abs_difference": float(np.abs(diff).mean()), "top": top})
        lines += [f"compression {c}: kept {keep_table.mean():.3f} (table) {keep_alloc.mean():.3f} (allocate); "
                  f"per-head |difference| mean {np.abs(diff).mean():.3f}, largest {np.abs(diff).max():.3f}",
                  "  per-layer kept, table   : " + " ".join(f"{v:.2f}" for v in keep_table.mean(1)),
                  "  per-layer kept, allocate: " + " ".join(f"{v:.2f}" for v in keep_alloc.mean(1)),
                  "  heads allocate keeps most more of: "
                  + ", ".join(f"{l}/{h}: {t:.2f} -> {a:.2f}" for l, h, t, a in top),
                  f"  heads kept whole (>= 0.99): table {int((keep_table >= 0.99).sum())}, "
                  f"allocate {int((keep_alloc >= 0.99).sum())}", ""]
    text = "\n".join(lines)
    print(text)
    Path(f"{out}.txt").write_text(text)
    Path(f"{out}.json").write_text(json.dumps({"env": env, "run": args.run, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}.txt and .json")


if __name__ == "__main__":
    main()
