"""Curves: construction rules, error messages, and structure queries on hand cases."""

from __future__ import annotations

import re

import numpy as np
import pytest

from budgetopt import Curves, InvalidInputError, InvalidTypeError
from budgetopt.curves import as_curves


# -- valid construction ---------------------------------------------------------------------
def test_default_grid_is_arange_and_arrays_are_canonical_and_read_only():
    c = Curves([[0, 1, 2], [3, 4, 5]])  # integer utility is accepted and becomes float64
    assert c.utility.dtype == np.float64 and c.grid.dtype == np.int64
    np.testing.assert_array_equal(c.grid, [0, 1, 2])
    assert c.head_shape == (2,) and c.n_heads == 2 and c.n_points == 3
    assert c.capacity == 4
    for arr in (c.utility, c.grid):
        with pytest.raises(ValueError):
            arr[0] = 7


def test_input_arrays_are_copied_not_aliased():
    # Curves must neither alias nor modify the caller's arrays (regression: float64 /
    # int64 inputs were stored as-is and the caller's arrays were made read-only).
    u = np.zeros((2, 3))
    g = np.array([0, 1, 2], dtype=np.int64)
    c = Curves(u, g)
    assert u.flags.writeable and g.flags.writeable, "Curves made the caller's arrays read-only"
    u[0, 0] = 5.0
    g[2] = 9
    assert c.utility[0, 0] == 0.0 and c.grid[2] == 2


def test_head_shape_kept_for_layers_by_heads():
    c = Curves(np.zeros((4, 2, 3)))
    assert c.head_shape == (4, 2) and c.n_heads == 8
    assert c.utility2d.shape == (8, 3) and c.grid2d.shape == (1, 3)
    assert c.capacity == 8 * 2


def test_per_head_grid_capacity_is_sum_of_last_points():
    grid = [[[0, 2, 4]], [[1, 1, 9]]]  # head_shape (2, 1); a repeated point is allowed
    c = Curves(np.zeros((2, 1, 3)), grid)
    assert not c.shared_grid and c.grid2d.shape == (2, 3)
    assert c.capacity == 4 + 9


def test_float_grid_with_whole_values_is_accepted():
    c = Curves([[0.0, 1.0, 2.0]], [0.0, 8.0, 16.0])
    assert c.grid.dtype == np.int64
    np.testing.assert_array_equal(c.grid, [0, 8, 16])
    assert c.capacity == 16


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.float32, np.float16])
def test_other_real_dtypes_are_accepted(dtype):
    c = Curves(np.ones((2, 3), dtype=dtype), np.arange(3).astype(dtype))
    assert c.utility.dtype == np.float64 and c.grid.dtype == np.int64


def test_single_point_and_single_head():
    c = Curves([[5.0]])
    assert c.head_shape == (1,) and c.n_points == 1 and c.capacity == 0
    c = Curves([[1.0, 2.0]], [3, 7])
    assert c.capacity == 7


def test_meta_is_kept_as_a_copy():
    meta = {"model": "m", "window": 32}
    c = Curves([[0.0, 1.0]], meta=meta)
    meta["model"] = "changed"
    assert c.meta == {"model": "m", "window": 32}
    assert Curves([[0.0]]).meta == {}


def test_as_curves_passes_curves_through_and_wraps_arrays():
    c = Curves([[0.0, 1.0]])
    assert as_curves(c) is c
    assert as_curves([[0.0, 1.0]]) == c


def test_equality():
    a = Curves([[0.0, 1.0]], [0, 2])
    assert a == Curves([[0.0, 1.0]], [0, 2])
    assert a != Curves([[0.0, 1.0]], [0, 3])
    assert a != Curves([[0.0, 1.5]], [0, 2])


# -- errors: each names the argument, the rule and where it failed -------------------------
def _raises(exc_type, pattern, *args, **kwargs):
    with pytest.raises(exc_type, match=pattern) as info:
        Curves(*args, **kwargs)
    return str(info.value)


def test_nan_reports_its_location():
    u = np.zeros((2, 3, 4))
    u[1, 2, 3] = np.nan
    msg = _raises(InvalidInputError, "`utility`", u)
    assert "NaN" in msg and "head (1, 2), point 3" in msg


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_inf_reports_its_location(value):
    u = np.zeros((3, 5))
    u[2, 1] = value
    msg = _raises(InvalidInputError, "`utility`", u)
    assert "inf" in msg and "head 2, point 1" in msg


def test_first_nonfinite_is_reported():
    u = np.zeros((2, 3))
    u[1, 0] = np.inf
    u[0, 2] = np.nan
    assert "head 0, point 2" in _raises(InvalidInputError, "NaN", u)


@pytest.mark.parametrize("utility", [[1.0, 2.0, 3.0], 5.0], ids=["1-D", "scalar"])
def test_utility_needs_a_head_axis(utility):
    msg = _raises(InvalidInputError, "`utility`", utility)
    assert "head" in msg


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (2, 0, 4), (0, 0)])
def test_zero_heads_or_points_is_refused(shape):
    msg = _raises(InvalidInputError, "`utility`", np.zeros(shape))
    assert "at least one head and one point" in msg


