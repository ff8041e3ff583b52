"""Compiled kernels (numba) of the per-request allocator (:mod:`budgetopt.request`).

Two stages, in pipeline order:

* :func:`mass_curves`: one pass over each head's tokens (no sort) builds a histogram
  of its non-negative weights on a logarithmic scale (the float32 exponent and its top three
  mantissa bits: 2048 bins, each 2**(1/8) wide) of its middle tokens (long heads: the top
  bins exactly, the rest from a sample, see :func:`_histogram`), then reads the share of the
  weight held by the protected tokens and the top ``n_k`` middle tokens off the histogram,
  interpolating linearly inside a bin;
* :func:`lp_split`: the upper concave hull of each head's predicted curve on its coarse token
  grid (:func:`budgetopt._kernels._upper_hull`, rule ``HULL_CROSS_A``), then the hull segments
  taken steepest first until the total is spent. The answer solves the LP relaxation of the
  piecewise-linear curves exactly; at most one head stops inside a segment, so the budgets
  are whole tokens that add up to the total.

Compiled with :mod:`budgetopt._kernels`'s settings: cached on disk where numba finds a writable
cache location, compiled in memory otherwise.
"""

from __future__ import annotations

import numpy as np

from ._kernels import HULL_CROSS_A, _upper_hull, every_point
from ._kernels_jit import jit

#: Histogram bins: the 11 high bits (sign excluded) of a non-negative float32.
N_BINS = 2048
_SHIFT = 20
#: First bin of the largest float32 exponent (infinite and NaN values); values with the
#: sign bit set land at :data:`N_BINS` and above.
_BAD_BIN = N_BINS - 8

#: Share of a sampled row's middle tokens (the sample's highest) whose bins are then filled
#: exactly, token by token.
TOP_SHARE = 1.0 / 64.0


@jit(inline="always")
def _read_curve(hist_n, hist_w, lo, hi, protected, total, middle, counts, out, r):
    """Shares at ``counts`` from one row's histogram (bins ``lo..hi``) into ``out[r]``."""
    n_counts = counts.shape[0]
    if not total > 0.0:
        for k in range(n_counts):
            out[r, k] = 1.0 if protected > 0.0 else counts[k] / middle
        return
    whole = total + protected
    k = 0
    seen = 0.0
    mass = 0.0
    for b in range(hi, lo - 1, -1):
        c = hist_n[b]
        if c == 0.0:
            continue
        while k < n_counts and counts[k] <= seen + c:
            out[r, k] = (protected + mass + hist_w[b] * ((counts[k] - seen) / c)) / whole
            k += 1
        seen += c
        mass += hist_w[b]
        if k == n_counts:
            break
    while k < n_counts:
        out[r, k] = 1.0
        k += 1


@jit(inline="always")
def _add(hist_n, hist_w, hist_w2, use_norms, b, v, m):
    hist_n[b] += 1.0
    hist_w[b] += v
    if use_norms:
        hist_w2[b] += v * m


@jit(inline="always")
def _add_high(row, row_bits, norms, use_norms, start, stop, threshold, hist_n, hist_w, hist_w2):
    """Add the tokens ``start <= t < stop`` whose bits reach ``threshold``; returns how many."""
    added = 0
    for t in range(start, stop):
        if row_bits[t] >= threshold:
            _add(hist_n, hist_w, hist_w2, use_norms, np.int64(row_bits[t]) >> _SHIFT, row[t], norms[t])
            added += 1
    return added


