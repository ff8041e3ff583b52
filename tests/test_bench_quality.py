"""benchmarks/bench_quality.py: its baselines against direct loops, and the quick run end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

import budgetopt
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_quality")


def test_split_integer_is_proportional_capped_and_exact(bench):
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        w = rng.random(n) * (rng.random(n) < 0.8)
        cap = rng.integers(0, 20, n)
        total = int(rng.integers(0, cap.sum() + 1))
        out = bench.split_integer(total, w, cap)
        assert out.sum() == total and np.all(out >= 0) and np.all(out <= cap)
    assert bench.split_integer(10, [1, 1, 2], 100).tolist() == [3, 2, 5]  # 2.5, 2.5, 5: tie to lower index
    assert bench.split_integer(10, [1, 1, 8], [100, 100, 4]).tolist() == [3, 3, 4]  # capped head, rest even


def adakv_reference(scores, total, sink, window, alpha):
    """AdaKV's rule as a plain loop: per layer, mark each head's top `safe` tokens, then take the
    best remaining (score, head, token) triples over the whole layer until the budget is spent."""
    layers, heads, length = scores.shape
    protected = sink + window
    m = length - protected
    layer_budget = bench_split(total - layers * heads * protected, layers, heads * m)
    out = np.zeros((layers, heads), int)
    for layer in range(layers):
        budget = layer_budget[layer]
        safe = min(int(alpha * budget / heads), m)
        rest = []
        for h in range(heads):
            mid = sorted(scores[layer, h, sink:length - window].tolist(), reverse=True)
            out[layer, h] = safe
            rest += [(-v, h) for v in mid[safe:]]
        rest.sort()
        for _, h in rest[: budget - heads * safe]:
            out[layer, h] += 1
    return out + protected


def bench_split(total, parts, cap):
    base = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    assert max(base) <= cap
    return base


def test_adakv_matches_a_direct_loop(bench):
    rng = np.random.default_rng(1)
    for _ in range(20):
        layers, heads, length = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(8, 40))
        sink, window = int(rng.integers(0, 3)), int(rng.integers(0, 4))
        scores = rng.normal(size=(layers, heads, length))
        n = layers * heads
        total = int(rng.integers(n * (sink + window), n * length + 1))
        got = bench.adakv_counts(scores, total, sink, window, alpha=0.2)
        assert got.sum() == total
        np.testing.assert_array_equal(got, adakv_reference(scores, total, sink, window, 0.2))


def test_raw_greedy_matches_a_direct_loop(bench):
    rng = np.random.default_rng(2)
    for _ in range(20):
        layers, heads, k = 2, int(rng.integers(1, 4)), int(rng.integers(2, 12))
        u = np.cumsum(rng.random((layers, heads, k)) ** 3, axis=-1)
        protected = int(rng.integers(0, 3))
        total = int(rng.integers(layers * heads * protected, layers * heads * (protected + k - 1) + 1))
        pos = np.zeros(layers * heads, int)
        flat = u.reshape(-1, k)
        for _ in range(total - layers * heads * protected):  # argmax over next gains, lowest head on ties
            gains = [flat[h, pos[h] + 1] - flat[h, pos[h]] if pos[h] + 1 < k else -np.inf for h in range(len(pos))]
            pos[int(np.argmax(gains))] += 1
        np.testing.assert_array_equal(bench.raw_greedy_counts(u, total, protected), pos.reshape(layers, heads) + protected)


def test_static_baselines_spend_the_total_within_bounds(bench):
    rng = np.random.default_rng(3)
    for _ in range(100):
        layers, heads, length = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(5, 60))
        protected = int(rng.integers(0, 5))
        n = layers * heads
        total = int(rng.integers(n * protected, n * length + 1))
        importance = rng.random((layers, heads))
        for name, b in {
            "uniform": bench.uniform_counts(layers, heads, length, total, protected),
            "pyramidkv": bench.pyramidkv_counts(layers, heads, length, total, protected),
            "headkv": bench.headkv_counts(importance, length, total, protected),
            "duoattention": bench.duoattention_counts(importance, length, total, protected),
        }.items():
            assert b.shape == (layers, heads), name
            assert b.sum() == total and b.min() >= protected and b.max() <= length, (name, b, total)


def test_pyramidkv_layers_shrink_linearly_by_beta(bench):
    b = bench.pyramidkv_counts(5, 1, 10_000, 5 * 1000, 0, beta=20)[:, 0]
    # average 1000 per layer: top layer 1000 / 20 = 50, bottom 2000 - 50 = 1950, linear between
    assert b.tolist() == [1950, 1475, 1000, 525, 50]


def test_duoattention_gives_whole_heads_by_importance(bench):
    b = bench.duoattention_counts(np.array([[0.1, 0.9, 0.5]]), 10, 2 + 2 + 10 + 5, 2)
    assert b.tolist() == [[2, 10, 7]]


def test_retained_equals_the_mass_of_the_chosen_tokens(bench):
    """Retained mass read from the curves equals the oracle mass of sink, window and the
    top-scored middle tokens, summed directly."""
    rng = np.random.default_rng(4)
    oracle = rng.random((2, 3, 30))
    scores = rng.normal(size=oracle.shape)
    sink, window = 2, 3
    counts = rng.integers(5, 31, (2, 3))
    u = budgetopt.curves_from_scores(oracle, scores, sink=sink, window=window).utility
    kept = 0.0
    for idx in np.ndindex(2, 3):
        middle = np.argsort(-scores[idx][sink:30 - window], kind="stable")[: counts[idx] - 5] + sink
        kept += oracle[idx][:sink].sum() + oracle[idx][30 - window:].sum() + oracle[idx][middle].sum()
    assert bench.retained(u, counts, sink + window) == pytest.approx(kept / oracle.sum(), rel=1e-12)


def test_quick_run_end_to_end(bench, tmp_path):
    out = tmp_path / "q.json"
    result = bench.main(["--quick", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert saved["data"] == "synthetic" and "synthetic" in (tmp_path / "q.txt").read_text()
    assert set(saved["summary"]) == set(bench.METHODS)
    per = {m: np.array(v) for m, v in result["per_request"].items()}
    gap = result["ceiling_max_relative_gap"]
    for m, values in per.items():
        assert values.shape == per["uniform"].shape and np.all((values > 0) & (values <= 1 + 1e-12))
        # No allocation spending at most the same total beats the request's own LP bound.
        assert result["max_used_over_total"][m] <= 1 + 1e-12, m
        assert np.all(values <= per["own_optimum"] + gap + 1e-12), m
    for c in ("0.5", "0.9"):
        assert saved["summary"]["uniform"][c]["gain_share"] == 0.0
        assert saved["summary"]["own_optimum"][c]["gain_share"] == pytest.approx(1.0)


def write_run(path, lengths, *, seed=0, model="tiny"):
    """A run directory in the profile format: one context per entry of ``lengths``, 2 questions."""
    rng = np.random.default_rng(seed)
    (path / "pairs").mkdir(parents=True)
    meta = {"format": "budgetopt-profile/1", "model": {"name": model, "model_type": "llama"}, "layers": 2,
            "kv_heads": 2, "scorer": {"name": "snapkv"}, "sink": 1, "window": 2, "shard": None,
            "n_pairs": 2 * len(lengths), "questions": [2] * len(lengths), "context_tokens": list(lengths)}
    (path / "meta.json").write_text(json.dumps(meta))
    for c, t in enumerate(lengths):
        scores = rng.normal(size=(2, 2, t)).astype(np.float32)
        for q in range(2):
            info = json.dumps({"context": c, "question": q, "context_tokens": t})
            np.savez(path / "pairs" / f"c{c:05d}_q{q:03d}.npz", oracle=rng.gamma(0.3, size=(2, 2, t)).astype(np.float32),
                     scores=scores, value_norms=np.ones((2, 2, t), np.float32), meta=np.array(info))


def test_run_directories_of_mixed_lengths(bench, tmp_path):
    write_run(tmp_path / "run", [60, 64, 58, 64])
    out = tmp_path / "real.json"
    result = bench.main(["--run", str(tmp_path / "run"), "--compressions", "0.5,0.8", "--output", str(out)])
    assert result["data"] == "real" and "real: tiny" in out.with_suffix(".txt").read_text()
    per = {m: np.array(v) for m, v in result["per_request"].items()}
    assert per["uniform"].shape == (8, 2)  # two folds, 4 held-out requests each
    for m, values in per.items():
        assert np.all((values > 0) & (values <= 1 + 1e-12)), m
        if result["max_used_over_total"][m] <= 1 + 1e-12:
            assert np.all(values <= per["own_optimum"] + result["ceiling_max_relative_gap"] + 1e-12), m


def test_run_directory_errors(bench, tmp_path):
    with pytest.raises(SystemExit, match="no meta.json"):
        bench.read_run_dirs([tmp_path])
    write_run(tmp_path / "a", [30, 30])
    write_run(tmp_path / "b", [30, 30], model="other")
    with pytest.raises(SystemExit, match="disagree"):
        bench.read_run_dirs([tmp_path / "a", tmp_path / "b"])
    meta, pairs = bench.read_run_dirs([tmp_path / "a"])
    assert [(c, q) for c, q, _, _ in pairs] == [(0, 0), (0, 1), (1, 0), (1, 1)] and meta["sink"] == 1


def test_runs_of_different_calibration_files_are_concatenated(bench, tmp_path):
    write_run(tmp_path / "a", [30, 32], seed=1)
    write_run(tmp_path / "b", [28], seed=2)
    for name, sha in (("a", "1" * 64), ("b", "2" * 64)):
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        meta["calibration"] = {"path": f"{name}.jsonl", "sha256": sha}
        (tmp_path / name / "meta.json").write_text(json.dumps(meta))
    meta, pairs = bench.read_run_dirs([tmp_path / "a", tmp_path / "b"])
    assert [(c, q) for c, q, _, _ in pairs] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    with np.load(tmp_path / "b" / "pairs" / "c00000_q001.npz") as z:
        np.testing.assert_array_equal(pairs[5][2], z["oracle"])
        np.testing.assert_array_equal(pairs[5][3], z["scores"])
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    meta["window"] = 3
    (tmp_path / "b" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="disagree"):
        bench.read_run_dirs([tmp_path / "a", tmp_path / "b"])
