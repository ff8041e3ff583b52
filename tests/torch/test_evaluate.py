"""budgetopt.torch.evaluate and ``budgetopt evaluate`` on a tiny random Llama (no download).

The evaluator compresses a recorded full-cache pre-fill instead of pre-filling once per
method; these tests hold it to kvpress's own ``KVPressTextGenerationPipeline`` (same answers,
press by press, in both settings), the full-cache reference to ``model.generate``, and the
KL / NLL / kept-token figures to direct computations on a real pre-fill under the press.
"""

import dataclasses
import json
import os
import re
import string
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
kvpress = pytest.importorskip("kvpress")
pytest.importorskip("tokenizers")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import DynamicCache  # noqa: E402

import budgetopt  # noqa: E402
import budgetopt.runs  # noqa: E402
from budgetopt import evaluation, tasks  # noqa: E402
from budgetopt.errors import InvalidInputError  # noqa: E402
from budgetopt.evaluation import summarise  # noqa: E402
from budgetopt.torch import evaluate as ev  # noqa: E402
from budgetopt.torch.press import BudgetPress  # noqa: E402
from budgetopt.torch.profiling.run import profile_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = ("{% for m in messages %}< user > {{ m['content'] }} < / user >{% endfor %}"
            "{% if add_generation_prompt %}< assistant >{% endif %}")
CONTEXT = 450  # characters: contexts of about 100-130 word tokens (SnapKV needs more than its 64-token window)


def make_tokenizer(texts, chat_template=None):
    """A word-level tokenizer over the words of ``texts`` (digits one by one)."""
    words = set(string.digits) | set(string.punctuation) | {"user", "assistant"}
    for t in texts:
        words.update(re.findall(r"[^\W\d_]+|\d|_|[^\w\s]", t))
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    out = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>", pad_token="<pad>")
    out.chat_template = chat_template
    return out


def make_model(vocab_size, kind="llama"):
    # head_dim 64: kvpress's head-wise masking must find a key hidden from every query of a
    # question (its hyperplane search), which needs queries in fewer dimensions than head_dim.
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=256, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  bos_token_id=2, eos_token_id=3, pad_token_id=0)
    if kind == "llama":
        config, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    else:
        config, cls = transformers.Qwen2Config(**common, use_sliding_window=False), transformers.Qwen2ForCausalLM
    config._attn_implementation = "sdpa"
    return cls(config).eval()


def all_examples():
    return [e for t in tasks.TASKS for e in tasks.make_examples(t, 2, context_length=CONTEXT)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    cal_lines = tasks.calibration_lines(["passkey", "span"], 2, context_length=CONTEXT)
    examples = all_examples()
    tok = make_tokenizer([e.context + " " + e.question for e in examples]
                         + [json.loads(line)["context"] + json.loads(line)["questions"][0] for line in cal_lines])
    model = make_model(len(tok))
    folder = tmp_path_factory.mktemp("cal")
    cal = folder / "cal.jsonl"
    cal.write_text("\n".join(cal_lines) + "\n")
    run = profile_model(model, tok, str(cal), scorer="snapkv", sink=2, window=2, max_new_tokens=4, progress=False)
    return tok, model, run, str(cal)


def pipeline_answer(model, tok, example, press, setting, max_new_tokens):
    pipe = kvpress.KVPressTextGenerationPipeline(model=model, tokenizer=tok)
    context, question = example.context, example.question
    if setting == "query_aware":
        context, question = f"{context}\n\n{question}", None
    return pipe(context, question=question, answer_prefix=example.answer_prefix, press=press,
                max_new_tokens=max_new_tokens)["answer"]


METHODS = ["snapkv", "knorm", "expected_attention", "streaming_llm", "tova", "adakv", "uniform", "pyramidkv",
           "headkv", "duoattention", "lukv", "budgetpress", "allocate", "request"]


@pytest.mark.parametrize("setting", ev.SETTINGS)
def test_answers_equal_kvpress_pipeline(setup, setting):
    tok, model, run, _ = setup
    methods = ev.standard_methods(["full"] + METHODS, scorer="snapkv", run=run)
    methods.append(ev.Method("budgetpress_varlen", lambda c: BudgetPress(
        kvpress.SnapKVPress(), np.array([[9, 3], [5, 7]]), head_capacity=24, sink=2, window=2, mode="varlen")))
    checked = 0
    tok.chat_template = TEMPLATE if setting == "query_aware" else None  # both tokenizations covered
    for example in [tasks.make_examples(t, 1, context_length=CONTEXT)[0] for t in ("passkey", "vartrack")]:
        record = ev.evaluate_example(model, tok, example, methods, [0.3, 0.8], settings=(setting,), max_new_tokens=6)
        results = record["settings"][setting]["results"]
        assert len(results) == len(methods) * 2
        by_name = {m.name: m for m in methods}
        for res in results:
            press = by_name[res["method"]].make(res["compression"])
            expected = pipeline_answer(model, tok, example, press, setting, 6)
            assert res["answer"] == expected, (res["method"], res["compression"])
            checked += 1
        full = [r for r in results if r["method"] == "full"]
        assert all(r["kl"] == 0 and r["agree"] and r["kept_fraction"] == 1 for r in full)
        ref = record["settings"][setting]["reference"]
        assert ref["answer"] == pipeline_answer(model, tok, example, None, setting, 6)
    assert checked == 2 * 2 * len(methods)
    tok.chat_template = None


def test_some_methods_change_the_answer(setup):
    # the parity test is only meaningful if compression changes answers on this model
    tok, model, _, _ = setup
    methods = ev.standard_methods(["knorm", "streaming_llm"])
    changed = 0
    for example in all_examples()[:6]:
        record = ev.evaluate_example(model, tok, example, methods, [0.9], max_new_tokens=6)
        changed += sum(not r["agree"] for r in record["settings"]["question"]["results"])
    assert changed > 0


@pytest.mark.parametrize("template", [None, TEMPLATE])
def test_reference_equals_generate(setup, template):
    tok, model, _, _ = setup
    tok.chat_template = template
    try:
        for example in all_examples()[::5]:
            for setting in ev.SETTINGS:
                c, q = ev.encode_example(tok, example, setting=setting)
                ref = ev.reference(model, tok, c, q, max_new_tokens=6)
                ids = torch.cat([c, q], dim=1)
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                     pad_token_id=0, eos_token_id=3, output_scores=True, return_dict_in_generate=True)
                new = out.sequences[0, ids.shape[1]:].tolist()
                assert ref.answer_ids == new
                scores = torch.stack([s[0] for s in out.scores]).float().log_softmax(-1)
                torch.testing.assert_close(ref.log_probs, scores, atol=2e-4, rtol=0)
        if template is None:  # without a template or prefix, "\n" alone follows the context: no token
            bare = dataclasses.replace(example, answer_prefix="")
            with pytest.raises(InvalidInputError, match="nothing follows the context"):
                ev.encode_example(tok, bare, setting="query_aware")
    finally:
        tok.chat_template = None


