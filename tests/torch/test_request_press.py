"""RequestBudgetPress on a tiny randomly initialised Llama: the masks follow RequestAllocator."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("kvpress")

from kvpress import KnormPress  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt.errors import InvalidInputError, InvalidTypeError  # noqa: E402
from budgetopt.torch.request_press import RequestBudgetPress  # noqa: E402

LAYERS, KV_HEADS, LENGTH = 3, 2, 48


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                         attn_implementation="sdpa", pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def allocator():
    rng = np.random.default_rng(0)
    scores = [rng.gamma(0.5, size=(LAYERS, KV_HEADS, 40)) for _ in range(3)]
    oracles = [s ** 2 * rng.random(s.shape) for s in scores]
    return budgetopt.RequestAllocator.fit(oracles, scores, sink=2, window=3, shrinkage=0.25)


def kept_counts(model, ids, press):
    cache = DynamicCache()
    with torch.no_grad(), press(model):
        model.model(input_ids=ids, past_key_values=cache)
    counts = np.full((ids.shape[0], LAYERS, KV_HEADS), LENGTH)
    for layer, block in enumerate(model.model.layers):
        indices = block.self_attn.masked_key_indices
        if indices is not None:
            b, h, _ = (i.cpu().numpy() for i in indices)
            np.subtract.at(counts[:, layer], (b, h), 1)
    knorm = np.stack([-cache.layers[i].keys.norm(dim=-1).float().numpy() for i in range(LAYERS)], axis=1)
    return counts, knorm  # knorm: KnormPress's scores, (batch, L, H, T)


@pytest.mark.parametrize("layerwise", [False, True])
def test_masks_follow_the_allocator(model, allocator, layerwise):
    ids = torch.randint(1, 128, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    press = RequestBudgetPress(KnormPress(), allocator, compression_ratio=0.7, layerwise=layerwise)
    counts, knorm = kept_counts(model, ids, press)
    total = press.total_budget(LENGTH)
    for b in range(2):
        expected = allocator.allocate(knorm[b], total, layerwise=layerwise).budgets
        np.testing.assert_array_equal(counts[b], expected)
        assert counts[b].sum() == total


def test_no_compression_and_errors(model, allocator):
    ids = torch.randint(1, 128, (1, LENGTH), generator=torch.Generator().manual_seed(2))
    counts, _ = kept_counts(model, ids, RequestBudgetPress(KnormPress(), allocator))
    assert (counts == LENGTH).all()
    with pytest.raises(InvalidInputError, match="compression_ratio"):
        RequestBudgetPress(KnormPress(), allocator, compression_ratio=1.0)
    with pytest.raises(InvalidTypeError, match="allocator"):
        RequestBudgetPress(KnormPress(), object())
    rng = np.random.default_rng(1)
    s = [rng.random((LAYERS, KV_HEADS, 30))]
    with_norms = budgetopt.RequestAllocator.fit(s, s, value_norms=s, sink=1, window=1)
    with pytest.raises(InvalidInputError, match="value norms"):
        RequestBudgetPress(KnormPress(), with_norms)
    other = budgetopt.RequestAllocator.fit([rng.random((2, KV_HEADS, 30))] * 2, rng.random((2, KV_HEADS, 30)),
                                           sink=1, window=1)
    with pytest.raises(InvalidInputError, match="layers, kv_heads"):
        kept_counts(model, ids, RequestBudgetPress(KnormPress(), other, compression_ratio=0.5))
