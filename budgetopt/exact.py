"""Proven optima of the multiple-choice knapsack at scale: ``allocate(method="exact")``.

The hull greedy's answer is the first incumbent and its LP multiplier ``lam`` gives a
Lagrangian bound. A local search (one head, or two heads at once, moved while that gains)
improves the incumbent. Options whose bound with that option forced cannot beat the
incumbent are dropped (reduced-cost fixing); a head left with one option is fixed. When the
utilities are integers (more generally: every head's utilities differ by multiples of one
step), only a bound a whole step above the incumbent can hide a better allocation, and a
second bound that knows option ranks are integers (a cardinality bound) can close the gap
the LP leaves on strongly correlated data. The heads left (the *core*) are searched by a
dynamic programme over (tokens, utility) states that keeps only undominated states and only
those whose LP bound on the rest of the core (and, once the DP is large, whose cardinality
bound) can still beat the incumbent; integral completions of the LP improve the incumbent
on the way. The search ends with a proof (no
state left that can beat the incumbent, or an incumbent that meets a bound) or at the time
limit with a valid bound. The idea follows Pisinger's minimal algorithm for the
multiple-choice knapsack; the proof of each step is in ``docs/exact.md``.

The module is named for the method a user asks for (``method="exact"``, documented in
``docs/exact.md``), not for the paper's problem name; the general-purpose solvers it is checked
against (``"milp"``, ``"cvxpy"``, ``"dp"``) are in :mod:`budgetopt.baselines`, its compiled
kernels in :mod:`budgetopt._kernels_exact`.
"""

from __future__ import annotations

import numpy as np

from . import _kernels_exact as K
from ._kernels_jit import Stopwatch
from .errors import ProblemTooLargeError
from .greedy import _Greedy
from .result import Allocation

__all__ = ["exact", "EXACT_MAX_OPTIONS", "EXACT_MAX_STATES", "EXACT_RTOL"]

#: Largest number of usable grid points ``method="exact"`` accepts (the options kept after
#: fixing take 24 bytes each, at most this many).
EXACT_MAX_OPTIONS = 20_000_000
#: Largest number of DP states ``method="exact"`` keeps over all core heads together, and
#: of extensions it builds for one head (16 bytes per state kept, 48 per extension while a
#: layer is built): about 1.3 GB at most.
EXACT_MAX_STATES = 20_000_000
#: Optimality tolerance, relative: the answer is within ``EXACT_RTOL * sum_h max_k |u_hk|``
#: of the optimum (the same scale as :func:`budgetopt._invariants.tolerance`).
EXACT_RTOL = 1e-9

# Core heads searched first, with the rest at their LP choice, for a better incumbent.
_HEURISTIC_CORE = 48
# ... for at most this long, or this share of the time limit.
_HEURISTIC_SECONDS = 0.2
_HEURISTIC_SHARE = 0.25
# Rounds of local search (one or two heads moved per round) from the greedy's answer: the
# first 8 with the fixing's first pass, the others 8 at a time between looks at the clock.
_LOCAL_ROUNDS = 64
_LOCAL_ROUNDS_FIRST = 8
# Local search and cardinality bound only up to this many options (about 80 bytes each).
_EXTRA_MAX_OPTIONS = 2_000_000
# The core DP bounds its states by the cardinality bound too, once it has kept this many
# states, on cores of at most this many options (48 LP solves find the rank multiplier).
_RANK_AFTER_STATES = 20_000
_RANK_MAX_OPTIONS = 200_000
# Core DP layers run in one compiled call (``_kernels_exact.dp_layers``); it hands back
# after about this many extensions (well under a millisecond) so that the clock is checked.
_LAYER_WORK = 10_000
# Golden-section steps of the rank multiplier in the cardinality bound (integral utilities).
_GOLDEN_STEPS = 48
# The cardinality bound is tried before the core DP on cores of at least this many heads;
# a smaller core's DP costs less than the bound (and computes it if it grows past
# _RANK_AFTER_STATES states).
_CARDINALITY_MIN_HEADS = 16


