"""The exact solver's benchmark runs in its quick mode and its figures hold together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _load():
    return load_benchmark("bench_exact")


def test_quick_mode(tmp_path):
    pytest.importorskip("cvxpy")
    bench = _load()
    out = tmp_path / "bench.json"
    res = bench.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["summary"] == res["summary"]
    assert (tmp_path / "bench.txt").read_text().startswith("bench_exact:")
    env = saved["environment"]
    assert env["command"].startswith("python benchmarks/bench_exact.py --quick") and env["versions"]["numba"]
    families = {r["family"] for r in saved["rows"]}
    assert {"concave", "attention", "non_monotone"} <= families
    assert {f"pisinger-{k}" for k in bench.PISINGER_KINDS} <= families
    for r in saved["rows"]:
        assert r["agree"], r
        assert r["exact_status"] == "optimal", r  # tiny instances: always proven
        assert r["optimum"] == r["exact_utility"]
        assert r["true_gap"] >= -r["tolerance"] and r["certificate"] >= r["true_gap"] - r["tolerance"]
        assert r["dp_status"] == "optimal" and abs(r["dp_utility"] - r["optimum"]) <= r["tolerance"]
