"""BudgetPress(mode="varlen"): a packed per-head cache that decodes like mode="mask".

Tiny randomly initialised models (no download), sdpa attention. The reference is kvpress's
head-wise masking (``mode="mask"``) with the same budgets: same tokens, same logits.
"""

import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("kvpress")

from kvpress import KnormPress  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from budgetopt.errors import InvalidInputError  # noqa: E402
from budgetopt.torch import compact  # noqa: E402
from budgetopt.torch.press import BudgetPress  # noqa: E402
from budgetopt.torch.varlen_cache import (  # noqa: E402
    ATTENTION_NAME,
    VarlenCache,
    VarlenLayer,
    _attend_per_sequence,
    _decode_packed_merge,
    varlen_attention_forward,
)
from reference_varlen import cpu_varlen  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)

LAYERS, KV_HEADS, HEADS, LENGTH, NEW = 3, 2, 4, 40, 32
HEAD_DIM = 16

# (budgets (layers, kv_heads) in tokens out of LENGTH, sink, window)
CASES = {
    "zero": (np.zeros((LAYERS, KV_HEADS), dtype=int), 0, 0),
    "one": (np.ones((LAYERS, KV_HEADS), dtype=int), 0, 0),
    "sink_window": (np.full((LAYERS, KV_HEADS), 3), 2, 1),
    "full": (np.full((LAYERS, KV_HEADS), LENGTH), 0, 0),
    "one_head_most": (np.array([[37, 1], [2, 38], [39, 0]]), 1, 1),
    "mixed": (np.array([[10, 25], [0, 40], [1, 18]]), 2, 1),
}

_MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": HEAD_DIM}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
}


def _build(arch="llama", attn="sdpa", **overrides):
    config_name, model_name, extra = _MODELS[arch]
    torch.manual_seed(0)
    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                  attn_implementation=attn, pad_token_id=0, **extra)
    kwargs.update(overrides)
    config = getattr(transformers, config_name)(**kwargs)
    return getattr(transformers, model_name)(config).eval()


_CACHE = {}


def model(arch="llama"):
    if arch not in _CACHE:
        _CACHE[arch] = _build(arch)
    return _CACHE[arch]


def _ids(batch):
    return torch.randint(1, 128, (2, LENGTH), generator=torch.Generator().manual_seed(1))[:batch]


def _generate(model, ids, press, attention_mask=None, seed=3, **kwargs):
    """``model.generate`` under ``press``; token 0 (the padding embedding, all zeros) is
    suppressed because kvpress's masking cannot hide keys from an all-zero query."""
    attention_mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    torch.manual_seed(seed)
    with torch.no_grad(), press(model):
        return model.generate(ids, attention_mask=attention_mask, max_new_tokens=NEW, min_new_tokens=NEW,
                              return_dict_in_generate=True, output_logits=True, suppress_tokens=[0],
                              pad_token_id=0, **kwargs)


def _both(model, ids, budgets, sink, window, **kwargs):
    out = {}
    for mode in ("mask", "varlen"):
        press = BudgetPress(KnormPress(), budgets, head_capacity=LENGTH, sink=sink, window=window, mode=mode)
        out[mode] = _generate(model, ids, press, **kwargs)
    return out["mask"], out["varlen"]


