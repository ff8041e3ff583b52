"""From an allocation (or an LU-KV prune-ratio table) to one layer's KV-head budgets."""

from __future__ import annotations

import os

import numpy as np

from .._checks import check_fraction, check_int, from_tensor, refuse_masked
from ..errors import InvalidInputError, InvalidTypeError
from ..lukv import LUKV_ROWS
from ..lukv import _check_table as _check_lukv_table  # the one home of the table rules
from ..result import Allocation
from ..rounding import keep_counts_from_prune_ratios

__all__ = ["layer_budgets", "lukv_row"]


def lukv_row(compression_ratio):
    """Row of an LU-KV table used for ``compression_ratio``, the way kvpress picks it.

    ``round(compression_ratio * 100) - 1``, clamped to ``[0, 98]`` (Python's ``round``,
    so halves go to the even integer, as in kvpress's ``LUKVPress``).

    Parameters
    ----------
    compression_ratio : float
        Fraction of the cache removed, in ``[0, 1]`` (``1 - budget``).

    Returns
    -------
    int

    Examples
    --------
    >>> lukv_row(0.2), lukv_row(0.999), lukv_row(0.001)
    (19, 98, 0)
    """
    ratio = check_fraction(compression_ratio, "compression_ratio")
    return max(0, min(LUKV_ROWS - 1, int(round(ratio * 100)) - 1))


def layer_budgets(source, layer, length, *, compression_ratio=None, head_capacity=None, device=None):
    """Token budgets of one layer's KV heads for a sequence of ``length`` tokens.

    Parameters
    ----------
    source : Allocation, array_like of int (layers, kv_heads), or array_like of float (99, layers, kv_heads)
        * an :class:`~budgetopt.Allocation` whose ``head_shape`` is ``(layers, kv_heads)``,
          or the same budgets as an integer array: tokens per head, out of
          ``head_capacity`` tokens when that is given;
        * an LU-KV prune-ratio table (kvpress ``LUKVPress``'s format; read a ``.npy`` file
          with :func:`budgetopt.lukv.load_lukv_table`): row :func:`lukv_row`
          ``(compression_ratio)`` is used.

        Either may be a torch tensor, on any device.
    layer : int
        Layer index, in ``[0, layers)``.
    length : int
        Tokens per head in this sequence (``T``), ``>= 0``.
    compression_ratio : float, optional
        Fraction removed (``1 - budget``), in ``[0, 1]``. Required for a table; not
        accepted with budgets, which fix the kept amount themselves.
    head_capacity : int, optional
        For budgets only: the tokens per head of the grid the allocation was computed on
        (its largest grid point). When given and different from ``length``, head ``h``
        keeps ``budgets[h] / head_capacity`` of ``length`` tokens, rounded by largest
        remainder so the layer total is exact (at least 1 token per head, the kvpress rule
        of :func:`budgetopt.keep_counts_from_prune_ratios`). When omitted (or equal to
        ``length``) the budgets are token counts, used as they are, capped at ``length``.
    device : str or torch.device, optional
        For a table only: where its row is converted, as ``LUKVPress`` converts it on its
        keys' device (:class:`~budgetopt.torch.BudgetPress` passes its keys' device).
        Default: the table's device when it is a tensor, else the CPU.

    Returns
    -------
    numpy.ndarray of int64, shape (kv_heads,)
        Tokens each KV head of ``layer`` keeps, in ``[0, length]``.

    Raises
    ------
    InvalidTypeError
        ``source`` is of an unusable type, or budgets are not integers.
    InvalidInputError
        Bad shapes or values, ``layer`` out of range, a missing or unexpected
        ``compression_ratio``, budgets above ``head_capacity``.

    Notes
    -----
    Table rows are converted exactly as kvpress's ``LUKVPress`` converts them on ``device``:
    :func:`budgetopt.keep_counts_from_prune_ratios` with ``rule="kvpress"``, which runs
    ``LUKVPress``'s torch operations (float32 arithmetic, ``torch.topk`` for the leftover
    tokens). Budgets scaled by ``head_capacity`` use the same largest-remainder rule in
    float64 (``rule="float64"``, ties to the lower head index). O(kv_heads log kv_heads).

    Examples
    --------
    >>> budgets = np.array([[6, 2], [1, 7]])
    >>> layer_budgets(budgets, 1, 8)
    array([1, 7])
    >>> layer_budgets(budgets, 0, 100, head_capacity=8)
    array([75, 25])
    >>> table = np.zeros((99, 1, 3))
    >>> table[19, 0] = [0.5, 0.35, 0.72]
    >>> layer_budgets(table, 0, 10, compression_ratio=0.2)
    array([5, 6, 3])
    """
    source, tensor_device = from_tensor(source)
    if device is None:
        device = tensor_device
    table, budgets = budget_source(source)
    layers = (table if table is not None else budgets).shape[-2]
    layer = check_int(layer, "layer", minimum=None)
    if not 0 <= layer < layers:
        raise InvalidInputError(f"`layer` must be in [0, {layers}); got {layer}")
    length = check_int(length, "length")

    if table is not None:
        if compression_ratio is None:
            raise InvalidInputError("`compression_ratio` is required with an LU-KV table")
        if head_capacity is not None:
            raise InvalidInputError("`head_capacity` applies to budgets, not to an LU-KV table")
        row = lukv_row(compression_ratio)
        if length == 0:
            return np.zeros(table.shape[-1], dtype=np.int64)
        return keep_counts_from_prune_ratios(table[row, layer], length, rule="kvpress", device=device)

    if compression_ratio is not None:
        raise InvalidInputError(
            "`compression_ratio` applies to an LU-KV table; budgets fix the kept amount "
            "themselves (scale them with `head_capacity`)"
        )
    row = budgets[layer]
    if head_capacity is None or int(head_capacity) == length:
        if head_capacity is not None:
            _check_capacity(head_capacity, budgets)
        return np.minimum(row, length).astype(np.int64)
    capacity = _check_capacity(head_capacity, budgets)
    if length == 0:
        return np.zeros(row.shape, dtype=np.int64)
    return keep_counts_from_prune_ratios(1.0 - row / capacity, length, rule="float64")