@pytest.mark.parametrize("name, c", [("knorm", 0.5), ("adakv", 0.7), ("budgetpress", 0.6), ("request", 0.5)])
def test_kl_nll_and_kept_tokens_match_a_direct_computation(setup, name, c):
    tok, model, run, _ = setup
    (method,) = ev.standard_methods([name], run=run)
    example = tasks.make_examples("multikey", 1, context_length=CONTEXT)[0]
    context_ids, question_ids = ev.encode_example(tok, example)
    ref = ev.reference(model, tok, context_ids, question_ids, max_new_tokens=6)
    before = [k.clone() for _, _, k, _ in ref.layers]
    out = ev.run_method(model, tok, ref, method.make(c), max_new_tokens=6)
    # the reference is left as it was
    assert all(torch.equal(a, k) for a, (_, _, k, _) in zip(before, ref.layers))
    # independent: a real pre-fill under the press, then one pass over question + answer
    press = method.make(c)
    cache = DynamicCache()
    with torch.no_grad(), press(model):
        model.model(input_ids=context_ids, past_key_values=cache)
    T = context_ids.shape[1]
    hidden = 0
    for layer in model.model.layers:
        masked = getattr(layer.self_attn, "masked_key_indices", None)
        hidden += 0 if masked is None else len(masked[0])
    kept = sum(layer.keys.shape[1] * layer.keys.shape[2] for layer in cache.layers) - hidden
    assert out["kept_tokens"] == kept
    if name == "knorm":
        assert kept == 2 * 2 * int(T * (1 - c))
    ids = torch.cat([question_ids, torch.tensor([ref.answer_ids[:-1]])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, past_key_values=cache,
                       position_ids=torch.arange(T, T + ids.shape[1]).unsqueeze(0)).logits[0, -len(ref.answer_ids):]
    q = logits.double().log_softmax(-1)
    p = ref.log_probs.double()
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    nll = float(-q[torch.arange(len(ref.answer_ids)), ref.answer_ids].mean())
    assert out["kl"] == pytest.approx(kl, abs=1e-5)
    assert out["nll"] == pytest.approx(nll, abs=1e-5)


def test_unsupported_and_unknown_methods(setup):
    tok, model, _, _ = setup
    example = tasks.make_examples("passkey", 1, context_length=CONTEXT)[0]
    press = kvpress.KeyRerotationPress(kvpress.KnormPress(compression_ratio=0.5))
    with pytest.raises(InvalidInputError, match="KeyRerotationPress compresses while decoding or moves positions"):
        ev.evaluate_example(model, tok, example, [ev.Method("rerot", lambda c: press)], [0.5])
    with pytest.raises(InvalidInputError, match="unknown method 'snap'; methods: full, adakv"):
        ev.standard_methods(["snap"])
    with pytest.raises(InvalidInputError, match="need calibration"):
        ev.standard_methods(["lukv"])
    with pytest.raises(InvalidInputError, match="`compressions` must hold numbers in"):
        ev.evaluate(model, tok, [example], ev.standard_methods(["knorm"]), [1.0])


def untimed(value):
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def test_evaluate_resumes_and_shards(setup, tmp_path):
    tok, model, _, _ = setup
    examples = [e for t in ("passkey", "span") for e in tasks.make_examples(t, 2, context_length=CONTEXT)]
    methods = ev.standard_methods(["full", "knorm", "snapkv"])
    out = tmp_path / "eval"
    first = ev.evaluate(model, tok, examples, methods, [0.5, 0.9], max_new_tokens=4, out_dir=out)
    assert sorted(os.listdir(out / "examples")) == sorted(f"{e.id}.json" for e in examples)
    victim = out / "examples" / f"{examples[1].id}.json"
    victim.unlink()
    stamps = {p: os.stat(out / "examples" / p).st_mtime_ns for p in os.listdir(out / "examples")}
    calls = []
    second = ev.evaluate(model, tok, examples, methods, [0.5, 0.9], max_new_tokens=4, out_dir=out,
                         progress=lambda d, t: calls.append((d, t)))
    assert untimed(second) == untimed(json.loads(json.dumps(first)))  # recomputed: the same but for timings
    assert calls[-1] == (4, 4)
    assert {p: os.stat(out / "examples" / p).st_mtime_ns for p in stamps} == stamps  # untouched
    with pytest.raises(InvalidInputError, match="holds an evaluation with other settings"):
        ev.evaluate(model, tok, examples, methods, [0.5], max_new_tokens=4, out_dir=out, meta={"x": 1})
    parts = [ev.evaluate(model, tok, examples, methods, [0.5, 0.9], max_new_tokens=4, shard=(k, 2)) for k in (0, 1)]
    assert sorted(r["id"] for p in parts for r in p) == sorted(e.id for e in examples)
    report = summarise(first)
    rows = {(r["method"], r["compression"]): r for r in report["settings"]["question"]["rows"]}
    assert rows[("full", 0.5)]["accuracy"] == rows[("full", 0.9)]["accuracy"]
    knorm = [res for rec in first for res in rec["settings"]["question"]["results"]
             if res["method"] == "knorm" and res["compression"] == 0.9]
    assert rows[("knorm", 0.9)]["kl"] == pytest.approx(np.mean([r["kl"] for r in knorm]))
    assert rows[("knorm", 0.9)]["n"] == 4


def counted(methods, calls):
    """The same methods, counting each ``make(c)`` in ``calls[(name, c)]``."""
    def wrap(m):
        def make(c):
            calls[m.name, c] = calls.get((m.name, c), 0) + 1
            return m.make(c)
        return dataclasses.replace(m, make=make)
    return [wrap(m) for m in methods]


def test_resuming_with_more_methods_ratios_and_settings_computes_only_the_missing_cells(setup, tmp_path):
    tok, model, _, _ = setup
    examples = [e for t in ("passkey", "span") for e in tasks.make_examples(t, 2, context_length=CONTEXT)][:3]
    out = tmp_path / "eval"
    small = ev.standard_methods(["full", "knorm"])
    ev.evaluate(model, tok, examples, small, [0.5], max_new_tokens=4, out_dir=out,
                meta={"methods": ["full", "knorm"], "compressions": [0.5], "settings": ["question"]})
    before = {p: (out / "examples" / p).read_text() for p in os.listdir(out / "examples")}
    # one example is left as a run stopped part way would leave it: not started
    (out / "examples" / f"{examples[2].id}.json").unlink()
    big = ev.standard_methods(["full", "knorm", "snapkv"])
    calls = {}
    settings = ("question", "query_aware")
    extended = ev.evaluate(model, tok, examples, counted(big, calls), [0.5, 0.9], settings=settings,
                           max_new_tokens=4, out_dir=out,
                           meta={"methods": ["full", "knorm", "snapkv"], "compressions": [0.5, 0.9],
                                 "settings": list(settings)})
    # the recorded cells were not computed again: knorm at 0.5 in the question setting was
    # made once (for the example that had no file), in the query-aware setting three times
    assert calls[("knorm", 0.5)] == 1 + 3
    assert calls[("knorm", 0.9)] == calls[("snapkv", 0.5)] == calls[("snapkv", 0.9)] == 2 * 3
    # ... and their rows are kept to the byte (timings included)
    for p in (f"{e.id}.json" for e in examples[:2]):
        old = json.loads(before[p])["settings"]["question"]["results"]
        new = json.loads((out / "examples" / p).read_text())["settings"]["question"]["results"]
        assert [r for r in new if (r["method"], r["compression"]) in {("full", 0.5), ("knorm", 0.5)}] == old
    # the extended records equal an evaluation of everything from scratch, but for timings
    fresh = ev.evaluate(model, tok, examples, big, [0.5, 0.9], settings=settings, max_new_tokens=4)
    assert untimed(extended) == untimed(fresh)
    assert [json.loads((out / "examples" / f"{e.id}.json").read_text()) for e in examples] == extended
    # asking for the same again computes nothing and rewrites nothing
    stamps = {p: os.stat(out / "examples" / p).st_mtime_ns for p in os.listdir(out / "examples")}
    calls.clear()
    ev.evaluate(model, tok, examples, counted(big, calls), [0.5, 0.9], settings=settings, max_new_tokens=4,
                out_dir=out, meta={"methods": ["full", "knorm", "snapkv"], "compressions": [0.5, 0.9],
                                   "settings": list(settings), "shard": "0/1"})
    assert calls == {}
    assert {p: os.stat(out / "examples" / p).st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "meta.json").read_text())["shard"] == "0/1"  # adding nothing: the call's meta


