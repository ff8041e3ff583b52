"""profile_model and ``budgetopt profile`` on tiny randomly initialised models (no download).

The engine (profile_context) has its own tests; these check what is built around it:
tokenization as kvpress's pipeline does it, the run directory, shards, resume after a crash,
errors, and the command line end to end up to kvpress's LUKVPress and BudgetPress.
"""

import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("kvpress")
pytest.importorskip("tokenizers")

import kvpress  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from budgetopt import keep_counts_from_prune_ratios, load_lukv_table, load_profile_run, lukv_table  # noqa: E402
from budgetopt.errors import InvalidInputError  # noqa: E402
from budgetopt.runs import lukv_table_from_run  # noqa: E402
from budgetopt.torch import profiler  # noqa: E402
from budgetopt.torch.profiling import context as engine_module  # noqa: E402
from budgetopt.torch.profiling.run import encode_calibration, profile_model  # noqa: E402
from helpers import run_cli  # noqa: E402

WORDS = ("the a cat dog bird sat ran flew on over under mat tree house red big small what who where "
         "did why how is was and then").split()
SPECIALS = ["<unk>", "<s>", "</s>", "<", ">", "user", "assistant", "/", "#", "?", ":", "."]
TEMPLATE = ("{% for m in messages %}< user > {{ m['content'] }} < / user >{% endfor %}"
            "{% if add_generation_prompt %}< assistant >{% endif %}")


def make_tokenizer(chat_template=None):
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>")
    out.chat_template = chat_template
    return out


def make_model(kind="llama", attn="sdpa", max_positions=256):
    torch.manual_seed(0)
    common = dict(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                  bos_token_id=1, eos_token_id=2)
    if kind == "llama":
        config = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.Qwen2Config(**common, use_sliding_window=False)
        cls = transformers.Qwen2ForCausalLM
    config._attn_implementation = attn
    return cls(config).eval()


def write_calibration(path, n_contexts=4, seed=0, lengths=(30, 45)):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for c in range(n_contexts):
            words = rng.choice(WORDS, size=int(rng.integers(*lengths)))
            questions = [" ".join(rng.choice(WORDS, size=4)) + " ?" for _ in range(1 + c % 3)]
            line = {"context": " ".join(words) + " .", "questions": questions}
            if c == 1:
                line["questions"][0] = {"question": line["questions"][0], "answer_prefix": "then :"}
            f.write(json.dumps(line) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", "sdpa")


@pytest.fixture
def calib(tmp_path):
    return write_calibration(tmp_path / "calib.jsonl")


def assert_runs_equal(a, b):
    assert a.pairs == b.pairs
    for name in ("oracles", "scores", "value_norms"):
        for x, y in zip(getattr(a, name), getattr(b, name)):
            np.testing.assert_array_equal(x, y)


# -- tokenization ---------------------------------------------------------------------------
@pytest.mark.parametrize("template", [None, TEMPLATE])
def test_tokenization_is_kvpress_pipelines(tmp_path, template):
    tokenizer = make_tokenizer(template)
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"context": "the cat sat on the mat .", "questions": ["who sat ?", "where ?"],
                                "answer_prefix": "then"}) + "\n")
    (encoded,) = encode_calibration(tokenizer, str(path), sink=1, window=1, max_new_tokens=4)
    # kvpress's own preprocessing, called on a stand-in pipeline that has just the tokenizer.
    stub = SimpleNamespace(tokenizer=tokenizer)
    ref = kvpress.KVPressTextGenerationPipeline.preprocess(stub, "the cat sat on the mat .", ["who sat ?", "where ?"],
                                                           "then", max_context_length=10**6)
    assert list(encoded.context_ids) == ref["context_ids"][0].tolist()
    assert [list(q) for q in encoded.question_ids] == [q[0].tolist() for q in ref["questions_ids"]]
    # The context is a true prefix of the text the model reads for each question.
    first = tokenizer.convert_ids_to_tokens(list(encoded.context_ids))
    assert first[0] == ("<" if template else "<s>") and "mat" in first


