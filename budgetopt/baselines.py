"""Exact baselines for the multiple-choice knapsack: MILP (HiGHS), cvxpy, dynamic programming.

All three solve: pick one usable grid point per head, total tokens at most the budget,
maximising total utility. They share :func:`_options`, which lists each head's distinct usable
grid values (the best utility at a repeated value) as costs above the head's floor.

They are baselines: general-purpose solvers (``method="milp"``, ``"cvxpy"``, ``"dp"``) that
the package's own exact method (:mod:`budgetopt.exact`, ``method="exact"``) and the greedy
are compared with in tests and benchmarks.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

from ._io import c_stdout_to_stderr
from .errors import MissingDependencyError, ProblemTooLargeError, SolverError
from ._kernels_jit import Stopwatch
from .greedy import lp_multiplier
from .result import Allocation

__all__ = ["milp", "cvxpy_milp", "dp", "DP_MAX_UPDATES", "DP_MAX_CELLS"]

#: Largest number of DP cell updates (options x budget units) ``method="dp"`` accepts:
#: about 1-3 s per 10^9 on one core of a 2020s CPU.
DP_MAX_UPDATES = 2_000_000_000
#: Largest DP choice table (heads x budget units) ``method="dp"`` accepts (int16/int32 cells).
DP_MAX_CELLS = 400_000_000

# HiGHS stops a MIP when the absolute gap is below 1e-6 (not settable through scipy); the
# objective is rescaled so that its largest possible magnitude is this, making that
# tolerance negligible in relative terms.
_OBJECTIVE_SCALE = 1e6


class _Options:
    """Each head's distinct usable grid values, as CSR arrays."""

    def __init__(self, problem):
        heads_idx, heads_cost, offsets = [], [], [0]
        for h in range(problem.n_heads):
            g = problem.head_grid(h)[problem.lo[h] : problem.hi[h]]
            u = problem.utility[h, problem.lo[h] : problem.hi[h]]
            # best index per distinct grid value (grid is sorted)
            starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
            best = np.maximum.reduceat(u, starts)
            # first index attaining the best utility within each run of equal values
            run_id = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(g)]))
            hit = u == best[run_id]
            first_hit = np.full(len(starts), len(g))
            np.minimum.at(first_hit, run_id[hit], np.flatnonzero(hit))
            heads_idx.append(problem.lo[h] + first_hit)
            heads_cost.append(g[starts] - g[0])
            offsets.append(offsets[-1] + len(starts))
        self.index = np.concatenate(heads_idx).astype(np.int64)  # grid index of each option
        self.cost = np.concatenate(heads_cost).astype(np.int64)  # tokens above the floor
        self.offsets = np.asarray(offsets, np.int64)
        head_of = np.repeat(np.arange(problem.n_heads), np.diff(self.offsets))
        self.head = head_of
        self.value = problem.utility[head_of, self.index]

    def __len__(self):
        return len(self.index)


def _result(problem, total, idx, method, status, seconds, upper_bound, stats):
    budgets, utility = problem.pick(idx)
    lp, lam = lp_multiplier(problem, total)
    return Allocation.from_solution(
        budgets, utility, total_budget=total, upper_bound=upper_bound, threshold=lam, method=method,
        status=status, seconds=seconds, stats={"lp_bound": float(lp), **stats},
    )


def _model(problem, total):
    """Binary model data: objective, one-hot rows per head, the budget row."""
    from scipy import sparse

    opts = _Options(problem)
    n = len(opts)
    spare = min(total, problem.ceiling_total) - problem.floor_total
    scale = _OBJECTIVE_SCALE / max(float(np.abs(opts.value).max(initial=0.0)) * problem.n_heads, 1e-300)
    onehot = sparse.csr_matrix((np.ones(n), (opts.head, np.arange(n))), shape=(problem.n_heads, n))
    return opts, spare, scale, onehot


def _decode(opts, z, problem):
    """Grid index per head from a (near-)binary solution vector."""
    idx = np.empty(problem.n_heads, np.int64)
    for h in range(problem.n_heads):
        a, b = opts.offsets[h], opts.offsets[h + 1]
        idx[h] = opts.index[a + int(np.argmax(z[a:b]))]
    return idx


