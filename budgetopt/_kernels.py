"""Compiled kernels (numba). The only module that imports numba.

Every kernel takes canonical arrays prepared by :mod:`budgetopt.problem`:

* ``utility``: float64 ``(H, K)``;
* ``grid``: int64 ``(G, K)`` with ``G == 1`` (shared) or ``G == H``; head ``h`` reads row
  ``h * per_head`` where ``per_head`` is 0 or 1;
* ``lo``, ``hi``: int64 ``(H,)``: head ``h`` may use grid indices ``lo[h] <= k < hi[h]``.

Hulls are packed head after head (CSR): head ``h``'s vertices are
``verts[offsets[h]:offsets[h+1]]`` (grid indices) with ``slopes`` of the segments that start
there. Slopes are always computed by :func:`_slope` from the same two vertices, so hull slopes
are strictly decreasing by construction and compare consistently everywhere.

Compiled functions are cached on disk (``cache=True``): a new process does not recompile.
The cache is only an optimisation: where numba finds no writable cache location (a read-only
installation with a read-only home and no usable ``NUMBA_CACHE_DIR``), the kernels are
compiled in memory instead, once per process.
"""

from __future__ import annotations

import numba as nb
import numpy as np


def _disk_cache_usable():
    """Whether numba can cache this module's functions on disk, by numba's own rule: asking
    for ``cache=True`` raises RuntimeError when none of its cache locators (``NUMBA_CACHE_DIR``,
    the source tree's ``__pycache__``, the user-wide cache directory) is writable."""
    try:
        nb.njit(cache=True)(_cache_probe)
    except RuntimeError:
        return False
    return True


def _cache_probe():  # pragma: no cover - never called, only decorated
    return 0


_JIT = dict(cache=_disk_cache_usable(), nogil=True)


@nb.njit(inline="always", **_JIT)
def _slope(u, g, a, b):
    return (u[b] - u[a]) / (g[b] - g[a])


# Pruning rounds repeat while a round drops a point, at most this many times.
_MAX_ROUNDS = 32


@nb.njit(**_JIT)
def _hull_one(u, g, lo, hi, out, xs, ys, unit, drop_descending):
    """Upper concave hull of points ``(g[k], u[k])``, ``lo <= k < hi``; returns its size.

    Two stages. (1) Branch-free pruning rounds: a point strictly between its neighbours in
    x that lies on or below their chord cannot be a hull vertex, so every such point is
    dropped at once; rounds repeat until one drops nothing (at most ``_MAX_ROUNDS``).
    (2) Monotone chain, left to right, over the survivors. ``out``, ``xs`` and ``ys`` are
    scratch of at least ``hi - lo`` entries; the hull's grid indices end up in ``out[:m]``.
    A repeated grid value keeps its best utility. With ``drop_descending``, trailing
    segments of negative slope are dropped, so the hull ends at the rightmost point of
    largest utility.

    Every decision looks only at a point and its current neighbours, and the rounds stop
    on a rule that a sub-range reproduces (a round that changes nothing changes nothing
    again). So for two points ``a < b`` that every comparison keeps (see
    :func:`tilted_argmax`), the hull of ``lo = a, hi = b + 1`` is, bit for bit, the part
    of the full hull between them: :func:`budgetopt.greedy` relies on this.
    """
    n = hi - lo
    if n <= 2:
        for i in range(n):
            out[i] = lo + i
    else:
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
        n = kept
    return _chain(u, g, out, n, drop_descending)


@nb.njit(**_JIT)
def _chain(u, g, out, n, drop_descending):
    """Monotone chain over the candidates ``out[:n]`` (grid indices, left to right), in
    place; returns the hull's size. See :func:`_hull_one`."""
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
        while m >= 2:
            a = out[m - 2]
            b = out[m - 1]
            if _slope(u, g, a, b) <= (y - u[b]) / (x - g[b]):
                m -= 1
            else:
                break
        out[m] = k
        m += 1
    if drop_descending:
        while m >= 2 and _slope(u, g, out[m - 2], out[m - 1]) < 0.0:
            m -= 1
    return m


