"""benchmarks/gpu_check.py runs end to end at tiny sizes on the CPU (--smoke)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_writes_summary(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    text, headline = out.stdout.rsplit("\n", 2)[0], out.stdout.rstrip().splitlines()[-1]
    assert summary == json.loads(text) and headline.startswith("headline: all_equal=True")
    assert summary["smoke"] is True and summary["equality"]["all_equal"] is True
    for check in summary["equality"]["per_length"].values():
        assert set(check["per_dtype"]) == {"float32", "float16", "bfloat16"}
        assert all(v for v in check["per_dtype"]["bfloat16"].values() if isinstance(v, bool))
    bench = summary["compact_benchmark"]
    assert bench["budgets"]["exact_total"] is True
    assert bench["budgets"]["total_kept"] == bench["budgets"]["target_total"] > 0
    for run in bench["throughput"].values():
        assert run["seconds_all_layers"] > 0 and run["gbps_issue_definition"] > 0
        assert 0 < run["fraction_of_copy_bw_gather_physical"] < run["fraction_of_copy_bw_issue_definition"]
    memory = bench["memory"]
    assert memory["compact_bytes"] < memory["full_kv_bytes"] < memory["kvpress_masking_bytes"]
    assert summary["copy_bandwidth"]["gbps_read_plus_write"] > 0
    if importlib.util.find_spec("kvpress") is None:
        assert summary["varlen"] == "skipped: kvpress is not installed"
        return
    varlen = summary["varlen"]
    assert varlen["all_ok"] is True and headline.endswith("varlen_ok=True")
    assert all(row["close"] for row in varlen["kernel_vs_loop"].values())
    for run in varlen["decode_benchmark"]["per_batch"].values():
        held = {mode: m["cache_bytes"] for mode, m in run["memory"].items()}
        assert held["varlen"] < held["gather"] < held["full"]
        assert 1.0 <= run["memory"]["varlen"]["over_sum_budgets_rows"] < 1.05