def test_context_too_short_or_too_long_names_the_line(tmp_path):
    tokenizer = make_tokenizer()
    path = tmp_path / "c.jsonl"
    path.write_text('{"context": "the cat sat on the mat and then the dog ran", "questions": ["who ?"]}\n'
                    '{"context": "the cat", "questions": ["who ?"]}\n')
    with pytest.raises(InvalidInputError, match=r"c.jsonl:2: the context has 3 tokens; profiling needs more than "
                                                r"sink \+ window = 3"):
        encode_calibration(tokenizer, str(path), sink=2, window=1, max_new_tokens=4)
    with pytest.raises(InvalidInputError, match=r"c.jsonl:1: questions\[0\]: context \(12 tokens\) \+ question \(2\) "
                                                r"\+ max_new_tokens \(10\) = 24 tokens exceeds the model's maximum "
                                                r"length \(20\)"):
        encode_calibration(tokenizer, str(path), sink=0, window=1, max_new_tokens=10, max_length=20)


# -- runs -----------------------------------------------------------------------------------
def test_in_memory_run_equals_disk_run_and_the_engine(llama, calib, tmp_path):
    tokenizer = make_tokenizer()
    mem = profile_model(llama, tokenizer, calib, scorer="knorm", max_new_tokens=4, sink=2, window=2, progress=False)
    disk = profile_model(llama, tokenizer, calib, scorer="knorm", max_new_tokens=4, sink=2, window=2,
                         out_dir=tmp_path / "run", progress=False)
    assert_runs_equal(mem, disk)
    assert disk.meta == {**mem.meta, "shard": None}
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["n_pairs"] == 7 and meta["questions"] == [1, 2, 3, 1] and meta["scorer"]["name"] == "knorm"
    assert (meta["layers"], meta["kv_heads"], meta["heads"], meta["model"]["model_type"]) == (2, 2, 4, "llama")
    # Each context is one engine call on exactly the tokenized context and questions.
    encoded = encode_calibration(tokenizer, calib, sink=2, window=2, max_new_tokens=4)
    for c, e in enumerate(encoded):
        direct = profiler.profile_context(llama, torch.tensor(e.context_ids), [torch.tensor(q) for q in e.question_ids],
                                          scorer="knorm", max_new_tokens=4)
        idx = [i for i, (cc, _) in enumerate(mem.pairs) if cc == c]
        np.testing.assert_array_equal(mem.scores[idx[0]], direct.scores)
        np.testing.assert_array_equal(mem.value_norms[idx[0]], direct.value_norms)
        for i, oracle in zip(idx, direct.oracles):
            np.testing.assert_array_equal(mem.oracles[i], oracle)
        assert [mem.pair_meta[i]["new_tokens"] for i in idx] == list(direct.new_tokens)
        assert mem.oracles[idx[0]].shape == (2, 2, len(e.context_ids))


@pytest.mark.parametrize("kind,attn,sampling,n", [("llama", "sdpa", False, 3), ("qwen2", "eager", False, 2),
                                                  ("llama", "sdpa", True, 2)])
def test_sharded_equals_unsharded(tmp_path, kind, attn, sampling, n):
    calib = write_calibration(tmp_path / "calib.jsonl", n_contexts=3)
    model = make_model(kind, attn)
    tokenizer = make_tokenizer(TEMPLATE)
    kwargs = dict(scorer="knorm", max_new_tokens=2, sampling=sampling, seed=5, progress=False)
    full = profile_model(model, tokenizer, calib, out_dir=tmp_path / "full", **kwargs)
    shards = [tmp_path / f"s{k}" for k in range(n)]
    for k, d in enumerate(shards):
        part = profile_model(model, tokenizer, calib, out_dir=d, shard=f"{k}/{n}", **kwargs)
        assert part.pairs == tuple(p for i, p in enumerate(full.pairs) if i % n == k)
        assert json.loads((d / "meta.json").read_text())["shard"] == f"{k}/{n}"
    merged = load_profile_run(*shards[::-1])
    assert_runs_equal(full, merged)
    np.testing.assert_array_equal(lukv_table_from_run(full)[0], lukv_table_from_run(merged)[0])