@nb.njit(**_JIT)
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
    for h in range(H):
        m = _hull_one(utility[h], grid[h * per_head], lo[h], hi[h], scratch, xs, ys, unit[h], drop_descending)
        start = offsets[h]
        if start + m > cap:
            cap = max(2 * cap, start + m)
            grown = np.empty(cap, np.int64)
            grown[:start] = verts[:start]
            verts = grown
        verts[start : start + m] = scratch[:m]
        offsets[h + 1] = start + m
    verts = verts[: offsets[H]].copy()
    slopes = np.empty(offsets[H], np.float64)
    for h in range(H):
        u = utility[h]
        g = grid[h * per_head]
        for i in range(offsets[h], offsets[h + 1] - 1):
            slopes[i] = _slope(u, g, verts[i], verts[i + 1])
        slopes[offsets[h + 1] - 1] = -np.inf
    return offsets, verts, slopes


# -- the greedy's bracket: hulls only where the threshold can fall ---------------------------
#
# For one total budget the LP threshold is found without every head's full hull. A
# geometric sample of each head gives an estimate ``sigma`` (:func:`sample_threshold`); one
# pass stores, per chunk of ``_CHUNK`` grid points, the largest ``u - sigma * g``
# (:func:`tilted_chunk_max`); from those bounds the exact maximiser of ``u - lam * g`` is
# found for multipliers just above and just below the threshold by scanning a few chunks
# (:func:`tilted_argmax`). Such a maximiser is a hull vertex; when no other point comes
# within rounding of it, every hull computation keeps it (see :func:`_hull_one`), so the
# hull between the two maximisers is exactly the part of the full hull where the greedy
# can stop. ``budgetopt.greedy._bracketed`` puts these together.

_CHUNK = 32
_EPS = 2.220446049250313e-16


@nb.njit(**_JIT)
def sample_threshold(utility, grid, per_head, lo, hi, octave_shift, head_step, spare):
    """Greedy threshold of the problem cut down to a geometric sample of every
    ``head_step``-th head's usable grid indices, for its share of ``spare`` tokens; 0.0
    when the sampled hulls fit in that share.

    The sample steps by ``d >> octave_shift`` (at least 1), ``d`` the distance to the
    nearer end of the head's range: dense at both ends, about ``2 ** octave_shift`` points
    per doubling in between. A head's point at a given slope is then located to within a
    fixed fraction of its distance from either end, so the estimate holds at small and
    large budgets alike. The sampled heads' share of ``spare`` is in proportion to their
    token ranges. O((H / head_step) * 2 ** octave_shift * log K). The sampled hulls use a
    monotone chain with cross-multiplied tests (no division): only an estimate is wanted.
    """
    H, K = utility.shape
    m = K + 1
    pos = np.empty(m, np.int64)
    xs = np.empty(m, np.float64)
    ys = np.empty(m, np.float64)
    seg_slopes = np.empty(0, np.float64)
    seg_costs = np.empty(0, np.int64)
    t = 0
    all_cost = 0
    if head_step > 1:
        whole = 0.0
        part = 0.0
        for h in range(H):
            g = grid[h * per_head]
            r = np.float64(g[hi[h] - 1] - g[lo[h]])
            whole += r
            if h % head_step == 0:
                part += r
        if whole > 0.0:
            spare = np.int64(spare * (part / whole))
    for h in range(0, H, head_step):
        u = utility[h]
        g = grid[h * per_head]
        a = lo[h]
        last = hi[h] - 1
        n = 0
        k = a
        while k < last:
            pos[n] = k
            n += 1
            k += max(1, min(k - a, last - k) >> octave_shift)
        pos[n] = last
        n += 1
        for i in range(n):  # gather first: independent loads, so cache misses overlap
            xs[i] = np.float64(g[pos[i]])
            ys[i] = u[pos[i]]
        s = 0
        for i in range(n):
            x = xs[i]
            y = ys[i]
            if s > 0 and xs[s - 1] == x:  # repeated grid value: keep the best utility
                if y <= ys[s - 1]:
                    continue
                s -= 1
            while s >= 2 and (ys[s - 1] - ys[s - 2]) * (x - xs[s - 1]) <= (y - ys[s - 1]) * (xs[s - 1] - xs[s - 2]):
                s -= 1
            xs[s] = x
            ys[s] = y
            s += 1
        while s >= 2 and ys[s - 1] < ys[s - 2]:
            s -= 1
        if t + s > seg_slopes.shape[0]:
            grown = max(2 * seg_slopes.shape[0], t + s, 1024)
            seg_slopes = _grow(seg_slopes, grown, t)
            seg_costs = _grow(seg_costs, grown, t)
        for i in range(s - 1):
            c = np.int64(xs[i + 1] - xs[i])
            seg_slopes[t] = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
            seg_costs[t] = c
            all_cost += c
            t += 1
    if all_cost <= spare:
        return 0.0
    return _weighted_threshold(seg_slopes[:t], seg_costs[:t], spare)


