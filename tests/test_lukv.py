"""lukv_table against the published solver (tests/reference_lukv.py), table files, kvpress interop."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import budgetopt
from budgetopt.errors import CurvesFileError, InvalidInputError, InvalidTypeError, MissingDependencyError
from budgetopt.lukv import load_lukv_table, lukv_table, save_lukv_table
from budgetopt.profile import curves_from_scores
from budgetopt.rounding import keep_counts_from_prune_ratios
from reference_lukv import lukv_reference_prune_ratios, lukv_reference_table

RATIOS = np.arange(1, 100) / 100


def make_pairs(seed, shape, n_pairs, *, shared_scores):
    """Continuous random data (no exact ties), with per-head concentration so heads differ."""
    rng = np.random.default_rng(seed)
    concentration = rng.uniform(0.2, 3.0, shape[:-1] + (1,))
    oracles = [rng.gamma(concentration, size=shape) for _ in range(n_pairs)]
    if shared_scores:
        scores = rng.normal(size=shape)
    else:
        scores = [np.log(o) + rng.normal(size=shape) for o in oracles]
    return oracles, scores


# -- equality with the published algorithm ------------------------------------------------
@pytest.mark.parametrize(
    "shape,sink,window,n_pairs,shared",
    [
        ((2, 3, 40), 2, 3, 3, False),
        ((3, 2, 57), 0, 0, 2, True),
        ((1, 4, 33), 4, 1, 1, False),
        ((4, 1, 25), 1, 8, 2, False),
        ((2, 2, 101), 4, 32, 3, True),
    ],
)
@pytest.mark.parametrize("layerwise", [True, False])
def test_equals_reference_with_protected_floor(shape, sink, window, n_pairs, shared, layerwise):
    oracles, scores = make_pairs(sum(shape) + sink, shape, n_pairs, shared_scores=shared)
    ours = lukv_table(oracles, scores, sink=sink, window=window, min_keep_fraction=0.0, layerwise=layerwise)
    ref = lukv_reference_table(oracles, scores, sink, window, floor=sink + window, threshold=100, layerwise=layerwise)
    assert ours.shape == (99,) + shape[:2]
    # Per pair the ratios are multiples of 1/T; the mean of equal tables agrees to rounding.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layerwise", [True, False])
def test_equals_reference_with_published_defaults(layerwise):
    # T = 300: round(0.01 * T) = 3 <= sink + window, so the floor is the protected tokens and
    # the default min_keep_fraction is the published threshold of 99.
    oracles, scores = make_pairs(42, (3, 2, 300), 2, shared_scores=False)
    ours = lukv_table(oracles, scores, sink=2, window=2, layerwise=layerwise)
    ref = lukv_reference_table(oracles, scores, 2, 2, layerwise=layerwise)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("threshold", [93, 95, 99])
def test_equals_reference_at_other_thresholds(threshold):
    """min_keep_fraction = 1 - threshold / 100; the cut-off row itself is solved, not uniform."""
    # T = 40, sink + window = 3: round(0.07 * 40) = 3, so the floor stays the protected tokens.
    oracles, scores = make_pairs(threshold, (2, 3, 40), 2, shared_scores=False)
    fraction = round(1 - threshold / 100, 2)
    ours = lukv_table(oracles, scores, sink=1, window=2, min_keep_fraction=fraction)
    ref = lukv_reference_table(oracles, scores, 1, 2, threshold=threshold)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert not np.allclose(ours[threshold - 1], RATIOS[threshold - 1])


def test_single_pair_row_totals_are_exact():
    shape = (3, 2, 64)
    oracles, scores = make_pairs(1, shape, 1, shared_scores=True)
    sink, window = 2, 2
    table = lukv_table(oracles, scores, sink=sink, window=window, min_keep_fraction=0.0)
    kept = (1 - table) * shape[-1]
    np.testing.assert_allclose(kept, np.rint(kept), atol=1e-9)
    n_tokens = int(np.prod(shape))
    for i, c in enumerate(RATIOS):
        expected = max(n_tokens - round(c * n_tokens), 6 * (sink + window))
        assert int(np.rint(kept[i].sum())) == expected
    assert np.all(np.rint(kept) >= sink + window)
    # Nested: a higher compression never gives a head more tokens.
    assert np.all(np.diff(np.rint(kept), axis=0) <= 0)


def test_layer_local_rows_have_exact_layer_totals():
    shape = (3, 4, 50)
    oracles, scores = make_pairs(2, shape, 1, shared_scores=True)
    table = lukv_table(oracles, scores, sink=1, window=1, min_keep_fraction=0.0, layerwise=False)
    kept = np.rint((1 - table) * 50)
    layer_tokens = 4 * 50
    for i, c in enumerate(RATIOS):
        expected = max(layer_tokens - round(c * layer_tokens), 4 * 2)
        np.testing.assert_array_equal(kept[i].sum(axis=-1), expected)


def test_floor_and_uniform_rows():
    shape = (2, 3, 80)
    oracles, scores = make_pairs(3, shape, 2, shared_scores=True)
    table = lukv_table(oracles, scores, sink=1, window=1, min_keep_fraction=0.05)
    floor = round(0.05 * 80)  # 4 > sink + window
    # Rows with c > 0.95 are uniform; c = 0.95 itself is solved (every head at its floor).
    for i in range(95, 99):
        np.testing.assert_array_equal(table[i], RATIOS[i])
    np.testing.assert_allclose(table[94], 1 - floor / 80)
    assert np.all(table[:95] <= 1 - floor / 80 + 1e-12)


def test_above_protected_floor_the_hull_is_taken_above_the_floor():
    """With a floor above sink + window, every pair's allocation is sweep's on the floored curves."""
    shape = (2, 2, 60)
    oracles, scores = make_pairs(4, shape, 1, shared_scores=True)
    table = lukv_table(oracles, scores, sink=0, window=0, min_keep_fraction=0.1)
    curves = curves_from_scores(oracles[0], scores, sink=0, window=0)
    totals = [max(240 - round(c * 240), 24) for c in RATIOS[:90]]
    direct = budgetopt.sweep(curves, totals, min_budget=6)
    np.testing.assert_allclose(table[:90], 1 - direct.budgets / 60, atol=1e-12)


def test_mean_ratio_is_the_mean_of_single_pair_tables():
    oracles, scores = make_pairs(5, (2, 3, 30), 3, shared_scores=False)
    whole = lukv_table(oracles, scores, sink=1, window=1)
    parts = [lukv_table([o], [s], sink=1, window=1) for o, s in zip(oracles, scores)]
    np.testing.assert_allclose(whole, np.mean(parts, axis=0), atol=1e-12)


def test_mean_curve_solves_the_mean_utility():
    oracles, scores = make_pairs(6, (2, 3, 30), 3, shared_scores=False)
    table = lukv_table(oracles, scores, sink=1, window=1, min_keep_fraction=0.0, aggregate="mean_curve")
    mean_utility = np.mean([curves_from_scores(o, s, sink=1, window=1).utility for o, s in zip(oracles, scores)], axis=0)
    curves = budgetopt.Curves(mean_utility, np.arange(2, 31))
    totals = [max(180 - round(c * 180), 12) for c in RATIOS]
    direct = budgetopt.sweep(curves, totals, min_budget=2)
    np.testing.assert_allclose(table, 1 - direct.budgets / 30, atol=1e-12)


def test_aggregates_agree_on_one_pair():
    oracles, scores = make_pairs(7, (3, 2, 40), 1, shared_scores=True)
    a = lukv_table(oracles, scores, sink=2, window=1, aggregate="mean_ratio")
    b = lukv_table(oracles, scores, sink=2, window=1, aggregate="mean_curve")
    np.testing.assert_array_equal(a, b)


def test_shared_scores_same_as_repeated_list_and_progress_called():
    oracles, scores = make_pairs(8, (2, 2, 20), 3, shared_scores=True)
    calls = []
    a = lukv_table(oracles, scores, sink=1, window=1, progress=lambda done, total: calls.append((done, total)))
    b = lukv_table(tuple(oracles), [scores.copy() for _ in oracles], sink=1, window=1)
    np.testing.assert_array_equal(a, b)
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("aggregate", ["mean_ratio", "mean_curve"])
@pytest.mark.parametrize("shared", [True, False])
def test_workers_do_not_change_the_table(aggregate, shared):
    oracles, scores = make_pairs(13, (3, 2, 50), 5, shared_scores=shared)
    one = lukv_table(oracles, scores, sink=1, window=2, aggregate=aggregate)
    calls = []
    many = lukv_table(oracles, scores, sink=1, window=2, aggregate=aggregate, workers=3,
                      progress=lambda done, total: calls.append(done))
    np.testing.assert_array_equal(many, one)
    np.testing.assert_array_equal(lukv_table(oracles, scores, sink=1, window=2, aggregate=aggregate, workers=-1), one)
    assert calls == [1, 2, 3, 4, 5]


def test_workers_report_the_first_bad_pair():
    oracles, scores = make_pairs(14, (2, 2, 30), 5, shared_scores=True)
    oracles[3] = np.full((2, 2, 30), np.nan)
    oracles[4] = np.ones((2, 2, 31))
    with pytest.raises(InvalidInputError, match=r"`oracles\[3\]` must be finite"):
        lukv_table(oracles, scores, sink=1, window=1, workers=4)


def test_reference_per_pair_solver_agrees_with_sweep_on_arbitrary_ratios():
    """The reference's per-pair entry point (used by benchmarks) at non-percent ratios."""
    oracles, scores = make_pairs(9, (2, 3, 45), 1, shared_scores=True)
    ratios = [0.0, 0.123, 0.5, 0.777, 0.85]
    ref = lukv_reference_prune_ratios(oracles[0], scores, 3, 2, ratios)
    curves = curves_from_scores(oracles[0], scores, sink=3, window=2)
    totals = [270 - round(c * 270) for c in ratios]
    direct = budgetopt.sweep(curves, totals, min_budget=5)
    np.testing.assert_allclose(ref, 1 - direct.budgets / 45, atol=1e-12)