@pytest.mark.parametrize(
    "utility",
    [
        np.array([[1 + 2j, 0j]]),
        np.array([[True, False]]),
        np.array([["a", "b"]]),
        np.array([[None, 1.0]], dtype=object),
        np.array([[1.0, 2.0]], dtype=object),  # numbers, but an object array
    ],
    ids=["complex", "bool", "str", "object-None", "object-floats"],
)
def test_unusable_utility_types_are_type_errors(utility):
    msg = _raises(InvalidTypeError, "`utility`", utility)
    assert "dtype" in msg


def test_ragged_utility_is_a_type_error():
    _raises(InvalidTypeError, "`utility`", [[0.0, 1.0], [0.0]])


def test_errors_are_builtin_subclasses():
    with pytest.raises(ValueError):
        Curves([1.0])
    with pytest.raises(TypeError):
        Curves([[1j]])


@pytest.mark.parametrize(
    "grid",
    [
        np.array([[0, 1, 2]]).astype(complex),
        np.array([False, True, True]),
        np.array(["0", "1", "2"]),
        np.array([0, 1, 2], dtype=object),
    ],
    ids=["complex", "bool", "str", "object"],
)
def test_unusable_grid_types_are_type_errors(grid):
    _raises(InvalidTypeError, "`grid`", np.zeros((2, 3)), grid)


@pytest.mark.parametrize(
    "grid_shape",
    [(4,), (2,), (2, 1), (1, 3), (3, 3), (2, 3, 1)],
)
def test_grid_shape_must_be_k_or_full(grid_shape):
    msg = _raises(InvalidInputError, "`grid`", np.zeros((2, 3)), np.zeros(grid_shape, dtype=np.int64))
    assert str(tuple(grid_shape)) in msg


def test_negative_grid_reports_location():
    msg = _raises(InvalidInputError, "`grid` must be non-negative", np.zeros((2, 3)), [[0, 1, 2], [-1, 0, 1]])
    assert "-1" in msg and "head 1, point 0" in msg


def test_negative_shared_grid():
    msg = _raises(InvalidInputError, "`grid` must be non-negative", np.zeros((2, 3)), [-2, 0, 1])
    assert "-2" in msg and "point 0" in msg


def test_decreasing_grid_reports_location():
    grid = np.array([[[0, 1, 2], [0, 1, 2]], [[0, 3, 2], [0, 1, 2]]])
    msg = _raises(InvalidInputError, "`grid` must be non-decreasing", np.zeros((2, 2, 3)), grid)
    assert "head (1, 0), point 2" in msg


def test_decreasing_shared_grid():
    msg = _raises(InvalidInputError, "non-decreasing", np.zeros((2, 4)), [0, 5, 4, 6])
    assert "point 2" in msg


def test_fractional_float_grid_is_refused_with_location():
    msg = _raises(InvalidInputError, "`grid` must hold whole token counts", np.zeros((2, 3)), [[0, 1, 2], [0, 1.5, 2]])
    assert "1.5" in msg and "head 1, point 1" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_float_grid_is_refused(bad):
    _raises(InvalidInputError, "`grid`", np.zeros((1, 3)), [0.0, 1.0, bad])


@pytest.mark.parametrize("grid", [np.array([0, 2**63], dtype=np.uint64), np.array([0.0, 1e30])])
def test_huge_grid_values_are_refused(grid):
    _raises(InvalidInputError, "`grid`", np.zeros((1, 2)), grid)


def test_meta_must_be_a_dict():
    _raises(InvalidTypeError, "`meta`", [[0.0]], meta="model=x")


# -- structure queries on hand cases ---------------------------------------------------------
@pytest.mark.parametrize(
    ("utility", "grid", "expected"),
    [
        ([[0.0, 1.0, 1.5, 1.75]], None, True),  # decreasing increments
        ([[0.0, 1.0, 2.0, 3.0]], None, True),  # linear counts as concave
        ([[0.0, 0.1, 0.9]], None, False),  # convex
        ([[3.0]], None, True),  # a single point
        ([[0.0, 1.0, 2.0]], [0, 1, 3], True),  # slopes 1, 0.5 on an uneven grid
        ([[0.0, 1.0, 2.0]], [0, 2, 3], False),  # slopes 0.5, 1 on an uneven grid
        ([[0.0, 1.0, 1.5], [0.0, 0.1, 0.9]], None, False),  # one non-concave head suffices
        ([[0.0, 1.0, 1.5], [0.0, 0.5, 0.9]], None, True),
    ],
)
def test_is_concave_hand_cases(utility, grid, expected):
    assert Curves(utility, grid).is_concave() is expected


def test_is_concave_tolerance():
    c = Curves([[0.0, 0.5 - 1e-6, 1.0]])  # 1e-6 below the chord
    assert c.is_concave() is False
    assert c.is_concave(tol=1e-5) is True


def test_is_concave_non_monotone_concave_curve():
    # Rises then falls with decreasing increments: concave in the ordinary sense, the
    # curve equals its upper concave hull.
    assert Curves([[0.0, 1.0, 0.5]]).is_concave() is True


def test_is_concave_repeated_grid_point_uses_best_utility():
    # Grid point 1 appears twice; its best utility (1.0) lies on a concave curve.
    assert Curves([[0.0, 1.0, 0.2, 1.5]], [0, 1, 1, 2]).is_concave() is True


def test_repr_mentions_shape():
    assert re.search(r"head_shape=\(2,\)", repr(Curves(np.zeros((2, 3)))))