def _assert_same_generation(mask, varlen):
    assert torch.equal(varlen.sequences, mask.sequences)
    assert len(varlen.logits) == len(mask.logits) == NEW
    for a, b in zip(varlen.logits, mask.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _expected_counts(budgets, sink, window):
    """Rows each head holds after compaction: its budget, at least its protected tokens."""
    protected = min(sink + window, LENGTH)
    return np.minimum(np.maximum(budgets, protected), LENGTH)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_llama_decodes_like_mask_mode_and_holds_exactly_the_kept_rows(case, batch):
    budgets, sink, window = CASES[case]
    mask, varlen = _both(model(), _ids(batch), budgets, sink, window)
    _assert_same_generation(mask, varlen)

    cache = varlen.past_key_values
    assert isinstance(cache, VarlenCache)
    decoded = NEW - 1  # the last generated token is never fed back
    counts = _expected_counts(budgets, sink, window)
    for layer_idx, layer in enumerate(cache.layers):
        assert isinstance(layer, VarlenLayer)
        kept = batch * int(counts[layer_idx].sum())
        assert layer.keys.shape == (kept, HEAD_DIM) and layer.values.shape == (kept, HEAD_DIM)
        assert layer.decoded_keys.shape == (batch, KV_HEADS, decoded, HEAD_DIM)
        assert layer.decoded_values.shape == layer.decoded_keys.shape
        assert layer.held_rows() == kept + batch * KV_HEADS * decoded
        assert layer.lengths().tolist() == [(counts[layer_idx] + decoded).tolist()] * batch
        assert layer.get_seq_length() == LENGTH + decoded  # positions continue the original sequence
        expected_bytes = (2 * kept * HEAD_DIM * 4 + kept * 4 + (batch * KV_HEADS + 1) * 4
                          + 2 * batch * KV_HEADS * decoded * HEAD_DIM * 4)
        assert layer.nbytes() == expected_bytes
    assert cache.held_rows() == [layer.held_rows() for layer in cache.layers]
    # The mask-mode cache keeps every position of every head.
    assert all(layer.keys.shape == (batch, KV_HEADS, LENGTH + decoded, HEAD_DIM)
               for layer in mask.past_key_values.layers)


@pytest.mark.parametrize("case", ["mixed", "one_head_most"])
@pytest.mark.parametrize("batch", [1, 2])
def test_qwen2_gqa_decodes_like_mask_mode(case, batch):
    budgets, sink, window = CASES[case]
    _assert_same_generation(*_both(model("qwen2"), _ids(batch), budgets, sink, window))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sampling_draws_the_same_tokens(arch):
    budgets, sink, window = CASES["mixed"]
    mask, varlen = _both(model(arch), _ids(2), budgets, sink, window, do_sample=True, top_k=0)
    _assert_same_generation(mask, varlen)
    greedy, _ = _both(model(arch), _ids(2), budgets, sink, window)
    assert not torch.equal(greedy.sequences, mask.sequences)  # sampling did sample


def test_left_padded_batch_hides_the_padding_it_kept():
    budgets, sink, window = CASES["mixed"]
    ids = _ids(2)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :7] = 0
    mask, varlen = _both(model(), ids, budgets, sink, window, attention_mask=attention_mask)
    _assert_same_generation(mask, varlen)
    # Padding has a zero key, the best Knorm score: heads of row 1 kept padded positions,
    # so the mask had to be read through each row's positions.
    layer = varlen.past_key_values.layers[0]
    row1 = slice(layer._offsets[KV_HEADS], layer._offsets[2 * KV_HEADS])
    assert (layer.positions[row1] < 7).any()
    unpadded, _ = _both(model(), ids, budgets, sink, window)
    assert not torch.equal(unpadded.sequences[1], mask.sequences[1])


def test_beam_search_reorders_the_packed_cache():
    budgets, sink, window = CASES["mixed"]
    _assert_same_generation(*_both(model(), _ids(2), budgets, sink, window, num_beams=2))


@pytest.mark.parametrize("arch", ["mistral", "qwen3", "phi3"])
def test_other_kvpress_architectures(arch):
    budgets, sink, window = CASES["mixed"]
    _assert_same_generation(*_both(model(arch), _ids(2), budgets, sink, window))


