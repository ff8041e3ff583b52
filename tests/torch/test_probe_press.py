"""ProbeBudgetPress on a tiny randomly initialised Llama: online probe oracles and budgets.

References: the profiling engine (``profile_context``, what ``budgetopt profile`` runs for one
context and its probes) called directly, ``RequestAllocator.allocate`` called by hand on
KnormPress's scores recomputed from the cache, the profiler's probe encoder, and kvpress's own
pipeline against ``model.generate`` continuing from the press's cache.
"""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("kvpress")
pytest.importorskip("tokenizers")

from kvpress import KnormPress, SnapKVPress  # noqa: E402
from transformers import DynamicCache, pipeline  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt.calibration import read_calibration  # noqa: E402
from budgetopt.errors import InvalidInputError, InvalidTypeError  # noqa: E402
from budgetopt.torch import ProbeBudgetPress, encode_probes, probe_oracles  # noqa: E402
from budgetopt.torch.profiling.context import profile_context  # noqa: E402
from budgetopt.torch.profiling.run import encode_calibration  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the tiny models of test_profiling_run
from conftest import tiny_lm, word_tokenizer  # noqa: E402
from test_profiling_run import TEMPLATE, make_tokenizer  # noqa: E402

WORDS = [f"w{i}" for i in range(4, 120)]
PROBES = ["w5 w17 w40 w9", "w33 w2 w81 w7 w66 w12", "w90"]
PROBE_TOKENS = 5


@pytest.fixture(scope="module")
def model():
    return tiny_lm("Llama")  # 3 layers, 2 KV heads, head_dim 16, sdpa


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def fit_allocator(layers=3, kv_heads=2, gain=1.0, probes=True, seed=0):
    """A RequestAllocator fitted on seeded random arrays of three contexts (two pairs each)."""
    rng = np.random.default_rng(seed)
    scores, oracles, probe = [], [], []
    for c in range(3):
        length = 40 + 4 * c
        context_probes = [rng.gamma(0.5, size=(layers, kv_heads, length)) for _ in range(2)]
        for _ in range(2):
            s = rng.gamma(0.5, size=(layers, kv_heads, length))
            scores.append(s)
            oracles.append(s ** 2 * rng.random(s.shape) + 0.5 * context_probes[0] * rng.random(s.shape))
            probe.append(context_probes)
    kwargs = dict(probe_oracles=probe, probe_gain=gain) if probes else {}
    return budgetopt.RequestAllocator.fit(oracles, scores, sink=2, window=2, shrinkage=0.25, **kwargs)


@pytest.fixture(scope="module")
def allocator():
    return fit_allocator()


def context_text(seed, n=40):
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=n))


def held_counts(model, length):
    """Tokens each (layer, KV head) still sees: ``length`` minus kvpress's masked keys."""
    counts = np.full((len(model.model.layers), model.config.num_key_value_heads), length)
    for layer, block in enumerate(model.model.layers):
        indices = getattr(block.self_attn, "masked_key_indices", None)
        if indices is not None:
            b, h, _ = (i.cpu().numpy() for i in indices)
            assert (b == 0).all()
            np.subtract.at(counts[layer], h, 1)
    return counts


def knorm_scores(cache):
    return np.stack([-layer.keys[0].norm(dim=-1).float().numpy() for layer in cache.layers])


def hand_budgets(model, allocator, press, context_ids, probe_ids):
    """The reference: KnormPress's scores and the press's probe oracles into allocate, by hand;
    and the engine's oracles, which the press's must match (within float tolerance: the batch
    sums in another order, so budgets are computed from the press's own oracles, whatever a
    near tie does on another CPU)."""
    ref = profile_context(model, context_ids, probe_ids, scorer="knorm", max_new_tokens=PROBE_TOKENS)
    online = press.last_probe_oracles
    for k, oracle in enumerate(ref.oracles):
        np.testing.assert_allclose(online[k], oracle, rtol=1e-5, atol=1e-6 * float(np.abs(oracle).max()))
    length = context_ids.shape[-1]
    cache = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=context_ids.view(1, -1), past_key_values=cache)
    total = press.total_budget(length)
    scores = knorm_scores(cache)
    budgets = allocator.allocate(scores, total, probe_oracles=list(online)).budgets
    flat = [np.ones_like(o) for o in online]  # what flat probe oracles would give instead
    return ref, budgets, allocator.allocate(scores, total, probe_oracles=flat).budgets


