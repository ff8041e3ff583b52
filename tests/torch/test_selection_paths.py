"""The threshold selection behind keep_mask and compact: both of its paths (top-k values for
host budgets, a sort of the values for budgets given as a tensor) against the per-head
reference loop, on rows long enough that the top-k is a real selection, with many ties
and with NaN, infinities and signed zeros."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from budgetopt.torch import compact, keep_mask  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _special_scores(shape, dtype, seed):
    """Few distinct values, with NaN, +-inf and -0.0 mixed in, so the threshold is often a
    tied, special or zero value."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor([float("nan"), float("-inf"), float("inf"), -0.0, 0.0, -1.0, 0.5, 2.0])
    pick = torch.randint(0, len(pool), shape, generator=gen)
    return pool[pick].to(dtype)


def _budgets(heads, length, seed):
    """Per-head budgets (batch 2) covering 0, 1, a few, most, all and more than all."""
    rng = np.random.default_rng(seed)
    fixed = np.array([0, 1, length // 3, length - 1, length, length + 5])
    rows = [fixed[:heads], rng.integers(0, length + 1, size=heads)]
    return np.stack(rows)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "tied", "special"])
@pytest.mark.parametrize("sink,window", [(0, 0), (3, 5)])
def test_long_rows_match_reference_on_both_paths(ref, dtype, kind, sink, window):
    batch, heads, length = 2, 6, 1500
    seed = {"random": 1, "tied": 2, "special": 3}[kind] + 10 * sink
    if kind == "random":
        scores = ref.random_scores((batch, heads, length), dtype, seed)
    elif kind == "tied":
        scores = ref.tied_scores((batch, heads, length), dtype, seed, levels=4)
    else:
        scores = _special_scores((batch, heads, length), dtype, seed)
    budgets = _budgets(heads, length, seed)
    expected = ref.keep_mask(scores, budgets, sink, window)
    host = keep_mask(scores, budgets, sink=sink, window=window)  # top-k path
    device = keep_mask(scores, torch.as_tensor(budgets), sink=sink, window=window)  # sort path
    np.testing.assert_array_equal(host.numpy(), expected)
    np.testing.assert_array_equal(device.numpy(), expected)

    keys = torch.arange(batch * heads * length, dtype=torch.float32).reshape(batch, heads, length, 1)
    for kv in (compact(keys, keys, scores, budgets, sink=sink, window=window),
               compact(keys, keys, scores, torch.as_tensor(budgets), sink=sink, window=window)):
        for b in range(batch):
            for h in range(heads):
                pos = np.flatnonzero(expected[b, h])
                n = len(pos)
                assert kv.positions[b, h, :n].tolist() == pos.tolist()
                assert (kv.positions[b, h, n:] == -1).all()
                assert kv.keys[b, h, :n, 0].tolist() == (keys[b, h, pos, 0]).tolist()


def test_threshold_ties_before_and_after_higher_scores():
    # Sorted: 3, 2, 2, 1, 1, 1; the 4th largest is 1, tied three times: the three tokens
    # above it are kept, then the first of the 1s (position 0), not the later ones.
    scores = torch.tensor([[[1.0, 2.0, 1.0, 3.0, 1.0, 2.0]]])
    for budgets in ([4], torch.tensor([4])):
        assert keep_mask(scores, budgets).tolist() == [[[True, True, False, True, False, True]]]
        assert compact(scores.unsqueeze(-1), scores.unsqueeze(-1), scores, budgets).positions.tolist() \
            == [[[0, 1, 3, 5]]]


def test_heads_with_smaller_budgets_than_the_largest(ref):
    # One head takes everything, the others take part of the same scores: their thresholds
    # come from the same top-k values at different ranks.
    scores = ref.tied_scores((1, 4, 200), torch.float32, seed=4, levels=3).expand(1, 4, 200)
    budgets = np.array([200, 67, 66, 1])
    got = keep_mask(scores, budgets)
    np.testing.assert_array_equal(got.numpy(), ref.keep_mask(scores, budgets))
    assert got.sum(-1).tolist() == [[200, 67, 66, 1]]


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 17), (1, 8, 1000), (3, 2, 0)])
def test_row_cumsum_equals_cumsum_along_rows(shape):
    from budgetopt.torch.mask import row_cumsum

    gen = torch.Generator().manual_seed(7)
    flags = torch.rand(shape, generator=gen) < 0.3
    got = row_cumsum(flags)
    assert torch.equal(got.long(), flags.long().cumsum(-1))
