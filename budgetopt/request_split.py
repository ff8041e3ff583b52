"""Per-request budgets from curves: each head's grid from its floor and the LP split.

The last stage of :class:`budgetopt.RequestAllocator`: a head's curve, sampled at the fitted
fractions of its middle tokens (:func:`budgetopt.rounding.token_counts`), starts at the head's floor
(:func:`with_floor`); one total is split over the heads by the upper-hull greedy on these
piecewise-linear curves (:func:`split`, a compiled kernel); the static and the request's
splits are mixed in whole tokens with the same total by
:func:`budgetopt.rounding.blend_budgets`.
"""

from __future__ import annotations

import numpy as np

from . import _kernels_request as _k

__all__ = ["with_floor", "split"]


def with_floor(u, tokens, floor, length):
    """Per-head grids ``(n, G)`` that start at ``floor`` (utility interpolated there) and stop at
    ``length``, with the utilities ``(n, G)`` to match; both C-contiguous."""
    grid = np.ascontiguousarray(np.broadcast_to(np.clip(tokens, floor, length), u.shape))
    j = int(np.searchsorted(tokens, floor, side="left"))
    if 0 < j < tokens.size:
        lo, hi = tokens[j - 1], tokens[j]
        t = (floor - lo) / (hi - lo) if hi > lo else 1.0
        u = u.copy()
        u[:, :j] = (u[:, j - 1] + t * (u[:, j] - u[:, j - 1]))[:, None]
    return np.ascontiguousarray(u), grid


def split(utility, grid, total):
    """Budgets ``(n,)``, LP value and threshold of piecewise-linear curves for ``total``."""
    budgets = np.empty(utility.shape[0], np.int64)
    lp, lam = _k.lp_split(utility, grid, np.int64(total), budgets)
    return budgets, float(lp), float(lam)
