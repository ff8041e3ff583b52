"""What every benchmark records next to its numbers: the machine, the versions, the commit and
the command (shared by the benchmark scripts)."""

from __future__ import annotations

import importlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Distributions whose versions :func:`record` reports (``None`` where not installed).
PACKAGES = ("numpy", "scipy", "numba", "torch", "transformers", "kvpress")


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or "unknown" where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def record(script, argv=None, *, packages=PACKAGES, dirty_paths=("budgetopt",)):
    """The environment of a benchmark run, as one dict.

    ``command``: ``python benchmarks/<script> <argv>`` (``argv`` defaults to ``sys.argv[1:]``);
    ``machine``: CPU model, logical cores, platform, load average at the start;
    ``versions``: Python, each of ``packages`` (installed distribution version, ``None`` if
    absent; nothing is imported) and the budgetopt checkout being measured;
    ``git``: the commit, and ``git status --porcelain`` lines for ``dirty_paths`` (empty when
    the measured code is committed). Outside a git checkout the commit is ``None``.
    """
    import budgetopt

    argv = sys.argv[1:] if argv is None else list(argv)
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--", *dirty_paths) or ""
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *map(str, argv)]),
        "machine": {
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": list(os.getloadavg()),
        },
        "versions": {
            "python": platform.python_version(),
            **{name: _version(name) for name in packages},
            "budgetopt": budgetopt.__version__,
        },
        "git": {"commit": commit and commit.strip(), "uncommitted": dirty.splitlines()},
    }


def describe(env):
    """Three report lines (machine, versions, commit) from a :func:`record`."""
    m, v, g = env["machine"], env["versions"], env["git"]
    shown = ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
    return [
        f"machine : {m['cpu_model']}, {m['cores']} cores, {m['platform']}",
        f"versions: {shown}",
        f"commit  : {g['commit']}" + (" (with uncommitted changes)" if g["uncommitted"] else ""),
    ]


def baseline_commit(rev):
    """The full commit hash of git revision ``rev`` (a benchmark's ``--baseline``)."""
    return subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def write_report(out, env, body, rows, *, started, baseline=None, baseline_note=""):
    """Finish a run begun with :func:`record` at ``time.perf_counter() == started``: add its
    length and the load at the end to ``env``, write ``out.txt`` (the :func:`describe`
    lines, the command, the load, ``baseline: REV = hash`` when timed against one, a blank
    line, then ``body``) and ``out.json`` (``env`` and ``rows``), both atomically, print
    the text and return it."""
    from budgetopt.curves import write_atomic

    env["seconds"] = time.perf_counter() - started
    env["loadavg_end"] = list(os.getloadavg())
    head = describe(env) + [f"command : {env['command']}", f"load    : {env['machine']['loadavg_start'][0]:.2f} "
                            f"at the start, {env['loadavg_end'][0]:.2f} at the end; {env['seconds']:.0f} s"]
    if baseline:
        head.append(f"baseline: {baseline} = {env['baseline_commit'][:7]}{baseline_note}")
    text = "\n".join(head + [""] + list(body)) + "\n"
    write_atomic(out + ".txt", lambda f: f.write(text.encode()))
    data = json.dumps({**env, "rows": rows}, indent=1).encode()
    write_atomic(out + ".json", lambda f: f.write(data))
    print(text)
    return text


def baseline_package(rev):
    """``budgetopt`` as of git revision ``rev``, imported as ``budgetopt_baseline`` from a
    temporary ``git archive`` export (its modules import each other relatively), so a
    benchmark can time it beside the working tree in the same run."""
    tmp = Path(tempfile.mkdtemp(prefix="budgetopt_baseline_"))
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "budgetopt"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / "budgetopt").rename(tmp / "budgetopt_baseline")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("budgetopt_baseline")