def test_packed_rows_are_the_mask_mode_kept_rows():
    budgets, sink, window = CASES["mixed"]
    ids = _ids(2)
    full = DynamicCache()
    with torch.no_grad():
        model().model(input_ids=ids, past_key_values=full)
    cache = DynamicCache()
    press = BudgetPress(KnormPress(), budgets, head_capacity=LENGTH, sink=sink, window=window, mode="varlen")
    with torch.no_grad(), press(model()):
        model().model(input_ids=ids, past_key_values=cache)
    assert type(cache) is VarlenCache
    assert model().config._attn_implementation == ATTENTION_NAME  # held while the varlen cache lives
    for layer_idx in range(LAYERS):
        keys, values = full.layers[layer_idx].keys, full.layers[layer_idx].values
        scores = -torch.linalg.vector_norm(keys, dim=-1, dtype=torch.float32)  # KnormPress
        reference = compact(keys, values, scores, budgets[layer_idx], sink=sink, window=window)
        layer = cache.layers[layer_idx]
        for b in range(2):
            for h in range(KV_HEADS):
                start, end = layer._offsets[b * KV_HEADS + h], layer._offsets[b * KV_HEADS + h + 1]
                n = int(reference.lengths[b, h])
                assert end - start == n
                positions = layer.positions[start:end].long()
                assert torch.equal(positions, reference.positions[b, h, :n])
                assert torch.equal(layer.keys[start:end], keys[b, h, positions])
                assert torch.equal(layer.values[start:end], values[b, h, positions])
    del cache, layer
    gc.collect()
    assert model().config._attn_implementation == "sdpa"  # restored once it is freed


# -- the attention paths against a dense reference ------------------------------------------
def _random_layer(seed, batch=2, kv_heads=3, length=12, dim=8, counts=None, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype)
    values = torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype)
    scores = torch.randn(batch, kv_heads, length, generator=gen)
    if counts is None:
        counts = torch.randint(0, length + 1, (batch, kv_heads), generator=gen)
        counts[0, 0] = 0
    kv = compact(keys, values, scores, counts)
    layer = VarlenLayer.from_varlen(kv.to_varlen(), length)
    keep = torch.zeros(batch, kv_heads, length, dtype=torch.bool)
    for b in range(batch):
        for h in range(kv_heads):
            keep[b, h, kv.positions[b, h, : kv.lengths[b, h]]] = True
    return layer, keys, values, keep, gen