def test_encode_probes_is_the_profilers_encoding(tmp_path):
    probes = ["what is the big tree ?", "where did the dog ran ?", "who sat ?"]
    for template in (None, TEMPLATE):
        tok = make_tokenizer(template)
        path = tmp_path / "cal.jsonl"
        path.write_text('{"context": "the cat sat on the mat .", "questions": ["who sat ?"], "probes": %s}\n'
                        % ('["' + '", "'.join(probes) + '"]'))
        enc = encode_calibration(tok, read_calibration(str(path)), sink=1, window=1, max_new_tokens=2)[0]
        got = encode_probes(tok, probes)
        assert [tuple(g.tolist()) for g in got] == list(enc.probe_ids)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_oracles_equal_the_engines(model, tokenizer, seed):
    context_ids = tokenizer.encode("<s>" + context_text(seed, 30 + 7 * seed), return_tensors="pt",
                                   add_special_tokens=False)
    probe_ids = encode_probes(tokenizer, PROBES)
    cache = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=context_ids, past_key_values=cache)
    keys = [layer.keys.clone() for layer in cache.layers]
    for step_reduce in ("max", "sum"):
        online = probe_oracles(model, cache, probe_ids, probe_tokens=PROBE_TOKENS, step_reduce=step_reduce)
        ref = profile_context(model, context_ids, probe_ids, scorer="knorm", max_new_tokens=PROBE_TOKENS,
                              step_reduce=step_reduce)
        assert online.shape == (len(PROBES),) + ref.oracles[0].shape
        for k, oracle in enumerate(ref.oracles):
            scale = float(np.abs(oracle).max())
            assert scale > 0
            np.testing.assert_allclose(online[k], oracle, rtol=1e-5, atol=1e-6 * scale)
    # the context's cache is untouched: same length, same keys
    assert cache.get_seq_length() == context_ids.shape[1]
    assert all(torch.equal(a, layer.keys) for a, layer in zip(keys, cache.layers))


def test_probes_stopping_at_eos_are_the_engines(model):
    # EOS set to a token some probes generate early: their oracles stop there, the others go on
    g = torch.Generator().manual_seed(3)
    context_ids = torch.randint(3, model.config.vocab_size, (36,), generator=g)
    candidates = [torch.randint(3, model.config.vocab_size, (n,), generator=g) for n in (2, 3, 4) * 3]
    free = profile_context(model, context_ids, candidates, scorer="knorm", max_new_tokens=PROBE_TOKENS,
                           stop_at_eos=False).generated
    eos = int(free[0][1])  # the first probe's second token
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        ref = profile_context(model, context_ids, candidates, scorer="knorm", max_new_tokens=PROBE_TOKENS)
        assert min(ref.new_tokens) < PROBE_TOKENS == max(ref.new_tokens)  # some stop at EOS, some do not
        cache = DynamicCache()
        with torch.no_grad():
            model.model(input_ids=context_ids.view(1, -1), past_key_values=cache)
        online = probe_oracles(model, cache, candidates, probe_tokens=PROBE_TOKENS)
    finally:
        model.generation_config.eos_token_id = saved
    for k, oracle in enumerate(ref.oracles):
        np.testing.assert_allclose(online[k], oracle, rtol=1e-5, atol=1e-6 * float(np.abs(oracle).max()))
    without = probe_oracles(model, cache, candidates, probe_tokens=PROBE_TOKENS, stop_at_eos=False)
    stopped = [k for k, n in enumerate(ref.new_tokens) if n < PROBE_TOKENS]
    assert any(not np.allclose(without[k], ref.oracles[k]) for k in stopped)  # stopping changed them


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_budgets_in_the_pipeline_are_allocate_by_hand(model, tokenizer, allocator, ratio):
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    context = context_text(10)
    context_ids = tokenizer.encode("<s>" + context, return_tensors="pt", add_special_tokens=False)
    length = context_ids.shape[1]
    probe_ids = encode_probes(tokenizer, PROBES)
    press = ProbeBudgetPress(KnormPress(), allocator, probe_ids, probe_tokens=PROBE_TOKENS, compression_ratio=ratio)
    cache = DynamicCache()
    with torch.no_grad():
        answer = pipe(context, question="w8 w9 w10 w11", press=press, max_new_tokens=6, cache=cache)["answer"]
    counts = held_counts(model, length)
    _, budgets, flat = hand_budgets(model, allocator, press, context_ids, probe_ids)
    np.testing.assert_array_equal(counts, budgets)
    if ratio == 0.7:  # the probe term is live there: flat probe oracles would give other budgets
        assert not np.array_equal(budgets, flat)
    assert counts.sum() == press.total_budget(length)
    assert counts.min() < length  # something was compressed
    # the cache holds the context only (no probe or answer tokens), with the prefill's own keys
    # and values wherever kvpress did not write its fake keys over a hidden one
    plain = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=context_ids, past_key_values=plain)
    assert cache.get_seq_length() == length
    for layer, (a, b) in enumerate(zip(cache.layers, plain.layers)):
        seen = torch.ones(a.keys.shape[:3], dtype=torch.bool)
        indices = model.model.layers[layer].self_attn.masked_key_indices
        seen[indices] = False
        torch.testing.assert_close(a.keys[seen], b.keys[seen], rtol=0, atol=0)
        torch.testing.assert_close(a.values, b.values, rtol=0, atol=0)
    assert answer


