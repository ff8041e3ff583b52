"""Compaction: physically smaller KV tensors that hold only the tokens each head keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ._checks import check_float_tensor
from .mask import prepare_selection, select_positions

__all__ = ["CompactKV", "VarlenKV", "compact"]

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class VarlenKV:
    """Kept tokens of every head packed end to end: the layout of ``flash_attn_varlen_func``.

    Sequence ``i = b * kv_heads + h`` (batch-major, then head) is head ``h`` of batch row
    ``b``; its tokens are rows ``cu_seqlens[i]:cu_seqlens[i + 1]``, in ascending position.

    Attributes
    ----------
    keys : torch.Tensor, shape (total, head_dim)
    values : torch.Tensor, shape (total, value_dim)
    positions : torch.Tensor of int64, shape (total,)
        Original position of each row in the uncompressed sequence.
    cu_seqlens : torch.Tensor of int32, shape (batch * kv_heads + 1,)
        Cumulative lengths, starting at 0.
    max_seqlen : int
        The longest sequence (``max_seqlen_k`` for flash-attn).
    batch, kv_heads : int
        The shape the sequences were flattened from.

    Notes
    -----
    For flash-attn, every (batch row, KV head) pair is one sequence with a single KV head:
    pass ``keys.unsqueeze(1)`` (``nheads_k = 1``) and lay the queries out the same way, the
    ``G = heads // kv_heads`` query heads of a group as the head axis of that sequence.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    batch: int
    kv_heads: int


