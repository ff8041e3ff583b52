"""``allocate`` time against problem size (heads x grid points), log-log, with a fitted slope.

Per-token curves from ``curves_from_scores`` of the seeded synthetic oracle/scorer arrays of
``benchmarks/bench_allocate.py``, at 20% kept. Each size: numba compilation excluded (one warm-up
call), then the median of ``--repeats`` back-to-back calls. The slope of log(time) against
log(points) is fitted by least squares over the sizes (1 means linear time).

Usage::

    python benchmarks/bench_scaling.py                     # ~1 min; writes into a new folder under benchmarks/out/
    python benchmarks/bench_scaling.py --record --figures docs/img  # the committed record and the figure
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import start_run  # noqa: E402

import budgetopt  # noqa: E402
from bench_allocate import make_oracle_scores  # noqa: E402
from budgetopt.curves import write_atomic  # noqa: E402

SIZES = ((16, 256), (32, 1024), (64, 1024), (256, 1024), (256, 4096), (1024, 2048), (2048, 4096))


def measure(heads, length, repeats, seed):
    oracle, scores = make_oracle_scores((heads,), length, seed)
    curves = budgetopt.curves_from_scores(oracle, scores)
    total = budgetopt.tokens_from_fraction(0.2, curves.capacity)
    budgetopt.allocate(curves, total)  # compile / warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        budgetopt.allocate(curves, total)
        times.append(time.perf_counter() - t0)
    return {"heads": heads, "points": curves.n_points, "size": heads * curves.n_points,
            "median_s": float(np.median(times)), "min_s": float(np.min(times))}


def fit(rows):
    x = np.log10([r["size"] for r in rows])
    y = np.log10([r["median_s"] for r in rows])
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def figure(rows, slope, intercept, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    size = np.array([r["size"] for r in rows], float)
    ax.loglog(size, [r["median_s"] * 1e3 for r in rows], "o", label="allocate (median)")
    ax.loglog(size, 10 ** (intercept + slope * np.log10(size)) * 1e3, "--", label=f"fit: slope {slope:.2f}")
    ax.set_xlabel("problem size (heads x grid points)")
    ax.set_ylabel("time (ms)")
    ax.set_title("allocate (greedy) time vs problem size, 20% kept", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--figures", metavar="DIR")
    args, env, out = start_run(parser, "bench_scaling", argv, suffix=".json",
                               out_help="results .json (the report goes next to it as .txt)")
    out = Path(out)
    rows = [measure(h, t, args.repeats, seed=i) for i, (h, t) in enumerate(SIZES)]
    slope, intercept = fit(rows)
    lines = [f"{'heads':>6} {'points':>7} {'size':>11} {'median ms':>10} {'min ms':>8}"]
    lines += [f"{r['heads']:>6} {r['points']:>7} {r['size']:>11,} {r['median_s'] * 1e3:>10.3f} {r['min_s'] * 1e3:>8.3f}"
              for r in rows]
    lines.append(f"fitted slope of log(time) vs log(size): {slope:.3f}")
    lines.append(f"machine: {env['machine']['cpu_model']}, {env['machine']['cores']} cores, load "
                 f"{env['machine']['loadavg_start'][0]:.2f}; commit {env['git']['commit']}")
    lines.append(f"command: {env['command']}")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    payload = {"rows": rows, "slope": slope, "intercept": intercept, "environment": env}
    write_atomic(out, lambda f: f.write(json.dumps(payload, indent=1).encode()))
    write_atomic(out.with_suffix(".txt"), lambda f: f.write(text.encode()))
    if args.figures:
        figure(rows, slope, intercept, Path(args.figures) / "allocate_scaling.png")


if __name__ == "__main__":
    main()
