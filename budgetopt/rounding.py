"""Turning fractions into whole tokens: the package's only rounding rules.

budgetopt works in integer token units. A fraction becomes tokens exactly once, at a front
door, through one of the functions below:

* :func:`tokens_from_fraction` turns a kept fraction of a whole cache into a total (floor, so
  the total never exceeds the fraction asked for).
* :func:`tokens_evicted` is the published LU-KV rule for the tokens a table row at global
  compression ``c`` evicts, ``round(c * N)``, kept bit for bit so tables match.
* :func:`keep_counts_from_prune_ratios` turns per-head prune ratios (an LU-KV table row for
  one layer) into integer keep counts whose sum is exact, by largest remainder: the rule
  kvpress's ``LUKVPress`` applies at run time, by default in its own float32 arithmetic and
  tie order (see :mod:`budgetopt._kvpress_arith`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._checks import check_fraction, real_array
from ._limits import MAX_TOKENS, MAX_TOKENS_TEXT
from .errors import InvalidInputError, InvalidTypeError

__all__ = ["tokens_from_fraction", "tokens_evicted", "keep_counts_from_prune_ratios", "RULES"]

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
    fraction = check_fraction(fraction, "fraction")
    capacity = _whole(capacity, "capacity", 0)
    exact = fraction * capacity
    nearest = round(exact)
    if abs(exact - nearest) <= _REL_EPS * max(1.0, abs(exact)):
        return int(min(nearest, capacity))
    return int(min(math.floor(exact), capacity))


def _whole(value, name, minimum):
    """``value`` as a Python int >= ``minimum``: an integer, or a float with no fractional part."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"`{name}` must be a whole number; got {type(value).__name__}")
    if not isinstance(value, numbers.Integral):
        v = float(value)
        if not math.isfinite(v) or v != math.floor(v):
            raise InvalidInputError(f"`{name}` must be a whole number of tokens; got {v!r}")
    value = int(value)
    if value < minimum:
        raise InvalidInputError(f"`{name}` must be >= {minimum}; got {value}")
    return value


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


#: Rounding rules of :func:`keep_counts_from_prune_ratios`.
RULES = ("kvpress", "float64")


def keep_counts_from_prune_ratios(prune_ratios, length, *, rule="kvpress"):
    """Integer keep counts for heads of ``length`` tokens pruned at ``prune_ratios``.

    The largest-remainder rule of kvpress's ``LUKVPress``: the ideal keep count of a head is
    ``(1 - ratio) * length``; the total is ``round(sum of ideals)`` (half to even, clamped to
    ``[heads, heads * length]``); each head gets the floor of its ideal and the leftover
    tokens go one each to the heads with the largest fractional parts; finally each count
    is clamped to ``[1, length]``.

    Parameters
    ----------
    prune_ratios : array_like of float, shape (..., heads)
        Fraction of each head's tokens to evict, in ``[0, 1]``; the last axis holds the heads
        that share one exact total (the KV heads of one layer).
    length : int
        Tokens per head before eviction (``T``), ``>= 1``.
    rule : {"kvpress", "float64"}, optional
        ``"kvpress"`` (default): ``LUKVPress``'s own arithmetic, bit for bit: the ratios
        read as float32, the ideals, their sum and the fractional parts in float32 (the sum
        in torch's CPU order), and ties among equal fractional parts broken the way
        ``torch.topk`` breaks them on a CPU. The counts are then exactly the ones
        ``LUKVPress`` applies on a CPU. ``"float64"``: the same rule in float64, ties to the
        lower head index (independent of any library's internals).

    Returns
    -------
    numpy.ndarray of int64, shape like ``prune_ratios``
        Tokens each head keeps. Unless the final clamp to ``[1, length]`` binds, the sum over
        the last axis is exactly the rounded ideal total.

    Raises
    ------
    InvalidTypeError
        ``prune_ratios`` is not a real array (strings, ragged lists, masked arrays), or
        ``length`` is not a number.
    InvalidInputError
        A ratio outside ``[0, 1]`` or not finite, no heads, ``length`` below 1 or not whole,
        or an unknown ``rule``.

    Notes
    -----
    ``"float64"``: O(n log n) for n heads per row (one stable sort). ``"kvpress"``: O(n) per
    row for the sum and O(n log n) for the selection, in Python loops over rows that have
    leftover tokens (fine for tables; these are not per-token paths). kvpress on a GPU sums
    and breaks ties in its own order: layer totals agree, single heads may differ by one
    token where fractional parts tie or a float32 sum lands within rounding of a half.

    Examples
    --------
    >>> keep_counts_from_prune_ratios([0.5, 0.25, 0.75], 10)
    array([5, 8, 2])
    >>> keep_counts_from_prune_ratios([[0.55, 0.55], [0.0, 1.0]], 10)
    array([[ 5,  4],
           [10,  1]])

    Four tied heads share two leftover tokens: ``torch.topk`` (hence ``LUKVPress``) picks the
    last two, the float64 rule the first two:

    >>> keep_counts_from_prune_ratios([0.25, 0.25, 0.25, 0.25], 10)
    array([7, 7, 8, 8])
    >>> keep_counts_from_prune_ratios([0.25, 0.25, 0.25, 0.25], 10, rule="float64")
    array([8, 8, 7, 7])
    """
    return _keep_counts(prune_ratios, length, rule)


def _keep_counts(prune_ratios, length, rule, lanes=None):
    """:func:`keep_counts_from_prune_ratios`; ``lanes`` sets the float32 vector width of the
    torch CPU sum that ``rule="kvpress"`` reproduces (None: 8, AVX2)."""
    if rule not in RULES:
        raise InvalidInputError(f"`rule` must be one of {', '.join(map(repr, RULES))}; got {rule!r}")
    ratios = real_array(prune_ratios, "`prune_ratios`").astype(np.float64)
    if ratios.ndim == 0:
        raise InvalidInputError("`prune_ratios` must have at least one axis (the heads)")
    if ratios.shape[-1] == 0:
        raise InvalidInputError("`prune_ratios` must hold at least one head")
    if not np.all(np.isfinite(ratios)) or np.any(ratios < 0) or np.any(ratios > 1):
        raise InvalidInputError("`prune_ratios` must be finite numbers in [0, 1]")
    length = _whole(length, "length", 1)
    if length >= MAX_TOKENS:
        raise InvalidInputError(f"`length` is too large: it must be below {MAX_TOKENS_TEXT} tokens; got {length}")
    if rule == "kvpress":
        from ._kvpress_arith import DEFAULT_LANES, kvpress_keep_counts

        return kvpress_keep_counts(ratios, length, DEFAULT_LANES if lanes is None else lanes)
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
