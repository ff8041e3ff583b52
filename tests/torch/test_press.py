"""BudgetPress on a tiny randomly initialised Llama (no download), with sdpa attention."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("kvpress")

from kvpress import KnormPress, LUKVPress  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from budgetopt.errors import CurvesFileError, InvalidInputError, InvalidTypeError  # noqa: E402
from budgetopt.result import Allocation  # noqa: E402
from budgetopt.torch import keep_mask  # noqa: E402
from budgetopt.torch.press import BudgetPress  # noqa: E402

LAYERS, KV_HEADS, LENGTH, SINK, WINDOW = 3, 2, 40, 2, 1
BUDGETS = np.array([[10, 25], [5, 40], [18, 18]])  # tokens out of LENGTH


def _model(attn="sdpa"):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                         attn_implementation=attn, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(1, 128, (2, LENGTH), generator=torch.Generator().manual_seed(1))


def _allocation(budgets):
    return Allocation(budgets=budgets, used=int(budgets.sum()), total_budget=int(budgets.sum()), utility=0.0,
                      upper_bound=0.0, gap=0.0, threshold=0.0, method="greedy", status="feasible", seconds=0.0)


def _prefill(model, ids, press):
    """Prefill under ``press``; returns the cache and each layer's masked (b, h, slot) set."""
    cache = DynamicCache()
    with torch.no_grad(), (press(model) if press is not None else _null()):
        model.model(input_ids=ids, past_key_values=cache)
    hidden = []
    for layer in model.model.layers:
        indices = getattr(layer.self_attn, "masked_key_indices", None)
        hidden.append(set() if indices is None else set(zip(*(i.tolist() for i in indices))))
    return cache, hidden


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _next_logits(model, ids, cache):
    """Logits of one decoding step at its true position (as kvpress's pipeline does)."""
    position = torch.full((ids.shape[0], 1), ids.shape[1])
    with torch.no_grad():
        return model(input_ids=ids[:, -1:], past_key_values=cache, position_ids=position).logits


def test_mask_mode_keeps_the_allocation_per_layer_and_kv_head(model, ids):
    press = BudgetPress(KnormPress(), _allocation(BUDGETS), head_capacity=LENGTH, sink=SINK, window=WINDOW)
    cache, hidden = _prefill(model, ids, press)
    for layer in range(LAYERS):
        keys = cache.layers[layer].keys
        assert keys.shape[2] == LENGTH  # masking keeps the full cache
        expected_counts = np.maximum(press.layer_budgets(layer, LENGTH), SINK + WINDOW)
        assert press.layer_budgets(layer, LENGTH).tolist() == BUDGETS[layer].tolist()
        kept = torch.ones(2, KV_HEADS, LENGTH, dtype=torch.bool)
        for b, h, t in hidden[layer]:
            kept[b, h, t] = False
        assert kept.sum(-1).tolist() == [expected_counts.tolist()] * 2
        # The kept set is keep_mask over KnormPress's scores (minus the key norms).
        scores = -torch.linalg.vector_norm(keys, dim=-1, dtype=torch.float32)
        assert torch.equal(kept, keep_mask(scores, BUDGETS[layer], sink=SINK, window=WINDOW))


def test_gather_mode_shrinks_each_layer_to_its_largest_budget(model, ids):
    full, hidden_mask = _prefill(model, ids, BudgetPress(KnormPress(), BUDGETS, head_capacity=LENGTH,
                                                         sink=SINK, window=WINDOW))
    press = BudgetPress(KnormPress(), BUDGETS, head_capacity=LENGTH, sink=SINK, window=WINDOW, mode="gather")
    cache, hidden = _prefill(model, ids, press)
    for layer in range(LAYERS):
        counts = np.maximum(BUDGETS[layer], SINK + WINDOW)
        keys, values = cache.layers[layer].keys, cache.layers[layer].values
        assert keys.shape == (2, KV_HEADS, counts.max(), 16) and values.shape == keys.shape
        # Padding slots, and only they, are hidden.
        assert hidden[layer] == {(b, h, s) for b in range(2) for h in range(KV_HEADS)
                                 for s in range(counts[h], counts.max())}
        for b in range(2):
            for h in range(KV_HEADS):
                positions = sorted(set(range(LENGTH)) - {t for bb, hh, t in hidden_mask[layer] if (bb, hh) == (b, h)})
                assert len(positions) == counts[h]
                assert torch.equal(keys[b, h, : counts[h]], full.layers[layer].keys[b, h, positions])
                assert torch.equal(values[b, h, : counts[h]], full.layers[layer].values[b, h, positions])