@jit
def _histogram(row, row_bits, norms, use_norms, sink, stop, stride, hist_n, hist_w, hist_w2):
    """Histogram of ``row[sink:stop]`` by value: tokens, ``row`` and ``row * norms`` per bin.

    ``stride == 1``: every token, exact. ``stride > 1`` (a multiple of 8): a pilot of every
    ``8 * stride``-th token places a cut near the top :data:`TOP_SHARE` of the values (never
    above the first infinite/NaN bin); then one pass over all tokens, in blocks of 8, counts
    every token at or above the cut exactly (looking closer only at blocks that hold one) and
    samples the first token of every ``stride / 8``-th block below it; the sample's bins are
    scaled to the exact number of tokens below the cut (their weights by the same factor).
    Returns the touched bin range ``(lo, hi)`` (``lo > hi`` when empty), which the caller
    clears.
    """
    lo = 2 * N_BINS
    hi = -1
    if stride == 1:
        for t in range(sink, stop):
            b = np.int64(row_bits[t]) >> _SHIFT
            _add(hist_n, hist_w, hist_w2, use_norms, b, row[t], norms[t])
            lo = min(lo, b)
            hi = max(hi, b)
        return lo, hi
    # the pilot, in counts only
    n_pilot = 0
    for t in range(sink, stop, 8 * stride):
        b = np.int64(row_bits[t]) >> _SHIFT
        hist_n[b] += 1.0
        lo = min(lo, b)
        hi = max(hi, b)
        n_pilot += 1
    need = max(1.0, np.ceil(TOP_SHARE * n_pilot))
    seen = 0.0
    cut = hi
    while cut > lo:
        seen += hist_n[cut]
        if seen >= need:
            break
        cut -= 1
    cut = min(cut, _BAD_BIN)
    for b in range(lo, hi + 1):
        hist_n[b] = 0.0
    threshold = np.uint32(cut << _SHIFT)
    lo = 2 * N_BINS
    hi = -1
    exact = 0
    sampled = 0.0
    every = stride // 8
    count = 0
    t = sink
    while t + 8 <= stop:
        high = max(max(max(row_bits[t], row_bits[t + 1]), max(row_bits[t + 2], row_bits[t + 3])),
                   max(max(row_bits[t + 4], row_bits[t + 5]), max(row_bits[t + 6], row_bits[t + 7])))
        if high >= threshold:
            exact += _add_high(row, row_bits, norms, use_norms, t, t + 8, threshold, hist_n, hist_w, hist_w2)
            hi = max(hi, np.int64(high) >> _SHIFT)
        count += 1
        if count == every:
            count = 0
            if row_bits[t] < threshold:
                b = np.int64(row_bits[t]) >> _SHIFT
                _add(hist_n, hist_w, hist_w2, use_norms, b, row[t], norms[t])
                lo = min(lo, b)
                hi = max(hi, b)
                sampled += 1.0
        t += 8
    for i in range(t, stop):
        if row_bits[i] >= threshold:
            hi = max(hi, np.int64(row_bits[i]) >> _SHIFT)
    exact += _add_high(row, row_bits, norms, use_norms, t, stop, threshold, hist_n, hist_w, hist_w2)
    below = stop - sink - exact
    if below > 0 and sampled == 0.0:
        # nothing sampled below the cut (a tiny or very uneven middle): count it exactly
        lo2, hi2 = _histogram_below(row, row_bits, norms, use_norms, sink, stop, threshold, hist_n, hist_w, hist_w2)
        lo = min(lo, lo2)
        hi = max(hi, hi2)
        sampled = below
    if exact > 0:
        lo = min(lo, cut)
    if sampled > 0.0:
        scale = below / sampled
        for b in range(lo, min(cut, hi + 1)):
            hist_n[b] *= scale
            hist_w[b] *= scale
            hist_w2[b] *= scale
    return lo, hi


@jit
def _histogram_below(row, row_bits, norms, use_norms, sink, stop, threshold, hist_n, hist_w, hist_w2):
    """Add every token of ``row[sink:stop]`` below ``threshold``; returns its bin range."""
    lo = 2 * N_BINS
    hi = -1
    for t in range(sink, stop):
        if row_bits[t] < threshold:
            b = np.int64(row_bits[t]) >> _SHIFT
            _add(hist_n, hist_w, hist_w2, use_norms, b, row[t], norms[t])
            lo = min(lo, b)
            hi = max(hi, b)
    return lo, hi


