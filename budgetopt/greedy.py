"""The marginal-utility greedy over upper-hull segments (LU-KV), one budget or many."""

from __future__ import annotations

import time

import numpy as np

from . import _kernels, _kernels_bracket, _kernels_greedy
from .hull import upper_hulls
from .result import Allocation, Sweep

__all__ = ["greedy", "greedy_sweep"]


# The threshold estimate samples 2 ** _OCTAVE_SHIFT points per doubling of the distance
# from either end of a head, in about _SAMPLE_HEADS heads (every head up to twice that:
# the heads' sum averages the sample's error out); problems smaller than
# _BRACKET_MIN_POINTS use full hulls.
_OCTAVE_SHIFT = 1
_SAMPLE_HEADS = 1024
_BRACKET_MIN_POINTS = 1 << 15
# Bracket search: the first multiplier tried (a multiple of the estimate), the smallest
# and largest step from one multiplier to the next, and the most multipliers tried.
_FIRST_STEP = 1.001
_MIN_STEP = 1.002
_MAX_STEP = 4.0
_MAX_TRIES = 10


class _Greedy:
    """One problem, solved for any number of total budgets.

    A single total (:meth:`solve`) builds hulls only where its threshold can fall
    (:func:`_bracketed`); many totals (:meth:`solve_many`) share every head's full hull.
    Both give the same answer, bit for bit.
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
        """Chosen grid indices (H,) and ``(lp_value, threshold, stats)`` for ``total`` tokens."""
        p = self.problem
        idx = np.empty(p.n_heads, np.int64)
        spare = min(total, p.ceiling_total) - p.floor_total
        usable = int((p.hi - p.lo).sum())
        found = _bracketed(p, spare, idx) if _bracket_worthwhile(p) else None
        if found is None:
            hulls = self.hulls
            lp, lam, blocked, left = _kernels_greedy.greedy_solve(
                p.utility, p.grid, p.per_head, hulls.offsets, hulls.verts, hulls.slopes, spare, idx
            )
            segments, points = hulls.n_segments, usable
        else:
            lp, lam, blocked, left, segments, points = found
        stats = {"hull_segments": segments, "hull_points_fraction": points / usable}
        return self._finish(idx, lp, lam, blocked, left, stats)

    def solve_many(self, totals):
        """:meth:`solve` for each of ``totals``, sharing one ordering of all hull segments.

        The segments are sorted once (slope descending, ties by head); for each total the
        blocked segment is where the running cost first exceeds the spare tokens, and each
        head's position follows from one walk along the order. Gives the same results as
        :meth:`solve`, bit for bit (without the ``stats``, which sweeps do not report).
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
        results = [(idx[i], float(lp[i]), float(lams[i]), None) for i in range(n)]
        for i in np.flatnonzero(still_open):  # the rare rows that need the full repair
            results[i] = self._finish(idx[i].copy(), lp[i], lams[i], int(blocked[i]), int(lefts[i]))
        return results

    def _finish(self, idx, lp, lam, blocked, left, stats=None):
        """Repair what the LP part left over; ``stats`` (if given) gains the LP's figures."""
        left_lp = left
        if left > 0:
            idx, left = self._repair(idx, blocked, left)
        if stats is not None:
            stats = {
                "lp_bound": float(lp),
                "blocked_head": None if blocked < 0 else self.problem.head_index(int(blocked)),
                "left_after_lp": int(left_lp),
                **stats,
            }
        return idx, float(lp), float(lam), stats

    def _repair(self, idx, blocked, left):
        """Spend the tokens the LP part left over; returns ``(idx, tokens still left)``.

        As in LU-KV, the head whose segment did not fit first takes its best point within
        reach. When that spends every token and the head's utility does not fall on the way
        (always so on per-token grids with increasing curves), that is the answer: it is what
        LU-KV does, and it keeps allocations nested across budgets. Otherwise positive-gain
        moves are added by gain per token and, separately, by gain, each also tried without
        the blocked head's move; the best total utility wins (ties: that order). Tokens no
        move can turn into utility are finally spent where they lose nothing.
        """
        p = self.problem
        rows = np.arange(p.n_heads)
        if blocked >= 0:
            trial = idx.copy()
            rest = _kernels_greedy.blocked_move(p.utility, p.grid, p.per_head, p.hi, trial, blocked, left)
            if rest == 0 and np.all(np.diff(p.utility[blocked, idx[blocked] : trial[blocked] + 1]) >= 0):
                return trial, 0
        best = None
        for blocked_first in (True, False) if blocked >= 0 else (False,):
            for by_density in (True, False):
                trial = idx.copy()
                rest = left
                if blocked_first:
                    rest = _kernels_greedy.blocked_move(p.utility, p.grid, p.per_head, p.hi, trial, blocked, rest)
                rest = _kernels_greedy.fill(p.utility, p.grid, p.per_head, p.hi, trial, rest, by_density)
                value = p.utility[rows, trial].sum()
                if best is None or value > best[0]:
                    best = (value, trial, rest)
        _, trial, rest = best
        rest = _kernels_greedy.fill_free(p.utility, p.grid, p.per_head, p.hi, trial, rest)
        return trial, rest