def exact(problem, total, *, time_limit=None):
    """Proven optimum by LP bound, reduced-cost fixing and a bounded core DP.

    Parameters
    ----------
    problem : budgetopt.problem.Problem
        Validated; ``total >= problem.floor_total``.
    total : int
    time_limit : float or None
        Seconds (wall clock, from the start of the solve) after which the search stops with
        the best allocation found and a valid upper bound. Checked between core heads (at
        least every 10,000 DP extensions or so, and after any head whose layer is larger). The
        time spent compiling (or loading) the kernels on the way does not count.

    Returns
    -------
    Allocation
        ``status`` is ``"optimal"`` (no allocation is better than ``utility`` by
        more than ``stats["tolerance"]``; ``upper_bound`` is ``utility``) or ``"time_limit"``
        (``upper_bound`` is the largest bound of any part of the search left open, rounded
        down to a whole number of value steps above ``utility`` when the utilities are
        integral). ``stats["proved_by"]`` names what proved optimality
        (``"lagrangian_bound"``, ``"cardinality_bound"`` or ``"core_dp"``; ``None`` at the
        time limit); ``stats["value_step"]`` is the step by which allocations' values differ
        (``0.0`` when the utilities are not integral, ``stats["integral"]`` is then False).

    Raises
    ------
    ProblemTooLargeError
        More usable grid points than :data:`EXACT_MAX_OPTIONS`, or a search that would
        create more states than :data:`EXACT_MAX_STATES`.

    Notes
    -----
    O(heads * K) for the greedy and the fixing (one pass over the curves, only the options
    kept are stored); the local search O(M log M) per round for M kept options (at most 64
    rounds); the cardinality bound (integral utilities only) O(C log C) for each of at most
    48 golden-section steps, C the core's options; the core DP costs O(states x options x
    log segments) per layer and is exponential in the worst case (the problem is NP-hard).
    Deterministic. The greedy's answer is never changed: it is only the first incumbent.

    Examples
    --------
    Head 0 jumps from 0 to 1 at two tokens, head 1 gains .4 with its first token; with one
    token the greedy's LP bound is .5 and the optimum .4:

    >>> from budgetopt.problem import build_problem
    >>> a = exact(build_problem([[0.0, 0.0, 1.0], [0.0, 0.4, 0.4]]), 1)
    >>> a.budgets.tolist(), a.utility, a.status, a.stats["lp_bound"]
    ([0, 1], 0.4, 'optimal', 0.5)
    """
    return _Search(problem, total, time_limit).run()


def _starts(sizes):
    """``[0, sizes[0], sizes[0] + sizes[1], ...]`` as int64 (CSR offsets of ``sizes``)."""
    out = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