# -- conversion to integer keep counts --------------------------------------------------
@pytest.mark.parametrize("length", [1, 2, 3, 7, 10, 64, 99, 100, 127, 1000, 4096, 32768, 131071])
def test_largest_remainder_totals_exact_for_many_lengths(length):
    oracles, scores = make_pairs(length, (3, 5, 40), 3, shared_scores=False)
    table = lukv_table(oracles, scores, sink=1, window=2)
    counts = keep_counts_from_prune_ratios(table, length, rule="float64")
    ideal = ((1 - table) * length).sum(axis=-1)
    expected = np.clip(np.rint(ideal), 5, 5 * length)
    # Exact layer totals unless the final clamp to [1, length] binds somewhere in the layer.
    clamp_free = np.all(np.floor((1 - table) * length) >= 1, axis=-1)
    np.testing.assert_array_equal(counts.sum(axis=-1)[clamp_free], expected[clamp_free])
    assert np.all((counts >= 1) & (counts <= length))
    assert np.all(np.abs(counts - (1 - table) * length) < 1 + 1e-9)


@pytest.mark.parametrize("length", [1, 3, 10, 127, 4096, 131071])
def test_kvpress_rule_is_the_same_rule_up_to_float32(length):
    # The default rule runs LUKVPress's torch code (exact agreement with LUKVPress itself is
    # tested in tests/torch/test_kvpress_parity.py): float32 ideals, so within one token.
    pytest.importorskip("torch")
    oracles, scores = make_pairs(length, (3, 5, 40), 3, shared_scores=False)
    table = lukv_table(oracles, scores, sink=1, window=2)
    expected = np.clip(np.rint(((1 - table) * length).sum(axis=-1)), 5, 5 * length)
    clamp_free = np.all(np.floor((1 - table) * length) >= 1, axis=-1)
    k32 = keep_counts_from_prune_ratios(table, length)
    assert k32.shape == table.shape and k32.dtype == np.int64
    assert np.all((k32 >= 1) & (k32 <= length))
    assert np.all(np.abs(k32.sum(axis=-1)[clamp_free] - expected[clamp_free]) <= 1)
    assert np.all(np.abs(k32 - (1 - table) * length) < 1 + 1e-6 * length)