def _bracket_worthwhile(p):
    """Large enough for the bracket to pay, and grid values exact as floats."""
    if p.utility.size < _BRACKET_MIN_POINTS or int((p.hi - p.lo).max()) < 4 * _kernels_bracket._CHUNK:
        return False
    rows = np.arange(p.n_heads) * p.per_head
    return int(p.grid[rows, p.hi - 1].max()) < 2**52


def _bracketed(p, spare, idx):
    """The LP part of the greedy from hulls built only between two multipliers.

    An estimate ``sigma`` of the threshold comes from a geometric sample of each head (of
    every ``H // _SAMPLE_HEADS``-th head on very many heads; :func:`_kernels_bracket.sample_threshold`). Multipliers ``lam`` are tried from it
    (:func:`_find_bracket`) until the points maximising ``u - lam * g`` use at most
    ``spare`` tokens at one (``lam_hi``) and more at another (``lam_lo``). Hull
    segments left of a head's maximiser at ``lam_hi`` are steeper than ``lam_hi`` (all
    taken), those right of its maximiser at ``lam_lo`` flatter than ``lam_lo`` (none
    taken); only the hull between the two is built, and the greedy runs on those pieces
    with the tokens the taken parts use set aside. A head whose maximiser is not robust
    (another point within rounding) has that side built in full, to its floor or cap.

    Returns ``None`` when this does not apply (the caller then uses the full hulls);
    otherwise fills ``idx`` and returns ``(lp, lam, blocked, left, segments, points)``,
    equal bit for bit to :func:`_kernels_greedy.greedy_solve` over the full hulls. The proof: the
    threshold found lies strictly between ``lam_lo`` and ``lam_hi`` (checked below); there
    both computations see the same segments with the same slopes, the same tokens above
    them and the same ties in head order, so they select the same threshold and vertices.
    """
    if spare <= 0:
        return None
    H = p.n_heads
    head_step = max(1, H // _SAMPLE_HEADS)
    sigma = _kernels_bracket.sample_threshold(p.utility, p.grid, p.per_head, p.lo, p.hi, _OCTAVE_SHIFT, head_step, spare)
    if not sigma > 0.0:
        return None
    chunk = _kernels_bracket._CHUNK
    chunk_max = np.empty((H, (int((p.hi - p.lo).max()) + chunk - 1) // chunk))
    _kernels_bracket.tilted_chunk_max(p.utility, p.grid, p.per_head, p.lo, p.hi, sigma, chunk_max)

    def maximisers(lam):
        arg = np.empty(H, np.int64)
        robust = np.empty(H, np.bool_)
        used = _kernels_bracket.tilted_argmax(p.utility, p.grid, p.per_head, p.lo, p.hi, sigma, chunk_max, lam, arg, robust)
        return used, arg, robust

    found = _find_bracket(maximisers, sigma, spare)
    if found is None:
        return None
    above, below = found
    lam_hi, first, first_ok = above
    lam_lo, last, last_ok = below
    start = np.where(first_ok, first, p.lo)
    stop = np.where(last_ok, last + 1, p.hi)
    if np.any(start >= stop):
        return None
    rows = np.arange(H) * p.per_head
    fixed = int((p.grid[rows, start] - p.grid[rows, p.lo]).sum())
    if fixed > spare:
        return None
    offsets, verts, slopes = _kernels.upper_hulls(p.utility, p.grid, p.per_head, start, stop, p.unit_steps, True)
    lp, lam, blocked, left = _kernels_greedy.greedy_solve(
        p.utility, p.grid, p.per_head, offsets, verts, slopes, spare - fixed, idx
    )
    if not lam_lo < lam < lam_hi:
        return None
    return lp, lam, blocked, left, int(verts.shape[0] - H), int((stop - start).sum())


def _find_bracket(maximisers, sigma, spare):
    """Multipliers ``(lam, arg, robust)`` above and below the threshold, or ``None``.

    ``maximisers(lam)`` gives the tokens the maximisers of ``u - lam * g`` use, which never
    grow with ``lam``: where they fit in ``spare``, ``lam`` is above the threshold. From
    ``sigma * _FIRST_STEP`` the search moves towards the threshold, each step aimed by
    the secant through the last two tries (a little past the predicted crossing, so that
    it lands on the far side) but at least the square of the step before (``_MIN_STEP``
    first) and at most ``_MAX_STEP``, until one try falls on each side.
    """
    lam = sigma * _FIRST_STEP
    tries = []  # (lam, used) on the side where the search started
    above = below = None
    step = 1.0
    for _ in range(_MAX_TRIES):
        used, arg, robust = maximisers(lam)
        if used <= spare:
            above = (lam, arg, robust)
        else:
            below = (lam, arg, robust)
        if above is not None and below is not None:
            return above, below
        down = above is not None  # the threshold lies below every multiplier tried
        tries.append((lam, used))
        # Each step is at least the square of the last (so that plateaus of ``used`` and
        # secants that fall short cannot stall the search), and the secant's if larger.
        step = max(step * step, _MIN_STEP)
        if len(tries) >= 2:
            (lam0, used0), (lam1, used1) = tries[-2], tries[-1]
            if used1 != used0:
                target = lam1 + (spare - used1) * (lam1 - lam0) / (used1 - used0)
                if target > 0.0:
                    step = max(step, (target / lam1 if target > lam1 else lam1 / target) * _MIN_STEP)
        step = min(step, _MAX_STEP)
        lam = lam / step if down else lam * step
    return None


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
    t0 = time.perf_counter()
    idx, lp, lam, stats = _Greedy(problem).solve(total)
    budgets, utility = problem.pick(idx)
    return Allocation.from_solution(
        budgets, utility, total_budget=total, upper_bound=lp, threshold=lam, method="greedy",
        seconds=time.perf_counter() - t0, stats=stats,
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
    t0 = time.perf_counter()
    solver = _Greedy(problem)
    n = len(totals)
    budgets = np.empty((n,) + problem.curves.head_shape, np.int64)
    utility = np.empty(n)
    bound = np.empty(n)
    threshold = np.empty(n)
    for i, (idx, lp, lam, _) in enumerate(solver.solve_many(totals)):
        budgets[i], utility[i] = problem.pick(idx)
        bound[i] = max(lp, utility[i])  # as Allocation.from_solution does
        threshold[i] = lam
    return Sweep(
        totals=np.asarray(totals, np.int64),
        budgets=budgets,
        used=budgets.reshape(n, problem.n_heads).sum(axis=1),
        utility=utility,
        upper_bound=bound,
        gap=bound - utility,
        threshold=threshold,
        seconds=time.perf_counter() - t0,
    )


def lp_multiplier(problem, total):
    """LP bound and budget multiplier of ``total`` (for exact methods' reports)."""
    idx, lp, lam, _ = _Greedy(problem).solve(total)
    return lp, lam
