"""curves_from_scores: against a direct per-head loop, tie rule, grid and meta, input errors."""

from __future__ import annotations

import numpy as np
import pytest

import budgetopt
from budgetopt.errors import InvalidInputError, InvalidTypeError
from budgetopt.profile import curves_from_scores


def direct_curves(oracle, scores, sink, window):
    """Per head, per budget: protected mass plus the best-ranked middle tokens, by plain loops."""
    oracle = np.asarray(oracle, dtype=np.float64)
    scores = np.asarray(scores)
    head_shape, length = oracle.shape[:-1], oracle.shape[-1]
    middle = list(range(sink, length - window))
    protected = list(range(sink)) + list(range(length - window, length))
    out = np.zeros(head_shape + (length - sink - window + 1,))
    for head in np.ndindex(*head_shape):
        ranked = sorted(middle, key=lambda t: (-scores[head][t].item(), t))  # exact Python int/float
        base = sum(float(oracle[head][t]) for t in protected)
        for k in range(len(middle) + 1):
            out[head][k] = base + sum(float(oracle[head][t]) for t in ranked[:k])
    return out


CASES = [
    # head_shape, T, sink, window
    ((1,), 5, 0, 0),
    ((3,), 12, 2, 3),
    ((2, 3), 17, 4, 1),
    ((2, 2, 2), 9, 0, 8),
    ((4, 2), 30, 29, 0),
]