def test_gather_and_mask_modes_decode_the_same(model, ids):
    logits = {}
    for mode in ("mask", "gather"):
        press = BudgetPress(KnormPress(), BUDGETS, head_capacity=LENGTH, sink=SINK, window=WINDOW, mode=mode)
        cache, _ = _prefill(model, ids, press)
        logits[mode] = _next_logits(model, ids, cache)
    torch.testing.assert_close(logits["gather"], logits["mask"], rtol=1e-5, atol=1e-5)
    cache, _ = _prefill(model, ids, None)
    assert not torch.allclose(_next_logits(model, ids, cache), logits["mask"], atol=1e-3)  # evictions matter


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_full_budgets_change_nothing(model, ids, mode):
    press = BudgetPress(KnormPress(), np.full((LAYERS, KV_HEADS), 8), head_capacity=8, mode=mode)
    assert press.compression_ratio == 0.0
    cache, hidden = _prefill(model, ids, press)
    assert hidden == [set()] * LAYERS
    reference, _ = _prefill(model, ids, None)
    assert torch.equal(_next_logits(model, ids, cache), _next_logits(model, ids, reference))


def _table(ties=False):
    table = np.random.default_rng(5).uniform(0.2, 0.7, size=(99, LAYERS, KV_HEADS))
    if ties:  # equal fractional parts, which kvpress breaks with torch.topk's order
        table = np.round(table, 2)
        table[:, 0] = 0.2625  # 29.5 of 40 tokens each: one leftover token, two tied heads
    return table


@pytest.mark.parametrize("ties", [False, True], ids=["no-ties", "ties"])
@pytest.mark.parametrize("ratio", [0.3, 0.62])
def test_lukv_table_matches_kvpress_lukvpress(model, ids, tmp_path, ratio, ties):
    table = _table(ties)
    lukv = LUKVPress(KnormPress(), compression_ratio=ratio, sink=SINK, window=WINDOW)
    lukv._budget_curves = table  # preloaded, so kvpress downloads nothing
    _, expected = _prefill(model, ids, lukv)
    assert all(expected)
    np.save(tmp_path / "curve.npy", table)
    for source in (table, tmp_path / "curve.npy", str(tmp_path / "curve.npy")):
        press = BudgetPress(KnormPress(), source, compression_ratio=ratio, sink=SINK, window=WINDOW)
        assert press.compression_ratio == ratio
        _, hidden = _prefill(model, ids, press)
        assert hidden == expected


def test_table_compression_ratio_is_settable_and_zero_means_no_compression(model, ids):
    press = BudgetPress(KnormPress(), _table(), sink=SINK, window=WINDOW)
    assert press.compression_ratio == 0.0
    _, hidden = _prefill(model, ids, press)
    assert hidden == [set()] * LAYERS
    press.compression_ratio = 0.5
    _, hidden = _prefill(model, ids, press)
    counts = [LENGTH * 2 * KV_HEADS - len(h) for h in hidden]
    assert counts == [2 * press.layer_budgets(layer, LENGTH).sum() for layer in range(LAYERS)]
    with pytest.raises(InvalidInputError, match=r"`compression_ratio` must be in \[0, 1\)"):
        press.compression_ratio = 1.0


def test_allocation_fixes_compression_ratio():
    press = BudgetPress(KnormPress(), BUDGETS, head_capacity=LENGTH)
    assert press.compression_ratio == pytest.approx(1 - BUDGETS.sum() / (BUDGETS.size * LENGTH))
    press.compression_ratio = press.compression_ratio  # kvpress tooling may set it back
    with pytest.raises(InvalidInputError, match="fixed by the allocation"):
        press.compression_ratio = 0.5
    with pytest.raises(InvalidInputError, match="fixed by the allocation"):
        BudgetPress(KnormPress(), BUDGETS, head_capacity=LENGTH, compression_ratio=0.1)


def test_allocation_scales_to_other_lengths():
    press = BudgetPress(KnormPress(), BUDGETS, head_capacity=LENGTH)
    assert press.layer_budgets(0, 80).tolist() == [20, 50]
    assert press.layer_budgets(2, 20).tolist() == [9, 9]


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_generation_runs_after_compression(model, ids, mode):
    press = BudgetPress(KnormPress(), _allocation(BUDGETS), head_capacity=LENGTH, sink=SINK, window=WINDOW, mode=mode)
    with torch.no_grad(), press(model):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             min_new_tokens=5)
    assert out.shape == (2, LENGTH + 5)
    assert torch.equal(out[:, :LENGTH], ids)


