"""First call on a new installation: ``budgetopt solve --example`` from an empty kernel cache.

A new installation has compiled nothing. Before, its first solve compiled every kernel it
needed (then cached them); now small kernel calls run as plain Python until a process has
spent 3 s of CPU that way (``budgetopt._kernels_jit``), which the example never does, so it
compiles nothing. Children run with budgetopt's default kernel mode (``BUDGETOPT_KERNELS``
is removed from their environment). Each case runs in a fresh interpreter, from an empty folder,
with a new empty cache directory (``BUDGETOPT_CACHE_DIR`` and ``NUMBA_CACHE_DIR`` both point
there, so the baseline's numba cache goes there too), byte code already compiled as after
``pip install``:

* ``greedy, cold``: ``solve --example --budget 0.2`` on an empty cache;
* ``exact, cold``: ``solve --example --budget 0.2 --method exact`` on an empty cache;
* ``exact after greedy``: the same once the greedy's kernels are cached (a user's second
  command);
* ``greedy, warm`` and ``exact, warm``: the same commands again (kernels loaded from the cache).

Rounds alternate between this tree and ``--baseline REV`` (exported with ``git archive``), so
both see the same machine load; medians of wall time and of the process's CPU time (user +
system, which other jobs inflate far less) are reported, with the CPU-time ratio baseline /
this tree::

    python benchmarks/bench_first_call.py --baseline 8ec4271 --rounds 3

Results go to a new folder under ``benchmarks/out/`` unless ``--record`` writes
``benchmarks/results/bench_first_call.{json,txt}`` (or ``--out`` names a place).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import describe, export_budgetopt, start_run, timing_parser  # noqa: E402

SOLVE = ["-m", "budgetopt", "solve", "--example", "--budget", "0.2"]
CASES = ("greedy, cold", "exact, cold", "exact after greedy", "greedy, warm", "exact, warm")


def export(rev, directory):
    """``budgetopt/`` of commit ``rev`` (or of the working tree for ``None``) under ``directory``,
    byte-compiled as ``pip install`` leaves it."""
    export_budgetopt(rev, directory)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(directory / "budgetopt")], check=True)
    return directory


def run(tree, cache, argv):
    """``(wall, cpu)`` seconds of ``python argv`` with ``tree`` first on the path and kernels
    cached in ``cache``, from an empty folder; ``cpu`` is the child's user + system time, which
    other jobs on a shared machine inflate far less than the wall time."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR", "BUDGETOPT_CACHE_DIR",
                                                            "BUDGETOPT_KERNELS")}
    env.update(PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(cache), BUDGETOPT_CACHE_DIR=str(cache),
               OMP_NUM_THREADS="1")
    where = cache.parent / "cwd"
    where.mkdir(exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, check=True, stdout=subprocess.DEVNULL, cwd=where)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_round(tree, scratch):
    """Seconds of each case for ``tree``, every cold case on a new empty cache."""
    out = {}
    cold = scratch / "a"
    out["greedy, cold"] = run(tree, cold, SOLVE)
    out["exact after greedy"] = run(tree, cold, SOLVE + ["--method", "exact"])
    out["greedy, warm"] = run(tree, cold, SOLVE)
    out["exact, warm"] = run(tree, cold, SOLVE + ["--method", "exact"])
    out["exact, cold"] = run(tree, scratch / "b", SOLVE + ["--method", "exact"])
    for name in ("a", "b"):
        shutil.rmtree(scratch / name, ignore_errors=True)
    return out


def main(argv=None):
    args, env, out = start_run(timing_parser(__doc__, rounds=3), "bench_first_call", argv)
    sides = {"this tree": None} if args.baseline is None else {"this tree": None, "baseline": args.baseline}
    times = {side: {case: [] for case in CASES} for side in sides}  # (wall, cpu) per round
    with tempfile.TemporaryDirectory() as tmp:
        trees = {side: export(rev, Path(tmp) / side.replace(" ", "_") / "src") for side, rev in sides.items()}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                scratch = Path(tmp) / side.replace(" ", "_") / f"round{r}"
                scratch.mkdir(parents=True)
                for case, t in one_round(trees[side], scratch).items():
                    times[side][case].append(t)
                print(f"round {r + 1}/{args.rounds} {side}: "
                      + ", ".join(f"{c} {times[side][c][-1][0]:.1f} s" for c in CASES), flush=True)
    rows = []
    for case in CASES:
        row = {"case": case}
        for side in sides:
            row[f"{side} wall s"] = statistics.median(t[0] for t in times[side][case])
            row[f"{side} cpu s"] = statistics.median(t[1] for t in times[side][case])
        if "baseline" in sides:
            row["baseline / this tree (cpu)"] = row["baseline cpu s"] / row["this tree cpu s"]
        rows.append(row)
    lines = describe(env) + [f"command : {env['command']}",
                             f"baseline: {args.baseline}" if args.baseline else "baseline: none",
                             f"rounds  : {args.rounds} (medians; each cold case on a new empty cache)", ""]
    header = (["case"] + [f"{side} {kind} s" for side in sides for kind in ("wall", "cpu")]
              + (["baseline / this tree (cpu)"] if "baseline" in sides else []))
    lines.append(" | ".join(header))
    for row in rows:
        lines.append(" | ".join([row["case"]] + [f"{row[h]:.2f}" for h in header[1:]]))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    Path(f"{out}.txt").write_text(text)
    Path(f"{out}.json").write_text(json.dumps({"env": env, "baseline": args.baseline, "rows": rows,
                                               "times": times}, indent=1, default=str) + "\n")
    print(f"wrote {out}.txt and .json")


if __name__ == "__main__":
    main()
