"""Grouped-query attention: one score per KV head from the scores of its query heads."""

from __future__ import annotations

from .._checks import check_int
from ..errors import InvalidInputError
from ._checks import check_float_tensor

__all__ = ["reduce_gqa"]

_HOW = ("mean", "max")


def reduce_gqa(scores, num_kv_heads, how="mean"):
    """Reduce query-head token scores to KV-head scores for grouped-query attention.

    Budgets apply per KV head: the query heads of a group share one key/value cache, so they
    must agree on one set of kept tokens. Query heads never get their own KV copies.

    Parameters
    ----------
    scores : torch.Tensor, shape (batch, heads, T), floating dtype
        Per-query-head importance of each token.
    num_kv_heads : int
        KV heads; must divide ``heads``. Query heads ``g * G`` to ``(g + 1) * G - 1``
        (``G = heads // num_kv_heads``) share KV head ``g``, the grouping of Hugging Face's
        ``repeat_kv``.
    how : {"mean", "max"}, default "mean"
        How the ``G`` scores of a group combine.

    Returns
    -------
    torch.Tensor, shape (batch, num_kv_heads, T)
        Same dtype and device as ``scores``.

    Raises
    ------
    InvalidTypeError
        ``scores`` is not a floating tensor or ``num_kv_heads`` is not an int.
    InvalidInputError
        ``scores`` does not have 3 axes, ``num_kv_heads`` does not divide ``heads``, or
        ``how`` is not one of the valid names.

    Notes
    -----
    A view and one reduction: O(batch * heads * T).

    Examples
    --------
    >>> import torch
    >>> scores = torch.tensor([[[1.0, 4.0], [3.0, 0.0], [5.0, 5.0], [1.0, 7.0]]])
    >>> reduce_gqa(scores, 2)
    tensor([[[2., 2.],
             [3., 6.]]])
    >>> reduce_gqa(scores, 2, how="max")
    tensor([[[3., 4.],
             [5., 7.]]])
    """
    scores = check_float_tensor(scores, "scores", 3, "(batch, heads, T)")
    num_kv_heads = check_int(num_kv_heads, "num_kv_heads")
    batch, heads, length = scores.shape
    if heads == 0:
        raise InvalidInputError("`scores` must hold at least one query head; got shape "
                                f"{tuple(scores.shape)}")
    if num_kv_heads < 1 or heads % num_kv_heads:
        raise InvalidInputError(
            f"`num_kv_heads` must be a positive divisor of the {heads} query heads of `scores`; "
            f"got {num_kv_heads}"
        )
    if how not in _HOW:
        raise InvalidInputError(f"`how` must be one of {', '.join(map(repr, _HOW))}; got {how!r}")
    grouped = scores.reshape(batch, num_kv_heads, heads // num_kv_heads, length)
    if how == "mean":
        return grouped.mean(dim=2)
    return grouped.amax(dim=2)
