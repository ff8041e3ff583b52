"""Turning fractions into whole tokens: the package's only rounding rules.

budgetopt works in integer token units. A fraction becomes tokens exactly once, at a front
door, through one of the functions below:

* :func:`tokens_from_fraction` turns a kept fraction of a whole cache into a total (floor, so
  the total never exceeds the fraction asked for).
* :func:`tokens_evicted` is the published LU-KV rule for the tokens a table row at global
  compression ``c`` evicts, ``round(c * N)``, kept bit for bit so tables match.
* :func:`keep_counts_from_prune_ratios` turns per-head prune ratios (an LU-KV table row for
  one layer) into integer keep counts whose sum is exact, by largest remainder: the rule
  kvpress's ``LUKVPress`` applies at run time.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidInputError

__all__ = ["tokens_from_fraction", "tokens_evicted", "keep_counts_from_prune_ratios"]

# Fractions typed by people (0.2, 0.3) are not exact in binary: 0.3 * 10 is
# 2.9999999999999996. Values within this relative distance of an integer count as it.
_REL_EPS = 1e-9


def tokens_from_fraction(fraction, capacity):
    """Whole tokens kept when keeping ``fraction`` of a cache of ``capacity`` tokens.

    ``floor(fraction * capacity)``, where a product within 1e-9 (relative) of an integer
    counts as that integer, so ``0.3`` of ``10`` is ``3``.

    Parameters
    ----------
    fraction : float
        The kept fraction, in ``[0, 1]``. (kvpress's ``compression_ratio`` is ``1 - fraction``.)
    capacity : int
        Tokens in the full cache, ``>= 0``.

    Returns
    -------
    int
        Tokens kept, in ``[0, capacity]``.

    Examples
    --------
    >>> tokens_from_fraction(0.2, 8192)
    1638
    >>> tokens_from_fraction(0.3, 10)
    3
    """
    fraction = float(fraction)
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise InvalidInputError(f"`fraction` must be a number in [0, 1]; got {fraction!r}")
    capacity = int(capacity)
    if capacity < 0:
        raise InvalidInputError(f"`capacity` must be >= 0; got {capacity}")
    exact = fraction * capacity
    nearest = round(exact)
    if abs(exact - nearest) <= _REL_EPS * max(1.0, abs(exact)):
        return int(min(nearest, capacity))
    return int(min(math.floor(exact), capacity))


def tokens_evicted(ratio, tokens):
    """Tokens evicted at global compression ``ratio`` of ``tokens``: ``round(ratio * tokens)``.

    The published LU-KV rule (a float product rounded half to even), kept bit for bit so that
    :func:`budgetopt.lukv_table` reproduces the published tables. Used for their 99
    whole-percent rows; elsewhere budgets come from :func:`tokens_from_fraction`.

    Examples
    --------
    >>> tokens_evicted(0.8, 1000), tokens_evicted(0.5, 3)
    (800, 2)
    """
    return int(round(ratio * tokens))


def keep_counts_from_prune_ratios(prune_ratios, length):
    """Integer keep counts for heads of ``length`` tokens pruned at ``prune_ratios``.

    The largest-remainder rule of kvpress's ``LUKVPress``: the ideal keep count of a head is
    ``(1 - ratio) * length``; the total is ``round(sum of ideals)`` (clamped to
    ``[heads, heads * length]``); each head gets the floor of its ideal and the leftover
    tokens go one each to the heads with the largest fractional parts (ties: lower head
    index first); finally each count is clamped to ``[1, length]``.

    Parameters
    ----------
    prune_ratios : array_like of float, shape (..., heads)
        Fraction of each head's tokens to evict, in ``[0, 1]``; the last axis holds the heads
        that share one exact total (the KV heads of one layer).
    length : int
        Tokens per head before eviction (``T``), ``>= 1``.

    Returns
    -------
    numpy.ndarray of int64, shape like ``prune_ratios``
        Tokens each head keeps. Unless the final clamp to ``[1, length]`` binds, the sum over
        the last axis is exactly the rounded ideal total.

    Notes
    -----
    O(n log n) for n heads per row (one stable sort of the fractional parts).

    Examples
    --------
    >>> keep_counts_from_prune_ratios([0.5, 0.25, 0.75], 10)
    array([5, 8, 2])
    >>> keep_counts_from_prune_ratios([[0.55, 0.55], [0.0, 1.0]], 10)
    array([[ 5,  4],
           [10,  1]])
    """
    ratios = np.asarray(prune_ratios, dtype=np.float64)
    if ratios.ndim == 0:
        raise InvalidInputError("`prune_ratios` must have at least one axis (the heads)")
    if ratios.shape[-1] == 0:
        raise InvalidInputError("`prune_ratios` must hold at least one head")
    if not np.all(np.isfinite(ratios)) or np.any(ratios < 0) or np.any(ratios > 1):
        raise InvalidInputError("`prune_ratios` must be finite numbers in [0, 1]")
    length = int(length)
    if length < 1:
        raise InvalidInputError(f"`length` must be >= 1; got {length}")
    heads = ratios.shape[-1]
    ideal = (1.0 - ratios) * length
    total = np.clip(np.rint(ideal.sum(axis=-1)), heads, heads * length).astype(np.int64)
    base = np.floor(ideal).astype(np.int64)
    leftover = total - base.sum(axis=-1)  # in [0, heads] up to the clamp
    frac = ideal - base
    # Rank heads by fractional part, largest first; stable so ties go to the lower index.
    order = np.argsort(-frac, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(heads), axis=-1)
    counts = base + (rank < leftover[..., None])
    return np.clip(counts, 1, length)
