"""Keep masks: which tokens of each KV head a per-head budget keeps."""

from __future__ import annotations

import numpy as np
import torch

from ._checks import (
    budgets_on_host,
    budgets_tensor,
    check_count,
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
    deterministic. Cost: one stable sort of the unprotected tokens per head,
    O(batch * kv_heads * T log T), with no Python loop over heads or tokens and no host
    synchronisation (a budgets tensor on another device is copied without waiting).

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
    scores, middle_budgets, _, (s, w) = prepare_selection(scores, budgets, sink, window)
    return select(scores, middle_budgets, s, w)


def prepare_selection(scores, budgets, sink, window):
    """Check the arguments shared by :func:`keep_mask` and ``compact``.

    Returns ``(scores, middle_budgets, host_lengths, (s, w))``: ``middle_budgets`` (int64
    tensor ``(batch, kv_heads)`` on the scores' device) is how many unprotected tokens each
    head keeps; ``host_lengths`` is the per-head kept count as a host array when the budgets
    came from the host, else ``None``.
    """
    scores = check_float_tensor(scores, "scores", 3, "(batch, kv_heads, T)")
    sink = check_count(sink, "sink")
    window = check_count(window, "window")
    batch, heads, length = scores.shape
    host = budgets_on_host(budgets, batch, heads)
    s, w = protected_span(length, sink, window)
    middle = length - s - w
    if host is not None:
        host_middle = np.clip(host - (s + w), 0, middle)
        # non_blocking: a pageable copy is staged at once, without waiting for the device.
        middle_budgets = torch.as_tensor(np.ascontiguousarray(host_middle)).to(scores.device, non_blocking=True)
        host_lengths = host_middle + (s + w)
    else:
        all_budgets = budgets_tensor(budgets, batch, heads, scores.device)
        middle_budgets = (all_budgets - (s + w)).clamp(0, middle)
        host_lengths = None
    return scores, middle_budgets, host_lengths, (s, w)


def select(scores, middle_budgets, s, w):
    """Keep mask from checked inputs: the ``s`` first and ``w`` last tokens, plus the top
    ``middle_budgets[b, h]`` of the tokens between them (stable: lower position wins ties)."""
    batch, heads, length = scores.shape
    mask = torch.ones((batch, heads, length), dtype=torch.bool, device=scores.device)
    stop = length - w
    if stop <= s:
        return mask
    order = _middle_order(scores, s, stop)
    ranks = torch.empty_like(order)
    steps = torch.arange(stop - s, device=scores.device).expand_as(order)
    ranks.scatter_(-1, order, steps)
    mask[..., s:stop] = ranks < middle_budgets.unsqueeze(-1)
    return mask


def select_positions(scores, middle_budgets, s, w, slots):
    """Kept positions of each head in ascending order, padded with ``T`` to ``slots``.

    The same kept set as :func:`select`; ``slots`` must be ``s + w + max(middle_budgets)``.
    One stable sort of the unprotected tokens and one small sort of the kept ones.
    """
    batch, heads, length = scores.shape
    device = scores.device
    stop = length - w
    top = slots - s - w  # the most unprotected tokens any head keeps
    parts = []
    if s:
        parts.append(torch.arange(s, device=device).expand(batch, heads, s))
    if top > 0:
        order = _middle_order(scores, s, stop)[..., :top]
        rank = torch.arange(top, device=device)
        chosen = rank < middle_budgets.unsqueeze(-1)
        parts.append(torch.where(chosen, order + s, length))  # T marks an unused slot
    if w:
        parts.append(torch.arange(stop, length, device=device).expand(batch, heads, w))
    if not parts:
        return torch.empty((batch, heads, 0), dtype=torch.int64, device=device)
    if top > 0:
        # Sinks sort first and the window after the kept middle tokens, ahead of the T marks.
        return torch.cat(parts, dim=-1).sort(dim=-1).values
    return torch.cat(parts, dim=-1)


def _middle_order(scores, s, stop):
    """Positions ``s:stop`` (relative to ``s``) of each head by score, best first; NaN
    counts as -inf, -0.0 as +0.0, and ties go to the lower position.

    Both rewrites make every device agree: a CUDA radix sort orders keys by their bits,
    so it would otherwise put +0.0 above -0.0, which a comparison sort calls equal.
    """
    middle = scores[..., s:stop]
    inf = float("inf")
    middle = torch.nan_to_num(middle, nan=-inf, posinf=inf, neginf=-inf).add_(0.0)
    return torch.argsort(middle, dim=-1, descending=True, stable=True)