@pytest.mark.parametrize("rule", ["float64", "kvpress"])
def test_single_pair_table_converts_back_to_its_budgets(rule):
    if rule == "kvpress":
        pytest.importorskip("torch")
    oracles, scores = make_pairs(10, (3, 4, 77), 1, shared_scores=True)
    table = lukv_table(oracles, scores, sink=2, window=2, min_keep_fraction=0.0)
    curves = curves_from_scores(oracles[0], scores, sink=2, window=2)
    totals = [max(924 - round(c * 924), 48) for c in RATIOS]
    direct = budgetopt.sweep(curves, totals, min_budget=4)
    np.testing.assert_array_equal(keep_counts_from_prune_ratios(table, 77, rule=rule), direct.budgets)


def test_kvpress_rule_without_torch_names_the_way_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"rule='kvpress'.*torch.*rule='float64'"):
        keep_counts_from_prune_ratios([0.5, 0.25], 10)
    with pytest.raises(MissingDependencyError):
        keep_counts_from_prune_ratios([0.5, 0.25], 10, rule="kvpress", device="cpu")
    np.testing.assert_array_equal(keep_counts_from_prune_ratios([0.5, 0.25], 10, rule="float64"), [5, 7])
    # checks come first: bad input is named whether or not torch is there
    with pytest.raises(InvalidInputError, match="`prune_ratios`"):
        keep_counts_from_prune_ratios([1.5], 10)