def _dense_reference(query, keys, values, keep, new_k, new_v, pad=None):
    """Attention over the full cache with evicted (and padded) positions removed, in float64,
    new tokens causal among themselves."""
    batch, heads, q_len, dim = query.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    out = torch.empty(batch, heads, q_len, values.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for qh in range(heads):
            h = qh // group
            for i in range(q_len):
                visible = keep[b, h].clone()
                if pad is not None:
                    visible &= pad[b, :length]
                k = torch.cat([keys[b, h][visible], new_k[b, h, : new_k.shape[2] - q_len + i + 1]]).double()
                v = torch.cat([values[b, h][visible], new_v[b, h, : new_v.shape[2] - q_len + i + 1]]).double()
                w = torch.softmax(k @ query[b, qh, i].double() / dim ** 0.5, dim=0)
                out[b, qh, i] = w @ v
    return out


class _Module:
    num_key_value_groups, is_causal, training = 2, True, False


@pytest.mark.parametrize("q_len", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_matches_a_dense_reference(q_len, padded):
    layer, keys, values, keep, gen = _random_layer(q_len * 10 + padded)
    batch, kv_heads, length, dim = keys.shape
    steps = [torch.randn(batch, kv_heads, n, dim, generator=gen) for n in (2, q_len)]  # two updates
    for new in steps:
        new_k, new_v = layer.update(new, new * 0.5)
    query = torch.randn(batch, 2 * kv_heads, q_len, dim, generator=gen)
    pad, mask = None, None
    seen = layer.get_seq_length()
    if padded:
        pad = torch.ones(batch, seen, dtype=torch.bool)
        pad[1, :4] = False
        causal = torch.arange(seen)[None, :] <= (seen - q_len + torch.arange(q_len))[:, None]
        mask = (pad[:, None, :] & causal[None]).unsqueeze(1)  # the sdpa mask: (batch, 1, q_len, seen)
    out, weights = varlen_attention_forward(_Module(), query, new_k, new_v, mask)
    assert weights is None and out.shape == (batch, q_len, 2 * kv_heads, dim)
    expected = _dense_reference(query, keys, values, keep, layer.decoded_keys, layer.decoded_values, pad)
    torch.testing.assert_close(out.transpose(1, 2).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_merge_path_matches_the_loop(dtype):
    # The CUDA path (varlen_attn over the packed rows, merged with the tail by log-sum-exp)
    # with a CPU stand-in for the kernel, including heads that kept nothing.
    layer, keys, values, keep, gen = _random_layer(7, dtype=dtype)
    batch, kv_heads, _, dim = keys.shape
    for n in (1, 1, 1):
        new_k, new_v = layer.update(*(torch.randn(batch, kv_heads, n, dim, generator=gen).to(dtype) for _ in "kv"))
    query = torch.randn(batch, 2 * kv_heads, 1, dim, generator=gen).to(dtype)
    merged = _decode_packed_merge(query, layer, new_k, new_v, dim ** -0.5, cpu_varlen)
    looped = _attend_per_sequence(query, layer, new_k, new_v, None, dim ** -0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(merged.float(), looped.float(), rtol=tol, atol=tol)


def test_ordinary_layers_run_sdpa():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 5, 8, generator=gen) for _ in range(3))
    out, _ = varlen_attention_forward(_Module(), q, k, v, None, scaling=0.3)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    torch.testing.assert_close(out, expected.transpose(1, 2))


# -- cache operations ------------------------------------------------------------------------
def test_batch_select_and_crop():
    layer, keys, values, keep, gen = _random_layer(3)
    batch, kv_heads, length, dim = keys.shape
    new = torch.randn(batch, kv_heads, 3, dim, generator=gen)
    layer.update(new, -new)
    spans = [slice(layer._offsets[i], layer._offsets[i + 1]) for i in range(batch * kv_heads)]
    before = [(layer.keys[span].clone(), layer.positions[span].clone()) for span in spans]
    tail = layer.decoded_keys.clone()
    layer.batch_select_indices(torch.tensor([1, 0, 1]))
    assert layer.batch == 3 and layer.cu_seqlens.shape == (3 * kv_heads + 1,)
    for new_b, old_b in enumerate([1, 0, 1]):
        for h in range(kv_heads):
            i = new_b * kv_heads + h
            k, p = before[old_b * kv_heads + h]
            assert torch.equal(layer.keys[layer._offsets[i]:layer._offsets[i + 1]], k)
            assert torch.equal(layer.positions[layer._offsets[i]:layer._offsets[i + 1]], p)
    assert torch.equal(layer.decoded_keys, tail[[1, 0, 1]])
    layer.crop(length + 1)
    assert layer.get_seq_length() == length + 1 and layer.decoded_keys.shape[2] == 1
    layer.crop(-1)
    assert layer.get_seq_length() == length
    with pytest.raises(InvalidInputError, match="cannot crop a compressed cache below its context of 12"):
        layer.crop(5)


# -- errors -----------------------------------------------------------------------------------
def test_decoding_under_another_attention_is_refused_clearly():
    budgets, sink, window = CASES["mixed"]
    ids = _ids(1)
    cache = DynamicCache()
    press = BudgetPress(KnormPress(), budgets, head_capacity=LENGTH, sink=sink, window=window, mode="varlen")
    with torch.no_grad(), press(model()):
        model().model(input_ids=ids, past_key_values=cache)
    step = dict(input_ids=ids[:, -1:], past_key_values=cache, position_ids=torch.tensor([[LENGTH]]))
    model().set_attn_implementation("sdpa")  # the user switches away while the cache lives
    with torch.no_grad(), pytest.raises(InvalidInputError, match="only the 'budgetopt_varlen' attention reads"):
        model()(**step)
    # Selecting the attention explicitly (kvpress pipeline style: explicit positions) works.
    model().set_attn_implementation(ATTENTION_NAME)
    try:
        with torch.no_grad():
            logits = model()(**step).logits
    finally:
        model().set_attn_implementation("sdpa")
    assert torch.isfinite(logits).all()


def test_non_sdpa_models_are_refused_and_the_attention_restored():
    press = BudgetPress(KnormPress(), CASES["mixed"][0], head_capacity=LENGTH, mode="varlen")
    eager = _build(attn="eager")
    with pytest.raises(InvalidInputError, match="needs a model with attn_implementation='sdpa'"):
        with press(eager):
            pass
    assert eager.config._attn_implementation == "eager"
    with pytest.raises(RuntimeError, match="boom"):
        with press(model()):
            assert model().config._attn_implementation == ATTENTION_NAME
            raise RuntimeError("boom")
    assert model().config._attn_implementation == "sdpa"


def test_sliding_window_layers_are_refused():
    sliding = _build("mistral", sliding_window=8)
    press = BudgetPress(KnormPress(), CASES["mixed"][0], head_capacity=LENGTH, mode="varlen")
    match = "without sliding-window or quantized layers; layer 0 is DynamicSlidingWindowLayer"
    with pytest.raises(InvalidInputError, match=match):
        _generate(sliding, _ids(1), press)
    assert sliding.config._attn_implementation == "sdpa"


def test_bad_layer_construction():
    packed = compact(torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 4), [1, 2]).to_varlen()
    with pytest.raises(InvalidInputError, match="`cu_seqlens` must have batch \\* kv_heads \\+ 1 = 5"):
        VarlenLayer(packed.keys, packed.values, packed.positions, packed.cu_seqlens, batch=2, kv_heads=2,
                    context_length=4)
    with pytest.raises(InvalidInputError, match="`cu_seqlens` must rise from 0"):
        VarlenLayer(packed.keys, packed.values, packed.positions, packed.cu_seqlens.flip(0), batch=1, kv_heads=2,
                    context_length=4)
    with pytest.raises(InvalidInputError, match="`keys` and `values` must be \\(total, dim\\)"):
        VarlenLayer(packed.keys[None], packed.values, packed.positions, packed.cu_seqlens, batch=1, kv_heads=2,
                    context_length=4)
    layer = VarlenLayer.from_varlen(packed, 4)
    with pytest.raises(InvalidInputError, match=r"\(batch, kv_heads\) = \(1, 2\)"):
        layer.update(torch.zeros(1, 3, 1, 3), torch.zeros(1, 3, 1, 3))


@pytest.mark.parametrize("layout", ["heads_first", "tokens_first"])
def test_kernel_probe_settles_the_lse_layout(monkeypatch, layout):
    # torch documents varlen_attn's log-sum-exp as (total_q, heads); flash-attn's varlen path
    # returns (heads, total_q). The probe must give _decode_packed_merge (total_q, heads).
    import torch.nn.attention.varlen as varlen_module

    from budgetopt.torch import varlen_cache

    def fake(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, enable_gqa=False):
        assert enable_gqa and return_aux.lse
        out, lse = cpu_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale)
        return out, (lse.t().contiguous() if layout == "heads_first" else lse)

    monkeypatch.setattr(varlen_module, "varlen_attn", fake)
    kernel = varlen_cache._probe_varlen_attn("cpu", torch.float32)
    assert kernel is not None
    layer, keys, values, keep, gen = _random_layer(11)
    batch, kv_heads, _, dim = keys.shape
    new = torch.randn(batch, kv_heads, 1, dim, generator=gen)
    tail_k, tail_v = layer.update(new, -new)
    query = torch.randn(batch, 2 * kv_heads, 1, dim, generator=gen)
    merged = _decode_packed_merge(query, layer, tail_k, tail_v, 0.3, kernel)
    torch.testing.assert_close(merged, _attend_per_sequence(query, layer, tail_k, tail_v, None, 0.3))

    def wrong(*args, **kwargs):
        out, lse = fake(*args, **kwargs)
        return out + 1, lse

    monkeypatch.setattr(varlen_module, "varlen_attn", wrong)
    with pytest.warns(RuntimeWarning, match="disagrees with plain attention"):
        assert varlen_cache._probe_varlen_attn("cpu", torch.float32) is None