@jit
def mass_curves(values, values_bits, norms, norms_bits, use_norms, sink, window, counts, n_sample, out):
    """Share of each row's weight held by its protected tokens and its ``counts[k]`` top-scored middle tokens.

    The protected tokens are the ``sink`` first and ``window`` last ones; the middle is
    ``sink <= t < T - window``, ranked by ``values`` (float32 ``(n, T)``; ``values_bits``, the
    same memory as uint32). Weights: the values (minus the row's minimum when that is
    negative) into ``out[0]``; with ``use_norms``, those weights times ``norms`` (float32
    ``(n, T)``, non-negative; ``norms_bits`` the same memory as uint32) into ``out[1]``, still
    ranked by value. ``counts`` int64 ``(G,)`` increases from 0 to the middle length;
    ``out`` float64 ``(J, n, G)``. A row without weight gets the uniform share
    ``counts[k] / M`` (1 when only protected tokens weigh).

    The histogram (:func:`_histogram`) is exact when the middle holds fewer than
    ``8 * n_sample`` tokens (or ``n_sample`` is 0) and for rows with negative values;
    otherwise it counts the highest bins exactly and the rest from a sample of ``n_sample``
    to ``2 * n_sample`` tokens.

    Returns -1, or ``4 * row + code`` for the first bad row: code 1, a value is NaN or
    infinite; code 2, a norm is NaN, infinite or negative (or a product overflows).
    O(n (T + bins touched + G)).
    """
    n, length = values.shape
    stop = length - window
    middle = stop - sink
    stride = 8 * (middle // (8 * n_sample)) if n_sample > 0 and middle >= 8 * n_sample else 1
    hist_n = np.zeros(2 * N_BINS, np.float64)   # the upper half catches sign-bit values
    hist_w = np.zeros(2 * N_BINS, np.float64)
    hist_w2 = np.zeros(2 * N_BINS, np.float64)
    row = np.empty(length, np.float32)
    row_bits = row.view(np.uint32)
    big = np.float32(3.4e38)
    bad_bits = np.uint32(_BAD_BIN << _SHIFT)  # +inf; NaN and anything with the sign bit are above
    for r in range(n):
        if use_norms:
            high = np.uint32(0)
            for t in range(length):
                high = max(high, norms_bits[r, t])
            if high >= bad_bits:  # some norm is inf, NaN, negative or -0.0: look closer
                for t in range(length):
                    m = norms[r, t]
                    if not (m >= 0.0 and m <= big):
                        return 4 * r + 2
        src = values[r]
        src_bits = values_bits[r]
        lo, hi = _histogram(src, src_bits, norms[r], use_norms, sink, stop, stride, hist_n, hist_w, hist_w2)
        for attempt in range(2):
            suspect = False
            for b in range(max(lo, _BAD_BIN), hi + 1):
                suspect |= hist_n[b] > 0.0
            protected = np.float64(0.0)  # float64 sums of float32 values, run as Python too
            protected2 = np.float64(0.0)
            for part in range(2):
                for t in range(0 if part == 0 else stop, sink if part == 0 else length):
                    v = src[t]
                    suspect |= not (v >= 0.0 and v <= big)
                    protected += v
                    if use_norms:
                        protected2 += v * norms[r, t]
            if not suspect or attempt == 1:
                break
            low = np.float32(0.0)
            for t in range(length):
                v = values[r, t]
                if not (v - v == 0.0):
                    return 4 * r + 1
                if v < low:
                    low = v
            for t in range(length):
                row[t] = (values[r, t] - low) + np.float32(0.0)  # -0.0 becomes +0.0
            for b in range(lo, hi + 1):
                hist_n[b] = 0.0
                hist_w[b] = 0.0
                hist_w2[b] = 0.0
            src = row
            lo, hi = _histogram(row, row_bits, norms[r], use_norms, sink, stop, 1, hist_n, hist_w, hist_w2)
        total = 0.0
        total2 = 0.0
        for b in range(lo, hi + 1):
            total += hist_w[b]
            total2 += hist_w2[b]
        if use_norms and not (total2 - total2 == 0.0 and protected2 - protected2 == 0.0):
            return 4 * r + 2
        _read_curve(hist_n, hist_w, lo, hi, protected, total, middle, counts, out[0], r)
        if use_norms:
            _read_curve(hist_n, hist_w2, lo, hi, protected2, total2, middle, counts, out[1], r)
        for b in range(lo, hi + 1):
            hist_n[b] = 0.0
            hist_w[b] = 0.0
            hist_w2[b] = 0.0
    return -1


@jit
def lp_split(utility, grid, total, budgets):
    """Split ``total`` tokens over heads with piecewise-linear curves; returns (lp, lam).

    ``utility`` float64 ``(n, G)`` and ``grid`` int64 ``(n, G)`` nondecreasing along each row
    (equal grid points allowed); every head starts at ``grid[h, 0]`` and may grow to
    ``grid[h, -1]``; ``sum(grid[:, 0]) <= total <= sum(grid[:, -1])`` (checked by the caller).
    Hulls by :func:`budgetopt._kernels._upper_hull` (rule ``HULL_CROSS_A``; a repeated grid
    point keeps its best utility, collinear points are not vertices).
    Hull segments are taken by slope, largest first (ties: head order, then along the head),
    so the tokens go where the hulls promise most. Writes ``budgets`` (int64 ``(n,)``, adding
    up to ``total``); returns the LP value (the hull value of the answer, an upper bound on
    the piecewise-linear curves' value at any split of ``total``) and the slope at which the
    total ran out (0 when every head reached its last point). O(n G log(n G)).
    """
    n, g_points = utility.shape
    hull = np.empty(g_points, np.int64)
    unused = np.empty(0, np.float64)
    slopes = np.empty(n * g_points, np.float64)
    lengths = np.empty(n * g_points, np.int64)
    heads = np.empty(n * g_points, np.int64)
    n_seg = 0
    left = total
    lp = 0.0
    for h in range(n):
        u = utility[h]
        g = grid[h]
        size = _upper_hull(u, g, hull, every_point(hull, 0, g_points), HULL_CROSS_A, False, unused)
        budgets[h] = g[hull[0]]
        left -= g[hull[0]]
        lp += u[hull[0]]
        for k in range(size - 1):
            dx = g[hull[k + 1]] - g[hull[k]]
            slopes[n_seg] = (u[hull[k + 1]] - u[hull[k]]) / dx
            lengths[n_seg] = dx
            heads[n_seg] = h
            n_seg += 1
    order = np.argsort(-slopes[:n_seg], kind="mergesort")
    lam = 0.0
    for i in range(n_seg):
        if left == 0:
            break
        s = order[i]
        take = min(lengths[s], left)
        budgets[heads[s]] += take
        left -= take
        lp += slopes[s] * take
        lam = slopes[s]
    return lp, lam


@jit
def curve_values(utility, grid, budgets):
    """Each head's piecewise-linear curve at its budget, summed (float64)."""
    n, g_points = utility.shape
    value = 0.0
    for h in range(n):
        b = budgets[h]
        if b <= grid[h, 0]:
            value += utility[h, 0]
            continue
        k = 0
        while k < g_points - 1 and grid[h, k + 1] <= b:
            k += 1
        if k == g_points - 1:
            value += utility[h, k]
        else:
            t = (b - grid[h, k]) / (grid[h, k + 1] - grid[h, k])
            value += utility[h, k] + t * (utility[h, k + 1] - utility[h, k])
    return value
