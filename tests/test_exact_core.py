"""method="exact": agreement with dp, milp and brute force; status, bound and time limit.

Ground truth: tests/reference_exact.py (enumeration) on small problems, method="dp" (a plain
dynamic programme over budget units) on larger ones. Every result passes
budgetopt._invariants.check_allocation.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings

import budgetopt
from budgetopt import Curves, InvalidInputError, InvalidTypeError, ProblemTooLargeError, allocate, exact
from budgetopt._invariants import check_allocation, tolerance
from generators import problems, random_curves, scaled
from reference_exact import brute_force
from test_allocate import CASES

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from instances_exact import PISINGER_KINDS, attention, non_monotone, pisinger  # noqa: E402


def _exact(curves, total, **kw):
    a = allocate(curves, total, method="exact", **kw)
    check_allocation(
        curves, a, total_budget=total, min_budget=kw.get("min_budget"), max_budget=kw.get("max_budget")
    )
    assert a.method == "exact"
    return a


def _assert_proven(a, optimum, curves):
    tol = tolerance(curves)
    assert a.status == "optimal"
    assert a.utility == pytest.approx(optimum, rel=0, abs=tol), (a.utility, optimum, a.stats)
    assert a.gap == 0.0 and a.upper_bound == a.utility
    assert a.stats["tolerance"] <= tol


# -- the agreement table of test_allocate, against dp and milp -------------------------------
@pytest.mark.parametrize("case", CASES, ids=[f"seed{c[0]}-{c[3]}-{c[4]}" for c in CASES])
def test_agreement_table_with_dp_and_milp(case):
    seed, head_shape, k, kind, grid, frac, lo, hi = case
    curves = Curves(*random_curves(seed, head_shape, k, kind=kind, grid=grid))
    total = int(frac * curves.capacity)
    dp = allocate(curves, total, method="dp", min_budget=lo, max_budget=hi)
    milp = allocate(curves, total, method="milp", min_budget=lo, max_budget=hi)
    truth = brute_force(curves, total, lo, hi)[0]
    a = _exact(curves, total, min_budget=lo, max_budget=hi)
    for other in (dp.utility, milp.utility, truth):
        _assert_proven(a, other, curves)


@given(problems())
@settings(max_examples=scaled(150))
def test_property_exact_against_brute_force(p):
    curves = Curves(p["utility"], p["grid"])
    truth = brute_force(curves, p["total_budget"], p["min_budget"], p["max_budget"])
    if truth is None:
        with pytest.raises(InvalidInputError):
            allocate(curves, p["total_budget"], method="exact", min_budget=p["min_budget"], max_budget=p["max_budget"])
        return
    a = _exact(curves, p["total_budget"], min_budget=p["min_budget"], max_budget=p["max_budget"])
    _assert_proven(a, truth[0], curves)


@given(problems(max_heads=8, max_points=8, per_head_grid=True))
@settings(max_examples=scaled(60))
def test_property_exact_against_dp_per_head_grids(p):
    curves = Curves(p["utility"], p["grid"])
    try:
        dp = allocate(curves, p["total_budget"], method="dp", min_budget=p["min_budget"], max_budget=p["max_budget"])
    except InvalidInputError:
        return  # infeasible: the error is checked against brute force above
    a = _exact(curves, p["total_budget"], min_budget=p["min_budget"], max_budget=p["max_budget"])
    _assert_proven(a, dp.utility, curves)


@pytest.mark.parametrize("seed", range(12))
def test_seeded_mid_size_against_dp(seed):
    # 12-30 heads, up to 40 points, every curve kind and grid kind, floors and caps.
    rng = np.random.default_rng(seed)
    kind = ["random", "monotone", "concave", "increasing"][seed % 4]
    grid = ["unit", "shared", "per_head"][seed % 3]
    H, K = int(rng.integers(12, 31)), int(rng.integers(2, 41))
    curves = Curves(*random_curves(100 + seed, (H,), K, kind=kind, grid=grid, max_step=5))
    lo = int(rng.integers(0, 4)) if seed % 2 else None
    hi = rng.integers(20, 200, H) if seed % 3 == 1 else None
    total = int(rng.uniform(0.05, 0.9) * curves.capacity)
    dp = allocate(curves, total, method="dp", min_budget=lo, max_budget=hi)
    a = _exact(curves, total, min_budget=lo, max_budget=hi)
    _assert_proven(a, dp.utility, curves)


@pytest.mark.parametrize("kind", PISINGER_KINDS)
def test_pisinger_classes_against_dp(kind):
    curves, total = pisinger(kind, 30, 10, seed=1, data_range=100)
    dp = allocate(curves, total, method="dp")
    a = _exact(curves, total)
    _assert_proven(a, dp.utility, curves)


@pytest.mark.parametrize("make", [attention, non_monotone], ids=["attention", "non-monotone"])
def test_per_token_curves_against_dp(make):
    curves, total = make(16, 65, seed=3)
    dp = allocate(curves, total, method="dp")
    a = _exact(curves, total)
    _assert_proven(a, dp.utility, curves)


@pytest.mark.parametrize(
    ("utility", "grid", "total", "budgets"),
    [
        ([[0.0, 1.0, 3.0]], None, 2, [2]),  # one head
        ([[5.0], [7.0]], None, 0, [0, 0]),  # one point per head
        ([[0.0, 1.0], [0.0, 2.0]], None, 0, [0, 0]),  # zero budget
        ([[0.0, 1.0], [0.0, 2.0]], None, 2, [1, 1]),  # full budget
        ([[0.0, 1.0], [0.0, 2.0]], None, 10**6, [1, 1]),  # above capacity
        ([[0.0, -1.0], [0.0, -2.0]], None, 2, [0, 0]),  # decreasing curves keep nothing
        ([[0.0, 0.0, 1.0], [0.0, 0.4, 0.4]], None, 1, [0, 1]),  # convex head: greedy's LP gap
        ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], None, 3, None),  # all ties
    ],
    ids=["one-head", "one-point", "zero-budget", "full", "above-capacity", "decreasing", "convex", "ties"],
)
def test_degenerate(utility, grid, total, budgets):
    curves = Curves(utility, grid)
    a = _exact(curves, total)
    _assert_proven(a, brute_force(curves, total)[0], curves)
    if budgets is not None:
        assert a.budgets.tolist() == budgets


def test_greedy_is_unchanged_and_default():
    curves, total = non_monotone(40, 50, seed=5)
    g1 = allocate(curves, total)
    e = allocate(curves, total, method="exact")
    g2 = allocate(curves, total, method="greedy")
    assert g1.method == "greedy" and np.array_equal(g1.budgets, g2.budgets) and g1.utility == g2.utility
    assert e.stats["greedy_utility"] == g1.utility
    assert e.utility >= g1.utility and e.upper_bound <= g1.upper_bound + tolerance(curves)


def test_exact_improves_on_greedy_where_greedy_is_not_optimal():
    curves, total = pisinger("strongly", 40, 10, seed=2, data_range=100)
    g = allocate(curves, total)
    dp = allocate(curves, total, method="dp")
    assert g.utility < dp.utility - 0.5, "the instance should have a greedy gap"
    a = _exact(curves, total)
    _assert_proven(a, dp.utility, curves)
    assert a.stats["improved_on_greedy"]


def test_stats_report_fixing_and_core():
    curves, total = attention(32, 129, seed=4)
    a = _exact(curves, total)
    s = a.stats
    assert s["fixed_heads"] + s["core_heads"] == 32
    assert s["core_heads"] == 0 or s["core_options"] >= 2 * s["core_heads"]
    assert s["greedy_utility"] <= a.utility <= s["lp_bound"] + tolerance(curves)
    assert s["lagrangian_bound"] >= a.utility - tolerance(curves)


# -- integral utilities: the value step, local search, the cardinality bound -----------------
@given(problems(max_heads=5, max_points=6))
@settings(max_examples=scaled(120))
def test_property_integral_utilities_against_brute_force(p):
    # Small integers (many ties), times 3, plus a non-integer offset per head: allocations
    # differ in value by multiples of 3, which the search may use to prune.
    u = np.asarray(p["utility"], np.float64)
    offset = np.linspace(0.1, 0.7, u.shape[0]).reshape((-1,) + (1,) * (u.ndim - 1)) if u.ndim > 1 else 0.25
    curves = Curves(3.0 * np.round(4.0 * u) + offset, p["grid"])
    truth = brute_force(curves, p["total_budget"], p["min_budget"], p["max_budget"])
    if truth is None:
        return
    a = _exact(curves, p["total_budget"], min_budget=p["min_budget"], max_budget=p["max_budget"])
    _assert_proven(a, truth[0], curves)


@pytest.mark.parametrize(
    ("utility", "step"),
    [
        ([[0.0, 3.0, 9.0], [1.0, 7.0, 13.0]], 3.0),  # gcd of the differences within heads
        ([[0.5, 2.5, 4.5], [0.25, 4.25, 6.25]], 2.0),  # non-integer offsets, integer steps
        ([[0.0, 1.0, 2.5], [0.0, 1.0, 2.0]], 0.0),  # one non-integer difference
        ([[0.0, 1e-3, 2e-3]], 0.0),  # fractions
        ([[0.0, 2.0**60, 2.0**61]], 0.0),  # integers too large to sum exactly
        ([[1.0, 1.0, 1.0], [4.0, 4.0, 4.0]], 0.0),  # no difference at all
    ],
    ids=["gcd", "offsets", "one-fraction", "fractions", "too-large", "flat"],
)
def test_value_step(utility, step):
    curves = Curves(utility)
    a = _exact(curves, 2)
    assert a.stats["value_step"] == step and a.stats["integral"] == (step > 0)
    _assert_proven(a, brute_force(curves, 2)[0], curves)


def test_value_step_reads_only_usable_points():
    # The 2.5 lies above the cap: the usable differences are all multiples of 2.
    curves = Curves([[0.0, 2.0, 4.0, 6.5], [0.0, 2.0, 6.0, 8.0]])
    a = _exact(curves, 3, max_budget=2)
    assert a.stats["value_step"] == 2.0
    _assert_proven(a, brute_force(curves, 3, None, 2)[0], curves)
    assert _exact(curves, 3).stats["value_step"] == 0.0


def test_integral_bound_proves_at_once():
    # One token: the LP takes half of head 0's 2-token step (bound 1.5); head 1's first
    # token is worth 1 and no allocation can be worth 2: proven without a search.
    curves = Curves([[0.0, 3.0, 3.0], [0.0, 1.0, 2.0]], [[0, 2, 3], [0, 1, 2]])
    a = _exact(curves, 1)
    assert a.stats["lp_bound"] == 1.5 and a.utility == 1.0
    _assert_proven(a, brute_force(curves, 1)[0], curves)
    assert a.stats["layers_done"] == 0 and a.stats["proved_by"] in ("lagrangian_bound", "cardinality_bound")


def test_non_integral_twin_needs_the_search():
    # The same problem with every utility shifted by a different fraction per point: no
    # value step, and the answer still agrees with dp.
    rng = np.random.default_rng(7)
    curves, total = pisinger("subset_sum", 40, 10, seed=3, data_range=1000)
    twin = Curves(curves.utility + rng.uniform(0, 0.01, curves.utility.shape), curves.grid)
    a = _exact(twin, total)
    assert a.stats["value_step"] == 0.0 and not a.stats["integral"]
    _assert_proven(a, allocate(twin, total, method="dp").utility, twin)


@pytest.mark.parametrize("kind", PISINGER_KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_pisinger_classes_r1000_against_dp(kind, seed):
    curves, total = pisinger(kind, 40, 10, seed=seed, data_range=1000)
    dp = allocate(curves, total, method="dp")
    a = _exact(curves, total)
    _assert_proven(a, dp.utility, curves)
    assert a.stats["integral"] and a.stats["value_step"] >= 1


def test_local_search_reaches_the_bound():
    # Subset-sum classes: the greedy leaves one token of value unused; moving two heads at
    # once fills it, and that meets the floor of the LP bound: no search needed.
    curves, total = pisinger("subset_sum", 100, 10, seed=1, data_range=10_000)
    a = _exact(curves, total)
    s = a.stats
    assert s["greedy_utility"] < a.utility == np.floor(s["lp_bound"] + s["tolerance"])
    assert a.status == "optimal" and s["layers_done"] == 0 and s["improved_on_greedy"]


def test_strongly_correlated_proven_by_the_cardinality_bound():
    # Each item is worth its weight plus 10 per item: the LP bound overshoots by up to 10,
    # the rank bound does not.
    curves, total = pisinger("strongly", 60, 10, seed=0, data_range=1000)
    dp = allocate(curves, total, method="dp")
    a = _exact(curves, total)
    _assert_proven(a, dp.utility, curves)
    s = a.stats
    assert s["lp_bound"] - dp.utility > 1
    assert s["cardinality_bound"] >= dp.utility - tolerance(curves)
    assert s["cardinality_bound"] < dp.utility + 1
    assert s["proved_by"] == "cardinality_bound" and s["layers_done"] == 0


@given(problems(max_heads=5, max_points=6))
@settings(max_examples=scaled(80))
def test_property_rank_bounded_states_against_brute_force(p):
    # The core DP with the cardinality bound on its states from the first layer on.
    curves = Curves(p["utility"], p["grid"])
    truth = brute_force(curves, p["total_budget"], p["min_budget"], p["max_budget"])
    if truth is None:
        return
    saved = exact._RANK_AFTER_STATES
    exact._RANK_AFTER_STATES = -1
    try:
        a = _exact(curves, p["total_budget"], min_budget=p["min_budget"], max_budget=p["max_budget"])
    finally:
        exact._RANK_AFTER_STATES = saved
    _assert_proven(a, truth[0], curves)


@pytest.mark.parametrize("seed", range(6))
def test_rank_bounded_states_against_dp(seed, monkeypatch):
    monkeypatch.setattr(exact, "_RANK_AFTER_STATES", -1)
    if seed < 2:  # strongly correlated with fractions: the case the rank bound is for
        curves, total = _noisy_strongly(30 + 10 * seed, 10)
    else:
        rng = np.random.default_rng(seed)
        kind = ["random", "monotone", "concave", "increasing"][seed % 4]
        curves = Curves(*random_curves(300 + seed, (int(rng.integers(12, 25)),), 30, kind=kind, grid="per_head"))
        total = int(rng.uniform(0.1, 0.8) * curves.capacity)
    a = _exact(curves, total)
    _assert_proven(a, allocate(curves, total, method="dp").utility, curves)
    if seed < 2:
        assert a.stats["cardinality_bound"] >= a.utility - tolerance(curves)


class _Ticks:
    """Stands in for the search's Stopwatch: each reading is 1 ms after the one before, so
    where a time limit stops the search depends on the code path only, never on the
    machine's speed or load."""

    def __init__(self):
        self.readings = 0

    def seconds(self):
        self.readings += 1
        return self.readings * 1e-3


