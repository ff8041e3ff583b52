"""Compiled kernels (numba) of the exact solver in :mod:`budgetopt.exact`.

In pipeline order: fixing (the options that can still beat the incumbent), the core heads'
options and hulls (by :func:`budgetopt._kernels._upper_hull`, the hull kernel every solver
shares), the suffix bound, the DP layers. The DP's layers run in one loop,
:func:`dp_layers`, whose arguments and answer travel as named tuples (:class:`DPCore`,
:class:`DPRanks`, :class:`DPLayers`, :class:`DPSearch`, :class:`DPResult`) and whose
statuses are named (``DP_MORE``, ``DP_DONE``, ``DP_PROVEN``, ``DP_TOO_LARGE``), the same
constants on both sides.

Options are packed head after head (CSR): head ``h`` owns entries ``offsets[h] <= j <
offsets[h+1]`` of ``costs`` (int64 tokens above the head's first usable grid point,
ascending) and ``values`` (float64).

A *state* of the core dynamic programme is a partial choice for the first core heads: its
tokens ``w`` (int64) and utility ``p`` (float64). States of one layer are kept sorted by
``w`` with ``p`` strictly increasing (no state is dominated by a lighter one).

The *suffix bound* of a layer is the LP relaxation of the core heads not yet chosen, as a
function of the tokens ``r`` left for them: ``base_c`` tokens and ``base_v`` utility at
their lightest options, then hull segments in order of slope, held in two Fenwick trees
(costs ``fc``, gains ``fv``) from which a chosen head's segments are removed.
:func:`_suffix_lp` evaluates it in O(log segments); :func:`suffix_sums` lays it out as
running sums for a pointer walk.

Compiled functions are cached on disk where numba can write a cache (the same rule as
:mod:`budgetopt._kernels`), else compiled in memory.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from ._kernels import HULL_CROSS_B, _upper_hull, copy_into, every_point
from ._kernels_jit import jit

# -- the core DP's arguments and results, bundled (numba passes named tuples by value; the
# arrays inside are shared, so a kernel updates them in place) ------------------------------

#: One core, as :func:`core_setup` lays it out: the options (``opt_c``/``opt_v``, CSR
#: offsets ``coff``) and the ``cap`` tokens they share; the hull segments in the suffix
#: bound's order (``pos``, ``end``, ``dc``, ``dv``, ``slope``), grouped by position
#: (``by_pos``, ``seg_off``); the suffix bound's Fenwick trees (``fc``, ``fv``; ``top`` the
#: largest power of two not above their length) and running-sum scratch (``alive``,
#: ``cum_c``, ``cum_v``, ``cum_slope``, see :func:`suffix_sums`), changed in place as heads
#: are taken; ``suf_c``/``suf_v``, the lightest options of the heads from position ``k`` on;
#: ``log_s``, the bit length of the segment count (the cost of one Fenwick search).
DPCore = namedtuple("DPCore", "opt_c opt_v coff cap pos end dc dv slope by_pos seg_off fc fv top alive "
                              "cum_c cum_v cum_slope suf_c suf_v log_s")
#: The cardinality bound of the heads not yet taken (see :func:`expand_layer`): the rank
#: multiplier ``mu`` (``0.0``: no such bound, see :data:`NO_RANKS`), the rank room, the
#: Fenwick trees ``fc``/``fv`` of the hull segments of ``values - mu * rank`` (tokens ``dc``,
#: gains ``dv``, ``slope``, ``top``) grouped by position (``by_pos``, ``seg_off``).
DPRanks = namedtuple("DPRanks", "mu room fc fv slope top dc dv by_pos seg_off")



#: The DP's progress: the next layer ``k`` and its input states (tokens ``w``, utility
#: ``p``, rank sums ``n``), the committed layers' parents and choices (layer ``kk`` at
#: entries ``off[kk]:off[kk + 1]`` of ``par``/``ch``) and the states kept in all.
DPLayers = namedtuple("DPLayers", "k w p n par ch off states")
#: What :func:`dp_layers` searches for and when it hands back: allocations worth more than
#: ``best + margin`` (the incumbent; an improvement's core choice goes to ``best_local``),
#: ``fixed_value`` the utility of the heads outside the core, ``global_bound`` a bound on
#: every allocation, at most ``max_states`` states, a stop once more than ``rank_after >= 0``
#: states are kept (the cardinality bound is then due) or ``max_work`` extensions evaluated.
DPSearch = namedtuple("DPSearch", "best best_local global_bound fixed_value margin max_states rank_after max_work")
#: :func:`dp_layers`'s answer: a status (``DP_*``), the progress, the states in the largest
#: layer committed, the largest bound dropped and the last committed layer's largest live
#: bound (both without ``fixed_value``), the incumbent's value and whether it changed.
DPResult = namedtuple("DPResult", "status layers largest dropped live best improved")

#: :func:`dp_layers` handed back with layers left to do (the clock, or the cardinality bound, is due).
DP_MORE = 0
#: The search is over: a layer was left with no state, or the last layer is done.
DP_DONE = 1
#: A new incumbent meets ``global_bound``: proven optimal.
DP_PROVEN = 2
#: Layer ``k`` would keep more than ``max_states`` states (not committed).
DP_TOO_LARGE = 3
#: :func:`expand_layer`'s ``floor_at`` when more extensions pass the bound than it may keep.
_OVER_LIMIT = -2


#: The :class:`DPRanks` of no cardinality bound (``mu = 0``: its arrays are never read).
NO_RANKS = DPRanks(0.0, 0, np.zeros(1, np.int64), np.zeros(1, np.float64), np.zeros(0, np.float64), 0,
                   np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros(1, np.int64))


@jit
def lagrangian_options(utility, grid, per_head, lo, hi, lam, spare, target):
    """Reduced-cost fixing straight from the curves: the options that can still beat ``target``.

    An option is a distinct usable grid value of a head with the best utility among its
    equal grid points (the first such index); its cost is the tokens above the head's first
    usable point. With ``L_h = max (u - lam * cost)`` over the head's options, the
    Lagrangian bound is ``lam * spare + sum_h L_h`` and forcing an option lowers it by
    ``L_h - (u - lam * cost)``; options whose forced bound is below ``target`` are dropped.

    Returns ``(bound, dropped, offsets, index, cost, value, lp_opt)``: the bound, the
    largest forced bound among dropped options (``-inf`` if none), the kept options as CSR
    arrays (head after head, ascending cost) and, per head, the position in them of its
    lightest maximiser of ``u - lam * cost`` (always kept when ``bound >= target``; ``-1``
    otherwise). O(usable points), three passes, memory O(kept options).
    """
    H = utility.shape[0]
    best = np.empty(H)
    arg = np.empty(H, np.int64)
    total = lam * spare
    for h in range(H):
        g = grid[h * per_head]
        u = utility[h]
        g0 = g[lo[h]]
        m = -np.inf
        a = lo[h]
        for k in range(lo[h], hi[h]):
            r = u[k] - lam * (g[k] - g0)
            if r > m:
                m = r
                a = k
        best[h] = m
        arg[h] = a
        total += m
    dropped = -np.inf
    offsets = np.zeros(H + 1, np.int64)
    for h in range(H):
        g = grid[h * per_head]
        u = utility[h]
        g0 = g[lo[h]]
        n = 0
        b = lo[h]
        for k in range(lo[h] + 1, hi[h] + 1):
            if k == hi[h] or g[k] != g[k - 1]:
                forced = total - (best[h] - (u[b] - lam * (g[b] - g0)))
                if forced >= target:
                    n += 1
                elif forced > dropped:
                    dropped = forced
                b = k
            elif u[k] > u[b]:
                b = k
        offsets[h + 1] = offsets[h] + n
    index = np.empty(offsets[H], np.int64)
    cost = np.empty(offsets[H], np.int64)
    value = np.empty(offsets[H], np.float64)
    lp_opt = np.full(H, -1, np.int64)
    for h in range(H):
        g = grid[h * per_head]
        u = utility[h]
        g0 = g[lo[h]]
        j = offsets[h]
        b = lo[h]
        for k in range(lo[h] + 1, hi[h] + 1):
            if k == hi[h] or g[k] != g[k - 1]:
                forced = total - (best[h] - (u[b] - lam * (g[b] - g0)))
                if forced >= target:
                    if b == arg[h]:
                        lp_opt[h] = j
                    index[j] = b
                    cost[j] = g[b] - g0
                    value[j] = u[b]
                    j += 1
                b = k
            elif u[k] > u[b]:
                b = k
    return total, dropped, offsets, index, cost, value, lp_opt


@jit
def presolve(utility, grid, per_head, lo, hi, at, lam, spare, best, tau, step_limit, max_options, rounds):
    """The exact search's first steps in one call: :func:`value_step` (``step_limit``), the
    margin a better allocation must clear (``max(tau, step - tau)``), the options that can
    still beat ``best + margin`` (:func:`lagrangian_options`) and, when some can and there
    are at most ``max_options`` of them, ``rounds`` rounds of :func:`local_search` from the
    grid indices ``at`` (updated in place), stopping once the incumbent meets the bound.

    Returns ``(step, margin, gain, more, bound, dropped, offsets, index, cost, value,
    lp_opt)``: ``gain`` and ``more`` are the local search's (0 and False when it did not
    run), the rest :func:`lagrangian_options`'s.
    """
    step = value_step(utility, lo, hi, step_limit)
    margin = max(tau, step - tau)
    bound, dropped, offsets, index, cost, value, lp_opt = lagrangian_options(
        utility, grid, per_head, lo, hi, lam, spare, best + margin
    )
    gain = 0.0
    more = False
    if bound >= best + margin and index.shape[0] <= max_options:
        gain, more = local_search(cost, value, offsets, index, utility, grid, per_head, lo, at, spare, tau, rounds,
                                  bound - margin - best)
    return step, margin, gain, more, bound, dropped, offsets, index, cost, value, lp_opt


@jit
def reduced_cost_filter(costs, values, offsets, lam, spare, target, keep):
    """Lagrangian bound at ``lam`` and the options that can still beat ``target``.

    With ``L_h = max_j (values_j - lam * costs_j)`` the bound is
    ``lam * spare + sum_h L_h``; forcing option ``j`` of head ``h`` lowers it by
    ``L_h - (values_j - lam * costs_j)``. ``keep[j]`` is set where the forced bound is at
    least ``target``. Returns ``(bound, largest forced bound among the options dropped)``
    (``-inf`` when none is dropped). O(options).
    """
    H = offsets.shape[0] - 1
    best = np.empty(H)
    total = lam * spare
    for h in range(H):
        m = -np.inf
        for j in range(offsets[h], offsets[h + 1]):
            r = values[j] - lam * costs[j]
            if r > m:
                m = r
        best[h] = m
        total += m
    dropped = -np.inf
    for h in range(H):
        for j in range(offsets[h], offsets[h + 1]):
            forced = total - (best[h] - (values[j] - lam * costs[j]))
            if forced >= target:
                keep[j] = True
            else:
                keep[j] = False
                if forced > dropped:
                    dropped = forced
    return total, dropped


@jit
def undominated(costs, values, offsets, lam, keep):
    """Clear ``keep`` where a lighter kept option of the head has at least the utility.

    Returns ``(counts, closeness)`` per head: the options left, and the difference between
    the best and the second-best ``values - lam * costs`` among them (``inf`` with one)."""
    H = offsets.shape[0] - 1
    counts = np.zeros(H, np.int64)
    close = np.empty(H)
    for h in range(H):
        run = -np.inf
        first = -np.inf
        second = -np.inf
        for j in range(offsets[h], offsets[h + 1]):
            if not keep[j]:
                continue
            if values[j] <= run:
                keep[j] = False
                continue
            run = values[j]
            counts[h] += 1
            r = values[j] - lam * costs[j]
            if r > first:
                second = first
                first = r
            elif r > second:
                second = r
        close[h] = first - second
    return counts, close


@jit
def core_hulls(costs, values, offsets):
    """Upper concave hull of each core head's options (costs strictly increasing, values
    strictly increasing), as segments: ``(position, end option, tokens, gain, slope)``,
    position-major, left to right. The hulls are :func:`budgetopt._kernels._upper_hull`'s
    (rule ``HULL_CROSS_B``). O(options)."""
    n = costs.shape[0]
    rows = np.empty((4, n), np.int64)  # per segment: position, end option, tokens; the hull stack
    pos, end, dc, stack = rows[0], rows[1], rows[2], rows[3]
    dv = np.empty(n, np.float64)
    unused = dv[:0]
    k = 0
    for h in range(offsets.shape[0] - 1):
        n_points = every_point(stack, offsets[h], offsets[h + 1])
        top = _upper_hull(values, costs, stack, n_points, HULL_CROSS_B, False, unused)
        for i in range(top - 1):
            a = stack[i]
            b = stack[i + 1]
            pos[k] = h
            end[k] = b - offsets[h]
            dc[k] = costs[b] - costs[a]
            dv[k] = values[b] - values[a]
            k += 1
    slope = np.empty(k, np.float64)
    for i in range(k):
        slope[i] = dv[i] / dc[i]
    return pos[:k], end[:k], dc[:k], dv[:k], slope


@jit
def rank_hulls(costs, values, offsets, mu):
    """:func:`core_hulls` of the values ``values - mu * rank`` (rank: position within the
    head), keeping only segments of positive gain (the only ones an LP within a budget
    takes): ``(position, tokens, gain, slope)``. O(options)."""
    n = costs.shape[0]
    w = np.empty(n, np.float64)
    for h in range(offsets.shape[0] - 1):
        for j in range(offsets[h], offsets[h + 1]):
            w[j] = values[j] - mu * (j - offsets[h])
    pos, end, dc, dv, slope = core_hulls(costs, w, offsets)
    k = 0
    for i in range(pos.shape[0]):
        if dv[i] > 0:
            pos[k] = pos[i]
            dc[k] = dc[i]
            dv[k] = dv[i]
            slope[k] = slope[i]
            k += 1
    return pos[:k], dc[:k], dv[:k], slope[:k]


@jit
def fenwick_build(values, tree):
    """Fenwick tree (1-based ``tree``) of ``values``. O(n)."""
    n = values.shape[0]
    tree[0] = 0
    for i in range(n):
        tree[i + 1] = values[i]
    for i in range(1, n + 1):
        j = i + (i & -i)
        if j <= n:
            tree[j] += tree[i]


@jit(inline="always")
def _fenwick_drop(fc, fv, dc, dv, seg):
    """Zero segment ``seg`` (0-based) in the trees ``fc``/``fv`` of ``dc``/``dv``."""
    n = fc.shape[0] - 1
    i = seg + 1
    c = dc[seg]
    v = dv[seg]
    while i <= n:
        fc[i] -= c
        fv[i] -= v
        i += i & -i


@jit
def fenwick_remove(fc, fv, dc, dv, where):
    """Zero the segments ``where`` (0-based) in the trees ``fc``/``fv`` of ``dc``/``dv``."""
    for t in range(where.shape[0]):
        _fenwick_drop(fc, fv, dc, dv, where[t])


@jit
def suffix_sums(dc, dv, slope, alive, cum_c, cum_v, cum_slope):
    """Running sums of the costs and gains of the ``alive`` segments (in slope order), from
    0, and their slopes; returns how many are alive. O(segments)."""
    k = 0
    cum_c[0] = 0
    cum_v[0] = 0.0
    for i in range(dc.shape[0]):
        if alive[i]:
            cum_c[k + 1] = cum_c[k] + dc[i]
            cum_v[k + 1] = cum_v[k] + dv[i]
            cum_slope[k] = slope[i]
            k += 1
    return k


@jit(inline="always")
def _suffix_lp(r, base_c, base_v, fc, fv, slope, top):
    """``(LP value, value of its integral part)`` of the suffix with ``r`` tokens left;
    ``(-inf, -inf)`` when even the lightest options do not fit. ``fc``/``fv`` are Fenwick
    trees of the costs and gains of the segments in slope order (removed ones are zero);
    ``top`` is the largest power of two not above their length. O(log segments)."""
    r0 = r - base_c
    if r0 < 0:
        return -np.inf, -np.inf
    n = fc.shape[0] - 1
    pos = 0
    gain = 0.0
    step = top
    while step > 0:
        nxt = pos + step
        if nxt <= n and fc[nxt] <= r0:
            pos = nxt
            r0 -= fc[nxt]
            gain += fv[nxt]
        step >>= 1
    floor = base_v + gain
    if pos < n:  # segment ``pos`` (0-based) is the first that does not fit: it is alive
        return floor + r0 * slope[pos], floor
    return floor, floor


@jit
def expand_layer(w, p, opt_c, opt_v, cap, base_c, base_v, fc, fv, slope, top, target, max_candidates,
                 walk, cum_c, cum_v, cum_slope, n, mu, rank_room, fc2, fv2, slope2, top2):
    """One layer of the core DP: every state extended by every option of the next head.

    An extension ``(w + c, p + v)`` is kept when it fits in ``cap`` and its bound
    ``p + v + suffix_lp(cap - w - c)`` is at least ``target``; then the lighter of two with
    equal tokens is kept only if it has the larger utility, and a state only if its utility
    exceeds every lighter one's.

    Returns ``(w, p, parent, choice, dropped, floor_best, floor_at, live_bound)``: the new
    states, each one's parent state and option, the largest bound among extensions dropped by
    the bound (``-inf`` if none), the best integral completion value of a new state and which
    state it belongs to (``-1`` if none), and the largest bound of a new state. When more
    than ``max_candidates`` extensions pass the bound it returns at once with ``parent`` of
    length 0 and ``floor_at == _OVER_LIMIT``.

    With ``walk`` the suffix bound is read from its running sums instead of the Fenwick
    trees (``cum_c``/``cum_v`` from 0 over the segments left, ``cum_slope`` theirs; see
    :func:`suffix_sums`): for one option the states' tokens only grow, so one pointer walks
    down the sums, O(states + segments) per option instead of O(states x log segments).

    With ``mu > 0`` each state also carries ``n``, the sum of the ranks of its options
    (option ``j`` of a head has rank ``j``), and its bound is also at most
    ``p + v + mu * (rank_room - n - j) + suffix_lp2(cap - w - c)``, ``suffix_lp2`` the LP
    of the values ``v - mu * rank`` of the heads not yet taken (Fenwick trees ``fc2``,
    ``fv2`` of their hull segments of positive slope, ``slope2``, ``top2``): the
    cardinality bound of the rest (see :func:`cardinality_bound`), ``rank_room`` the
    largest rank sum of any allocation. The new states' rank sums are returned last.
    """
    n_states = w.shape[0]
    m = opt_c.shape[0]
    dropped = -np.inf
    count = n_states * m
    if count > max_candidates:  # count first, allocate only if within the limit
        count = 0
        for j in range(m):
            c = opt_c[j]
            v = opt_v[j]
            for s in range(n_states):
                ww = w[s] + c
                if ww > cap:
                    break  # states are sorted by w
                ub, fl = _suffix_lp(cap - ww, base_c, base_v, fc, fv, slope, top)
                if mu > 0:
                    ub2, fl2 = _suffix_lp(cap - ww, base_c, base_v, fc2, fv2, slope2, top2)
                    ub = min(ub, ub2 + mu * (rank_room - n[s] - j))
                if ub + p[s] + v >= target:
                    count += 1
        if count > max_candidates:
            empty_i = np.empty(0, np.int64)
            return empty_i, np.empty(0, np.float64), empty_i, empty_i, dropped, -np.inf, _OVER_LIMIT, -np.inf, empty_i
    cw = np.empty(count, np.int64)
    cp = np.empty(count, np.float64)
    cub = np.empty(count, np.float64)
    cfl = np.empty(count, np.float64)
    cpar = np.empty(count, np.int64)
    cch = np.empty(count, np.int64)
    k = 0
    n_seg = cum_slope.shape[0]
    for j in range(m):
        c = opt_c[j]
        v = opt_v[j]
        t = n_seg
        for s in range(n_states):
            ww = w[s] + c
            if ww > cap:
                break
            if walk:
                r0 = cap - ww - base_c
                if r0 < 0:
                    ub = -np.inf
                    fl = -np.inf
                else:
                    while cum_c[t] > r0:
                        t -= 1
                    fl = base_v + cum_v[t]
                    ub = fl + (r0 - cum_c[t]) * cum_slope[t] if t < n_seg else fl
            else:
                ub, fl = _suffix_lp(cap - ww, base_c, base_v, fc, fv, slope, top)
            if mu > 0:
                ub2, fl2 = _suffix_lp(cap - ww, base_c, base_v, fc2, fv2, slope2, top2)
                ub = min(ub, ub2 + mu * (rank_room - n[s] - j))
            pp = p[s] + v
            if ub + pp < target:
                if ub + pp > dropped:
                    dropped = ub + pp
            else:
                cw[k] = ww
                cp[k] = pp
                cub[k] = ub + pp
                cfl[k] = fl + pp
                cpar[k] = s
                cch[k] = j
                k += 1
    count = k
    order = np.argsort(cw[:count], kind="mergesort")
    # Pareto sweep: by tokens ascending; within equal tokens the largest utility (first such)
    keep = np.empty(count, np.int64)
    kept = 0
    last_p = -np.inf
    i = 0
    while i < count:
        a = order[i]
        b = a
        i += 1
        while i < count and cw[order[i]] == cw[a]:
            if cp[order[i]] > cp[b]:
                b = order[i]
            i += 1
        if cp[b] > last_p:
            keep[kept] = b
            kept += 1
            last_p = cp[b]
    nw = np.empty(kept, np.int64)
    np_ = np.empty(kept, np.float64)
    npar = np.empty(kept, np.int64)
    nch = np.empty(kept, np.int64)
    nn = np.zeros(kept, np.int64)
    floor_best = -np.inf
    floor_at = -1
    live = -np.inf
    for t in range(kept):
        b = keep[t]
        nw[t] = cw[b]
        np_[t] = cp[b]
        npar[t] = cpar[b]
        nch[t] = cch[b]
        nn[t] = n[cpar[b]] + cch[b]
        if cfl[b] > floor_best:
            floor_best = cfl[b]
            floor_at = t
        if cub[b] > live:
            live = cub[b]
    return nw, np_, npar, nch, dropped, floor_best, floor_at, live, nn


@jit
def prune_states(w, p, cap, base_c, base_v, fc, fv, slope, top, target, alive, n, mu, rank_room, fc2, fv2,
                 slope2, top2):
    """Mark the states whose bound is at least ``target``; returns ``(kept, largest bound
    among those dropped, largest bound among those kept)``. The bound is that of
    :func:`expand_layer` (with the cardinality bound when ``mu > 0``)."""
    dropped = -np.inf
    live = -np.inf
    kept = 0
    for s in range(w.shape[0]):
        ub, fl = _suffix_lp(cap - w[s], base_c, base_v, fc, fv, slope, top)
        if mu > 0:
            ub2, fl2 = _suffix_lp(cap - w[s], base_c, base_v, fc2, fv2, slope2, top2)
            ub = min(ub, ub2 + mu * (rank_room - n[s]))
        ub += p[s]
        if ub >= target:
            alive[s] = True
            kept += 1
            if ub > live:
                live = ub
        else:
            alive[s] = False
            if ub > dropped:
                dropped = ub
    return kept, dropped, live


@jit
def value_step(utility, lo, hi, limit):
    """The largest ``g`` such that every usable utility of a head differs from the head's
    first usable one by an integer multiple of ``g`` (then the values of any two
    allocations differ by a multiple of ``g``); ``0.0`` when a difference is not an
    integer, exceeds ``limit`` in magnitude (sums of such integers stay exact below 2**53)
    or every difference is zero. Stops at the first non-integer. O(usable points)."""
    g = 0
    for h in range(utility.shape[0]):
        base = utility[h, lo[h]]
        for k in range(lo[h] + 1, hi[h]):
            d = utility[h, k] - base
            if not (abs(d) <= limit) or d != np.floor(d):
                return 0.0
            if g == 1:
                continue  # gcd(1, a) = 1: only integrality is left to check
            a = np.int64(abs(d))
            while a != 0:  # g = gcd(g, a)
                g, a = a, g % a
    return float(g)


@jit
def local_search(costs, values, offsets, index, utility, grid, per_head, lo, at, spare, min_gain, max_rounds,
                 enough):
    """Improve an allocation by moving one head, or two heads at once, to kept options.

    Head ``h`` starts at grid index ``at[h]`` (its option may be outside the kept ones,
    whose grid indices are ``index``); ``spare`` is the budget above the first usable
    points. Each round applies the best move found among: one head to another of its
    options, or two different heads together (typically one up, one down), within the
    budget; rounds stop when no move gains more than ``min_gain``, once the total gain
    exceeds ``enough`` (the incumbent then meets a bound), or after ``max_rounds``. ``at``
    is updated in place.

    Returns ``(gain, more)``: the total gain, and whether the last round still moved (so
    that more rounds may gain more). One round is O(M log M) for M kept options.
    """
    H = offsets.shape[0] - 1
    M = offsets[H]
    cur_c = np.empty(H, np.int64)
    cur_v = np.empty(H, np.float64)
    used = 0
    for h in range(H):
        g = grid[h * per_head]
        cur_c[h] = g[at[h]] - g[lo[h]]
        cur_v[h] = utility[h, at[h]]
        used += cur_c[h]
    head = np.empty(M, np.int64)
    for h in range(H):
        for j in range(offsets[h], offsets[h + 1]):
            head[j] = h
    dc = np.empty(M, np.int64)
    dv = np.empty(M, np.float64)
    best1_v = np.empty(M, np.float64)  # prefix (by dc) best gain, its move,
    best1_j = np.empty(M, np.int64)
    best2_v = np.empty(M, np.float64)  # and the best of another head
    best2_j = np.empty(M, np.int64)
    total_gain = 0.0
    more = False
    for _ in range(max_rounds):
        more = False
        r = spare - used
        for j in range(M):
            h = head[j]
            dc[j] = costs[j] - cur_c[h]
            dv[j] = values[j] - cur_v[h] if index[j] != at[h] else -np.inf
        order = np.argsort(dc, kind="mergesort")
        v1 = -np.inf
        j1 = -1
        v2 = -np.inf
        j2 = -1
        for t in range(M):
            j = order[t]
            if dv[j] > v1:
                if j1 >= 0 and head[j1] != head[j]:
                    v2 = v1
                    j2 = j1
                v1 = dv[j]
                j1 = j
            elif dv[j] > v2 and head[j] != head[j1]:
                v2 = dv[j]
                j2 = j
            best1_v[t] = v1
            best1_j[t] = j1
            best2_v[t] = v2
            best2_j[t] = j2
        gain = min_gain
        move_a = -1
        move_b = -1
        sorted_dc = dc[order]
        for t in range(M):
            a = order[t]
            if dv[a] == -np.inf:
                continue
            if dc[a] <= r and dv[a] > gain:  # one head alone
                gain = dv[a]
                move_a = a
                move_b = -1
            # the best partner among moves of at most r - dc[a] tokens, of another head
            q = np.searchsorted(sorted_dc, r - dc[a], side="right") - 1
            if q < 0:
                continue
            b = best1_j[q]
            vb = best1_v[q]
            if b >= 0 and head[b] == head[a]:
                b = best2_j[q]
                vb = best2_v[q]
            if b >= 0 and dv[a] + vb > gain:
                gain = dv[a] + vb
                move_a = a
                move_b = b
        if move_a < 0:
            break
        more = True
        for j in (move_a, move_b):
            if j >= 0:
                h = head[j]
                used += costs[j] - cur_c[h]
                cur_c[h] = costs[j]
                cur_v[h] = values[j]
                at[h] = index[j]
        total_gain += gain
        if total_gain > enough:
            more = False
            break
    return total_gain, more


@jit
def _lp_fill(c, v, offsets, cap, hull, seg_dc, seg_dv, seg_slope, seg_dr):
    """LP relaxation of the multiple-choice knapsack over the CSR options ``(c, v)`` (costs
    ascending per head) with ``cap`` tokens: every head at its lightest option, then hull
    segments of positive slope by slope, the last one fractional (hulls by
    :func:`budgetopt._kernels._upper_hull`, rule ``HULL_CROSS_B``). Returns ``(value, rank)``:
    the LP value (``-inf`` when the lightest options do not fit) and the sum of the option
    ranks of that LP solution (fractional on the last segment; rank = position within the
    head). The other arguments are scratch arrays of the options' length."""
    H = offsets.shape[0] - 1
    base_c = 0
    base_v = 0.0
    k = 0
    for h in range(H):
        o0 = offsets[h]
        base_c += c[o0]
        base_v += v[o0]
        top = _upper_hull(v, c, hull, every_point(hull, o0, offsets[h + 1]), HULL_CROSS_B, False, seg_dv[:0])
        for i in range(top - 1):
            a = hull[i]
            b = hull[i + 1]
            if v[b] <= v[a]:
                break  # concave: the rest of the hull falls too
            seg_dc[k] = c[b] - c[a]
            seg_dv[k] = v[b] - v[a]
            seg_dr[k] = b - a
            seg_slope[k] = -(v[b] - v[a]) / (c[b] - c[a])
            k += 1
    r = cap - base_c
    if r < 0:
        return -np.inf, 0.0
    order = np.argsort(seg_slope[:k])
    total = base_v
    rank = 0.0
    for t in range(k):
        s = order[t]
        if seg_dc[s] <= r:
            r -= seg_dc[s]
            total += seg_dv[s]
            rank += seg_dr[s]
        else:
            total += seg_dv[s] * r / seg_dc[s]
            rank += seg_dr[s] * r / seg_dc[s]
            break
    return total, rank


