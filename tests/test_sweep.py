"""sweep: every row is allocate's answer, nesting on per-token curves, the Sweep fields, errors."""

from __future__ import annotations

import numpy as np
import pytest

import budgetopt
from budgetopt import Curves, allocate, sweep
from budgetopt._invariants import check_allocation
from budgetopt.problem import build_problem
from budgetopt.errors import InfeasibleError, InvalidInputError, InvalidTypeError
from budgetopt.profile import curves_from_scores
from generators import random_curves

# One shared table of seeded cases: curve kind x grid kind x floors/caps.
CASES = [
    (seed, kind, grid, bounds)
    for seed, (kind, grid) in enumerate(
        [("random", "unit"), ("monotone", "unit"), ("concave", "unit"), ("random", "equal"),
         ("monotone", "shared"), ("random", "per_head"), ("monotone", "per_head")]
    )
    for bounds in ("none", "floor", "floor_cap")
]


def _bounds(curves, bounds, seed):
    rng = np.random.default_rng(seed)
    g = np.broadcast_to(curves.grid2d, (curves.n_heads, curves.n_points))
    if bounds == "none":
        return {}
    lo = g[np.arange(curves.n_heads), rng.integers(0, 2, curves.n_heads)].reshape(curves.head_shape)
    if bounds == "floor":
        return {"min_budget": lo}
    hi = g[np.arange(curves.n_heads), rng.integers(curves.n_points - 2, curves.n_points, curves.n_heads)]
    return {"min_budget": lo, "max_budget": np.maximum(hi.reshape(curves.head_shape), lo)}


@pytest.mark.parametrize("seed,kind,grid,bounds", CASES)
def test_rows_equal_allocate_and_pass_the_invariants(seed, kind, grid, bounds):
    curves = Curves(*random_curves(seed, (2, 3), 6, kind=kind, grid=grid))
    kw = _bounds(curves, bounds, seed)
    g = np.broadcast_to(curves.grid2d, (curves.n_heads, curves.n_points))
    lo = np.broadcast_to(kw.get("min_budget", 0), curves.head_shape).reshape(-1)
    floor_total = int(sum(g[h][g[h] >= lo[h]].min() for h in range(curves.n_heads)))
    # Unsorted, with a repeat, from the smallest feasible total up past the capacity.
    totals = sorted(range(floor_total, curves.capacity + 3), key=lambda t: (t * 7919) % 23)
    totals.append(totals[0])
    s = sweep(curves, totals, **kw)
    if floor_total > 0:
        with pytest.raises(InfeasibleError):
            sweep(curves, totals + [floor_total - 1], **kw)
    assert len(s) == len(totals)
    np.testing.assert_array_equal(s.totals, totals)
    for i, total in enumerate(totals):
        a = allocate(curves, total, method="greedy", **kw)
        np.testing.assert_array_equal(s.budgets[i], a.budgets)
        assert s.used[i] == a.used
        assert s.utility[i] == a.utility
        assert s.upper_bound[i] == a.upper_bound
        assert s.gap[i] == a.gap
        assert s.threshold[i] == a.threshold
        check_allocation(curves, s[i], total_budget=total, **kw)
    np.testing.assert_array_equal(s.budgets[0], s.budgets[-1])


@pytest.mark.parametrize("seed", range(4))
def test_nested_and_exact_on_per_token_curves(seed):
    """Curves from scores (unit steps, non-negative oracle): nested rows, used == total."""
    rng = np.random.default_rng(seed)
    oracle = rng.gamma(0.5, size=(2, 3, 30))
    curves = curves_from_scores(oracle, oracle + rng.normal(size=oracle.shape), sink=2, window=1)
    floor = 3 + seed
    totals = np.arange(6 * floor, curves.capacity + 1)
    s = sweep(curves, totals, min_budget=floor)
    flat = s.budgets.reshape(len(totals), -1)
    assert np.all(np.diff(flat, axis=0) >= 0), "a larger total took tokens from a head"
    np.testing.assert_array_equal(s.used, totals)
    assert np.all(flat >= floor)
    assert np.all(np.diff(s.utility) >= -1e-12)
    assert np.all(s.gap >= -1e-12)
    np.testing.assert_allclose(s.gap, s.upper_bound - s.utility, atol=1e-12)