@pytest.fixture
def ticking_clock(monkeypatch):
    monkeypatch.setattr(exact, "Stopwatch", _Ticks)


def test_rank_bounded_states_at_the_time_limit(monkeypatch, ticking_clock):
    monkeypatch.setattr(exact, "_RANK_AFTER_STATES", -1)
    curves, total = _noisy_strongly(120, 20)
    a = _exact(curves, total, time_limit=0.01)  # ten clock readings
    dp = allocate(curves, total, method="dp")
    tol = tolerance(curves)
    assert a.status == "time_limit"
    assert a.utility <= dp.utility + tol and a.upper_bound >= dp.utility - tol
    assert a.upper_bound <= a.stats["cardinality_bound"] + tol < a.stats["lagrangian_bound"] - 1


@pytest.mark.parametrize("seed", range(40))
def test_cardinality_bound_kernel_bounds_the_optimum(seed):
    from budgetopt import _kernels_exact as K

    rng = np.random.default_rng(seed)
    H = int(rng.integers(1, 5))
    sizes = rng.integers(1, 5, H)
    costs, values = [], []
    for n in sizes:  # per head: costs ascending, values strictly increasing
        costs.append(np.sort(rng.choice(np.arange(12), n, replace=False)))
        values.append(np.cumsum(rng.integers(1, 6, n)).astype(np.float64) + rng.integers(-3, 3))
    cap = int(rng.integers(0, 20))
    c, v = np.concatenate(costs).astype(np.int64), np.concatenate(values)
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    best = -np.inf
    import itertools

    for pick in itertools.product(*[range(n) for n in sizes]):
        js = offsets[:-1] + np.array(pick)
        if c[js].sum() <= cap:
            best = max(best, v[js].sum())
    bound, mu, k = K.cardinality_bound(c, v, offsets, cap, 40, -np.inf)
    if best == -np.inf:
        assert bound == np.inf
    else:
        assert bound >= best - 1e-9 and mu >= 0 and k >= 0


