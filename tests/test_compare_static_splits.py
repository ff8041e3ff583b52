"""benchmarks/compare_static_splits.py on a run directory in the profile format."""

import json

import numpy as np

import budgetopt
from helpers import load_benchmark
from test_bench_quality import write_run


def test_both_splits_spend_the_same_share_and_match_the_library(tmp_path):
    write_run(tmp_path / "run", [60, 64, 58, 64])
    bench = load_benchmark("compare_static_splits")
    out = tmp_path / "report"
    bench.main(["--run", str(tmp_path / "run"), "--compression", "0.5", "0.8", "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    run = budgetopt.load_profile_run(tmp_path / "run")
    table, _ = budgetopt.lukv_table_from_run(run)
    curves = budgetopt.curves_from_run(run)
    for row, c in zip(saved["rows"], (0.5, 0.8)):
        keep_table, keep_alloc = np.array(row["table"]), np.array(row["allocate"])
        np.testing.assert_array_equal(keep_table, 1.0 - table[int(round(c * 100)) - 1])
        direct = budgetopt.allocate(curves, budgetopt.tokens_from_fraction(1 - c, curves.capacity))
        np.testing.assert_array_equal(keep_alloc * curves.grid.max(), direct.budgets)
        for keep in (keep_table, keep_alloc):  # the same share of the cache, to rounding
            assert np.all((keep >= 0) & (keep <= 1)) and abs(keep.mean() - (1 - c)) < 0.02
        gains = [a - t for _, _, t, a in row["top"]]
        assert gains == sorted(gains, reverse=True) and gains[0] == np.max(keep_alloc - keep_table)
    assert "compression 0.8" in out.with_suffix(".txt").read_text()
