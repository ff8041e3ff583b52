"""Probe queries in a calibration file: profiled like questions, stored beside the pairs, never pairs.

Tiny randomly initialised models (no download). References: the engine called directly on
the tokenizer's own ids, and the same calibration file without probes.
"""

import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("kvpress")
pytest.importorskip("tokenizers")

from budgetopt import load_profile_run  # noqa: E402
from budgetopt.calibration import DEFAULT_PROBES  # noqa: E402
from budgetopt.errors import InvalidInputError  # noqa: E402
from budgetopt.runs import load_probe_run, lukv_table_from_run  # noqa: E402
from budgetopt.torch import profiler  # noqa: E402
from budgetopt.torch.profiling.run import encode_calibration, profile_model  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the tiny models of test_profiling_run
from test_profiling_run import WORDS, assert_runs_equal, make_model, make_tokenizer  # noqa: E402

PROBES = ["what is the big tree ?", "where did the dog ran ?"]


def write(path, probes=True, tokens=3, n_contexts=3, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for c in range(n_contexts):
            line = {"context": " ".join(rng.choice(WORDS, size=int(rng.integers(30, 45)))) + " .",
                    "questions": [" ".join(rng.choice(WORDS, size=4)) + " ?" for _ in range(1 + c % 2)]}
            if probes and c != 1:  # context 1 has none
                line["probes"] = PROBES if c == 0 else probes
                if tokens is not None:
                    line["probe_tokens"] = tokens + c
            f.write(json.dumps(line) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", "sdpa")


def test_probe_oracles_are_the_engines_and_real_pairs_are_unchanged(llama, tmp_path):
    tokenizer = make_tokenizer()
    with_probes = write(tmp_path / "p.jsonl", probes=PROBES[:1])
    without = write(tmp_path / "q.jsonl", probes=False)
    kwargs = dict(scorer="knorm", max_new_tokens=4, sink=2, window=2, progress=False)
    run = profile_model(llama, tokenizer, with_probes, out_dir=tmp_path / "run", **kwargs)
    plain = profile_model(llama, tokenizer, without, out_dir=tmp_path / "plain", **kwargs)
    # the real questions: the same pairs, arrays and table as without probes
    assert_runs_equal(run, plain)
    np.testing.assert_array_equal(lukv_table_from_run(run)[0], lukv_table_from_run(plain)[0])
    assert "probes" not in plain.meta and "probe_tokens" not in plain.meta and plain.probes is None
    assert run.meta["probes"] == [2, 0, 1] and run.meta["probe_tokens"] == [3, 0, 5]
    assert sorted(os.listdir(tmp_path / "run" / "probes")) == ["c00000_p000.npz", "c00000_p001.npz",
                                                               "c00002_p000.npz"]
    assert load_probe_run(tmp_path / "plain").pairs == ()
    probes = load_probe_run(tmp_path / "run")
    assert probes.pairs == ((0, 0), (0, 1), (2, 0)) and run.probes.pairs == probes.pairs
    assert_runs_equal(probes, run.probes)
    # reference: the engine on the tokenizer's ids of context and probe (no template: BOS + text, probe + "\n")
    lines = [json.loads(line) for line in open(with_probes)]
    for i, (c, p) in enumerate(probes.pairs):
        ctx = tokenizer.encode("<s>" + lines[c]["context"], add_special_tokens=False)
        ids = tokenizer.encode(lines[c]["probes"][p] + "\n", add_special_tokens=False)
        k = lines[c]["probe_tokens"]
        direct = profiler.profile_context(llama, torch.tensor(ctx), [torch.tensor(ids)], scorer="knorm",
                                          max_new_tokens=k)
        np.testing.assert_array_equal(probes.oracles[i], direct.oracles[0])
        np.testing.assert_array_equal(probes.scores[i], direct.scores)
        assert probes.pair_meta[i]["new_tokens"] == direct.new_tokens[0] <= k
        assert probes.pair_meta[i]["probe"] == p and probes.pair_meta[i]["run_id"] == run.meta["run_id"]
        # a probe is not a question: its oracle differs from every real pair of its context
        assert all(not np.array_equal(probes.oracles[i], o) for (cc, _), o in zip(run.pairs, run.oracles) if cc == c)
    # in memory: the same
    mem = profile_model(llama, tokenizer, with_probes, **kwargs)
    assert_runs_equal(mem, run)
    assert_runs_equal(mem.probes, probes)


def test_default_probes_and_tokens(llama, tmp_path):
    path = write(tmp_path / "p.jsonl", probes=True, tokens=None, n_contexts=1)
    (enc,) = encode_calibration(make_tokenizer(), path, sink=1, window=1, max_new_tokens=2)
    assert len(enc.probe_ids) == len(PROBES)  # context 0 lists its own
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"context": "the cat sat on the mat .", "questions": ["who ?"], "probes": True}) + "\n")
    (enc,) = encode_calibration(make_tokenizer(), str(path), sink=1, window=1, max_new_tokens=2)
    assert len(enc.probe_ids) == len(DEFAULT_PROBES)
    with pytest.raises(InvalidInputError, match=r"d.jsonl:1: probes\[0\]: context \(8 tokens\) \+ probe \(\d+\) \+ "
                                                r"probe_tokens \(32\) = \d+ tokens exceeds the model's maximum length "
                                                r"\(30\)"):
        encode_calibration(make_tokenizer(), str(path), sink=1, window=1, max_new_tokens=2, max_length=30)