def test_lazy_export_from_package():
    from budgetopt.torch import BudgetPress as exported

    assert exported is BudgetPress


def test_model_mismatch_is_reported(model, ids):
    press = BudgetPress(KnormPress(), np.full((2, KV_HEADS), 4), head_capacity=8)
    with pytest.raises(InvalidInputError, match=r"\(layers, kv_heads\) = \(2, 2\) but the model has \(3, 2\)"):
        _prefill(model, ids, press)


def test_eager_attention_is_refused(ids):
    press = BudgetPress(KnormPress(), BUDGETS, head_capacity=LENGTH)
    with pytest.raises(InvalidInputError, match="eager"):
        _prefill(_model("eager"), ids, press)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((LUKVPress(), BUDGETS), {"head_capacity": 40}, InvalidTypeError, "`press` must be a kvpress ScorerPress"),
        ((KnormPress(), BUDGETS), {"head_capacity": 40, "mode": "copy"}, InvalidInputError, "`mode` must be one of"),
        ((KnormPress(), BUDGETS), {}, InvalidInputError, "`head_capacity` is required"),
        ((KnormPress(), BUDGETS), {"head_capacity": 20}, InvalidInputError, r"<= `head_capacity` \(20\)"),
        ((KnormPress(), np.full((99, 3, 2), 0.5)), {"head_capacity": 8}, InvalidInputError, "`head_capacity` applies"),
        ((KnormPress(), BUDGETS), {"head_capacity": 40, "sink": -1}, InvalidInputError, "`sink` must be >= 0"),
        ((KnormPress(), BUDGETS), {"head_capacity": 40, "window": 0.5}, InvalidTypeError, "`window` must be an integer"),
        ((KnormPress(), "/nonexistent/curve.npy"), {}, CurvesFileError, "no such file"),
        ((KnormPress(), BUDGETS.astype(float)), {"head_capacity": 40}, InvalidTypeError, "integer dtype"),
    ],
)
def test_errors_name_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        BudgetPress(*args, **kwargs)


# -- lukv_press: kvpress's own LUKVPress reading a local table ---------------------------------
def test_lukv_press_is_kvpress_lukvpress_with_the_table(model, ids, tmp_path):
    """The press lukv_press returns is kvpress's LUKVPress: pre-filling with it hides, per
    layer and KV head, exactly T - keep_counts_from_prune_ratios(table[row, layer], T) keys;
    a table file gives the same press."""
    from budgetopt import keep_counts_from_prune_ratios, save_lukv_table
    from budgetopt.torch import lukv_press

    rng = np.random.default_rng(4)
    table = rng.uniform(0.05, 0.95, (99, LAYERS, KV_HEADS))
    save_lukv_table(tmp_path / "t.npy", table)
    for source in (table, tmp_path / "t.npy", str(tmp_path / "t.npy")):
        press = lukv_press(source, KnormPress(), compression_ratio=0.4, sink=SINK, window=WINDOW)
        assert type(press) is LUKVPress and press.compression_ratio == 0.4
        _, hidden = _prefill(model, ids[:1], press)
        for layer in range(LAYERS):
            kept = keep_counts_from_prune_ratios(table[39, layer], LENGTH)
            per_head = np.bincount([h for _, h, _ in hidden[layer]], minlength=KV_HEADS)
            np.testing.assert_array_equal(LENGTH - per_head, kept)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(table=np.full((98, LAYERS, KV_HEADS), 0.5)), InvalidInputError, r"`table` must have shape \(99"),
    (dict(table=np.full((99, LAYERS, KV_HEADS), 1.5)), InvalidInputError, r"`table` must hold prune ratios"),
    (dict(press="snapkv"), InvalidTypeError, "`press` must be a kvpress ScorerPress"),
    (dict(compression_ratio=1.0), InvalidInputError, "compression_ratio"),
    (dict(sink=-1), InvalidInputError, "`sink`"),
    (dict(table="missing.npy"), CurvesFileError, "missing.npy: no such file"),
])
def test_lukv_press_refuses(kwargs, error, match, tmp_path, monkeypatch):
    from budgetopt.torch import lukv_press

    monkeypatch.chdir(tmp_path)
    args = dict(table=np.full((99, LAYERS, KV_HEADS), 0.5), press=KnormPress(), compression_ratio=0.5)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        lukv_press(args.pop("table"), args.pop("press"), **args)
