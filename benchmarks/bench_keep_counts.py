"""Benchmark: keep_counts_from_prune_ratios, rule="kvpress" against rule="float64".

``rule="kvpress"`` runs the torch operations LUKVPress runs on each row (float32 arithmetic,
torch.topk), on the CPU; ``rule="float64"`` is the same largest-remainder rule in float64
NumPy, vectorised over rows. Both convert the same table; the figure is the ratio of their
times in the same run (best of ``--repeats`` calls each, after one warm-up call).

Tables ``(99, layers, kv_heads)``: uniform random ratios (ties are rare) and two-decimal
ratios (many ties), plus one layer row (what BudgetPress converts per layer and forward pass).

Usage::

    python benchmarks/bench_keep_counts.py                       # 32 layers x 8 KV heads, T = 4096
    python benchmarks/bench_keep_counts.py --layers 80 --heads 8 --length 32768

Writes ``bench_keep_counts.json``, with the machine, versions, commit and command next to the
numbers, into a new folder under ``benchmarks/out/`` (``--record``: the committed
``benchmarks/results/bench_keep_counts.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _env import add_output_options, output_path, record  # noqa: E402

from budgetopt import keep_counts_from_prune_ratios  # noqa: E402


def best_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    add_output_options(parser, "bench_keep_counts", out_help="results .json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    shape = (99, args.layers, args.heads)
    tables = {"uniform": rng.random(shape), "two-decimal": np.round(rng.random(shape), 2)}
    rows = []
    for name, table in tables.items():
        for what, data in (("table", table), ("one layer row", table[49, 0])):
            seconds = {rule: best_time(lambda: keep_counts_from_prune_ratios(data, args.length, rule=rule),
                                       args.repeats)
                       for rule in ("float64", "kvpress")}
            rows.append({"ratios": name, "input": what, "shape": list(np.shape(data)),
                         "float64_s": seconds["float64"], "kvpress_s": seconds["kvpress"],
                         "kvpress_over_float64": seconds["kvpress"] / seconds["float64"]})
    result = {**record("bench_keep_counts.py"), "length": args.length, "rows": rows}
    print(f"{result['machine']['cpu_model']}, commit {result['git']['commit']}, T = {args.length}")
    print(f"{'ratios':>12} {'input':>14} {'float64':>10} {'kvpress':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['ratios']:>12} {r['input']:>14} {r['float64_s'] * 1e3:>8.3f}ms {r['kvpress_s'] * 1e3:>8.3f}ms "
              f"{r['kvpress_over_float64']:>6.1f}x")
    out = Path(output_path(args.out, args.record, "bench_keep_counts", ".json"))
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
