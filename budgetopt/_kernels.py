"""Compiled kernels (numba): the shared conventions, hulls, weighted selection and the DP.

numba is imported only by the ``_kernels*`` modules, one per stage of the pipeline:

* :mod:`budgetopt._kernels_jit`: the compile settings and disk cache every kernel uses;
* this module: the one upper-hull kernel of every solver (:func:`_upper_hull`, whose
  ``rule`` keeps each caller's rounding of the collinearity test), every head's hull
  (:func:`upper_hulls`, :func:`hull_gaps`), the weighted selection of the greedy's threshold
  (:func:`_weighted_threshold`) and the exact dynamic programme (:func:`dp_solve`);
* :mod:`budgetopt._kernels_bracket`: the bracket that locates the threshold of one budget
  without every full hull;
* :mod:`budgetopt._kernels_greedy`: the greedy over hull segments, for one budget or a sweep,
  and the repair of the tokens the LP part leaves over;
* :mod:`budgetopt._kernels_profile`: ranking and prefix sums behind curves from scores;
* :mod:`budgetopt._kernels_request`: the per-request allocator.

Every kernel takes canonical arrays prepared by :mod:`budgetopt.problem`:

* ``utility``: float64 ``(H, K)``;
* ``grid``: int64 ``(G, K)`` with ``G == 1`` (shared) or ``G == H``; head ``h`` reads row
  ``h * per_head`` where ``per_head`` is 0 or 1;
* ``lo``, ``hi``: int64 ``(H,)``: head ``h`` may use grid indices ``lo[h] <= k < hi[h]``.

Hulls are packed head after head (CSR): head ``h``'s vertices are
``verts[offsets[h]:offsets[h+1]]`` (grid indices) with ``slopes`` of the segments that start
there. Slopes are always computed by :func:`_slope` from the same two vertices, so hull slopes
are strictly decreasing by construction and compare consistently everywhere.

Every kernel is compiled by :func:`budgetopt._kernels_jit.jit`, which caches it on disk in a
user cache directory (a new process does not recompile; an edit to any kernel module
recompiles all of them) or, where no location is writable, compiles it in memory.
"""

from __future__ import annotations

import numpy as np

from ._kernels_jit import jit


@jit(inline="always")
def _slope(u, g, a, b):
    return (u[b] - u[a]) / (g[b] - g[a])


@jit(inline="always")
def copy_into(dst, start, src, n):
    """``dst[start:start + n] = src[:n]``. Kernels copy arrays with this loop, never by
    slice assignment: numba compiles the shape-mismatch message of every slice assignment
    with its string formatting, seconds of the first call on a new installation."""
    for i in range(n):
        dst[start + i] = src[i]


# --- hull -------------------------------------------------------------------------------

# Pruning rounds repeat while a round drops a point, at most this many times.
_MAX_ROUNDS = 32

# How :func:`_upper_hull` decides that the middle one of three points ``a, b, c`` (left to
# right) is not a hull vertex. All three rules mean ``slope(a, b) <= slope(b, c)`` (collinear
# points dropped); they differ only in rounding, so each caller keeps the rule its answers
# have always come from.
#: Divided slopes, ``slope(a, b) <= slope(b, c)``: the greedy's hulls (the slopes come out
#: with the vertices).
HULL_SLOPES = 0
#: Cross product about ``b``: ``(u_b - u_a)(x_c - x_b) <= (u_c - u_b)(x_b - x_a)``: the
#: exact solver's hulls of its options.
HULL_CROSS_B = 1
#: Cross product about ``a``: ``(u_b - u_a)(x_c - x_a) <= (u_c - u_a)(x_b - x_a)``: the
#: per-request split's hulls.
HULL_CROSS_A = 2


