"""budgetopt.evaluation: interval and test statistics against scipy, and the report from records."""

import json
from pathlib import Path

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


def test_summarise_unanswered_examples_directly():
    """Examples without answers (correct is None) count in agreement and KL, not in accuracy or
    the correctness test; accuracy is None where no example of a cell has answers."""
    rng = np.random.default_rng(5)
    records, table = [], {}
    for i in range(40):
        answered = i % 3 != 0
        res = []
        for m in ("full", "a", "b"):
            ok = bool(rng.random() < {"full": 0.9, "a": 0.6, "b": 0.4}[m]) if answered else None
            kl = 0.0 if m == "full" else float(rng.gamma(1.0, {"a": 0.2, "b": 0.5}[m]))
            res.append((m, 0.5, ok, kl))
            table[(i, m)] = (ok, kl)
        records.append(record(i, "user", res))
    for r in records:  # agreement independent of correctness
        for res in r["settings"]["question"]["results"]:
            res["agree"] = bool(rng.random() < 0.5)
    report = evaluation.summarise(json.loads(json.dumps(records)))
    block = report["settings"]["question"]
    scored = [i for i in range(40) if i % 3 != 0]
    assert report["n_examples"] == 40 and report["n_answered"] == len(scored)
    rows = {r["method"]: r for r in block["rows"]}
    for m in ("full", "a", "b"):
        k = sum(table[(i, m)][0] for i in scored)
        row = rows[m]
        assert (row["n"], row["n_answered"], row["accuracy"]) == (40, len(scored), k / len(scored))
        assert (row["accuracy_low"], row["accuracy_high"]) == evaluation.wilson_interval(k, len(scored))
        assert row["kl"] == pytest.approx(np.mean([table[(i, m)][1] for i in range(40)]))
        agree = [res["agree"] for r in records for res in r["settings"]["question"]["results"] if res["method"] == m]
        assert row["agreement"] == pytest.approx(np.mean(agree))
    (pair,) = block["pairs"]
    wins = sum(table[(i, "a")][1] < table[(i, "b")][1] for i in range(40))
    assert (pair["n"], pair["n_answered"], pair["kl_wins"], pair["kl_losses"]) == (40, len(scored), wins, 40 - wins)
    cw = sum(table[(i, "a")][0] and not table[(i, "b")][0] for i in scored)
    cl = sum(table[(i, "b")][0] and not table[(i, "a")][0] for i in scored)
    assert (pair["correct_wins"], pair["correct_losses"]) == (cw, cl)
    assert pair["correct_p"] == pytest.approx(stats.binomtest(cw, cw + cl).pvalue)
    text = evaluation.format_markdown(report)
    row = rows["a"]
    assert (f"| 0.50 | a | 40 | {row['accuracy']:.2f} ({row['accuracy_low']:.2f}-{row['accuracy_high']:.2f}) "
            f"n={len(scored)} |") in text
    assert f"| {cw}/{cl} n={len(scored)} | {pair['correct_p']:.3g} |" in text
    assert "14 of the 40 example(s) have no accepted answers" in text

    # no example answered: accuracy and the correctness test are not applicable
    none = [r for r in records if int(r["id"].split("-")[1]) % 3 == 0]
    report = evaluation.summarise(none)
    block = report["settings"]["question"]
    assert report["n_answered"] == 0
    assert all(r["accuracy"] is None and r["accuracy_low"] is None and r["n_answered"] == 0 for r in block["rows"])
    assert all(t["accuracy"] is None for t in block["by_task"])
    (pair,) = block["pairs"]
    assert (pair["correct_wins"], pair["correct_losses"], pair["correct_p"]) == (None, None, None)
    assert pair["kl_diff"] == pytest.approx(np.mean([table[(i, "a")][1] - table[(i, "b")][1] for i in range(0, 40, 3)]))
    text = evaluation.format_markdown(json.loads(json.dumps(report)))
    assert "| 0.50 | a | 14 | – |" in text and "| – | – |" in text
    assert "No example has accepted answers" in text and "have no accepted answers" not in text


COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("name", ["evaluate_smollm2_1k", "evaluate_smollm2_2k_query_aware",
                                  "evaluate_smollm2_1k_probes/gain_0.5"])
def test_reports_with_answers_are_unchanged(name):
    """Reports of examples that all have answers, rebuilt from their committed example records,
    equal the committed reports: report.md byte for byte, report.json value for value apart from
    the n_answered counts (equal to n there; reports written before they existed lack them)."""
    folder = COMMITTED / name
    meta = json.loads((folder / "meta.json").read_text())
    report = evaluation.summarise(evaluation.load_records(folder))
    assert evaluation.format_markdown(report, meta=meta) + "\n" == (folder / "report.md").read_text(encoding="utf-8")

    def without_counts(obj):
        if isinstance(obj, dict):
            return {k: without_counts(v) for k, v in obj.items() if k != "n_answered"}
        return [without_counts(v) for v in obj] if isinstance(obj, list) else obj

    committed = json.loads((folder / "report.json").read_text())
    committed_meta = committed.pop("meta")
    assert committed_meta == {k: v for k, v in meta.items() if k not in ("format", "versions")}
    assert without_counts(json.loads(json.dumps(report))) == without_counts(committed)
    assert report["n_answered"] == report["n_examples"]
    for block in report["settings"].values():
        assert all(r["n_answered"] == r["n"] for r in block["rows"] + block["by_task"] + block["pairs"])


def test_report_figure_without_accuracy(tmp_path):
    pytest.importorskip("matplotlib")
    records = [record(i, "user", [("full", c, None, 0.0) for c in (0.5, 0.9)] +
                      [("a", c, None, c) for c in (0.5, 0.9)]) for i in range(3)]
    evaluation.plot_report(evaluation.summarise(records), tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
