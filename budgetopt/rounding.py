"""Turning fractions into whole tokens: the package's only rounding rules.

budgetopt works in integer token units. A fraction becomes tokens exactly once, at a front
door, through one of the functions below:

* :func:`tokens_from_fraction` turns a kept fraction of a whole cache into a total (floor, so
  the total never exceeds the fraction asked for).
* :func:`split_integer` splits a total in proportion to weights under a cap (water-filling,
  then largest remainder), for the comparison allocators.
* :func:`tokens_evicted` is the published LU-KV rule for the tokens a table row at global
  compression ``c`` evicts, ``round(c * N)``, kept bit for bit so tables match.
* :func:`keep_counts_from_prune_ratios` turns per-head prune ratios (an LU-KV table row for
  one layer) into integer keep counts whose sum is exact, by largest remainder: the rule
  kvpress's ``LUKVPress`` applies at run time. By default it runs ``LUKVPress``'s own torch
  operations (torch is imported then, not with budgetopt), so the counts are the ones
  ``LUKVPress`` applies on any CPU or GPU.
* :func:`head_floor` is the fewest tokens a head keeps in an LU-KV table or a per-request
  split, ``max(round(min_keep_fraction * T), sink + window)`` (used by :mod:`budgetopt.lukv`
  and :mod:`budgetopt.request` alike).
* :func:`token_counts` turns the per-request allocator's grid fractions into middle-token
  counts, each ``round(x * M)`` (half to even).
* :func:`blend_budgets` mixes two whole-token splits of one total into a third with the same
  total (largest remainder): the per-request allocator's static/request mix.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._checks import check_fraction, from_tensor, real_array
from ._limits import MAX_TOKENS, MAX_TOKENS_TEXT
from .errors import InvalidInputError, InvalidTypeError, MissingDependencyError

__all__ = ["tokens_from_fraction", "tokens_evicted", "keep_counts_from_prune_ratios", "split_integer", "RULES"]

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


def head_floor(min_keep_fraction, length, sink, window):
    """Fewest tokens a head keeps: ``max(round(min_keep_fraction * T), sink + window)``.

    Arguments are already checked (a fraction in [0, 1), counts as ints); O(1).

    Examples
    --------
    >>> head_floor(0.01, 1000, 4, 2), head_floor(0.0, 1000, 4, 2)
    (10, 6)
    """
    return max(int(round(min_keep_fraction * length)), sink + window)


def token_counts(fractions, middle):
    """Middle tokens kept at each grid fraction: ``round(x_k * M)`` (half to even), int64 ``(G,)``.

    Each point is rounded alone (no total to keep exact, unlike :func:`split_integer`): the
    grid of the per-request allocator's curves (:mod:`budgetopt.request`,
    :mod:`budgetopt.request_fit`). O(G).

    Examples
    --------
    >>> token_counts(np.array([0.0, 0.25, 0.5, 1.0]), 10).tolist()   # 2.5 and 5.0: half to even
    [0, 2, 5, 10]
    """
    return np.rint(fractions * middle).astype(np.int64)


def blend_budgets(static, request, shrinkage):
    """Whole-token budgets at ``shrinkage * static + (1 - shrinkage) * request``, same total.

    Both ``(n,)`` int64 with equal sums; rounded down, then the tokens left over go to the
    largest fractional parts (ties by index). Each head ends between its two budgets.
    Used by :class:`budgetopt.RequestAllocator` to mix the static and the request's splits.

    Examples
    --------
    >>> blend_budgets(np.array([4, 0, 2]), np.array([0, 4, 2]), 0.5).tolist()
    [2, 2, 2]
    """
    if shrinkage >= 1.0:
        return static.copy()
    if shrinkage <= 0.0:
        return request.copy()
    x = request + shrinkage * (static - request).astype(np.float64)
    out = np.floor(x).astype(np.int64)
    left = int(static.sum() - out.sum())
    if left > 0:
        frac = x - out
        out[np.argsort(-frac, kind="stable")[:left]] += 1
    return out


def split_integer(total, weights, cap):
    """Non-negative integers proportional to ``weights``, each ``<= cap``, summing to ``total``.

    Water-filling: shares above ``cap`` are fixed at ``cap`` and the rest is split again among the
    others; the integer parts are then completed by largest remainder (ties: lower index).
    ``total`` must not exceed ``cap * len(weights)``. Used by the comparison allocators of
    :mod:`budgetopt.allocators`.

    Examples
    --------
    >>> split_integer(10, [1, 1, 2], 100).tolist()   # 2.5, 2.5, 5: the tie goes to the lower index
    [3, 2, 5]
    >>> split_integer(10, [1, 1, 8], 4).tolist()     # the third is capped; the rest is split again
    [3, 3, 4]
    """
    weights = np.asarray(weights, dtype=np.float64).ravel()
    cap = np.broadcast_to(np.asarray(cap, dtype=np.float64), weights.shape)
    n = weights.size
    if total > cap.sum() + 1e-9:
        raise ValueError(f"total {total} exceeds the caps' sum {cap.sum()}")
    share = np.zeros(n)
    free = np.ones(n, bool)
    left = float(total)
    while left > 1e-9 and free.any():
        w = np.where(free, np.maximum(weights, 0.0), 0.0)
        w = w if w.sum() > 0 else free.astype(np.float64)
        want = left * w / w.sum()
        over = free & (share + want >= cap - 1e-12)
        if not over.any():
            share += want
            break
        left -= (cap[over] - share[over]).sum()
        share[over] = cap[over]
        free &= ~over
    base = np.minimum(np.floor(share + 1e-9), cap).astype(np.int64)
    rest = int(total - base.sum())
    room = base < cap
    order = np.argsort(np.where(room, base - share, np.inf), kind="stable")
    base[order[:rest]] += 1
    return base


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


def keep_counts_from_prune_ratios(prune_ratios, length, *, rule="kvpress", device=None):
    """Integer keep counts for heads of ``length`` tokens pruned at ``prune_ratios``.

    The largest-remainder rule of kvpress's ``LUKVPress``: the ideal keep count of a head is
    ``(1 - ratio) * length``; the total is ``round(sum of ideals)`` (half to even, clamped to
    ``[heads, heads * length]``); each head gets the floor of its ideal and the leftover
    tokens go one each to the heads with the largest fractional parts; finally each count
    is clamped to ``[1, length]``.

    Parameters
    ----------
    prune_ratios : array_like or torch.Tensor of float, shape (..., heads)
        Fraction of each head's tokens to evict, in ``[0, 1]``; the last axis holds the heads
        that share one exact total (the KV heads of one layer).
    length : int
        Tokens per head before eviction (``T``), ``>= 1``.
    rule : {"kvpress", "float64"}, optional
        ``"kvpress"`` (default): the counts ``LUKVPress`` applies, computed by the same torch
        operations ``LUKVPress.compress`` runs on each row (float32 ideals and sum,
        ``torch.topk`` for the leftover tokens), so they agree with it bit for bit on any
        CPU or GPU, ties included. Needs torch. ``"float64"``: the same rule in float64 NumPy,
        ties to the lower head index; needs no torch and depends on no library's internals.
    device : str or torch.device, optional
        Where ``rule="kvpress"`` computes (``LUKVPress`` computes on its keys' device, and a
        GPU sums and breaks ties in its own order). Default: the device of ``prune_ratios``
        when it is a torch tensor, else the CPU. Not accepted with ``rule="float64"``.

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
        an unknown ``rule``, an unknown ``device``, or ``device`` with ``rule="float64"``.
    MissingDependencyError
        ``rule="kvpress"`` without torch installed (install ``budgetopt[torch]``, or pass
        ``rule="float64"``). There is no torch-free imitation of ``LUKVPress``'s arithmetic:
        its float32 sum order and ``torch.topk``'s tie order depend on torch's build and the
        hardware.

    Notes
    -----
    ``"float64"``: O(n log n) for n heads per row (one stable sort), vectorised over rows.
    ``"kvpress"``: O(n log n) per row too, but a Python loop over rows of about a dozen small
    torch operations each (what ``LUKVPress`` runs once per layer and forward pass); meant
    for layer rows and tables, not per-token paths (``benchmarks/bench_keep_counts.py``).
    Either rule gives each head its ideal count rounded down or up; they can differ on single
    heads where fractional parts tie across the cut, or where float32 rounding moves a floor
    or the rounded total.

    Examples
    --------
    >>> keep_counts_from_prune_ratios([0.5, 0.25, 0.75], 10)
    array([5, 8, 2])
    >>> keep_counts_from_prune_ratios([[0.55, 0.55], [0.0, 1.0]], 10)
    array([[ 5,  4],
           [10,  1]])

    Four tied heads share two leftover tokens: the float64 rule gives them to the first two;
    ``LUKVPress`` (hence the default rule) gives them to the two ``torch.topk`` picks:

    >>> keep_counts_from_prune_ratios([0.25, 0.25, 0.25, 0.25], 10, rule="float64")
    array([8, 8, 7, 7])
    >>> sorted(keep_counts_from_prune_ratios([0.25, 0.25, 0.25, 0.25], 10).tolist())
    [7, 7, 8, 8]
    """
    if rule not in RULES:
        raise InvalidInputError(f"`rule` must be one of {', '.join(map(repr, RULES))}; got {rule!r}")
    prune_ratios, tensor_device = from_tensor(prune_ratios)
    if device is None:
        device = tensor_device
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
        return _lukvpress_keep_counts(ratios, length, device)
    if device is not None:
        raise InvalidInputError("`device` applies to rule='kvpress' only (rule='float64' computes in NumPy)")
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


def _lukvpress_keep_counts(ratios, length, device):
    """``rule="kvpress"``: each row of ``ratios`` (float64, checked) through the operations of
    ``LUKVPress.compress`` (kvpress 0.5.5), in torch on ``device`` (None: the CPU)."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "rule='kvpress' computes LUKVPress's counts with torch, which is not installed "
            "(pip install 'budgetopt[torch]'), or pass rule='float64'"
        ) from None
    try:
        device = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"`device` must name a torch device; got {device!r} ({exc})") from None
    heads = ratios.shape[-1]
    rows = ratios.reshape(-1, heads)
    counts = np.empty(rows.shape, dtype=np.int64)
    for i, row in enumerate(rows):
        counts[i] = _lukvpress_row(torch, row, length, device)
    return counts.reshape(ratios.shape)


def _lukvpress_row(torch, row, length, device):
    """Keep counts of one layer's heads from its NumPy ``row`` of prune ratios, by the torch
    operations ``LUKVPress.compress`` applies, in its order and dtypes: a float32 tensor on
    ``device``, float32 ideals and their sum, ``torch.topk`` over the fractional parts."""
    ratio = torch.as_tensor(row, device=device, dtype=torch.float32)
    heads = ratio.shape[0]
    ideal = (1.0 - ratio).clamp(min=0.0, max=1.0) * length
    target = int(torch.round(ideal.sum()).item())
    target = min(max(target, heads), heads * length)
    keep = torch.floor(ideal).long()
    extra = target - int(keep.sum().item())
    if extra > 0:
        winners = torch.topk(ideal - keep, k=min(extra, heads)).indices
        keep[winners] += 1
    return keep.clamp_(min=1, max=length).cpu().numpy()
