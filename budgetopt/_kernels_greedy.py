"""Compiled kernels (numba) of the hull greedy: one budget or a sweep, then the repair.

The greedy takes hull segments (packed as :func:`budgetopt._kernels.upper_hulls` returns
them) by slope while they fit (:func:`greedy_solve`; a sweep walks one sorted order,
:func:`sweep_counts`, :func:`sweep_settle`); the repair spends the tokens the LP part leaves
over (:func:`blocked_move`, :func:`fill`, :func:`fill_free`). Array conventions as in
:mod:`budgetopt._kernels`. Loops over heads index the 2-D arrays directly rather than take
a row view per head: a view costs reference counting, which shows on short heads.
"""

from __future__ import annotations

import numpy as np

from ._kernels_jit import jit
from ._kernels import _weighted_threshold, copy_into, upper_hulls


# --- greedy and sweep -------------------------------------------------------------------


@jit
def solve_one(utility, grid, per_head, lo, hi, unit, spare, idx, budgets):
    """The greedy for one total, over every head's full hull, repair included, in one call.

    :func:`budgetopt._kernels.upper_hulls` (trailing falls dropped), :func:`greedy_solve`
    for ``spare`` tokens above the floors, then :func:`repair` of what it leaves over, as
    ``budgetopt.greedy._Greedy`` does them one by one; writes each head's grid index to
    ``idx`` and its tokens to ``budgets``, and returns ``(lp_value, threshold,
    blocked_head, left_after_lp, hull_segments, utility)``, the last the answer's total
    utility summed as numpy sums it (:func:`numpy_sum`). One call keeps small problems'
    per-call cost to one dispatch.
    """
    H = utility.shape[0]
    offsets, verts, slopes = upper_hulls(utility, grid, per_head, lo, hi, unit, True)
    lp, lam, blocked, left = greedy_solve(utility, grid, per_head, offsets, verts, slopes, spare, idx)
    if left > 0:
        repair(utility, grid, per_head, hi, idx, blocked, left)
    values = np.empty(H, np.float64)
    for h in range(H):
        budgets[h] = grid[h * per_head, idx[h]]
        values[h] = utility[h, idx[h]]
    return lp, lam, blocked, left, verts.shape[0] - H, numpy_sum(values)


@jit
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
        r = h * per_head
        for i in range(offsets[h], offsets[h + 1] - 1):
            c = grid[r, verts[i + 1]] - grid[r, verts[i]]
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
        r = h * per_head
        a = offsets[h]
        b = offsets[h + 1] - 1  # index of the last vertex
        while a < b:  # first vertex whose outgoing slope is <= lam
            mid = (a + b) // 2
            if slopes[mid] > lam:
                a = mid + 1
            else:
                b = mid
        cnt[h] = a
        left -= grid[r, verts[a]] - grid[r, verts[offsets[h]]]
    for h in range(H):
        c = cnt[h]
        if c < offsets[h + 1] - 1 and slopes[c] == lam:
            r = h * per_head
            cost = grid[r, verts[c + 1]] - grid[r, verts[c]]
            if cost <= left:
                cnt[h] = c + 1
                left -= cost
            else:
                blocked = h
                break
    return take_counts(utility, verts, cnt, lam, left, idx), lam, blocked, left


@jit
def take_counts(utility, verts, cnt, lam, left, idx):
    """Each head at hull vertex ``cnt[h]`` (a packed index): fill ``idx`` with their grid
    indices and return the LP value, ``sum of utilities + left * lam``. One place, so that
    :func:`greedy_solve` and :func:`sweep_counts` users get bit-identical values."""
    lp = 0.0
    for h in range(utility.shape[0]):
        idx[h] = verts[cnt[h]]
        lp += utility[h, idx[h]]
    return lp + left * lam


@jit
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


@jit
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


@jit(inline="always")
def _reach(utility, grid, h, r, cur, stop, left, free):
    """The grid index head ``h`` (grid row ``r``) moves to from ``cur`` within ``left`` more
    tokens (indices below ``stop``): with ``free``, the farthest point whose utility is at
    least ``utility[h, cur]``; otherwise the first point of the largest utility (``cur`` if
    none gains)."""
    x0 = grid[r, cur]
    u0 = utility[h, cur]
    best = cur
    for k in range(cur + 1, stop):
        if grid[r, k] - x0 > left:
            break
        if (utility[h, k] >= u0) if free else (utility[h, k] > utility[h, best]):
            best = k
    return best


@jit
def blocked_move(utility, grid, per_head, hi, idx, h, left):
    """Move head ``h`` to its best grid point within ``left`` more tokens, if that gains.

    Among points of equal utility the one with fewest tokens is taken, so tokens that would
    buy nothing here stay available to other heads. Returns the tokens still left.
    """
    r = h * per_head
    cur = idx[h]
    best = _reach(utility, grid, h, r, cur, hi[h], left, False)
    idx[h] = best
    return left - (grid[r, best] - grid[r, cur])


@jit
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
            r = h * per_head
            cur = idx[h]
            x0 = grid[r, cur]
            u0 = utility[h, cur]
            for k in range(cur + 1, hi[h]):
                cost = grid[r, k] - x0
                if cost > left:
                    break
                gain = utility[h, k] - u0
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


