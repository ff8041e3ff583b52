"""The greedy's bracketed LP (hulls built only near the threshold) against full hulls.

``bracket.bracketed_lp`` must give, bit for bit, what ``_kernels_greedy.greedy_solve`` gives over
every head's full hull, or decline (``None``). It is called directly here so that small
problems exercise it too; ``allocate`` uses it only on large problems.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import budgetopt
from budgetopt import _kernels_bracket, _kernels_greedy
from budgetopt import bracket as bracket_module
from budgetopt.hull import upper_hulls
from budgetopt.problem import build_problem

from generators import random_curves, scaled
from helpers import load_benchmark


def full_lp(problem, spare):
    """Reference: the LP part over every head's full hull."""
    hulls = upper_hulls(problem)
    idx = np.empty(problem.n_heads, np.int64)
    out = _kernels_greedy.greedy_solve(
        problem.utility, problem.grid, problem.per_head, hulls.offsets, hulls.verts, hulls.slopes, spare, idx
    )
    return idx, out


def bracketed_lp(problem, spare):
    idx = np.empty(problem.n_heads, np.int64)
    found = bracket_module.bracketed_lp(problem, spare, idx)
    return None if found is None else (idx, found)


def assert_same(problem, spare):
    """The bracket agrees with full hulls (or declines); returns whether it answered."""
    got = bracketed_lp(problem, spare)
    if got is None:
        return False
    idx, ((lp, lam, blocked, left), segments, points) = got
    ref_idx, (ref_lp, ref_lam, ref_blocked, ref_left) = full_lp(problem, spare)
    np.testing.assert_array_equal(idx, ref_idx)
    assert (lp, lam, blocked, left) == (ref_lp, ref_lam, ref_blocked, ref_left)
    assert 0 < points <= int((problem.hi - problem.lo).sum())
    return True


def attention_like(seed, heads, length):
    """Per-token curves shaped like the benchmark's: cumulative oracle mass ranked by a noisy
    scorer, with a sink token and per-head sharpness."""
    rng = np.random.default_rng(seed)
    shape = rng.uniform(0.05, 2.0, (heads, 1))
    mass = rng.gamma(shape, size=(heads, length))
    mass[:, 0] += rng.uniform(0.0, 0.3, heads) * mass.sum(axis=1)
    oracle = mass / mass.sum(axis=1, keepdims=True)
    scores = np.log(oracle + 1e-12) + rng.uniform(0.3, 2.0, (heads, 1)) * rng.standard_normal(oracle.shape)
    return budgetopt.curves_from_scores(oracle, scores)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kept", [0.005, 0.05, 0.2, 0.5, 0.9])
def test_equals_full_hulls_on_attention_like_curves(seed, kept):
    curves = attention_like(seed, 24, 700)
    problem = build_problem(curves)
    total = budgetopt.tokens_from_fraction(kept, curves.capacity)
    assert assert_same(problem, total - problem.floor_total)


@pytest.mark.parametrize("kept", [0.99, 0.995, 0.9999])
def test_extreme_budgets_agree_or_decline(kept):
    """Near the full cache the threshold sits among increments at the rounding level of
    the utilities; the bracket may decline there, but never disagrees."""
    curves = attention_like(0, 24, 700)
    problem = build_problem(curves)
    assert_same(problem, budgetopt.tokens_from_fraction(kept, curves.capacity) - problem.floor_total)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["random", "monotone", "increasing", "concave"])
@pytest.mark.parametrize("grid", ["unit", "equal", "shared", "per_head"])
def test_equals_full_hulls_or_declines_on_random_curves(seed, kind, grid):
    utility, g = random_curves(seed, (5, 3), 300, kind=kind, grid=grid)
    curves = budgetopt.Curves(utility, g)
    rng = np.random.default_rng(seed)
    floors = rng.integers(0, 40, (5, 3)) if seed % 2 else None
    caps = (floors if floors is not None else 0) + rng.integers(200, 900, (5, 3)) if seed % 3 == 0 else None
    problem = build_problem(curves, floors, caps)
    for kept in (0.02, 0.1, 0.3, 0.6, 0.95):
        total = max(problem.floor_total, int(kept * problem.ceiling_total))
        assert_same(problem, min(total, problem.ceiling_total) - problem.floor_total)