class _Search:
    """One exact solve: incumbent, fixing, core DP, result."""

    def __init__(self, problem, total, time_limit):
        # Times are Stopwatch seconds: compiling kernels on the way counts neither against the
        # time limit nor in the result's ``seconds``.
        self.watch = Stopwatch()
        self.deadline = None if time_limit is None else float(time_limit)
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
        found, picked = _Greedy(p)._solve(self.total)
        idx, lp, lam = found.idx, found.lp, found.threshold
        self.lam = lam
        # the greedy's utility, summed as problem.pick sums it
        greedy_value = float(p.utility[np.arange(p.n_heads), idx].sum()) if picked is None else picked[1]
        self.best, self.best_idx = greedy_value, idx
        self.spare = min(self.total, p.ceiling_total) - p.floor_total
        scale = p.curves._utility_scale()
        self.tau = EXACT_RTOL * max(1.0, scale)
        # Integral utilities: allocations differ in value by multiples of ``step``, so only
        # a bound of at least ``best + step`` (less the tolerance) can hide a better one.
        # Then the options that can still beat the incumbent, and a local search from it.
        moved = idx.copy()
        step, self.margin, gain, more, *kept = K.presolve(
            p.utility, p.grid, p.per_head, p.lo, p.hi, moved, lam, self.spare, self.best, self.tau,
            2.0**53 / (p.n_heads + 1), _EXTRA_MAX_OPTIONS, _LOCAL_ROUNDS_FIRST,
        )
        self.step = float(step)
        self.opts = _Kept(*kept)
        self.status = "optimal"
        self.stats = {
            "lp_bound": float(lp),
            "tolerance": self.tau,
            "integral": self.step > 0,
            "value_step": self.step,
            "greedy_utility": greedy_value,
            "improved_on_greedy": False,
            "lagrangian_bound": None,  # set by the first fixing
            "cardinality_bound": None,  # None unless that bound was worked out
            "rank_limit": None,
            "proved_by": None,
            "fixed_heads": p.n_heads,
            "core_heads": 0,
            "core_options": 0,
            "layers_done": 0,
            "states": 0,
            "max_layer_states": 0,
        }
        self.global_bound = np.inf  # bounds every allocation better than the incumbent
        if gain > self.tau:
            self._improve(moved, more)
        open_bound = self._search()
        budgets, utility = p.pick(self.best_idx)
        if open_bound is None:
            bound = utility  # proven: nothing beats it by more than the tolerance
        else:
            self.status = "time_limit"
            self.stats["proved_by"] = None
            bound = min(max(open_bound, self.dropped), max(utility, self.global_bound))
            if self.step > 0:  # the best value below the bound that an allocation can have
                bound = utility + self.step * np.floor((bound - utility + self.tau) / self.step)
        self.stats["improved_on_greedy"] = bool(utility > greedy_value)
        return Allocation.from_solution(
            budgets, utility, total_budget=self.total, upper_bound=bound, threshold=lam, method="exact",
            status=self.status, seconds=self.watch.seconds(), stats=self.stats,
        )

    # -- the search -------------------------------------------------------------------------
    def _search(self):
        """Fixing, a heuristic core for a better incumbent, fixing again, the core DP.

        Returns ``None`` when the incumbent is proven optimal, else the largest bound of the
        states left open at the time limit."""
        fixing = self._fix()
        self.stats["lagrangian_bound"] = float(self.lagrangian)
        if fixing is None:
            return None
        fixed_opt, core = fixing
        if self.step > 0 and _CARDINALITY_MIN_HEADS <= len(core) and len(core.cost) <= _EXTRA_MAX_OPTIONS:
            self._cardinality(core, fixed_opt)
            if self._proven():
                return None
        if len(core) > _HEURISTIC_CORE:
            # The best allocation with every head outside a small core at its LP choice
            # (the lightest maximiser of utility - lam * tokens): a cheap, usually much
            # better incumbent, which makes the fixing below far stronger.
            before = self.best
            self._heuristic(core)
            if self._proven():
                return None
            if self.best > before:
                fixing = self._fix()
                if fixing is None:
                    return None
                fixed_opt, core = fixing
        self.stats["proved_by"] = "core_dp"
        open_bound, dropped = self._core_dp(core, fixed_opt, record=True)
        self.dropped = max(self.dropped, dropped)
        return open_bound

    def _proven(self):
        """Whether the incumbent meets the bound on every better allocation (and which
        bound that is, in ``stats["proved_by"]``)."""
        if self.best + self.margin <= self.global_bound:
            return False
        self.stats["proved_by"] = "lagrangian_bound" if self.global_bound >= self.lagrangian else "cardinality_bound"
        return True

    def _fix(self):
        """Reduced-cost fixing against the incumbent: ``(fixed_opt, core)``, or ``None`` when
        no allocation can beat the incumbent. ``fixed_opt[h]`` is the only option head ``h``
        can take in a better allocation (-1 for core heads); ``core`` (a :class:`_Core`)
        holds the others with their undominated options, likeliest to change first."""
        p, opts = self.problem, self.opts
        if opts.bound < self.best + self.margin:
            self.lagrangian, self.dropped = opts.bound, opts.dropped
            self.global_bound = min(self.global_bound, self.lagrangian)
            self.stats["proved_by"] = "lagrangian_bound"
            return None
        # Options dropped before (against a lower target) stay dropped; the bound is the same.
        # Heads whose second-best option comes closest to their best (in reduced value at
        # lam) are the likeliest to change: they go first, the rest stay in the LP bound longest.
        self.lagrangian, dropped, still_open, fixed_opt, heads, gopt, coff = K.fix(
            opts.cost, opts.value, opts.offsets, self.lam, self.spare, self.best + self.margin
        )
        self.global_bound = min(self.global_bound, self.lagrangian)
        self.dropped = max(opts.dropped, dropped)
        if not still_open:
            self.stats["proved_by"] = "lagrangian_bound"
            return None
        core = _Core(heads, gopt, coff, opts.cost[gopt], opts.value[gopt])
        self.stats.update(fixed_heads=p.n_heads - len(heads), core_heads=len(heads), core_options=len(gopt))
        return fixed_opt, core

    def _cardinality(self, core, fixed_opt):
        """Lower ``global_bound`` to the bound that knows option ranks are integers (see
        :func:`budgetopt._kernels_exact.cardinality_bound`), over the core heads with every
        other head at ``fixed_opt``; it bounds every allocation better than the incumbent."""
        fixed_cost, fixed_value = K.fixed_part(fixed_opt, self.opts.cost, self.opts.value)
        cap = self.spare - fixed_cost
        bound, mu, k = K.cardinality_bound(
            core.cost, core.value, core.coff, cap, _GOLDEN_STEPS, self.best + self.margin - fixed_value
        )
        self.stats.update(cardinality_bound=float(bound + fixed_value), rank_limit=int(k))
        self.global_bound = min(self.global_bound, bound + fixed_value)

    def _improve(self, new, more):
        """Go on with the local search (moves of one head or of two heads together, one up,
        one down, while they gain) from the grid indices ``new`` that its first rounds
        reached (``more``: their last round still moved), and adopt the result if better."""
        p, opts = self.problem, self.opts
        rows = np.arange(p.n_heads)
        value = float(p.utility[rows, new].sum())
        if more:
            stop = self.watch.seconds() + _HEURISTIC_SECONDS
            if self.deadline is not None:
                stop = min(stop, _HEURISTIC_SHARE * self.deadline)
            enough = opts.bound - self.margin - value  # then the incumbent meets the Lagrangian bound
            for _ in range(_LOCAL_ROUNDS_FIRST, _LOCAL_ROUNDS, 8):  # 8 rounds at a time, then the clock
                if not more or self.watch.seconds() > stop:
                    break
                gain, more = K.local_search(opts.cost, opts.value, opts.offsets, opts.index, p.utility, p.grid,
                                            p.per_head, p.lo, new, self.spare, self.tau, 8, enough)
                enough -= gain
            value = float(p.utility[rows, new].sum())
        if value > self.best:
            self.best, self.best_idx = value, new

    def _heuristic(self, core):
        fixed_opt = self.opts.lp_opt.copy()
        small = core.first(_HEURISTIC_CORE)
        fixed_opt[small.heads] = -1
        stop = self.watch.seconds() + _HEURISTIC_SECONDS
        if self.deadline is not None:
            stop = min(stop, _HEURISTIC_SHARE * self.deadline)
        aims = [-np.inf]
        if self.step > 0:
            # First aim at the best value the bound allows (integral utilities): pruning
            # against it is far stronger, and the optimum often meets it.
            top = self.best + self.step * np.floor((self.global_bound - self.best + self.tau) / self.step)
            if top > self.best + self.margin:
                aims.insert(0, top)
        try:
            for aim in aims:
                self._core_dp(small, fixed_opt, record=False, deadline=stop, aim=aim)
                if self.best + self.margin > self.global_bound or self.watch.seconds() > stop:
                    return
        except ProblemTooLargeError:
            pass  # only a heuristic: the main search enforces the limit

    def _core_dp(self, core, fixed_opt, *, record, deadline=None, aim=-np.inf):
        """Search ``core`` with every other head at ``fixed_opt``; improves the incumbent.

        Returns ``(open_bound, dropped)``: ``open_bound`` is ``None`` when the search
        finished (no state left that can beat the incumbent), else the largest bound of the
        states left at the time limit; ``dropped`` is the largest bound of any state dropped.
        With ``record`` the layer statistics go to ``stats``; ``deadline`` (default: the
        solve's) is checked between calls of the compiled layer loop
        (:func:`budgetopt._kernels_exact.dp_layers`). With ``aim``, only allocations worth at
        least ``aim`` are looked for (a search that then finds none proves nothing).
        """
        deadline = self.deadline if deadline is None else deadline
        fixed_cost, fixed_value = K.fixed_part(fixed_opt, self.opts.cost, self.opts.value)
        cap = self.spare - fixed_cost
        if not len(core):
            if cap >= 0 and fixed_value > self.best:
                self.best = fixed_value
                self._adopt(core, fixed_opt, core.heads)
            return None, -np.inf
        setup = K.core_setup(core.cost, core.value, core.coff, cap)
        if cap < int(setup.suf_c[0]):
            return None, -np.inf
        layers = K.DPLayers(0, np.zeros(1, np.int64), np.zeros(1, np.float64), np.zeros(1, np.int64),
                            np.empty(64, np.int64), np.empty(64, np.int64), np.zeros(len(core) + 1, np.int64), 0)
        local = np.zeros(len(core), np.int64)  # the incumbent's core choice when the DP improves it
        ranks = K.NO_RANKS
        # The cardinality bound of the rest joins in the main search once the DP keeps
        # _RANK_AFTER_STATES states (cores of at most _RANK_MAX_OPTIONS options).
        ranks_due = record and len(core.cost) <= _RANK_MAX_OPTIONS
        level = max(self.best, aim - self.tau - self.margin)  # the DP looks for allocations above level + margin
        open_bound, all_dropped = float(self.lagrangian), -np.inf
        while layers.k < len(core):
            if deadline is not None and self.watch.seconds() > deadline:
                return max(open_bound, self.best), all_dropped
            if ranks_due and layers.states > _RANK_AFTER_STATES:
                ranks_due = False
                ranks = self._rank_bound(core, setup, layers.k, level, fixed_value) or ranks
                if self._proven():
                    return None, all_dropped
            search = K.DPSearch(level, local, self.global_bound, fixed_value, self.margin, EXACT_MAX_STATES,
                                _RANK_AFTER_STATES if ranks_due else -1, _LAYER_WORK)
            k0 = layers.k
            out = K.dp_layers(setup, ranks, layers, search)
            layers = out.layers
            all_dropped = max(all_dropped, out.dropped + fixed_value)
            if out.improved:
                self.best = level = out.best
                self._adopt(core, fixed_opt, local)
            self._layers_done(core, out, k0, record)
            if out.status != K.DP_MORE:
                return None, all_dropped
            if layers.k > k0:
                open_bound = out.live + fixed_value
        return None, all_dropped

    def _layers_done(self, core, out, k0, record):
        """After a call of the layer loop that started at layer ``k0`` and answered ``out``:
        the layer statistics (with ``record``), the refusal of a DP with too many states,
        what proved the incumbent optimal."""
        if record and out.layers.k > k0:
            self.stats.update(layers_done=int(out.layers.k), states=int(out.layers.states),
                              max_layer_states=max(self.stats["max_layer_states"], int(out.largest)))
        if out.status == K.DP_TOO_LARGE:
            self._too_many_states(core)
        if out.status == K.DP_PROVEN and record:
            self._proven()  # records what proved it

    def _rank_bound(self, core, setup, k, level, fixed_value):
        """The cardinality bound (see :func:`budgetopt._kernels_exact.cardinality_bound`) of
        the core with every other head fixed: it lowers ``global_bound``; returns the
        :class:`~budgetopt._kernels_exact.DPRanks` that bound the rest of the core from layer
        ``k`` on, or ``None`` when its rank multiplier is 0 (no better than the LP bound)."""
        c, v, coff, cap = core.cost, core.value, core.coff, setup.cap
        bound, mu, room = K.cardinality_bound(c, v, coff, cap, _GOLDEN_STEPS, level + self.margin - fixed_value)
        prev = self.stats["cardinality_bound"]
        prev = np.inf if prev is None else prev
        self.stats.update(cardinality_bound=float(min(prev, bound + fixed_value)), rank_limit=int(room))
        self.global_bound = min(self.global_bound, bound + fixed_value)
        if mu <= 0:
            return None
        pos, dc, dv, slope = K.rank_hulls(c, v, coff, mu)
        order = np.lexsort((pos, -slope))
        pos, dc, dv, slope = pos[order], dc[order], dv[order], slope[order]
        fc = np.empty(len(dc) + 1, np.int64)
        fv = np.empty(len(dc) + 1, np.float64)
        K.fenwick_build(dc, fc)
        K.fenwick_build(dv, fv)
        by_pos = np.argsort(pos, kind="stable")
        seg_off = _starts(np.bincount(pos, minlength=len(core)))
        K.fenwick_remove(fc, fv, dc, dv, by_pos[: seg_off[k]])  # heads already taken
        top = 1 << (max(len(dc), 1).bit_length() - 1)
        return K.DPRanks(mu, int(room), fc, fv, slope, top, dc, dv, by_pos, seg_off)

    def _too_many_states(self, core):
        raise ProblemTooLargeError(
            f'method="exact" would create more than {EXACT_MAX_STATES:,} DP states on this problem '
            f"({len(core)} core heads, {len(core.cost):,} core options); use time_limit to stop "
            'earlier with a bound, or method="greedy"'
        )

    def _adopt(self, core, fixed_opt, local):
        """Make the heads outside ``core`` at ``fixed_opt`` and the core heads at their local
        options ``local`` (one per position) the incumbent."""
        chosen = fixed_opt.copy()
        chosen[core.heads] = core.gopt[core.coff[:-1] + local]
        self.best_idx = self.opts.index[chosen]


class _Core:
    """The core heads in search order and their options: ``heads[k]`` is at position ``k``;
    its options are entries ``coff[k]:coff[k + 1]`` of ``gopt`` (indices into the kept
    options), ``cost`` and ``value`` (theirs, ascending cost)."""

    def __init__(self, heads, gopt, coff, cost, value):
        self.heads, self.gopt, self.coff, self.cost, self.value = heads, gopt, coff, cost, value

    def __len__(self):
        return len(self.heads)

    def first(self, n):
        """The core of the first ``n`` positions."""
        m = self.coff[min(n, len(self))]
        return _Core(self.heads[:n], self.gopt[:m], self.coff[: n + 1], self.cost[:m], self.value[:m])


class _Kept:
    """The options reduced-cost fixing kept (CSR, head after head; see
    :func:`budgetopt._kernels_exact.lagrangian_options`)."""

    def __init__(self, bound, dropped, offsets, index, cost, value, lp_opt):
        self.bound, self.dropped = float(bound), float(dropped)
        self.offsets, self.index, self.cost, self.value, self.lp_opt = offsets, index, cost, value, lp_opt

    def __len__(self):
        return len(self.index)
