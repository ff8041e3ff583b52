"""Compiled kernels (numba) of the per-request allocator (:mod:`budgetopt.request`).

Two stages, in pipeline order:

* :func:`mass_curves`: one pass over each head's middle tokens (no sort) builds a histogram
  of its non-negative weights on a logarithmic scale (the float32 exponent and its top three
  mantissa bits: 2048 bins, each 2**(1/8) wide), then reads the share of the weight held by
  the top ``n_k`` tokens off the histogram, interpolating linearly inside a bin;
* :func:`lp_split`: the upper concave hull of each head's predicted curve on its coarse token
  grid, then the hull segments taken steepest first until the total is spent. The answer
  solves the LP relaxation of the piecewise-linear curves exactly; at most one head stops
  inside a segment, so the budgets are whole tokens that add up to the total.

Compiled functions are cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba as nb
import numpy as np

_JIT = dict(cache=True, nogil=True)

#: Histogram bins: the 11 high bits (sign excluded) of a non-negative float32.
N_BINS = 2048
_SHIFT = 20


@nb.njit(**_JIT)
def mass_curves(values, bits, sink, window, counts, out):
    """Share of each row's middle weight held by its ``counts[k]`` heaviest middle tokens.

    ``values`` float32 ``(n, T)`` non-negative and finite, ``bits`` the same memory viewed as
    uint32; the middle is ``sink <= t < T - window``. ``counts`` int64 ``(G,)`` increasing from
    0 to the middle length. Writes ``out[r, k]`` (float64, in [0, 1]); a row without weight
    gets the uniform share ``counts[k] / M``. O(n (T + N_BINS + G)).
    """
    n, length = values.shape
    stop = length - window
    middle = stop - sink
    n_counts = counts.shape[0]
    hist_n = np.zeros(N_BINS, np.int64)
    hist_w = np.zeros(N_BINS, np.float64)
    for r in range(n):
        hist_n[:] = 0
        hist_w[:] = 0.0
        total = 0.0
        for t in range(sink, stop):
            b = bits[r, t] >> _SHIFT
            hist_n[b] += 1
            v = values[r, t]
            hist_w[b] += v
            total += v
        if not total > 0.0:
            for k in range(n_counts):
                out[r, k] = counts[k] / middle
            continue
        k = 0
        seen = 0
        mass = 0.0
        for b in range(N_BINS - 1, -1, -1):
            c = hist_n[b]
            if c == 0:
                continue
            while k < n_counts and counts[k] <= seen + c:
                out[r, k] = (mass + hist_w[b] * ((counts[k] - seen) / c)) / total
                k += 1
            seen += c
            mass += hist_w[b]
            if k == n_counts:
                break
        while k < n_counts:
            out[r, k] = 1.0
            k += 1


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
