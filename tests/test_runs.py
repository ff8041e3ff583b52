"""Profile run directories: writing, resuming bookkeeping, loading, shard merging, tables from runs.

The arrays are seeded random data written with the run-directory helpers; the torch side that
produces real ones is tested in tests/torch/test_profiling_run.py.
"""

import json
import os

import numpy as np
import pytest

from budgetopt.profile import curves_from_pairs
from budgetopt import (curves_from_run, curves_from_scores, load_profile_run, lukv_table,
                       lukv_table_from_run)
from budgetopt.errors import CurvesFileError, InvalidInputError, InvalidTypeError
from budgetopt.lukv import load_lukv_table
from budgetopt.curves import load_curves
from budgetopt.runs import FORMAT, in_shard, open_run_dir, parse_shard, write_pair
from helpers import run_cli, run_process, write_fake_run

LAYERS, KV = 3, 2
QUESTIONS = [2, 1, 3, 2]          # questions per context: 8 pairs
LENGTHS = [40, 52, 40, 47]        # tokens per context


def _meta(shard=None, lengths=LENGTHS, **extra):
    meta = {
        "format": FORMAT, "model": {"name": "tiny", "path": "/a/tiny", "model_type": "llama"},
        "layers": LAYERS, "kv_heads": KV, "heads": 4, "scorer": {"name": "knorm", "repr": "KnormPress()"},
        "sink": 2, "window": 3, "max_new_tokens": 8, "head_reduce": "max", "step_reduce": "max",
        "sampling": False, "temperature": None, "seed": 0,
        "calibration": {"path": "/a/calib.jsonl", "sha256": "ab" * 32},
        "n_contexts": len(QUESTIONS), "n_pairs": sum(QUESTIONS), "questions": QUESTIONS,
        "context_tokens": list(lengths), "shard": shard, "device": "cpu", "versions": {}, "budgetopt_version": "x",
    }
    meta.update(extra)
    return meta


def _arrays(c, q, length):
    """Deterministic arrays of pair (c, q): the same whichever process writes them."""
    rng = np.random.default_rng(1000 * c + 17)
    scores = rng.normal(size=(LAYERS, KV, length)).astype(np.float32)
    norms = rng.random((LAYERS, KV, length)).astype(np.float32)
    oracle = np.random.default_rng(1000 * c + q).gamma(0.5, size=(LAYERS, KV, length)).astype(np.float32)
    return oracle, scores, norms


def _fake_profile(run_dir, shard=None, lengths=LENGTHS, stop_after=None, **meta_extra):
    """Write the pairs of ``shard`` the way profile_model does; stop (as if killed) after k pairs."""
    finished = open_run_dir(run_dir, _meta(shard=None if shard is None else f"{shard[0]}/{shard[1]}",
                                           lengths=lengths, **meta_extra))
    written = 0
    i = 0
    for c, n in enumerate(QUESTIONS):
        for q in range(n):
            if in_shard(i, shard) and (c, q) not in finished:
                if stop_after is not None and written == stop_after:
                    return written
                oracle, scores, norms = _arrays(c, q, lengths[c])
                write_pair(run_dir, c, q, oracle=oracle, scores=scores, value_norms=norms,
                           meta={"context": c, "question": q, "context_tokens": lengths[c]})
                written += 1
            i += 1
    return written


