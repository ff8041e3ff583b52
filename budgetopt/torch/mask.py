"""Keep masks: which tokens of each KV head a per-head budget keeps."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from ._checks import (
    budgets_on_host,
    budgets_tensor,
    check_float_tensor,
    protected_span,
)

__all__ = ["keep_mask"]


def keep_mask(scores, budgets, *, sink=0, window=0):
    """Boolean mask of the tokens each KV head keeps under its own token budget.

    Head ``(b, h)`` keeps its first ``sink`` and last ``window`` tokens and, of the tokens in
    between, the ``budgets[h] - (sink + window)`` with the highest scores.

    Parameters
    ----------
    scores : torch.Tensor, shape (batch, kv_heads, T), floating dtype
        Importance of each cached token for each KV head (higher is kept first). For
        grouped-query attention reduce query-head scores first with
        :func:`~budgetopt.torch.reduce_gqa`. NaN scores rank below every number (tied
        with -inf); -0.0 and +0.0 are equal.
    budgets : array_like or torch.Tensor of int, shape (kv_heads,) or (batch, kv_heads)
        Tokens each head keeps, protected tokens included. Values are clamped to ``[0, T]``.
        An integer dtype is required (fractions are converted once, with
        :func:`budgetopt.tokens_from_fraction` or
        :func:`budgetopt.keep_counts_from_prune_ratios`).
    sink : int, default 0
        Leading tokens always kept (attention sinks).
    window : int, default 0
        Trailing tokens always kept (the recent window).

    Returns
    -------
    torch.BoolTensor, shape (batch, kv_heads, T)
        ``True`` where a token is kept, on the device of ``scores``.

    Raises
    ------
    InvalidTypeError
        ``scores`` is not a floating tensor, ``budgets`` has a non-integer dtype, or
        ``sink``/``window`` is not an int.
    InvalidInputError
        Wrong number of axes, ``budgets`` of the wrong shape, negative ``sink``/``window``.

    Notes
    -----
    Protected tokens count in the budget. When a budget is below the number of protected
    tokens, ``min(sink + window, T)``, the protected tokens are still all kept, so that head
    keeps more than its budget; every other head keeps exactly ``min(budget, T)`` tokens.

    Ties between equal scores go to the lower position, on every device, so the result is
    deterministic. Cost: the ``k`` largest unprotected scores of each head by
    :func:`torch.topk` (``k`` the largest budget; a radix selection on CUDA), then a few
    elementwise passes and one cumulative sum, O(batch * kv_heads * (T + k log k)). With a
    budgets tensor, ``k`` is not known on the host, so the scores are sorted instead
    (O(T log T) per head). No Python loop over heads or tokens and no host synchronisation
    (a budgets tensor on another device is copied without waiting).

    Examples
    --------
    >>> import torch
    >>> scores = torch.tensor([[[0.1, 0.9, 0.3, 0.7, 0.2],
    ...                         [5.0, 4.0, 3.0, 2.0, 1.0]]])
    >>> keep_mask(scores, [2, 1]).int()
    tensor([[[0, 1, 0, 1, 0],
             [1, 0, 0, 0, 0]]], dtype=torch.int32)

    With the last token protected, it takes one of the two slots:

    >>> keep_mask(scores, [2, 1], window=1).int()
    tensor([[[0, 1, 0, 0, 1],
             [0, 0, 0, 0, 1]]], dtype=torch.int32)
    """
    scores, middle_budgets, host_lengths, (s, w) = prepare_selection(scores, budgets, sink, window)
    top = None
    if host_lengths is not None:
        top = int(host_lengths.max()) - (s + w) if host_lengths.size else 0
    return select(scores, middle_budgets, s, w, top)


def prepare_selection(scores, budgets, sink, window):
    """Check the arguments shared by :func:`keep_mask` and ``compact``.

    Returns ``(scores, middle_budgets, host_lengths, (s, w))``: ``middle_budgets`` (int64
    tensor ``(batch, kv_heads)`` on the scores' device) is how many unprotected tokens each
    head keeps; ``host_lengths`` is the per-head kept count as a host array when the budgets
    came from the host, else ``None``.
    """
    scores = check_float_tensor(scores, "scores", 3, "(batch, kv_heads, T)")
    sink = check_int(sink, "sink")
    window = check_int(window, "window")
    batch, heads, length = scores.shape
    host = budgets_on_host(budgets, batch, heads)
    s, w = protected_span(length, sink, window)
    middle = length - s - w
    if host is not None:
        # clipped to [0, T] first: a budget near the int64 limits must not wrap around
        host_middle = np.clip(np.clip(host, 0, length) - (s + w), 0, middle)
        # non_blocking: a pageable copy is staged at once, without waiting for the device.
        middle_budgets = torch.as_tensor(np.ascontiguousarray(host_middle)).to(scores.device, non_blocking=True)
        host_lengths = host_middle + (s + w)
    else:
        all_budgets = budgets_tensor(budgets, batch, heads, scores.device)
        middle_budgets = (all_budgets.clamp(0, length) - (s + w)).clamp(0, middle)
        host_lengths = None
    return scores, middle_budgets, host_lengths, (s, w)


def select(scores, middle_budgets, s, w, top=None):
    """Keep mask from checked inputs: the ``s`` first and ``w`` last tokens, plus the top
    ``middle_budgets[b, h]`` of the tokens between them (lower position wins ties).

    ``top``, when given, is ``max(middle_budgets)`` as a Python int; it lets the selection
    look at only that many scores per head (see :func:`_keep_middle`).
    """
    batch, heads, length = scores.shape
    stop = length - w
    if stop <= s:
        return torch.ones((batch, heads, length), dtype=torch.bool, device=scores.device)
    kept = _keep_middle(scores[..., s:stop], middle_budgets, top)
    if s == 0 and w == 0:
        return kept
    mask = torch.ones((batch, heads, length), dtype=torch.bool, device=scores.device)
    mask[..., s:stop] = kept
    return mask


def select_positions(scores, middle_budgets, s, w, slots):
    """Kept positions of each head in ascending order, padded with ``T`` to ``slots``.

    The same kept set as :func:`select`; ``slots`` must be ``s + w + max(middle_budgets)``.
    Slot ``j`` of a head holds the position of its ``(j + 1)``-th kept token, found by a
    binary search in the running count of kept tokens (no sort, no host synchronisation);
    past the head's last kept token the search returns ``T``.
    """
    batch, heads, length = scores.shape
    if slots == 0:
        return torch.empty((batch, heads, 0), dtype=torch.int64, device=scores.device)
    mask = select(scores, middle_budgets, s, w, top=slots - s - w)
    running = row_cumsum(mask)
    wanted = torch.arange(1, slots + 1, dtype=running.dtype, device=scores.device)
    return torch.searchsorted(running, wanted.expand(batch, heads, slots).contiguous())


# Below this many rows (batch x kv_heads) a per-row radix top-k leaves most of a GPU idle;
# a segmented sort of the values is then faster (measured on an H200: 8 rows of 131,072
# tokens, topk 0.31 ms vs sort 0.15 ms; with 256 rows topk wins).
_TOPK_MIN_ROWS = 64


def _keep_middle(middle, budgets, top):
    """Which of the unprotected tokens ``middle`` (batch, kv_heads, M) each head keeps: its
    ``budgets[b, h]`` highest scores, ties to the lower position; NaN counts as -inf and
    -0.0 as +0.0.

    Selection by threshold rather than by a full argsort: the ``budgets``-th largest score
    ``v`` of a head (from ``torch.topk`` of the ``top`` largest values, or from a sort of the
    values when ``top`` is ``None``) splits its tokens into those above ``v`` (all kept) and
    those equal to ``v``, of which the first ``budgets - #above`` in position order are
    kept. The values of the ``k`` largest scores do not depend on how a device breaks ties,
    so every device keeps the same tokens.

    The rewrites of NaN and -0.0 make the selection agree with the comparisons: a radix
    top-k or sort orders keys by their bits, so it would otherwise put +0.0 above -0.0,
    which ``==`` and ``>`` call equal.
    """
    if top == 0:
        return torch.zeros(middle.shape, dtype=torch.bool, device=middle.device)
    inf = float("inf")
    middle = torch.nan_to_num(middle, nan=-inf, posinf=inf, neginf=-inf).add_(0.0)
    rows = middle.shape[0] * middle.shape[1]
    if top is None or rows < _TOPK_MIN_ROWS:
        best = middle.sort(dim=-1, descending=True).values
    else:
        best = middle.topk(top, dim=-1, sorted=True).values
    # A head with budget 0 reads its largest value: nothing is above it and no tie is taken.
    threshold = best.gather(-1, (budgets - 1).clamp_(min=0).unsqueeze(-1))
    above = middle > threshold
    tied = middle == threshold
    spare = (budgets - above.sum(-1)).unsqueeze(-1)  # tied tokens each head still takes
    first_tied = tied.logical_and_(row_cumsum(tied) <= spare)
    return above.logical_or_(first_tied)


def row_cumsum(flags):
    """Running count of ``True`` along the last axis of a bool tensor, per row.

    Computed as one scan over all rows flattened, minus each row's starting count: a scan
    along a short batch of long rows runs one row per GPU block, a flat scan uses the whole
    device. Same values as ``flags.cumsum(-1)``.
    """
    length = flags.shape[-1]
    dtype = torch.int32 if flags.numel() < 2**31 else torch.int64
    if flags.numel() == 0 or length == 0:
        return torch.zeros(flags.shape, dtype=dtype, device=flags.device)
    flat = flags.reshape(-1).cumsum(0, dtype=dtype).view(-1, length)
    start = torch.cat([flat.new_zeros(1), flat[:-1, -1]]).unsqueeze(-1)
    return (flat - start).view(flags.shape)