@jit
def cardinality_bound(c, v, offsets, cap, iterations, enough):
    """An upper bound on the value of the multiple-choice knapsack over the CSR options
    ``(c, v)`` (per head: costs ascending, values strictly increasing) that also knows
    that option ranks are integers.

    With ``r`` the rank of an option within its head (0 for the lightest), no allocation
    has ``sum r > K``, ``K`` the floor of the LP maximum of ``sum r`` within ``cap``. For
    any ``mu >= 0``, ``mu * K`` plus the LP bound of the values ``v - mu * r`` bounds the
    value of every allocation; the bound is minimised over ``mu`` by golden-section search
    (the function is convex in ``mu``) with ``iterations`` steps, stopping early at a
    bound below ``enough``; none is made when the LP optimum at ``mu = 0`` already has a
    rank sum of at most ``K`` (the function cannot fall from there). Strongly correlated classes (each item worth its weight plus a
    constant) are where it beats the LP bound.

    Returns ``(bound, mu, K)``; ``bound`` is ``inf`` when the lightest options do not fit.
    """
    n = c.shape[0]
    H = offsets.shape[0] - 1
    rank = np.empty(n, np.float64)
    mu_hi = 0.0
    for h in range(H):
        for j in range(offsets[h], offsets[h + 1]):
            rank[j] = j - offsets[h]
            if j > offsets[h]:
                mu_hi = max(mu_hi, v[j] - v[j - 1])
    hull = np.empty(n, np.int64)
    seg_dc = np.empty(n, np.int64)
    seg_dv = np.empty(n, np.float64)
    seg_slope = np.empty(n, np.float64)
    seg_dr = np.empty(n, np.int64)
    lp_rank = _lp_fill(c, rank, offsets, cap, hull, seg_dc, seg_dv, seg_slope, seg_dr)[0]
    if lp_rank == -np.inf:
        return np.inf, 0.0, 0
    K = np.floor(lp_rank + 1e-7 * (1.0 + lp_rank))
    w = np.empty(n, np.float64)

    def g(mu):
        for j in range(n):
            w[j] = v[j] - mu * rank[j]
        value, _ = _lp_fill(c, w, offsets, cap, hull, seg_dc, seg_dv, seg_slope, seg_dr)
        return mu * K + value

    best, rank0 = _lp_fill(c, v, offsets, cap, hull, seg_dc, seg_dv, seg_slope, seg_dr)
    best_mu = 0.0
    if rank0 <= K:
        # The slope of the bound at mu = 0+ is K minus the smallest rank sum of an LP optimum,
        # at least K - rank0 >= 0: the function is convex, so mu = 0 is its minimum.
        return best, best_mu, np.int64(K)
    phi = 0.5 * (np.sqrt(5.0) - 1.0)
    a = 0.0
    b = mu_hi
    x1 = b - phi * (b - a)
    x2 = a + phi * (b - a)
    f1 = g(x1)
    f2 = g(x2)
    for _ in range(iterations):
        if f1 < best:
            best, best_mu = f1, x1
        if f2 < best:
            best, best_mu = f2, x2
        if best < enough:
            break
        if f1 <= f2:
            b = x2
            x2 = x1
            f2 = f1
            x1 = b - phi * (b - a)
            f1 = g(x1)
        else:
            a = x1
            x1 = x2
            f1 = f2
            x2 = a + phi * (b - a)
            f2 = g(x2)
    if f1 < best:
        best, best_mu = f1, x1
    if f2 < best:
        best, best_mu = f2, x2
    return best, best_mu, np.int64(K)


