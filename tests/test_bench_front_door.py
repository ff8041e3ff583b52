"""The front door's benchmark runs in its quick mode and checks what it claims to check."""

from __future__ import annotations

import json

import numpy as np
from helpers import load_benchmark


def test_quick_mode(tmp_path):
    bench = load_benchmark("bench_front_door")
    out = tmp_path / "front"
    rows = bench.main(["--quick", "--rounds", "2", "--batch-ms", "0.5", "--out", str(out)])
    saved = json.loads((tmp_path / "front.json").read_text())
    assert saved["command"].startswith("python benchmarks/bench_front_door.py --quick")
    assert saved["rows"] == rows and len(rows) == 2
    for row in rows:
        for op in bench.OPS:
            assert row[f"{op}_new_s"] > 0
    assert "per-token 4x2x257" in (tmp_path / "front.txt").read_text()


def test_agreement_checks_can_fail():
    import budgetopt
    from budgetopt.problem import build_problem

    bench = load_benchmark("bench_front_door")
    curves = budgetopt.Curves([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]])
    a, b = budgetopt.allocate(curves, 2), budgetopt.allocate(curves, 3)
    assert bench.same_allocation(a, budgetopt.allocate(curves, 2)) and not bench.same_allocation(a, b)
    p = build_problem(curves)
    assert bench.same_problem(p, build_problem(curves))
    assert not bench.same_problem(p, build_problem(curves, min_budget=1))
    assert not bench.same_problem(p, build_problem(budgetopt.Curves(np.zeros((2, 3)), [0, 1, 3])))
