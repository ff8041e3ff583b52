"""How far from optimal the greedy is, per family of curves: true gap (against the exact MILP
optimum) and the certified gap ``upper_bound - utility`` it reports.

Families (seeded; small enough for ``method="milp"`` to prove optimality in seconds):

* ``attention (synthetic)`` -- ``curves_from_scores`` of the held-out worlds of
  ``benchmarks/heldout_aggregate.py`` (8 layers x 4 KV heads, T = 320, sink 4, window 16);
* ``example (shipped)`` -- the example curves shipped with budgetopt (256 heads, 63 points,
  grid steps of 16 tokens);
* ``random walk`` -- non-monotone, non-concave curves (cumulative sums of normal steps);
* ``concave`` -- cumulative sums of decreasing positive steps (the greedy is exact there).

For each family, seed and kept fraction (10%, 30%, 50%, 70%, 90%): greedy utility, its
certificate and the MILP optimum, as fractions of the optimum.

Usage::

    python benchmarks/bench_gap.py                      # minutes; writes into a new folder under benchmarks/out/
    python benchmarks/bench_gap.py --seeds 1            # one seed per family (about a third of the time)
    python benchmarks/bench_gap.py --record --figures docs/img   # the committed record and the figure
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
from budgetopt.cli import example_path  # noqa: E402
from budgetopt.curves import write_atomic  # noqa: E402
from budgetopt._io import c_stdout_to_stderr  # noqa: E402
from heldout_aggregate import make_context, make_world  # noqa: E402

FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def family(name, seed):
    rng = np.random.default_rng(seed)
    if name == "attention (synthetic)":
        world = make_world(rng, 8, 4, 320)
        oracles, scores = make_context(rng, world, 1, 1.0)
        return budgetopt.curves_from_scores(oracles[0], scores, sink=4, window=16)
    if name == "example (shipped)":
        return budgetopt.load_curves(example_path())
    if name == "random walk":
        return budgetopt.Curves(np.cumsum(rng.normal(0.01, 0.1, (32, 129)), axis=-1))
    if name == "concave":
        steps = -np.sort(-rng.exponential(1.0, (32, 128)), axis=-1) * rng.uniform(0.2, 2.0, (32, 1))
        return budgetopt.Curves(np.concatenate([np.zeros((32, 1)), np.cumsum(steps, axis=-1)], axis=-1))
    raise ValueError(name)


FAMILIES = ("attention (synthetic)", "example (shipped)", "random walk", "concave")


def run(seeds):
    rows = []
    for name in FAMILIES:
        for seed in range(1 if name == "example (shipped)" else seeds):
            curves = family(name, seed)
            for f in FRACTIONS:
                total = budgetopt.tokens_from_fraction(f, curves.capacity)
                g = budgetopt.allocate(curves, total)
                t0 = time.perf_counter()
                with c_stdout_to_stderr():  # HiGHS's own messages stay off the report
                    e = budgetopt.allocate(curves, total, method="milp")
                scale = abs(e.utility) if e.utility else 1.0
                rows.append({"family": name, "seed": seed, "kept": f, "greedy": g.utility, "exact": e.utility,
                             "upper_bound": g.upper_bound, "true_gap": (e.utility - g.utility) / scale,
                             "certified_gap": g.gap / scale, "milp_seconds": time.perf_counter() - t0})
    return rows


def report(rows):
    lines = ["Greedy vs exact (MILP): relative gaps, (optimum - greedy) / optimum and (bound - greedy) / optimum"]
    lines.append(f"{'family':<24}{'cases':>6}{'true gap: mean':>16}{'max':>10}{'certified: mean':>17}{'max':>10}{'exact hits':>12}")
    for name in FAMILIES:
        r = [x for x in rows if x["family"] == name]
        t = np.array([x["true_gap"] for x in r])
        c = np.array([x["certified_gap"] for x in r])
        hits = int(np.sum(t <= 1e-9))
        lines.append(f"{name:<24}{len(r):>6}{t.mean():>16.2e}{t.max():>10.2e}{c.mean():>17.2e}{c.max():>10.2e}"
                     f"{f'{hits}/{len(r)}':>12}")
    return "\n".join(lines) + "\n"


def figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for i, name in enumerate(FAMILIES):
        r = [x for x in rows if x["family"] == name]
        x = np.array([x["kept"] for x in r]) + (i - 1.5) * 0.012
        ax.scatter(x, [max(v["certified_gap"], 1e-12) for v in r], marker="^", color=f"C{i}", s=18,
                   label=f"{name}: certified")
        ax.scatter(x, [max(v["true_gap"], 1e-12) for v in r], marker="o", facecolors="none", color=f"C{i}", s=22,
                   label=f"{name}: true")
    ax.set_yscale("log")
    ax.set_xlabel("budget (fraction of the cache kept)")
    ax.set_ylabel("gap / optimum (1e-12 = zero)")
    ax.set_title("Greedy optimality gap per family (true: vs MILP; certified: reported bound)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--figures", metavar="DIR")
    t0 = time.perf_counter()
    args, env, out = start_run(parser, "bench_gap", argv, suffix=".json",
                               out_help="results .json (the report goes next to it as .txt)")
    out = Path(out)
    rows = run(args.seeds)
    text = report(rows) + f"machine: {env['machine']['cpu_model']}; commit {env['git']['commit']}; " \
                          f"{time.perf_counter() - t0:.1f} s\ncommand: {env['command']}\n"
    sys.stdout.write(text)
    write_atomic(out, lambda f: f.write(json.dumps({"rows": rows, "environment": env}, indent=1).encode()))
    write_atomic(out.with_suffix(".txt"), lambda f: f.write(text.encode()))
    if args.figures:
        figure(rows, Path(args.figures) / "gap_per_family.png")


if __name__ == "__main__":
    main()