@jit
def _grow(a, need):
    """``a`` itself when it holds ``need`` entries, else a copy at least twice as long."""
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    copy_into(b, 0, a, a.shape[0])
    return b


@jit
def complete_choice(k, par, ch, t, layer_par, layer_ch, layer_off, room, pos, end, dc, out):
    """The core choice of state ``t`` of layer ``k`` completed by the integral part of its
    suffix LP, into ``out`` (local option per core position).

    ``par``/``ch`` are layer ``k``'s parents and choices; the earlier layers' are
    ``layer_par``/``layer_ch``, layer ``kk`` at entries ``layer_off[kk]:layer_off[kk + 1]``.
    The heads after ``k`` start at their lightest option and take whole hull segments
    (``pos``, ``end``, ``dc`` of :func:`core_setup`, in slope order) while their tokens fit
    in ``room``; a head's segments come in hull order, so its last one taken is its choice.
    """
    out[k] = ch[t]
    s = par[t]
    for kk in range(k - 1, -1, -1):
        i = layer_off[kk] + s
        out[kk] = layer_ch[i]
        s = layer_par[i]
    for kk in range(k + 1, out.shape[0]):
        out[kk] = 0
    used = 0
    for i in range(pos.shape[0]):
        if pos[i] > k:
            used += dc[i]
            if used > room:
                break
            out[pos[i]] = end[i]


