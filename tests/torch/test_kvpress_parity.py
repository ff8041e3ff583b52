"""Exact parity with kvpress's ``LUKVPress``: per-head keep counts, bit for bit.

The reference is the real ``LUKVPress.compress`` (kvpress installed), run on random keys
with an injected table and a stand-in attention module; the counts it keeps per head are read
from the positions it marks as evicted. budgetopt's ``rule="kvpress"`` runs the same torch
operations, so the counts agree on any CPU kind and on a GPU by construction; these tests hold
them to it on tie-heavy tables: all-equal rows, two-decimal ratios, eighths, ratios that are
multiples of 1/T, rows whose fractional parts tie exactly, head counts across torch's vector
widths, every length from 1 to 200 and longer ones, and tables from ``lukv_table``. Each
device torch has here (the CPU, and CUDA where present) is checked on its own.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
kvpress = pytest.importorskip("kvpress", reason="kvpress is not installed: nothing to compare with")

from budgetopt import keep_counts_from_prune_ratios, lukv_table  # noqa: E402
from budgetopt.errors import InvalidInputError  # noqa: E402
from budgetopt.torch import BudgetPress, layer_budgets  # noqa: E402
from budgetopt.torch.layers import lukv_row  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RATIOS = (0.05, 0.3, 0.5, 0.77, 0.9, 0.99)
HEADS = (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 31, 32, 33, 64, 65, 128, 130)


def lukvpress_counts(table, layer, length, compression_ratio, device="cpu"):
    """Tokens per KV head that the real LUKVPress keeps in ``layer`` for ``length`` tokens."""
    heads = table.shape[-1]
    press = kvpress.LUKVPress(press=kvpress.KnormPress(), compression_ratio=compression_ratio, sink=0, window=0)
    press._budget_curves = table  # injected: no download
    module = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"), layer_idx=layer)
    gen = torch.Generator().manual_seed(layer * 1000 + length)
    keys = torch.randn(1, heads, length, 4, generator=gen).to(device)
    press.compress(module, None, keys, keys, None, {})
    if module.masked_key_indices is None:
        return np.full(heads, length)
    _, head_idx, _ = module.masked_key_indices
    return length - torch.bincount(head_idx, minlength=heads).cpu().numpy()


def tied_table(rng, layers, heads, length):
    """Prune ratios whose ideal keep counts ``(1 - r) * length`` share one fractional part
    across heads (a quarter, a half or three quarters of a token), at every row."""
    whole = rng.integers(0, length, (99, layers, heads))
    frac = rng.choice([0.25, 0.5, 0.75], (99, layers, 1))
    return np.clip(1.0 - (whole + frac) / length, 0.0, 1.0)


def table_of_kind(kind, rng, heads, length, layers=2):
    """A (99, layers, heads) table of ratios in [0, 1] of the named kind."""
    shape = (99, layers, heads)
    if kind == "uniform":
        return rng.random(shape)
    if kind == "two-decimal":
        return np.round(rng.random(shape), 2)
    if kind == "equal rows":
        return np.repeat(rng.random((99, layers, 1)), heads, axis=-1)
    if kind == "eighths":
        return rng.integers(0, 9, shape) / 8
    if kind == "multiples of 1/T":
        return rng.integers(0, length + 1, shape) / length
    if kind == "tied fractions":
        return tied_table(rng, layers, heads, length)
    raise AssertionError(kind)


KINDS = ("uniform", "two-decimal", "equal rows", "eighths", "multiples of 1/T", "tied fractions")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_length_1_to_200_matches_lukvpress(seed, device):
    rng = np.random.default_rng(200 + seed)
    differ_float64 = 0
    for length in range(1, 201):
        kind = KINDS[(length + seed) % len(KINDS)]
        heads = int(rng.choice(HEADS))
        table = table_of_kind(kind, rng, heads, length)
        ratio = float(rng.choice(RATIOS))
        layer = int(rng.integers(0, 2))
        expected = lukvpress_counts(table, layer, length, ratio, device)
        where = f"{kind} table, {heads} heads, T={length}, ratio={ratio}"
        row = table[lukv_row(ratio), layer]
        got = keep_counts_from_prune_ratios(row, length, device=device)
        np.testing.assert_array_equal(got, expected, err_msg=where)
        np.testing.assert_array_equal(
            layer_budgets(table, layer, length, compression_ratio=ratio, device=device), expected, err_msg=where
        )
        differ_float64 += not np.array_equal(keep_counts_from_prune_ratios(row, length, rule="float64"), expected)
    # the comparison can fail: the float64 rule (ties to the lower head) disagrees somewhere
    assert differ_float64 > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_long_contexts_match_lukvpress_on_random_tables_with_ties(seed, device):
    rng = np.random.default_rng(100 + seed)
    checked = 0
    for kind in KINDS:
        for heads in (3, 8, 16, 33, 64):
            length = int(rng.choice([257, 512, 1000, 4097]))
            table = table_of_kind(kind, rng, heads, length)
            for ratio in rng.choice(RATIOS, 2, replace=False):
                layer = int(rng.integers(0, 2))
                expected = lukvpress_counts(table, layer, length, float(ratio), device)
                got = layer_budgets(table, layer, length, compression_ratio=float(ratio), device=device)
                np.testing.assert_array_equal(got, expected, err_msg=f"{kind}, {heads} heads, T={length}")
                checked += 1
    assert checked == len(KINDS) * 5 * 2


def test_whole_tables_match_lukvpress_row_by_row():
    # One call on a whole (99, layers, heads) table gives every row's LUKVPress counts.
    rng = np.random.default_rng(5)
    length = 96
    table = table_of_kind("tied fractions", rng, 12, length, layers=3)
    counts = keep_counts_from_prune_ratios(table, length)
    assert counts.shape == table.shape and counts.dtype == np.int64
    for ratio in (0.01, 0.25, 0.5, 0.64, 0.99):
        row = lukv_row(ratio)
        for layer in range(3):
            np.testing.assert_array_equal(counts[row, layer], lukvpress_counts(table, layer, length, ratio))


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


def test_lukv_tables_at_512_match_lukvpress_exactly(lukv_tables_512):
    for table in lukv_tables_512:
        for ratio in RATIOS:
            for layer in range(table.shape[1]):
                for length in (512, 333):
                    expected = lukvpress_counts(table, layer, length, ratio)
                    np.testing.assert_array_equal(
                        layer_budgets(table, layer, length, compression_ratio=ratio), expected
                    )


@pytest.mark.parametrize("device", DEVICES)
def test_budget_press_with_a_table_matches_lukvpress(device):
    rng = np.random.default_rng(7)
    table = np.round(rng.random((99, 3, 8)), 2)
    table[:, 1] = 0.25  # a layer of ties
    for ratio in (0.2, 0.5, 0.75):
        press = BudgetPress(kvpress.KnormPress(), table, compression_ratio=ratio)
        for layer in range(3):
            for length in (10, 100, 513):
                np.testing.assert_array_equal(
                    press.layer_budgets(layer, length, device=device),
                    lukvpress_counts(table, layer, length, ratio, device),
                )


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_tables_are_converted_on_their_device(device):
    # LUKVPress reads float32 rows; a float32 tensor table gives the same counts, computed on
    # the tensor's device unless told otherwise.
    rng = np.random.default_rng(9)
    table = np.round(rng.random((99, 2, 16)), 2).astype(np.float32)
    tensor = torch.from_numpy(table).to(device)
    for length in (1, 40, 121):
        expected = lukvpress_counts(table, 1, length, 0.5, device)
        np.testing.assert_array_equal(layer_budgets(tensor, 1, length, compression_ratio=0.5), expected)
        got = keep_counts_from_prune_ratios(tensor[lukv_row(0.5), 1], length)
        assert isinstance(got, np.ndarray) and got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)


def test_unknown_device_is_named():
    with pytest.raises(InvalidInputError, match="`device` must name a torch device"):
        keep_counts_from_prune_ratios([0.5, 0.5], 10, device="no-such-device")
