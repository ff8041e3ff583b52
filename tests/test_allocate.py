"""allocate(): agreement of every method with brute force, properties, errors, edge cases.

Ground truth comes from tests/reference_exact.py (enumeration and a directly stated LP
relaxation); every result passes budgetopt._invariants.check_allocation.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import budgetopt
from budgetopt import (
    Curves,
    InfeasibleError,
    InvalidInputError,
    InvalidTypeError,
    ProblemTooLargeError,
    allocate,
)
from budgetopt._invariants import check_allocation, tolerance
from generators import problems, scaled, random_curves
from reference_exact import brute_force, dual_value, feasible_options, lp_relaxation
from reference_lukv import lukv_reference_prune_ratios

EXACT = ["dp", "milp", "cvxpy"]
ALL = ["greedy", *EXACT]


def _solve(p, method):
    curves = Curves(p["utility"], p["grid"])
    a = allocate(curves, p["total_budget"], method=method, min_budget=p["min_budget"], max_budget=p["max_budget"])
    check_allocation(curves, a, total_budget=p["total_budget"], min_budget=p["min_budget"], max_budget=p["max_budget"])
    assert a.method == method
    return curves, a


def _check_against_truth(p, method):
    """Solve ``p`` with ``method`` and compare with brute force and the LP relaxation."""
    curves = Curves(p["utility"], p["grid"])
    truth = brute_force(curves, p["total_budget"], p["min_budget"], p["max_budget"])
    if truth is None:
        with pytest.raises(InvalidInputError):
            _solve(p, method)
        return None
    curves, a = _solve(p, method)
    tol = tolerance(curves)
    best = truth[0]
    assert a.upper_bound >= best - tol, f"upper_bound {a.upper_bound} below the optimum {best}"
    lp_value, _ = lp_relaxation(curves, p["total_budget"], p["min_budget"], p["max_budget"])
    # The threshold is an optimal multiplier of the budget constraint: its Lagrangian bound
    # equals the LP value (every method reports it).
    lagrangian = dual_value(curves, p["total_budget"], a.threshold, p["min_budget"], p["max_budget"])
    assert lagrangian == pytest.approx(lp_value, rel=1e-9, abs=tol), f"threshold {a.threshold} is not an optimal multiplier"
    if method == "greedy":
        assert a.utility <= best + tol
        assert a.upper_bound == pytest.approx(lp_value, rel=1e-9, abs=tol), "greedy upper_bound is not the LP value"
    else:
        assert a.utility == pytest.approx(best, rel=1e-9, abs=tol), f"{method} is not optimal"
    return a


# -- the agreement test: one shared table of seeded cases, every method ------------------------
# (seed, head_shape, K, kind, grid, total as a fraction of capacity, min, max)
CASES = [
    (0, (3,), 4, "concave", "unit", 0.5, None, None),
    (1, (2, 2), 5, "concave", "equal", 0.3, None, None),
    (2, (4,), 4, "monotone", "unit", 0.4, None, None),
    (3, (3,), 5, "random", "unit", 0.5, None, None),
    (4, (2, 2), 3, "random", "shared", 0.6, None, None),
    (5, (4,), 4, "random", "per_head", 0.5, None, None),
    (6, (3,), 5, "monotone", "per_head", 0.7, 1, None),
    (7, (2, 2), 4, "random", "unit", 0.5, 1, 2),
    (8, (5,), 3, "concave", "shared", 0.2, None, 3),
    (9, (3,), 6, "random", "equal", 0.9, 2, None),
    (10, (1,), 6, "random", "per_head", 0.5, None, None),
    (11, (6,), 2, "random", "unit", 0.5, None, None),
]


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("case", CASES, ids=[f"seed{c[0]}-{c[3]}-{c[4]}" for c in CASES])
def test_agreement_table(case, method):
    seed, head_shape, k, kind, grid, frac, lo, hi = case
    utility, g = random_curves(seed, head_shape, k, kind=kind, grid=grid)
    capacity = Curves(utility, g).capacity
    p = {"utility": utility, "grid": g, "total_budget": int(frac * capacity), "min_budget": lo, "max_budget": hi}
    a = _check_against_truth(p, method)
    assert a is not None, "every table case is feasible"


@pytest.mark.parametrize("case", CASES[:6], ids=[f"seed{c[0]}" for c in CASES[:6]])
def test_exact_methods_agree_with_each_other(case):
    seed, head_shape, k, kind, grid, frac, lo, hi = case
    curves = Curves(*random_curves(seed, head_shape, k, kind=kind, grid=grid))
    total = int(frac * curves.capacity)
    values = {m: allocate(curves, total, method=m).utility for m in EXACT}
    assert max(values.values()) - min(values.values()) <= tolerance(curves), values


# -- hand cases checkable by eye ------------------------------------------------------------
# Head A: 0, .6, .7 (marginals .6, .1); head B: 0, .5, .9 (marginals .5, .4). Concave, unit grid.
TWO_HEADS = [[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]]


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize(
    ("total", "budgets", "utility"),
    [(0, [0, 0], 0.0), (1, [1, 0], 0.6), (2, [1, 1], 1.1), (3, [1, 2], 1.5), (4, [2, 2], 1.6), (9, [2, 2], 1.6)],
)
def test_hand_two_concave_heads(method, total, budgets, utility):
    a = allocate(TWO_HEADS, total, method=method)
    check_allocation(TWO_HEADS, a, total_budget=total)
    assert a.budgets.tolist() == budgets
    assert a.utility == pytest.approx(utility, abs=1e-12)
    assert a.total_budget == total


@pytest.mark.parametrize(("total", "threshold"), [(1, 0.5), (2, 0.4), (3, 0.1), (4, 0.0), (9, 0.0)])
def test_threshold_is_slope_of_blocked_segment(total, threshold):
    # Segments by slope: A .6, B .5, B .4, A .1 (each one token). With `total` tokens the
    # first segment that does not fit has the listed slope; none is blocked from 4 on.
    assert allocate(TWO_HEADS, total).threshold == pytest.approx(threshold, abs=1e-12)


def test_threshold_on_a_multi_token_segment():
    # Head A's hull is one segment 0 -> 4 tokens of slope 2 / 4 = .5; head B gains .3 per token.
    # With 3 tokens A's segment is blocked: the multiplier is its slope.
    curves = [[0.0, 0.0, 0.0, 0.0, 2.0], [0.0, 0.3, 0.6, 0.9, 1.2]]
    a = allocate(curves, 3)
    check_allocation(curves, a, total_budget=3)
    assert a.threshold == pytest.approx(0.5)
    assert a.upper_bound == pytest.approx(1.5)  # LP: 3/4 of A's segment


def test_greedy_gap_on_a_convex_head():
    # A: 0 until it jumps to 1 at 2 tokens (hull slope .5); B: .4 for the first token only.
    # One token: the LP bound is .5 (half of A's segment); the best integer answer is .4.
    curves = [[0.0, 0.0, 1.0], [0.0, 0.4, 0.4]]
    for method in ALL:
        a = allocate(curves, 1, method=method)
        check_allocation(curves, a, total_budget=1)
        if method == "greedy":
            assert a.upper_bound == pytest.approx(0.5)
        assert a.utility <= 0.4 + 1e-12
    assert allocate(curves, 1, method="dp").utility == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("curves", "total", "best"),
    [
        ([[0.0, 0.0, 1.0], [0.0, 0.4, 0.4]], 1, 0.4),
        ([[0.0, 0.0, 0.0, 0.0, 2.0], [0.0, 0.3, 0.6, 0.9, 1.2]], 3, 0.9),
        # Found by hypothesis; also makes the greedy's utility fall from .25 (1 token) to 0.
        (Curves([[0.0, 0.0, 1.0], [0.0, 0.25, 0.25]], [[0, 2, 3], [0, 1, 1]]), 2, 0.25),
    ],
    ids=["convex-head", "multi-token-segment", "per-head-grid"],
)
def test_greedy_blocked_head_does_not_waste_tokens_on_zero_gain(curves, total, best):
    # The blocked head (A) gains nothing from any point that fits; every token it takes is
    # lost to head B, whose next moves gain. "No budget is left on the table when a move
    # could use it": the greedy should reach the optimum `best` here.
    a = allocate(curves, total)
    check_allocation(curves, a, total_budget=total)
    assert a.utility == pytest.approx(best), (
        f"greedy spent the budget on a zero-gain move: budgets {a.budgets.tolist()}, utility {a.utility}, best {best}"
    )


def test_per_head_grid_hand_case():
    # Head 0 keeps 0, 4 or 8 tokens; head 1 keeps 2, 3 or 10 tokens (its floor is 2).
    curves = Curves([[0.0, 1.0, 1.2], [0.0, 0.5, 2.0]], [[0, 4, 8], [2, 3, 10]])
    for method in ALL:
        a = allocate(curves, 12, method=method)
        check_allocation(curves, a, total_budget=12)
        assert a.budgets.tolist() == [0, 10] or method == "greedy"
    assert allocate(curves, 12, method="dp").utility == pytest.approx(2.0)


def test_repeated_grid_point_best_utility_counts():
    # Grid point 1 appears twice (padding); the better utility, .8, is what a head gets.
    curves = Curves([[0.0, 0.3, 0.8, 0.8]], [0, 1, 1, 1])
    for method in ALL:
        a = allocate(curves, 1, method=method)
        check_allocation(curves, a, total_budget=1)
        assert a.utility == pytest.approx(0.8)


# -- properties over random curves and grids -------------------------------------------------
@given(problems())
@settings(max_examples=scaled(150))
def test_property_greedy_against_truth(p):
    _check_against_truth(p, "greedy")


@given(problems())
@settings(max_examples=scaled(100))
def test_property_dp_against_truth(p):
    _check_against_truth(p, "dp")


@given(problems(max_heads=3, max_points=4))
@settings(max_examples=scaled(30))
def test_property_milp_against_truth(p):
    _check_against_truth(p, "milp")


@given(problems(max_heads=3, max_points=4))
@settings(max_examples=scaled(15))
def test_property_cvxpy_against_truth(p):
    _check_against_truth(p, "cvxpy")


@given(problems(concave_equal_steps=True))
@settings(max_examples=scaled(60))
def test_property_concave_equal_steps_greedy_is_exact(p):
    greedy = _check_against_truth(p, "greedy")
    if greedy is None:
        return
    dp = _solve(p, "dp")[1]
    assert greedy.utility == pytest.approx(dp.utility, rel=1e-12, abs=1e-9)


@given(problems(max_heads=3, max_points=4, concave_equal_steps=True))
@settings(max_examples=scaled(10))
def test_property_concave_equal_steps_all_methods_equal(p):
    curves = Curves(p["utility"], p["grid"])
    if brute_force(curves, p["total_budget"], p["min_budget"], p["max_budget"]) is None:
        return
    values = [_solve(p, m)[1].utility for m in ALL]
    assert max(values) - min(values) <= tolerance(curves), values


def _utilities_over_budgets(p, method):
    curves = Curves(p["utility"], p["grid"])
    out = []
    for total in range(0, curves.capacity + 2):
        try:
            a = allocate(curves, total, method=method, min_budget=p["min_budget"], max_budget=p["max_budget"])
        except InfeasibleError:
            assert not out, f"feasible at a smaller total, infeasible at {total}"
            continue
        out.append((total, a.utility))
    return curves, out


def _assert_non_decreasing(curves, pairs):
    tol = tolerance(curves)
    for (t0, u0), (t1, u1) in zip(pairs, pairs[1:]):
        assert u1 >= u0 - tol, f"utility fell from {u0} at total {t0} to {u1} at total {t1}"


@given(problems(max_points=4))
@settings(max_examples=scaled(30))
def test_property_dp_utility_non_decreasing_in_budget(p):
    _assert_non_decreasing(*_utilities_over_budgets(p, "dp"))


@given(problems(max_points=4, concave_equal_steps=True))
@settings(max_examples=scaled(60))
def test_property_greedy_utility_non_decreasing_in_budget_on_concave_curves(p):
    # Where the greedy is exact its utility grows with the budget. On other curves LU-KV's
    # rule can fall (see test_greedy_follows_lukv_when_the_blocked_head_takes_a_small_gain);
    # what always grows is its certificate, below.
    _assert_non_decreasing(*_utilities_over_budgets(p, "greedy"))


@given(problems(max_points=4))
@settings(max_examples=scaled(60))
def test_property_greedy_upper_bound_non_decreasing_in_budget(p):
    curves = Curves(p["utility"], p["grid"])
    bounds = []
    for total in range(0, curves.capacity + 2):
        try:
            a = allocate(curves, total, min_budget=p["min_budget"], max_budget=p["max_budget"])
        except InfeasibleError:
            continue
        bounds.append((total, a.upper_bound))
    _assert_non_decreasing(curves, bounds)


def test_greedy_utility_non_decreasing_hand_case():
    # Head A (unit grid 0..10): utility 3 at 2 tokens, 3.1 at 6, 16 at 10, else 0; its hull is
    # one segment 0 -> 10 of slope 1.6. Head B gains .5 per token up to 3 tokens.
    # With 5 tokens A's segment is blocked, A takes 2 tokens (3.0) and B the other 3 (1.5):
    # 4.5. With 6 tokens A's best point that fits is 6 (3.1), leaving nothing for B. The
    # optimum at 6 tokens is 4.5, so the greedy's utility should not drop to 3.1.
    a = np.zeros(11)
    a[2], a[6], a[10] = 3.0, 3.1, 16.0
    b = np.minimum(np.arange(11), 3) * 0.5
    curves = np.stack([a, b])
    five = allocate(curves, 5)
    six = allocate(curves, 6)
    check_allocation(curves, five, total_budget=5)
    check_allocation(curves, six, total_budget=6)
    assert allocate(curves, 6, method="dp").utility == pytest.approx(4.5)
    assert six.utility >= five.utility, (
        f"greedy utility fell from {five.utility} (budgets {five.budgets.tolist()}) at 5 tokens "
        f"to {six.utility} (budgets {six.budgets.tolist()}) at 6 tokens"
    )


@given(problems(max_heads=6, max_points=6, bounds=False, per_head_grid=False))
@settings(max_examples=scaled(60))
def test_property_greedy_uses_budget_exactly_on_unit_increasing(p):
    # Strictly increasing curves on the unit grid: every token buys utility somewhere, so no
    # budget is left on the table.
    utility = np.cumsum(np.abs(p["utility"]) + 0.25, axis=-1)
    curves = Curves(utility)
    for total in sorted({0, p["total_budget"], curves.capacity // 2, curves.capacity, curves.capacity + 1}):
        a = allocate(curves, total)
        check_allocation(curves, a, total_budget=total)
        assert a.used == min(total, curves.capacity), (total, a.budgets.tolist())


@pytest.mark.parametrize("seed", range(4))
def test_greedy_uses_budget_exactly_on_seeded_per_token_curves(seed):
    curves = Curves(*random_curves(seed, (4, 4), 33, kind="increasing"))
    for total in (0, 1, 17, 100, 257, curves.capacity - 1, curves.capacity, curves.capacity + 5):
        a = allocate(curves, total)
        check_allocation(curves, a, total_budget=total)
        assert a.used == min(total, curves.capacity)


@given(problems())
@settings(max_examples=scaled(120))
def test_property_greedy_leaves_no_improving_move_unfunded(p):
    # "No budget is left on the table when a move could use it": after the greedy, no head can
    # move up to a grid point within its range, paid from the unused tokens, and gain utility.
    curves = Curves(p["utility"], p["grid"])
    if brute_force(curves, p["total_budget"], p["min_budget"], p["max_budget"]) is None:
        return
    curves, a = _solve(p, "greedy")
    left = p["total_budget"] - a.used
    options = feasible_options(curves, p["min_budget"], p["max_budget"])
    for h, (b, opts) in enumerate(zip(a.budgets.reshape(-1).tolist(), options)):
        for g, u in opts.items():
            if b < g <= b + left:
                assert u <= opts[b], f"head {h} could move {b} -> {g} tokens and gain {u - opts[b]} with {left} unused"


# -- degenerate shapes, every method -----------------------------------------------------------
@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize(
    ("utility", "grid", "total", "budgets"),
    [
        ([[0.0, 1.0, 3.0]], None, 2, [2]),  # one head
        ([[5.0], [7.0]], None, 0, [0, 0]),  # one point per head
        ([[2.0], [3.0]], [4], 8, [4, 4]),  # one point, not zero: exactly the capacity
        ([[0.0, 1.0], [0.0, 2.0]], None, 0, [0, 0]),  # zero budget
        ([[0.0, 1.0], [0.0, 2.0]], None, 2, [1, 1]),  # full budget
        ([[0.0, 1.0], [0.0, 2.0]], None, 10**6, [1, 1]),  # above capacity
        ([[0.0, -1.0], [0.0, -2.0]], None, 2, [0, 0]),  # decreasing curves keep nothing
        ([[[0.0, 1.0]], [[0.0, 2.0]], [[0.0, 0.5]]], None, 2, [[1], [1], [0]]),  # head_shape (3, 1)
    ],
    ids=["one-head", "one-point", "one-point-nonzero", "zero-budget", "full", "above-capacity", "decreasing", "3x1"],
)
def test_degenerate(method, utility, grid, total, budgets):
    curves = Curves(utility, grid)
    a = allocate(curves, total, method=method)
    check_allocation(curves, a, total_budget=total)
    assert a.budgets.tolist() == budgets


@pytest.mark.parametrize("method", ALL)
def test_layers_by_heads_shape_is_kept(method, make_curves):
    curves = make_curves(3, head_shape=(2, 3), n_points=4, grid="per_head")
    a = allocate(curves, curves.capacity // 2, method=method)
    check_allocation(curves, a, total_budget=curves.capacity // 2)
    assert a.budgets.shape == (2, 3) and a.head_shape == (2, 3)


# -- floors and caps --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL)
def test_scalar_floor_and_cap(method):
    curves = Curves(*random_curves(12, (4,), 8, kind="monotone"))
    a = allocate(curves, 16, method=method, min_budget=2, max_budget=5)
    check_allocation(curves, a, total_budget=16, min_budget=2, max_budget=5)
    assert a.budgets.min() >= 2 and a.budgets.max() <= 5


@pytest.mark.parametrize("method", ALL)
def test_head_shaped_floor_and_cap(method):
    curves = Curves(*random_curves(13, (2, 2), 8, kind="random"))
    lo = np.array([[0, 3], [1, 0]])
    hi = np.array([[2, 7], [1, 7]])
    a = allocate(curves, 10, method=method, min_budget=lo, max_budget=hi)
    check_allocation(curves, a, total_budget=10, min_budget=lo, max_budget=hi)
    assert a.budgets[1, 0] == 1  # floor == cap pins it


@pytest.mark.parametrize("method", ALL)
def test_floor_between_grid_points_rounds_up_to_the_next_point(method):
    curves = Curves([[0.0, 5.0, 6.0, 7.0]], [0, 4, 8, 12])
    a = allocate(curves, 12, method=method, min_budget=5)
    check_allocation(curves, a, total_budget=12, min_budget=5)
    assert a.budgets.tolist() == [12]


def test_floor_equal_to_total_is_feasible_and_forced():
    curves = Curves([[0.0, 1.0, 2.0], [0.0, 3.0, 4.0]])
    a = allocate(curves, 2, min_budget=1)
    assert a.budgets.tolist() == [1, 1]


# -- infeasible ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL)
def test_budget_below_sum_of_floors_is_infeasible(method):
    with pytest.raises(InfeasibleError, match="total_budget|min_budget"):
        allocate(np.zeros((3, 4)), 5, method=method, min_budget=2)


@pytest.mark.parametrize("method", ALL)
def test_budget_below_smallest_grid_points_is_infeasible(method):
    # No floor given, but every head's grid starts at 3 tokens.
    with pytest.raises(InfeasibleError):
        allocate(Curves(np.zeros((2, 2)), [3, 5]), 5, method=method)


@pytest.mark.parametrize("method", ALL)
def test_head_without_a_point_in_its_range_is_infeasible(method):
    # Grid 0, 4, 8 and [min, max] = [1, 3]: no point for any head.
    with pytest.raises(InfeasibleError, match="head"):
        allocate(Curves(np.zeros((2, 3)), [0, 4, 8]), 100, method=method, min_budget=1, max_budget=3)


def test_infeasible_is_an_invalid_input_error():
    assert issubclass(InfeasibleError, ValueError) and issubclass(InfeasibleError, budgetopt.BudgetoptError)


# -- per-argument errors ----------------------------------------------------------------------
def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(InvalidInputError, match="`method`") as info:
        allocate(TWO_HEADS, 2, method="simplex")
    for m in ALL:
        assert repr(m) in str(info.value) or m in str(info.value)
    assert "simplex" in str(info.value)


@pytest.mark.parametrize("method", [None, 3, "GREEDY", ""])
def test_other_bad_methods(method):
    with pytest.raises(InvalidInputError, match="`method`"):
        allocate(TWO_HEADS, 2, method=method)


@pytest.mark.parametrize(
    ("total", "error"),
    [
        (-1, InvalidInputError),
        (float("nan"), InvalidInputError),
        (float("inf"), InvalidInputError),
        (2.5, InvalidInputError),
        (-0.5, InvalidInputError),
        ("10", InvalidTypeError),
        (None, InvalidTypeError),
        ([2], InvalidTypeError),
        (True, InvalidTypeError),
        (1 + 0j, InvalidTypeError),
    ],
    ids=["negative", "nan", "inf", "fractional", "negative-fraction", "str", "none", "list", "bool", "complex"],
)
def test_bad_total_budget(total, error):
    with pytest.raises(error, match="`total_budget`"):
        allocate(TWO_HEADS, total)


@pytest.mark.parametrize("total", [np.int64(2), np.int32(2), np.uint8(2), 2.0, np.float64(2.0)])
def test_whole_number_total_budget_types(total):
    a = allocate(TWO_HEADS, total)
    assert a.utility == pytest.approx(1.1) and a.total_budget == 2 and isinstance(a.total_budget, int)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_budget": 3, "max_budget": 2}, "min_budget"),
        ({"min_budget": np.array([0, 3]), "max_budget": np.array([2, 2])}, "min_budget"),
        ({"min_budget": np.array([0, 1, 2])}, "min_budget"),
        ({"max_budget": np.array([[1, 2]])}, "max_budget"),
        ({"min_budget": 1.5}, "min_budget"),
        ({"max_budget": float("nan")}, "max_budget"),
        ({"min_budget": np.array([0.0, np.nan])}, "min_budget"),
    ],
    ids=["min>max", "min>max-array", "min-shape", "max-shape", "min-fractional", "max-nan", "min-nan-array"],
)
def test_bad_floor_or_cap(kwargs, name):
    with pytest.raises(InvalidInputError, match=f"`{name}`"):
        allocate(TWO_HEADS, 2, **kwargs)


@pytest.mark.parametrize(("kwargs", "name"), [({"min_budget": "1"}, "min_budget"), ({"max_budget": np.array([1j, 2j])}, "max_budget"), ({"min_budget": [True, False]}, "min_budget")])
def test_bad_floor_or_cap_types(kwargs, name):
    with pytest.raises(InvalidTypeError, match=f"`{name}`"):
        allocate(TWO_HEADS, 2, **kwargs)


def test_bad_curves_are_reported_by_curves():
    with pytest.raises(InvalidInputError, match="`utility`"):
        allocate([1.0, 2.0], 1)
    with pytest.raises(InvalidInputError, match="NaN"):
        allocate([[0.0, np.nan]], 1)


def test_misspelled_keyword_fails_loudly():
    with pytest.raises(TypeError):
        allocate(TWO_HEADS, 2, methd="dp")
    with pytest.raises(TypeError):
        allocate(TWO_HEADS, 2, "dp")  # method is keyword-only


def test_allocate_does_not_modify_or_freeze_caller_arrays():
    utility = np.array(TWO_HEADS)
    lo = np.array([0, 1])
    before = utility.copy()
    allocate(utility, 2, min_budget=lo)
    np.testing.assert_array_equal(utility, before)
    np.testing.assert_array_equal(lo, [0, 1])
    assert utility.flags.writeable and lo.flags.writeable, "allocate made the caller's arrays read-only"


# -- determinism and ties ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL)
def test_same_input_same_output(method, make_curves):
    curves = make_curves(21, head_shape=(3, 2), n_points=5, grid="shared")
    a = allocate(curves, curves.capacity // 3, method=method)
    b = allocate(curves, curves.capacity // 3, method=method)
    assert np.array_equal(a.budgets, b.budgets)
    assert (a.utility, a.upper_bound, a.threshold, a.used) == (b.utility, b.upper_bound, b.threshold, b.used)


@pytest.mark.parametrize("method", ["greedy", "dp"])
def test_ties_go_to_the_earlier_head(method):
    # Three identical heads, room for two tokens: the first two heads get them.
    curves = [[0.0, 1.0, 1.5], [0.0, 1.0, 1.5], [0.0, 1.0, 1.5]]
    assert allocate(curves, 2, method=method).budgets.tolist() == [1, 1, 0]
    assert allocate(curves, 1, method=method).budgets.tolist() == [1, 0, 0]


# -- the dp size limit -----------------------------------------------------------------------
def test_dp_refuses_too_large_problems_quickly_and_states_the_limit():
    from budgetopt.baselines import DP_MAX_UPDATES

    # Three grid points per head with gcd 1 and a budget of 10**12 tokens: 10**12 budget units.
    # Tiny arrays, so the check must come before any table is allocated.
    curves = Curves(np.zeros((2, 3)), [0, 1, 10**12])
    with pytest.raises(ProblemTooLargeError, match="dp") as info:
        allocate(curves, 10**12, method="dp")
    msg = str(info.value)
    assert any(s in msg for s in (f"{DP_MAX_UPDATES:.3g}", f"{DP_MAX_UPDATES:,}", str(DP_MAX_UPDATES))), msg
    # The other methods handle the same problem.
    a = allocate(curves, 10**12, method="greedy")
    assert a.used <= 10**12


def test_dp_limit_allows_the_issue_size():
    # The issue requires at least 100 heads x 10 options x 50,000 budget units (5e7 updates;
    # "at least 10**8 cell updates").
    from budgetopt.baselines import DP_MAX_UPDATES

    assert DP_MAX_UPDATES >= 10**8


def test_dp_works_in_units_of_the_grid_gcd():
    # Grid in steps of 2**20 tokens: 2**20 times fewer budget units than tokens.
    utility, _ = random_curves(5, (20,), 10, kind="random")
    curves = Curves(utility, np.arange(10) * 2**20)
    total = curves.capacity // 3
    a = allocate(curves, total, method="dp")
    check_allocation(curves, a, total_budget=total)
    b = allocate(curves, total, method="milp")
    assert a.utility == pytest.approx(b.utility, abs=tolerance(curves))


def test_medium_problem_dp_matches_milp():
    # 100 heads x 10 options, per-head grids with gcd 1, 3,000 budget units.
    rng = np.random.default_rng(7)
    grid = np.cumsum(rng.integers(1, 12, (100, 10)), axis=1)
    utility = np.cumsum(rng.random((100, 10)), axis=1) + rng.normal(0, 0.3, (100, 10))
    curves = Curves(utility, grid)
    total = 3000
    dp = allocate(curves, total, method="dp")
    milp = allocate(curves, total, method="milp")
    greedy = allocate(curves, total)
    for a in (dp, milp, greedy):
        check_allocation(curves, a, total_budget=total)
    tol = 1e-7 * abs(dp.utility)
    assert dp.utility == pytest.approx(milp.utility, abs=tol)
    assert greedy.utility <= dp.utility + tol <= greedy.upper_bound + 2 * tol


# -- sweep agrees with allocate ------------------------------------------------------------
@given(problems(max_points=4))
@settings(max_examples=scaled(25))
def test_property_sweep_rows_equal_allocate(p):
    curves = Curves(p["utility"], p["grid"])
    kw = {"min_budget": p["min_budget"], "max_budget": p["max_budget"]}
    totals = list(range(curves.capacity + 2))
    feasible = []
    for t in totals:
        try:
            feasible.append((t, allocate(curves, t, **kw)))
        except InfeasibleError:
            pass
    if not feasible:
        return
    s = budgetopt.sweep(curves, [t for t, _ in feasible][::-1], **kw)
    for i, (t, a) in enumerate(feasible[::-1]):
        assert s.totals[i] == t
        assert s.budgets[i].tolist() == a.budgets.tolist(), t
        assert s.utility[i] == pytest.approx(a.utility, abs=1e-12)
        assert s.upper_bound[i] == pytest.approx(a.upper_bound, abs=1e-12)
        assert s.threshold[i] == pytest.approx(a.threshold, abs=1e-12)
        assert s.used[i] == a.used


@pytest.mark.parametrize("seed", range(3))
def test_sweep_nested_on_increasing_unit_grids(seed):
    curves = Curves(*random_curves(seed, (3, 4), 17, kind="increasing"))
    totals = np.arange(0, curves.capacity + 3)
    s = budgetopt.sweep(curves, totals)
    assert np.all(np.diff(s.budgets.reshape(len(totals), -1), axis=0) >= 0), "allocations are not nested"


def test_sweep_nesting_needs_monotone_curves():
    # Non-monotone curves on the unit grid: even the optimum is not nested, so nesting cannot
    # be promised for unit grids alone. 1 token: [0, 1] (1 + 4 = 5); 2 tokens: [2, 0] (4 + 3 = 7).
    curves = [[1.0, 0.0, 4.0], [3.0, 4.0, 2.0]]
    assert allocate(curves, 1, method="dp").budgets.tolist() == [0, 1]
    assert allocate(curves, 2, method="dp").budgets.tolist() == [2, 0]
    assert budgetopt.sweep(curves, [1, 2]).budgets.tolist() == [[0, 1], [2, 0]]


# -- the front door never lets a foreign exception through -----------------------------------
_odd_ints = st.one_of(st.integers(-3, 12), st.integers(-(2**70), 2**70), st.sampled_from([2**62, 2**63 - 1, 2**63, 2**64]))
_odd_scalars = st.one_of(
    _odd_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, True, "3", b"3", 1j, np.int64(2), np.uint64(2**63), np.float32(1.5)]),
)
_odd_bounds = st.one_of(
    st.none(),
    st.none(),
    st.integers(0, 3),
    _odd_scalars,
    st.lists(_odd_ints, min_size=0, max_size=3).map(np.asarray),
    st.lists(st.floats(allow_nan=True), min_size=2, max_size=2).map(np.asarray),
)


@pytest.mark.parametrize("method", ["greedy", "dp", "milp"])
@given(total=_odd_scalars, lo=_odd_bounds, hi=_odd_bounds, grid_top=st.sampled_from([3, 2**40, 2**61, 2**62]))
@settings(max_examples=scaled(60))
def test_fuzz_arguments_give_an_allocation_or_own_error(method, total, lo, hi, grid_top):
    curves = Curves([[0.0, 1.0, 1.5], [0.0, 0.5, 2.0]], [0, 1, grid_top])
    try:
        a = allocate(curves, total, method=method, min_budget=lo, max_budget=hi)
    except budgetopt.BudgetoptError:
        return
    check_allocation(curves, a, total_budget=int(total), min_budget=lo, max_budget=hi)


# -- regressions -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL)
def test_regression_capacity_above_int64_is_refused_or_solved(method):
    # Four heads of up to 2**62 tokens: the capacity, 2**64, does not fit in int64. It wrapped
    # to 0: the greedy gave every head 2**62 tokens (used reported 0) and dp returned nothing.
    curves = Curves([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]], [0, 2**62])
    try:
        a = allocate(curves, 2**62, method=method)
    except budgetopt.BudgetoptError:
        return
    check_allocation(curves, a, total_budget=2**62)
    assert a.utility == pytest.approx(4.0) or method == "greedy"


def test_greedy_follows_lukv_when_the_blocked_head_takes_a_small_gain():
    # Found by hypothesis. Unit grid, non-decreasing curves. Head B's hull (0 -> 3 tokens,
    # slope 2/3) comes first and is blocked for totals 1 and 2; head A gains .5 from one
    # token. Total 1: B gains nothing within 1 token, A takes it: .5. Total 2: LU-KV's rule
    # moves B to 2 tokens (+.25), leaving nothing for A: .25, below the optimum .5 and below
    # the answer at total 1. budgetopt keeps LU-KV's rule on per-token grids (its tables
    # must match the published ones, and sweeps stay nested); the certificate bounds the loss.
    curves = [[0.0, 0.5, 0.5, 0.5], [0.0, 0.0, 0.25, 2.0]]
    greedy = [allocate(curves, t) for t in range(5)]
    assert [a.budgets.tolist() for a in greedy[:3]] == [[0, 0], [1, 0], [0, 2]]
    # The published solver (one-token heap eviction over hull-smoothed costs) agrees.
    ref = lukv_reference_prune_ratios(
        np.array([[[0.5, 0.0, 0.0], [0.0, 0.25, 1.75]]]), np.array([[[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]]),
        0, 0, [1 - 2 / 6], floor=0,
    )
    assert np.round((1 - ref[0, 0]) * 3).astype(int).tolist() == [0, 2]
    for t, a in enumerate(greedy):
        best = allocate(curves, t, method="dp").utility
        assert a.utility <= best + 1e-12 <= a.upper_bound + 2e-12
        assert a.gap >= best - a.utility - 1e-12


@pytest.mark.parametrize("method", ["greedy", "dp", "milp"])
def test_regression_total_budget_beyond_int64(method):
    # A budget far above the capacity raised a bare OverflowError.
    try:
        a = allocate([[0.0, 1.0, 2.0]], 10**30, method=method)
    except InvalidInputError as exc:
        assert "`total_budget`" in str(exc)
        return
    assert a.budgets.tolist() == [2]


@pytest.mark.parametrize("method", ALL)
def test_regression_utility_sum_overflow_is_own_error(method):
    # Each utility is finite but their sum is not: milp raised ZeroDivisionError.
    try:
        allocate([[0.0, 1e308], [0.0, 1e308]], 2, method=method)
    except budgetopt.BudgetoptError:
        pass


def test_exact_methods_print_nothing_on_stdout():
    # A library must not write to stdout: HiGHS prints a banner from C once per process.
    import subprocess
    import sys

    code = (
        "import budgetopt\n"
        "for m in ('milp', 'cvxpy', 'dp', 'greedy'):\n"
        "    budgetopt.allocate([[0.0, 1.0, 2.0], [0.0, 0.5, 3.0]], 2, method=m)\n"
    )
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=root)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "", f"allocate printed to stdout: {res.stdout!r}"