def dp_layers(core, ranks, layers, search):
    """Layers ``layers.k, layers.k + 1, ...`` of the core DP in one call: the one DP layer loop.

    Per layer: the head's hull segments leave the suffix bound (and, with ``ranks.mu > 0``,
    the cardinality bound's trees); the bound is read by a pointer walk over running sums
    when that is cheaper than one Fenwick search per extension; :func:`expand_layer` keeps
    the extensions that can beat ``search.best + search.margin``. A layer whose integral
    completion beats ``search.best`` makes it the incumbent (its core choice written to
    ``search.best_local`` by :func:`complete_choice`) and is pruned against the new target
    (:func:`prune_states`). Each layer is then committed to ``layers.par``/``layers.ch``
    (grown when full) and ``layers.off``. ``core`` (a :class:`DPCore`), ``ranks``
    (:class:`DPRanks`), ``layers`` (:class:`DPLayers`) and ``search`` (:class:`DPSearch`)
    are defined above.

    It stops before a layer when more than ``search.rank_after >= 0`` states are kept or
    more than ``search.max_work`` extensions were evaluated in this call, so that the
    caller can start the cardinality bound or look at its clock (:data:`DP_MORE`); else at
    :data:`DP_DONE`, :data:`DP_PROVEN` or :data:`DP_TOO_LARGE`. Returns a :class:`DPResult`.

    The named tuples cross into and out of the compiled loop (:func:`_dp_layers`) as plain
    tuples and are named again on the other side: numba reads a named tuple's type field by
    field in Python at every call (about 8 microseconds for a :class:`DPCore`, a tenth of a
    small exact solve), a plain tuple's in C.
    """
    status, progress, largest, dropped, live, best, improved = _dp_layers(
        tuple(core), tuple(ranks), tuple(layers), tuple(search))
    return DPResult(status, DPLayers(*progress), largest, dropped, live, best, improved)