@nb.njit(**_JIT)
def _grow(arr, size, keep):
    out = np.empty(size, arr.dtype)
    out[:keep] = arr[:keep]
    return out


@nb.njit(fastmath=True, **_JIT)
def tilted_chunk_max(utility, grid, per_head, lo, hi, sigma, out):
    """``out[h, j]``: the largest ``u[k] - sigma * g[k]`` over chunk ``j`` of head ``h``
    (grid indices ``lo[h] + _CHUNK * j`` onwards, within ``hi[h]``). Computed with relaxed
    floating point: these are bounds, used with a margin (:func:`tilted_argmax`). O(H * K),
    one pass."""
    H, K = utility.shape
    xf = np.empty(K, np.float64)
    if per_head == 0:
        for k in range(K):
            xf[k] = grid[0, k]
    for h in range(H):
        if per_head:
            for k in range(K):
                xf[k] = grid[h, k]
        # rows sliced to the head's range (indexing from zero lets the loops unroll well)
        u = utility[h, lo[h] : hi[h]]
        x = xf[lo[h] : hi[h]]
        n = u.shape[0]
        full = n // _CHUNK
        for j in range(full):
            c0 = _CHUNK * j
            # four groups of eight, combined pairwise: independent chains, no long dependency
            best = u[c0] - sigma * x[c0]
            for i in range(c0, c0 + 8):
                w0 = u[i] - sigma * x[i]
                w1 = u[i + 8] - sigma * x[i + 8]
                w2 = u[i + 16] - sigma * x[i + 16]
                w3 = u[i + 24] - sigma * x[i + 24]
                w0 = w1 if w1 > w0 else w0
                w2 = w3 if w3 > w2 else w2
                w0 = w2 if w2 > w0 else w0
                best = w0 if w0 > best else best
            out[h, j] = best
        if n > full * _CHUNK:
            c0 = _CHUNK * full
            best = u[c0] - sigma * x[c0]
            for i in range(c0 + 1, n):
                w0 = u[i] - sigma * x[i]
                best = w0 if w0 > best else best
            out[h, full] = best


@nb.njit(inline="always", **_JIT)
def _scan_chunk(u, g, lam, start, stop, best, second, kb):
    """Fold points ``start <= k < stop`` into (largest ``u - lam * g``, the best of the
    others, the first index of the largest); selects, not branches."""
    for k in range(start, stop):
        v = u[k] - lam * g[k]
        kb = k if (v > best or (v == best and k < kb)) else kb
        second = max(second, min(v, best))
        best = max(v, best)
    return best, second, kb