def test_pipeline_answers_as_generate_from_the_press_cache(model, tokenizer, allocator):
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    context, question = context_text(11), "w3 w44 w45 w46 w47"
    press = ProbeBudgetPress(KnormPress(), allocator, encode_probes(tokenizer, PROBES), probe_tokens=PROBE_TOKENS,
                             compression_ratio=0.75)
    with torch.no_grad():
        answer = pipe(context, question=question, press=press, max_new_tokens=8)["answer"]
        context_ids = tokenizer.encode("<s>" + context, return_tensors="pt", add_special_tokens=False)
        question_ids = tokenizer.encode(question + "\n", return_tensors="pt", add_special_tokens=False)
        cache, plain = DynamicCache(), DynamicCache()
        model.model(input_ids=context_ids, past_key_values=plain)
        with press(model):
            model.model(input_ids=context_ids, past_key_values=cache)
        # right after the press: exactly the prefill's cache, no probe token left
        assert cache.get_seq_length() == context_ids.shape[1]
        for a, b in zip(cache.layers, plain.layers):
            torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=0)
            torch.testing.assert_close(a.values, b.values, rtol=0, atol=0)
        assert press.last_probe_oracles.shape[0] == len(PROBES)
        prompt = torch.cat([context_ids, question_ids], dim=1)
        out = model.generate(prompt, past_key_values=cache, max_new_tokens=8, do_sample=False)
    reference = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    assert answer == reference


def test_generate_under_the_press(model, allocator):
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, model.config.vocab_size, (1, 44), generator=g)
    probe_ids = [torch.randint(3, model.config.vocab_size, (n,), generator=g) for n in (2, 5)]
    press = ProbeBudgetPress(KnormPress(), allocator, probe_ids, probe_tokens=PROBE_TOKENS, compression_ratio=0.6)
    with torch.no_grad(), press(model):
        out = model.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert out.shape[1] == prompt.shape[1] + 6
    counts = held_counts(model, prompt.shape[1])  # generate's decode steps keep the prefill's masks
    _, budgets, _ = hand_budgets(model, allocator, press, prompt[0], probe_ids)
    np.testing.assert_array_equal(counts, budgets)
    # the answer is the greedy continuation of the masked cache: the same masks, fed step by step
    cache = DynamicCache()
    with torch.no_grad():
        with press(model):
            logits = model(input_ids=prompt, past_key_values=cache).logits
        tokens = [int(logits[0, -1].argmax())]
        for _ in range(5):
            logits = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache).logits
            tokens.append(int(logits[0, -1].argmax()))
    assert out[0, prompt.shape[1]:].tolist() == tokens


def test_no_compression_runs_no_probes(model, allocator):
    ids = torch.randint(3, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(6))
    press = ProbeBudgetPress(KnormPress(), allocator, [torch.tensor([4, 5])], probe_tokens=3)
    with torch.no_grad(), press(model):
        model.model(input_ids=ids, past_key_values=DynamicCache())
    assert press.last_probe_oracles is None
    assert (held_counts(model, 40) == 40).all()