def test_load_returns_pairs_in_global_order_with_shared_context_arrays(tmp_path):
    _fake_profile(tmp_path / "run")
    run = load_profile_run(tmp_path / "run")
    assert run.pairs == ((0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1))
    assert run.missing == () and run.meta["shard"] is None and run.head_shape == (LAYERS, KV)
    for (c, q), oracle, scores, norms, pm in zip(run.pairs, run.oracles, run.scores, run.value_norms, run.pair_meta):
        o, s, v = _arrays(c, q, LENGTHS[c])
        np.testing.assert_array_equal(oracle, o)
        np.testing.assert_array_equal(scores, s)
        np.testing.assert_array_equal(norms, v)
        assert oracle.dtype == np.float32 and pm["context"] == c and pm["question"] == q
    assert run.scores[3] is run.scores[5] and run.value_norms[0] is run.value_norms[1]
    assert "pairs=8" in repr(run)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_shards_merge_into_the_unsharded_run(tmp_path, n):
    _fake_profile(tmp_path / "full")
    dirs = []
    for k in reversed(range(n)):  # any order
        dirs.append(tmp_path / f"s{k}")
        _fake_profile(dirs[-1], shard=(k, n), device=f"cuda:{k}")
    full = load_profile_run(tmp_path / "full")
    merged = load_profile_run(*dirs)
    assert merged.pairs == full.pairs and merged.meta["shard"] is None
    for a, b in zip(full.oracles + full.scores + full.value_norms, merged.oracles + merged.scores + merged.value_norms):
        np.testing.assert_array_equal(a, b)
    # One shard alone is partial: its pairs are exactly those with i % n == k.
    one = load_profile_run(dirs[-1], partial=True)
    assert one.pairs == tuple(p for i, p in enumerate(full.pairs) if i % n == 0)
    assert set(one.missing) == set(full.pairs) - set(one.pairs)
    with pytest.raises(InvalidInputError, match=r"pairs are missing \(c00000_q001"):
        load_profile_run(dirs[-1])
    t_full, m_full = lukv_table_from_run(full, workers=1)
    t_merged, m_merged = lukv_table_from_run(merged, workers=2)
    np.testing.assert_array_equal(t_full, t_merged)
    assert m_full == m_merged


def test_shard_parsing():
    assert parse_shard("2/5") == (2, 5) and parse_shard((0, 1)) == (0, 1) and parse_shard(None) is None
    for bad, error in [("5/5", InvalidInputError), ("1/0", InvalidInputError), ("a/b", InvalidInputError),
                       ("-1/3", InvalidInputError), ((1.0, 2), InvalidTypeError), (3, InvalidTypeError)]:
        with pytest.raises(error, match="`shard`"):
            parse_shard(bad)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    _fake_profile(tmp_path / "full")
    run_dir = tmp_path / "crashed"
    assert _fake_profile(run_dir, stop_after=3) == 3
    # A write killed mid-way leaves a temporary file; it is not a pair and is cleaned up.
    leftover = run_dir / "pairs" / ".c00002_q000.npz.abc123.tmp"
    leftover.write_bytes(b"half a pair")
    assert load_profile_run(run_dir, partial=True).pairs == ((0, 0), (0, 1), (1, 0))
    assert _fake_profile(run_dir) == 5  # only the 5 unfinished pairs are written
    assert not leftover.exists()
    full, resumed = load_profile_run(tmp_path / "full"), load_profile_run(run_dir)
    assert full.pairs == resumed.pairs
    for a, b in zip(full.oracles, resumed.oracles):
        np.testing.assert_array_equal(a, b)


def test_reopening_with_other_settings_is_refused_or_started_over(tmp_path):
    run_dir = tmp_path / "run"
    _fake_profile(run_dir)
    with pytest.raises(InvalidInputError, match=r"holds a run with other settings \(max_new_tokens: 8 vs 16\)"):
        open_run_dir(run_dir, _meta(max_new_tokens=16))
    with pytest.raises(InvalidInputError, match=r"other settings \(shard: null vs \"0/2\"\)"):
        open_run_dir(run_dir, _meta(shard="0/2"))
    # Device, versions and paths may differ (another machine resumes the run).
    assert len(open_run_dir(run_dir, _meta(device="cuda:3", model={"name": "tiny", "path": "/b/tiny",
                                                                    "model_type": "llama"}))) == 8
    assert open_run_dir(run_dir, _meta(max_new_tokens=16), resume=False) == set()
    assert os.listdir(run_dir / "pairs") == []
    assert json.loads((run_dir / "meta.json").read_text())["max_new_tokens"] == 16


def test_a_non_run_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CurvesFileError, match=r"is not empty and not a profile run directory"):
        open_run_dir(tmp_path, _meta())
    with pytest.raises(CurvesFileError, match=r"parent directory .* does not exist"):
        open_run_dir(tmp_path / "no" / "run", _meta())
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_shards_of_different_runs_do_not_merge(tmp_path):
    _fake_profile(tmp_path / "a", shard=(0, 2))
    _fake_profile(tmp_path / "b", shard=(1, 2), max_new_tokens=64)
    with pytest.raises(InvalidInputError, match=r"b: is not a shard of the same run as .*a \(max_new_tokens: 8 vs 64\)"):
        load_profile_run(tmp_path / "a", tmp_path / "b")
    _fake_profile(tmp_path / "c", shard=(0, 2))
    with pytest.raises(InvalidInputError, match=r"pair c00000_q000.npz is in both"):
        load_profile_run(tmp_path / "a", tmp_path / "c")


