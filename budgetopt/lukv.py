"""LU-KV prune-ratio tables: the ``[99, layers, kv_heads]`` format kvpress's ``LUKVPress`` reads.

A table row ``i`` holds, for global compression ``(i + 1) / 100`` (kvpress's
``compression_ratio``: the fraction *removed*), the fraction of each layer's and KV head's
``T`` context tokens that is evicted. :func:`lukv_table` builds one from calibration arrays by
the published LU-KV protocol (arXiv 2602.08585, ``step2_compute_curve.py`` of
baidu-baige/LU-KV), solving each pair with :func:`budgetopt.sweep`; :func:`save_lukv_table`
and :func:`load_lukv_table` write and read the ``.npy`` file. Turning a row into integer keep
counts for a given length is :func:`budgetopt.keep_counts_from_prune_ratios`.
"""

from __future__ import annotations

import threading

import numpy as np

from .api import sweep
from ._threads import map_in_order
from ._io import check_input_file, read_npy, write_atomic
from ._checks import check_finite, check_fraction, check_int, check_workers, real_array
from .curves import Curves
from .rounding import head_floor, tokens_evicted
from .errors import CurvesFileError, InvalidInputError, InvalidTypeError
from .profile import as_pairs, check_profile_arrays, rank_middle, sums_bounded, utility_from_order

__all__ = ["lukv_table", "save_lukv_table", "load_lukv_table", "LUKV_ROWS", "AGGREGATES"]

#: Rows of a table: global compression ratios 1%, 2%, ..., 99%.
LUKV_ROWS = 99

#: Valid values of ``aggregate`` in :func:`lukv_table`.
AGGREGATES = ("mean_ratio", "mean_curve")


def compression_ratios():
    """The 99 global compression ratios of a table row, ``(i + 1) / 100``, as float64."""
    return np.array([(i + 1) / 100.0 for i in range(LUKV_ROWS)])


def _solve_rows(utility, grid, length, floor, min_keep_fraction, layerwise):
    """Prune ratios (99, L, H) of one set of curves ``utility`` (L, H, K)."""
    layers, heads, _ = utility.shape
    ratios = compression_ratios()
    table = np.empty((LUKV_ROWS, layers, heads))
    # Rows above 1 - min_keep_fraction are uniform. The margin keeps a row exactly at the
    # cut-off solved although 1 - 0.07 is 0.9299999999999999 in binary (published: 0.93 > 0.93).
    uniform = ratios > 1.0 - min_keep_fraction + 1e-12
    table[uniform] = ratios[uniform, None, None]
    solved = np.flatnonzero(~uniform)
    if solved.size == 0:
        return table
    groups = [slice(None)] if layerwise else [slice(layer, layer + 1) for layer in range(layers)]
    for group in groups:
        curves = Curves._trusted(np.ascontiguousarray(utility[group]), grid)  # built by curves_from_scores' helpers
        tokens = curves.n_heads * length
        kept = np.array([tokens - tokens_evicted(ratios[i], tokens) for i in solved], np.int64)
        # The published heap stops when every head is at its floor; so does the table.
        kept = np.maximum(kept, curves.n_heads * floor)
        result = sweep(curves, kept, min_budget=floor)
        table[solved, group] = 1.0 - result.budgets / length
    return table


