"""The one invariant checker for allocations, used by every test.

:func:`check_allocation` states, with plain loops over the input arrays, everything that
must hold for any :class:`~budgetopt.result.Allocation` whatever method produced it: each
budget is a grid point of its head within the floor and cap, the total fits, and the
reported utility, upper bound and gap agree with the curves. It deliberately shares no code
with the solvers (no hulls, no kernels), so a solver bug cannot hide behind it.

Internal: not part of the public API.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["check_allocation", "best_utility_at", "tolerance"]


def _arrays(curves):
    """``(utility2d (H, K), grid2d (H, K), head_shape)`` from Curves or a bare utility array."""
    utility = np.asarray(getattr(curves, "utility", curves), dtype=np.float64)
    head_shape = utility.shape[:-1]
    k = utility.shape[-1]
    grid = getattr(curves, "grid", None)
    grid = np.arange(k, dtype=np.int64) if grid is None else np.asarray(grid, dtype=np.int64)
    u2 = utility.reshape(-1, k)
    g2 = np.broadcast_to(grid.reshape(-1, k), u2.shape)
    return u2, g2, head_shape


def _per_head(value, head_shape, name):
    """A floor or cap given as None, a scalar or a head-shaped array, as a flat list."""
    n = int(np.prod(head_shape))
    if value is None:
        return [None] * n
    arr = np.asarray(value)
    if arr.ndim == 0:
        return [int(arr)] * n
    assert arr.shape == tuple(head_shape), f"{name} shape {arr.shape} != head_shape {head_shape}"
    return [int(v) for v in arr.reshape(-1)]


def best_utility_at(utility_row, grid_row, tokens):
    """Best utility of one head over its grid points equal to ``tokens`` (None if not a point).

    Examples
    --------
    >>> best_utility_at([0.0, 0.5, 0.7, 0.6], [0, 2, 3, 3], 3)
    0.7
    >>> best_utility_at([0.0, 0.5], [0, 2], 1) is None
    True
    """
    best = None
    for u, g in zip(utility_row, grid_row):
        if int(g) == int(tokens) and (best is None or float(u) > best):
            best = float(u)
    return best


def tolerance(curves, rtol=1e-9):
    """Absolute tolerance for totals: ``rtol`` times the largest possible |total utility|, at least ``rtol``."""
    u2, _, _ = _arrays(curves)
    return rtol * max(1.0, float(np.abs(u2).max(axis=1).sum()))


def check_allocation(curves, allocation, *, total_budget, min_budget=None, max_budget=None, rtol=1e-9):
    """Assert every method-independent invariant of ``allocation`` for ``curves``.

    Parameters
    ----------
    curves : Curves or array_like
        The problem (a bare ``(*head_shape, K)`` array means grid ``arange(K)``).
    allocation : Allocation
        What a solver returned.
    total_budget : int
        The total budget that was asked for.
    min_budget, max_budget : int or array_like of int, optional
        The floors and caps that were asked for (scalar or head-shaped).
    rtol : float
        Relative tolerance for utility sums, scaled by the largest possible |total utility|.

    Returns
    -------
    float
        The utility recomputed here by a direct loop.

    Raises
    ------
    AssertionError
        Naming the first invariant that fails.

    Examples
    --------
    >>> from budgetopt.result import Allocation
    >>> a = Allocation(budgets=[2, 0], used=2, total_budget=2, utility=0.7, upper_bound=0.7,
    ...                gap=0.0, threshold=0.0, method="hand", status="feasible", seconds=0.0)
    >>> check_allocation([[0.0, 0.5, 0.7], [0.0, 0.1, 0.2]], a, total_budget=2)
    0.7
    """
    u2, g2, head_shape = _arrays(curves)
    tol = tolerance(curves, rtol)
    budgets = allocation.budgets
    assert isinstance(budgets, np.ndarray), f"budgets is {type(budgets).__name__}, not an ndarray"
    assert budgets.dtype == np.int64, f"budgets dtype {budgets.dtype} != int64"
    assert budgets.shape == tuple(head_shape), f"budgets shape {budgets.shape} != head_shape {head_shape}"

    lows = _per_head(min_budget, head_shape, "min_budget")
    highs = _per_head(max_budget, head_shape, "max_budget")
    flat = budgets.reshape(-1)
    total = 0.0
    used = 0
    for h in range(u2.shape[0]):
        b = int(flat[h])
        best = best_utility_at(u2[h], g2[h], b)
        assert best is not None, f"head {h}: budget {b} is not a grid point of its head {g2[h].tolist()}"
        assert lows[h] is None or b >= lows[h], f"head {h}: budget {b} below min_budget {lows[h]}"
        assert highs[h] is None or b <= highs[h], f"head {h}: budget {b} above max_budget {highs[h]}"
        total += best
        used += b

    assert isinstance(allocation.used, numbers.Integral), f"used is {type(allocation.used).__name__}"
    assert int(allocation.used) == used, f"used {allocation.used} != budgets.sum() {used}"
    assert used <= total_budget, f"used {used} > total_budget {total_budget}"
    assert int(allocation.total_budget) == int(total_budget), (
        f"total_budget {allocation.total_budget} != asked {total_budget}"
    )

    utility = float(allocation.utility)
    upper = float(allocation.upper_bound)
    gap = float(allocation.gap)
    assert math.isfinite(utility) and math.isfinite(upper), f"utility {utility} / upper_bound {upper} not finite"
    assert abs(utility - total) <= tol, f"reported utility {utility!r} != recomputed {total!r} (tol {tol:g})"
    assert upper >= utility - tol, f"upper_bound {upper!r} < utility {utility!r}"
    assert abs(gap - (upper - utility)) <= tol, f"gap {gap!r} != upper_bound - utility {upper - utility!r}"
    assert gap >= -tol, f"gap {gap!r} negative"

    threshold = float(allocation.threshold)
    assert not math.isnan(threshold) and threshold >= -tol, f"threshold {threshold!r} is not a multiplier >= 0"
    assert isinstance(allocation.method, str), f"method is {type(allocation.method).__name__}, not str"
    assert float(allocation.seconds) >= 0.0, f"seconds {allocation.seconds} negative"
    return total
