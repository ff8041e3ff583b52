"""Exact parity with kvpress's ``LUKVPress``: per-head keep counts, bit for bit.

The reference is the real ``LUKVPress.compress`` (kvpress installed), run on random keys
with an injected table and a stand-in attention module; the counts it keeps per head are read
from the positions it marks as evicted. Tables are randomized and include ties: all-equal
rows, two-decimal ratios, ratios that are multiples of 1/T, and tables from ``lukv_table``
at T = 512. The building blocks (torch's CPU float32 sum order and ``torch.topk``'s tie
order) are also checked directly against torch on tie-heavy data.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
kvpress = pytest.importorskip("kvpress", reason="kvpress is not installed: nothing to compare with")

from budgetopt import keep_counts_from_prune_ratios, lukv_table  # noqa: E402
from budgetopt._kvpress_arith import DEFAULT_LANES, torch_cpu_sum, torch_cpu_topk_set  # noqa: E402
from budgetopt.rounding import _keep_counts  # noqa: E402
from budgetopt.torch import BudgetPress, layer_budgets  # noqa: E402
from budgetopt.torch.layers import cpu_lanes, lukv_row  # noqa: E402


def lukvpress_counts(table, layer, length, compression_ratio):
    """Tokens per KV head that the real LUKVPress keeps in ``layer`` for ``length`` tokens."""
    heads = table.shape[-1]
    press = kvpress.LUKVPress(press=kvpress.KnormPress(), compression_ratio=compression_ratio, sink=0, window=0)
    press._budget_curves = table  # injected: no download
    module = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"), layer_idx=layer)
    gen = torch.Generator().manual_seed(layer * 1000 + length)
    keys = torch.randn(1, heads, length, 4, generator=gen)
    press.compress(module, None, keys, keys, None, {})
    if module.masked_key_indices is None:
        return np.full(heads, length)
    _, head_idx, _ = module.masked_key_indices
    return length - torch.bincount(head_idx, minlength=heads).numpy()


def random_tables(seed):
    """Tables (99, layers, heads) of several kinds, all with values in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for heads in (1, 2, 3, 4, 5, 8, 12, 16):
        layers = 2
        out.append(("uniform", rng.random((99, layers, heads))))
        out.append(("two-decimal", np.round(rng.random((99, layers, heads)), 2)))
        equal = np.repeat(rng.random((99, layers, 1)), heads, axis=-1)
        out.append(("equal rows", equal))
        out.append(("eighths", rng.integers(0, 9, (99, layers, heads)) / 8))
    return out


@pytest.fixture(scope="module")
def lukv_tables_512():
    """Tables from lukv_table at T = 512 (a few random calibration pairs each)."""
    rng = np.random.default_rng(11)
    tables = []
    for heads in (2, 4, 8):
        oracle = rng.random((2, 2, heads, 512)) ** 4
        scores = oracle + 0.3 * rng.random((2, 2, heads, 512))
        tables.append(lukv_table(list(oracle), list(scores), sink=4, window=1))
    return tables


RATIOS = (0.05, 0.3, 0.5, 0.77, 0.9, 0.99)


@pytest.mark.parametrize("seed", [0, 1])
def test_layer_budgets_match_lukvpress_on_random_tables_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    lanes = cpu_lanes()
    checked = differ_float64 = 0
    for kind, table in random_tables(seed):
        for _ in range(3):
            ratio = float(rng.choice(RATIOS))
            length = int(rng.choice([7, 64, 100, 512, 1000, 4097]))
            layer = int(rng.integers(0, table.shape[1]))
            expected = lukvpress_counts(table, layer, length, ratio)
            got = layer_budgets(table, layer, length, compression_ratio=ratio)
            np.testing.assert_array_equal(got, expected, err_msg=f"{kind} table, T={length}, ratio={ratio}")
            row = table[lukv_row(ratio), layer]
            np.testing.assert_array_equal(_keep_counts(row, length, "kvpress", lanes), expected)
            if lanes == DEFAULT_LANES:
                np.testing.assert_array_equal(keep_counts_from_prune_ratios(row, length), expected)
            differ_float64 += not np.array_equal(keep_counts_from_prune_ratios(row, length, rule="float64"), expected)
            checked += 1
    assert checked == 96
    # the comparison can fail: the float64 rule (ties to the lower head) disagrees somewhere
    assert differ_float64 > 0


def test_lukv_tables_at_512_match_lukvpress_exactly(lukv_tables_512):
    for table in lukv_tables_512:
        for ratio in RATIOS:
            for layer in range(table.shape[1]):
                for length in (512, 333):
                    expected = lukvpress_counts(table, layer, length, ratio)
                    np.testing.assert_array_equal(
                        layer_budgets(table, layer, length, compression_ratio=ratio), expected
                    )


def test_budget_press_with_a_table_matches_lukvpress():
    rng = np.random.default_rng(7)
    table = np.round(rng.random((99, 3, 8)), 2)
    table[:, 1] = 0.25  # a layer of ties
    for ratio in (0.2, 0.5, 0.75):
        press = BudgetPress(kvpress.KnormPress(), table, compression_ratio=ratio)
        for layer in range(3):
            for length in (10, 100, 513):
                np.testing.assert_array_equal(
                    press.layer_budgets(layer, length), lukvpress_counts(table, layer, length, ratio)
                )


def test_torch_cpu_sum_order_matches_torch_sum():
    rng = np.random.default_rng(3)
    lanes = cpu_lanes()
    for n in [*range(1, 70), 100, 127, 128, 129, 257, 1000, 4099]:
        x = (rng.random((4, n)) * rng.choice([1.0, 100.0, 3000.0])).astype(np.float32)
        expected = torch.from_numpy(x).sum(dim=-1).numpy()
        np.testing.assert_array_equal(torch_cpu_sum(x, lanes), expected, err_msg=f"n={n}")


def test_torch_cpu_topk_ties_match_torch_topk():
    rng = np.random.default_rng(4)
    for n in [*range(1, 40), 64, 65, 128, 129, 200, 700]:
        for _ in range(4):
            x = (rng.integers(0, rng.integers(1, 4), n) / 4).astype(np.float32)  # many ties
            for k in sorted({1, 2, 3, max(1, n // 64), max(1, n // 2), n}):
                if k > n:
                    continue
                expected = np.sort(torch.topk(torch.from_numpy(x), k).indices.numpy())
                np.testing.assert_array_equal(torch_cpu_topk_set(x, k), expected, err_msg=f"n={n}, k={k}")
