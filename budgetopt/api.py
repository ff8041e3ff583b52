"""The public front doors: :func:`allocate` and :func:`sweep`.

They validate every argument once (through :mod:`budgetopt.problem`), then hand canonical
arrays to an algorithm.
"""

from __future__ import annotations

import numpy as np

from . import baselines, exact, greedy as _greedy
from .errors import InvalidInputError, InvalidTypeError
from ._checks import refuse_masked
from .problem import build_problem, check_time_limit, check_total, require_feasible

__all__ = ["allocate", "sweep", "METHODS"]

#: Method name -> solver. ``allocate(method=...)`` accepts exactly these names; what each one
#: guarantees is in :func:`allocate`'s Notes and docs/guide-choosing-a-method.md.
METHODS = {
    "greedy": _greedy.greedy,
    "milp": baselines.milp,
    "cvxpy": baselines.cvxpy_milp,
    "dp": baselines.dp,
    "exact": exact.exact,
}

#: Methods that accept ``time_limit``.
TIME_LIMITED = ("exact", "milp")


def allocate(curves, total_budget, *, method="greedy", min_budget=None, max_budget=None, time_limit=None):
    """Choose one grid point per head to maximise total utility within a token budget.

    Solves the multiple-choice knapsack

    ``max sum_h utility[h, k_h]  s.t.  sum_h grid[h, k_h] <= total_budget,
    min_budget[h] <= grid[h, k_h] <= max_budget[h]``.

    Parameters
    ----------
    curves : Curves or array_like of float, shape ``(*head_shape, K)``
        Utility curves; a bare array uses the grid ``arange(K)`` and is checked and copied on
        every call (a :class:`Curves` is checked once, when built).
    total_budget : int
        Total tokens all heads may keep together, in the grid's unit (absolute, not a
        fraction: for a fraction ``f`` of the full cache use
        ``tokens_from_fraction(f, curves.capacity)``).
    method : {"greedy", "milp", "cvxpy", "dp", "exact"}, optional
        ``"greedy"`` (default) is LU-KV's hull greedy with a certificate; the others are exact.
        ``"exact"`` proves optimality at scale (LP bound, reduced-cost fixing, a DP over the
        few heads left; see ``docs/exact.md``).
    min_budget, max_budget : int or array_like of int (head shape), optional
        Per-head floor and cap: a head may take only grid points in ``[min, max]``
        (a safeguard floor, sink + window tokens, the context length).
    time_limit : float, optional
        Seconds after which ``"exact"`` or ``"milp"`` stop with the best allocation found
        and a valid ``upper_bound``; ``status`` is then ``"time_limit"`` instead of
        ``"optimal"``. Not accepted by the other methods. Default: no limit.

    Returns
    -------
    Allocation
        ``budgets`` in the head shape, with ``utility``, the certificate ``upper_bound`` and
        ``gap``, and the budget multiplier ``threshold``.

    Raises
    ------
    InvalidInputError, InvalidTypeError
        An argument breaks its rule (the message names it).
    InfeasibleError
        ``total_budget`` is below the sum of the smallest allowed grid points, or a head has
        no grid point within its ``[min_budget, max_budget]``.
    ProblemTooLargeError
        ``method="dp"`` or ``method="exact"`` above its size limit.
    MissingDependencyError
        ``method="cvxpy"`` without cvxpy installed.

    Notes
    -----
    ``"greedy"`` replaces each head's curve by its upper concave hull and takes hull segments
    by marginal utility per token, largest first (ties by head order), while they fit: that
    solves the LP relaxation exactly, and its value is ``upper_bound``. As in LU-KV, the head
    whose segment no longer fits then takes its best grid point within the tokens left, and
    any tokens still left go to the best remaining moves. O(heads * K), deterministic. That
    rule can give a larger budget a lower utility on coarse grids or falling curves; ``gap``
    bounds the loss in every result. How each step works and what it costs is in
    ``docs/performance.md``.

    The exact methods return the optimum; ``"milp"``/``"cvxpy"`` report HiGHS's proven
    bound as ``upper_bound``. ``"dp"`` needs O(options * budget units) time; see
    :data:`budgetopt.baselines.DP_MAX_UPDATES`. ``"exact"`` starts from the greedy's answer and
    its multiplier, drops every grid point whose Lagrangian bound cannot beat that answer,
    and searches the heads left by a DP over undominated (tokens, utility) states pruned by
    LP bounds: "optimal" means no allocation is better by more than
    ``stats["tolerance"]`` (``1e-9 * sum_h max_k |utility|``).

    References
    ----------
    .. [1] "Predicting Future Utility: Global Combinatorial Optimization for Task-Agnostic KV
       Cache Eviction" (LU-KV), arXiv:2602.08585.
    .. [2] Sinha & Zoltners, "The multiple-choice knapsack problem", Operations Research 27
       (1979): the LP relaxation is solved greedily over upper convex hulls.

    Examples
    --------
    Two heads, grid ``0, 1, 2`` tokens, two tokens in all:

    >>> import budgetopt
    >>> a = budgetopt.allocate([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]], 2)
    >>> a.budgets.tolist(), round(a.utility, 6)
    ([1, 1], 1.1)
    >>> budgetopt.allocate([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]], 2, method="dp").budgets.tolist()
    [1, 1]
    >>> round(a.upper_bound, 6), a.gap >= 0
    (1.1, True)
    >>> e = budgetopt.allocate([[0.0, 0.0, 1.0], [0.0, 0.4, 0.4]], 1, method="exact")
    >>> e.budgets.tolist(), e.status, e.gap
    ([0, 1], 'optimal', 0.0)
    """
    try:
        solver = METHODS[method]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"`method` must be one of {', '.join(repr(m) for m in METHODS)}; got {method!r}"
        ) from None
    limit = check_time_limit(time_limit)
    if limit is not None and method not in TIME_LIMITED:
        raise InvalidInputError(
            f"`time_limit` applies only to method {' or '.join(repr(m) for m in TIME_LIMITED)}; got method={method!r}"
        )
    problem = build_problem(curves, min_budget, max_budget)
    total = check_total(total_budget)
    require_feasible(problem, total)
    if limit is not None:
        return solver(problem, total, time_limit=limit)
    return solver(problem, total)