def _lp_with_ranks(c, v, offsets, cap, mu):
    """Independent reference: ``max sum (v - mu r) x`` over the LP relaxation (HiGHS), ``r``
    the option's rank within its head."""
    from scipy.optimize import linprog

    rank = np.concatenate([np.arange(offsets[h + 1] - offsets[h]) for h in range(len(offsets) - 1)])
    heads = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    one_each = (heads[None, :] == np.arange(len(offsets) - 1)[:, None]).astype(float)
    res = linprog(-(v - mu * rank), A_ub=c[None, :].astype(float), b_ub=[cap], A_eq=one_each,
                  b_eq=np.ones(len(offsets) - 1), bounds=(0, 1), method="highs")
    return -res.fun if res.status == 0 else -np.inf


@pytest.mark.parametrize("seed", range(24))
def test_cardinality_bound_kernel_is_the_minimum_over_mu(seed):
    # The bound returned is mu * K + LP(v - mu * rank) at the mu returned, and no sampled mu
    # does better (the search's early stop at mu = 0 included: seeds where the LP optimum's
    # rank sum is within K return mu = 0).
    from budgetopt import _kernels_exact as K

    rng = np.random.default_rng(100 + seed)
    H = int(rng.integers(2, 6))
    sizes = rng.integers(2, 6, H)
    costs = [np.sort(rng.choice(np.arange(1, 30), n, replace=False)) for n in sizes]
    values = [np.cumsum(rng.integers(1, 12, n)).astype(np.float64) for n in sizes]
    c, v = np.concatenate(costs).astype(np.int64), np.concatenate(values)
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    cap = int(rng.integers(int(sum(x[0] for x in costs)), int(sum(x[-1] for x in costs)) + 1))
    bound, mu, k = K.cardinality_bound(c, v, offsets, cap, 60, -np.inf)
    assert bound == pytest.approx(mu * k + _lp_with_ranks(c, v, offsets, cap, mu), abs=1e-7)
    mu_hi = float(np.max(np.diff(v)))
    for m in np.linspace(0.0, mu_hi, 25):
        assert bound <= m * k + _lp_with_ranks(c, v, offsets, cap, m) + 1e-6