@jit
def _dp_layers(core_fields, ranks_fields, layers_fields, search_fields):
    """:func:`dp_layers`, compiled; its arguments are the fields of the named tuples, its
    answer the fields of a :class:`DPResult` (with those of its :class:`DPLayers`)."""
    core = DPCore(*core_fields)
    ranks = DPRanks(*ranks_fields)
    search = DPSearch(*search_fields)
    k, w, p, n, layer_par, layer_ch, layer_off, states = layers_fields
    best = search.best
    margin = search.margin
    fixed_value = search.fixed_value
    opt_c, opt_v, coff, cap = core.opt_c, core.opt_v, core.coff, core.cap
    suf_c, suf_v, fc, fv, slope, top = core.suf_c, core.suf_v, core.fc, core.fv, core.slope, core.top
    n_core = coff.shape[0] - 1
    n_seg = core.dc.shape[0]
    dropped = -np.inf
    live = -np.inf
    work = 0
    largest = 0
    improved = False
    status = DP_MORE
    while k < n_core:
        if search.rank_after >= 0 and states > search.rank_after:
            break
        if work > search.max_work:
            break
        _take_head(core, ranks, k)
        o0 = coff[k]
        o1 = coff[k + 1]
        n_left = n_seg - core.seg_off[k + 1]
        m = o1 - o0
        walk = m * (w.shape[0] + n_left) + n_left < m * w.shape[0] * core.log_s
        n_alive = 0
        if walk:
            n_alive = suffix_sums(core.dc, core.dv, slope, core.alive, core.cum_c, core.cum_v, core.cum_slope)
        work += m * w.shape[0]
        nw, nval, npar, nch, drop, fl_best, fl_at, lv, nn = expand_layer(
            w, p, opt_c[o0:o1], opt_v[o0:o1], cap, suf_c[k + 1], suf_v[k + 1], fc, fv, slope, top,
            best - fixed_value + margin, search.max_states - states, walk, core.cum_c[: n_alive + 1],
            core.cum_v[: n_alive + 1], core.cum_slope[:n_alive], n,
            ranks.mu, ranks.room, ranks.fc, ranks.fv, ranks.slope, ranks.top,
        )
        if fl_at == _OVER_LIMIT:
            status = DP_TOO_LARGE
            break
        dropped = max(dropped, drop)
        if fl_at >= 0 and fl_best + fixed_value > best:
            best = fl_best + fixed_value
            improved = True
            complete_choice(k, npar, nch, fl_at, layer_par, layer_ch, layer_off, cap - nw[fl_at] - suf_c[k + 1],
                            core.pos, core.end, core.dc, search.best_local)
            if best + margin > search.global_bound:
                status = DP_PROVEN
                break
            nw, nval, npar, nch, nn, drop, lv = _prune_layer(core, ranks, k, best - fixed_value + margin,
                                                             nw, nval, npar, nch, nn)
            dropped = max(dropped, drop)
        kept = nw.shape[0]
        layer_par, layer_ch = _commit(layer_par, layer_ch, layer_off, k, npar, nch)
        states += kept
        largest = max(largest, kept)
        k += 1
        live = lv
        w, p, n = nw, nval, nn
        if kept == 0:
            status = DP_DONE
            break
    if status == DP_MORE and k == n_core:
        status = DP_DONE
    return status, (k, w, p, n, layer_par, layer_ch, layer_off, states), largest, dropped, live, best, improved


