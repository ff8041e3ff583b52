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


def test_one_rule_reads_the_same_in_the_core_and_the_torch_adapters():
    """One check per rule (budgetopt/_checks.py): a core front door and a torch one that break
    the same rule give the same sentence, with only the argument's name changed."""
    pytest.importorskip("kvpress")
    from kvpress import KnormPress

    import budgetopt
    from budgetopt.torch import BudgetPress, layer_budgets

    scores, budgets, table = np.ones((1, 2, 8)), np.full((1, 2), 4), np.zeros((99, 1, 2))
    pairs = [  # (core call, its argument), (torch call, its argument)
        ((lambda: budgetopt.curves_from_scores(scores, scores, sink=1.5, window=0), "sink"),
         (lambda: BudgetPress(KnormPress(), budgets, window=1.5), "window")),
        ((lambda: budgetopt.curves_from_scores(scores, scores, sink=-1, window=0), "sink"),
         (lambda: BudgetPress(KnormPress(), budgets, window=-1), "window")),
        ((lambda: budgetopt.tokens_from_fraction(1.5, 10), "fraction"),
         (lambda: layer_budgets(table, 0, 10, compression_ratio=1.5), "compression_ratio")),
        ((lambda: budgetopt.lukv_table([scores], [scores], sink=0, window=0, min_keep_fraction="x"),
          "min_keep_fraction"),
         (lambda: layer_budgets(table, 0, 10, compression_ratio="x"), "compression_ratio")),
    ]
    for (core, core_name), (adapter, adapter_name) in pairs:
        with pytest.raises(budgetopt.BudgetoptError) as core_error:
            core()
        with pytest.raises(budgetopt.BudgetoptError) as adapter_error:
            adapter()
        assert type(core_error.value) is type(adapter_error.value)
        core_text = str(core_error.value).replace(f"`{core_name}`", "`X`")
        assert core_text.startswith("`X` must ")
        assert core_text == str(adapter_error.value).replace(f"`{adapter_name}`", "`X`")