@pytest.mark.parametrize("head_shape,length,sink,window", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_direct_loop_on_continuous_data(head_shape, length, sink, window, seed):
    rng = np.random.default_rng(seed)
    oracle = rng.random(head_shape + (length,))
    scores = rng.normal(size=head_shape + (length,))
    curves = curves_from_scores(oracle, scores, sink=sink, window=window)
    np.testing.assert_allclose(curves.utility, direct_curves(oracle, scores, sink, window), rtol=1e-12, atol=1e-12)
    assert curves.head_shape == head_shape
    np.testing.assert_array_equal(curves.grid, np.arange(sink + window, length + 1))
    assert curves.capacity == int(np.prod(head_shape)) * length
    assert curves.meta == {"sink": sink, "window": window, "length": length}


@pytest.mark.parametrize("head_shape,length,sink,window", CASES)
def test_matches_direct_loop_with_many_ties(head_shape, length, sink, window):
    """Integer and coarse float scores: ties resolved earlier position first, exactly."""
    rng = np.random.default_rng(7)
    oracle = rng.random(head_shape + (length,))
    for scores in (rng.integers(0, 3, head_shape + (length,)),
                   rng.integers(0, 3, head_shape + (length,)).astype(np.float32) / 2):
        curves = curves_from_scores(oracle, scores, sink=sink, window=window)
        np.testing.assert_allclose(curves.utility, direct_curves(oracle, scores, sink, window), rtol=1e-12, atol=1e-12)


def _tied_scores(rng, shape, dtype):
    """Scores of ``dtype`` with many exact ties, negative values and both signed zeros."""
    if dtype == "float64-exact32":
        pool = np.array([-2.5, -0.0, 0.0, 0.25, 2.0**100, -(2.0**-100), 3.0])
    elif dtype == "float64-general":
        pool = np.array([-0.1, -0.0, 0.0, 0.1, 0.3, 1e300, -1e-300])
    elif np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        pool = np.array([info.min, info.min + 1, 0, 1, 2, info.max - 1, info.max], dtype=dtype)
    else:
        pool = np.array([-2.5, -0.0, 0.0, 0.25, 3.0, 6e4, -6e4], dtype=dtype)
    return pool[rng.integers(0, len(pool), shape)]


@pytest.mark.parametrize(
    "dtype",
    ["float16", "float32", "float64-exact32", "float64-general", "int8", "uint8", "int16",
     "uint16", "int32", "uint32", "int64", "uint64"],
)
def test_every_sort_path_gives_the_stable_order(dtype):
    """Packed 32-bit keys, float64 sort plus tie re-sort, and 64-bit integer sort agree."""
    rng = np.random.default_rng(13)
    oracle = rng.random((3, 2, 25))
    scores = _tied_scores(rng, oracle.shape, dtype)
    curves = curves_from_scores(oracle, scores, sink=2, window=3)
    np.testing.assert_allclose(curves.utility, direct_curves(oracle, scores, 2, 3), rtol=1e-12, atol=1e-12)


def test_ties_in_some_heads_only():
    """A head with a tie is re-sorted stably while the others keep the fast order."""
    rng = np.random.default_rng(3)
    oracle = rng.random((5, 40))
    scores = rng.normal(size=(5, 40))
    scores[2, 10] = scores[2, 30]  # one exact tie in head 2
    scores[4, :] = 0.0             # all tied in head 4
    scores[4, 7] = -0.0
    curves = curves_from_scores(oracle, scores, sink=1, window=1)
    np.testing.assert_allclose(curves.utility, direct_curves(oracle, scores, 1, 1), rtol=1e-12, atol=1e-12)


def test_hand_case():
    # Head 0: middle tokens 1, 2, 3 with scores 1, 5, 2 -> order 2, 3, 1.
    # Head 1: scores 3, 3, 1 tie -> position 1 before 2.
    oracle = [[0.5, 0.1, 0.3, 0.1], [0.2, 0.4, 0.0, 0.4]]
    scores = [[9.0, 1.0, 5.0, 2.0], [0.0, 3.0, 3.0, 1.0]]
    curves = curves_from_scores(oracle, scores, sink=1)
    np.testing.assert_allclose(curves.utility, [[0.5, 0.8, 0.9, 1.0], [0.2, 0.6, 0.6, 1.0]])
    np.testing.assert_array_equal(curves.grid, [1, 2, 3, 4])


def test_last_point_is_total_mass_and_first_is_protected_mass():
    rng = np.random.default_rng(11)
    oracle = rng.random((3, 4, 50))
    curves = curves_from_scores(oracle, rng.random((3, 4, 50)), sink=3, window=5)
    np.testing.assert_allclose(curves.utility[..., -1], oracle.sum(axis=-1))
    np.testing.assert_allclose(curves.utility[..., 0], oracle[..., :3].sum(-1) + oracle[..., -5:].sum(-1))


def test_monotone_for_non_negative_oracle_and_allocatable():
    rng = np.random.default_rng(5)
    oracle = rng.random((2, 3, 64))
    curves = curves_from_scores(oracle, rng.random((2, 3, 64)), sink=2, window=2)
    assert np.all(np.diff(curves.utility, axis=-1) >= 0)
    alloc = budgetopt.allocate(curves, 6 * 20)
    assert alloc.used == 120


def test_inputs_untouched_and_dtypes_accepted():
    rng = np.random.default_rng(2)
    oracle = rng.random((2, 10)).astype(np.float32)
    scores = rng.random((2, 10)).astype(np.float16)
    o0, s0 = oracle.copy(), scores.copy()
    curves = curves_from_scores(oracle, scores, sink=np.int64(1), window=1)
    np.testing.assert_array_equal(oracle, o0)
    np.testing.assert_array_equal(scores, s0)
    assert curves.utility.dtype == np.float64
    np.testing.assert_allclose(curves.utility, direct_curves(oracle, scores, 1, 1), rtol=1e-6)


def test_integer_scores_ranked_exactly():
    oracle = np.array([[1.0, 2.0, 4.0]])
    # 2**63 + 1 and 2**63 are equal as float64; ranking must still tell them apart.
    scores = np.array([[2**63, 2**63 + 1, 1]], dtype=np.uint64)
    curves = curves_from_scores(oracle, scores)
    np.testing.assert_allclose(curves.utility, [[0.0, 2.0, 3.0, 7.0]])
    signed = np.array([[np.iinfo(np.int64).min, 5, np.iinfo(np.int64).max]])
    np.testing.assert_allclose(curves_from_scores(oracle, signed).utility, [[0.0, 4.0, 6.0, 7.0]])


# -- errors -------------------------------------------------------------------------------
OK = np.ones((2, 3, 10))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(scores=np.ones((2, 3, 9))), InvalidInputError, r"`scores` must have the same shape as `oracle`"),
        (dict(oracle=np.ones(10), scores=np.ones(10)), InvalidInputError, r"`oracle` must have shape \(\*head_shape, T\)"),
        (dict(oracle=np.ones((0, 10)), scores=np.ones((0, 10))), InvalidInputError, r"`oracle` must hold at least one head"),
        (dict(sink=4, window=6), InvalidInputError, r"more tokens than sink \+ window = 10"),
        (dict(sink=11), InvalidInputError, r"got T = 10"),
        (dict(sink=-1), InvalidInputError, r"`sink` must be >= 0; got -1"),
        (dict(window=1.0), InvalidTypeError, r"`window` must be an integer; got float"),
        (dict(window=True), InvalidTypeError, r"`window` must be an integer; got bool"),
        (dict(oracle=np.array([["a"] * 10])), InvalidTypeError, r"`oracle` must hold real numbers"),
        (dict(scores=OK.astype(complex)), InvalidTypeError, r"`scores` must hold real numbers"),
        (dict(oracle=[[1.0, 2.0], [1.0]]), InvalidTypeError, r"`oracle` must be a numeric array"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    args = dict(oracle=OK, scores=OK, sink=0, window=0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        curves_from_scores(args["oracle"], args["scores"], sink=args["sink"], window=args["window"])


@pytest.mark.parametrize("name", ["oracle", "scores"])
@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_is_located(name, bad, kind):
    arrays = {"oracle": OK.copy(), "scores": OK.copy()}
    arrays[name][1, 2, 7] = bad
    with pytest.raises(InvalidInputError, match=rf"`{name}` must be finite; found {kind} at head \(1, 2\), token 7"):
        curves_from_scores(arrays["oracle"], arrays["scores"])


def test_errors_are_value_and_type_errors():
    with pytest.raises(ValueError):
        curves_from_scores(OK, OK, sink=10)
    with pytest.raises(TypeError):
        curves_from_scores(OK, OK, sink="4")


def test_curves_from_pairs_mean_and_median_match_per_pair_curves():
    from budgetopt.profile import curves_from_pairs

    rng = np.random.default_rng(21)
    oracles = [rng.random((2, 3, 30)) ** 3 for _ in range(5)]
    shared = rng.random((2, 3, 30))
    per_pair = [rng.random((2, 3, 30)) for _ in range(5)]
    for scores in (shared, per_pair):
        each = [curves_from_scores(o, shared if scores is shared else per_pair[i], sink=2, window=1).utility
                for i, o in enumerate(oracles)]
        mean = curves_from_pairs(oracles, scores, sink=2, window=1)
        median = curves_from_pairs(oracles, scores, sink=2, window=1, aggregate="median_curve")
        np.testing.assert_allclose(mean.utility, sum(each) / 5, rtol=1e-12)
        np.testing.assert_array_equal(median.utility, np.median(each, axis=0))
        assert mean.meta == {"sink": 2, "window": 1, "length": 30, "pairs": 5, "aggregate": "mean_curve"}
        np.testing.assert_array_equal(mean.grid, np.arange(3, 31))
    with pytest.raises(InvalidInputError, match=r"`oracles\[1\]` must have the head shape of `oracles\[0\]`"):
        curves_from_pairs([oracles[0], oracles[1][:, :2]], [shared, shared[:, :2]])
    # Contexts of different lengths: a relative grid (tests/test_runs.py checks its values).
    mixed = curves_from_pairs([oracles[0], oracles[1][:, :, :20]], [shared, shared[:, :, :20]], sink=2, window=1)
    assert mixed.meta["grid"] == "relative" and mixed.grid[0] == 150 and mixed.grid[-1] == 1000
    with pytest.raises(InvalidInputError, match="`aggregate` must be one of"):
        curves_from_pairs(oracles, shared, aggregate="mode")