def test_answers_on_most_random_curve_problems():
    """Declining is the fallback, not the rule: on increasing per-token curves of a few
    hundred points the bracket answers nearly always."""
    answered = 0
    cases = 0
    for seed in range(10):
        utility, g = random_curves(seed, (8,), 400, kind="increasing")
        problem = build_problem(budgetopt.Curves(utility, g))
        for kept in (0.1, 0.3, 0.6):
            cases += 1
            answered += assert_same(problem, int(kept * problem.ceiling_total) - problem.floor_total)
    assert answered >= 0.9 * cases


def test_ties_plateaus_and_identical_heads():
    """Exactly equal slopes across heads (identical heads), flat stretches and linear runs:
    maximisers there are not robust, and those heads' sides are built in full."""
    rng = np.random.default_rng(7)
    base = np.cumsum(rng.random(600).round(2))
    flat = base.copy()
    flat[100:300] = flat[100]  # a plateau
    linear = np.arange(600) * 0.25  # every point collinear
    steps = np.repeat(np.cumsum(rng.random(60).round(2)), 10)  # a staircase
    utility = np.stack([base, base, flat, linear, steps, base[::-1].cumsum()])
    problem = build_problem(budgetopt.Curves(utility))
    for total in range(50, problem.ceiling_total, 173):
        assert_same(problem, total - problem.floor_total)


def test_declines_when_nothing_to_bracket():
    curves = attention_like(0, 8, 300)
    problem = build_problem(curves)
    assert bracketed_lp(problem, 0) is None  # no spare tokens
    assert bracketed_lp(problem, problem.ceiling_total - problem.floor_total) is None  # everything fits


@settings(max_examples=scaled(60), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    heads=st.integers(1, 6),
    length=st.integers(2, 400),
    kept=st.floats(0.0, 1.0),
    quantum=st.sampled_from([0.0, 0.25, 1e-3]),
)
def test_property_equals_full_hulls(seed, heads, length, kept, quantum):
    """Random walks, optionally rounded to a quantum so that ties and collinear runs are common."""
    rng = np.random.default_rng(seed)
    utility = np.cumsum(rng.normal(0.3, 1.0, (heads, length)), axis=1)
    if quantum:
        utility = np.round(utility / quantum) * quantum
    problem = build_problem(budgetopt.Curves(utility))
    spare = int(kept * (problem.ceiling_total - problem.floor_total))
    assert_same(problem, spare)


def test_allocate_uses_the_bracket_on_large_problems_and_matches_sweep():
    curves = attention_like(3, 64, 1024)  # 64 x 1,025 points: above the size threshold
    assert curves.utility.size >= bracket_module._BRACKET_MIN_POINTS
    totals = [budgetopt.tokens_from_fraction(f, curves.capacity) for f in (0.03, 0.2, 0.7)]
    swept = budgetopt.sweep(curves, totals)  # full hulls, one ordering for every total
    for i, total in enumerate(totals):
        a = budgetopt.allocate(curves, total)
        assert a.stats["hull_points_fraction"] < 0.2
        np.testing.assert_array_equal(a.budgets, swept.budgets[i])
        assert a.utility == swept.utility[i]
        assert a.upper_bound == swept.upper_bound[i]
        assert a.threshold == swept.threshold[i]