def milp(problem, total, *, time_limit=None):
    """Exact allocation by ``scipy.optimize.milp`` (HiGHS branch and bound).

    The upper bound reported is HiGHS's proven dual bound (relative MIP gap set to 0).
    With ``time_limit`` (seconds) HiGHS may stop early: ``status`` is then
    ``"time_limit"`` and the result is its best allocation with its dual bound; when it has
    found no allocation by then, :class:`SolverError` says so.
    """
    from scipy.optimize import LinearConstraint, milp as scipy_milp

    watch = Stopwatch()
    opts, spare, scale, onehot = _model(problem, total)
    n = len(opts)
    constraints = [
        LinearConstraint(onehot, 1.0, 1.0),
        LinearConstraint(opts.cost[None, :].astype(np.float64), -np.inf, float(spare)),
    ]
    with c_stdout_to_stderr():  # HiGHS can print diagnostics even with disp=False
        res = scipy_milp(
            c=-opts.value * scale,
            constraints=constraints,
            integrality=np.ones(n),
            bounds=(0.0, 1.0),
            options={"disp": False, "mip_rel_gap": 0.0, **({} if time_limit is None else {"time_limit": float(time_limit)})},
        )
    if res.status == 1 and res.x is not None:
        status = "time_limit"
    elif res.status != 0 or res.x is None:
        raise SolverError(f"scipy.optimize.milp (HiGHS) did not solve the problem: {res.message}")
    else:
        status = "optimal"
    idx = _decode(opts, res.x, problem)
    dual = getattr(res, "mip_dual_bound", None)
    bound = -dual / scale if dual is not None and np.isfinite(dual) else -res.fun / scale
    seconds = watch.seconds()
    stats = {"variables": n, "mip_gap": float(getattr(res, "mip_gap", 0.0) or 0.0)}
    return _result(problem, total, idx, "milp", status, seconds, bound, stats)


def cvxpy_milp(problem, total):
    """Exact allocation by the same binary model stated in cvxpy, solved with HiGHS."""
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            'method="cvxpy" needs cvxpy; install the extra: pip install "budgetopt[cvxpy]"'
        ) from exc
    if "HIGHS" not in cp.installed_solvers():  # pragma: no cover
        raise MissingDependencyError(
            'method="cvxpy" needs the HiGHS solver for cvxpy (highspy); pip install "budgetopt[cvxpy]"'
        )
    watch = Stopwatch()
    opts, spare, scale, onehot = _model(problem, total)
    z = cp.Variable(len(opts), boolean=True)
    prob = cp.Problem(
        cp.Maximize((opts.value * scale) @ z),
        [onehot @ z == 1, opts.cost.astype(np.float64) @ z <= float(spare)],
    )
    with c_stdout_to_stderr():
        prob.solve(solver=cp.HIGHS, verbose=False, mip_rel_gap=0.0, mip_abs_gap=0.0, output_flag=False)
    if prob.status not in ("optimal",) or z.value is None:
        raise SolverError(f"cvxpy (HiGHS) did not solve the problem: status {prob.status}")
    idx = _decode(opts, z.value, problem)
    seconds = watch.seconds()
    return _result(problem, total, idx, "cvxpy", "optimal", seconds, prob.value / scale, {"variables": len(opts)})


def dp(problem, total):
    """Exact allocation by dynamic programming over budget units.

    The unit is the gcd of every option's cost above its head's floor, so page-sized grids
    cost no more than per-token ones. Refuses problems above :data:`DP_MAX_UPDATES` cell
    updates or :data:`DP_MAX_CELLS` table cells with :class:`ProblemTooLargeError`.
    """
    from . import _kernels

    watch = Stopwatch()
    opts = _Options(problem)
    spare = min(total, problem.ceiling_total) - problem.floor_total
    nonzero = opts.cost[opts.cost > 0]
    unit = int(reduce(math.gcd, np.unique(nonzero).tolist(), 0)) or 1
    max_useful = int(np.maximum.reduceat(opts.cost, opts.offsets[:-1]).sum()) // unit
    units = min(spare // unit, max_useful)
    cells = problem.n_heads * (units + 1)
    updates = len(opts) * (units + 1)
    if updates > DP_MAX_UPDATES or cells > DP_MAX_CELLS:
        raise ProblemTooLargeError(
            f'method="dp" would need {updates:.3g} cell updates and a {cells:.3g}-cell table '
            f"({len(opts)} options x {units + 1} budget units of {unit} tokens); the limits are "
            f"{DP_MAX_UPDATES:.3g} updates and {DP_MAX_CELLS:.3g} cells. Use method=\"milp\" or \"greedy\"."
        )
    width = int(np.diff(opts.offsets).max())
    choice = np.empty((problem.n_heads, units + 1), np.int16 if width < 2**15 else np.int32)
    best = _kernels.dp_solve(opts.cost // unit, opts.value, opts.offsets, units, choice)
    idx = np.empty(problem.n_heads, np.int64)
    b = units
    for h in range(problem.n_heads - 1, -1, -1):
        j = opts.offsets[h] + int(choice[h, b])
        idx[h] = opts.index[j]
        b -= opts.cost[j] // unit
    seconds = watch.seconds()
    stats = {"unit": unit, "budget_units": units, "cell_updates": updates}
    return _result(problem, total, idx, "dp", "optimal", seconds, best, stats)