def test_heuristic_aims_at_the_bound_first(monkeypatch):
    # Weakly correlated, integral: the heuristic core's search first keeps only states that
    # can reach the best value the bound allows. Seed 0: the optimum meets it (found there,
    # proven at once); seed 1: it does not (the aimed search finds nothing, the plain one
    # and the main search go on). Both agree with milp.
    aims = []
    plain = exact._Search._core_dp

    def spy(self, core, fixed_opt, **kw):
        aims.append((kw.get("aim", -np.inf), kw["record"]))
        return plain(self, core, fixed_opt, **kw)

    monkeypatch.setattr(exact._Search, "_core_dp", spy)
    for seed, meets in ((0, True), (1, False)):
        curves, total = pisinger("weakly", 100, 10, seed=seed, data_range=10_000)
        aims.clear()
        a = _exact(curves, total)
        _assert_proven(a, allocate(curves, total, method="milp").utility, curves)
        first_aim, record = aims[0]
        assert not record and first_aim == np.floor(a.stats["lagrangian_bound"] + a.stats["tolerance"])
        if meets:
            assert a.utility == first_aim and len(aims) == 1 and a.stats["layers_done"] == 0
        else:
            assert a.utility < first_aim and [x[0] for x in aims[1:]] == [-np.inf] * (len(aims) - 1)