@jit(inline="always")
def _prune_layer(core, ranks, k, target, w, p, par, ch, n):
    """The states of layer ``k`` (``w``, ``p``, ``par``, ``ch``, ``n``) whose bound reaches
    ``target`` (:func:`prune_states`), with the largest bound dropped and kept."""
    alive = np.empty(w.shape[0], np.bool_)
    _, dropped, live = prune_states(w, p, core.cap, core.suf_c[k + 1], core.suf_v[k + 1], core.fc, core.fv,
                                    core.slope, core.top, target, alive, n,
                                    ranks.mu, ranks.room, ranks.fc, ranks.fv, ranks.slope, ranks.top)
    return w[alive], p[alive], par[alive], ch[alive], n[alive], dropped, live


@jit(inline="always")
def _commit(layer_par, layer_ch, layer_off, k, par, ch):
    """Append layer ``k``'s parents and choices to the committed layers (grown when full);
    returns the two buffers."""
    kept = par.shape[0]
    used = layer_off[k]
    layer_par = _grow(layer_par, used + kept)
    layer_ch = _grow(layer_ch, used + kept)
    copy_into(layer_par, used, par, kept)
    copy_into(layer_ch, used, ch, kept)
    layer_off[k + 1] = used + kept
    return layer_par, layer_ch