def lukv_table(
    oracles,
    scores,
    *,
    sink,
    window,
    min_keep_fraction=0.01,
    layerwise=True,
    aggregate="mean_ratio",
    progress=None,
    workers=1,
):
    """Per-head prune ratios at global compression 1%..99%: a kvpress ``LUKVPress`` table.

    Each calibration pair's curves are ``curves_from_scores(oracle, scores, sink, window)``;
    for compression ``c`` the heads keep ``kept(c) = N - round(c * N)`` tokens in total,
    ``N = L * H * T``, split by the upper-hull greedy (:func:`budgetopt.sweep`) with every
    head keeping at least ``floor = max(round(min_keep_fraction * T), sink + window)``::

        table[i, l, h] = 1 - budget[l, h] / T     at  c = (i + 1) / 100

    Parameters
    ----------
    oracles : sequence of array_like, each of shape ``(L, H, T)``
        Oracle importance of each context token to each layer and KV head, one array per
        calibration (context, question) pair. All of one ``(L, H)``; finite. ``T`` may differ
        between pairs with ``aggregate="mean_ratio"`` (ratios are fractions of each pair's
        ``T``); ``"mean_curve"`` needs one ``T``. Read one at a time, so
        memory-mapped arrays work.
    scores : array_like of shape ``(L, H, T)``, or list/tuple of them
        The scorer's values: one array shared by every pair (the usual case, since the
        questions of one context share its prefill scores), or a list/tuple with one array per
        pair. A ranking is computed once per distinct array object.
    sink, window : int
        First and last tokens every head always keeps (as in ``LUKVPress(sink=, window=)``).
    min_keep_fraction : float, optional
        Per-head floor as a fraction of ``T`` (default 0.01: the published ``threshold=99``).
        Rows with ``c > 1 - min_keep_fraction`` are uniform (``table[i] = c``).
    layerwise : bool, optional
        True (default): one budget shared by all layers and heads. False: each layer keeps
        exactly ``H * T - round(c * H * T)`` tokens and only its heads compete.
    aggregate : {"mean_ratio", "mean_curve"}, optional
        ``"mean_ratio"`` (default, published): solve each pair, average the prune ratios.
        ``"mean_curve"``: average the pairs' utility curves and solve once (optimal for the
        expected retained oracle mass); see docs/profiling.md for a held-out comparison.
    progress : callable, optional
        Called as ``progress(done, total)`` after each pair is processed (in pair order, from
        the calling thread).
    workers : int, optional
        Threads solving pairs at once (default 1; -1: one per core). The sorts, gathers and
        compiled kernels release the GIL, so pairs run in parallel; the result does not
        depend on ``workers`` (the pairs are summed in order).

    Returns
    -------
    numpy.ndarray of float64, shape ``(99, L, H)``
        Prune ratios in ``[0, 1]`` (the fraction of ``T`` each head evicts).

    Raises
    ------
    InvalidTypeError, InvalidInputError
        Bad arrays (shape mismatch with ``oracles[0]`` or ``scores``, not 3-D,
        ``T <= sink + window``, NaN/inf), bad ``sink``/``window``/``min_keep_fraction``, or an
        unknown ``aggregate``; the message names the argument (``oracles[3]``, ``scores[1]``).

    Notes
    -----
    Per pair: one sort per head (skipped when the pair reuses a ranked scores array), a
    cumulative sum, then one :func:`budgetopt.sweep` over the 99 totals (once per layer when
    ``layerwise`` is false): O(n T log T) for n heads, no Python loop over heads or tokens.
    With ``workers > 1`` pairs run on a thread pool; results are deterministic.

    With ``min_keep_fraction * T <= sink + window`` (the floor is the protected tokens) the
    result equals the published solver's (a min-heap evicting single tokens by their
    hull-smoothed cost) up to exact ties between heads. With a higher floor the published
    solver smooths each curve over its whole range and then stops at the floor, whereas
    :func:`budgetopt.sweep` takes the hull of the points at or above the floor (the points a
    head may actually use), so the two can differ near the floor. The rounding ``round(c * N)`` is the published one, kept so
    that tables match; :func:`budgetopt.sweep` takes any other totals directly.

    References
    ----------
    LU-KV: arXiv 2602.08585; ``evaluation/curve_data/step2_compute_curve.py`` in
    baidu-baige/LU-KV.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> oracles = [rng.random((2, 2, 20)) for _ in range(3)]
    >>> scores = rng.random((2, 2, 20))
    >>> table = lukv_table(oracles, scores, sink=1, window=2)
    >>> table.shape
    (99, 2, 2)
    >>> float(table[49].mean())  # c = 0.5: every pair keeps 40 of 80 tokens
    0.5
    >>> table[98]  # c = 0.99: every head at its floor, sink + window = 3 of 20 tokens
    array([[0.85, 0.85],
           [0.85, 0.85]])
    """
    if aggregate not in AGGREGATES:
        raise InvalidInputError(f"`aggregate` must be one of {', '.join(map(repr, AGGREGATES))}; got {aggregate!r}")
    if not isinstance(layerwise, (bool, np.bool_)):
        raise InvalidTypeError(f"`layerwise` must be True or False; got {layerwise!r}")
    if progress is not None and not callable(progress):
        raise InvalidTypeError("`progress` must be callable as progress(done, total) or None")
    min_keep_fraction = check_fraction(min_keep_fraction, "min_keep_fraction", upper_open=True)
    sink = check_int(sink, "sink")
    window = check_int(window, "window")
    workers = check_workers(workers)
    oracles, scores, per_pair = as_pairs(oracles, scores, "(L, H, T)")
    rankings = _Rankings(sink, window)

    def solve_pair(i):
        """Shape and contribution of pair ``i``: its table (mean_ratio) or its curves."""
        oracle_arr, score_arr, _, _ = check_profile_arrays(
            oracles[i], scores[i], sink, window,
            oracle_name=f"oracles[{i}]", scores_name=f"scores[{i}]" if per_pair else "scores",
        )
        if oracle_arr.ndim != 3:
            raise InvalidInputError(
                f"`oracles[{i}]` must have shape (L, H, T) (layers, KV heads, tokens); got {oracle_arr.shape}"
            )
        if not sums_bounded(oracle_arr):
            raise InvalidInputError(f"`oracles[{i}]` values are too large: their sums overflow float64")
        utility = utility_from_order(oracle_arr, rankings.get(scores[i], score_arr), sink, window)
        if aggregate == "mean_curve":
            return oracle_arr.shape, utility
        length = oracle_arr.shape[-1]
        grid = np.arange(sink + window, length + 1, dtype=np.int64)
        floor = head_floor(min_keep_fraction, length, sink, window)
        return oracle_arr.shape, _solve_rows(utility, grid, length, floor, min_keep_fraction, layerwise)

    shape = None
    total = None
    for i, (pair_shape, part) in enumerate(map_in_order(solve_pair, len(oracles), workers, name="lukv")):
        if shape is None:
            shape = pair_shape
        elif pair_shape != shape and (aggregate == "mean_curve" or pair_shape[:2] != shape[:2]):
            # Prune ratios are fractions of each pair's T, so "mean_ratio" averages pairs of
            # different lengths; curves (mean_curve) need one length.
            raise InvalidInputError(
                f"`oracles[{i}]` must have the shape of `oracles[0]`, {shape}; got {pair_shape}"
                + (" (pairs of different lengths need aggregate='mean_ratio')"
                   if aggregate == "mean_curve" and pair_shape[:2] == shape[:2] else "")
            )
        total = part if total is None else total + part  # in pair order: deterministic
        if progress is not None:
            progress(i + 1, len(oracles))
    mean = total / len(oracles)
    if aggregate == "mean_curve":
        if not np.all(np.isfinite(mean)):
            raise InvalidInputError("`oracles` values are too large: their mean curves overflow float64")
        length = shape[-1]
        grid = np.arange(sink + window, length + 1, dtype=np.int64)
        floor = head_floor(min_keep_fraction, length, sink, window)
        mean = _solve_rows(mean, grid, length, floor, min_keep_fraction, layerwise)
    return np.clip(mean, 0.0, 1.0)