def _damage(tmp_path, members):
    run_dir = tmp_path / "run"
    _fake_profile(run_dir)
    path = run_dir / "pairs" / "c00001_q000.npz"
    np.savez(path, **members)
    return run_dir


@pytest.mark.parametrize(
    "members,match",
    [
        ({"oracle": np.zeros((LAYERS, KV, 52), np.float32)}, r"c00001_q000.npz: missing member\(s\) scores, value_norms, meta"),
        ({"oracle": np.zeros((LAYERS, KV, 51), np.float32), "scores": np.zeros((LAYERS, KV, 52), np.float32),
          "value_norms": np.zeros((LAYERS, KV, 52), np.float32), "meta": np.array("{}")},
         r"member 'oracle' must be float32 of shape \(3, 2, 52\).*got float32 \(3, 2, 51\)"),
        ({"oracle": np.zeros((LAYERS, KV, 52)), "scores": np.zeros((LAYERS, KV, 52), np.float32),
          "value_norms": np.zeros((LAYERS, KV, 52), np.float32), "meta": np.array("{}")},
         r"member 'oracle' must be float32.*got float64"),
        ({"oracle": np.array([{"x": 1}], dtype=object), "scores": np.zeros(1), "value_norms": np.zeros(1),
          "meta": np.array("{}")}, r"holds an object \(pickled\) array; budgetopt never unpickles"),
        ({k: np.zeros((LAYERS, KV, 52), np.float32) for k in ("oracle", "scores", "value_norms")} | {"meta": np.array("[")},
         r"member 'meta' is not a JSON string"),
        ({k: np.zeros((LAYERS, KV, 52), np.float32) for k in ("oracle", "scores", "value_norms")}
         | {"meta": np.array('{"context": 0, "question": 0}')}, r"its meta does not name context 1, question 0"),
    ],
)
def test_damaged_pair_files_are_named(tmp_path, members, match):
    run_dir = _damage(tmp_path, members)
    with pytest.raises(CurvesFileError, match=match):
        load_profile_run(run_dir)


