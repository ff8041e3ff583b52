"""Utility curves from profiling arrays: an oracle of token importance and a scorer's ranking.

For one calibration (context, question) pair, ``oracle[..., t]`` is the long-horizon importance
of context token ``t`` to a head (for LU-KV, the attention mass it receives while the model
answers) and ``scores[..., t]`` is how a heuristic (SnapKV, KeyDiff, ExpectedAttention, ...)
ranks the token at prefill. A head that keeps ``b`` tokens keeps the ``sink`` first and
``window`` last tokens plus the ``b - sink - window`` middle tokens the scorer ranks highest;
its utility is the oracle mass of those tokens.
"""

from __future__ import annotations

import os

import numpy as np

from . import _kernels_profile
from ._checks import check_finite, check_int, real_array
from .curves import Curves
from .errors import InvalidInputError, InvalidTypeError

__all__ = ["curves_from_scores", "curves_from_pairs", "CURVE_AGGREGATES", "DEFAULT_RESOLUTION"]

#: How :func:`curves_from_pairs` combines the curves of several calibration pairs.
CURVE_AGGREGATES = ("mean_curve", "median_curve")

#: Points per head of a relative grid (kept fraction ``k / resolution``): per mille.
DEFAULT_RESOLUTION = 1000
_MAX_RESOLUTION = 1_000_000


def _head_array(value, ref):
    """``value`` as a real array with at least one head axis, or an error naming ``ref``."""
    arr = real_array(value, ref)
    if arr.ndim < 2:
        raise InvalidInputError(
            f"{ref} must have shape (*head_shape, T) with at least one head axis; got shape "
            f"{arr.shape} (for a single head add a leading axis of length 1)"
        )
    if 0 in arr.shape[:-1]:
        raise InvalidInputError(f"{ref} must hold at least one head; got shape {arr.shape}")
    return arr


def check_profile_arrays(oracle, scores, sink, window, *, oracle_name="oracle", scores_name="scores",
                         quoted=True):
    """Validate one (oracle, scores) pair; return them as arrays plus ``sink`` and ``window``.

    Internal front door shared by :func:`curves_from_scores`, :func:`curves_from_pairs`,
    :func:`budgetopt.lukv_table` and the command line. ``oracle`` is returned as float64;
    ``scores`` keeps a real dtype (it is only ranked). Messages name the arrays
    ```oracle_name``` (in backticks, as arguments), or ``oracle_name`` as given when
    ``quoted`` is False (for example ``--oracle run1.npy``).
    """
    o_ref = f"`{oracle_name}`" if quoted else oracle_name
    s_ref = f"`{scores_name}`" if quoted else scores_name
    sink = check_int(sink, "sink")
    window = check_int(window, "window")
    oracle = _head_array(oracle, o_ref)
    scores = _head_array(scores, s_ref)
    if oracle.shape != scores.shape:
        raise InvalidInputError(
            f"{s_ref} must have the same shape as {o_ref}; got {scores.shape} and {oracle.shape}"
        )
    length = oracle.shape[-1]
    if length <= sink + window:
        raise InvalidInputError(
            f"{o_ref} must have more tokens than sink + window = {sink + window} "
            f"(sink={sink}, window={window}); got T = {length}"
        )
    oracle = np.asarray(oracle, dtype=np.float64)
    check_finite(oracle, o_ref)
    check_finite(scores, s_ref)
    return oracle, scores, sink, window


def _as_float32(middle):
    """``middle`` as C-ordered float32 rows ``(n, M)`` when every value is exactly a float32
    (float16/float32 always, float64 when it holds only such values), else None."""
    if middle.dtype.kind != "f":
        return None
    if middle.dtype.itemsize > 4:
        with np.errstate(over="ignore", invalid="ignore"):
            narrow = middle.astype(np.float32)
        if not np.array_equal(narrow, middle):
            return None
        middle = narrow
    return np.ascontiguousarray(middle, dtype=np.float32).reshape(-1, middle.shape[-1])