def test_errors(model, allocator):
    probes = [torch.tensor([4, 5])]
    with pytest.raises(InvalidInputError, match="without probes"):
        ProbeBudgetPress(KnormPress(), fit_allocator(probes=False), probes)
    with pytest.raises(InvalidInputError, match="compression_ratio"):
        ProbeBudgetPress(KnormPress(), allocator, probes, compression_ratio=1.0)
    with pytest.raises(InvalidInputError, match="compression_ratio"):
        ProbeBudgetPress(KnormPress(), allocator, probes, compression_ratio=-0.1)
    with pytest.raises(InvalidTypeError, match="allocator"):
        ProbeBudgetPress(KnormPress(), object(), probes)
    with pytest.raises(InvalidTypeError, match="probe_ids"):
        ProbeBudgetPress(KnormPress(), allocator, "what ?")
    with pytest.raises(InvalidTypeError, match="probe_ids"):
        ProbeBudgetPress(KnormPress(), allocator, [])
    with pytest.raises(InvalidInputError, match=r"probe_ids\[0\]"):
        ProbeBudgetPress(KnormPress(), allocator, [torch.tensor([], dtype=torch.int64)])
    with pytest.raises(InvalidInputError, match="probe_tokens"):
        ProbeBudgetPress(KnormPress(), allocator, probes, probe_tokens=0)
    with pytest.raises(InvalidTypeError, match="probe_tokens"):
        ProbeBudgetPress(KnormPress(), allocator, probes, probe_tokens=True)
    with pytest.raises(InvalidInputError, match="step_reduce"):
        ProbeBudgetPress(KnormPress(), allocator, probes, step_reduce="mean")
    with pytest.raises(InvalidTypeError, match="encode_probes|probes"):
        encode_probes(word_tokenizer(), "w5 ?")
    ids = torch.randint(3, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(7))
    # eager attention: kvpress cannot mask heads
    eager = tiny_lm("Llama")
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager"
    with pytest.raises(InvalidInputError, match="eager"):
        with press_of(allocator, probes)(eager):
            pass
    # a probe id outside the model's vocabulary, found when the press meets the model
    with pytest.raises(InvalidInputError, match=r"probe_ids\[0\].*vocabulary"):
        with press_of(allocator, [torch.tensor([10_000])])(model):
            pass
    # another geometry
    with pytest.raises(InvalidInputError, match="layers, kv_heads"):
        with press_of(fit_allocator(layers=2), probes)(model):
            pass
    # two requests in one batch
    with pytest.raises(InvalidInputError, match="batch 1"):
        with torch.no_grad(), press_of(allocator, probes)(model):
            model.model(input_ids=ids.repeat(2, 1), past_key_values=DynamicCache())
    # a scorer that cannot score so short a context (kvpress asserts it): a typed error
    snap = ProbeBudgetPress(SnapKVPress(window_size=64), allocator, probes, compression_ratio=0.5)
    with pytest.raises(InvalidInputError, match="SnapKVPress cannot score this context of 40 tokens"):
        with torch.no_grad(), snap(model):
            model.model(input_ids=ids, past_key_values=DynamicCache())
    # probe_oracles' own checks: a context + probe + probe_tokens beyond the model's positions
    cache = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=ids, past_key_values=cache)
    with pytest.raises(InvalidInputError, match="max_position_embeddings"):
        probe_oracles(model, cache, probes, probe_tokens=model.config.max_position_embeddings)
    with pytest.raises(InvalidInputError, match="step_reduce"):
        probe_oracles(model, cache, probes, step_reduce="min")


# -- rank="probes": each head keeps the tokens its probes attended to most ------------------------------
def probe_keys_by_hand(oracles):
    """Reference keys of rank="probes", by a direct loop: for each token of each head, the sum
    over probes of that probe's oracle over its total mass (all layers, heads and tokens)."""
    k_probes, layers, heads, length = oracles.shape
    totals = [sum(float(x) for x in oracles[k].ravel()) for k in range(k_probes)]
    keys = np.zeros((layers, heads, length))
    for layer in range(layers):
        for head in range(heads):
            for t in range(length):
                keys[layer, head, t] = sum(float(oracles[k, layer, head, t]) / (totals[k] or 1.0)
                                           for k in range(k_probes))
    return keys


def kept_by_hand(keys, budgets, sink, window):
    """(L, H, T) bool: each head keeps its sink, its window and its ``budget - sink - window``
    largest middle keys, equal keys going to the lower position (keep_mask's rule), by a sort."""
    layers, heads, length = keys.shape
    kept = np.zeros(keys.shape, dtype=bool)
    for layer in range(layers):
        for head in range(heads):
            row = [float(x) for x in keys[layer, head]]
            middle = sorted(range(sink, length - window), key=lambda t: (-row[t], t))
            kept[layer, head, :sink] = True
            kept[layer, head, length - window:] = True
            kept[layer, head, middle[:max(int(budgets[layer, head]) - sink - window, 0)]] = True
    return kept