@nb.njit(**_JIT)
def tilted_argmax(utility, grid, per_head, lo, hi, sigma, chunk_max, lam, arg, robust):
    """For each head, the first grid index maximising ``u[k] - lam * g[k]`` (``lam > 0``)
    into ``arg``; returns the tokens those points use above the floors.

    ``chunk_max`` from :func:`tilted_chunk_max` with ``sigma`` bounds every chunk, so only
    chunks that may hold a point near the maximum are scanned (usually one to three).
    ``robust[h]`` says that every other point is below the maximum by more than a
    tolerance covering the rounding of these values and of the hull kernel's tests: then
    the point is a vertex of the upper hull that no pruning round drops and the chain never
    pops (the tests' exact margins grow with that gap, their rounding errors only with
    ``lam`` times the grid range). O(H * K / _CHUNK) plus the scanned chunks.
    """
    H = utility.shape[0]
    ub = np.empty(chunk_max.shape[1], np.float64)
    cx = np.empty(chunk_max.shape[1], np.float64)  # grid value where each chunk's tilt peaks
    cx_for = -1  # the floor ``cx`` was filled for (shared grids reuse it across heads)
    d = sigma - lam
    # u - lam*g = (u - sigma*g) + (sigma - lam)*g, and (sigma - lam)*g is largest at a
    # chunk's last point when sigma >= lam, else at its first.
    off = _CHUNK - 1 if d >= 0.0 else 0
    used = 0
    for h in range(H):
        u = utility[h]
        g = grid[h * per_head]
        a = lo[h]
        b = hi[h]
        nch = (b - a + _CHUNK - 1) // _CHUNK
        if per_head or a != cx_for:
            for j in range(nch):
                cx[j] = np.float64(g[min(a + _CHUNK * j + off, b - 1)])
            cx_for = -1 if per_head else a
        top = -np.inf
        jt = 0
        magnitude = 0.0
        for j in range(nch):
            c = chunk_max[h, j]
            bound = c + d * cx[j]
            ub[j] = bound
            magnitude = max(magnitude, abs(c))
            if bound > top:
                top = bound
                jt = j
        # one margin for the head covers the rounding of chunk_max and of these bounds
        slack = 1e-13 * (magnitude + (sigma + lam + abs(d)) * np.float64(g[b - 1]))
        top += slack
        c0 = a + _CHUNK * jt
        best, second, kb = _scan_chunk(u, g, lam, c0, min(c0 + _CHUNK, b), -np.inf, -np.inf, -1)
        tol = 64.0 * _EPS * (max(abs(best), abs(top)) + 2.0 * lam * np.float64(g[b - 1]))
        cut = best - tol - slack
        for j in range(nch):
            if j == jt or ub[j] < cut:
                continue
            c0 = a + _CHUNK * j
            best, second, kb = _scan_chunk(u, g, lam, c0, min(c0 + _CHUNK, b), best, second, kb)
        arg[h] = kb
        robust[h] = best - second > tol
        used += g[kb] - g[a]
    return used


@nb.njit(**_JIT)
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


@nb.njit(inline="always", **_JIT)
def _order_key(bits):
    """A uint64 whose order is the order of the float64 with these bits (-0.0 as 0.0)."""
    if bits == np.uint64(0x8000000000000000):
        bits = np.uint64(0)
    if bits >> np.uint64(63):
        return ~bits
    return bits | np.uint64(0x8000000000000000)


_RADIX_BITS = 12


@nb.njit(**_JIT)
def _weighted_threshold(slopes, costs, budget):
    """Largest slope ``s`` with ``sum(costs[slopes >= s]) > budget`` (given the total is).

    Radix selection on the slopes' order-preserving bit patterns, 12 bits at a time from
    the top: a cost histogram per digit finds the bucket where the running cost (largest
    slopes first) passes ``budget``, and only that bucket's entries are kept. Once few
    remain, a quickselect finishes. O(n); ``slopes`` and ``costs`` are scratch (reordered).
    """
    n = slopes.shape[0]
    bits = slopes.view(np.uint64)
    hist = np.zeros(1 << _RADIX_BITS, np.int64)
    mask = np.uint64((1 << _RADIX_BITS) - 1)
    shift = np.uint64(64 - _RADIX_BITS)
    if n > 64:
        for i in range(n):
            hist[(_order_key(bits[i]) >> shift) & mask] += costs[i]
    while n > 64:
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


