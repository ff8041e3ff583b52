"""The profiling engine against independent references on tiny random models.

References: the oracle recomputed from the full eager attention matrices of one forward over
context + question + generated tokens and a plain per-head loop over the weights; scorer
arrays recorded from kvpress's own presses compressing online; greedy tokens from
``model.generate``.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("kvpress", reason="the profiler needs kvpress")

import kvpress  # noqa: E402

from budgetopt.errors import InvalidInputError, InvalidTypeError  # noqa: E402
from budgetopt.torch import profiler  # noqa: E402
from budgetopt.torch.profiling import oracle  # noqa: E402
from budgetopt.torch.profiler import (  # noqa: E402
    model_geometry,
    profile_context,
    resolve_scorer,
    value_output_norms,
)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models: thread start-up and contention cost more than the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512)


def tiny(family="llama", impl="sdpa", seed=0, **extra):
    configs = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {}),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 8}),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {"pad_token_id": 0}),
        "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
                        {"head_dim": 8, "sliding_window": 12,
                         "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
    }
    config_cls, model_cls, defaults = configs[family]
    torch.manual_seed(seed)
    config = config_cls(**{**TINY, **defaults, **extra})
    config._attn_implementation = impl
    model = model_cls(config).eval()
    model.generation_config.eos_token_id = None
    return model


def ids(n, seed, vocab=96):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def eager_copy(model):
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    return ref


def reference(model, context, question, generated, head_reduce, step_reduce, layers=None):
    """Oracle, unreduced norms and greedy tokens from one full eager forward, by loops.

    ``layers``: the layers to compute (default all); the others stay zero.
    """
    ref = eager_copy(model)
    T, Q, N = len(context), len(question), len(generated)
    seq = torch.cat([context, question, torch.as_tensor(generated[:-1], dtype=torch.int64)])
    with torch.no_grad():
        out = ref(seq[None], output_attentions=True, use_cache=True)
    rows = list(range(T + Q - 1, T + Q - 1 + N))
    greedy = out.logits[0, rows].argmax(-1).numpy()
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    group = heads // kv_heads
    only, layers = layers, ref.model.layers
    oracle = np.zeros((len(layers), kv_heads, T))
    norms = np.zeros((len(layers), heads, T))
    for l, layer in enumerate(layers):
        if only is not None and l not in only:
            continue
        d = layer.self_attn.head_dim
        w = layer.self_attn.o_proj.weight.detach().double()
        v = out.past_key_values.layers[l].values[0, :, :T].double()
        for q in range(heads):
            norms[l, q] = (v[q // group] @ w[:, q * d:(q + 1) * d].T).norm(dim=-1).numpy()
        norms[l] /= norms[l].sum()
        att = out.attentions[l][0].double().numpy()
        for h in range(kv_heads):
            for j in range(T):
                per_step = []
                for r in rows:
                    vals = [att[q, r, j] * norms[l, q, j] for q in range(h * group, (h + 1) * group)]
                    per_step.append(max(vals) if head_reduce == "max" else sum(vals) / group)
                oracle[l, h, j] = max(per_step) if step_reduce == "max" else sum(per_step)
    return oracle, norms, greedy


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3", "mistral", "gemma3_text"])
def test_geometry_read_from_model(family):
    model = tiny(family)
    g = model_geometry(model)
    assert (g.model_type, g.layers, g.heads, g.kv_heads, g.group) == (family, 3, 6, 2, 3)
    assert g.head_dim == model.model.layers[0].self_attn.head_dim
    assert g.o_proj_weight(2) is model.model.layers[2].self_attn.o_proj.weight


def test_unsupported_architecture_is_refused():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(InvalidInputError, match=r"model_type 'gpt2'.*supported model types: llama, mistral"):
        model_geometry(gpt2)
    with pytest.raises(InvalidInputError, match="gpt2"):
        profile_context(gpt2, ids(10, 0, 50), [], scorer="knorm")
    with pytest.raises(InvalidTypeError, match="`model` must be a transformers model"):
        model_geometry(object())


# --------------------------------------------------------------------------- scorers


def test_resolve_scorer():
    for name, cls in profiler.SCORER_NAMES.items():
        assert type(resolve_scorer(name)) is getattr(kvpress, cls)
    assert type(resolve_scorer("Expected-Attention")) is kvpress.ExpectedAttentionPress
    press = kvpress.SnapKVPress(window_size=8)
    assert resolve_scorer(press) is press
    with pytest.raises(InvalidInputError, match=r"'snap' is not a known scorer name; choose one of snapkv"):
        resolve_scorer("snap")
    with pytest.raises(InvalidTypeError, match="AdaKVPress is not one"):
        resolve_scorer(kvpress.AdaKVPress(kvpress.KnormPress()))
    with pytest.raises(InvalidTypeError, match="`scorer` must be a scorer name"):
        resolve_scorer(3)


def online_scores(model, press, context):
    """What ``press.score`` returns per layer while the press compresses online."""
    recorded = {}
    score = press.score

    def recording(module, *args, **kwargs):
        out = score(module, *args, **kwargs)
        recorded[module.layer_idx] = out[0].float().clone()
        return out

    press.score = recording
    with torch.no_grad(), press(model):
        model(context[None], use_cache=True)
    return torch.stack([recorded[l] for l in range(len(recorded))]).numpy()


SCORERS = [
    ("snapkv", lambda: kvpress.SnapKVPress(compression_ratio=0.5, window_size=8)),
    ("knorm", lambda: kvpress.KnormPress(compression_ratio=0.5)),
    ("keydiff", lambda: kvpress.KeyDiffPress(compression_ratio=0.5)),
    ("expected_attention", lambda: kvpress.ExpectedAttentionPress(compression_ratio=0.5)),
    ("tova", lambda: kvpress.TOVAPress(compression_ratio=0.5)),
]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("name,make", SCORERS, ids=[s[0] for s in SCORERS])
def test_scores_equal_the_press_online(name, make, impl):
    model = tiny("qwen2", impl)
    context = ids(40, 1)
    expected = online_scores(model, make(), context)
    got = profile_context(model, context, [], scorer=make()).scores
    assert got.dtype == np.float32 and got.shape == (3, 2, 40)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_scorer_by_name_with_default_settings():
    model = tiny("llama")
    context = ids(80, 2)  # SnapKV's default window is 64 tokens
    expected = online_scores(model, kvpress.SnapKVPress(compression_ratio=0.5), context)
    np.testing.assert_allclose(profile_context(model, context, [], scorer="snapkv").scores, expected, rtol=1e-6)


def test_plain_callable_scorer():
    model = tiny("llama")
    context = ids(30, 3)
    seen = []

    def key_norm(module, hidden_states, keys, values, attentions, kwargs):
        seen.append(module.layer_idx)
        return keys.norm(dim=-1)

    got = profile_context(model, context, [], scorer=key_norm).scores
    with torch.no_grad():
        cache = model(context[None], use_cache=True).past_key_values
    expected = np.stack([layer.keys[0].norm(dim=-1).numpy() for layer in cache.layers])
    assert seen == [0, 1, 2]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_scorer_errors_are_clear():
    model = tiny("llama")
    with pytest.raises(InvalidInputError, match=r"SnapKVPress cannot score this context of 30 tokens"):
        profile_context(model, ids(30, 0), [], scorer="snapkv")
    with pytest.raises(InvalidInputError, match=r"must return scores shaped \(batch, kv_heads, T\) = \(1, 2, 30\)"):
        profile_context(model, ids(30, 0), [], scorer=lambda m, h, k, v, a, kw: k.norm(dim=-1)[:, :1])


# --------------------------------------------------------------------------- value norms


def test_value_output_norms_match_a_loop():
    model = tiny("qwen2")
    g = model_geometry(model)
    gen = torch.Generator().manual_seed(5)
    values = [torch.randn(1, 2, 17, g.head_dim, generator=gen) for _ in range(g.layers)]
    n = value_output_norms(g, values).numpy()
    assert n.shape == (3, 6, 17) and n.dtype == np.float32 and (n >= 0).all()
    np.testing.assert_allclose(n.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    for l in range(g.layers):
        w = g.o_proj_weight(l).detach().double()
        direct = np.array([[float((w[:, q * 8:(q + 1) * 8] @ values[l][0, q // 3, j].double()).norm())
                            for j in range(17)] for q in range(6)])
        np.testing.assert_allclose(n[l], direct / direct.sum(), rtol=2e-4, atol=1e-7)


# --------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("family,impl,seed", [
    ("llama", "sdpa", 0), ("llama", "eager", 1), ("qwen2", "sdpa", 2), ("qwen2", "eager", 3),
])
def test_oracle_equals_full_attention_reference(family, impl, seed, ref):
    model = tiny(family, impl, seed=seed)
    context, questions = ids(24, seed), [ids(5, seed + 10), ids(3, seed + 20)]
    for head_reduce, step_reduce in [("max", "max"), ("mean", "sum")]:
        p = profile_context(model, context, questions, scorer="knorm", max_new_tokens=6,
                            head_reduce=head_reduce, step_reduce=step_reduce)
        assert p.new_tokens == (6, 6)
        for question, oracle, generated in zip(questions, p.oracles, p.generated):
            want, norms, greedy = reference(model, context, question, generated, head_reduce, step_reduce)
            assert oracle.dtype == np.float32 and oracle.shape == (3, 2, 24)
            np.testing.assert_array_equal(generated, greedy)
            np.testing.assert_allclose(oracle, want, rtol=1e-4, atol=1e-8)
        # value_norms: the unreduced norms reduced over each KV group's query heads
        reduced = ref.reduce_gqa(torch.from_numpy(norms), 2, head_reduce).numpy()
        np.testing.assert_allclose(p.value_norms, reduced, rtol=1e-4, atol=1e-9)


def test_greedy_tokens_equal_generate():
    model = tiny("qwen2")
    context, question = ids(30, 7), ids(4, 8)
    p = profile_context(model, context, [question], scorer="knorm", max_new_tokens=8)
    with torch.no_grad():
        out = model.generate(torch.cat([context, question])[None], max_new_tokens=8, min_new_tokens=8,
                             do_sample=False)
    np.testing.assert_array_equal(p.generated[0], out[0, 34:].numpy())


def test_stops_at_eos_and_counts_that_step():
    model = tiny("llama", "eager", seed=4)
    context, question = ids(20, 4), ids(3, 5)
    free = profile_context(model, context, [question], scorer="knorm", max_new_tokens=6)
    model.generation_config.eos_token_id = int(free.generated[0][2])
    first = int(np.flatnonzero(free.generated[0] == free.generated[0][2])[0])
    stopped = profile_context(model, context, [question], scorer="knorm", max_new_tokens=6)
    assert stopped.new_tokens == (first + 1,)
    want, _, _ = reference(model, context, question, stopped.generated[0], "max", "max")
    np.testing.assert_allclose(stopped.oracles[0], want, rtol=1e-4, atol=1e-8)
    kept = profile_context(model, context, [question], scorer="knorm", max_new_tokens=6, stop_at_eos=False)
    assert kept.new_tokens == (6,)


def test_deterministic_and_seeded_sampling():
    model = tiny("qwen2")
    context, questions = ids(20, 9), [ids(4, 10), ids(4, 11)]
    a = profile_context(model, context, questions, scorer="keydiff", max_new_tokens=5)
    b = profile_context(model, context, questions, scorer="keydiff", max_new_tokens=5)
    for x, y in zip(a.oracles + (a.scores, a.value_norms), b.oracles + (b.scores, b.value_norms)):
        np.testing.assert_array_equal(x, y)
    s1 = profile_context(model, context, questions, scorer="knorm", max_new_tokens=12, sampling=True, seed=1)
    s2 = profile_context(model, context, questions, scorer="knorm", max_new_tokens=12, sampling=True, seed=1)
    s3 = profile_context(model, context, questions, scorer="knorm", max_new_tokens=12, sampling=True, seed=2)
    for x, y in zip(s1.generated + s1.oracles, s2.generated + s2.oracles):
        np.testing.assert_array_equal(x, y)
    assert any((x != y).any() for x, y in zip(s1.generated, s3.generated))
    # sampled tokens are followed by the oracle of the same sequence
    want, _, _ = reference(model, context, questions[1], s1.generated[1], "max", "max")
    np.testing.assert_allclose(s1.oracles[1], want, rtol=1e-4, atol=1e-8)


def test_questions_are_independent_of_each_other():
    model = tiny("llama")
    context, q1, q2 = ids(20, 12), ids(4, 13), ids(6, 14)
    both = profile_context(model, context, [q1, q2], scorer="knorm", max_new_tokens=4)
    alone = profile_context(model, context, [q2], scorer="knorm", max_new_tokens=4)
    np.testing.assert_allclose(both.oracles[1], alone.oracles[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(both.generated[1], alone.generated[0])


@pytest.mark.parametrize("family", ["mistral", "qwen3", "phi3", "gemma3_text"])
def test_other_families_match_the_reference(family):
    model = tiny(family, "eager", seed=6)
    context, question = ids(30, 15), ids(4, 16)
    p = profile_context(model, context, [question, ids(3, 17)], scorer="knorm", max_new_tokens=5)
    assert p.scores.shape == p.oracles[0].shape == p.value_norms.shape == (3, 2, 30)
    if family == "gemma3_text":
        # sliding-window layers (window 12) hold, and attend to, the last tokens only
        assert (p.oracles[0][[0, 2], :, :30 - 11] == 0).all()
        assert (p.scores[[0, 2], :, :30 - 11] == np.finfo(np.float32).min).all()
        assert (p.oracles[0][1] > 0).all()
        want, _, greedy = reference(model, context, question, p.generated[0], "max", "max", layers=[1])
        np.testing.assert_array_equal(p.generated[0], greedy)
        np.testing.assert_allclose(p.oracles[0][1], want[1], rtol=1e-4, atol=1e-8)
        return
    want, _, greedy = reference(model, context, question, p.generated[0], "max", "max")
    np.testing.assert_array_equal(p.generated[0], greedy)
    np.testing.assert_allclose(p.oracles[0], want, rtol=1e-4, atol=1e-8)


# --------------------------------------------------------------------------- model state, bad input


def test_attention_implementation_restored_even_on_error(monkeypatch):
    model = tiny("llama", "sdpa")
    profile_context(model, ids(20, 0), [ids(3, 1)], scorer="knorm", max_new_tokens=2)
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(layer.self_attn, "_budgetopt_oracle_state") for layer in model.model.layers)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(oracle.OracleState, "add_row", boom)
    with pytest.raises(RuntimeError, match="boom"):
        profile_context(model, ids(20, 0), [ids(3, 1)], scorer="knorm", max_new_tokens=2)
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(layer.self_attn, "_budgetopt_oracle_state") for layer in model.model.layers)
    monkeypatch.undo()
    with torch.no_grad():  # the model still runs normally
        model(ids(10, 2)[None])


def test_training_mode_is_refused():
    model = tiny("llama").train()
    with pytest.raises(InvalidInputError, match=r"`model` is in training mode.*model.eval\(\)"):
        profile_context(model, ids(20, 0), [ids(3, 1)], scorer="knorm")


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(context_ids=torch.tensor([], dtype=torch.int64)), InvalidInputError, r"`context_ids` is empty"),
    (dict(questions=[torch.tensor([], dtype=torch.int64)]), InvalidInputError, r"`questions\[0\]` is empty"),
    (dict(context_ids=torch.zeros(2, 5, dtype=torch.int64)), InvalidInputError, r"shaped \(T,\) or \(1, T\)"),
    (dict(context_ids=torch.zeros(5)), InvalidTypeError, r"integer token ids"),
    (dict(context_ids=[1, 2, 3]), InvalidTypeError, r"`context_ids` must be a torch.LongTensor"),
    (dict(questions=[torch.tensor([3, 96])]), InvalidInputError, r"token id 96, outside the vocabulary \[0, 96\)"),
    (dict(questions=torch.tensor([1, 2])), InvalidTypeError, r"`questions` must be a sequence"),
    (dict(context_ids=torch.arange(500) % 96), InvalidInputError,
     r"`questions\[0\]`: context \(500\) \+ question \(3\) \+ max_new_tokens \(10\) = 513 tokens exceeds "
     r"the model's max_position_embeddings \(512\)"),
    (dict(max_new_tokens=0), InvalidInputError, r"`max_new_tokens` must be >= 1"),
    (dict(head_reduce="sum"), InvalidInputError, r"`head_reduce` must be one of 'max', 'mean'"),
    (dict(step_reduce="mean"), InvalidInputError, r"`step_reduce` must be one of 'max', 'sum'"),
    (dict(sampling=True, temperature=0), InvalidInputError, r"`temperature` must be a number > 0"),
    (dict(scorer="nope"), InvalidInputError, r"not a known scorer name"),
])
def test_bad_input(kwargs, error, message):
    model = tiny("llama")
    args = dict(context_ids=ids(20, 0), questions=[ids(3, 1)], scorer="knorm", max_new_tokens=10)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        profile_context(model, args.pop("context_ids"), args.pop("questions"), **args)
    assert model.config._attn_implementation == "sdpa"


def test_names_resolve_lazily_from_the_torch_package():
    import budgetopt.torch as bt

    assert bt.profile_context is profile_context and bt.ModelGeometry is profiler.ModelGeometry
    assert "profile_context" not in bt.__all__  # `import *` must not load kvpress