def kept_positions(model, length):
    """(L, H, T) bool: the tokens kvpress's masking leaves visible to each KV head."""
    kept = np.ones((len(model.model.layers), model.config.num_key_value_heads, length), dtype=bool)
    for layer, block in enumerate(model.model.layers):
        indices = getattr(block.self_attn, "masked_key_indices", None)
        if indices is not None:
            _, h, t = (i.cpu().numpy() for i in indices)
            kept[layer, h, t] = False
    return kept


@pytest.mark.parametrize("ratio", [0.4, 0.8])
def test_rank_probes_keeps_each_heads_budget_of_its_top_probe_tokens(model, tokenizer, allocator, ratio):
    context_ids = tokenizer.encode("<s>" + context_text(12, n=48), return_tensors="pt", add_special_tokens=False)
    length = context_ids.shape[1]
    probe_ids = encode_probes(tokenizer, PROBES)
    kept = {}
    for rank in ("scores", "probes"):
        press = ProbeBudgetPress(KnormPress(), allocator, probe_ids, probe_tokens=PROBE_TOKENS,
                                 compression_ratio=ratio, rank=rank)
        with torch.no_grad(), press(model):
            model.model(input_ids=context_ids, past_key_values=DynamicCache())
        kept[rank] = kept_positions(model, length)
        _, budgets, _ = hand_budgets(model, allocator, press, context_ids[0], probe_ids)
        # the budgets are the allocator's either way: every head keeps exactly its own
        np.testing.assert_array_equal(kept[rank].sum(axis=-1), budgets)
        assert (budgets > allocator.sink + allocator.window).any()
        if rank == "probes":
            keys = probe_keys_by_hand(press.last_probe_oracles)
            np.testing.assert_array_equal(kept["probes"], kept_by_hand(keys, budgets, allocator.sink, allocator.window))
        else:  # the scorer's ranking, as before (KnormPress's scores: the keys' negative norms)
            cache = DynamicCache()
            with torch.no_grad():
                model.model(input_ids=context_ids, past_key_values=cache)
            by_scores = kept_by_hand(knorm_scores(cache), budgets, allocator.sink, allocator.window)
            np.testing.assert_array_equal(kept["scores"], by_scores)
    assert kept["probes"][..., :allocator.sink].all() and kept["probes"][..., length - allocator.window:].all()
    assert not np.array_equal(kept["probes"], kept["scores"])  # the option changes which tokens are kept


def test_probe_rank_keys_by_hand():
    from budgetopt.torch.probe_press import probe_rank_keys

    # probe 0 has mass 4, probe 1 mass 2, probe 2 none: keys are o0 / 4 + o1 / 2 + o2
    o = np.zeros((3, 1, 2, 4))
    o[0, 0, 0] = [1, 0, 2, 1]
    o[1, 0, 1] = [0, 1, 0, 1]
    np.testing.assert_allclose(probe_rank_keys(o)[0], [[0.25, 0, 0.5, 0.25], [0, 0.5, 0, 0.5]], rtol=0, atol=0)
    # equal keys go to the lower position (keep_mask's rule, which the press applies to these keys)
    keys = torch.from_numpy(probe_rank_keys(o))
    mask = budgetopt.torch.keep_mask(keys[0:1], np.array([1, 1]))
    assert mask[0].tolist() == [[False, False, True, False], [False, True, False, False]]
    mask = budgetopt.torch.keep_mask(keys[0:1], np.array([2, 2]))
    assert mask[0].tolist() == [[True, False, True, False], [False, True, False, True]]


def test_rank_option_errors(allocator):
    probes = [torch.tensor([4, 5])]
    for bad in ("probe", "Scores", "both", ""):
        with pytest.raises(InvalidInputError, match=r"`rank` must be one of 'scores', 'probes'; got"):
            ProbeBudgetPress(KnormPress(), allocator, probes, rank=bad)
    for bad in (None, 1, ["probes"]):
        with pytest.raises(InvalidTypeError, match=r"`rank` must be one of 'scores', 'probes'; got"):
            ProbeBudgetPress(KnormPress(), allocator, probes, rank=bad)
    with pytest.raises(TypeError):  # keyword-only
        ProbeBudgetPress(KnormPress(), allocator, probes, 5, 0.5, "max", "max", True, "probes")
    press = ProbeBudgetPress(KnormPress(), allocator, probes, rank="probes")
    assert "rank='probes'" in repr(press)
    assert "rank='scores'" in repr(ProbeBudgetPress(KnormPress(), allocator, probes))


def press_of(allocator, probes):
    return ProbeBudgetPress(KnormPress(), allocator, probes, probe_tokens=3, compression_ratio=0.5)