@jit(inline="always")
def _upper_hull(u, g, out, n, rule, drop_descending, sl):
    """Upper concave hull of the points ``(g[k], u[k])`` for the candidates ``k`` in
    ``out[:n]`` (left to right, ``g`` nondecreasing over them): the one hull kernel of every
    solver. A monotone chain, in place: the hull's indices end up in ``out[:m]``; returns
    ``m``.

    Used by the greedy (:func:`_hull_one`, after its pruning rounds), the exact solver
    (:mod:`budgetopt._kernels_exact`) and the per-request split
    (:mod:`budgetopt._kernels_request`); the last two pass every point
    (:func:`every_point`). A repeated grid value keeps its best utility (the first of equal
    ones); collinear points are not vertices. ``rule`` is :data:`HULL_SLOPES`,
    :data:`HULL_CROSS_B` or :data:`HULL_CROSS_A` (how the test is rounded).

    With :data:`HULL_SLOPES`, ``sl[i]`` (float64 scratch of ``n`` entries) ends as the slope
    of the hull segment ending at vertex ``i`` (``1 <= i < m``): each stack entry keeps the
    slope of the segment that ends there, computed once, when the entry was pushed: it is
    the value :func:`_slope` gives for that pair, bit for bit (the same expression on the
    same two vertices), so each test divides once. With ``drop_descending`` (this rule
    only), trailing segments of negative slope are dropped, so the hull ends at the
    rightmost point of largest utility. The cross rules leave ``sl`` alone (it may be
    empty).
    """
    m = 0
    for j in range(n):
        k = out[j]
        x = g[k]
        y = u[k]
        if m > 0 and g[out[m - 1]] == x:
            if y > u[out[m - 1]]:
                m -= 1
            else:
                continue
        if rule == HULL_SLOPES:
            s = 0.0
            while m >= 2:
                b = out[m - 1]
                s = (y - u[b]) / (x - g[b])
                if sl[m - 1] <= s:
                    m -= 1
                else:
                    break
            if m == 1:  # no test against the first vertex was made
                b = out[0]
                s = (y - u[b]) / (x - g[b])
            sl[m] = s
        else:
            while m >= 2:
                a = out[m - 2]
                b = out[m - 1]
                if rule == HULL_CROSS_B:
                    drop = (u[b] - u[a]) * (x - g[b]) <= (y - u[b]) * (g[b] - g[a])
                else:
                    drop = (u[b] - u[a]) * (x - g[a]) <= (y - u[a]) * (g[b] - g[a])
                if drop:
                    m -= 1
                else:
                    break
        out[m] = k
        m += 1
    if drop_descending:
        while m >= 2 and sl[m - 1] < 0.0:
            m -= 1
    return m


@jit(inline="always")
def every_point(out, lo, hi):
    """Every index ``lo <= k < hi`` as a candidate of :func:`_upper_hull`; returns how many."""
    for i in range(hi - lo):
        out[i] = lo + i
    return hi - lo


@jit(inline="always")  # inlined: per-head call overhead shows on short heads
def _hull_one(u, g, lo, hi, out, xs, ys, unit, drop_descending):
    """The greedy's upper hull of points ``(g[k], u[k])``, ``lo <= k < hi``; returns its size.

    Two stages. (1) Branch-free pruning rounds (:func:`_prune`): a point strictly between
    its neighbours in x that lies on or below their chord cannot be a hull vertex, so every
    such point is dropped at once; rounds repeat until one drops nothing (at most
    ``_MAX_ROUNDS``). ``unit`` says the grid steps are all one token (the first round then
    compares successive increments only). (2) The hull kernel :func:`_upper_hull` over the
    survivors, rule :data:`HULL_SLOPES`. ``out``, ``xs`` and ``ys`` are scratch of at least
    ``hi - lo`` entries; the hull's grid indices end up in ``out[:m]`` and ``xs[i]`` is the
    slope of the hull segment ending at vertex ``i`` (``1 <= i < m``). With
    ``drop_descending``, trailing segments of negative slope are dropped.

    Every decision looks only at a point and its current neighbours, and the rounds stop
    on a rule that a sub-range reproduces (a round that changes nothing changes nothing
    again). So for two points ``a < b`` that every comparison keeps (see
    :func:`budgetopt._kernels_bracket.tilted_argmax`), the hull of ``lo = a, hi = b + 1`` is, bit for bit, the part
    of the full hull between them: the bracket (:mod:`budgetopt.bracket`) relies on this.
    """
    if hi - lo <= 2:
        n = every_point(out, lo, hi)
    else:
        n = _prune(u, g, lo, hi, out, xs, ys, unit)
    return _upper_hull(u, g, out, n, HULL_SLOPES, drop_descending, xs)


