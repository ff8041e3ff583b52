"""Proven optima of the multiple-choice knapsack at scale: ``allocate(method="exact")``.

The hull greedy's answer is the first incumbent and its LP multiplier ``lam`` gives a
Lagrangian bound. Options whose bound with that option forced cannot beat the incumbent are
dropped (reduced-cost fixing); a head left with one option is fixed. The heads left (the
*core*) are searched by a dynamic programme over (tokens, utility) states that keeps only
undominated states and only those whose LP bound on the rest of the core can still beat the
incumbent; integral completions of the LP improve the incumbent on the way. The search ends
with a proof (no state left that can beat the incumbent) or at the time limit with a valid
bound. The idea follows Pisinger's minimal algorithm for the multiple-choice knapsack; the
proof of each step is in ``docs/exact.md``.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import ProblemTooLargeError
from .greedy import _Greedy
from .result import Allocation

__all__ = ["exact", "EXACT_MAX_OPTIONS", "EXACT_MAX_STATES", "EXACT_RTOL"]

#: Largest number of usable grid points ``method="exact"`` accepts (about 32 bytes each).
EXACT_MAX_OPTIONS = 20_000_000
#: Largest number of DP states ``method="exact"`` creates, over all core heads together
#: (about 24 bytes each kept, 48 bytes each while a layer is built); about 1 GB in all.
EXACT_MAX_STATES = 20_000_000
#: Optimality tolerance, relative: the answer is within ``EXACT_RTOL * sum_h max_k |u_hk|``
#: of the optimum (the same scale as :func:`budgetopt._invariants.tolerance`).
EXACT_RTOL = 1e-9


def exact(problem, total, *, time_limit=None):
    """Proven optimum by LP bound, reduced-cost fixing and a bounded core DP.

    Parameters
    ----------
    problem : budgetopt.problem.Problem
        Validated; ``total >= problem.floor_total``.
    total : int
    time_limit : float or None
        Seconds (wall clock, from the start of the solve) after which the search stops with
        the best allocation found and a valid upper bound. Checked between core heads.

    Returns
    -------
    Allocation
        ``stats["status"]`` is ``"optimal"`` (no allocation is better than ``utility`` by
        more than ``stats["tolerance"]``; ``upper_bound`` is ``utility``) or ``"time_limit"``
        (``upper_bound`` is the largest bound of any part of the search left open).

    Raises
    ------
    ProblemTooLargeError
        More usable grid points than :data:`EXACT_MAX_OPTIONS`, or a search that would
        create more states than :data:`EXACT_MAX_STATES`.
    """
    return _Search(problem, total, time_limit).run()


class _Search:
    """One exact solve: incumbent, fixing, core DP, result."""

    def __init__(self, problem, total, time_limit):
        self.t0 = time.perf_counter()
        self.deadline = None if time_limit is None else self.t0 + float(time_limit)
        self.problem = problem
        self.total = total
        usable = int((problem.hi - problem.lo).sum())
        if usable > EXACT_MAX_OPTIONS:
            raise ProblemTooLargeError(
                f'method="exact" accepts at most {EXACT_MAX_OPTIONS:,} usable grid points '
                f"(heads x points within floors and caps); this problem has {usable:,}. "
                'Use method="greedy" (its `gap` bounds the loss).'
            )

    def run(self):
        p = self.problem
        idx, lp, lam, _ = _Greedy(p).solve(self.total)
        self.lam = lam
        rows = np.arange(p.n_heads)
        greedy_value = float(p.utility[rows, idx].sum())
        self.best, self.best_idx = greedy_value, idx
        opts = self.opts = _options(p)
        self.spare = min(self.total, p.ceiling_total) - p.floor_total
        scale = float(np.maximum.reduceat(np.abs(opts.value), opts.offsets[:-1]).sum())
        self.tau = EXACT_RTOL * max(1.0, scale)
        self.stats = {
            "status": "optimal",
            "tolerance": self.tau,
            "greedy_utility": greedy_value,
            "lp_bound": float(lp),
            "fixed_heads": p.n_heads,
            "core_heads": 0,
            "core_options": 0,
            "layers_done": 0,
            "states": 0,
            "max_layer_states": 0,
        }
        open_bound = self._search()
        budgets, utility = p.pick(self.best_idx)
        if open_bound is None:
            bound = utility  # proven: nothing beats it by more than the tolerance
        else:
            self.stats["status"] = "time_limit"
            bound = max(open_bound, self.dropped)
        self.stats["improved_on_greedy"] = bool(utility > greedy_value)
        return Allocation.from_solution(
            budgets, utility, total_budget=self.total, upper_bound=bound, threshold=lam, method="exact",
            seconds=time.perf_counter() - self.t0, stats=self.stats,
        )

    # -- the search -------------------------------------------------------------------------
    def _search(self):
        """Run fixing and the core DP; returns ``None`` when the incumbent is proven optimal,
        else the largest bound of the states left open at the time limit."""
        from . import _kernels_exact as K

        p, opts = self.problem, self.opts
        keep = np.empty(len(opts), np.bool_)
        lagrangian, self.dropped = K.reduced_cost_filter(
            opts.cost, opts.value, opts.offsets, self.lam, self.spare, self.best + self.tau, keep
        )
        self.stats["lagrangian_bound"] = float(lagrangian)
        counts = np.add.reduceat(keep.astype(np.int64), opts.offsets[:-1])
        if lagrangian < self.best + self.tau or np.any(counts == 0):
            return None  # no option set can beat the incumbent
        # Per head: the options kept, less those a lighter kept option dominates.
        fixed_opt = np.full(p.n_heads, -1, np.int64)
        single = counts == 1
        fixed_opt[single] = np.flatnonzero(keep)[np.repeat(single, counts)]
        core = []  # (head, global option indices)
        for h in np.flatnonzero(~single):
            j = opts.offsets[h] + np.flatnonzero(keep[opts.offsets[h] : opts.offsets[h + 1]])
            v = opts.value[j]
            undominated = v > np.maximum.accumulate(np.r_[-np.inf, v[:-1]])
            j = j[undominated]
            if len(j) == 1:
                fixed_opt[h] = j[0]
            else:
                core.append((int(h), j))
        fixed = fixed_opt >= 0
        self.fixed_value = float(opts.value[fixed_opt[fixed]].sum())
        cap = self.spare - int(opts.cost[fixed_opt[fixed]].sum())
        self.stats.update(fixed_heads=int(fixed.sum()), core_heads=len(core))
        self.fixed_opt = fixed_opt
        if not core:
            if cap >= 0 and self.fixed_value > self.best:
                self._adopt({})
            return None
        # Heads whose second-best option comes closest to their best (in reduced value at
        # lam) are the likeliest to change: they go first, the rest stay in the LP bound longest.
        def closeness(item):
            rv = np.sort(opts.value[item[1]] - self.lam * opts.cost[item[1]])
            return (rv[-1] - rv[-2], item[0])

        core.sort(key=closeness)
        self.core = core
        sizes = np.array([len(j) for _, j in core], np.int64)
        gopt = np.concatenate([j for _, j in core])
        c = opts.cost[gopt]
        v = opts.value[gopt]
        coff = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        self.stats["core_options"] = int(len(gopt))
        min_c = c[coff[:-1]]
        min_v = v[coff[:-1]]
        if cap < int(min_c.sum()):
            return None
        pos, end, dc, dv, slope = K.core_hulls(c, v, coff)
        order = np.lexsort((pos, -slope))
        pos, end, dc, dv, slope = pos[order], end[order], dc[order], dv[order], slope[order]
        self.seg = (pos, end, dc, dv)
        by_pos = np.argsort(pos, kind="stable")  # sorted-segment indices grouped by position
        seg_off = np.r_[0, np.cumsum(np.bincount(pos, minlength=len(core)))].astype(np.int64)
        fc = np.empty(len(dc) + 1, np.int64)
        fv = np.empty(len(dc) + 1, np.float64)
        K.fenwick_build(dc, fc)
        K.fenwick_build(dv, fv)
        top = 1 << (max(len(dc), 1).bit_length() - 1)
        # suffix sums of the lightest options: heads at positions >= k
        self.suf_c = np.r_[np.cumsum(min_c[::-1])[::-1], 0].astype(np.int64)
        self.suf_v = np.r_[np.cumsum(min_v[::-1])[::-1], 0.0]
        self.cap = cap

        w = np.zeros(1, np.int64)
        val = np.zeros(1, np.float64)
        open_bound = float(lagrangian)
        self.layers = []
        states = 0
        for k in range(len(core)):
            if self.deadline is not None and time.perf_counter() > self.deadline:
                return max(open_bound, self.best)
            K.fenwick_remove(fc, fv, dc, dv, by_pos[seg_off[k] : seg_off[k + 1]])
            sfx = (int(self.suf_c[k + 1]), float(self.suf_v[k + 1]), fc, fv, slope, top)
            o0, o1 = coff[k], coff[k + 1]
            target = self.best - self.fixed_value + self.tau
            nw, nval, par, ch, dropped, fl_best, fl_at, live = K.expand_layer(
                w, val, c[o0:o1], v[o0:o1], cap, *sfx, target, EXACT_MAX_STATES - states
            )
            if fl_at == -2:
                raise ProblemTooLargeError(
                    f'method="exact" would create more than {EXACT_MAX_STATES:,} DP states on this problem '
                    f"({len(core)} core heads, {int(len(gopt)):,} core options); use time_limit to stop "
                    'earlier with a bound, or method="greedy"'
                )
            self.dropped = max(self.dropped, dropped + self.fixed_value)
            if fl_at >= 0 and fl_best + self.fixed_value > self.best:
                self.best = fl_best + self.fixed_value
                self._adopt(self._choices(k, par, ch, fl_at, int(nw[fl_at])))
                alive = np.empty(len(nw), np.bool_)
                target = self.best - self.fixed_value + self.tau
                _, dropped, live = K.prune_states(nw, nval, cap, *sfx, target, alive)
                self.dropped = max(self.dropped, dropped + self.fixed_value)
                nw, nval, par, ch = nw[alive], nval[alive], par[alive], ch[alive]
            self.layers.append((par, ch))
            states += len(nw)
            self.stats.update(
                layers_done=k + 1, states=states, max_layer_states=max(self.stats["max_layer_states"], len(nw))
            )
            if len(nw) == 0:
                return None
            open_bound = live + self.fixed_value
            w, val = nw, nval
        return None

    def _choices(self, k, par, ch, t, w_state):
        """Local option per core position of state ``t`` of layer ``k`` completed by the
        integral part of its suffix LP."""
        local = {k: int(ch[t])}
        s = int(par[t])
        for kk in range(k - 1, -1, -1):
            lp_, lc = self.layers[kk]
            local[kk] = int(lc[s])
            s = int(lp_[s])
        pos, end, dc, dv = self.seg
        n = len(self.core)
        for kk in range(k + 1, n):
            local[kk] = 0
        r0 = self.cap - w_state - int(self.suf_c[k + 1])
        m = np.flatnonzero(pos >= k + 1)
        taken = m[np.cumsum(dc[m]) <= r0]
        for i in taken:  # segments of one head come in hull order: the last one wins
            local[int(pos[i])] = int(end[i])
        return local

    def _adopt(self, local):
        """Make fixed heads plus the core choices ``local`` (position -> local option) the
        incumbent's grid indices."""
        opts = self.opts
        chosen = self.fixed_opt.copy()
        for kk, j in local.items():
            h, gj = self.core[kk]
            chosen[h] = gj[j]
        self.best_idx = opts.index[chosen]


class _options:
    """Each head's distinct usable grid values (as :class:`budgetopt.exact._Options`, compiled):
    ``offsets``, grid ``index``, ``cost`` above the head's floor and ``value``."""

    def __init__(self, problem):
        from . import _kernels_exact as K

        self.offsets, self.index, self.cost = K.distinct_options(
            problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi
        )
        head = np.repeat(np.arange(problem.n_heads), np.diff(self.offsets))
        self.value = problem.utility[head, self.index]

    def __len__(self):
        return len(self.index)