def test_bad_directories(tmp_path):
    with pytest.raises(CurvesFileError, match=r"no such profile run directory"):
        load_profile_run(tmp_path / "nothing")
    with pytest.raises(CurvesFileError, match=r"not a profile run directory \(no meta.json\)"):
        load_profile_run(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": "other"}')
    with pytest.raises(CurvesFileError, match=r"not a budgetopt profile run \(format 'other'"):
        load_profile_run(tmp_path)
    with pytest.raises(InvalidInputError, match=r"at least one profile run directory"):
        load_profile_run()
    _fake_profile(tmp_path / "run")
    (tmp_path / "run" / "pairs" / "c00009_q000.npz").write_bytes(b"")
    with pytest.raises(CurvesFileError, match=r"context 9, question 0 is not a pair of this run"):
        load_profile_run(tmp_path / "run")


def test_table_and_curves_equal_the_direct_computation(tmp_path):
    lengths = [40] * 4
    _fake_profile(tmp_path / "run", lengths=lengths)
    run = load_profile_run(tmp_path / "run")
    oracles = [_arrays(c, q, 40)[0] for c, q in run.pairs]
    scores = [_arrays(c, q, 40)[1] for c, q in run.pairs]
    table, meta = lukv_table_from_run(run, min_keep_fraction=0.05, aggregate="mean_curve")
    np.testing.assert_array_equal(table, lukv_table(oracles, scores, sink=2, window=3, min_keep_fraction=0.05,
                                                    aggregate="mean_curve"))
    assert meta["sink"] == 2 and meta["window"] == 3 and meta["model"]["name"] == "tiny"
    assert meta["calibration"]["sha256"] == "ab" * 32 and meta["lukv"]["aggregate"] == "mean_curve"
    table, meta = lukv_table_from_run(run, sink=0, window=1)
    np.testing.assert_array_equal(table, lukv_table(oracles, scores, sink=0, window=1))
    assert (meta["sink"], meta["profile_sink"]) == (0, 2)
    curves = curves_from_run(run, aggregate="median_curve")
    expected = np.median([curves_from_scores(o, s, sink=2, window=3).utility for o, s in zip(oracles, scores)], axis=0)
    np.testing.assert_allclose(curves.utility, expected, rtol=1e-12)
    assert curves.meta["aggregate"] == "median_curve" and curves.meta["pairs"] == 8


def test_contexts_of_different_lengths(tmp_path):
    _fake_profile(tmp_path / "run")
    run = load_profile_run(tmp_path / "run")
    table, _ = lukv_table_from_run(run)  # ratios average across lengths
    singles = [lukv_table([o], s, sink=2, window=3) for o, s in zip(run.oracles, run.scores)]
    np.testing.assert_allclose(table, np.mean(singles, axis=0), rtol=0, atol=1e-12)
    with pytest.raises(InvalidInputError, match=r"need aggregate='mean_ratio'"):
        lukv_table_from_run(run, aggregate="mean_curve")


def _relative_reference(run, sink, window, resolution, reduce):
    """Each pair's token curve read at k * T / R tokens by np.interp, one head at a time."""
    start = int(np.ceil(resolution * (sink + window) / min(o.shape[-1] for o in run.oracles) - 1e-12))
    k = np.arange(start, resolution + 1)
    per_pair = []
    for oracle, scores in zip(run.oracles, run.scores):
        c = curves_from_scores(oracle, scores, sink=sink, window=window)
        x = k * oracle.shape[-1] / resolution
        per_pair.append([[np.interp(x, c.grid, c.utility[layer, h]) for h in range(KV)] for layer in range(LAYERS)])
    return k, reduce(np.array(per_pair), axis=0)


@pytest.mark.parametrize("aggregate, reduce", [("mean_curve", np.mean), ("median_curve", np.median)])
@pytest.mark.parametrize("resolution", [None, 7, 40, 1000])
def test_curves_of_contexts_of_different_lengths_are_on_a_relative_grid(tmp_path, aggregate, reduce, resolution):
    _fake_profile(tmp_path / "run")                       # contexts of 40, 52 and 47 tokens
    run = load_profile_run(tmp_path / "run")
    curves = curves_from_run(run, aggregate=aggregate, resolution=resolution)
    r = 1000 if resolution is None else resolution
    k, expected = _relative_reference(run, 2, 3, r, reduce)
    np.testing.assert_array_equal(curves.grid, k)
    np.testing.assert_allclose(curves.utility, expected, rtol=1e-12, atol=1e-12)
    assert curves.capacity == LAYERS * KV * r and curves.grid[0] * 40 >= 5 * r  # the floor covers sink + window
    m = curves.meta
    assert (m["grid"], m["resolution"], m["min_length"], m["max_length"]) == ("relative", r, 40, 52)
    assert (m["sink"], m["window"], m["pairs"], m["aggregate"]) == (2, 3, 8, aggregate) and "length" not in m
    # The whole context is the mean of the full masses; half of it, for a 40-token context, 20 tokens.
    full = reduce([o.astype(np.float64).sum(-1) for o in run.oracles], axis=0)
    np.testing.assert_allclose(curves.utility[..., -1], full, rtol=1e-12)


def test_one_length_runs_keep_their_token_grid_bit_for_bit(tmp_path):
    _fake_profile(tmp_path / "run", lengths=[40] * 4)
    run = load_profile_run(tmp_path / "run")
    stack = np.stack([curves_from_scores(o, s, sink=2, window=3).utility for o, s in zip(run.oracles, run.scores)])
    curves = curves_from_run(run)
    np.testing.assert_array_equal(curves.utility, stack.mean(axis=0))
    assert curves.grid.tolist() == list(range(5, 41)) and curves.meta["length"] == 40 and "grid" not in curves.meta
    # Asked for, a relative grid of one point per token is the token grid again.
    rel = curves_from_run(run, resolution=40)
    np.testing.assert_array_equal(rel.grid, curves.grid)
    np.testing.assert_allclose(rel.utility, curves.utility, rtol=1e-15)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"resolution": 0}, InvalidInputError, "`resolution` must be >= 1; got 0"),
    ({"resolution": 10**6 + 1}, InvalidInputError, "`resolution` must be at most 1000000"),
    ({"resolution": 2.5}, InvalidTypeError, "`resolution`"),
    ({"resolution": True}, InvalidTypeError, "`resolution`"),
    ({"sink": 30, "window": 10}, InvalidInputError, r"`sink` \+ `window` \(30 \+ 10\) must be below every context's "
                                                    r"token count; the shortest context has 40"),
])
def test_relative_grid_errors_name_the_argument(tmp_path, kwargs, error, match):
    _fake_profile(tmp_path / "run")
    with pytest.raises(error, match=match):
        curves_from_run(load_profile_run(tmp_path / "run"), **kwargs)