@jit
def fill_free(utility, grid, per_head, hi, idx, left):
    """Spend ``left`` tokens on moves that lose no utility, heads in order, each as far as it
    can reach. Used last, when no move gains, so that budgets are used up where it is free."""
    H = utility.shape[0]
    for h in range(H):
        if left <= 0:
            break
        r = h * per_head
        cur = idx[h]
        best = _reach(utility, grid, h, r, cur, hi[h], left, True)
        left -= grid[r, best] - grid[r, cur]
        idx[h] = best
    return left


# --- the whole repair in one call -------------------------------------------------------

_PW_BLOCK = 128  # numpy's PW_BLOCKSIZE


@jit
def _pairwise_block(a, start, n):
    """numpy's pairwise summation of ``a[start:start + n]``, ``n <= 128``: a plain running
    sum from ``0.0`` below 8 entries; otherwise eight running sums (entries ``j mod 8``)
    over the largest multiple of 8, combined as ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) +
    (r6 + r7))``, then the rest added one by one."""
    if n < 8:
        res = 0.0
        for i in range(start, start + n):
            res += a[i]
        return res
    r0 = a[start]
    r1 = a[start + 1]
    r2 = a[start + 2]
    r3 = a[start + 3]
    r4 = a[start + 4]
    r5 = a[start + 5]
    r6 = a[start + 6]
    r7 = a[start + 7]
    i = 8
    stop = n - n % 8
    while i < stop:
        j = start + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[start + i]
        i += 1
    return res


@jit(inline="always")
def _first_half(n):
    """Where numpy splits ``n > 128`` entries: half, rounded down to a multiple of 8."""
    h = n // 2
    return h - h % 8


@jit
def _pairwise(a):
    """numpy's pairwise summation of all of ``a``: blocks of up to 128 entries as
    :func:`_pairwise_block`; above 128, the sum of the first :func:`_first_half` entries
    plus the sum of the rest, each summed alike. An explicit stack stands in for the
    recursion (numba cannot cache recursive functions)."""
    n = a.shape[0]
    starts = np.empty(64, np.int64)  # the halving depth is below 64
    sizes = np.empty(64, np.int64)
    phase = np.zeros(64, np.int64)  # 0: sum the first half next, 1: the second, 2: add them
    first = np.empty(64, np.float64)
    top = 0
    starts[0] = 0
    sizes[0] = n
    ret = 0.0
    while True:
        s = starts[top]
        m = sizes[top]
        if m <= _PW_BLOCK or phase[top] == 2:
            ret = _pairwise_block(a, s, m) if m <= _PW_BLOCK else first[top] + ret
            top -= 1
            if top < 0:
                return ret
        elif phase[top] == 0:
            phase[top] = 1
            top += 1
            starts[top] = s
            sizes[top] = _first_half(m)
            phase[top] = 0
        else:
            first[top] = ret
            phase[top] = 2
            h = _first_half(m)
            top += 1
            starts[top] = s + h
            sizes[top] = m - h
            phase[top] = 0


@jit
def numpy_sum(a):
    """``a.sum()`` of a contiguous float64 vector, bit for bit as numpy computes it: the
    reduction's identity ``0.0`` plus the pairwise sum of all entries (:func:`_pairwise`).
    The repair compares totals of utility, and a near-tie must fall as it always has.

    Why not a plain loop: numpy's sum cannot be called inside a compiled kernel, and a plain
    running sum ranks some near-tied trials the other way, which changes budgets
    (``tests/test_greedy_repair.py::test_near_ties_fall_as_numpy_sums_them`` finds such
    repairs); answers stay bit for bit, so this stays."""
    return 0.0 + _pairwise(a)


@jit
def repair(utility, grid, per_head, hi, idx, blocked, left):
    """Spend the ``left`` tokens the LP part left over, in place on ``idx``; returns the
    tokens still left. The rule is ``budgetopt.greedy._Greedy``'s (LU-KV's blocked-head
    move when it settles everything, else the best of up to four fills, then free moves);
    this is one compiled call of it.

    The trials' total utilities are compared as numpy sums them (:func:`numpy_sum`, the
    same pairwise order, so the same rounding): the choice between near-equal trials is
    the one a ``utility[rows, trial].sum()`` per trial makes.
    """
    H = utility.shape[0]
    moved = -1
    after_move = left
    if blocked >= 0:
        start = idx[blocked]
        trial = idx.copy()
        after_move = blocked_move(utility, grid, per_head, hi, trial, blocked, left)
        moved = trial[blocked]
        if after_move == 0:
            u = utility[blocked]
            settled = True
            for k in range(start, moved):
                if u[k + 1] < u[k]:
                    settled = False
                    break
            if settled:
                idx[blocked] = moved
                return 0
    trial = np.empty(H, np.int64)
    best = np.empty(H, np.int64)
    values = np.empty(H, np.float64)
    best_value = 0.0
    best_rest = left
    found = False
    for blocked_first in (True, False):
        if blocked_first and blocked < 0:
            continue
        for by_density in (True, False):
            copy_into(trial, 0, idx, H)
            rest = left
            if blocked_first:
                trial[blocked] = moved
                rest = after_move
            rest = fill(utility, grid, per_head, hi, trial, rest, by_density)
            for h in range(H):
                values[h] = utility[h, trial[h]]
            value = numpy_sum(values)
            if not found or value > best_value:
                found = True
                best_value = value
                copy_into(best, 0, trial, H)
                best_rest = rest
    copy_into(idx, 0, best, H)
    return fill_free(utility, grid, per_head, hi, idx, best_rest)
