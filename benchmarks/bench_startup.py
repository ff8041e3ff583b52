"""Start-up cost: wall time of ``python -c "import budgetopt"`` and of ``budgetopt --help``.

Each is run in a fresh interpreter, alternating with a baseline commit (``--baseline REV``,
exported with ``git archive``) and a bare ``python -c pass``, byte code cached as after an
install (in a temporary PYTHONPYCACHEPREFIX). The first round warms the caches and is dropped;
medians of the rest are reported. Writes ``bench_startup.{json,txt}`` into a new folder under
``benchmarks/out/`` (``--record``: the committed ``benchmarks/results/bench_startup.*``)::

    python benchmarks/bench_startup.py --baseline REV --rounds 11
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _env import export_budgetopt, start_run, timing_parser  # noqa: E402

from budgetopt.curves import write_atomic  # noqa: E402

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import budgetopt": ["-c", "import budgetopt"],
    "budgetopt --help": ["-m", "budgetopt", "--help"],
}


def seconds(tree, cache, argv):
    """Wall time of ``python argv`` with ``tree`` first on the path (run from an empty folder,
    so that the current directory cannot shadow it)."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=str(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, check=True, stdout=subprocess.DEVNULL, cwd=cache.parent)
    return time.perf_counter() - start


def main(argv=None):
    args, env, out = start_run(timing_parser(__doc__, rounds=11), "bench_startup", argv)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this checkout": ROOT}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = export_budgetopt(args.baseline, Path(tmp) / "baseline")
        times = {(t, c): [] for t in trees for c in COMMANDS}
        (Path(tmp) / "pyc").mkdir()
        for _ in range(args.rounds):
            for t, tree in trees.items():
                for c, command in COMMANDS.items():
                    times[t, c].append(seconds(tree, Path(tmp) / "pyc" / t.split()[0], command))
    rows = [{"tree": t, "command": c, "median_ms": 1e3 * statistics.median(v[1:]), "runs": len(v) - 1}
            for (t, c), v in times.items()]
    lines = [f"{r['tree']:>22}  {r['command']:<18} {r['median_ms']:8.0f} ms (median of {r['runs']})" for r in rows]
    m = env["machine"]
    lines.append(f"machine: {m['cpu_model']}, {m['cores']} cores, load {m['loadavg_start'][0]:.2f} at the start; "
                 f"commit {env['git']['commit']}{' (uncommitted changes)' if env['git']['uncommitted'] else ''}")
    lines.append(f"command: {env['command']}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    write_atomic(out + ".json", lambda f: f.write(json.dumps({**env, "rows": rows}, indent=1).encode()))
    write_atomic(out + ".txt", lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
