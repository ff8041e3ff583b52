"""Hostile input at the torch adapters' front doors: typed errors, no silent wrap-around."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from budgetopt import InvalidInputError, InvalidTypeError  # noqa: E402
from budgetopt.torch import keep_mask, reduce_gqa  # noqa: E402


def test_uint64_budgets_do_not_wrap_in_keep_mask():
    scores = torch.rand(1, 3, 10, generator=torch.Generator().manual_seed(0))
    huge = np.array([2**64 - 1, 2**63, 4], dtype=np.uint64)  # cast to int64 these would be -1 and -2**63
    mask = keep_mask(scores, huge)
    assert mask.shape == (1, 3, 10)
    assert mask[0, 0].all() and mask[0, 1].all()  # more than T tokens: keep all
    expected = torch.zeros(10, dtype=torch.bool)
    expected[torch.topk(scores[0, 2], 4).indices] = True
    assert torch.equal(mask[0, 2], expected)
    # the same budgets as int64 (capped) give the same mask
    assert torch.equal(mask, keep_mask(scores, np.array([10, 10, 4])))


def test_masked_budgets_are_refused_in_keep_mask():
    scores = torch.rand(1, 2, 6)
    with pytest.raises(InvalidTypeError, match="masked array"):
        keep_mask(scores, np.ma.array([3, 2], mask=[0, 1]))


def test_reduce_gqa_with_zero_heads_is_an_error():
    for how in ("mean", "max"):
        with pytest.raises(InvalidInputError, match="at least one query head"):
            reduce_gqa(torch.zeros(1, 0, 5), 1, how)
    assert reduce_gqa(torch.ones(2, 4, 0), 2).shape == (2, 2, 0)  # no tokens is fine