@dataclass(frozen=True, eq=False)
class CompactKV:
    """Per-head compacted keys and values, padded to the longest head.

    Attributes
    ----------
    keys : torch.Tensor, shape (batch, kv_heads, max_length, head_dim)
        Kept keys of each head in ascending position; padding slots hold zeros.
    values : torch.Tensor, shape (batch, kv_heads, max_length, value_dim)
        Kept values, laid out like ``keys``.
    positions : torch.Tensor of int64, shape (batch, kv_heads, max_length)
        Original position of each kept token (ascending, so RoPE and causal order stay
        right); ``-1`` in padding slots.
    lengths : torch.Tensor of int64, shape (batch, kv_heads)
        Tokens each head kept.
    valid : torch.BoolTensor, shape (batch, kv_heads, max_length)
        ``True`` at real tokens, ``False`` at padding: ``slot < lengths[..., None]``.
    seq_len : int
        Tokens per head before compaction (``T``).
    total : int
        ``lengths.sum()``: tokens kept over all heads.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor
    valid: torch.Tensor
    seq_len: int
    total: int

    @property
    def max_length(self):
        """Slots per head: the largest kept count (``keys.shape[2]``)."""
        return self.keys.shape[2]

    def attention_bias(self, dtype=None):
        """Additive attention bias that hides the padding: 0 at real tokens, ``-inf`` else.

        Parameters
        ----------
        dtype : torch.dtype, optional
            Default: the dtype of :attr:`keys`.

        Returns
        -------
        torch.Tensor, shape (batch, kv_heads, 1, max_length)
            Broadcasts over the query axis. For grouped-query attention repeat it over the
            query heads of each group (``repeat_interleave(G, dim=1)``) like the keys.
            A head that kept no token has only ``-inf`` entries: attention over it is
            undefined (NaN), as it has no key to attend to.
        """
        dtype = self.keys.dtype if dtype is None else dtype
        bias = torch.zeros(self.valid.shape, dtype=dtype, device=self.valid.device)
        return bias.masked_fill_(~self.valid, float("-inf")).unsqueeze(2)

    def to_varlen(self):
        """Pack the kept tokens end to end, dropping the padding.

        Returns
        -------
        VarlenKV
            ``keys``/``values`` of shape ``(total, dim)``, int32 ``cu_seqlens`` of length
            ``batch * kv_heads + 1``, ordered batch-major then head.

        Raises
        ------
        InvalidInputError
            More than ``2**31 - 1`` kept tokens (int32 ``cu_seqlens`` cannot hold them).

        Notes
        -----
        One row gather per tensor, O(total * dim), and no host synchronisation.

        Examples
        --------
        >>> import torch
        >>> keys = torch.arange(12.0).reshape(1, 2, 3, 2)
        >>> scores = torch.tensor([[[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]]])
        >>> packed = compact(keys, keys, scores, [2, 1]).to_varlen()
        >>> packed.keys
        tensor([[ 0.,  1.],
                [ 4.,  5.],
                [10., 11.]])
        >>> packed.cu_seqlens, packed.positions
        (tensor([0, 2, 3], dtype=torch.int32), tensor([0, 2, 2]))
        """
        if self.total > _INT32_MAX:
            raise InvalidInputError(
                f"to_varlen needs at most {_INT32_MAX} kept tokens for int32 `cu_seqlens`; "
                f"this cache keeps {self.total}"
            )
        batch, heads, slots = self.valid.shape
        device = self.valid.device
        rows = _nth_true(self.valid.reshape(-1), self.total)
        keys = _index_rows(self.keys.reshape(batch * heads * slots, self.keys.shape[-1]), rows)
        values = _index_rows(self.values.reshape(batch * heads * slots, self.values.shape[-1]), rows)
        positions = self.positions.reshape(-1).index_select(0, rows)
        cu_seqlens = torch.zeros(batch * heads + 1, dtype=torch.int32, device=device)
        cu_seqlens[1:] = self.lengths.reshape(-1).cumsum(0)
        return VarlenKV(keys, values, positions, cu_seqlens, slots, batch, heads)


def compact(keys, values, scores, budgets, *, sink=0, window=0):
    """Gather each KV head's kept tokens into physically smaller tensors.

    The kept set of head ``(b, h)`` is exactly that of :func:`keep_mask` with the same
    arguments; kept tokens stay in ascending position order.

    Parameters
    ----------
    keys : torch.Tensor, shape (batch, kv_heads, T, head_dim)
        Key cache of one layer (float16, bfloat16, float32 or float64).
    values : torch.Tensor, shape (batch, kv_heads, T, value_dim)
        Value cache of the same layer.
    scores : torch.Tensor, shape (batch, kv_heads, T)
        Importance of each token for each KV head (see :func:`keep_mask`).
    budgets : array_like or torch.Tensor of int, shape (kv_heads,) or (batch, kv_heads)
        Tokens each head keeps, protected tokens included; clamped to ``[0, T]``.
    sink, window : int, default 0
        Leading and trailing tokens always kept (they count in the budget).

    Returns
    -------
    CompactKV
        Keys and values of shape ``(batch, kv_heads, max_length, dim)`` where
        ``max_length`` is the largest kept count, with ``lengths``, ``positions``, the
        ``valid`` mask, :meth:`CompactKV.attention_bias` and :meth:`CompactKV.to_varlen`.

    Raises
    ------
    InvalidTypeError, InvalidInputError
        As :func:`keep_mask`; also when ``keys``/``values`` do not match ``scores`` in shape
        or device.

    Notes
    -----
    Selection as in :func:`keep_mask` (the ``max_length`` largest scores of each head by
    :func:`torch.topk`, then a threshold and a tie rule by position), then a binary search
    in the running count of kept tokens gives each slot its position, in ascending order
    without a sort; then one ``gather`` along the token axis per tensor, so the copy reads
    only the kept rows: O(batch * kv_heads * (T + max_length * (log T + dim))), plus the
    top-k's own ``max_length log max_length`` ordering of its values. When ``budgets`` is
    a device tensor, reading ``max_length`` back is the one host synchronisation (the
    output shape needs it); host budgets (NumPy arrays, lists) need none, so a loop over
    layers never waits for the device. Rows are copied as 8-, 4- or 2-byte words when
    their size allows, so every dtype is moved bit for bit. A head whose budget is below
    its protected tokens keeps those tokens (see :func:`keep_mask`). Memory: the outputs
    plus O(batch * kv_heads * T) work space for the selection (a copy of the scores, a few
    bool masks and an int32 running count).

    Each call launches about thirty tensor operations (a few more inside
    ``torch.topk``); layers of equal length can share one call by stacking them on the
    batch axis with budgets shaped ``(layers, kv_heads)`` (all heads are then padded to the
    largest budget of any layer).

    Examples
    --------
    >>> import torch
    >>> keys = torch.arange(12.0).reshape(1, 2, 3, 2)
    >>> scores = torch.tensor([[[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]]])
    >>> kv = compact(keys, keys, scores, [2, 1])
    >>> kv.lengths, kv.positions
    (tensor([[2, 1]]), tensor([[[ 0,  2],
             [ 2, -1]]]))
    >>> kv.keys[0, 1]
    tensor([[10., 11.],
            [ 0.,  0.]])
    """
    scores, middle_budgets, host_lengths, (s, w) = prepare_selection(scores, budgets, sink, window)
    keys = check_float_tensor(keys, "keys", 4, "(batch, kv_heads, T, head_dim)")
    values = check_float_tensor(values, "values", 4, "(batch, kv_heads, T, value_dim)")
    if tuple(keys.shape[:3]) != tuple(scores.shape):
        raise InvalidInputError(
            "`keys` must have shape (batch, kv_heads, T, head_dim) matching `scores` "
            f"{tuple(scores.shape)}; got {tuple(keys.shape)}"
        )
    if tuple(values.shape[:3]) != tuple(keys.shape[:3]):
        raise InvalidInputError(
            f"`values` must match `keys` in (batch, kv_heads, T) = {tuple(keys.shape[:3])}; "
            f"got shape {tuple(values.shape)}"
        )
    if keys.device != scores.device or values.device != scores.device:
        raise InvalidInputError(
            f"`keys`, `values` and `scores` must be on one device; got {keys.device}, "
            f"{values.device} and {scores.device}"
        )

    batch, heads, length = scores.shape
    lengths = middle_budgets + (s + w)
    if lengths.numel() == 0:
        slots, total = 0, 0
    elif host_lengths is not None:
        slots, total = int(host_lengths.max()), int(host_lengths.sum())
    else:
        slots, total = (int(v) for v in torch.stack([lengths.max(), lengths.sum()]).tolist())

    found = select_positions(scores, middle_budgets, s, w, slots)
    valid = found < length
    positions = torch.where(valid, found, -1)
    source = found.clamp_(max=max(length - 1, 0))  # padding slots read a real row, then are zeroed
    padding = batch * heads * slots - total
    pad_rows = _nth_true(valid.logical_not().reshape(-1), padding) if padding else None
    out_keys = _gather_slots(keys, source, pad_rows)
    out_values = _gather_slots(values, source, pad_rows)
    return CompactKV(out_keys, out_values, positions, lengths, valid, length, total)


def _nth_true(flags, count):
    """Indices of the ``count`` True entries of a 1-D bool tensor, ascending, without a
    host synchronisation (``count`` must be the number of True entries)."""
    running = flags.cumsum(0)
    targets = torch.arange(1, count + 1, device=flags.device)
    return torch.searchsorted(running, targets)


def _as_words(x):
    """``x`` reinterpreted with the widest integer type (8, 4 or 2 bytes) that tiles its last
    axis, so a row copy moves fewer, larger elements; ``x`` itself if none fits."""
    row_bytes = x.shape[-1] * x.element_size()
    if row_bytes == 0:
        return x
    for word in (torch.int64, torch.int32, torch.int16):
        if word.itemsize > x.element_size() and row_bytes % word.itemsize == 0:
            try:
                return x.view(word)
            except RuntimeError:  # misaligned offset or strides
                continue
    return x


def _index_rows(rows2d, rows):
    """``rows2d[rows]`` for a 2-D tensor, copied as machine words."""
    words = _as_words(rows2d)
    return words.index_select(0, rows).view(rows2d.dtype)


def _gather_slots(x, source, pad_rows):
    """``x[b, h, source[b, h, j]]`` for every slot, shape (batch, kv_heads, slots, dim),
    with the flat slots ``pad_rows`` zeroed.

    One ``gather`` along the token axis (any strides), copying rows as machine words."""
    batch, heads, slots = source.shape
    words = _as_words(x)
    width = words.shape[-1]
    out = words.gather(2, source.unsqueeze(-1).expand(batch, heads, slots, width))
    if pad_rows is not None:
        out.view(batch * heads * slots, width).index_fill_(0, pad_rows, 0)
    return out.view(x.dtype)