def _int_keys(middle):
    """uint32 keys whose ascending order is the descending order of integers of at most 32
    bits, as rows ``(n, M)``, else None."""
    kind, size = middle.dtype.kind, middle.dtype.itemsize
    if kind == "i" and size <= 4:
        ascending = middle.astype(np.int64).astype(np.uint32) ^ np.uint32(0x80000000)
    elif kind == "u" and size <= 4:
        ascending = middle.astype(np.uint32)
    else:
        return None
    return (~ascending).reshape(-1, middle.shape[-1])


def _sorted_positions(packed, shape):
    """Sort each row of packed ``key << 32 | position`` keys (unique, so the plain sort is
    stable) and return the positions, shaped ``shape``."""
    packed.sort(axis=-1)
    order = np.empty(packed.shape, np.int64)
    _kernels_profile.unpack_positions(packed, order)
    return order.reshape(shape)


def rank_middle(scores, sink, window):
    """Scorer order of each head's middle tokens: indices into ``scores[..., sink:T-window]``.

    Highest score first; equal scores by position, earlier first (the order of a stable sort
    of ``-scores``). Scores that fit 32 bits (float16/32, float64 values exact in float32,
    integers up to 32 bits) are packed with their position into unique 64-bit keys and sorted
    once: no ties remain, so the plain sort is the stable order. Other float64 scores: one
    unstable sort per head, and heads whose sorted keys contain an exact tie are sorted again
    stably. 64-bit integers: one stable sort. Vectorised over heads. Validated input only.
    """
    length = scores.shape[-1]
    middle = scores[..., sink:length - window]
    rows = _as_float32(middle)
    if rows is not None:
        packed = np.empty(rows.shape, np.uint64)
        _kernels_profile.pack_descending_f32(rows, packed)
        return _sorted_positions(packed, middle.shape)
    keys32 = _int_keys(middle)
    if keys32 is not None:
        positions = np.arange(middle.shape[-1], dtype=np.uint64)
        return _sorted_positions((keys32.astype(np.uint64) << np.uint64(32)) | positions, middle.shape)
    if middle.dtype.kind in "iu":
        # Bitwise NOT reverses the order of any integer type without overflow.
        return np.argsort(np.invert(middle), axis=-1, kind="stable")
    keys = -middle  # negation is exact
    order = np.argsort(keys, axis=-1)
    sorted_keys = np.take_along_axis(keys, order, axis=-1)
    tied = np.any(sorted_keys[..., 1:] == sorted_keys[..., :-1], axis=-1)
    if tied.any():
        order[tied] = np.argsort(keys[tied], axis=-1, kind="stable")
    return order


def utility_from_order(oracle, order, sink, window):
    """Utility at grid ``sink + window .. T`` given each head's ranking ``order`` of its middle.

    Validated input only: ``oracle`` float64 ``(*head_shape, T)``, ``order`` from
    :func:`rank_middle`. Returns float64 ``(*head_shape, T - sink - window + 1)``.
    """
    length = oracle.shape[-1]
    middle = oracle[..., sink:length - window]
    protected = oracle[..., :sink].sum(axis=-1) + oracle[..., length - window:].sum(axis=-1)
    utility = np.empty(oracle.shape[:-1] + (middle.shape[-1] + 1,), dtype=np.float64)
    M = middle.shape[-1]
    _kernels_profile.ranked_cumsum(
        np.ascontiguousarray(middle, dtype=np.float64).reshape(-1, M),
        np.ascontiguousarray(order).reshape(-1, M),
        np.ascontiguousarray(protected, dtype=np.float64).reshape(-1),
        utility.reshape(-1, M + 1),
    )
    return utility