@jit(inline="always")
def _prune(u, g, lo, hi, out, xs, ys, unit):
    """The pruning rounds of :func:`_hull_one` over ``hi - lo > 2`` points: the candidates'
    grid indices into ``out[:n]`` (left to right); returns ``n``."""
    n = hi - lo
    # Candidates live in contiguous (x, y, index) arrays so rounds read memory in order.
    # First round reads the grid directly (the candidates are lo..hi-1).
    xs[0] = g[lo]
    ys[0] = u[lo]
    out[0] = lo
    kept = 1
    if unit:  # grid steps of one token: compare successive increments only
        before = u[lo + 1] - u[lo]
        for k in range(lo + 1, hi - 1):
            y = u[k]
            after = u[k + 1] - y
            xs[kept] = g[k]
            ys[kept] = y
            out[kept] = k
            kept += 1 - np.int64(before <= after)
            before = after
    else:
        for k in range(lo + 1, hi - 1):
            xa = g[k - 1]
            xb = g[k]
            xc = g[k + 1]
            drop = (xa < xb) & (xb < xc) & ((u[k] - u[k - 1]) * (xc - xb) <= (u[k + 1] - u[k]) * (xb - xa))
            xs[kept] = xb
            ys[kept] = u[k]
            out[kept] = k
            kept += 1 - np.int64(drop)
    xs[kept] = g[hi - 1]
    ys[kept] = u[hi - 1]
    out[kept] = hi - 1
    kept += 1
    rounds = 1
    while kept < n and rounds < _MAX_ROUNDS:
        n = kept
        rounds += 1
        kept = 1
        xa = xs[0]
        ya = ys[0]
        xb = xs[1]
        yb = ys[1]
        ib = out[1]
        for i in range(1, n - 1):
            xc = xs[i + 1]
            yc = ys[i + 1]
            ic = out[i + 1]
            drop = (xa < xb) & (xb < xc) & ((yb - ya) * (xc - xb) <= (yc - yb) * (xb - xa))
            xs[kept] = xb
            ys[kept] = yb
            out[kept] = ib
            kept += 1 - np.int64(drop)
            xa = xb
            ya = yb
            xb = xc
            yb = yc
            ib = ic
        xs[kept] = xs[n - 1]
        ys[kept] = ys[n - 1]
        out[kept] = out[n - 1]
        kept += 1
    return kept


