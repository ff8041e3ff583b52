"""Ground truth for tiny problems, written independently of budgetopt's solvers.

* :func:`brute_force`: enumerate every combination of one feasible grid point per head
  (itertools.product) and keep the best. Exponential: only for a handful of heads and points.
* :func:`lp_relaxation`: the LP relaxation of the multiple-choice knapsack stated directly
  (one weight per grid point, weights of a head sum to 1, weighted tokens within the budget)
  and solved with ``scipy.optimize.linprog``. Its value is the upper bound the greedy must
  report.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import linprog


def _rows(curves):
    utility = np.asarray(getattr(curves, "utility", curves), dtype=np.float64)
    k = utility.shape[-1]
    grid = getattr(curves, "grid", None)
    grid = np.arange(k) if grid is None else np.asarray(grid)
    u2 = utility.reshape(-1, k)
    g2 = np.broadcast_to(grid.reshape(-1, k), u2.shape)
    return u2, g2


def _bounds(value, n):
    if value is None:
        return [None] * n
    arr = np.asarray(value)
    return [int(arr)] * n if arr.ndim == 0 else [int(v) for v in arr.reshape(-1)]


def feasible_options(curves, min_budget=None, max_budget=None):
    """Per head: a dict ``tokens -> best utility`` over its grid points within [min, max].

    Examples
    --------
    >>> feasible_options([[0.0, 1.0, 0.5, 0.9]], min_budget=1)
    [{1: 1.0, 2: 0.5, 3: 0.9}]
    """
    u2, g2 = _rows(curves)
    lows = _bounds(min_budget, u2.shape[0])
    highs = _bounds(max_budget, u2.shape[0])
    options = []
    for h in range(u2.shape[0]):
        opts = {}
        for u, g in zip(u2[h], g2[h]):
            g = int(g)
            if lows[h] is not None and g < lows[h]:
                continue
            if highs[h] is not None and g > highs[h]:
                continue
            opts[g] = max(opts.get(g, -np.inf), float(u))
        options.append(opts)
    return options


def brute_force(curves, total_budget, min_budget=None, max_budget=None):
    """Optimal ``(utility, budgets tuple)`` by enumeration; None when infeasible.

    Among optimal choices the first in lexicographic order of tokens is returned.

    Examples
    --------
    >>> brute_force([[0.0, 0.6, 0.7], [0.0, 0.1, 0.9]], 2)
    (0.9, (0, 2))
    """
    options = feasible_options(curves, min_budget, max_budget)
    best = None
    for combo in itertools.product(*[sorted(o) for o in options]):
        if sum(combo) > total_budget:
            continue
        value = sum(o[g] for o, g in zip(options, combo))
        if best is None or value > best[0]:
            best = (value, combo)
    return best


def lp_relaxation(curves, total_budget, min_budget=None, max_budget=None):
    """``(value, multiplier)`` of the LP relaxation; None when infeasible.

    ``multiplier`` is the dual value of the budget constraint (utility per token); it is
    unique only when the LP is not degenerate.

    Examples
    --------
    >>> value, mult = lp_relaxation([[0.0, 0.6, 0.7], [0.0, 0.1, 0.9]], 2)
    >>> round(value, 9), round(mult, 9)
    (1.05, 0.45)
    """
    options = feasible_options(curves, min_budget, max_budget)
    if any(not o for o in options):
        return None
    tokens, gains, owner = [], [], []
    for h, o in enumerate(options):
        for g, u in sorted(o.items()):
            tokens.append(g)
            gains.append(u)
            owner.append(h)
    n = len(tokens)
    a_eq = np.zeros((len(options), n))
    a_eq[owner, np.arange(n)] = 1.0
    res = linprog(
        -np.asarray(gains),
        A_ub=np.asarray(tokens, dtype=np.float64)[None, :],
        b_ub=[float(total_budget)],
        A_eq=a_eq,
        b_eq=np.ones(len(options)),
        bounds=(0.0, 1.0),
        method="highs",
    )
    if res.status == 2:
        return None
    assert res.status == 0, res.message
    return -res.fun, -float(res.ineqlin.marginals[0])


def dual_value(curves, total_budget, multiplier, min_budget=None, max_budget=None):
    """The Lagrangian bound ``multiplier * total + sum_h max_k (u_hk - multiplier * g_hk)``.

    For any ``multiplier >= 0`` it bounds the optimum from above; it equals the LP value
    exactly when ``multiplier`` is an optimal multiplier of the budget constraint.

    Examples
    --------
    >>> round(dual_value([[0.0, 0.6, 0.7], [0.0, 0.1, 0.9]], 2, 0.45), 9)
    1.05
    """
    options = feasible_options(curves, min_budget, max_budget)
    return multiplier * total_budget + sum(max(u - multiplier * g for g, u in o.items()) for o in options)