def curves_from_scores(oracle, scores, *, sink=0, window=0):
    """Utility curves of heads that keep the tokens a scorer ranks highest.

    For each head, keeping ``b`` tokens means the first ``sink`` and last ``window`` tokens
    (always kept, counted in ``b``) plus the ``b - sink - window`` middle tokens with the
    highest ``scores`` (equal scores: earlier position first). The utility is the ``oracle``
    mass of the kept tokens::

        utility[h, b] = sum(oracle[h, protected]) + sum(oracle[h, top_{b - sink - window}(scores[h])])

    Parameters
    ----------
    oracle : array_like of float, shape ``(*head_shape, T)``
        Importance of every context token to every head (for example ``(layers, kv_heads, T)``
        attention mass measured while the model answers). Finite; may be of any sign.
    scores : array_like of real, shape ``(*head_shape, T)``
        The scorer's value of every token; higher is kept first. Finite.
    sink : int, optional
        Tokens at the start that are always kept. Default 0.
    window : int, optional
        Tokens at the end that are always kept. Default 0.

    Returns
    -------
    Curves
        Shared grid ``arange(sink + window, T + 1)`` (so ``T - sink - window + 1`` points);
        ``meta`` holds ``{"sink", "window", "length"}``. Capacity is ``n_heads * T``.

    Raises
    ------
    InvalidTypeError
        An array is not real numeric, or ``sink``/``window`` is not an integer.
    InvalidInputError
        Shapes differ, no head axis, ``T <= sink + window``, a non-finite value, or a negative
        ``sink``/``window``; the message names the argument.

    Notes
    -----
    O(n T log T) for n heads: one sort per head along the last axis (numpy, vectorised over
    heads; scores that fit 32 bits are sorted packed with their positions, other float64
    scores with an exact tie in a head are re-sorted stably), then one compiled pass that
    gathers and accumulates the oracle. No Python loop over heads.

    Examples
    --------
    >>> oracle = [[0.5, 0.1, 0.3, 0.1], [0.2, 0.4, 0.0, 0.4]]
    >>> scores = [[9.0, 1.0, 5.0, 2.0], [0.0, 3.0, 3.0, 1.0]]
    >>> c = curves_from_scores(oracle, scores, sink=1)
    >>> c.grid
    array([1, 2, 3, 4])
    >>> c.utility.round(2)
    array([[0.5, 0.8, 0.9, 1. ],
           [0.2, 0.6, 0.6, 1. ]])
    """
    oracle, scores, sink, window = check_profile_arrays(oracle, scores, sink, window)
    length = oracle.shape[-1]
    order = rank_middle(scores, sink, window)
    utility = utility_from_order(oracle, order, sink, window)
    grid = np.arange(sink + window, length + 1, dtype=np.int64)
    meta = {"sink": sink, "window": window, "length": int(length)}
    if sums_bounded(oracle):  # every sum of utilities is finite: valid as built
        return Curves._trusted(utility, grid, meta)
    return Curves(utility, grid, meta=meta)  # reports the overflow


def sums_bounded(oracle):
    """Whether ``sum(|oracle|)`` is finite, so no sum of utilities built from it overflows."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.abs(oracle).sum()))


def as_pairs(oracles, scores, layout):
    """``(oracles, scores, separate)``: the oracles as a list, the scores as a list of the same
    length (one shared array repeated), and whether the scores were given one per pair.
    ``layout`` describes one array's axes in messages, e.g. ``"(L, H, T)"``."""
    if isinstance(oracles, np.ndarray) and oracles.ndim == 3:
        raise InvalidInputError(
            f"`oracles` must be a sequence of {layout} arrays, one per calibration pair; got one "
            "3-D array (wrap a single pair in a list)"
        )
    if isinstance(oracles, (str, bytes, os.PathLike)) or not hasattr(oracles, "__iter__"):
        raise InvalidTypeError(f"`oracles` must be a sequence of {layout} arrays; got {type(oracles).__name__}")
    oracles = list(oracles)
    if not oracles:
        raise InvalidInputError(f"`oracles` must hold at least one {layout} array")
    scores, separate = per_pair(scores, len(oracles), "scores")
    return oracles, scores, separate


def per_pair(values, n, name):
    """``(values, separate)``: ``values`` as a list of ``n`` items (a list or tuple as given,
    anything else repeated) and whether it was given one per pair."""
    if isinstance(values, (list, tuple)):
        if len(values) != n:
            raise InvalidInputError(f"`{name}` given as a list must hold one array per oracle ({n}); got {len(values)}")
        return list(values), True
    return [values] * n, False


# -- a relative grid: contexts of different lengths ---------------------------------------------
def check_resolution(resolution):
    """``resolution`` as a Python int in ``1 .. 10**6``."""
    resolution = check_int(resolution, "resolution", minimum=1)
    if resolution > _MAX_RESOLUTION:
        raise InvalidInputError(f"`resolution` must be at most {_MAX_RESOLUTION}; got {resolution}")
    return resolution