def test_lukv_table_source_and_ratio_zero_keep_everything():
    table = np.random.default_rng(5).uniform(0.2, 0.7, size=(99, LAYERS, KV_HEADS))
    ids = _ids(2)
    press = BudgetPress(KnormPress(), table, sink=2, window=1, mode="varlen")  # compression_ratio 0.0
    varlen = _generate(model(), ids, press)
    plain = _generate(model(), ids, _NoPress())
    _assert_same_generation(plain, varlen)
    assert varlen.past_key_values.held_rows() == [2 * KV_HEADS * (LENGTH + NEW - 1)] * LAYERS
    press.compression_ratio = 0.5
    mask = _generate(model(), ids, BudgetPress(KnormPress(), table, compression_ratio=0.5, sink=2, window=1))
    varlen = _generate(model(), ids, press)
    _assert_same_generation(mask, varlen)
    kept = [2 * int(press.layer_budgets(layer, LENGTH).sum()) for layer in range(LAYERS)]
    assert [layer.keys.shape[0] for layer in varlen.past_key_values.layers] == kept


class _NoPress:
    def __call__(self, model):
        import contextlib

        return contextlib.nullcontext()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_vectorised_decoding_step_matches_the_loop(dtype, padded):
    # _decode_segments (every sequence at once) against the per-sequence loop, with heads that
    # kept nothing, padding to hide, and an empty tail.
    from budgetopt.torch.varlen_cache import _decode_segments

    for steps in ((), (1,), (2, 1)):
        layer, keys, values, keep, gen = _random_layer(20 + len(steps) + padded, batch=3, dtype=dtype)
        batch, kv_heads, _, dim = keys.shape
        new_k = layer.decoded_keys
        new_v = layer.decoded_values
        for n in steps:
            new_k, new_v = layer.update(*(torch.randn(batch, kv_heads, n, dim, generator=gen).to(dtype) for _ in "kv"))
        query = torch.randn(batch, 2 * kv_heads, 1, dim, generator=gen).to(dtype)
        mask = None
        if padded:
            mask = torch.ones(batch, 1, 1, layer.get_seq_length(), dtype=torch.bool)
            mask[1, ..., :5] = False
            mask[2, ..., 3] = False
        fast = _decode_segments(query, layer, new_k, new_v, mask, 0.4)
        loop = _attend_per_sequence(query, layer, new_k, new_v, mask, 0.4)
        tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
        # The loop gives NaN where every row a query could see is masked (never while decoding:
        # the new token is always visible); the vectorised step gives zeros there.
        seen = torch.isfinite(loop)
        assert fast.dtype == dtype and torch.isfinite(fast).all() and (fast[~seen] == 0).all()
        torch.testing.assert_close(fast[seen].double(), loop[seen].double(), rtol=tol, atol=tol)
        if not steps:  # row 0, head 0 kept nothing and there is no tail: zeros, as in the loop
            assert int(layer.lengths()[0, 0]) == 0 and (fast[0, :2] == 0).all()


