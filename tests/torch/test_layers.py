"""layer_budgets / lukv_row / load_lukv_table: hand cases, properties against direct
formulas, and argument checks."""

import math
from fractions import Fraction

import numpy as np
import pytest

from budgetopt.errors import InvalidInputError, InvalidTypeError
from budgetopt.result import Allocation

pytest.importorskip("torch")

from budgetopt.torch import layer_budgets, lukv_row  # noqa: E402


def _allocation(budgets):
    budgets = np.asarray(budgets)
    return Allocation(budgets=budgets, used=int(budgets.sum()), total_budget=int(budgets.sum()),
                      utility=0.0, upper_bound=0.0, gap=0.0, threshold=0.0, method="greedy", status="feasible", seconds=0.0)


@pytest.mark.parametrize("ratio", [0.0, 0.004, 0.005, 0.0051, 0.01, 0.2, 0.205, 0.215, 0.5, 0.985, 0.99, 1.0])
def test_row_rule_is_kvpress_rule(ratio):
    # kvpress LUKVPress.compress: int(round(ratio * 100)) - 1, clamped to [0, 98].
    assert lukv_row(ratio) == max(0, min(98, int(round(ratio * 100)) - 1))


def test_row_examples():
    assert [lukv_row(r) for r in (0.01, 0.2, 0.5, 0.99)] == [0, 19, 49, 98]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_row_rejects_ratios_outside_unit_interval(bad):
    with pytest.raises(InvalidInputError, match="`compression_ratio` must be in"):
        lukv_row(bad)


def _largest_remainder_reference(ideal, length):
    """Exact-arithmetic largest remainder over ideal keep counts (Fractions), head by head."""
    total = min(max(round(sum(ideal)), len(ideal)), len(ideal) * length)
    counts = [math.floor(x) for x in ideal]
    order = sorted(range(len(ideal)), key=lambda h: (-(ideal[h] - counts[h]), h))
    for h in order[: total - sum(counts)]:
        counts[h] += 1
    return [min(max(c, 1), length) for c in counts]


def test_table_rows_convert_with_exact_layer_totals():
    rng = np.random.default_rng(0)
    table = rng.uniform(0.05, 0.95, size=(99, 3, 8))
    for ratio in (0.1, 0.37, 0.8):
        for layer in range(3):
            for length in (1, 17, 1000):
                got = layer_budgets(table, layer, length, compression_ratio=ratio)
                row = table[lukv_row(ratio), layer]
                assert got.dtype == np.int64
                assert got.tolist() == _largest_remainder_reference([(1 - Fraction(r)) * length for r in row], length)
                assert got.sum() == max(8, round(((1 - row) * length).sum()))


def test_table_hand_case():
    table = np.zeros((99, 2, 3))
    table[49, 1] = [0.5, 0.35, 0.72]  # ideal keep 5, 6.5, 2.8 of 10 -> total 14
    assert layer_budgets(table, 1, 10, compression_ratio=0.5).tolist() == [5, 6, 3]
    assert layer_budgets(table, 0, 10, compression_ratio=0.5).tolist() == [10, 10, 10]
    assert layer_budgets(table, 1, 0, compression_ratio=0.5).tolist() == [0, 0, 0]


def test_allocation_and_budget_arrays_are_token_counts():
    budgets = [[0, 5, 12], [3, 3, 3]]
    for source in (budgets, np.array(budgets, dtype=np.int32), _allocation(budgets)):
        assert layer_budgets(source, 0, 10).tolist() == [0, 5, 10]  # capped at length
        assert layer_budgets(source, 1, 10).tolist() == [3, 3, 3]
        # head_capacity equal to the length: used as they are, zeros included.
        assert layer_budgets(source, 0, 12, head_capacity=12).tolist() == [0, 5, 12]