@jit
def upper_hulls(utility, grid, per_head, lo, hi, unit, drop_descending):
    """Every head's upper hull, packed: ``(offsets, verts, slopes)``.

    Head ``h``'s vertices are the grid indices ``verts[offsets[h]:offsets[h+1]]``, left to
    right; ``slopes[i]`` is the slope of the segment that starts at vertex ``i`` (``-inf`` at
    a head's last vertex). Packing keeps later passes over the hulls in cache. ``unit[h]``
    says head ``h``'s grid steps are all one token (a cheaper first pruning round). O(H * K).
    """
    H, K = utility.shape
    scratch = np.empty(K, np.int64)
    xs = np.empty(K, np.float64)
    ys = np.empty(K, np.float64)
    offsets = np.empty(H + 1, np.int64)
    offsets[0] = 0
    cap = max(64, 16 * H)
    verts = np.empty(cap, np.int64)
    slopes = np.empty(cap, np.float64)
    for h in range(H):
        m = _hull_one(utility[h], grid[h * per_head], lo[h], hi[h], scratch, xs, ys, unit[h], drop_descending)
        start = offsets[h]
        if start + m > cap:
            cap = max(2 * cap, start + m)
            grown = np.empty(cap, np.int64)
            copy_into(grown, 0, verts, start)
            verts = grown
            grown_slopes = np.empty(cap, np.float64)
            copy_into(grown_slopes, 0, slopes, start)
            slopes = grown_slopes
        for i in range(m - 1):
            verts[start + i] = scratch[i]
            slopes[start + i] = xs[i + 1]  # the chain's slope of segment i
        verts[start + m - 1] = scratch[m - 1]
        slopes[start + m - 1] = -np.inf
        offsets[h + 1] = start + m
    return offsets, verts[: offsets[H]].copy(), slopes[: offsets[H]].copy()


@jit
def hull_gaps(utility, grid, per_head, lo, hi, offsets, verts, out):
    """Largest amount by which a head's points lie below its (full) upper hull.

    A repeated grid value is judged by its best utility. O(H * K).
    """
    H = utility.shape[0]
    for h in range(H):
        u = utility[h]
        g = grid[h * per_head]
        v = verts[offsets[h] : offsets[h + 1]]
        n = offsets[h + 1] - offsets[h]
        worst = 0.0
        j = 0
        k = lo[h]
        while k < hi[h]:
            x = g[k]
            best = u[k]
            while k + 1 < hi[h] and g[k + 1] == x:
                k += 1
                if u[k] > best:
                    best = u[k]
            while j + 1 < n and g[v[j + 1]] < x:
                j += 1
            if j + 1 < n:
                a = v[j]
                b = v[j + 1]
                hv = u[a] + (x - g[a]) * _slope(u, g, a, b)
                if x == g[b]:
                    hv = u[b]
            else:
                hv = u[v[j]]
            if hv - best > worst:
                worst = hv - best
            k += 1
        out[h] = worst


# --- selection: the greedy's threshold --------------------------------------------------

@jit(inline="always")
def _order_key(bits):
    """A uint64 whose order is the order of the float64 with these bits (-0.0 as 0.0)."""
    if bits == np.uint64(0x8000000000000000):
        bits = np.uint64(0)
    if bits >> np.uint64(63):
        return ~bits
    return bits | np.uint64(0x8000000000000000)


_RADIX_BITS = 12
# Radix passes run while more than this many entries remain: below it a quickselect alone
# is cheaper than passes over the histogram's 4,096 buckets (and its worst case stays
# small). With a -0.0 among the slopes, _RADIX_MIN_SIGNED_ZERO (see _weighted_threshold).
_RADIX_MIN = 1024
_RADIX_MIN_SIGNED_ZERO = 64
_NEGATIVE_ZERO = np.uint64(0x8000000000000000)