def test_value_step_checks_integrality_after_the_step_is_one():
    # The step is 1 after the first head; the second head's 0.5 must still end it.
    curves = Curves([[0.0, 1.0, 3.0, 4.0], [0.0, 2.0, 4.0, 4.5]])
    a = _exact(curves, 4)
    assert a.stats["value_step"] == 0.0
    _assert_proven(a, brute_force(curves, 4)[0], curves)


# -- time limit ------------------------------------------------------------------------------
def _noisy_strongly(n_classes, n_items):
    """Pisinger's strongly correlated classes with up to 1e-3 added to each item's profit
    (still concave per class): hard for the core DP, and not integral."""
    curves, total = pisinger("strongly", n_classes, n_items, seed=0, data_range=1000)
    noise = np.random.default_rng(0).uniform(0, 1e-3, curves.utility.shape)
    return Curves(np.cumsum(np.diff(curves.utility, prepend=0, axis=1) + noise, axis=1), curves.grid), total


def test_time_limit_stops_early_with_a_valid_bound(ticking_clock):
    # Strongly correlated classes with a little noise on the profits: no option can be
    # fixed, the utilities are not integers (no integral step, no cardinality bound), the
    # core DP is long.
    curves, total = _noisy_strongly(120, 20)
    a = _exact(curves, total, time_limit=5e-3)
    assert a.status == "time_limit"
    assert a.stats["layers_done"] < a.stats["core_heads"]
    dp = allocate(curves, total, method="dp")
    tol = tolerance(curves)
    assert a.utility <= dp.utility + tol
    assert a.upper_bound >= dp.utility - tol, "the bound at the time limit must still bound the optimum"
    assert a.upper_bound <= a.stats["lagrangian_bound"] + tol
    assert a.gap == pytest.approx(a.upper_bound - a.utility)


