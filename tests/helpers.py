"""Small helpers shared by test modules: run the CLI in this process, load a benchmark script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_cli(capture, *argv):
    """``(exit code, stdout, stderr)`` of ``budgetopt argv`` run in this process; ``capture``
    is pytest's ``capfd`` or ``capsys`` fixture (emptied first)."""
    from budgetopt import cli

    capture.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capture.readouterr()
    return code, out, err


def load_benchmark(name):
    """The module ``benchmarks/<name>.py``, freshly executed (tests run its quick mode)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