def test_many_short_sequences_take_the_vectorised_step(monkeypatch):
    from budgetopt.torch import varlen_cache

    calls = []
    real = varlen_cache._decode_segments
    monkeypatch.setattr(varlen_cache, "_decode_segments", lambda *a: calls.append(1) or real(*a))
    for batch, length, expected in ((4, 12, 1), (1, 12, 0), (4, 900, 0)):  # 12 seqs short / 3 seqs / long
        layer, keys, values, keep, gen = _random_layer(5, batch=batch, length=length)
        batch, kv_heads, _, dim = keys.shape
        new = torch.randn(batch, kv_heads, 1, dim, generator=gen)
        new_k, new_v = layer.update(new, -new)
        query = torch.randn(batch, 2 * kv_heads, 1, dim, generator=gen)
        calls.clear()
        out, _ = varlen_attention_forward(_Module(), query, new_k, new_v, None)
        assert len(calls) == expected
        reference = _dense_reference(query, keys, values, keep, layer.decoded_keys, layer.decoded_values)
        torch.testing.assert_close(out.transpose(1, 2).double(), reference, rtol=1e-5, atol=1e-5)


def test_varlen_cache_adds_methods_only():
    """The press turns a caller's ``DynamicCache`` into a ``VarlenCache`` by its class alone,
    which keeps the object's state only while the subclass holds none of its own."""
    own = {k for k, v in vars(VarlenCache).items() if not k.startswith("__") or k in ("__init__", "__slots__")}
    assert "__init__" not in own and "__slots__" not in own
    assert all(callable(vars(VarlenCache)[k]) for k in own)
    assert vars(VarlenCache()).keys() == vars(DynamicCache()).keys()