def test_time_limit_integral_bound_is_a_whole_step_above(ticking_clock):
    # Integral utilities: the bound at the time limit is rounded down to a value an
    # allocation can have (the incumbent's plus whole steps), and still bounds the optimum.
    curves, total = _noisy_strongly(40, 10)
    curves = Curves(np.round(100 * curves.utility), curves.grid)
    a = _exact(curves, total, time_limit=5e-3)
    assert a.status == "time_limit" and a.stats["value_step"] == 1.0
    assert a.upper_bound - a.utility == np.floor(a.upper_bound - a.utility) > 0
    dp = allocate(curves, total, method="dp")
    assert a.utility <= dp.utility <= a.upper_bound
    assert a.upper_bound <= min(a.stats["lagrangian_bound"], a.stats["cardinality_bound"]) + a.stats["tolerance"]
    done = _exact(curves, total, time_limit=60)
    _assert_proven(done, dp.utility, curves)


def test_time_limit_generous_gives_optimal():
    curves, total = pisinger("weakly", 50, 10, seed=0, data_range=100)
    a = _exact(curves, total, time_limit=60)
    _assert_proven(a, allocate(curves, total, method="dp").utility, curves)


def test_milp_accepts_time_limit():
    curves = Curves(*random_curves(0, (4,), 5, kind="random"))
    a = allocate(curves, 6, method="milp", time_limit=30)
    check_allocation(curves, a, total_budget=6)
    assert a.status == "optimal"


@pytest.mark.parametrize("method", ["greedy", "dp", "cvxpy"])
def test_time_limit_refused_by_other_methods(method):
    with pytest.raises(InvalidInputError, match=r"`time_limit` applies only to method 'exact' or 'milp'"):
        allocate([[0.0, 1.0]], 1, method=method, time_limit=1.0)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, InvalidInputError, "finite number of seconds > 0"),
        (-1.0, InvalidInputError, "finite number of seconds > 0"),
        (float("nan"), InvalidInputError, "finite number of seconds > 0"),
        (float("inf"), InvalidInputError, "finite number of seconds > 0"),
        (True, InvalidTypeError, "number of seconds or None"),
        ("1", InvalidTypeError, "number of seconds or None"),
    ],
)
def test_time_limit_errors(value, error, match):
    with pytest.raises(error, match=match):
        allocate([[0.0, 1.0]], 1, method="exact", time_limit=value)


# -- memory limits ----------------------------------------------------------------------------
def test_refuses_too_many_options(monkeypatch):
    monkeypatch.setattr(exact, "EXACT_MAX_OPTIONS", 10)
    with pytest.raises(ProblemTooLargeError, match=r'method="exact" accepts at most 10 usable grid points'):
        allocate(np.zeros((3, 4)), 2, method="exact")


