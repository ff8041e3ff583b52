"""Compiled kernels (numba) of the greedy's bracket: hulls only where the threshold can fall.

For one total budget the LP threshold is found without every head's full hull. A geometric
sample of each head gives an estimate ``sigma`` (:func:`sample_threshold`); one pass stores,
per chunk of ``_CHUNK`` grid points, the largest ``u - sigma * g`` (:func:`tilted_chunk_max`);
from those bounds the exact maximiser of ``u - lam * g`` is found for multipliers just above
and just below the threshold by scanning a few chunks (:func:`tilted_argmax`). Such a
maximiser is a hull vertex; when no other point comes within rounding of it, every hull
computation keeps it (see :func:`budgetopt._kernels._hull_one`), so the hull between the two
maximisers is exactly the part of the full hull where the greedy can stop.
:mod:`budgetopt.bracket` puts these together. Array conventions as in :mod:`budgetopt._kernels`.
"""

from __future__ import annotations

import numpy as np

from ._kernels_jit import jit
from ._kernels import _weighted_threshold, copy_into

_CHUNK = 32
_EPS = 2.220446049250313e-16


@jit
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


@jit
def _grow(arr, size, keep):
    out = np.empty(size, arr.dtype)
    copy_into(out, 0, arr, keep)
    return out


@jit(fastmath=True)
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


@jit(inline="always")
def _scan_chunk(u, g, lam, start, stop, best, second, kb):
    """Fold points ``start <= k < stop`` into (largest ``u - lam * g``, the best of the
    others, the first index of the largest); selects, not branches."""
    for k in range(start, stop):
        v = u[k] - lam * g[k]
        kb = k if (v > best or (v == best and k < kb)) else kb
        second = max(second, min(v, best))
        best = max(v, best)
    return best, second, kb


@jit
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