def test_device_belongs_to_the_kvpress_rule():
    with pytest.raises(InvalidInputError, match="`device` applies to rule='kvpress' only"):
        keep_counts_from_prune_ratios([0.5], 10, rule="float64", device="cpu")


# -- files ------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    oracles, scores = make_pairs(11, (2, 3, 30), 2, shared_scores=True)
    table = lukv_table(oracles, scores, sink=1, window=1)
    path = tmp_path / "table.npy"
    save_lukv_table(path, table)
    loaded = load_lukv_table(path)
    np.testing.assert_array_equal(loaded, table)
    assert loaded.dtype == np.float64
    # A plain np.load (what LUKVPress does, allow_pickle=False) reads the same array.
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), table)
    assert sorted(os.listdir(tmp_path)) == ["table.npy"]


def test_load_accepts_float32_tables(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.full((99, 2, 2), 0.25, dtype=np.float32))
    assert load_lukv_table(path).dtype == np.float64


@pytest.mark.parametrize(
    "content,match",
    [
        (np.full((98, 2, 2), 0.5), r"shape \(99, layers, kv_heads\).*got \(98, 2, 2\)"),
        (np.full((99, 4), 0.5), r"got \(99, 4\)"),
        (np.full((99, 0, 2), 0.5), r"got \(99, 0, 2\)"),
        (np.full((99, 2, 2), np.nan), r"must be finite"),
        (np.full((99, 2, 2), 1.5), r"prune ratios in \[0, 1\]"),
        (np.full((99, 2, 2), -0.1), r"prune ratios in \[0, 1\]"),
        (np.full((99, 2, 2), "x"), r"must hold real numbers"),
    ],
)
def test_load_rejects_bad_tables(tmp_path, content, match):
    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(CurvesFileError, match=rf"^{path}: .*{match}"):
        load_lukv_table(path)


def test_load_file_errors(tmp_path):
    with pytest.raises(CurvesFileError, match="no such file"):
        load_lukv_table(tmp_path / "missing.npy")
    with pytest.raises(CurvesFileError, match="is a directory"):
        load_lukv_table(tmp_path)
    np.savez(tmp_path / "t.npz", table=np.zeros((99, 1, 1)))
    with pytest.raises(CurvesFileError, match=r"\.npz archive"):
        load_lukv_table(tmp_path / "t.npz")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(CurvesFileError, match="not a .npy file"):
        load_lukv_table(tmp_path / "junk.npy")
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00")
    with pytest.raises(CurvesFileError, match="not a readable .npy file"):
        load_lukv_table(tmp_path / "cut.npy")


def test_load_never_unpickles(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CurvesFileError, match="never unpickles"):
        load_lukv_table(path)


@pytest.mark.parametrize("table", [np.zeros((99, 2)), np.full((99, 1, 1), 2.0), np.full((99, 1, 1), np.inf)])
def test_save_rejects_bad_tables_and_writes_nothing(tmp_path, table):
    with pytest.raises(InvalidInputError, match="`table`"):
        save_lukv_table(tmp_path / "t.npy", table)
    assert os.listdir(tmp_path) == []


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(CurvesFileError, match="does not exist"):
        save_lukv_table(tmp_path / "no" / "t.npy", np.zeros((99, 1, 1)))


# -- input errors -------------------------------------------------------------------------
GOOD = [np.ones((2, 3, 10)), np.ones((2, 3, 10))]
SCORES = np.arange(60.0).reshape(2, 3, 10)