@pytest.mark.parametrize("sampling", [False, True])
def test_sharded_and_resumed_probe_runs_equal_one_run(llama, tmp_path, sampling):
    tokenizer = make_tokenizer()
    calib = write(tmp_path / "p.jsonl")
    kwargs = dict(scorer="knorm", max_new_tokens=2, sampling=sampling, seed=3, progress=False)
    full = profile_model(llama, tokenizer, calib, out_dir=tmp_path / "full", **kwargs)
    shards = [tmp_path / f"s{k}" for k in range(2)]
    for k, d in enumerate(shards):
        part = profile_model(llama, tokenizer, calib, out_dir=d, shard=f"{k}/2", **kwargs)
        assert part.probes.pairs == tuple(p for i, p in enumerate(full.probes.pairs) if i % 2 == k)
    assert_runs_equal(load_profile_run(*shards), full)
    assert_runs_equal(load_probe_run(*shards), load_probe_run(tmp_path / "full"))
    # a finished probe is not profiled again; a missing one is
    os.unlink(tmp_path / "full" / "probes" / "c00002_p001.npz")
    with pytest.raises(InvalidInputError, match=r"1 of 5 probes are missing \(c00002_p001.npz\)"):
        load_probe_run(tmp_path / "full")
    calls = []
    import budgetopt.torch.profiling.context as engine_module

    engine = engine_module.profile_context
    try:
        engine_module.profile_context = lambda *a, **k: (calls.append(len(a[2])), engine(*a, **k))[1]
        again = profile_model(llama, tokenizer, calib, out_dir=tmp_path / "full", **kwargs)
    finally:
        engine_module.profile_context = engine
    assert calls == [1]
    assert_runs_equal(again.probes, full.probes)


def test_cli_profile_with_probes_gives_the_same_table(tmp_path, capsys):
    from budgetopt import load_lukv_table
    from helpers import run_cli
    from test_profiling_run import TEMPLATE

    model_dir = tmp_path / "tiny-llama"
    make_model("llama", "sdpa").save_pretrained(model_dir)
    make_tokenizer(TEMPLATE).save_pretrained(model_dir)
    tables = []
    for name, probes in (("p", True), ("q", False)):
        calib = write(tmp_path / f"{name}.jsonl", probes=probes, tokens=2)
        code, _, err = run_cli(capsys, "profile", model_dir, "--calibration", calib, "--scorer", "knorm", "-o",
                               tmp_path / name, "--max-new-tokens", 2, "--sink", 2, "--window", 1, "--table",
                               tmp_path / f"{name}.npy", "--device", "cpu")
        assert code == 0, err
        assert ("4 pair(s) of 4, 5 probe(s), 2 layers" if probes else "4 pair(s) of 4, 2 layers") in err
        tables.append(load_lukv_table(tmp_path / f"{name}.npy"))
    np.testing.assert_array_equal(*tables)
    assert len(load_probe_run(tmp_path / "p").pairs) == 5
