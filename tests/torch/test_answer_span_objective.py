"""benchmarks/answer_span_objective.py: the answer-span masks, the weighted oracles and the
held-out mass, against direct computations on a word-level tokenizer and seeded runs."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import budgetopt  # noqa: E402
from helpers import load_benchmark, write_fake_run  # noqa: E402

SINK, WINDOW = 1, 1


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("answer_span_objective")


def _calibration(tmp_path, rng, n_contexts=4, length=30):
    """Lines of random words, each with an answer of two words placed twice; returns the file and
    the positions (in tokens after the BOS token) of every answer word."""
    lines, where = [], []
    for c in range(n_contexts):
        words = [f"w{i}" for i in rng.integers(10, 100, size=length)]
        answer = [f"w{100 + c}", f"w{110 + c}"]  # words that occur nowhere else
        spots = sorted(rng.choice(np.arange(2, length - 3, 4), size=2, replace=False))
        for s in spots:
            words[s:s + 2] = answer
        lines.append(json.dumps({"id": f"c{c}", "context": " ".join(words), "questions": ["w1?"],
                                 "answers": [[" ".join(answer)]]}))
        where.append({1 + s + k for s in spots for k in range(2)})
    path = tmp_path / "cal.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, where


def _masks(bench, lm_kit, tmp_path, run_length):
    """The answer masks of 4 seeded calibration contexts (31 tokens each) against a fake run
    whose pairs hold ``run_length`` tokens, and the answer positions expected."""
    tokenizer = lm_kit.tokenizer()
    path, where = _calibration(tmp_path, np.random.default_rng(0))
    write_fake_run(tmp_path / "run", [run_length] * 4, layers=2, kv_heads=2, sink=SINK, window=WINDOW)
    run = budgetopt.load_profile_run(tmp_path / "run")
    cal, answers = bench.calibration_answers(path, tokenizer, None)
    return bench.answer_masks(run, cal, answers, tokenizer), where


def test_the_masks_mark_exactly_the_answer_tokens(bench, lm_kit, tmp_path):
    masks, where = _masks(bench, lm_kit, tmp_path, 31)
    for mask, expected in zip(masks, where):
        assert set(np.flatnonzero(mask)) == expected


def test_a_run_of_another_length_is_refused(bench, lm_kit, tmp_path):
    with pytest.raises(SystemExit, match="tokenizes to 31 tokens, the run holds 40"):
        _masks(bench, lm_kit, tmp_path, 40)


def test_weighted_oracles_add_the_normalised_span(bench, tmp_path):
    write_fake_run(tmp_path / "run", [50] * 3, layers=2, kv_heads=2, sink=SINK, window=WINDOW)
    run = budgetopt.load_profile_run(tmp_path / "run")
    masks = [np.random.default_rng(c).random(50) < 0.1 for c in range(3)]
    mix = bench.weighted(run, masks, 2.0)
    only = bench.weighted(run, masks, None)
    for o, m, w, s in zip(run.oracles, masks, mix.oracles, only.oracles):
        o = o.astype(np.float64)
        np.testing.assert_allclose(s, o * m / (o * m).sum(), rtol=1e-6)
        np.testing.assert_allclose(w, o / o.sum() + 2.0 * s, rtol=1e-6)
        assert np.all(s[..., ~m] == 0)


def _kept_mass(oracle, scores, b):
    """Direct loop: oracle mass of the sink, the window and the best-scored middle tokens."""
    t = oracle.shape[-1]
    out = 0.0
    for h in np.ndindex(oracle.shape[:-1]):
        middle = np.arange(SINK, t - WINDOW)
        order = middle[np.argsort(-scores[h][middle], kind="stable")]
        keep = list(range(SINK)) + list(range(t - WINDOW, t)) + list(order[: b[h] - SINK - WINDOW])
        out += oracle[h][keep].astype(np.float64).sum()
    return out


def test_held_out_mass_against_a_direct_loop(bench, tmp_path):
    write_fake_run(tmp_path / "run", [40] * 4, layers=2, kv_heads=3, sink=SINK, window=WINDOW, seed=3)
    run = budgetopt.load_profile_run(tmp_path / "run")
    masks = [np.random.default_rng([9, c]).random(40) < 0.15 for c in range(4)]
    rows = bench.held_out_mass(run, masks, [0.5, 0.8], 1.0)
    assert [(r["compression"], r["split"]) for r in rows] == [(c, s) for c in (0.5, 0.8) for s in bench.SPLITS]
    for row in rows:
        if row["split"] != "allocate":
            assert all(0 <= v <= 1 + 1e-9 for v in row["total_per_pair"] + row["span_per_pair"])
            continue
        total, span = [], []
        for held in range(4):
            others = [c for c in range(4) if c != held]
            mean = np.mean([budgetopt.curves_from_scores(run.oracles[c], run.scores[c], sink=SINK, window=WINDOW).utility
                            for c in others], axis=0)
            curves = budgetopt.Curves(mean, np.arange(SINK + WINDOW, 41))
            total_tokens = budgetopt.tokens_from_fraction(1 - row["compression"], curves.capacity)
            b = budgetopt.allocate(curves, total_tokens).budgets  # a token grid: f * T is the budget
            o, s, m = run.oracles[held], run.scores[held], masks[held]
            total.append(_kept_mass(o, s, b) / o.astype(np.float64).sum())
            span.append(_kept_mass(o * m, s, b) / (o * m).astype(np.float64).sum())
        np.testing.assert_allclose(row["total_per_pair"], total, rtol=1e-5)
        np.testing.assert_allclose(row["span_per_pair"], span, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--run", "{tmp}/nope"], "--run: {tmp}/nope: no such profile run directory"),
    (["--calibration", "{tmp}/nope.jsonl"], "--calibration: {tmp}/nope.jsonl: no such file"),
    (["--compression", "1.5"], "--compression: must be one of the LU-KV table's rows"),
    (["--span-weight", "nan"], "--span-weight: must be a finite number >= 0; got nan"),
    (["--evaluate", "2"], "--evaluate: a number of examples per task >= 0, with --eval-out; got 2"),
    (["--context-tokens", "0"], "--context-tokens: must be >= 1; got 0"),
])
def test_bad_arguments_end_in_one_line_before_any_output(bench, tmp_path, capsys, args, message):
    write_fake_run(tmp_path / "run", [31] * 2, layers=2, kv_heads=2, sink=SINK, window=WINDOW)
    (tmp_path / "cal.jsonl").write_text('{"context": "a b c", "questions": ["q"], "answers": [["b"]]}\n')
    given = {"--run": str(tmp_path / "run"), "--calibration": str(tmp_path / "cal.jsonl")}
    given.update(dict(zip(args[::2], (a.format(tmp=tmp_path) for a in args[1::2]))))
    with pytest.raises(SystemExit) as stop:
        bench.main([x for kv in given.items() for x in kv] + ["--out", str(tmp_path / "out"), "--model", "unused"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message.format(tmp=tmp_path) in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()


def test_compare_static_splits_refuses_a_bad_run_in_one_line(tmp_path, capsys):
    compare = load_benchmark("compare_static_splits")
    for args, message in ((["--run", str(tmp_path / "nope")], "no such profile run directory"),
                          (["--run", str(tmp_path), "--compression", "0.505"], "rows 0.01, 0.02, ..., 0.99")):
        with pytest.raises(SystemExit) as stop:
            compare.main(args + ["--out", str(tmp_path / "out")])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