class _Rankings:
    """Each distinct scores object ranked once, safely from several threads."""

    def __init__(self, sink, window):
        self.sink, self.window = sink, window
        self.lock = threading.Lock()
        self.entries = {}  # id(scores object) -> [lock, ranking]; the caller keeps the objects alive

    def get(self, obj, validated):
        with self.lock:
            entry = self.entries.setdefault(id(obj), [threading.Lock(), None])
        with entry[0]:
            if entry[1] is None:
                entry[1] = rank_middle(validated, self.sink, self.window)
            return entry[1]


def _check_table(table, name):
    """The table as float64 (99, L, H) in [0, 1], or an InvalidInputError naming ``name``."""
    arr = real_array(table, f"`{name}`")
    if arr.ndim != 3 or arr.shape[0] != LUKV_ROWS or 0 in arr.shape:
        raise InvalidInputError(
            f"`{name}` must have shape (99, layers, kv_heads) (rows: compression 1%..99%); got {arr.shape}"
        )
    arr = np.asarray(arr, dtype=np.float64)
    check_finite(arr, f"`{name}`", by_token=False)
    if np.any(arr < 0.0) or np.any(arr > 1.0):
        raise InvalidInputError(
            f"`{name}` must hold prune ratios in [0, 1]; found values in [{arr.min()!r}, {arr.max()!r}]"
        )
    return arr


def save_lukv_table(path, table):
    """Write a ``[99, layers, kv_heads]`` prune-ratio table as the ``.npy`` ``LUKVPress`` loads.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, used as given (no suffix appended). Written atomically: a failed write
        leaves no partial file.
    table : array_like of float, shape ``(99, L, H)``
        Prune ratios in ``[0, 1]`` (as returned by :func:`lukv_table`); stored as float64,
        without pickling.

    Raises
    ------
    InvalidInputError, InvalidTypeError
        ``table`` has the wrong shape, a non-finite value or a value outside ``[0, 1]``.
    CurvesFileError
        The destination directory does not exist.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "table.npy")
    >>> save_lukv_table(path, np.full((99, 2, 4), 0.5))
    >>> load_lukv_table(path).shape
    (99, 2, 4)
    """
    arr = _check_table(table, "table")
    write_atomic(path, lambda f: np.save(f, arr, allow_pickle=False))


def load_lukv_table(path, *, max_bytes=None):
    """Read a ``[99, layers, kv_heads]`` prune-ratio table (the LU-KV ``.npy`` format).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` file as published by the LU-KV authors or written by :func:`save_lukv_table`.
    max_bytes : int, optional
        Most bytes the array may take once read, checked against its header before reading.
        Default: the environment variable ``BUDGETOPT_MAX_ARRAY_BYTES`` if set, else 1 GiB.

    Returns
    -------
    numpy.ndarray of float64, shape ``(99, L, H)``
        Row ``i`` holds per-head prune ratios (fraction of tokens evicted) at global
        compression ``(i + 1) / 100``.

    Raises
    ------
    InvalidTypeError
        ``path`` is not a str or os.PathLike.
    CurvesFileError
        The file is missing, is not a ``.npy`` array (an ``.npz`` archive, a pickle), holds an
        object array (never unpickled), declares more data than the limit or than it holds,
        or breaks a rule of the table (shape, finite, values in ``[0, 1]``). The message
        starts with the path.
    """
    path = check_input_file(path, ".npy file")
    data = read_npy(path, max_bytes=max_bytes, what="an LU-KV table (a single .npy array)")
    try:
        return _check_table(data, "table")
    except (InvalidInputError, InvalidTypeError) as exc:
        raise CurvesFileError(f"{path}: {exc}") from None
