"""The marginal-utility greedy over upper-hull segments (LU-KV), one budget or many."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _kernels_greedy, bracket
from ._kernels_jit import Stopwatch
from .hull import upper_hulls
from .result import Allocation, Sweep

__all__ = ["greedy", "greedy_sweep"]


def greedy(problem, total):
    """Allocate ``total`` tokens with the hull greedy; see :func:`budgetopt.allocate`.

    Parameters
    ----------
    problem : budgetopt.problem.Problem
        Validated; ``total >= problem.floor_total``.
    total : int

    Returns
    -------
    Allocation
    """
    watch = Stopwatch()
    found, picked = _Greedy(problem)._solve(total)
    budgets, utility = problem.pick(found.idx) if picked is None else picked
    return Allocation.from_solution(
        budgets, utility, total_budget=total, upper_bound=found.lp, threshold=found.threshold, method="greedy",
        status="feasible", seconds=watch.seconds(), stats=found.stats,
    )


def greedy_sweep(problem, totals):
    """Greedy allocations for many totals sharing one hull computation.

    Parameters
    ----------
    problem : budgetopt.problem.Problem
    totals : ndarray int64 (n,)
        Each ``>= problem.floor_total``.

    Returns
    -------
    Sweep
    """
    watch = Stopwatch()
    solver = _Greedy(problem)
    n = len(totals)
    budgets = np.empty((n,) + problem.curves.head_shape, np.int64)
    utility = np.empty(n)
    bound = np.empty(n)
    threshold = np.empty(n)
    for i, found in enumerate(solver.solve_many(totals)):
        budgets[i], utility[i] = problem.pick(found.idx)
        bound[i] = max(found.lp, utility[i])  # as Allocation.from_solution does
        threshold[i] = found.threshold
    return Sweep(
        totals=np.asarray(totals, np.int64),
        budgets=budgets,
        used=budgets.reshape(n, problem.n_heads).sum(axis=1),
        utility=utility,
        upper_bound=bound,
        gap=bound - utility,
        threshold=threshold,
        seconds=watch.seconds(),
    )


def lp_multiplier(problem, total):
    """LP bound and budget multiplier of ``total`` (for exact methods' reports)."""
    found = _Greedy(problem).solve(total)
    return found.lp, found.threshold


def _head_index(head_shape, h):
    """Flat head ``h`` as a tuple index into ``head_shape`` (what
    :meth:`budgetopt.problem.Problem.head_index` gives, without numpy's per-call cost)."""
    out = []
    for n in reversed(head_shape):
        h, r = divmod(h, n)
        out.append(r)
    return tuple(out[::-1])


class Solution(NamedTuple):
    """One total's answer, before it becomes an :class:`~budgetopt.result.Allocation`."""

    idx: np.ndarray  #: int64 (H,), each head's chosen grid index
    lp: float  #: LP value (upper bound)
    threshold: float  #: budget multiplier
    stats: dict | None  #: the solver's figures (``None`` in sweeps)


class _Greedy:
    """One problem, solved for any number of total budgets.

    A single total (:meth:`solve`) is solved in one compiled call over every head's full
    hull (:func:`budgetopt._kernels_greedy.solve_one`), the plain form. Two faster paths give
    the same answers bit for bit and stay because a benchmark shows what they gain
    (``python benchmarks/bench_greedy_paths.py``; 2 shared cores, medians):

    * a single total on a large problem builds hulls only where its threshold can fall
      (:func:`budgetopt.bracket.bracketed_lp`): ``allocate`` at 20% kept takes 1.1 ms
      against 7.5 ms for 32 x 8 heads x 4,096 tokens, 16 ms against 52 ms at 32,768 tokens
      and 14 ms against 37 ms for 5,120 heads x 1,023 tokens;
    * many totals (:meth:`solve_many`) share every head's full hull and one sorted order of
      its segments: a sweep of an LU-KV table's 99 totals takes 12 ms against 694 ms one
      total at a time, and ``lukv_table`` on two 32 x 8 x 4,096 pairs 0.21 s against 1.55 s.
    """

    def __init__(self, problem):
        self.problem = problem
        self._hulls = None

    @property
    def hulls(self):
        """Every head's full upper hull (built on first use)."""
        if self._hulls is None:
            self._hulls = upper_hulls(self.problem)
        return self._hulls

    def solve(self, total):
        """The :class:`Solution` for ``total`` tokens."""
        return self._solve(total)[0]

    def _solve(self, total):
        """``(Solution, picked)``: ``picked`` is ``(budgets, utility)`` as
        :meth:`budgetopt.problem.Problem.pick` gives them where the one-call path computed
        them too, else ``None``."""
        p = self.problem
        idx = np.empty(p.n_heads, np.int64)
        spare = min(total, p.ceiling_total) - p.floor_total
        found = bracket.bracketed_lp(p, spare, idx) if bracket.worthwhile(p) else None
        if found is not None:
            stats = {"hull_segments": found.hull_segments,
                     "hull_points_fraction": found.hull_points / int((p.hi - p.lo).sum())}
            return self._finish(idx, found.part, stats), None
        # The plain form: hulls, LP part, repair and the answer's budgets and utility in one
        # compiled call.
        budgets = np.empty(p.n_heads, np.int64)
        lp, lam, blocked, left, segments, utility = _kernels_greedy.solve_one(
            p.utility, p.grid, p.per_head, p.lo, p.hi, p.unit_steps, spare, idx, budgets
        )
        stats = {
            "lp_bound": lp,
            "blocked_head": None if blocked < 0 else _head_index(p.curves.head_shape, blocked),
            "left_after_lp": left,
            "hull_segments": segments,
            "hull_points_fraction": 1.0,  # every usable point
        }
        return Solution(idx, lp, lam, stats), (budgets.reshape(p.curves.head_shape), utility)

    def solve_many(self, totals):
        """:meth:`solve` for each of ``totals``, sharing one ordering of all hull segments.

        The segments are sorted once (slope descending, ties by head); for each total the
        blocked segment is where the running cost first exceeds the spare tokens, and each
        head's position follows from one walk along the order. Gives the same results as
        :meth:`solve`, bit for bit (without the ``stats``, which sweeps do not report), 57
        times faster on 99 totals (see the class docstring).
        """
        p, hulls = self.problem, self.hulls
        offsets, verts, slopes = hulls.offsets, hulls.verts, hulls.slopes
        is_seg = np.ones(verts.shape[0], bool)
        is_seg[offsets[1:] - 1] = False
        seg = np.flatnonzero(is_seg)
        head = np.repeat(np.arange(p.n_heads), np.diff(offsets) - 1)
        x = p.grid[head * p.per_head, verts[seg]]
        cost = p.grid[head * p.per_head, verts[seg + 1]] - x
        order = np.lexsort((head, -slopes[seg]))
        cum = np.concatenate([[0], np.cumsum(cost[order])])  # tokens of the first j segments
        spares = np.minimum(np.asarray(totals, np.int64), p.ceiling_total) - p.floor_total
        taken = np.searchsorted(cum, spares, side="right") - 1  # segments that fit in full
        n = len(taken)
        ascending = np.argsort(taken, kind="stable")
        counts = np.empty((n, p.n_heads), np.int64)
        counts[ascending] = _kernels_greedy.sweep_counts(offsets, head[order], taken[ascending])
        lefts = spares - cum[taken]
        # The blocked segment is the next in order; past the last one: none (slope 0, head -1).
        lams = np.append(slopes[seg[order]], 0.0)[taken]
        blocked = np.append(head[order], -1)[taken]
        idx = np.empty((n, p.n_heads), np.int64)
        lp = np.empty(n)
        still_open = _kernels_greedy.sweep_settle(
            p.utility, p.grid, p.per_head, p.hi, verts, counts, lams, blocked, lefts, idx, lp
        )
        results = [Solution(idx[i], float(lp[i]), float(lams[i]), None) for i in range(n)]
        for i in np.flatnonzero(still_open):  # the rare rows that need the full repair
            part = bracket.LPPart(lp[i], lams[i], int(blocked[i]), int(lefts[i]))
            results[i] = self._finish(idx[i].copy(), part)
        return results

    def _finish(self, idx, part, stats=None):
        """Repair what the LP part left over; ``stats`` (if given) gains the LP's figures."""
        left = part.left
        if left > 0:
            idx, left = self._repair(idx, part.blocked, left)
        if stats is not None:
            stats = {
                "lp_bound": float(part.lp),
                "blocked_head": None if part.blocked < 0 else self.problem.head_index(int(part.blocked)),
                "left_after_lp": int(part.left),
                **stats,
            }
        return Solution(idx, float(part.lp), float(part.threshold), stats)

    def _repair(self, idx, blocked, left):
        """Spend the tokens the LP part left over; returns ``(idx, tokens still left)``.

        As in LU-KV, the head whose segment did not fit first takes its best point within
        reach. When that spends every token and the head's utility does not fall on the way
        (always so on per-token grids with increasing curves), that is the answer: it is what
        LU-KV does, and it keeps allocations nested across budgets. Otherwise positive-gain
        moves are added by gain per token and, separately, by gain, each also tried without
        the blocked head's move; the best total utility wins (ties: that order). Tokens no
        move can turn into utility are finally spent where they lose nothing.

        One compiled call (:func:`budgetopt._kernels_greedy.repair`), in place on ``idx``;
        the trials' utilities are summed as numpy's ``sum`` does, bit for bit.
        """
        p = self.problem
        rest = _kernels_greedy.repair(p.utility, p.grid, p.per_head, p.hi, idx, blocked, left)
        return idx, rest
