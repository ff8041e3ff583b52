"""Compiled kernels (numba) of the per-request allocator (:mod:`budgetopt.request`).

Two stages, in pipeline order:

* :func:`mass_curves`: one pass over each head's tokens (no sort) builds a histogram
  of its non-negative weights on a logarithmic scale (the float32 exponent and its top three
  mantissa bits: 2048 bins, each 2**(1/8) wide) of its middle tokens, then reads the share
  of the weight held by the protected tokens and the top ``n_k`` middle tokens off the histogram, interpolating linearly inside a bin;
* :func:`lp_split`: the upper concave hull of each head's predicted curve on its coarse token
  grid, then the hull segments taken steepest first until the total is spent. The answer
  solves the LP relaxation of the piecewise-linear curves exactly; at most one head stops
  inside a segment, so the budgets are whole tokens that add up to the total.

Compiled with :mod:`budgetopt._kernels`'s settings: cached on disk where numba finds a writable
cache location, compiled in memory otherwise.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._kernels import _JIT

#: Histogram bins: the 11 high bits (sign excluded) of a non-negative float32.
N_BINS = 2048
_SHIFT = 20


@nb.njit(inline="always", **_JIT)
def _read_curve(hist_n, hist_w, protected, total, middle, counts, out, r):
    """Shares at ``counts`` from one row's histogram into ``out[r]``."""
    n_counts = counts.shape[0]
    if not total > 0.0:
        for k in range(n_counts):
            out[r, k] = 1.0 if protected > 0.0 else counts[k] / middle
        return
    whole = total + protected
    k = 0
    seen = 0
    mass = 0.0
    for b in range(N_BINS - 1, -1, -1):
        c = hist_n[b]
        if c == 0:
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


@nb.njit(inline="always", **_JIT)
def _histogram(row, row_bits, norms, use_norms, sink, stop, lanes_n, lanes_w, lanes_w2, hist_n, hist_w, hist_w2):
    """Histogram of ``row[sink:stop]`` by value, with ``row * norms`` summed by the same bins.

    Returns (middle sum of ``row``, middle sum of ``row * norms``, suspect). Four interleaved
    lane histograms (merged at the end) keep consecutive tokens that fall in one bin from
    waiting on each other. ``suspect``: some value has its sign bit set or the largest
    exponent (negative, NaN or infinite); its bins lie at or above :data:`N_BINS` - 8.
    """
    lanes_n[:] = 0
    lanes_w[:] = 0.0
    if use_norms:
        lanes_w2[:] = 0.0
    t = sink
    if use_norms:
        while t + 4 <= stop:
            for lane in range(4):
                b = row_bits[t + lane] >> _SHIFT
                v = row[t + lane]
                lanes_n[lane, b] += 1
                lanes_w[lane, b] += v
                lanes_w2[lane, b] += v * norms[t + lane]
            t += 4
        while t < stop:
            b = row_bits[t] >> _SHIFT
            lanes_n[0, b] += 1
            lanes_w[0, b] += row[t]
            lanes_w2[0, b] += row[t] * norms[t]
            t += 1
    else:
        while t + 4 <= stop:
            for lane in range(4):
                b = row_bits[t + lane] >> _SHIFT
                lanes_n[lane, b] += 1
                lanes_w[lane, b] += row[t + lane]
            t += 4
        while t < stop:
            b = row_bits[t] >> _SHIFT
            lanes_n[0, b] += 1
            lanes_w[0, b] += row[t]
            t += 1
    total = 0.0
    total2 = 0.0
    for b in range(2 * N_BINS):
        hist_n[b] = lanes_n[0, b] + lanes_n[1, b] + lanes_n[2, b] + lanes_n[3, b]
        hist_w[b] = lanes_w[0, b] + lanes_w[1, b] + lanes_w[2, b] + lanes_w[3, b]
        total += hist_w[b]
    if use_norms:
        for b in range(2 * N_BINS):
            hist_w2[b] = lanes_w2[0, b] + lanes_w2[1, b] + lanes_w2[2, b] + lanes_w2[3, b]
            total2 += hist_w2[b]
    suspect = False
    for b in range(N_BINS - 8, 2 * N_BINS):
        if hist_n[b] > 0:
            suspect = True
            break
    return total, total2, suspect