@jit(inline="always")
def _take_head(core, ranks, k):
    """Remove the head at position ``k``'s hull segments from the suffix bound (and from the
    cardinality bound's trees when ``ranks.mu > 0``)."""
    for t in range(core.seg_off[k], core.seg_off[k + 1]):
        _fenwick_drop(core.fc, core.fv, core.dc, core.dv, core.by_pos[t])
        core.alive[core.by_pos[t]] = False
    if ranks.mu > 0:
        for t in range(ranks.seg_off[k], ranks.seg_off[k + 1]):
            _fenwick_drop(ranks.fc, ranks.fv, ranks.dc, ranks.dv, ranks.by_pos[t])


def core_setup(costs, values, offsets, cap):
    """Everything the core DP needs before its first layer, as a :class:`DPCore`: the hull segments
    of :func:`core_hulls` in the suffix bound's order (slope descending, ties by position),
    ``by_pos`` (those indices grouped by position, in order) with ``seg_off`` (CSR offsets
    of the groups), the Fenwick trees ``fc``/``fv`` of the segments' tokens and gains, and
    ``suf_c``/``suf_v``, the tokens and utility of the lightest options of the heads at
    positions ``k`` and after (``k = 0 .. heads``; running sums from the last head).

    The options are ``costs``/``values`` with CSR ``offsets``; ``cap`` tokens are theirs.
    The scratch of :func:`suffix_sums` starts with every segment alive.
    """
    return DPCore(*_core_setup(costs, values, offsets, cap))  # a plain tuple is faster to return


