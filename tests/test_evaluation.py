"""budgetopt.evaluation: interval and test statistics against scipy, and the report from records."""

import json

import numpy as np
import pytest
from scipy import stats

from budgetopt import evaluation


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (3, 10), (8, 10), (30, 60), (59, 60), (0, 40)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert evaluation.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


@pytest.mark.parametrize("wins, losses", [(0, 1), (9, 1), (1, 9), (5, 5), (17, 3), (0, 12), (30, 20)])
def test_sign_test_matches_scipy(wins, losses):
    assert evaluation.sign_test(wins, losses) == pytest.approx(stats.binomtest(wins, wins + losses).pvalue, abs=1e-12)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(0).normal(0.3, 1.0, size=80)
    a = evaluation.bootstrap_mean_interval(x, seed=1)
    assert a == evaluation.bootstrap_mean_interval(x, seed=1)
    assert a[0] < x.mean() < a[1]
    sem = x.std(ddof=1) / np.sqrt(x.size)  # a normal interval, independently
    assert a[0] == pytest.approx(x.mean() - 1.96 * sem, abs=0.08) and a[1] == pytest.approx(x.mean() + 1.96 * sem, abs=0.08)


def record(i, task, results):
    return {"id": f"{task}-{i:04d}", "task": task, "settings": {"question": {"results": [
        {"method": m, "compression": c, "correct": ok, "agree": ok, "kl": kl, "nll": kl + 1, "kept_fraction": 1 - c}
        for m, c, ok, kl in results]}}}


def test_summarise_counts_directly():
    rng = np.random.default_rng(3)
    records, table = [], {}
    for i in range(30):
        res = []
        for m in ("full", "a", "b"):
            ok = bool(rng.random() < {"full": 0.9, "a": 0.6, "b": 0.4}[m])
            kl = 0.0 if m == "full" else float(rng.gamma(1.0, {"a": 0.2, "b": 0.5}[m]))
            res.append((m, 0.5, ok, kl))
            table[(i, m)] = (ok, kl)
        records.append(record(i, "passkey" if i % 2 else "span", res))
    report = evaluation.summarise(json.loads(json.dumps(records)))
    block = report["settings"]["question"]
    rows = {r["method"]: r for r in block["rows"]}
    for m in ("full", "a", "b"):
        k = sum(table[(i, m)][0] for i in range(30))
        assert rows[m]["accuracy"] == k / 30 and rows[m]["n"] == 30
        assert (rows[m]["accuracy_low"], rows[m]["accuracy_high"]) == evaluation.wilson_interval(k, 30)
        assert rows[m]["kl"] == pytest.approx(np.mean([table[(i, m)][1] for i in range(30)]))
    (pair,) = block["pairs"]  # full is not paired
    assert (pair["a"], pair["b"]) == ("a", "b")
    wins = sum(table[(i, "a")][1] < table[(i, "b")][1] for i in range(30))
    assert pair["kl_wins"] == wins and pair["kl_losses"] == 30 - wins
    cw = sum(table[(i, "a")][0] and not table[(i, "b")][0] for i in range(30))
    assert pair["correct_wins"] == cw
    assert pair["kl_p"] == pytest.approx(stats.binomtest(wins, 30).pvalue)
    by_task = {(t["method"], t["task"]): t for t in block["by_task"]}
    assert by_task[("a", "span")]["n"] == 15
    text = evaluation.format_markdown(report)
    assert "| 0.50 | a | 30 |" in text and "Paired comparisons" in text and "Accuracy per task" in text


def test_report_figure(tmp_path):
    pytest.importorskip("matplotlib")
    records = [record(i, "passkey", [("full", c, True, 0.0) for c in (0.5, 0.9)] +
                      [("a", c, i % 2 == 0, c) for c in (0.5, 0.9)]) for i in range(4)]
    path = evaluation.plot_report(evaluation.summarise(records), tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000 and str(path).endswith("r.png")