def test_refuses_too_many_states(monkeypatch):
    monkeypatch.setattr(exact, "EXACT_MAX_STATES", 50)
    curves, total = _noisy_strongly(60, 10)
    with pytest.raises(ProblemTooLargeError, match=r"more than 50 DP states"):
        allocate(curves, total, method="exact")


def test_exact_listed_in_methods():
    assert "exact" in budgetopt.METHODS


# -- command line ------------------------------------------------------------------------------
def test_cli_solve_exact_with_time_limit(capsys):
    from budgetopt.cli import main

    code = main(["solve", "--example", "--budget", "0.2", "--method", "exact", "--time-limit", "30"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    import json

    payload = json.loads(out)
    assert payload["method"] == "exact" and payload["status"] == "optimal" and payload["gap"] == 0.0
    curves = budgetopt.load_curves(budgetopt.cli.example_path())
    dp = allocate(curves, payload["total_budget"], method="dp")
    assert payload["utility"] == pytest.approx(dp.utility, abs=tolerance(curves))


def test_cli_time_limit_refused_for_greedy(capsys):
    from budgetopt.cli import main

    code = main(["solve", "--example", "--budget", "0.2", "--time-limit", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "`time_limit` applies only to method 'exact' or 'milp'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_cli_time_limit_must_be_positive_seconds(capsys, value):
    from budgetopt.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["solve", "--example", "--budget", "0.2", "--method", "exact", "--time-limit", value])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    finite = " (finite)" if value == "nan" else ""
    assert err.strip().splitlines()[-1].endswith(
        f"argument --time-limit: must be a number of seconds > 0{finite}; got {value!r}")
    assert "Traceback" not in err


# -- the compiled DP layer loop: many layers per call against one layer per call -------------
_LAYER_WORK = exact._LAYER_WORK
_DP_LAYERS = exact.K.dp_layers


def _same_answers(curves, total, monkeypatch, **limits):
    """Solve with ``dp_layers`` running as many layers per call as ``_LAYER_WORK`` allows and
    with one layer per call (``_LAYER_WORK = 0``: the solver resumes it after every layer, as
    at a look at the clock); the two must agree exactly: budgets, utility, bound and every
    statistic. Returns the answer (or the refusal's message), how many calls each made and
    how many of them had the cardinality bound on."""
    for name, value in limits.items():
        monkeypatch.setattr(exact, name, value)
    answers = []
    calls = []
    ranked = [0]

    def counted(core, ranks, layers, search):
        calls[-1] += 1
        ranked[0] += ranks.mu > 0
        return _DP_LAYERS(core, ranks, layers, search)

    monkeypatch.setattr(exact.K, "dp_layers", counted)
    for work in (limits.get("_LAYER_WORK", _LAYER_WORK), 0):
        monkeypatch.setattr(exact, "_LAYER_WORK", work)
        calls.append(0)
        try:
            answers.append(_exact(curves, total))
        except ProblemTooLargeError as exc:
            answers.append(str(exc))
    many, one = answers
    if isinstance(one, str):
        assert many == one
        return one, calls, ranked[0]
    assert np.array_equal(many.budgets, one.budgets)
    assert (many.utility, many.upper_bound) == (one.utility, one.upper_bound)
    assert many.stats == one.stats
    return one, calls, ranked[0]


def _dp_instances():
    from instances_exact import strongly_fractional

    for kind in PISINGER_KINDS:
        for seed in range(3):
            yield f"{kind}-{seed}", pisinger(kind, 60, 10, seed, data_range=1000)
    yield "fractional-0", strongly_fractional(40, 10, 0)
    yield "fractional-1", strongly_fractional(30, 20, 1)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        kind = ["random", "monotone", "concave", "increasing"][seed % 4]
        curves = Curves(*random_curves(500 + seed, (int(rng.integers(12, 40)),), 30, kind=kind, grid="per_head"))
        yield f"random-{kind}-{seed}", (curves, int(rng.uniform(0.1, 0.8) * curves.capacity))


@pytest.mark.parametrize("limits", [
    {},
    {"_LAYER_WORK": 50, "_RANK_AFTER_STATES": 30},  # the rank bound switched on between calls
    {"_RANK_AFTER_STATES": -1},  # the rank bound from the first layer
], ids=["default", "ranks-midway", "ranks-at-once"])
def test_core_dp_same_answers_in_one_call_or_one_layer_per_call(limits, monkeypatch):
    searched = resumed = ranked = 0
    for name, (curves, total) in _dp_instances():
        a, (calls_many, calls_one), with_ranks = _same_answers(curves, total, monkeypatch, **limits)
        searched += isinstance(a, str) or a.stats["layers_done"] > 0
        resumed += calls_one > calls_many
        ranked += with_ranks > 0
    assert searched >= 8  # the comparison covers instances the core DP really searches
    assert resumed >= 8  # ... where one layer per call takes more calls
    if limits:
        assert ranked >= 1  # ... and, here, the cardinality bound inside the layer loop


def test_core_dp_same_refusal_when_too_large(monkeypatch):
    from instances_exact import strongly_fractional

    curves, total = strongly_fractional(40, 10, 0)
    msg, _, _ = _same_answers(curves, total, monkeypatch, EXACT_MAX_STATES=200)
    assert isinstance(msg, str) and "DP states" in msg


# -- one result schema ---------------------------------------------------------------------
def _schema_cases():
    """(name, curves, total, method, kwargs): each method, on the code paths that fill its
    stats differently (the greedy's one-call and bracket paths; exact proven by the LP
    bound, by the core DP, and stopped at its time limit)."""
    rng = np.random.default_rng(7)
    small = Curves(np.cumsum(rng.random((6, 9)), axis=1))
    big = Curves(np.cumsum(rng.random((600, 300)) ** 3, axis=1))  # large enough for the bracket
    concave = Curves(np.cumsum(np.sort(rng.random((8, 12)))[:, ::-1], axis=1))
    return [
        ("greedy small", small, 20, "greedy", {}),
        ("greedy bracket", big, big.capacity // 5, "greedy", {}),
        ("milp", small, 20, "milp", {}),
        ("cvxpy", small, 20, "cvxpy", {}),
        ("dp", small, 20, "dp", {}),
        ("exact concave", concave, 40, "exact", {}),
        ("exact core", small, 20, "exact", {}),
        ("exact strongly", *pisinger("strongly", 60, 10, seed=0, data_range=1000), "exact", {}),
    ]


@pytest.mark.parametrize("name, curves, total, method, kwargs", _schema_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_result_of_a_method_has_its_status_and_stats_keys(name, curves, total, method, kwargs):
    from budgetopt.result import STATS_KEYS, STATUSES

    if method == "cvxpy":
        pytest.importorskip("cvxpy")
    a = allocate(curves, total, method=method, **kwargs)
    assert a.status in STATUSES
    assert a.status == ("feasible" if method == "greedy" else "optimal")
    assert tuple(a.stats) == STATS_KEYS[method], name
    assert a.to_dict()["status"] == a.status


def test_sweep_rows_carry_the_greedy_schema():
    from budgetopt.result import STATS_KEYS

    curves = Curves(np.cumsum(np.random.default_rng(3).random((4, 10)), axis=1))
    row = budgetopt.sweep(curves, [5, 10])[1]
    assert row.status == "feasible" and tuple(row.stats) == STATS_KEYS["greedy"]
    assert row == allocate(curves, 10)


def test_compile_clock_counts_compiling_and_stopwatch_leaves_it_out(tmp_path):
    """A kernel compiled inside a Stopwatch adds to compile_seconds(), and the stopwatch's
    reading leaves exactly that out; calling the compiled kernel again adds nothing."""
    from budgetopt import _kernels_jit

    def fresh(x):  # a new function: numba must compile it here
        return x * 2 + 1

    kernel = _kernels_jit.jit(fresh)
    before = _kernels_jit.compile_seconds()
    t0 = time.perf_counter()
    watch = _kernels_jit.Stopwatch()
    assert kernel(3) == 7
    spent = _kernels_jit.compile_seconds() - before
    reading = watch.seconds()
    assert 0 < spent <= time.perf_counter() - t0
    assert reading <= (time.perf_counter() - t0) - spent
    again = _kernels_jit.compile_seconds()
    assert kernel(4) == 9 and _kernels_jit.compile_seconds() == again