@pytest.mark.parametrize(
    "oracles,scores,kwargs,error,match",
    [
        (np.ones((2, 3, 10)), SCORES, {}, InvalidInputError, r"`oracles` must be a sequence.*one 3-D array"),
        ([], SCORES, {}, InvalidInputError, r"`oracles` must hold at least one"),
        (5, SCORES, {}, InvalidTypeError, r"`oracles` must be a sequence"),
        ("a.npy", SCORES, {}, InvalidTypeError, r"`oracles` must be a sequence"),
        ([GOOD[0], np.ones((2, 3, 11))], SCORES, {}, InvalidInputError, r"`scores` must have the same shape as `oracles\[1\]`"),
        ([GOOD[0], np.ones((2, 2, 10))], [SCORES, np.ones((2, 2, 10))], {}, InvalidInputError,
         r"`oracles\[1\]` must have the shape of `oracles\[0\]`"),
        ([np.ones((6, 10))], np.ones((6, 10)), {}, InvalidInputError, r"`oracles\[0\]` must have shape \(L, H, T\)"),
        (GOOD, [SCORES], {}, InvalidInputError, r"`scores` given as a list must hold one array per oracle \(2\); got 1"),
        (GOOD, [SCORES, np.full((2, 3, 10), np.nan)], {}, InvalidInputError, r"`scores\[1\]` must be finite; found NaN"),
        ([GOOD[0], np.full((2, 3, 10), np.inf)], SCORES, {}, InvalidInputError, r"`oracles\[1\]` must be finite; found inf"),
        (GOOD, SCORES, dict(sink=5, window=5), InvalidInputError, r"more tokens than sink \+ window = 10"),
        (GOOD, SCORES, dict(sink=-1), InvalidInputError, r"`sink` must be >= 0; got -1"),
        (GOOD, SCORES, dict(aggregate="median"), InvalidInputError, r"`aggregate` must be one of 'mean_ratio', 'mean_curve'; got 'median'"),
        (GOOD, SCORES, dict(min_keep_fraction=1.0), InvalidInputError, r"`min_keep_fraction` must be in \[0, 1\); got 1.0"),
        (GOOD, SCORES, dict(min_keep_fraction=float("nan")), InvalidInputError, r"`min_keep_fraction`"),
        (GOOD, SCORES, dict(min_keep_fraction="0.1"), InvalidTypeError, r"`min_keep_fraction`"),
        (GOOD, SCORES, dict(layerwise=1), InvalidTypeError, r"`layerwise` must be True or False"),
        (GOOD, SCORES, dict(progress=3), InvalidTypeError, r"`progress` must be callable"),
        (GOOD, SCORES, dict(workers=0), InvalidInputError, r"`workers` must be a positive integer or -1"),
        (GOOD, SCORES, dict(workers=2.0), InvalidTypeError, r"`workers` must be a positive integer or -1"),
        (GOOD, SCORES, dict(workers=-2), InvalidInputError, r"`workers`"),
    ],
)
def test_errors_name_the_argument(oracles, scores, kwargs, error, match):
    args = dict(sink=1, window=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        lukv_table(oracles, scores, **args)


# -- kvpress interop ------------------------------------------------------------------------
def _tiny_llama(layers, kv_heads, seed=0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
    )
    config._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("compression_ratio", [0.3, 0.75])
def test_kvpress_lukv_press_keeps_our_counts(compression_ratio):
    torch = pytest.importorskip("torch")
    kvpress = pytest.importorskip("kvpress")
    layers, kv_heads, seq_len = 3, 2, 48
    model = _tiny_llama(layers, kv_heads)
    # A table averaged over pairs, so ratios are not multiples of 1/T (fractional keep counts).
    oracles, scores = make_pairs(12, (layers, kv_heads, 40), 3, shared_scores=False)
    table = lukv_table(oracles, scores, sink=4, window=1)
    press = kvpress.LUKVPress(press=kvpress.KnormPress(), compression_ratio=compression_ratio, sink=4, window=1)
    press._budget_curves = table  # injected: no download, the model's name is never looked up

    input_ids = torch.randint(0, 128, (1, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), press(model):
        model(input_ids)
    # LUKVPress marks the evicted positions of each layer on its attention module.
    seen = {}
    for layer in model.model.layers:
        _, heads, _ = layer.self_attn.masked_key_indices
        seen[layer.self_attn.layer_idx] = seq_len - torch.bincount(heads, minlength=kv_heads).numpy()

    row = int(round(compression_ratio * 100)) - 1
    expected = keep_counts_from_prune_ratios(table[row], seq_len)
    assert sorted(seen) == list(range(layers))
    got = np.array([seen[layer] for layer in range(layers)])
    np.testing.assert_array_equal(got, expected)