def test_resuming_refuses_to_drop_cells_or_to_mix_references(setup, tmp_path):
    tok, model, _, _ = setup
    examples = tasks.make_examples("passkey", 2, context_length=CONTEXT)
    out = tmp_path / "eval"
    methods = ev.standard_methods(["full", "knorm"])
    meta = {"methods": ["full", "knorm"], "compressions": [0.5, 0.9], "settings": ["question"]}
    ev.evaluate(model, tok, examples, methods, [0.5, 0.9], max_new_tokens=4, out_dir=out, meta=meta)
    before = {p: (out / "examples" / p).read_text() for p in os.listdir(out / "examples")}
    for key, value, named in [("methods", ["full"], "methods knorm"), ("compressions", [0.5], "compressions 0.9"),
                              ("settings", ["query_aware"], "settings question")]:
        with pytest.raises(InvalidInputError, match=f"holds {named} that this evaluation does not ask for"):
            ev.evaluate(model, tok, examples, methods, [0.5, 0.9], max_new_tokens=4, out_dir=out,
                        meta={**meta, key: value})
    assert {p: (out / "examples" / p).read_text() for p in before} == before
    # a recorded full-cache answer that the model no longer gives: the rows cannot be mixed
    path = out / "examples" / f"{examples[0].id}.json"
    record = json.loads(path.read_text())
    record["settings"]["question"]["reference"]["answer_ids"] = [0]
    path.write_text(json.dumps(record) + "\n")
    more = ev.standard_methods(["full", "knorm", "snapkv"])
    with pytest.raises(InvalidInputError, match=f"{examples[0].id}: the full-cache answer .* differs from the "
                                                "recorded one .* in the 'question' setting"):
        ev.evaluate(model, tok, examples, more, [0.5, 0.9], max_new_tokens=4, out_dir=out,
                    meta={**meta, "methods": ["full", "knorm", "snapkv"]})
    assert json.loads(path.read_text()) == record  # left as it was
    assert json.loads((out / "meta.json").read_text())["methods"] == ["full", "knorm"]  # nothing was added
    ev.evaluate(model, tok, examples[1:], methods, [0.5, 0.9], max_new_tokens=4, out_dir=out, meta=meta)
    # another example's record cannot stand in for this one
    other = json.loads((out / "examples" / f"{examples[1].id}.json").read_text())
    with pytest.raises(InvalidInputError, match="cannot be extended"):
        ev.evaluate_example(model, tok, examples[0], more, [0.5], max_new_tokens=4, recorded=other)