def budget_source(source):
    """``(table, budgets)``: the checked LU-KV table or budgets array (the other is None)."""
    if isinstance(source, Allocation):
        budgets = np.asarray(source.budgets)
        if budgets.ndim != 2:
            raise InvalidInputError(
                "an Allocation applied to a model needs head_shape (layers, kv_heads); "
                f"got {budgets.shape}"
            )
        return None, budgets
    if isinstance(source, (str, bytes, os.PathLike)):
        raise InvalidTypeError(
            "`source` must be an Allocation or an array; read a table file with "
            "budgetopt.lukv.load_lukv_table"
        )
    source, _ = from_tensor(source)
    refuse_masked(source, "source")
    try:
        arr = np.asarray(source)
    except Exception as exc:
        raise InvalidTypeError(f"`source` must be an Allocation or a numeric array ({exc})") from exc
    if arr.ndim == 3:
        table = np.array(_check_lukv_table(arr, "source"))  # a copy, frozen below
        table.setflags(write=False)
        return table, None
    if arr.ndim == 2:
        if arr.dtype.kind not in "iu":
            raise InvalidTypeError(
                "budgets (a 2-D `source`) must be whole token counts with an integer dtype; "
                f"got dtype {arr.dtype}"
            )
        if arr.size and arr.min() < 0:
            raise InvalidInputError("budgets (a 2-D `source`) must be >= 0")
        return None, arr.astype(np.int64)
    raise InvalidInputError(
        "`source` must be an Allocation, budgets shaped (layers, kv_heads), or an LU-KV "
        f"table shaped (99, layers, kv_heads); got an array of shape {arr.shape}"
    )


def _check_capacity(head_capacity, budgets):
    capacity = check_int(head_capacity, "head_capacity", minimum=1)
    if budgets.size and budgets.max() > capacity:
        raise InvalidInputError(
            f"budgets must be <= `head_capacity` ({capacity}); found {int(budgets.max())}"
        )
    return capacity
