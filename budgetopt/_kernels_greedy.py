"""Compiled kernels (numba) of the hull greedy: one budget or a sweep, then the repair.

The greedy takes hull segments (packed as :func:`budgetopt._kernels.upper_hulls` returns
them) by slope while they fit (:func:`greedy_solve`; a sweep walks one sorted order,
:func:`sweep_counts`, :func:`sweep_settle`); the repair spends the tokens the LP part leaves
over (:func:`blocked_move`, :func:`fill`, :func:`fill_free`). Array conventions as in
:mod:`budgetopt._kernels`.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._kernels import _JIT, _weighted_threshold


# --- greedy and sweep -------------------------------------------------------------------


@nb.njit(**_JIT)
def greedy_solve(utility, grid, per_head, offsets, verts, slopes, spare, idx):
    """Marginal-utility greedy over hull segments for ``spare`` tokens above the floors.

    Writes each head's chosen grid index to ``idx`` and returns
    ``(lp_value, threshold, blocked_head, left_over)``.

    The order "slope descending, ties by head" is never materialised: the slope of the
    segment that no longer fits is found by a weighted selection over all segments (O(S),
    :func:`_weighted_threshold`); segments steeper than it are all taken, and those of
    equal slope are taken in head order until one does not fit. The hulls may be pieces
    (``offsets``/``verts`` over sub-ranges, see :mod:`budgetopt.bracket`): tokens
    are counted from each piece's first vertex.
    """
    H = utility.shape[0]
    n_seg = offsets[H] - H
    seg_slopes = np.empty(n_seg, np.float64)
    seg_costs = np.empty(n_seg, np.int64)
    all_cost = 0
    t = 0
    for h in range(H):
        g = grid[h * per_head]
        for i in range(offsets[h], offsets[h + 1] - 1):
            c = g[verts[i + 1]] - g[verts[i]]
            seg_slopes[t] = slopes[i]
            seg_costs[t] = c
            all_cost += c
            t += 1
    cnt = np.empty(H, np.int64)
    if all_cost <= spare:
        for h in range(H):
            cnt[h] = offsets[h + 1] - 1
        return take_counts(utility, verts, cnt, 0.0, spare - all_cost, idx), 0.0, -1, spare - all_cost

    lam = _weighted_threshold(seg_slopes, seg_costs, spare)
    left = spare
    blocked = -1
    # Heads' segments steeper than lam are all taken.
    for h in range(H):
        g = grid[h * per_head]
        a = offsets[h]
        b = offsets[h + 1] - 1  # index of the last vertex
        while a < b:  # first vertex whose outgoing slope is <= lam
            mid = (a + b) // 2
            if slopes[mid] > lam:
                a = mid + 1
            else:
                b = mid
        cnt[h] = a
        left -= g[verts[a]] - g[verts[offsets[h]]]
    for h in range(H):
        c = cnt[h]
        if c < offsets[h + 1] - 1 and slopes[c] == lam:
            g = grid[h * per_head]
            cost = g[verts[c + 1]] - g[verts[c]]
            if cost <= left:
                cnt[h] = c + 1
                left -= cost
            else:
                blocked = h
                break
    return take_counts(utility, verts, cnt, lam, left, idx), lam, blocked, left


@nb.njit(**_JIT)
def take_counts(utility, verts, cnt, lam, left, idx):
    """Each head at hull vertex ``cnt[h]`` (a packed index): fill ``idx`` with their grid
    indices and return the LP value, ``sum of utilities + left * lam``. One place, so that
    :func:`greedy_solve` and :func:`sweep_counts` users get bit-identical values."""
    lp = 0.0
    for h in range(utility.shape[0]):
        idx[h] = verts[cnt[h]]
        lp += utility[h, idx[h]]
    return lp + left * lam


@nb.njit(**_JIT)
def sweep_counts(offsets, order_head, prefixes):
    """Vertex reached by each head after the first ``prefixes[i]`` segments of the greedy
    order, for ascending ``prefixes``: ``(len(prefixes), H)`` packed vertex indices.
    One walk along the order, O(S + n * H)."""
    H = offsets.shape[0] - 1
    out = np.empty((prefixes.shape[0], H), np.int64)
    cnt = offsets[:-1].copy()
    p = 0
    for i in range(prefixes.shape[0]):
        while p < prefixes[i]:
            cnt[order_head[p]] += 1
            p += 1
        out[i] = cnt
    return out


@nb.njit(**_JIT)
def sweep_settle(utility, grid, per_head, hi, verts, counts, lams, blocked, lefts, idx, lp):
    """For each row of a sweep: grid indices and LP value from ``counts`` (as
    :func:`take_counts`), then LU-KV's blocked-head move where it settles the row (the move
    spends every token left and the head's utility does not fall on the way, exactly the
    shortcut of ``_Greedy._repair``). Returns a bool array: rows still to be repaired."""
    n = counts.shape[0]
    open_rows = np.zeros(n, np.bool_)
    for i in range(n):
        lp[i] = take_counts(utility, verts, counts[i], lams[i], lefts[i], idx[i])
        if lefts[i] == 0:
            continue
        h = blocked[i]
        if h < 0:
            open_rows[i] = True
            continue
        start = idx[i, h]
        trial = idx[i].copy()
        rest = blocked_move(utility, grid, per_head, hi, trial, h, lefts[i])
        settled = rest == 0
        u = utility[h]
        for k in range(start, trial[h]):
            if u[k + 1] < u[k]:
                settled = False
                break
        if settled:
            idx[i, h] = trial[h]
        else:
            open_rows[i] = True
    return open_rows


# --- repair -----------------------------------------------------------------------------


@nb.njit(inline="always", **_JIT)
def _reach(u, g, cur, stop, left, free):
    """The grid index head row ``u``/``g`` moves to from ``cur`` within ``left`` more tokens
    (indices below ``stop``): with ``free``, the farthest point whose utility is at least
    ``u[cur]``; otherwise the first point of the largest utility (``cur`` if none gains)."""
    x0 = g[cur]
    best = cur
    for k in range(cur + 1, stop):
        if g[k] - x0 > left:
            break
        if (u[k] >= u[cur]) if free else (u[k] > u[best]):
            best = k
    return best


@nb.njit(**_JIT)
def blocked_move(utility, grid, per_head, hi, idx, h, left):
    """Move head ``h`` to its best grid point within ``left`` more tokens, if that gains.

    Among points of equal utility the one with fewest tokens is taken, so tokens that would
    buy nothing here stay available to other heads. Returns the tokens still left.
    """
    g = grid[h * per_head]
    cur = idx[h]
    best = _reach(utility[h], g, cur, hi[h], left, False)
    idx[h] = best
    return left - (g[best] - g[cur])


@nb.njit(**_JIT)
def fill(utility, grid, per_head, hi, idx, left, by_density):
    """Spend ``left`` tokens on positive-gain moves that fit, one move at a time.

    Each round takes, over all heads and all points within reach, the move with the largest
    gain per token (``by_density``) or the largest gain; ties go to the larger gain (resp.
    fewer tokens), then the lower head. Returns the tokens still left.
    """
    H = utility.shape[0]
    while left > 0:
        best_gain = 0.0
        best_cost = 1
        best_h = -1
        best_k = -1
        for h in range(H):
            g = grid[h * per_head]
            u = utility[h]
            cur = idx[h]
            x0 = g[cur]
            for k in range(cur + 1, hi[h]):
                cost = g[k] - x0
                if cost > left:
                    break
                gain = u[k] - u[cur]
                if gain <= 0.0 or cost == 0:
                    continue
                if best_h < 0:
                    better = True
                elif by_density:
                    # gain/cost vs best_gain/best_cost, compared without division
                    lhs = gain * best_cost
                    rhs = best_gain * cost
                    better = lhs > rhs or (lhs == rhs and gain > best_gain)
                else:
                    better = gain > best_gain or (gain == best_gain and cost < best_cost)
                if better:
                    best_gain = gain
                    best_cost = cost
                    best_h = h
                    best_k = k
        if best_h < 0:
            break
        left -= best_cost
        idx[best_h] = best_k
    return left


@nb.njit(**_JIT)
def fill_free(utility, grid, per_head, hi, idx, left):
    """Spend ``left`` tokens on moves that lose no utility, heads in order, each as far as it
    can reach. Used last, when no move gains, so that budgets are used up where it is free."""
    H = utility.shape[0]
    for h in range(H):
        if left <= 0:
            break
        g = grid[h * per_head]
        cur = idx[h]
        best = _reach(utility[h], g, cur, hi[h], left, True)
        left -= g[best] - g[cur]
        idx[h] = best
    return left