def finished(setup, tmp_path, n, **kwargs):
    """An evaluation directory of ``n`` passkey examples, full and knorm at 0.5."""
    tok, model, _, _ = setup
    examples = tasks.make_examples("passkey", n, context_length=CONTEXT)
    methods = ev.standard_methods(["full", "knorm"])
    ev.evaluate(model, tok, examples, methods, [0.5], max_new_tokens=4, out_dir=tmp_path / "eval", **kwargs)
    return tok, model, examples, methods, tmp_path / "eval"


@pytest.mark.parametrize("damage, match", [
    (lambda r: "{not json", "not valid JSON .*; delete it to evaluate the example again"),
    (lambda r: json.dumps([r]), "is not an example record"),
    (lambda r: json.dumps({**r, "id": "passkey-9999"}), "is not an example record"),
    (lambda r: json.dumps({**r, "settings": {"question": {**r["settings"]["question"], "results": 5}}}),
     "is not an example record"),
    (lambda r: json.dumps({**r, "settings": {"question": {**r["settings"]["question"], "results": [
        {**r["settings"]["question"]["results"][0], "kl": "0.5"}]}}}), "is not an example record"),
    (lambda r: json.dumps({**r, "settings": {"question": {k: v for k, v in r["settings"]["question"].items()
                                                          if k != "reference"}}}), "is not an example record"),
])
def test_a_damaged_example_file_is_named_on_resume_and_in_the_report(setup, tmp_path, damage, match):
    tok, model, examples, methods, out = finished(setup, tmp_path, 2)
    path = out / "examples" / f"{examples[0].id}.json"
    path.write_text(damage(json.loads(path.read_text())))
    meta = (out / "meta.json").read_text()
    for call in (lambda: ev.evaluate(model, tok, examples, methods, [0.5, 0.9], max_new_tokens=4, out_dir=out),
                 lambda: evaluation.load_records(out)):
        with pytest.raises(budgetopt.errors.CurvesFileError, match=re.escape(str(path)) + ": " + match):
            call()
    assert (out / "meta.json").read_text() == meta


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
@pytest.mark.parametrize("name", ["examples/passkey-0000.json", "meta.json"])
def test_a_fifo_or_device_in_place_of_a_file_is_named_not_read(setup, tmp_path, kind, name):
    tok, model, examples, methods, out = finished(setup, tmp_path, 1)
    (out / name).unlink()
    {"fifo": os.mkfifo, "device": lambda p: os.symlink("/dev/zero", p), "directory": os.mkdir}[kind](out / name)
    with pytest.raises(budgetopt.errors.CurvesFileError, match=f"{re.escape(str(out / name))}: is "):
        ev.evaluate(model, tok, examples, methods, [0.5], max_new_tokens=4, out_dir=out)


