"""What the front door works out once per :class:`Curves` and reuses: that it is right (against
direct loops), that nothing the caller does afterwards can make it stale, and that every
error it guards still reads the same."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest

import budgetopt
from budgetopt import Curves
from budgetopt.errors import InfeasibleError, InvalidInputError, InvalidTypeError
from budgetopt.problem import build_problem, check_total
from budgetopt.result import Allocation
from generators import random_curves

GRIDS = ("unit", "equal", "shared", "per_head")


def reference_problem(utility, grid, mins=None, maxs=None):
    """Each head's usable index range, the floor and ceiling totals and the unit-step flags,
    by a loop over heads (no shared code with build_problem)."""
    utility = np.asarray(utility, np.float64)
    head_shape = utility.shape[:-1]
    n_points = utility.shape[-1]
    n_heads = int(np.prod(head_shape))
    grid = np.arange(n_points) if grid is None else np.asarray(grid)
    rows = [grid] * n_heads if grid.ndim == 1 else list(grid.reshape(n_heads, n_points))
    lo, hi, floor, ceiling, unit = [], [], 0, 0, []
    for h, row in enumerate(rows):
        row = [int(x) for x in row]
        low = 0 if mins is None else int(np.broadcast_to(mins, head_shape).reshape(-1)[h])
        high = None if maxs is None else int(np.broadcast_to(maxs, head_shape).reshape(-1)[h])
        usable = [k for k, x in enumerate(row) if x >= low and (high is None or x <= high)]
        lo.append(usable[0])
        hi.append(usable[-1] + 1)
        floor += row[usable[0]]
        ceiling += row[usable[-1]]
        unit.append(all(b - a == 1 for a, b in zip(row, row[1:])))
    return lo, hi, floor, ceiling, unit, sum(max(int(x) for x in row) for row in rows)


@pytest.mark.parametrize("grid_kind", GRIDS)
@pytest.mark.parametrize("head_shape", [(1,), (4,), (3, 2)])
@pytest.mark.parametrize("n_points", [1, 2, 7])
def test_problem_matches_a_loop_over_heads(grid_kind, head_shape, n_points):
    for seed in range(3):
        utility, grid = random_curves(seed, head_shape, n_points, grid=grid_kind)
        curves = Curves(utility, grid)
        for bounds in [(None, None), (1, None), (None, 6), (0, 100)]:
            try:
                lo, hi, floor, ceiling, unit, capacity = reference_problem(utility, grid, *bounds)
            except IndexError:  # some head has no grid point in range
                with pytest.raises(InfeasibleError, match="has no grid point within"):
                    build_problem(curves, *bounds)
                continue
            for _ in range(2):  # the second build reuses what the first worked out
                p = build_problem(curves, *bounds)
                assert p.lo.tolist() == lo and p.hi.tolist() == hi
                assert (p.floor_total, p.ceiling_total) == (floor, ceiling)
                assert type(p.floor_total) is int and type(p.ceiling_total) is int
                assert p.unit_steps.tolist() == unit and p.unit_steps.dtype == bool
                assert curves.capacity == capacity and type(curves.capacity) is int
                assert p.lo.dtype == p.hi.dtype == np.int64


def test_trusted_curves_work_their_facts_out_on_first_use():
    oracle = np.random.default_rng(0).random((3, 2, 40))
    scores = np.random.default_rng(1).random((3, 2, 40))
    curves = budgetopt.curves_from_scores(oracle, scores, sink=2, window=3)
    assert curves._facts is None  # built by the package from arrays it checked itself
    _, _, floor, ceiling, unit, capacity = reference_problem(curves.utility, curves.grid)
    p = build_problem(curves)
    assert (curves.capacity, p.floor_total, p.ceiling_total) == (capacity, floor, ceiling)
    assert p.unit_steps.tolist() == unit
    assert curves._facts is not None


def test_capacity_beyond_int64_sums_is_exact_and_refused_by_the_solvers():
    big = 2**61
    curves = Curves(np.zeros((4, 2)), [[0, big], [1, big + 1], [2, big], [3, 2**62]])
    assert curves.capacity == 3 * big + 1 + 2**62  # above int64: summed as Python ints
    with pytest.raises(InvalidInputError, match=r"`curves` hold \d+ tokens in all"):
        build_problem(curves)
    shared = Curves(np.zeros((3, 2)), [0, 2**62 - 1])
    assert shared.capacity == 3 * (2**62 - 1)
    with pytest.raises(InvalidInputError, match="the solvers handle totals below 2\\*\\*62"):
        budgetopt.allocate(shared, 5)


@pytest.mark.parametrize("method", ["greedy", "dp", "exact", "milp"])
@pytest.mark.parametrize("grid_kind", ["unit", "per_head"])
def test_writing_to_the_arrays_passed_in_changes_nothing(method, grid_kind):
    utility, grid = random_curves(5, (3, 2), 6, grid=grid_kind, kind="monotone")
    kept_u, kept_g = utility.copy(), grid.copy()
    curves = Curves(utility, grid)
    total = int(grid.reshape(-1, 6)[:, 3].sum()) if grid.ndim > 1 else 3 * 6
    before = budgetopt.allocate(curves, total, method=method)
    assert not np.shares_memory(curves.utility, utility) and not np.shares_memory(curves.grid, grid)
    utility[...] = -utility  # the caller reuses its buffers
    grid[...] = grid[..., ::-1] * 1000
    after = budgetopt.allocate(curves, total, method=method)
    fresh = budgetopt.allocate(Curves(kept_u, kept_g), total, method=method)
    assert after == before == fresh
    assert curves.capacity == Curves(kept_u, kept_g).capacity
    assert np.array_equal(curves.utility, kept_u) and np.array_equal(curves.grid, kept_g)


def test_curves_arrays_and_facts_are_read_only():
    curves = Curves(*random_curves(2, (3,), 5, grid="per_head"))
    for arr in (curves.utility, curves.grid, curves._grid_facts().unit):
        with pytest.raises(ValueError, match="read-only"):
            arr[...] = 0
    with pytest.raises(AttributeError):
        curves._utility2 = curves.utility  # no instance dict to hang state on


def test_a_problem_mutated_by_its_user_leaves_the_next_build_intact():
    curves = Curves(*random_curves(3, (4,), 5, grid="per_head"))
    first = build_problem(curves)
    unit = first.unit_steps.tolist()
    first.unit_steps[:] = ~first.unit_steps  # each problem owns its per-head flags
    first.lo[:] = 3
    first.hi[:] = 4
    second = build_problem(curves)
    assert second.unit_steps.tolist() == unit
    assert second.lo.tolist() == [0] * 4 and second.hi.tolist() == [5] * 4
    shared = build_problem(Curves(np.zeros((4, 3))))  # one grid row: the flags are a shared view
    assert shared.unit_steps.tolist() == [True] * 4
    with pytest.raises(ValueError, match="read-only"):
        shared.unit_steps[0] = False
    with pytest.raises(ValueError):
        shared.unit_steps.setflags(write=True)


def test_lists_are_converted_once_and_owned():
    rows = [[0.0, 0.5, 0.75], [0.0, 0.25, 1.0]]
    grid = [[0, 1, 2], [0, 2, 4]]
    curves = Curves(rows, grid)
    rows[0][1] = 99.0
    grid[1][2] = 1
    assert curves.utility.tolist() == [[0.0, 0.5, 0.75], [0.0, 0.25, 1.0]]
    assert curves.grid.tolist() == [[0, 1, 2], [0, 2, 4]]
    assert curves.utility.flags.owndata and not curves.utility.flags.writeable
    assert curves.capacity == 6


@pytest.mark.parametrize("clone", [copy.copy, copy.deepcopy, lambda c: pickle.loads(pickle.dumps(c))])
def test_copies_and_pickles_are_checked_read_only_curves(clone):
    curves = Curves(*random_curves(4, (2, 3), 5, grid="per_head"), meta={"scorer": "snapkv"})
    twin = clone(curves)
    assert type(twin) is Curves and twin == curves and twin.meta == {"scorer": "snapkv"}
    assert not twin.utility.flags.writeable and not twin.grid.flags.writeable
    assert twin.capacity == curves.capacity
    assert budgetopt.allocate(twin, 20) == budgetopt.allocate(curves, 20)


# -- the checks whose implementation changed still give the same errors --------------------
@pytest.mark.parametrize(
    "utility, message",
    [
        ([[0.0, np.nan], [1.0, 2.0]], r"`utility` must be finite; found NaN at head 0, point 1"),
        ([[0.0, 1.0], [np.inf, 2.0]], r"`utility` must be finite; found inf at head 1, point 0"),
        ([[[0.0, 1.0]], [[2.0, -np.inf]]], r"`utility` must be finite; found inf at head \(1, 0\), point 1"),
        ([[np.inf, np.nan]], r"found inf at head 0, point 0"),  # the first bad entry is named
        ([[1e308, 0.0], [0.0, 1e308]], "`utility` values are too large"),
        ([[-1e308], [-1e308], [1.0]], "`utility` values are too large"),
    ],
)
def test_utility_errors(utility, message):
    with pytest.raises(InvalidInputError, match=message):
        Curves(utility)


@pytest.mark.parametrize(
    "rows",
    [
        [[6e307], [6e307]],  # heads * largest above half the float64 maximum, the sum finite
        [[1e308, -1e308], [1.0, 0.0]],
        [[8e307], [-8e307], [1e-300]],
        [[1.7e308]],
        [[4e307, 1.0]] * 4,  # exactly at the shortcut's limit
    ],
)
def test_large_but_summable_utility_is_accepted(rows):
    curves = Curves(rows)
    reference = sum(max(abs(x) for x in row) for row in rows)
    assert np.isfinite(reference)
    assert budgetopt.allocate(curves, 0).utility == float(np.sum(np.asarray(rows)[:, 0]))


def test_too_large_utility_agrees_with_the_rule_on_random_magnitudes():
    rng = np.random.default_rng(7)
    for _ in range(200):
        heads = int(rng.integers(1, 6))
        u = rng.uniform(-1, 1, (heads, 3)) * 10.0 ** rng.uniform(306, 308.25, (heads, 1))
        with np.errstate(over="ignore"):
            overflows = not np.isfinite(np.abs(u).max(axis=1).sum())
        if overflows:
            with pytest.raises(InvalidInputError, match="`utility` values are too large"):
                Curves(u)
        else:
            Curves(u)


@pytest.mark.parametrize(
    "grid, message",
    [
        ([[0, 1, 2], [-1, 0, 1]], r"`grid` must be non-negative; found -1 at head 1, point 0"),
        ([0, -2, 1], r"`grid` must be non-negative; found -2 at head 0, point 1"),
        ([[0, 2, 1], [0, 1, 2]], r"`grid` must be non-decreasing along the last axis; it decreases at head 0, point 2"),
        ([[0, 1, 2], [3, 3, 2]], r"it decreases at head 1, point 2"),
        ([[5, 1, -1], [0, 1, 2]], r"`grid` must be non-negative; found -1 at head 0, point 2"),  # both: sign first
        (np.array([[2**62, -(2**63)], [0, 1]], np.int64), "`grid` must be non-negative"),  # no overflow
        (np.array([[-(2**63), 2**63 - 1], [0, 1]], np.int64), "`grid` must be non-negative"),
    ],
)
def test_grid_errors(grid, message):
    with pytest.raises(InvalidInputError, match=message):
        Curves(np.zeros((2, 3) if np.shape(grid) != (2, 2) else (2, 2)), grid)


@pytest.mark.parametrize("value", [0, 7, 2**62 - 1, np.int64(5), np.uint8(3), 4.0, np.float32(2.0), np.array(6)])
def test_check_total_accepts_whole_numbers(value):
    got = check_total(value)
    assert got == int(value) and type(got) is int


@pytest.mark.parametrize(
    "value, error, message",
    [
        (-1, InvalidInputError, r"`total_budget` must be >= 0; got -1"),
        (2**62, InvalidInputError, "`total_budget` is too large"),
        (2**80, InvalidInputError, "`total_budget` is too large"),
        (True, InvalidTypeError, "got a bool"),
        (2.5, InvalidInputError, "must be a whole number"),
        ("3", InvalidTypeError, "got str"),
    ],
)
def test_check_total_errors(value, error, message):
    with pytest.raises(error, match=message):
        budgetopt.allocate([[0.0, 1.0]], value)


def test_head_index_agrees_with_unravel_index():
    for shape in [(5,), (3, 4), (2, 3, 4), (1, 1), (7, 1, 2)]:
        p = build_problem(np.zeros(shape + (3,)))
        for h in range(p.n_heads):
            got = p.head_index(h)
            assert got == tuple(int(i) for i in np.unravel_index(h, shape))
            assert all(type(i) is int for i in got)
        with pytest.raises(IndexError):
            p.head_index(p.n_heads)


@pytest.mark.parametrize("grid_kind", ["unit", "per_head"])
def test_pick_agrees_with_a_loop(grid_kind):
    utility, grid = random_curves(9, (3, 2), 6, grid=grid_kind)
    p = build_problem(Curves(utility, grid))
    idx = np.random.default_rng(0).integers(0, 6, 6)
    budgets, value = p.pick(idx)
    rows = grid.reshape(6, 6) if grid.ndim > 1 else np.tile(grid, (6, 1))
    assert budgets.shape == (3, 2) and budgets.dtype == np.int64
    assert budgets.reshape(-1).tolist() == [int(rows[h, idx[h]]) for h in range(6)]
    assert value == float(np.array([utility.reshape(6, 6)[h, idx[h]] for h in range(6)]).sum())


def test_from_solution_equals_the_dataclass_constructor():
    budgets = np.array([[3, 1], [0, 2]])
    a = Allocation.from_solution(budgets, 1.5, total_budget=np.int64(7), upper_bound=1.25, threshold=np.float32(0.5),
                                 method="greedy", status="feasible", seconds=0.1, stats={"x": 1})
    b = Allocation(budgets=budgets, used=6, total_budget=7, utility=1.5, upper_bound=1.5, gap=0.0, threshold=0.5,
                   method="greedy", status="feasible", seconds=0.1, stats={"x": 1})
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    assert dataclasses.asdict(a).keys() == dataclasses.asdict(b).keys()
    for name in ("used", "total_budget"):
        assert type(getattr(a, name)) is int
    for name in ("utility", "upper_bound", "gap", "threshold", "seconds"):
        assert type(getattr(a, name)) is float
    assert a.budgets.dtype == np.int64 and not a.budgets.flags.writeable
    assert not np.shares_memory(a.budgets, budgets)
    budgets[0, 0] = 100  # the caller's array is not the result's
    assert a.budgets[0, 0] == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.used = 3
    assert dataclasses.replace(a, method="dp").method == "dp"