# -- the kernels the bracket stands on --------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("per_head", [False, True])
def test_tilted_argmax_matches_a_direct_loop(seed, per_head):
    """First maximiser of ``u - lam * g`` per head, as a plain loop finds it; ``robust`` set
    whenever the runner-up is clearly below, never when it ties."""
    rng = np.random.default_rng(seed)
    heads, points = 7, 333
    utility = np.cumsum(rng.random((heads, points)), axis=1)
    utility[0, 50:] = utility[0, 50]  # a plateau
    utility[1] = np.arange(points) * 0.5  # collinear: every point ties at lam = 0.5
    grid = np.cumsum(rng.integers(1, 3, (heads if per_head else 1, points)), axis=1)
    problem = build_problem(budgetopt.Curves(utility, grid if per_head else grid[0]))
    sigma = 0.5
    chunk_max = np.empty((heads, (points + _kernels_bracket._CHUNK - 1) // _kernels_bracket._CHUNK))
    _kernels_bracket.tilted_chunk_max(problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi, sigma, chunk_max)
    for lam in (0.25, 0.5, 0.6, 2.0):
        arg = np.empty(heads, np.int64)
        robust = np.empty(heads, np.bool_)
        used = _kernels_bracket.tilted_argmax(
            problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi, sigma, chunk_max, lam, arg, robust
        )
        expected_used = 0
        for h in range(heads):
            g = problem.grid[h * problem.per_head]
            values = problem.utility[h] - lam * g
            best = int(np.argmax(values))  # first maximiser
            assert arg[h] == best
            runner_up = np.max(np.delete(values, best))
            if runner_up == values[best]:
                assert not robust[h]
            elif values[best] - runner_up > 1e-9:
                assert robust[h]
            expected_used += g[best] - g[0]
        assert used == expected_used


def test_tilted_chunk_max_bounds_every_chunk():
    rng = np.random.default_rng(11)
    utility = np.cumsum(rng.normal(size=(4, 200)), axis=1)
    problem = build_problem(budgetopt.Curves(utility), [0, 3, 10, 40], [199, 150, 180, 77])
    chunk = _kernels_bracket._CHUNK
    out = np.full((4, 7), np.nan)
    sigma = 0.3
    _kernels_bracket.tilted_chunk_max(problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi, sigma, out)
    for h in range(4):
        lo, hi = problem.lo[h], problem.hi[h]
        values = utility[h, lo:hi] - sigma * np.arange(lo, hi)
        for j, start in enumerate(range(0, hi - lo, chunk)):
            np.testing.assert_allclose(out[h, j], values[start : start + chunk].max(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("head_step", [1, 3])
def test_sample_threshold_estimates_the_threshold(head_step):
    """An estimate, from every head or every third head (with its share of the budget)."""
    curves = attention_like(5, 96, 2000)
    problem = build_problem(curves)
    args = (problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi, bracket_module._OCTAVE_SHIFT)
    for kept in (0.05, 0.2, 0.5):
        total = budgetopt.tokens_from_fraction(kept, curves.capacity)
        exact = budgetopt.allocate(curves, total).threshold
        estimate = _kernels_bracket.sample_threshold(*args, head_step, total - problem.floor_total)
        assert 0.8 * exact < estimate < 1.25 * exact
    assert _kernels_bracket.sample_threshold(*args, head_step, problem.ceiling_total) == 0.0


def test_heads_marked_not_robust_change_nothing(monkeypatch):
    """Marking a maximiser not robust only widens that head's hull range (to its floor or
    cap); the answer must stay the same."""
    real = _kernels_bracket.tilted_argmax
    rng = np.random.default_rng(3)

    def flaky(*args):
        used = real(*args)
        robust = args[-1]
        robust &= rng.random(robust.shape) < 0.6
        return used

    curves = attention_like(1, 30, 500)
    problem = build_problem(curves, 5, 420)
    monkeypatch.setattr(bracket_module._kernels_bracket, "tilted_argmax", flaky)
    for kept in (0.03, 0.2, 0.6):
        total = budgetopt.tokens_from_fraction(kept, curves.capacity)
        assert assert_same(problem, min(total, problem.ceiling_total) - problem.floor_total)


@pytest.mark.parametrize("scale", [1e-300, 1e-100, 1e100, 1e305])
def test_extreme_magnitudes(scale):
    """Tiny and huge utilities (sums still finite): the bounds and tolerances scale with
    the values, so the bracket still agrees with full hulls."""
    rng = np.random.default_rng(4)
    utility = np.cumsum(rng.random((8, 600)), axis=1) * (scale / 600)
    utility[3] -= 0.5 * scale
    problem = build_problem(budgetopt.Curves(utility))
    answered = [assert_same(problem, int(f * (problem.ceiling_total - problem.floor_total))) for f in (0.1, 0.5, 0.9)]
    assert any(answered)


def test_the_paths_benchmark_finds_identical_answers(tmp_path):
    """``benchmarks/bench_greedy_paths.py`` (quick): each fast path against the plain form on
    ``allocate``, ``sweep`` and ``lukv_table`` gives the same answers."""
    bench = load_benchmark("bench_greedy_paths")
    rows = bench.main(["--quick", "--rounds", "1", "--calls", "1", "--pairs", "1", "--out", str(tmp_path / "b")])
    assert [r["case"].split(",")[0] for r in rows] == ["allocate", "sweep of 99 totals", "lukv_table"]
    assert all(r["identical"] for r in rows)
    assert rows[0]["hull_points_fraction"] < 1.0  # the bracket ran
    assert "answers identical: True" in (tmp_path / "b.txt").read_text()