def test_fields_types_and_read_only():
    curves = Curves([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]])
    s = sweep(curves, [4, 0, 2])
    assert s.totals.dtype == np.int64 and s.budgets.dtype == np.int64 and s.used.dtype == np.int64
    assert s.budgets.shape == (3, 2)
    for name in ("totals", "budgets", "used", "utility", "upper_bound", "gap", "threshold"):
        with pytest.raises(ValueError):
            getattr(s, name)[0] = 1
    assert s.budgets.tolist() == [[2, 2], [0, 0], [1, 1]]
    assert s[1].budgets.tolist() == [0, 0] and s[1].method == "greedy"
    assert s.seconds >= 0


def test_row_view_passes_the_invariant_checker_unmodified():
    curves = Curves([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]])
    check_allocation(curves, sweep(curves, [2])[0], total_budget=2)


def test_integral_floats_and_numpy_ints_accepted():
    curves = Curves([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]])
    a = sweep(curves, np.array([1.0, 3.0]))
    b = sweep(curves, np.array([1, 3], dtype=np.uint8))
    np.testing.assert_array_equal(a.budgets, b.budgets)


@pytest.mark.parametrize(
    "totals,error,match",
    [
        ([[1, 2]], InvalidInputError, r"`totals` must be a 1-D sequence"),
        (5, InvalidInputError, r"`totals` must be a 1-D sequence"),
        ([1, -1], InvalidInputError, r"`totals\[1\]` must be >= 0"),
        ([1.5], InvalidInputError, r"`totals\[0\]` is in tokens and must be a whole number"),
        ([np.nan], InvalidInputError, r"`totals\[0\]` must be finite"),
        (["3"], InvalidTypeError, r"`totals` must hold whole numbers"),
        ([True], InvalidTypeError, r"`totals"),
    ],
)
def test_errors_name_the_argument(totals, error, match):
    with pytest.raises(error, match=match):
        sweep(Curves([[0.0, 1.0, 2.0]]), totals)


def test_infeasible_total_below_floors():
    curves = Curves([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    with pytest.raises(InfeasibleError, match=r"below 2"):
        sweep(curves, [3, 1], min_budget=1)
    assert sweep(curves, [3, 2], min_budget=1).used.tolist() == [3, 2]


def test_sweep_is_exported():
    assert budgetopt.sweep is sweep


def test_empty_totals_give_an_empty_sweep():
    # Regression: sweep(curves, []) raised numpy's "cannot reshape array of size 0".
    s = budgetopt.sweep([[0.0, 1.0], [0.0, 2.0]], [])
    assert len(s) == 0
    assert s.budgets.shape == (0, 2)
    assert s.used.shape == s.utility.shape == (0,)


@pytest.mark.parametrize("seed", range(3))
def test_sweep_rows_bit_identical_to_allocate_on_random_small_problems(seed):
    # Any order of totals, shared and per-head grids, repeated grid points, floors, ties
    # (values on a 0.1 lattice): sweep's shared ordering must reproduce allocate exactly.
    rng = np.random.default_rng(seed)
    for trial in range(40):
        heads, points = int(rng.integers(1, 6)), int(rng.integers(1, 10))
        if trial % 2:
            utility = np.round(rng.normal(size=(heads, points)), 1)
        else:
            utility = np.cumsum(np.round(rng.random((heads, points)), 1), axis=1)
        grid = None if trial % 3 else np.sort(rng.integers(0, 8, size=(heads, points)), axis=1)
        curves = Curves(utility, grid)
        floor = 1 if trial % 4 == 0 and curves.grid.min() <= 1 <= curves.grid.max() else None
        try:
            least = build_problem(curves, floor).floor_total
        except budgetopt.InfeasibleError:  # a head without a grid point at or above the floor
            continue
        totals = list(range(curves.capacity + 2, least - 1, -1))
        s = sweep(curves, totals, min_budget=floor)
        for i, total in enumerate(totals):
            a = allocate(curves, total, min_budget=floor)
            assert a.budgets.tolist() == s.budgets[i].tolist(), (trial, total)
            assert a.utility == s.utility[i] and a.upper_bound == s.upper_bound[i]
            assert a.threshold == s.threshold[i] and a.used == s.used[i]