@jit
def _weighted_threshold(slopes, costs, budget):
    """Largest slope ``s`` with ``sum(costs[slopes >= s]) > budget`` (given the total is).

    Radix selection on the slopes' order-preserving bit patterns, 12 bits at a time from
    the top: a cost histogram per digit finds the bucket where the running cost (largest
    slopes first) passes ``budget``, and only that bucket's entries are kept. Once at most
    ``_RADIX_MIN`` remain (or from the start, when there are no more), a quickselect
    finishes. O(n); ``slopes`` and ``costs`` are scratch (reordered).

    The answer's value is fixed by its definition, and equal float64 values have equal
    bits except 0.0 and -0.0. So any correct selection returns the same bits, unless a
    -0.0 is present: then which zero comes back depends on the order the quickselect
    sees, and the radix passes run down to ``_RADIX_MIN_SIGNED_ZERO`` entries, as they
    always have, so that it is the zero returned before ``_RADIX_MIN`` was introduced.
    """
    n = slopes.shape[0]
    bits = slopes.view(np.uint64)
    small = _RADIX_MIN
    for i in range(n):
        if bits[i] == _NEGATIVE_ZERO:
            small = _RADIX_MIN_SIGNED_ZERO
            break
    if n <= small:
        return _quickselect_threshold(slopes, costs, budget)
    hist = np.zeros(1 << _RADIX_BITS, np.int64)
    mask = np.uint64((1 << _RADIX_BITS) - 1)
    shift = np.uint64(64 - _RADIX_BITS)
    for i in range(n):
        hist[(_order_key(bits[i]) >> shift) & mask] += costs[i]
    while n > small:
        b = (1 << _RADIX_BITS) - 1
        while hist[b] <= budget:  # buckets wholly above the threshold: all taken
            budget -= hist[b]
            b -= 1
        hist[:] = 0
        last = shift < np.uint64(_RADIX_BITS)
        below = np.uint64(0) if last else shift - np.uint64(_RADIX_BITS)
        m = 0
        for i in range(n):  # keep the threshold's bucket, in place; histogram its next digit
            key = _order_key(bits[i])
            if (key >> shift) & mask == b:
                slopes[m] = slopes[i]
                costs[m] = costs[i]
                hist[(key >> below) & mask] += costs[i]
                m += 1
        n = m
        if last:
            break
        shift = below
    return _quickselect_threshold(slopes[:n], costs[:n], budget)


@jit
def _quickselect_threshold(slopes, costs, budget):
    """:func:`_weighted_threshold` by quickselect with a three-way partition, in place:
    O(n) expected."""
    lo = 0
    hi = slopes.shape[0]
    while True:
        a = slopes[lo]
        b = slopes[(lo + hi) // 2]
        c = slopes[hi - 1]
        pivot = max(min(a, b), min(max(a, b), c))  # median of three
        # Dutch flag: [lo, i) > pivot, [i, j) == pivot, [k, hi) < pivot
        i = lo
        j = lo
        k = hi
        while j < k:
            sj = slopes[j]
            if sj > pivot:
                slopes[i], slopes[j] = slopes[j], slopes[i]
                costs[i], costs[j] = costs[j], costs[i]
                i += 1
                j += 1
            elif sj < pivot:
                k -= 1
                slopes[k], slopes[j] = slopes[j], slopes[k]
                costs[k], costs[j] = costs[j], costs[k]
            else:
                j += 1
        above = 0
        for t in range(lo, i):
            above += costs[t]
        if above > budget:
            hi = i
            continue
        equal = 0
        for t in range(i, j):
            equal += costs[t]
        if above + equal > budget:
            return pivot
        budget -= above + equal
        lo = j


# --- dp: the exact dynamic programme ----------------------------------------------------


@jit
def dp_solve(costs, values, offsets, budget, choice):
    """Exact multiple-choice knapsack by dynamic programming over budget units.

    Head ``h`` has options ``offsets[h] <= j < offsets[h+1]`` with integer ``costs`` (in
    units, ascending) and ``values``. ``best[b]`` is the best total with at most ``b`` units.
    ``choice[h, b]`` records the option taken (local index). Returns the best value.
    O(options * budget) time, O(heads * budget) memory for ``choice``.
    """
    H = offsets.shape[0] - 1
    B = budget + 1
    prev = np.zeros(B, np.float64)
    cur = np.empty(B, np.float64)
    for h in range(H):
        o0 = offsets[h]
        o1 = offsets[h + 1]
        for b in range(B):
            best = -np.inf
            arg = 0
            for j in range(o0, o1):
                c = costs[j]
                if c > b:
                    break
                val = prev[b - c] + values[j]
                if val > best:
                    best = val
                    arg = j - o0
            cur[b] = best
            choice[h, b] = arg
        prev, cur = cur, prev
    return prev[B - 1]