def test_a_damaged_meta_list_is_named(setup, tmp_path):
    tok, model, examples, methods, out = finished(setup, tmp_path, 1, meta={"methods": ["full"]})
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "methods": "full"}))
    with pytest.raises(budgetopt.errors.CurvesFileError, match="meta.json: methods must be a list; got 'full'"):
        ev.evaluate(model, tok, examples, methods, [0.5], max_new_tokens=4, out_dir=out, meta={"methods": ["full"]})


# -- the command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(setup, tmp_path_factory):
    tok, model, _, _ = setup
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    tok.chat_template = None
    return path


def cli(*argv):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "budgetopt", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def test_cli_end_to_end_and_resume(model_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", model_dir, "--tasks", "passkey,span", "--examples", "2", "--context-tokens", "100",
            "--compression", "0.5", "0.8", "--methods", "full,knorm,adakv,uniform", "--max-new-tokens", "4",
            "--settings", "question,query_aware", "-o", out, "--no-progress"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["examples", "meta.json", "report.json", "report.md", "report.png"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["settings"]) == {"question", "query_aware"}
    assert report["n_examples"] == 4
    assert "| 0.80 | adakv | 4 |" in (out / "report.md").read_text()
    before = {p: (out / "examples" / p).read_text() for p in os.listdir(out / "examples")}
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert {p: (out / "examples" / p).read_text() for p in os.listdir(out / "examples")} == before
    # asking for more examples extends the run: the finished ones are kept as they are
    more = cli(*[("3" if a == "2" and args[i - 1] == "--examples" else a) for i, a in enumerate(args)])
    assert more.returncode == 0, more.stderr
    after = {p: (out / "examples" / p).read_text() for p in os.listdir(out / "examples")}
    assert len(after) == 6 and {p: after[p] for p in before} == before
    assert json.loads((out / "report.json").read_text())["n_examples"] == 6
    # naming another method and ratio completes every finished example with them
    wider = [{"full,knorm,adakv,uniform": "full,knorm,adakv,uniform,snapkv", "0.8": "0.9"}.get(a, a) for a in args]
    wider[wider.index("0.9"):wider.index("0.9")] = ["0.8"]
    done = cli(*[("3" if a == "2" and wider[i - 1] == "--examples" else a) for i, a in enumerate(wider)])
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {(r["method"], r["compression"]): r["n"] for r in report["settings"]["query_aware"]["rows"]}
    assert rows[("snapkv", 0.9)] == rows[("knorm", 0.9)] == rows[("knorm", 0.8)] == 6
    assert json.loads((out / "meta.json").read_text())["methods"][-1] == "snapkv"
    dropped = cli(*args)
    assert dropped.returncode == 2 and len(dropped.stderr.splitlines()) == 1
    assert "holds methods snapkv that this evaluation does not ask for" in dropped.stderr


def test_cli_budgetopt_methods_with_calibration(setup, model_dir, tmp_path):
    cal = tmp_path / "cal.jsonl"
    done = cli("evaluate", model_dir, "--tasks", "passkey", "--examples", "2", "--context-tokens", "100",
               "--write-calibration", cal, "-o", tmp_path / "unused")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "unused").exists()
    run = tmp_path / "run"
    prof = cli("profile", model_dir, "--calibration", cal, "--scorer", "snapkv", "--sink", "2", "--window", "2",
               "--max-new-tokens", "3", "-o", run, "--no-progress")
    assert prof.returncode == 0, prof.stderr
    out = tmp_path / "eval"
    done = cli("evaluate", model_dir, "--tasks", "passkey", "--examples", "2", "--context-tokens", "100",
               "--compression", "0.5", "--profile", run, "--max-new-tokens", "3", "-o", out)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    methods = report["settings"]["question"]["methods"]
    assert methods == ["full", "snapkv", "adakv", "pyramidkv", "lukv", "budgetpress", "allocate", "request",
                       "headkv", "duoattention"]
    assert report["meta"]["calibration"]["overlaps"] == 0
    # evaluating on the calibration contexts themselves is refused
    bad = tmp_path / "bad.jsonl"
    lines = [json.loads(line) for line in cal.read_text().splitlines()]
    bad.write_text("".join(json.dumps({"context": d["context"], "questions": d["questions"], "answers": ["x"]}) + "\n"
                           for d in lines))
    refused = cli("evaluate", model_dir, "--data", bad, "--compression", "0.5", "--profile", run,
                  "--methods", "full,lukv", "-o", tmp_path / "eval2")
    assert refused.returncode == 2
    assert "overlap the calibration contexts" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (tmp_path / "eval2").exists()