def test_resume_after_an_interrupted_run_equals_an_uninterrupted_run(llama, calib, tmp_path, monkeypatch):
    tokenizer = make_tokenizer()
    kwargs = dict(scorer="knorm", max_new_tokens=3, progress=False)
    full = profile_model(llama, tokenizer, calib, out_dir=tmp_path / "full", **kwargs)
    engine = engine_module.profile_context
    calls = []

    def crashing(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the third context
        calls.append(len(args[2]))
        return engine(*args, **kw)

    monkeypatch.setattr(engine_module, "profile_context", crashing)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        profile_model(llama, tokenizer, calib, out_dir=run_dir, **kwargs)
    assert sorted(os.listdir(run_dir / "pairs")) == ["c00000_q000.npz", "c00001_q000.npz", "c00001_q001.npz"]
    (run_dir / "pairs" / ".c00002_q000.npz.x1y2.tmp").write_bytes(b"a write cut short")

    calls.clear()
    monkeypatch.setattr(engine_module, "profile_context", lambda *a, **k: (calls.append(len(a[2])), engine(*a, **k))[1])
    resumed = profile_model(llama, tokenizer, calib, out_dir=run_dir, **kwargs)
    assert calls == [3, 1]  # only contexts 2 and 3 were profiled again
    assert not any(name.endswith(".tmp") for name in os.listdir(run_dir / "pairs"))
    assert_runs_equal(full, resumed)
    with pytest.raises(InvalidInputError, match=r"holds a run with other settings \(max_new_tokens: 3 vs 4\)"):
        profile_model(llama, tokenizer, calib, out_dir=run_dir, scorer="knorm", max_new_tokens=4, progress=False)


def test_bad_input_writes_nothing(llama, tmp_path):
    tokenizer = make_tokenizer()
    calib = tmp_path / "c.jsonl"
    calib.write_text('{"context": "the cat sat on the mat", "questions": ["who ?"]}\n'
                     '{"context": "the cat", "questions": ["who ?"]}\n')
    with pytest.raises(InvalidInputError, match=r"c.jsonl:2: the context has 3 tokens"):
        profile_model(llama, tokenizer, str(calib), scorer="knorm", out_dir=tmp_path / "run", progress=False)
    with pytest.raises(InvalidInputError, match=r"`scorer` 'snap' is not a known scorer name"):
        profile_model(llama, tokenizer, str(calib), scorer="snap", out_dir=tmp_path / "run", progress=False)
    with pytest.raises(InvalidInputError, match=r"`head_reduce` must be one of 'max', 'mean'"):
        profile_model(llama, tokenizer, str(calib), scorer="knorm", head_reduce="sum", progress=False)
    # A scorer that cannot score the first context (SnapKV's window is longer than it) fails
    # inside the engine, after the directory was opened: the new, empty directory goes again.
    calib.write_text('{"context": "the cat sat on the mat", "questions": ["who ?"]}\n')
    with pytest.raises(InvalidInputError, match=r"c.jsonl:1: `scorer` SnapKVPress cannot score this context"):
        profile_model(llama, tokenizer, str(calib), scorer="snapkv", out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# -- the command line, end to end -----------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    make_model("llama", "sdpa").save_pretrained(path)
    make_tokenizer(TEMPLATE).save_pretrained(path)
    return path


def _cli(argv, capsys):
    return run_cli(capsys, *argv)


def test_cli_profile_then_table_reaches_kvpress(model_dir, calib, tmp_path, capsys):
    run_dir, table_path = tmp_path / "run", tmp_path / "table.npy"
    code, _, err = _cli(["profile", model_dir, "--calibration", calib, "--scorer", "knorm", "-o", run_dir,
                         "--max-new-tokens", 3, "--sink", 2, "--window", 1, "--table", table_path, "--device", "cpu"],
                        capsys)
    assert code == 0, err
    assert "7 pair(s) of 7" in err
    info = json.loads((tmp_path / "table.json").read_text())
    assert info["model"]["name"] == "tiny-llama" and info["scorer"]["name"] == "knorm"
    assert (info["sink"], info["window"], info["max_new_tokens"]) == (2, 1, 3)
    assert info["calibration"]["sha256"] == json.loads((run_dir / "meta.json").read_text())["calibration"]["sha256"]
    # The separate command on the run directory gives the same table, and equals lukv_table.
    code, _, err = _cli(["lukv-table", run_dir, "-o", tmp_path / "again.npy", "--no-progress"], capsys)
    assert code == 0, err
    table = load_lukv_table(table_path)
    np.testing.assert_array_equal(table, load_lukv_table(tmp_path / "again.npy"))
    run = load_profile_run(run_dir)
    np.testing.assert_array_equal(table, lukv_table(list(run.oracles), list(run.scores), sink=2, window=1))

    from budgetopt.torch.press import BudgetPress

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 60), generator=torch.Generator().manual_seed(3))
    for compression_ratio in (0.4, 0.8):
        # kvpress's LUKVPress with the table injected keeps exactly the table's counts per head.
        press = kvpress.LUKVPress(press=kvpress.KnormPress(), compression_ratio=compression_ratio, sink=2, window=1)
        press._budget_curves = table
        with torch.no_grad(), press(model):
            model(ids)
        row = int(round(compression_ratio * 100)) - 1
        expected = keep_counts_from_prune_ratios(table[row], 60)
        assert expected.min() < 60
        for layer in model.model.layers:
            _, heads, _ = layer.self_attn.masked_key_indices
            kept = 60 - torch.bincount(heads, minlength=2).numpy()
            np.testing.assert_array_equal(kept, expected[layer.self_attn.layer_idx])
        # budgetopt's BudgetPress reads the same file, keeps the same counts, and generates.
        budget_press = BudgetPress(kvpress.KnormPress(), table_path, compression_ratio=compression_ratio,
                                   sink=2, window=1)
        np.testing.assert_array_equal(np.stack([budget_press.layer_budgets(i, 60) for i in range(2)]), expected)
        with torch.no_grad(), budget_press(model):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                                 do_sample=False)
        assert out.shape == (1, 64)