@nb.njit(**_JIT)
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


@nb.njit(**_JIT)
def greedy_solve(utility, grid, per_head, offsets, verts, slopes, spare, idx):
    """Marginal-utility greedy over hull segments for ``spare`` tokens above the floors.

    Writes each head's chosen grid index to ``idx`` and returns
    ``(lp_value, threshold, blocked_head, left_over)``.

    The order "slope descending, ties by head" is never materialised: the slope of the
    segment that no longer fits is found by a weighted selection over all segments (O(S),
    :func:`_weighted_threshold`); segments steeper than it are all taken, and those of
    equal slope are taken in head order until one does not fit. The hulls may be pieces
    (``offsets``/``verts`` over sub-ranges, see ``budgetopt.greedy._bracketed``): tokens
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
def blocked_move(utility, grid, per_head, hi, idx, h, left):
    """Move head ``h`` to its best grid point within ``left`` more tokens, if that gains.

    Among points of equal utility the one with fewest tokens is taken, so tokens that would
    buy nothing here stay available to other heads. Returns the tokens still left.
    """
    g = grid[h * per_head]
    u = utility[h]
    cur = idx[h]
    x0 = g[cur]
    best = cur
    for k in range(cur + 1, hi[h]):
        if g[k] - x0 > left:
            break
        if u[k] > u[best]:
            best = k
    idx[h] = best
    return left - (g[best] - x0)


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
        u = utility[h]
        cur = idx[h]
        x0 = g[cur]
        best = cur
        for k in range(cur + 1, hi[h]):
            if g[k] - x0 > left:
                break
            if u[k] >= u[cur]:
                best = k
        left -= g[best] - x0
        idx[h] = best
    return left


@nb.njit(**_JIT)
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


@nb.njit(**_JIT)
def ranked_cumsum(middle, order, protected, out):
    """``out[r, 0] = protected[r]``; ``out[r, i + 1] = cumsum(middle[r, order[r]])[i] +
    protected[r]``: the same left-to-right sums as numpy's ``cumsum``, in one pass."""
    R, M = middle.shape
    for r in range(R):
        p = protected[r]
        out[r, 0] = p
        c = 0.0
        for i in range(M):
            c += middle[r, order[r, i]]
            out[r, i + 1] = c + p


@nb.njit(**_JIT)
def pack_descending_f32(values, packed):
    """``packed[r, i] = key(values[r, i]) << 32 | i`` with ``key`` a uint32 whose ascending
    order is the descending order of the float32 ``values`` (-0.0 and 0.0 share a key), so
    one ascending sort of each row gives "highest first, ties by position"."""
    R, M = values.shape
    bits = values.view(np.uint32)
    for r in range(R):
        for i in range(M):
            b = bits[r, i]
            if b == np.uint32(0x80000000):  # -0.0 sorts with +0.0
                b = np.uint32(0)
            if b >> np.uint32(31):
                asc = ~b
            else:
                asc = b | np.uint32(0x80000000)
            packed[r, i] = (np.uint64(~asc) << np.uint64(32)) | np.uint64(i)


@nb.njit(**_JIT)
def unpack_positions(packed, order):
    """The low 32 bits of each packed key (a position), as int64."""
    R, M = packed.shape
    for r in range(R):
        for i in range(M):
            order[r, i] = np.int64(packed[r, i] & np.uint64(0xFFFFFFFF))


@nb.njit(**_JIT)
def sweep_settle(utility, grid, per_head, hi, verts, counts, lams, blocked, lefts, idx, lp):
    """For each row of a sweep: grid indices and LP value from ``counts`` (as
    :func:`take_counts`), then LU-KV's blocked-head move where it settles the row (the move
    spends every token left and the head's utility does not fall on the way, exactly the
    shortcut of ``_Greedy._repair``). Returns a bool array: rows still to be repaired."""
    n, H = counts.shape
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