@pytest.mark.parametrize("extra, match", [
    (["--compression", "1.0"], "--compression: must be a number in [0, 1)"),
    (["--methods", "full,snap"], "--methods: unknown 'snap'"),
    (["--methods", "full,lukv"], "need --profile RUN"),
    (["--probe-gain", "0.5"], "--probe-gain: must be a finite number >= 0, with --methods including probes"),
    (["--tasks", "needle"], "--tasks: unknown 'needle'"),
    (["--settings", "both"], "--settings: unknown 'both'"),
    (["--shard", "3/2"], "--shard K/N needs N >= 1 and 0 <= K < N"),
    (["--data", "missing.jsonl"], "missing.jsonl"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(model_dir, tmp_path, extra, match):
    out = tmp_path / "eval"
    done = cli("evaluate", model_dir, "--examples", "1", "--context-tokens", "40", "-o", out, *extra)
    assert done.returncode == 2, done.stderr
    # one error line (argparse's own errors print the usage above it, as for every command)
    last = done.stderr.strip().splitlines()[-1]
    assert match in last and last.startswith("budgetopt evaluate: error:") and "Traceback" not in done.stderr
    assert not out.exists()


def test_cli_data_with_and_without_answers(model_dir, tmp_path):
    """--data mixing questions with answers and without (null): the report's aggregates equal a
    direct computation from the example records, accuracy over the answered examples only."""
    examples = [tasks.make_examples(t, 1, context_length=CONTEXT)[0] for t in ("passkey", "span", "multikey")]
    lines = [{"context": examples[0].context, "questions": [examples[0].question, "Describe the text."],
              "answers": [list(examples[0].answers), None]},
             {"context": examples[1].context, "questions": [{"question": examples[1].question,
                                                             "answers": list(examples[1].answers)}]},
             {"context": examples[2].context, "questions": [examples[2].question, "Summarise it."], "answers": None}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    accepted = {"user-c00000-q000": examples[0].answers, "user-c00000-q001": None,
                "user-c00001-q000": examples[1].answers, "user-c00002-q000": None, "user-c00002-q001": None}
    out = tmp_path / "eval"
    done = cli("evaluate", model_dir, "--data", data, "--compression", "0.5", "0.8", "--methods", "full,knorm,snapkv",
               "--max-new-tokens", "4", "-o", out, "--no-progress")
    assert done.returncode == 0, done.stderr
    records = {r["id"]: r for r in (json.loads((out / "examples" / f).read_text())
                                    for f in os.listdir(out / "examples"))}
    assert set(records) == set(accepted)
    cell = {}
    for id_, rec in records.items():
        block = rec["settings"]["question"]
        answers = accepted[id_]
        assert rec["answers"] == (None if answers is None else list(answers))
        ref_ok = block["reference"]["correct"]
        assert ref_ok is None if answers is None else ref_ok == tasks.score("contains", block["reference"]["answer"],
                                                                              answers)
        for res in block["results"]:
            ok = None if answers is None else tasks.score("contains", res["answer"], answers)
            assert res["correct"] == ok
            cell.setdefault((res["method"], res["compression"]), {})[id_] = (
                ok, res["answer_ids"] == block["reference"]["answer_ids"], res["kl"], res["nll"])
    report = json.loads((out / "report.json").read_text())
    assert (report["n_examples"], report["n_answered"]) == (5, 2)
    block = report["settings"]["question"]
    rows = {(r["method"], r["compression"]): r for r in block["rows"]}
    assert set(rows) == set(cell)
    for key, values in cell.items():
        scored = [v[0] for v in values.values() if v[0] is not None]
        row = rows[key]
        assert (row["n"], row["n_answered"]) == (5, 2)
        assert row["accuracy"] == sum(scored) / 2
        assert (row["accuracy_low"], row["accuracy_high"]) == pytest.approx(evaluation.wilson_interval(sum(scored), 2))
        assert row["agreement"] == pytest.approx(np.mean([v[1] for v in values.values()]))
        assert row["kl"] == pytest.approx(np.mean([v[2] for v in values.values()]))
        assert row["nll"] == pytest.approx(np.mean([v[3] for v in values.values()]))
    for pair in block["pairs"]:
        a, b = cell[(pair["a"], pair["compression"])], cell[(pair["b"], pair["compression"])]
        assert pair["kl_diff"] == pytest.approx(np.mean([a[e][2] - b[e][2] for e in a]))
        assert pair["kl_wins"] == sum(a[e][2] < b[e][2] for e in a)
        scored = [e for e in a if a[e][0] is not None]
        assert pair["n_answered"] == 2
        assert pair["correct_wins"] == sum(a[e][0] and not b[e][0] for e in scored)
        assert pair["correct_losses"] == sum(b[e][0] and not a[e][0] for e in scored)
    text = (out / "report.md").read_text()
    assert "3 of the 5 example(s) have no accepted answers" in text
    row = rows[("knorm", 0.5)]
    assert (f"| 0.50 | knorm | 5 | {row['accuracy']:.2f} ({row['accuracy_low']:.2f}-{row['accuracy_high']:.2f}) n=2 |"
            in text)


@pytest.mark.parametrize("line, match", [
    ({"context": "c d e", "questions": ["q?"]}, r'questions[0] needs "answers"'),
    ({"context": "c d e", "questions": ["q?"], "answers": 7}, r'"answers" must be a list'),
    ({"context": "c d e", "questions": ["q?", "r?"], "answers": [["x"], [3]]}, r'questions[1] needs "answers"'),
])
def test_cli_data_bad_answers_one_line_exit_2(model_dir, tmp_path, line, match):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(line) + "\n")
    out = tmp_path / "eval"
    done = cli("evaluate", model_dir, "--data", data, "--methods", "full", "-o", out)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("budgetopt evaluate: error:") and "data.jsonl:1:" in done.stderr
    assert match in done.stderr
    assert not out.exists()


def test_cli_refuses_a_foreign_directory_and_keeps_it(model_dir, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = cli("evaluate", model_dir, "--examples", "1", "--context-tokens", "40", "--methods", "full", "-o", out)
    assert done.returncode == 2 and "not a budgetopt evaluation" in done.stderr
    assert os.listdir(out) == ["notes.txt"]


# -- the probes method (ProbeBudgetPress, issue 21) -------------------------------------------------
@pytest.fixture(scope="module")
def probe_setup(setup, tmp_path_factory):
    """The setup's model and tokenizer with a run profiled with the default probes (3 decode steps)."""
    tok, model, _, cal = setup
    folder = tmp_path_factory.mktemp("probecal")
    path = folder / "cal.jsonl"
    lines = [json.loads(line) for line in open(cal)]
    path.write_text("".join(json.dumps({**d, "probes": True, "probe_tokens": 3}) + "\n" for d in lines))
    run = profile_model(model, tok, str(path), scorer="snapkv", sink=2, window=2, max_new_tokens=4,
                        out_dir=str(folder / "run"), progress=False)
    return tok, model, run, str(path), str(folder / "run")


def test_probes_method_answers_equal_kvpress_pipeline(probe_setup):
    from budgetopt.calibration import DEFAULT_PROBES
    from budgetopt.runs import load_probe_run, load_profile_run
    from budgetopt.torch import ProbeBudgetPress, encode_probes

    tok, model, run, _, run_dir = probe_setup
    assert run.probes is not None and len(run.probes.pairs) == 3 * len(run.meta["questions"])
    # the run read back from disk, probes attached, is the run profile_model returned
    loaded = dataclasses.replace(load_profile_run(run_dir), probes=load_probe_run(run_dir))
    probe_ids = encode_probes(tok, DEFAULT_PROBES)
    (method,) = ev.standard_methods(["probes"], scorer="snapkv", run=loaded, probe_ids=probe_ids)
    press = method.make(0.8)
    assert isinstance(press, ProbeBudgetPress) and press.probe_tokens == 3 and press.allocator.probe_beta is not None
    assert not ev.replayable(press)  # it decodes the probes during the pre-fill: evaluate pre-fills under it
    for example in [tasks.make_examples(t, 1, context_length=CONTEXT)[0] for t in ("passkey", "vartrack")]:
        record = ev.evaluate_example(model, tok, example, [method], [0.3, 0.8], max_new_tokens=6)
        setting = record["settings"]["question"]
        length = setting["context_tokens"]
        for res in setting["results"]:
            fresh = method.make(res["compression"])
            assert res["answer"] == pipeline_answer(model, tok, example, fresh, "question", 6), res["compression"]
            assert fresh.last_probe_oracles is not None  # the pipeline's pre-fill decoded the probes
            # the cache keeps exactly the allocator's whole budget (kvpress's masking hides the rest)
            ra = fresh.allocator
            assert res["kept_tokens"] == max(fresh.total_budget(length), ra.min_total_budget(length))
            assert res["kept_tokens"] < model.config.num_hidden_layers * 2 * length


def test_probes_rank_method_is_the_probe_press_ranking_by_probes(probe_setup):
    from budgetopt.calibration import DEFAULT_PROBES
    from budgetopt.torch import ProbeBudgetPress, encode_probes

    tok, model, run, _, _ = probe_setup
    probe_ids = encode_probes(tok, DEFAULT_PROBES)
    by_scores, by_probes = ev.standard_methods(["probes", "probes_rank"], scorer="snapkv", run=run,
                                               probe_ids=probe_ids)
    a, b = by_scores.make(0.7), by_probes.make(0.7)
    assert isinstance(b, ProbeBudgetPress) and (a.rank, b.rank) == ("scores", "probes")
    assert b.allocator is a.allocator  # one fit for both: the same budgets
    assert (b.probe_tokens, b.head_reduce, b.step_reduce) == (a.probe_tokens, a.head_reduce, a.step_reduce)
    assert not ev.replayable(b)  # it decodes the probes during the pre-fill: evaluate pre-fills under it
    example = tasks.make_examples("passkey", 1, context_length=CONTEXT)[0]
    record = ev.evaluate_example(model, tok, example, [by_scores, by_probes], [0.7], max_new_tokens=6)
    results = {r["method"]: r for r in record["settings"]["question"]["results"]}
    assert results["probes_rank"]["kept_tokens"] == results["probes"]["kept_tokens"]
    assert results["probes_rank"]["answer"] == pipeline_answer(model, tok, example, by_probes.make(0.7), "question", 6)
    # alone, it needs what probes needs, and says so under its own name
    with pytest.raises(InvalidInputError, match="method probes_rank needs `probe_ids`"):
        ev.standard_methods(["probes_rank"], scorer="snapkv", run=run)


def test_probes_method_needs_a_run_with_probes(setup, probe_setup):
    from budgetopt.calibration import DEFAULT_PROBES
    from budgetopt.torch import encode_probes

    tok, _, run, _ = setup
    probe_ids = encode_probes(tok, DEFAULT_PROBES)
    with pytest.raises(InvalidInputError, match='add "probes": true .* run budgetopt profile again'):
        ev.standard_methods(["full", "probes"], scorer="snapkv", run=run, probe_ids=probe_ids)
    with_probes = probe_setup[2]
    with pytest.raises(InvalidInputError, match="attach them as run.probes"):
        ev.standard_methods(["probes"], scorer="snapkv", run=dataclasses.replace(with_probes, probes=None),
                            probe_ids=probe_ids)
    with pytest.raises(InvalidInputError, match="needs `probe_ids`"):
        ev.standard_methods(["probes"], scorer="snapkv", run=with_probes)
    with pytest.raises(InvalidInputError, match="need calibration"):
        ev.standard_methods(["probes"], scorer="snapkv", probe_ids=probe_ids)


def test_cli_probes_method(model_dir, tmp_path):
    cal = tmp_path / "cal.jsonl"
    done = cli("evaluate", model_dir, "--tasks", "passkey", "--examples", "3", "--context-tokens", "100",
               "--write-calibration", cal, "-o", tmp_path / "unused")
    assert done.returncode == 0, done.stderr
    plain = tmp_path / "run"
    prof = cli("profile", model_dir, "--calibration", cal, "--scorer", "snapkv", "--sink", "2", "--window", "2",
               "--max-new-tokens", "3", "-o", plain, "--no-progress")
    assert prof.returncode == 0, prof.stderr
    args = ["evaluate", model_dir, "--tasks", "passkey", "--examples", "1", "--context-tokens", "100",
            "--compression", "0.6", "--methods", "full,request,probes,probes_rank", "--max-new-tokens", "3"]
    # a run profiled without probes: one line, exit 2, nothing written
    refused = cli(*args, "--profile", plain, "--calibration", cal, "-o", tmp_path / "eval0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert 'add "probes": true' in refused.stderr and "profile again" in refused.stderr
    assert not (tmp_path / "eval0").exists()
    probed = tmp_path / "cal_probes.jsonl"
    probed.write_text("".join(json.dumps({**json.loads(line), "probes": True, "probe_tokens": 2}) + "\n"
                              for line in cal.read_text().splitlines()))
    run = tmp_path / "run_probes"
    prof = cli("profile", model_dir, "--calibration", probed, "--scorer", "snapkv", "--sink", "2", "--window", "2",
               "--max-new-tokens", "3", "-o", run, "--no-progress")
    assert prof.returncode == 0, prof.stderr
    out = tmp_path / "eval"
    done = cli(*args, "--profile", run, "--calibration", probed, "-o", out, "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["question"]["methods"] == ["full", "request", "probes", "probes_rank"]
    (example_file,) = os.listdir(out / "examples")
    results = json.loads((out / "examples" / example_file).read_text())["settings"]["question"]["results"]
    probes = [r for r in results if r["method"] in ("probes", "probes_rank")]
    assert len(probes) == 2 and 0 < probes[0]["kept_fraction"] < 1
    assert probes[0]["kept_tokens"] == probes[1]["kept_tokens"]  # the same budgets, ranked otherwise
    # the fitted probe gain is recorded: the allocator fitted directly on the run's pairs and probes
    loaded = budgetopt.runs.load_profile_run(run)
    probe_run = budgetopt.runs.load_probe_run(run)
    by_context = {}
    for (c, _), oracle in zip(probe_run.pairs, probe_run.oracles):
        by_context.setdefault(c, []).append(oracle)
    direct = budgetopt.RequestAllocator.fit(list(loaded.oracles), list(loaded.scores), sink=2, window=2,
                                            probe_oracles=[by_context[c] for c, _ in loaded.pairs])
    fit = json.loads((out / "meta.json").read_text())["probe_fit"]
    assert fit["probe_tokens"] == 2 and fit["probes"]["gain"] == direct.info["probes"]["gain"]
    assert set(fit["probes"]["cv"]["gain"]) == {str(g) for g in direct.info["probes"]["cv"]["gain"]}
    text = (out / "report.md").read_text()
    assert f"probe gain {direct.info['probes']['gain']:g} chosen by cross-validation" in text
    # a forced gain says so, and the folder still resumes with the recorded fit
    forced = cli(*args, "--profile", run, "--calibration", probed, "-o", tmp_path / "eval_g", "--no-progress",
                 "--probe-gain", "0.5")
    assert forced.returncode == 0, forced.stderr
    assert "probe gain 0.5 given by --probe-gain" in (tmp_path / "eval_g" / "report.md").read_text()
    again = cli(*args, "--profile", run, "--calibration", probed, "-o", out, "--no-progress")
    assert again.returncode == 0, again.stderr


def test_probes_method_probe_gain(probe_setup):
    from budgetopt.calibration import DEFAULT_PROBES
    from budgetopt.torch import encode_probes

    tok, _, run, _, _ = probe_setup
    probe_ids = encode_probes(tok, DEFAULT_PROBES)
    for gain in (0.0, 0.5):
        (method,) = ev.standard_methods(["probes"], scorer="snapkv", run=run, probe_ids=probe_ids, probe_gain=gain)
        assert method.make(0.5).allocator.info["probes"]["gain"] == gain
    with pytest.raises(InvalidInputError, match="`probe_gain` must be a finite number >= 0"):
        ev.standard_methods(["probes"], scorer="snapkv", run=run, probe_ids=probe_ids, probe_gain=-1.0)