@nb.njit(**_JIT)
def mass_curves(values, values_bits, norms, use_norms, sink, window, counts, out):
    """Share of each row's weight held by its protected tokens and its ``counts[k]`` top-scored middle tokens.

    The protected tokens are the ``sink`` first and ``window`` last ones; the middle is
    ``sink <= t < T - window``, ranked by ``values`` (float32 ``(n, T)``; ``values_bits``, the
    same memory as uint32). Weights: the values (minus the row's minimum when that is
    negative) into ``out[0]``; with ``use_norms``, those weights times ``norms`` (float32
    ``(n, T)``, non-negative) into ``out[1]``, still ranked by value. ``counts`` int64 ``(G,)``
    increases from 0 to the middle length; ``out`` float64 ``(J, n, G)``. A row without
    weight gets the uniform share ``counts[k] / M`` (1 when only protected tokens weigh).

    Returns -1, or ``4 * row + code`` for the first bad row: code 1, a value is NaN or
    infinite; code 2, a norm is NaN, infinite or negative (or a product overflows).
    O(n (T + N_BINS + G)): one histogram pass per row, both features sharing its bins (a
    second pass only for rows with negative values).
    """
    n, length = values.shape
    stop = length - window
    middle = stop - sink
    hist_n = np.zeros(2 * N_BINS, np.int64)   # the upper half catches sign-bit values
    hist_w = np.zeros(2 * N_BINS, np.float64)
    hist_w2 = np.zeros(2 * N_BINS, np.float64)
    lanes_n = np.zeros((4, 2 * N_BINS), np.int32)
    lanes_w = np.zeros((4, 2 * N_BINS), np.float64)
    lanes_w2 = np.zeros((4, 2 * N_BINS) if use_norms else (4, 1), np.float64)
    row = np.empty(length, np.float32)
    row_bits = row.view(np.uint32)
    big = np.float32(3.4e38)
    for r in range(n):
        if use_norms:
            bad = False
            for t in range(length):
                m = norms[r, t]
                bad |= not (m >= 0.0 and m <= big)
            if bad:
                return 4 * r + 2
        total, total2, suspect = _histogram(values[r], values_bits[r], norms[r], use_norms, sink, stop,
                                            lanes_n, lanes_w, lanes_w2, hist_n, hist_w, hist_w2)
        src = values[r]
        for attempt in range(2):
            protected = 0.0
            protected2 = 0.0
            for t in range(length):
                if sink <= t < stop:
                    continue
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
            src = row
            total, total2, suspect = _histogram(row, row_bits, norms[r], use_norms, sink, stop,
                                                lanes_n, lanes_w, lanes_w2, hist_n, hist_w, hist_w2)
            suspect = False
        if use_norms and not (total2 - total2 == 0.0 and protected2 - protected2 == 0.0):
            return 4 * r + 2
        _read_curve(hist_n, hist_w, protected, total, middle, counts, out[0], r)
        if use_norms:
            _read_curve(hist_n, hist_w2, protected2, total2, middle, counts, out[1], r)
    return -1


@nb.njit(**_JIT)
def lp_split(utility, grid, total, budgets):
    """Split ``total`` tokens over heads with piecewise-linear curves; returns (lp, lam).

    ``utility`` float64 ``(n, G)`` and ``grid`` int64 ``(n, G)`` nondecreasing along each row
    (equal grid points allowed); every head starts at ``grid[h, 0]`` and may grow to
    ``grid[h, -1]``; ``sum(grid[:, 0]) <= total <= sum(grid[:, -1])`` (checked by the caller).
    Hull segments are taken by slope, largest first (ties: head order, then along the head),
    so the tokens go where the hulls promise most. Writes ``budgets`` (int64 ``(n,)``, adding
    up to ``total``); returns the LP value (the hull value of the answer, an upper bound on
    the piecewise-linear curves' value at any split of ``total``) and the slope at which the
    total ran out (0 when every head reached its last point). O(n G log(n G)).
    """
    n, g_points = utility.shape
    hull_x = np.empty(g_points, np.int64)
    hull_y = np.empty(g_points, np.float64)
    slopes = np.empty(n * g_points, np.float64)
    lengths = np.empty(n * g_points, np.int64)
    heads = np.empty(n * g_points, np.int64)
    n_seg = 0
    left = total
    lp = 0.0
    for h in range(n):
        size = 0
        for k in range(g_points):
            x = grid[h, k]
            y = utility[h, k]
            if size > 0 and hull_x[size - 1] == x:
                if y <= hull_y[size - 1]:
                    continue
                size -= 1  # same token count, higher value: replaces the previous point
            while size >= 2:
                x0, y0 = hull_x[size - 2], hull_y[size - 2]
                x1, y1 = hull_x[size - 1], hull_y[size - 1]
                # drop the middle point when it lies on or below the chord
                if (y1 - y0) * (x - x0) <= (y - y0) * (x1 - x0):
                    size -= 1
                else:
                    break
            hull_x[size] = x
            hull_y[size] = y
            size += 1
        budgets[h] = hull_x[0]
        left -= hull_x[0]
        lp += hull_y[0]
        for k in range(size - 1):
            dx = hull_x[k + 1] - hull_x[k]
            slopes[n_seg] = (hull_y[k + 1] - hull_y[k]) / dx
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


@nb.njit(**_JIT)
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