@jit
def _core_setup(costs, values, offsets, cap):
    """:func:`core_setup`, compiled: the fields of its :class:`DPCore`, in order."""
    pos0, end0, dc0, dv0, slope0 = core_hulls(costs, values, offsets)
    # core_hulls lists segments by position, so a stable sort by slope alone breaks ties
    # by position
    order = np.argsort(-slope0, kind="mergesort")
    pos, end, dc, dv, slope = pos0[order], end0[order], dc0[order], dv0[order], slope0[order]
    n_core = offsets.shape[0] - 1
    seg_off = np.zeros(n_core + 1, np.int64)
    for i in range(pos.shape[0]):
        seg_off[pos[i] + 1] += 1
    for h in range(n_core):
        seg_off[h + 1] += seg_off[h]
    by_pos = np.empty(pos.shape[0], np.int64)
    fill = seg_off[:-1].copy()
    for i in range(pos.shape[0]):
        by_pos[fill[pos[i]]] = i
        fill[pos[i]] += 1
    fc = np.empty(dc.shape[0] + 1, np.int64)
    fv = np.empty(dc.shape[0] + 1, np.float64)
    fenwick_build(dc, fc)
    fenwick_build(dv, fv)
    suf_c = np.zeros(n_core + 1, np.int64)
    suf_v = np.zeros(n_core + 1, np.float64)
    for h in range(n_core - 1, -1, -1):
        suf_c[h] = suf_c[h + 1] + costs[offsets[h]]
        suf_v[h] = suf_v[h + 1] + values[offsets[h]]
    n_seg = dc.shape[0]
    alive = np.ones(n_seg, np.bool_)
    cum_c = np.empty(n_seg + 1, np.int64)
    cum_v = np.empty(n_seg + 1, np.float64)
    cum_slope = np.empty(n_seg, np.float64)
    top = 1  # the largest power of two not above max(n_seg, 1)
    while 2 * top <= n_seg:
        top *= 2
    log_s = 0  # the bit length of max(n_seg, 2)
    bits = max(n_seg, 2)
    while bits > 0:
        bits >>= 1
        log_s += 1
    return (costs, values, offsets, cap, pos, end, dc, dv, slope, by_pos, seg_off, fc, fv, np.int64(top),
            alive, cum_c, cum_v, cum_slope, suf_c, suf_v, np.int64(log_s))


@jit
def fix(costs, values, offsets, lam, spare, target):
    """Reduced-cost fixing of the CSR options against ``target``, in one call.

    :func:`reduced_cost_filter`, then :func:`undominated`, then the layout the search
    needs. Returns ``(bound, dropped, open, fixed_opt, heads, gopt, coff)``: the Lagrangian
    bound and the largest forced bound among the options dropped; ``open`` is False when no
    allocation can reach ``target`` (the bound is below it, or some head keeps no option),
    and then the arrays are empty. Otherwise ``fixed_opt`` is the only option left to each
    head that keeps one (-1 for the others); ``heads`` are the others, closest first
    (smallest difference between their best and second-best ``values - lam * costs``,
    stable), and ``gopt``/``coff`` their options (ascending cost) concatenated in that
    order, with CSR offsets. O(options).
    """
    n_heads = offsets.shape[0] - 1
    keep = np.empty(costs.shape[0], np.bool_)
    none = np.empty(0, np.int64)
    bound, dropped = reduced_cost_filter(costs, values, offsets, lam, spare, target, keep)
    if bound < target:
        return bound, dropped, False, none, none, none, none
    counts, closeness = undominated(costs, values, offsets, lam, keep)
    fixed_opt = np.full(n_heads, -1, np.int64)
    n_core = 0
    for h in range(n_heads):
        if counts[h] == 0:
            return bound, dropped, False, none, none, none, none
        if counts[h] > 1:
            n_core += 1
            continue
        for j in range(offsets[h], offsets[h + 1]):
            if keep[j]:
                fixed_opt[h] = j
    heads = np.empty(n_core, np.int64)
    t = 0
    for h in range(n_heads):
        if counts[h] > 1:
            heads[t] = h
            t += 1
    heads = heads[np.argsort(closeness[heads], kind="mergesort")]
    coff = np.zeros(n_core + 1, np.int64)
    for i in range(n_core):
        coff[i + 1] = coff[i] + counts[heads[i]]
    gopt = np.empty(coff[n_core], np.int64)
    for i in range(n_core):
        t = coff[i]
        h = heads[i]
        for j in range(offsets[h], offsets[h + 1]):
            if keep[j]:
                gopt[t] = j
                t += 1
    return bound, dropped, True, fixed_opt, heads, gopt, coff


@jit
def fixed_part(fixed_opt, costs, values):
    """Tokens and utility of the options ``fixed_opt[h] >= 0`` together (heads at -1 left out)."""
    c = 0
    v = 0.0
    for h in range(fixed_opt.shape[0]):
        j = fixed_opt[h]
        if j >= 0:
            c += costs[j]
            v += values[j]
    return c, v
