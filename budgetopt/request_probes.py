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

__all__ = ["probe_curve", "fit_deviation"]


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
