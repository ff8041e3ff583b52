"""Probe queries as a per-request signal: the deviation rule behind ``RequestAllocator``'s probes.

A *probe* is a generic query ("Summarize the text above.") answered over a context like a
question; its oracle (:func:`budgetopt.runs.load_probe_run`) shows where a request's attention
goes before its question is known. On the allocator's fraction grid, with ``M[h]`` a head's
static curve, ``P[h]`` the context's mean probe curve (each probe's kept oracle mass under
the scorer's ranking, as a share of that probe's total mass) and ``Pbar[h]`` the calibration
contexts' mean probe curve, the request's curves are

    curve[h](x_g) = M[h](x_g) + beta[g] * (P[h](x_g) - Pbar[h](x_g))

with one coefficient per grid point, pooled over heads and calibration pairs. How much it
gains held out, and where it does not (the signal depends on the question type): the
measurements in docs/request.md, "Probe queries".

Only validated arrays reach these functions (:class:`budgetopt.RequestAllocator` checks them).
"""

from __future__ import annotations

import numpy as np

from .profile import utility_from_order
from .request_fit import CV_COMPRESSIONS, CV_MAX_LOSS, cv_totals, kept_share
from .request_split import split, with_floor

__all__ = ["GAINS", "probe_curve", "fit_deviation", "cross_validate_gain"]

#: Gains tried by :func:`cross_validate_gain` (factor on the fitted coefficients; 0: static curves).
GAINS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


def probe_curve(probe_oracles, order, sink, window, counts):
    """The mean probe curve ``(n, G)`` of one context.

    ``probe_oracles``: float64 ``(K, L, H, T)`` (K probes); ``order``: the scorer's ranking of
    the context's middle tokens (:func:`budgetopt.profile.rank_middle`); ``counts``: the grid's
    middle-token counts. Each probe's kept mass at the grid, as a share of its total mass (all
    heads), averaged over the probes. O(K L H T).
    """
    curves = []
    for oracle in probe_oracles:
        u = utility_from_order(oracle, order, sink, window).reshape(-1, oracle.shape[-1] - sink - window + 1)
        mass = u[:, -1].sum()
        curves.append(u[:, counts] / (mass if mass > 0 else 1.0))
    return np.mean(curves, axis=0)


def fit_deviation(curves, probes, groups):
    """Coefficients ``beta`` ``(G,)`` of the deviation rule, and the mean probe curve ``(n, G)``.

    ``curves``: ``(P, n, G)`` each calibration pair's curves (shares of its mass); ``probes``:
    ``(P, n, G)`` the mean probe curve of each pair's context; ``groups``: ``(P,)`` context ids
    (at least two distinct). Least squares per grid point ``g``, pooled over heads and pairs::

        beta[g] = sum_{p,h} (y - M_-c)(q - Pbar_-c) / sum_{p,h} (q - Pbar_-c)^2

    where ``M_-c`` (mean over pairs) and ``Pbar_-c`` (mean over contexts) leave the pair's own
    context ``c`` out, so that a context's deviation is measured as it is at a new request.
    The mean probe curve returned is over all contexts. O(C P n G) for C contexts.
    """
    ids = np.unique(groups)
    per_context = np.stack([probes[np.flatnonzero(groups == c)[0]] for c in ids])  # (C, n, G)
    num = np.zeros(curves.shape[-1])
    den = np.zeros(curves.shape[-1])
    for k, c in enumerate(ids):
        others = groups != c
        m = curves[others].mean(axis=0)
        pbar = np.delete(per_context, k, axis=0).mean(axis=0)
        dq = per_context[k] - pbar
        for p in np.flatnonzero(~others):
            num += ((curves[p] - m) * dq).sum(axis=0)
            den += (dq * dq).sum(axis=0)
    beta = num / np.where(den > 0, den, 1.0)
    return beta, per_context.mean(axis=0)


def cross_validate_gain(curves, probes, groups, utilities, lengths, fractions, sink, window, min_keep_fraction):
    """The gain on ``beta`` chosen by leave-one-context-out, as the allocator's shrinkage is.

    For each calibration context: ``beta`` and the mean probe curve fitted on the other
    contexts (:func:`fit_deviation`), the static curves their mean, and each of the context's
    pairs split at :data:`~budgetopt.request_fit.CV_COMPRESSIONS` with the curves ``static +
    gain * beta * (P - Pbar)`` for every gain of :data:`GAINS`; scored by the oracle mass the
    budgets retain. Chosen: the highest mean gain over the static curves among the gains
    under which no context's mean over its pairs loses more than
    :data:`~budgetopt.request_fit.CV_MAX_LOSS` at any compression (the no-loss rule is stated
    per context: the questions of one context share its prediction); 0 (the static curves)
    when none gains. The figures also report each gain's worst single pair (the per-question
    risk). ``utilities``: each pair's exact utility ``(n, T - sink - window + 1)``;
    ``lengths``: each pair's ``T``. Needs three contexts or more (each fold fits ``beta``
    across at least two). Returns the gain and the figures (JSON-ready).
    """
    gains = {g: [] for g in GAINS}  # per pair: (compressions,) differences against gain 0
    contexts = {g: [] for g in GAINS}  # per context: the mean of its pairs' differences
    for c in np.unique(groups):
        train = groups != c
        beta, pbar = fit_deviation(curves[train], probes[train], groups[train])
        static = curves[train].mean(axis=0)
        held = {g: [] for g in GAINS}
        for p in np.flatnonzero(~train):
            kept = _retained(static, beta * (probes[p] - pbar), utilities[p], lengths[p], fractions, sink, window,
                             min_keep_fraction)
            for g in GAINS:
                held[g].append(kept[g] - kept[0.0])
        for g in GAINS:
            gains[g].extend(held[g])
            contexts[g].append(np.mean(held[g], axis=0))
    figures = {str(g): {"mean_gain": float(np.mean(gains[g])), "worst_pair": float(np.min(gains[g])),
                        "worst_context": float(np.min(contexts[g]))} for g in GAINS}
    allowed = [g for g in GAINS if np.min(contexts[g]) >= -CV_MAX_LOSS]
    best = max(allowed, key=lambda g: (np.mean(gains[g]), -g))
    if np.mean(gains[best]) <= 0.0:
        best = 0.0
    return float(best), {"gain": figures, "compressions": list(CV_COMPRESSIONS), "max_loss": CV_MAX_LOSS}


def _retained(static, delta, utility, length, fractions, sink, window, min_keep_fraction):
    """Retained oracle fraction of one pair at each of CV_COMPRESSIONS for each gain: {gain: array}."""
    floor, tokens, totals = cv_totals(static.shape[0], length, fractions, sink, window, min_keep_fraction)
    out = {g: [] for g in GAINS}
    for total in totals:
        for g in GAINS:
            u, grid = with_floor(np.ascontiguousarray(static + g * delta), tokens, floor, length)
            out[g].append(kept_share(utility, split(u, grid, total)[0], sink, window))
    return {g: np.array(v) for g, v in out.items()}
