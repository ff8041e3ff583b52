"""Benchmark: budgetopt.lukv_table against the published LU-KV solver run the published way.

Both sides build the same ``[99, L, H]`` table from the same calibration files:

* budgetopt: ``lukv_table`` over memory-mapped ``.npy`` files, end to end (reading, validation,
  one sort per head and scores array, curves, one ``sweep`` of 99 totals per pair), with one
  thread per core (``workers=-1``). Numba compilation is excluded by a warm-up call on the
  first pair.
* reference: ``tests/reference_lukv.py`` (a plain re-expression of ``step2_compute_curve.py``:
  per-head Python hull scan and a heapq eviction of single tokens), one task per pair in a
  ``multiprocessing.Pool`` with one process per core, each worker loading its pair's files,
  as the published script does.

Data: synthetic but structured. Each head has its own attention concentration; a context's
questions share its base importance (oracle = base x question noise, normalised per head) and
the scorer array is per context (log base importance + noise), as SnapKV-style scores are.

Usage::

    python benchmarks/bench_lukv_table.py                    # 30 pairs, one context each
    python benchmarks/bench_lukv_table.py --contexts 10      # 10 contexts x 3 questions
    python benchmarks/bench_lukv_table.py --ref-pairs 8      # time the reference on 8 pairs only

With ``--ref-pairs`` below ``--pairs`` the reference time for all pairs is extrapolated as
``pool time x ceil(pairs / cores) / ceil(ref_pairs / cores)`` and labelled as such.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import describe, record  # noqa: E402

from budgetopt.lukv import lukv_table  # noqa: E402
from reference_lukv import lukv_reference_table  # noqa: E402


def make_files(directory, pairs, contexts, layers, heads, length, seed):
    """Write oracle and scores .npy files (float32); return (oracle paths, scores path per pair)."""
    rng = np.random.default_rng(seed)
    concentration = rng.uniform(0.05, 2.0, (layers, heads, 1))
    oracle_paths, score_paths = [], []
    per_context = math.ceil(pairs / contexts)
    for c in range(contexts):
        base = rng.gamma(concentration, size=(layers, heads, length))
        scores = np.log(base + 1e-12) + rng.normal(scale=1.0, size=base.shape)
        spath = os.path.join(directory, f"context_{c}_scores.npy")
        np.save(spath, scores.astype(np.float32))
        for q in range(per_context):
            if len(oracle_paths) == pairs:
                break
            oracle = base * rng.gamma(2.0, 0.5, size=base.shape)
            oracle /= oracle.sum(axis=-1, keepdims=True)
            opath = os.path.join(directory, f"context_{c}_question_{q}.npy")
            np.save(opath, oracle.astype(np.float32))
            oracle_paths.append(opath)
            score_paths.append(spath)
    return oracle_paths, score_paths


def run_ours(oracle_paths, score_paths, sink, window, workers):
    loaded = {}
    scores = []
    for path in score_paths:  # one array object per distinct file, so each is ranked once
        if path not in loaded:
            loaded[path] = np.load(path, mmap_mode="r")
        scores.append(loaded[path])
    oracles = [np.load(path, mmap_mode="r") for path in oracle_paths]
    return lukv_table(oracles, scores, sink=sink, window=window, workers=workers)


def breakdown(oracle_path, score_path, sink, window):
    """Milliseconds spent per stage of one pair: read+validate, rank, curves, sweep of 99 totals."""
    from budgetopt.lukv import _solve_rows
    from budgetopt.profile import check_profile_arrays, rank_middle, utility_from_order

    def median_ms(fn):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return 1000 * float(np.median(times)), out

    t_read, (o, s, _, _) = median_ms(lambda: check_profile_arrays(
        np.load(oracle_path, mmap_mode="r"), np.load(score_path, mmap_mode="r"), sink, window))
    t_rank, order = median_ms(lambda: rank_middle(s, sink, window))
    t_util, u = median_ms(lambda: utility_from_order(o, order, sink, window))
    length = o.shape[-1]
    grid = np.arange(sink + window, length + 1)
    floor = max(round(0.01 * length), sink + window)
    t_sweep, _ = median_ms(lambda: _solve_rows(u, grid, length, floor, 0.01, True))
    return (f"read+validate {t_read:.0f} ms, rank {t_rank:.0f} ms, curves {t_util:.0f} ms, "
            f"99-total sweep {t_sweep:.0f} ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--contexts", type=int, default=None, help="distinct scores arrays (default: one per pair)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--ref-pairs", type=int, default=None, help="pairs timed for the reference (default: all)")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--workers", type=int, default=-1,
                        help="lukv_table threads (default -1: one per core, like the reference's pool)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of budgetopt (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    contexts = args.contexts or args.pairs
    ref_pairs = min(args.ref_pairs or args.pairs, args.pairs)

    env = record("bench_lukv_table.py", argv, packages=("numpy", "numba"),
                 dirty_paths=("budgetopt", "benchmarks", "tests"))
    print("\n".join(describe(env)))
    print(f"command : {env['command']}")
    print(f"problem: {args.pairs} pairs ({contexts} scores arrays), {args.layers} x {args.heads} x {args.length}, "
          f"sink={args.sink}, window={args.window}, 99 rows, layerwise, min_keep_fraction=0.01")

    with tempfile.TemporaryDirectory() as directory:
        oracle_paths, score_paths = make_files(directory, args.pairs, contexts, args.layers, args.heads,
                                               args.length, args.seed)
        # Warm-up: compile (or load cached) every numba kernel on the real path, one pair.
        run_ours(oracle_paths[:1], score_paths[:1], args.sink, args.window, args.workers)

        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            ours = run_ours(oracle_paths, score_paths, args.sink, args.window, args.workers)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        ours_s = float(np.median(times))
        ours_cpu = float(np.median(cpu))
        print(f"budgetopt lukv_table (workers={args.workers}): {ours_s:.3f} s wall for {args.pairs} pairs "
              f"(median of {args.repeats}: {', '.join(f'{t:.3f}' for t in times)}), "
              f"{1000 * ours_s / args.pairs:.1f} ms per pair; CPU time (all threads) {ours_cpu:.3f} s")

        print("budgetopt per pair, first pair (median of 3): " + breakdown(
            oracle_paths[0], score_paths[0], args.sink, args.window))

        t0 = time.perf_counter()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        ref = lukv_reference_table(oracle_paths[:ref_pairs], score_paths[:ref_pairs], args.sink, args.window,
                                   processes=args.processes)
        ref_s = time.perf_counter() - t0
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        ref_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
        rounds = math.ceil(args.pairs / args.processes) / math.ceil(ref_pairs / args.processes)
        ref_total = ref_s * rounds
        label = "measured" if ref_pairs == args.pairs else (
            f"EXTRAPOLATED from {ref_pairs} pairs measured in {ref_s:.1f} s (x{rounds:.2f} pool rounds)")
        print(f"reference (pool of {args.processes} processes): {ref_total:.1f} s for {args.pairs} pairs, {label}; "
              f"{ref_s * args.processes / ref_pairs:.2f} s per pair per core")
        print(f"ratio reference / budgetopt: {ref_total / ours_s:.1f}x wall")
        if ref_pairs == args.pairs and args.processes > 1:
            print(f"CPU time: reference workers {ref_cpu:.1f} s, budgetopt {ours_cpu:.2f} s: "
                  f"{ref_cpu / ours_cpu:.1f}x (insensitive to other load on the machine)")
        print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
              f"on {os.cpu_count()} cores (other work on the machine slows both sides)")

        if ref_pairs == args.pairs:
            compare = ours
        else:
            compare = run_ours(oracle_paths[:ref_pairs], score_paths[:ref_pairs], args.sink, args.window, args.workers)
        diff = np.abs(compare - ref)
        print(f"tables: max |budgetopt - reference| = {diff.max():.3g} (1/T = {1 / args.length:.3g}); "
              f"entries differing by > 1e-12: {int((diff > 1e-12).sum())} of {diff.size}")


if __name__ == "__main__":
    main()