def relative_start(min_length, sink, window, resolution):
    """First point of the relative grid: ``ceil(resolution * (sink + window) / min_length)``,
    the protected tokens of the shortest context in ``1/resolution`` units, so every point
    is at or above every context's ``sink + window``."""
    return -(-resolution * (sink + window) // min_length)


def resample_relative(utility, length, sink, window, resolution, start):
    """A token-grid curve (grid ``arange(sink + window, length + 1)``) at the kept fractions
    ``k / resolution``, ``k = start .. resolution``, linear between whole tokens.

    ``k * length / resolution`` is split exactly in integers (``divmod``), so fractions that
    fall on a whole token (``k = resolution`` always) take that token's utility as it is.
    """
    k = np.arange(start, resolution + 1, dtype=np.int64)
    whole, part = np.divmod(k * length, resolution)
    lo = whole - (sink + window)
    hi = np.minimum(lo + 1, utility.shape[-1] - 1)
    frac = part / resolution
    return utility[..., lo] * (1.0 - frac) + utility[..., hi] * frac


def relative_curves(pairs, lengths, *, sink, window, resolution, aggregate, meta):
    """Curves on a relative grid from ``(oracle, scores)`` pairs (already checked) whose
    contexts have the token counts ``lengths``; see :func:`curves_from_pairs`."""
    start = relative_start(min(lengths), sink, window, resolution)
    total, parts = None, []
    for oracle, score in pairs:
        curve = curves_from_scores(oracle, score, sink=sink, window=window)
        resampled = resample_relative(curve.utility, oracle.shape[-1], sink, window, resolution, start)
        if aggregate == "median_curve":
            parts.append(resampled)
        else:
            total = resampled if total is None else total + resampled  # pair order
    utility = np.median(np.stack(parts), axis=0) if aggregate == "median_curve" else total / len(lengths)
    meta = {**meta, "grid": "relative", "resolution": resolution, "min_length": int(min(lengths)),
            "max_length": int(max(lengths))}
    return Curves(utility, np.arange(start, resolution + 1, dtype=np.int64), meta=meta)


def curves_from_pairs(oracles, scores, *, sink=0, window=0, aggregate="mean_curve", resolution=None):
    """One set of curves from several calibration pairs: each pair's
    :func:`curves_from_scores`, combined point by point.

    Parameters
    ----------
    oracles : sequence of array_like, each of shape ``(*head_shape, T)``
        One oracle array per calibration pair, all of one shape.
    scores : array_like, or list/tuple of array_like
        The scorer's values: one array shared by every pair, or one per pair.
    sink, window : int, optional
        As in :func:`curves_from_scores`.
    aggregate : {"mean_curve", "median_curve"}, optional
        ``"mean_curve"`` (default): the mean utility at every grid point (the expected
        retained mass); ``"median_curve"``: the median at every point.
    resolution : int, optional
        Points of a **relative grid**: grid point ``k`` means keeping ``k / resolution`` of
        the context. Default: a token grid when every pair has the same ``T``, otherwise
        :data:`DEFAULT_RESOLUTION` (1000, per mille). Given, the grid is relative whatever
        the lengths. At most ``10**6``.

    Returns
    -------
    Curves
        Token grid: ``arange(sink + window, T + 1)``; ``meta`` holds ``sink``, ``window``,
        ``length``, ``pairs`` and ``aggregate``.

        Relative grid: ``arange(start, resolution + 1)`` with ``start = ceil(resolution *
        (sink + window) / min_length)``, the shortest context's protected tokens (so every
        grid point keeps at least ``sink + window`` tokens of every context); capacity is
        ``n_heads * resolution``. ``meta`` adds ``"grid": "relative"``, ``resolution``,
        ``min_length`` and ``max_length`` (no ``length``). Allocate on it as usual
        (``budget 0.2`` is 20% of every head's context) and apply the budgets to a context
        of ``T`` tokens with ``head_capacity=resolution``
        (:func:`budgetopt.torch.layer_budgets`, ``BudgetPress``).

    Raises
    ------
    InvalidInputError, InvalidTypeError
        A pair breaks a rule of :func:`curves_from_scores` (the message names ``oracles[i]``
        or ``scores[i]``), pairs differ in shape, or ``aggregate`` is unknown.

    Notes
    -----
    O(pairs * n T log T); memory: the curves of every pair at once (``pairs * n * T``
    float64) for the median, one running sum for the mean.

    On a relative grid each pair's curve is first resampled at ``k * T / resolution``
    tokens, linearly between the two whole token counts around it (the expected utility
    when the count is rounded up with probability equal to the fractional part), then the
    pairs are combined point by point as above. The fraction kept, not the token count, is
    what carries over between contexts of different lengths, as in LU-KV's prune-ratio
    tables; the sink and window stay whole tokens (``meta``) and are kept by the press at
    any length, and the grid's first point covers them for every context at least
    ``min_length`` long. The shortest context thereby sets the floor for all: with ``sink +
    window = 36`` and a 200-token context among the pairs, no head goes below 180/1000 of a
    context (on a token grid of that context the floor would be the same 18%). Leave very
    short contexts out of the calibration if that floor matters. Cost: O(n * resolution)
    more per pair.

    Examples
    --------
    Three pairs of one head and two tokens, one shared ranking (token 0 first):

    >>> import numpy as np
    >>> oracles = [[[0.5, 0.5]], [[1.0, 0.0]], [[0.0, 1.0]]]
    >>> c = curves_from_pairs(oracles, np.array([[2.0, 1.0]]), aggregate="median_curve")
    >>> c.utility.tolist(), c.meta["pairs"]
    ([[0.0, 0.5, 1.0]], 3)

    Contexts of 2 and 4 tokens on a relative grid of quarters (each ranks its first token
    first). The 2-token context keeps half a token at a quarter, 1.5 tokens at three quarters:

    >>> c = curves_from_pairs([[[0.0, 1.0]], [[0.5, 0.5, 0.0, 0.0]]],
    ...                       [np.array([[2.0, 1.0]]), np.array([[4.0, 3.0, 2.0, 1.0]])], resolution=4)
    >>> c.grid.tolist(), c.utility.tolist(), c.meta["grid"], c.capacity
    ([0, 1, 2, 3, 4], [[0.0, 0.25, 0.5, 0.75, 1.0]], 'relative', 4)
    """
    if aggregate not in CURVE_AGGREGATES:
        raise InvalidInputError(
            f"`aggregate` must be one of {', '.join(map(repr, CURVE_AGGREGATES))}; got {aggregate!r}"
        )
    if resolution is not None:
        resolution = check_resolution(resolution)
    oracles, per_pair, separate = as_pairs(oracles, scores, "(*head_shape, T)")
    checked = []
    for i, (oracle, score) in enumerate(zip(oracles, per_pair)):
        oracle, score, sink, window = check_profile_arrays(
            oracle, score, sink, window, oracle_name=f"oracles[{i}]",
            scores_name=f"scores[{i}]" if separate else "scores",
        )
        if checked and oracle.shape[:-1] != checked[0][0].shape[:-1]:
            raise InvalidInputError(
                f"`oracles[{i}]` must have the head shape of `oracles[0]`, {checked[0][0].shape[:-1]}; "
                f"got {oracle.shape[:-1]}"
            )
        checked.append((oracle, score))
    lengths = [int(oracle.shape[-1]) for oracle, _ in checked]
    if resolution is not None or len(set(lengths)) > 1:
        return relative_curves(
            checked, lengths, sink=sink, window=window, aggregate=aggregate,
            resolution=DEFAULT_RESOLUTION if resolution is None else resolution,
            meta={"sink": sink, "window": window, "pairs": len(lengths), "aggregate": aggregate},
        )
    total = None
    parts = []
    grid = shape = None
    for oracle, score in checked:
        shape = oracle.shape
        curves = curves_from_scores(oracle, score, sink=sink, window=window)
        grid = curves.grid
        if aggregate == "median_curve":
            parts.append(curves.utility)
        else:
            total = curves.utility.copy() if total is None else total + curves.utility  # pair order
    if aggregate == "median_curve":
        utility = np.median(np.stack(parts), axis=0)
    else:
        utility = total / len(oracles)
    meta = {"sink": sink, "window": window, "length": int(shape[-1]), "pairs": len(oracles),
            "aggregate": aggregate}
    return Curves(utility, grid, meta=meta)

