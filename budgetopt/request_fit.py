"""Fitting a per-request allocator from calibration pairs: static curves, ridge coefficients and
the shrinkage chosen by leave-one-context-out cross-validation.

The model of :class:`budgetopt.RequestAllocator` (see :mod:`budgetopt.request` for its
formula): each pair's utility curve sampled at the grid (:func:`oracle_shapes`), the heads'
mean shapes and weights and the ridge regression of shape deviations on proxy deviations
(:func:`fit_arrays`), the corrected shapes of a request (:func:`corrected`), and the
shrinkage of the static split (:func:`cross_validate`, scored by :func:`retained`).
"""

from __future__ import annotations

import numpy as np

from .profile import utility_from_order
from .request_split import split, with_floor
from .rounding import blend_budgets, head_floor, token_counts, tokens_evicted

__all__ = ["SHRINKAGES", "CV_COMPRESSIONS", "CV_MAX_LOSS", "oracle_shapes", "fit_arrays", "corrected",
           "cross_validate", "retained"]

#: Shrinkage values tried by cross-validation (weight of the static split; 1 = static only).
SHRINKAGES = (0.0, 0.25, 0.5, 0.75, 0.875, 1.0)

#: Compressions (fraction removed) at which cross-validation scores a shrinkage.
CV_COMPRESSIONS = (0.5, 0.8, 0.9)

#: Largest loss of retained oracle mass on any cross-validation pair (at any of
#: :data:`CV_COMPRESSIONS`) that a shrinkage may show against the static split: half the
#: 0.5% a new request may lose, a margin for choosing among :data:`SHRINKAGES` on these pairs.
CV_MAX_LOSS = 0.0025

_RIDGE = 1e-6


def oracle_shapes(oracle, order, sink, window, counts):
    """Utility sampled at the grid ``(n, G)``, as (shapes, totals)."""
    utility = utility_from_order(oracle, order, sink, window)
    u = utility.reshape(-1, utility.shape[-1])
    sampled = u[:, counts]
    totals = sampled[:, -1].copy()
    safe = np.where(totals > 0, totals, 1.0)
    shapes = np.where(totals[:, None] > 0, sampled / safe[:, None], counts / counts[-1])
    return shapes, totals, u


def fit_beta(y, d, ridge=_RIDGE):
    """Ridge coefficients ``(J, G)`` of ``y ~ sum_j beta[j] d[j]`` pooled over pairs and heads.

    ``y`` ``(P, n, G)``, ``d`` ``(P, J, n, G)``.
    """
    gram = np.einsum("pjnk,pink->kji", d, d)
    rhs = np.einsum("pjnk,pnk->kj", d, y)
    scale = np.trace(gram, axis1=1, axis2=2)[:, None, None] / max(d.shape[1], 1)
    gram = gram + (ridge * scale + 1e-300) * np.eye(d.shape[1])[None]
    return np.linalg.solve(gram, rhs[..., None])[..., 0].T


def fit_arrays(pairs, idx):
    """Static means and ridge coefficients from the pairs ``idx``: flat over heads."""
    shapes = np.stack([pairs[i][1] for i in idx])            # (P, n, G)
    totals = np.stack([pairs[i][2] for i in idx])            # (P, n)
    proxies = np.stack([pairs[i][3] for i in idx])           # (P, J, n, G)
    mass = totals.sum(axis=1, keepdims=True)
    share = totals / np.where(mass > 0, mass, 1.0)
    weight = share.mean(axis=0)
    # the static curve is the mean of the pairs' curves (as lukv_table's "mean_curve"), stored
    # as a shape relative to the mean weight
    mean_shape = (share[..., None] * shapes).mean(axis=0) / np.where(weight > 0, weight, 1.0)[:, None]
    mean_proxy = proxies.mean(axis=0)
    beta = fit_beta(shapes - mean_shape, proxies - mean_proxy)
    return mean_shape, weight, mean_proxy, beta


def corrected(mean_shape, proxies, mean_proxy, beta):
    """Shapes ``(n, G)`` corrected by the proxy deviations, clipped to [0, 1], non-decreasing."""
    shape = mean_shape + np.einsum("jnk,jk->nk", proxies - mean_proxy, beta)
    return np.maximum.accumulate(np.clip(shape, 0.0, 1.0), axis=-1)


def cross_validate(pairs, groups, fractions, sink, window, min_keep_fraction):
    """Shrinkage chosen by leave-one-context-out; returns it and the figures (JSON-ready)."""
    gains = {s: [] for s in SHRINKAGES}  # per held-out pair and compression: retained(s) - retained(static)
    for g in np.unique(groups):
        train = np.flatnonzero(groups != g)
        mean_shape, weight, mean_proxy, beta = fit_arrays(pairs, train)
        for i in np.flatnonzero(groups == g):
            _, _, totals, proxies, utility, length = pairs[i]
            kept = retained(mean_shape, weight, mean_proxy, beta, proxies, utility, length, fractions, sink,
                             window, min_keep_fraction)
            for s in SHRINKAGES:
                gains[s].append(kept[s] - kept[1.0])
    figures = {str(s): {"mean_gain": float(np.mean(gains[s])), "worst": float(np.min(gains[s]))} for s in SHRINKAGES}
    allowed = [s for s in SHRINKAGES if np.min(gains[s]) >= -CV_MAX_LOSS]
    best = max(allowed, key=lambda s: (np.mean(gains[s]), s))
    if np.mean(gains[best]) <= 0.0:
        best = 1.0
    return float(best), {"shrinkage": figures, "compressions": list(CV_COMPRESSIONS), "max_loss": CV_MAX_LOSS}


def retained(mean_shape, weight, mean_proxy, beta, proxies, utility, length, fractions, sink, window,
             min_keep_fraction):
    """Retained oracle fraction of one pair at each of :data:`CV_COMPRESSIONS`, for each of
    :data:`SHRINKAGES`: ``{shrinkage: array}``."""
    n = mean_shape.shape[0]
    floor, tokens, totals = cv_totals(n, length, fractions, sink, window, min_keep_fraction)
    static = with_floor(weight[:, None] * mean_shape, tokens, floor, length)
    request = with_floor(weight[:, None] * corrected(mean_shape, proxies, mean_proxy, beta), tokens, floor, length)
    out = {s: [] for s in SHRINKAGES}
    for total in totals:
        b_static, b_request = split(*static, total)[0], split(*request, total)[0]
        for s in SHRINKAGES:
            out[s].append(kept_share(utility, blend_budgets(b_static, b_request, s), sink, window))
    return {s: np.array(v) for s, v in out.items()}


def cv_totals(n, length, fractions, sink, window, min_keep_fraction):
    """How a held-out pair of ``n`` heads and ``length`` tokens is split in cross-validation:
    ``(floor, tokens, totals)``, its per-head floor, the fraction grid's token counts and the
    total budget at each of :data:`CV_COMPRESSIONS`."""
    floor = head_floor(min_keep_fraction, length, sink, window)
    tokens = token_counts(fractions, length - sink - window) + (sink + window)
    capacity = n * length
    return floor, tokens, [max(capacity - tokens_evicted(c, capacity), n * floor) for c in CV_COMPRESSIONS]


def kept_share(utility, budgets, sink, window):
    """Share of a pair's oracle mass (``utility``, its exact per-head utility) that
    ``budgets`` keep."""
    mass = max(utility[:, -1].sum(), 1e-300)
    return utility[np.arange(budgets.shape[0]), budgets - (sink + window)].sum() / mass