def sweep(curves, totals, *, min_budget=None, max_budget=None):
    """Greedy allocations for many total budgets, sharing one hull computation.

    Parameters
    ----------
    curves : Curves or array_like
    totals : array_like of int, shape (n,)
        Total budgets in tokens (any order; results follow it).
    min_budget, max_budget : optional
        As in :func:`allocate`.

    Returns
    -------
    Sweep
        Row ``i`` is identical to ``allocate(curves, totals[i], method="greedy", ...)``.

    Notes
    -----
    O(heads * K) once for the hulls and one sort of the S hull segments, then O(heads) per
    total (one walk along the sorted segments serves every total). The LP part of the
    greedy is nested by construction (a larger total never takes tokens from a head), and so
    are the allocations whenever the blocked head can spend the remaining tokens itself, as
    on per-token grids with increasing curves (curves from :func:`curves_from_scores`). On
    coarse grids, or where the blocked head gains nothing, the final fill step may give the
    leftover tokens to different heads from one total to the next.

    Examples
    --------
    >>> import budgetopt
    >>> s = budgetopt.sweep([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]], [0, 1, 2, 3, 4])
    >>> s.budgets.tolist()
    [[0, 0], [1, 0], [1, 1], [1, 2], [2, 2]]
    >>> [round(float(x), 6) for x in s.utility]
    [0.0, 0.6, 1.1, 1.5, 1.6]
    """
    problem = build_problem(curves, min_budget, max_budget)
    refuse_masked(totals, "totals")
    if isinstance(totals, (str, bytes)):
        raise InvalidTypeError("`totals` must be a 1-D sequence of token totals; got a string")
    try:
        arr = np.asarray(totals)
    except (ValueError, TypeError) as exc:
        raise InvalidTypeError(f"`totals` must be a 1-D sequence of token totals; could not convert it ({exc})") from None
    if arr.ndim != 1:
        raise InvalidInputError(f"`totals` must be a 1-D sequence of token totals; got shape {arr.shape}")
    if arr.dtype.kind not in "iufO" and arr.size:
        raise InvalidTypeError(f"`totals` must hold whole numbers of tokens; got dtype {arr.dtype}")
    values = arr.tolist()
    checked = np.array([check_total(t, f"totals[{i}]") for i, t in enumerate(values)], np.int64)
    if checked.size:
        require_feasible(problem, int(checked.min()))
    return _greedy.greedy_sweep(problem, checked)