def test_cli_resume_and_interrupt(model_dir, calib, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    engine = engine_module.profile_context
    calls = []

    def interrupted(*args, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return engine(*args, **kw)

    monkeypatch.setattr(engine_module, "profile_context", interrupted)
    argv = ["profile", model_dir, "--calibration", calib, "--scorer", "knorm", "-o", run_dir, "--max-new-tokens", 2]
    code, _, err = _cli(argv, capsys)
    assert code == 130 and "interrupted" in err
    assert os.listdir(run_dir / "pairs") == ["c00000_q000.npz"]
    monkeypatch.setattr(engine_module, "profile_context", engine)
    code, _, err = _cli(argv, capsys)
    assert code == 0, err
    assert len(load_profile_run(run_dir).pairs) == 7


def _bad_model_dirs(base, model_dir):
    base.mkdir()
    empty = base / "empty"
    empty.mkdir()
    no_weights = base / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((model_dir / "config.json").read_text())
    gpt2 = base / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (gpt2 / "model.safetensors").write_bytes(b"")
    return {"empty": empty, "no_weights": no_weights, "gpt2": gpt2, "missing": base / "missing"}


@pytest.mark.parametrize(
    "which,extra,match",
    [
        ("missing", [], r"missing: no such model directory"),
        ("empty", [], r"empty: not a model directory \(no config.json\)"),
        ("no_weights", [], r"no_weights: no model weights"),
        ("gpt2", [], r"model_type 'gpt2' is not supported; supported model types: llama, mistral"),
        ("good", ["--scorer", "nope"], r"`scorer` 'nope' is not a known scorer name"),
        ("good", ["--shard", "0/2", "--table", "{tmp}/t.npy"], r"--table needs every pair"),
        ("good", ["--shard", "2/2"], r"--shard K/N needs N >= 1 and 0 <= K < N; got 2/2"),
        ("good", ["--calibration", "{tmp}/bad.jsonl"], r"bad.jsonl:2: not valid JSON"),
        ("good", ["--calibration", "{tmp}/short.jsonl"], r"short.jsonl:1: the context has \d+ tokens"),
        ("good", ["--max-new-tokens", "250"], r"calib.jsonl:1: questions\[0\]: .* exceeds the model's maximum length \(256\)"),
        ("good", ["--table", "{tmp}/t.npz"], r"--table must end in .npy"),
        ("good", ["-o", "{tmp}/no/run"], r"directory .* does not exist"),
    ],
)
def test_cli_profile_errors_exit_2_and_write_nothing(model_dir, calib, tmp_path, capsys, which, extra, match):
    (tmp_path / "bad.jsonl").write_text('{"context": "the cat", "questions": ["q"]}\n{oops\n')
    (tmp_path / "short.jsonl").write_text('{"context": "cat", "questions": ["who ?"]}\n')
    dirs = _bad_model_dirs(tmp_path / "models", model_dir) if which != "good" else {}
    before = sorted(os.listdir(tmp_path))
    argv = ["profile", dirs.get(which, model_dir), "--calibration", calib, "--scorer", "knorm",
            "-o", tmp_path / "run", "--device", "cpu"]
    argv += [a.format(tmp=tmp_path) if isinstance(a, str) else a for a in extra]
    code, out, err = _cli(argv, capsys)
    assert code == 2, err
    # One error line (argparse puts its usage lines before its own errors).
    assert out == "" and "Traceback" not in err and err.count("error:") == 1
    assert re.search(match, err.strip().splitlines()[-1]), err
    assert sorted(os.listdir(tmp_path)) == before