def test_curves_from_pairs_takes_contexts_of_different_lengths():
    rng = np.random.default_rng(5)
    oracles = [rng.gamma(0.5, size=(2, 3, n)) for n in (30, 45, 33)]
    scores = [rng.normal(size=o.shape) for o in oracles]
    c = curves_from_pairs(oracles, scores, sink=1, window=2, resolution=60)
    k = np.arange(int(np.ceil(60 * 3 / 30)), 61)
    want = np.mean([[np.interp(k * o.shape[-1] / 60, np.arange(3, o.shape[-1] + 1),
                               curves_from_scores(o, s, sink=1, window=2).utility2d[h]) for h in range(6)]
                    for o, s in zip(oracles, scores)], axis=0).reshape(2, 3, -1)
    np.testing.assert_allclose(c.utility, want, rtol=1e-12)
    with pytest.raises(InvalidInputError, match=r"`oracles\[1\]` must have the head shape of `oracles\[0\]`"):
        curves_from_pairs([oracles[0], oracles[1][:1]], [scores[0], scores[1][:1]])


# -- the command line on run directories ------------------------------------------------------
def _cli(argv, capsys):
    return run_cli(capsys, *argv)


def test_cli_lukv_table_and_curves_from_shards(tmp_path, capsys):
    _fake_profile(tmp_path / "full", lengths=[40] * 4)
    for k in range(3):
        _fake_profile(tmp_path / f"s{k}", shard=(k, 3), lengths=[40] * 4)
    code, _, err = _cli(["lukv-table", tmp_path / "full", "-o", tmp_path / "full.npy", "--no-progress"], capsys)
    assert code == 0, err
    code, _, err = _cli(["lukv-table", tmp_path / "s2", tmp_path / "s0", tmp_path / "s1", "-o", tmp_path / "merged.npy",
                         "--workers", 1], capsys)
    assert code == 0, err
    assert "sink 2, window 3" in err
    np.testing.assert_array_equal(load_lukv_table(tmp_path / "full.npy"), load_lukv_table(tmp_path / "merged.npy"))
    info = json.loads((tmp_path / "merged.json").read_text())
    assert info["table"] == "merged.npy" and info["format"] == "budgetopt-lukv-table/1"
    assert info["model"]["name"] == "tiny" and info["scorer"]["name"] == "knorm"
    assert (info["sink"], info["window"], info["calibration"]["sha256"]) == (2, 3, "ab" * 32)
    assert info["max_new_tokens"] == 8 and info["pairs"] == 8 and info["complete"] is True
    code, _, err = _cli(["curves", tmp_path / "s1", tmp_path / "s0", tmp_path / "s2", "--window", 1,
                         "-o", tmp_path / "c.npz"], capsys)
    assert code == 0, err
    curves = load_curves(tmp_path / "c.npz")
    assert curves.meta["window"] == 1 and curves.meta["sink"] == 2
    np.testing.assert_array_equal(curves.utility, curves_from_run(load_profile_run(tmp_path / "full"), window=1).utility)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["lukv-table", "{s0}", "-o", "{out}"], r"pairs are missing"),
        (["lukv-table", "{s0}", "{s0b}", "-o", "{out}"], r"is in both"),
        (["lukv-table", "{s0}", "--oracle", "x.npy", "--scores", "y.npy", "-o", "{out}"], r"not both"),
        (["lukv-table", "--oracle", "x.npy", "--scores", "y.npy", "-o", "{out}"], r"the arguments --sink, --window"),
        (["lukv-table", "{tmp}/nothing", "-o", "{out}"], r"no such profile run directory"),
        (["curves", "{s0}", "{s1}", "--resolution", "2000000", "-o", "{tmp}/c.npz"], r"`resolution` must be at most"),
    ],
)
def test_cli_errors_exit_2_and_write_nothing(tmp_path, capsys, argv, match):
    _fake_profile(tmp_path / "s0", shard=(0, 2))
    _fake_profile(tmp_path / "s0b", shard=(0, 2))
    _fake_profile(tmp_path / "s1", shard=(1, 2))
    before = sorted(os.listdir(tmp_path))
    names = {"s0": tmp_path / "s0", "s0b": tmp_path / "s0b", "s1": tmp_path / "s1", "out": tmp_path / "t.npy", "tmp": tmp_path}
    code, out, err = _cli([a.format(**names) for a in argv], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(match, err), err
    assert sorted(os.listdir(tmp_path)) == before


def test_runs_written_by_other_tools_need_only_the_documented_keys(tmp_path):
    # The format requires "layers", "kv_heads", "n_pairs", ... but not the per-context question
    # and token counts budgetopt records: pairs and lengths then come from the files.
    _fake_profile(tmp_path / "run")
    full = load_profile_run(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    del meta["questions"], meta["context_tokens"]
    (tmp_path / "run" / "meta.json").write_text(json.dumps(meta))
    again = load_profile_run(tmp_path / "run")
    assert again.pairs == full.pairs and again.meta["shard"] is None
    for a, b in zip(full.oracles + full.scores, again.oracles + again.scores):
        np.testing.assert_array_equal(a, b)
    os.unlink(tmp_path / "run" / "pairs" / "c00002_q001.npz")
    with pytest.raises(InvalidInputError, match=r"1 of 8 pairs are missing \(the run's meta.json does not record which\)"):
        load_profile_run(tmp_path / "run")
    assert len(load_profile_run(tmp_path / "run", partial=True).pairs) == 7
    np.savez(tmp_path / "run" / "pairs" / "c00002_q002.npz", oracle=np.zeros((LAYERS, KV, 41), np.float32),
             scores=np.zeros((LAYERS, KV, 41), np.float32), value_norms=np.zeros((LAYERS, KV, 41), np.float32),
             meta=np.array('{"context": 2, "question": 2}'))
    with pytest.raises(CurvesFileError, match=r"c00002_q002.npz: member 'oracle' must be float32 of shape \(3, 2, 40\)"):
        load_profile_run(tmp_path / "run", partial=True)


def test_cli_shard_argument_reads_torchrun_variables(monkeypatch):
    from budgetopt.cli_profile import shard_argument

    assert shard_argument("1/4") == (1, 4)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert shard_argument("env") == (3, 8)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(InvalidInputError, match="--shard env needs the RANK and WORLD_SIZE"):
        shard_argument("env")
    with pytest.raises(InvalidInputError, match=r"--shard K/N needs N >= 1 and 0 <= K < N; got 4/4"):
        shard_argument("4/4")


def test_pair_files_are_read_within_the_array_size_limit(tmp_path, monkeypatch):
    """Pair files go through the bounded reader: a member larger than the limit is refused
    by its declared size, naming the member and the limit's environment variable."""
    _fake_profile(tmp_path / "run")
    assert len(load_profile_run(tmp_path / "run").pairs) == 8
    monkeypatch.setenv("BUDGETOPT_MAX_ARRAY_BYTES", "64")
    with pytest.raises(CurvesFileError, match=r"'oracle'.*BUDGETOPT_MAX_ARRAY_BYTES"):
        load_profile_run(tmp_path / "run")


def test_cli_outputs_name_the_relative_unit(tmp_path):
    write_fake_run(tmp_path / "run", [37, 52, 44, 61], layers=3, kv_heads=2, sink=2, window=1)
    assert run_process("curves", tmp_path / "run", "--resolution", 500, "-o", tmp_path / "c.npz").returncode == 0
    table = run_process("solve", tmp_path / "c.npz", "--budget", 0.25, "--format", "table")
    assert table.returncode == 0 and "used=750/750 units of 1/500 of each context" in table.stdout
    swept = run_process("sweep", tmp_path / "c.npz", "--budgets", "0.2,0.4")
    assert swept.returncode == 0 and "capacity=3000 units of 1/500 of each context" in swept.stdout
    heat = run_process("plot", tmp_path / "c.npz", "--heatmap", "--budget", 0.3, "-o", tmp_path / "h.png")
    assert heat.returncode == 0, heat.stderr