def test_scaled_allocation_keeps_fraction_with_exact_totals():
    rng = np.random.default_rng(3)
    capacity = 64  # a power of two: b / capacity is exact in binary, so no float ties
    budgets = rng.integers(1, capacity + 1, size=(4, 6))
    for length in (7, 100, 1000, 4097):
        for layer in range(4):
            got = layer_budgets(_allocation(budgets), layer, length, head_capacity=capacity)
            ideal = [Fraction(int(b) * length, capacity) for b in budgets[layer]]
            assert got.tolist() == _largest_remainder_reference(ideal, length)
            if min(ideal) >= 1:  # the floor of 1 token per head does not bind: exact total
                assert got.sum() == round(sum(ideal))
            assert np.all(got >= 1) and np.all(got <= length)


def test_scaling_hand_case():
    # 3/4 and 1/4 of 10 tokens: ideal 7.5 and 2.5, total 10; the tie goes to the lower head.
    assert layer_budgets([[3, 1]], 0, 10, head_capacity=4).tolist() == [8, 2]


def test_tables_read_from_file_and_arrays_agree(tmp_path):
    from budgetopt.lukv import load_lukv_table, save_lukv_table

    table = np.random.default_rng(1).uniform(size=(99, 2, 4))
    save_lukv_table(tmp_path / "curve.npy", table)
    loaded = load_lukv_table(tmp_path / "curve.npy")
    for layer in range(2):
        assert layer_budgets(loaded, layer, 50, compression_ratio=0.3).tolist() == \
            layer_budgets(table, layer, 50, compression_ratio=0.3).tolist()


def test_source_array_is_not_frozen_or_changed():
    table = np.full((99, 1, 2), 0.5)
    layer_budgets(table, 0, 10, compression_ratio=0.5)
    assert table.flags.writeable


TABLE = np.full((99, 2, 2), 0.5)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((TABLE, 0, 10), {}, InvalidInputError, "`compression_ratio` is required with an LU-KV table"),
        ((TABLE, 0, 10), {"compression_ratio": 0.2, "head_capacity": 4}, InvalidInputError, "`head_capacity` applies"),
        ((TABLE, 2, 10), {"compression_ratio": 0.2}, InvalidInputError, r"`layer` must be in \[0, 2\)"),
        ((TABLE, -1, 10), {"compression_ratio": 0.2}, InvalidInputError, "`layer` must be in"),
        ((TABLE, True, 10), {"compression_ratio": 0.2}, InvalidTypeError, "`layer` must be an int"),
        ((TABLE, 0, -1), {"compression_ratio": 0.2}, InvalidInputError, "`length` must be >= 0; got -1"),
        ((TABLE, 0, 10), {"compression_ratio": "0.2"}, InvalidTypeError, "`compression_ratio` must be a real number; got str"),
        ((TABLE * 3, 0, 10), {"compression_ratio": 0.2}, InvalidInputError, r"prune ratios in \[0, 1\]"),
        ((np.zeros((5, 2, 2)), 0, 10), {"compression_ratio": 0.2}, InvalidInputError, r"\(99, layers"),
        (([[1, 2]], 0, 10), {"compression_ratio": 0.2}, InvalidInputError, "`compression_ratio` applies to an LU-KV"),
        (([[1.0, 2.0]], 0, 10), {}, InvalidTypeError, "integer dtype"),
        (([[1, -2]], 0, 10), {}, InvalidInputError, "must be >= 0"),
        (([[1, 9]], 0, 10), {"head_capacity": 8}, InvalidInputError, r"<= `head_capacity` \(8\)"),
        (([[1, 2]], 0, 10), {"head_capacity": 0}, InvalidInputError, "`head_capacity` must be >= 1"),
        (([[1, 2]], 0, 10), {"head_capacity": 4.0}, InvalidTypeError, "`head_capacity` must be an int"),
        (([1, 2], 0, 10), {}, InvalidInputError, r"budgets shaped \(layers, kv_heads\)"),
        (("curve.npy", 0, 10), {}, InvalidTypeError, "load_lukv_table"),
        ((_allocation([1, 2]), 0, 10), {}, InvalidInputError, r"head_shape \(layers, kv_heads\)"),
    ],
)
def test_errors_name_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        layer_budgets(*args, **kwargs)
