"""A transformers cache whose layers hold each KV head's kept tokens packed end to end.

After compression every (batch row, KV head) keeps its own number of tokens. A
:class:`VarlenLayer` stores them as one ``(total, head_dim)`` tensor per layer (the
:class:`~budgetopt.torch.VarlenKV` layout: sequence ``b * kv_heads + h``, offsets in
``cu_seqlens``), so the memory held is the kept rows and nothing else. Tokens decoded
afterwards are seen by every head; they are appended to a dense ``(batch, kv_heads, n,
head_dim)`` tail.

The attention that reads such a layer is registered in transformers' attention registry
under :data:`ATTENTION_NAME` (``"budgetopt_varlen"``). On ordinary cache layers it runs
transformers' ``"sdpa"`` attention, with the mask fitted to the layer's length where
``BudgetPress(mode="gather")`` left layers of different lengths (:func:`fit_mask_to_layer`);
on a :class:`VarlenLayer` it attends over each head's packed rows plus the decoded tail:

* on CUDA in float16/bfloat16, one :func:`torch.nn.attention.varlen.varlen_attn` call over
  the packed rows, merged with the tail by log-sum-exp (single-token decoding steps without
  an attention mask);
* single-token steps over many short (batch row, KV head) sequences: all sequences at
  once, a softmax per sequence by segment reductions, in float32;
* otherwise (few or long sequences, several new tokens at once) a loop over the
  sequences, two small matrix products per sequence, softmax in float32.

:class:`~budgetopt.torch.press.BudgetPress` with ``mode="varlen"`` builds the layers and
switches the model to this attention; nothing is patched at import.
"""

from __future__ import annotations

import warnings
import weakref

import torch

from ..errors import InvalidInputError, MissingDependencyError

try:
    from transformers.cache_utils import CacheLayerMixin, DynamicCache
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
except ImportError as _exc:  # pragma: no cover - exercised only without transformers
    raise MissingDependencyError(
        "budgetopt.torch.varlen_cache needs transformers; install it with: pip install 'budgetopt[kvpress]'"
    ) from _exc

__all__ = ["ATTENTION_NAME", "VarlenCache", "VarlenLayer", "fit_mask_to_layer", "varlen_attention_forward"]

ATTENTION_NAME = "budgetopt_varlen"
"""Name of the attention function in transformers' ``AttentionInterface`` registry."""

_LAYER_ATTR = "_budgetopt_varlen_layer"
_HALF = (torch.float16, torch.bfloat16)


class _PackedRows(torch.Tensor):
    """The packed ``(total, dim)`` rows of a :class:`VarlenLayer`, as :attr:`VarlenLayer.keys`
    and :attr:`VarlenLayer.values` return them.

    A plain tensor in every respect (operations return plain tensors) except one: indexing
    it like a dense ``(batch, kv_heads, seq, dim)`` cache, ``rows[:, :, :n]``, yields a
    :class:`_SeenPrefix` that, assigned back to the same attribute, crops the layer to ``n``
    seen tokens. kvpress's pipeline drops an answer from the cache that way
    (``layer.keys = layer.keys[:, :, :n]``).

    Why a tensor subclass: kvpress's pipeline (``_remove_answer_from_cache`` in kvpress
    0.5.5) writes exactly that line for every layer of the cache and offers no hook to call
    instead. The packed rows are 2-D, so the index would fail on a plain tensor, and it must
    be recognised where it is taken; a getter that returned anything but a tensor would break
    every other reader of ``layer.keys``. ``tests/torch/test_varlen_pipeline.py`` runs the
    pipeline and the idiom."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __getitem__(self, index):
        if (isinstance(index, tuple) and len(index) == 3
                and all(isinstance(i, slice) and i == slice(None) for i in index[:2])
                and isinstance(index[2], slice) and index[2].start in (None, 0) and index[2].step in (None, 1)):
            origin = getattr(self, "_budgetopt_origin", None)
            if origin is not None:
                return _SeenPrefix(origin[0](), origin[1], index[2].stop)
        return super().__getitem__(index)


class _SeenPrefix:
    """``layer.keys[:, :, :stop]`` of a :class:`VarlenLayer`: the first ``stop`` tokens seen
    (``None``: all). Only assignment back to the attribute it came from means anything."""

    __slots__ = ("layer", "name", "stop")

    def __init__(self, layer, name, stop):
        self.layer, self.name, self.stop = layer, name, stop

    def __repr__(self):
        return f"<first {self.stop} seen tokens of a VarlenLayer's {self.name}>"


class VarlenLayer(CacheLayerMixin):
    """One layer's cache with a different number of kept tokens per (batch row, KV head).

    Built by :meth:`from_varlen` from a :class:`~budgetopt.torch.VarlenKV` (usually by
    ``BudgetPress(mode="varlen")``); decoding appends every new token to every head.

    Parameters
    ----------
    keys, values : torch.Tensor, shape (total, dim)
        Packed kept rows (see Attributes).
    positions : torch.Tensor of int, shape (total,)
        Original position of each row; stored as int32.
    cu_seqlens : torch.Tensor of int, shape (batch * kv_heads + 1,)
        Cumulative lengths from 0 to ``total``, non-decreasing; read back to the host once.
    batch, kv_heads : int
        The shape the sequences were flattened from (batch-major, then head).
    context_length : int
        Tokens per head before compression.
    config : transformers.PretrainedConfig, optional
        As in :meth:`from_varlen`.

    Raises
    ------
    InvalidInputError
        Shapes that do not fit together, or ``cu_seqlens`` that do not rise from 0 to
        ``total``.

    Attributes
    ----------
    keys, values : torch.Tensor, shape (total, head_dim) and (total, value_dim)
        Kept rows of the compressed context, sequence ``i = b * kv_heads + h`` at rows
        ``cu_seqlens[i]:cu_seqlens[i + 1]`` in ascending position.
    positions : torch.Tensor of int32, shape (total,)
        Original position of each packed row (to read attention masks, which are indexed
        by position).
    cu_seqlens : torch.Tensor of int32, shape (batch * kv_heads + 1,)
        Cumulative lengths, starting at 0.
    decoded_keys, decoded_values : torch.Tensor, shape (batch, kv_heads, n, dim)
        The ``n`` tokens appended after compression, shared by all heads.
    context_length : int
        Tokens of the context before compression (``T``): the position of the first
        decoded token.
    batch, kv_heads, max_seqlen : int
        Shape of the packing, and the longest packed sequence.

    Notes
    -----
    :meth:`get_seq_length` is the number of tokens seen (``T`` plus decoded), not the rows
    held, so ``generate`` and the attention masks number new tokens by their true
    positions.

    ``keys`` and ``values`` are the packed tensors, with one addition for code written for
    dense layers: ``layer.keys = layer.keys[:, :, :n]`` (and the same for ``values``) drops
    the decoded tokens beyond ``n`` seen tokens, as :meth:`crop` does for both. kvpress's
    pipeline removes an answer from the cache between questions this way.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, keys, values, positions, cu_seqlens, *, batch, kv_heads, context_length, config=None):
        super().__init__()
        if keys.dim() != 2 or values.dim() != 2 or keys.shape[0] != values.shape[0]:
            raise InvalidInputError(
                f"`keys` and `values` must be (total, dim) with one row each per kept token; got shapes "
                f"{tuple(keys.shape)} and {tuple(values.shape)}"
            )
        if tuple(cu_seqlens.shape) != (batch * kv_heads + 1,):
            raise InvalidInputError(
                f"`cu_seqlens` must have batch * kv_heads + 1 = {batch * kv_heads + 1} entries; got "
                f"{tuple(cu_seqlens.shape)}"
            )
        if tuple(positions.shape) != (keys.shape[0],):
            raise InvalidInputError(
                f"`positions` must have one entry per row ({keys.shape[0]}); got {tuple(positions.shape)}"
            )
        self.keys, self.values = keys, values
        self.positions = positions.to(torch.int32)
        self.cu_seqlens = cu_seqlens.to(torch.int32)
        self._offsets = [int(v) for v in self.cu_seqlens.tolist()]  # host copy: one sync, at creation
        if self._offsets[0] != 0 or self._offsets[-1] != keys.shape[0] or any(
                a > b for a, b in zip(self._offsets, self._offsets[1:])):
            raise InvalidInputError("`cu_seqlens` must rise from 0 to the number of rows")
        self.batch, self.kv_heads = int(batch), int(kv_heads)
        self.max_seqlen = max((b - a for a, b in zip(self._offsets, self._offsets[1:])), default=0)
        self.context_length = int(context_length)
        self.decoded_keys = keys.new_zeros(batch, kv_heads, 0, keys.shape[-1])
        self.decoded_values = values.new_zeros(batch, kv_heads, 0, values.shape[-1])
        self.dtype, self.device = keys.dtype, keys.device
        self._config = weakref.ref(config) if config is not None else None
        self.is_initialized = True

    @classmethod
    def from_varlen(cls, packed, context_length, *, config=None):
        """Layer holding a :class:`~budgetopt.torch.VarlenKV` (from
        :meth:`CompactKV.to_varlen <budgetopt.torch.CompactKV.to_varlen>`).

        Parameters
        ----------
        packed : VarlenKV
        context_length : int
            Tokens per head before compaction (``CompactKV.seq_len``).
        config : transformers.PretrainedConfig, optional
            The model's config; when given, decoding checks that the model runs
            :data:`ATTENTION_NAME` and otherwise raises instead of attending wrongly.

        Examples
        --------
        >>> import torch
        >>> from budgetopt.torch import compact
        >>> keys = torch.arange(24.0).reshape(1, 2, 6, 2)
        >>> scores = torch.arange(6.0).expand(1, 2, 6)
        >>> layer = VarlenLayer.from_varlen(compact(keys, keys, scores, [1, 3]).to_varlen(), 6)
        >>> layer.lengths().tolist(), layer.get_seq_length(), layer.held_rows()
        ([[1, 3]], 6, 4)
        """
        return cls(packed.keys, packed.values, packed.positions, packed.cu_seqlens, batch=packed.batch,
                   kv_heads=packed.kv_heads, context_length=context_length, config=config)

    # -- the packed rows ------------------------------------------------------------------
    def _get_rows(self, name):
        rows = self.__dict__.get("_" + name)
        if rows is None:
            return None
        view = rows.as_subclass(_PackedRows)
        view._budgetopt_origin = (weakref.ref(self), name)
        return view

    def _set_rows(self, name, value):
        if isinstance(value, _SeenPrefix):
            if value.layer is not self or value.name != name:
                raise InvalidInputError(
                    f"`{name}` can be assigned `layer.{name}[:, :, :n]` of this same layer only (it crops the "
                    "decoded tokens); got a slice of another layer or attribute"
                )
            self._crop_tail(name, value.stop)
            return
        if isinstance(value, _PackedRows):
            value = value.as_subclass(torch.Tensor)
        self.__dict__["_" + name] = value

    keys = property(lambda self: self._get_rows("keys"), lambda self, v: self._set_rows("keys", v),
                    doc="Packed key rows ``(total, head_dim)`` (see the class Notes for slicing).")
    values = property(lambda self: self._get_rows("values"), lambda self, v: self._set_rows("values", v),
                      doc="Packed value rows ``(total, value_dim)`` (see the class Notes for slicing).")

    # -- sizes -------------------------------------------------------------------------
    def lengths(self):
        """Tokens held per (batch row, KV head), packed plus decoded: int64 ``(batch, kv_heads)``."""
        packed = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).to(torch.int64)
        return packed.view(self.batch, self.kv_heads) + self.decoded_keys.shape[2]

    def held_rows(self):
        """Key rows held in all: packed rows plus ``batch * kv_heads`` per decoded token."""
        return self.keys.shape[0] + self.decoded_keys.shape[0] * self.decoded_keys.shape[1] * self.decoded_keys.shape[2]

    def nbytes(self):
        """Bytes of every tensor this layer holds (keys, values, positions, offsets, tail)."""
        tensors = (self.keys, self.values, self.positions, self.cu_seqlens, self.decoded_keys, self.decoded_values)
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- the CacheLayerMixin interface --------------------------------------------------
    def lazy_initialization(self, key_states, value_states):
        raise InvalidInputError(
            "a VarlenLayer is created filled (VarlenLayer.from_varlen); it cannot be re-initialised"
        )

    def update(self, key_states, value_states, cache_kwargs=None):
        """Append new tokens to every head; returns views of the decoded tail that carry
        this layer for :func:`varlen_attention_forward`."""
        config = self._config() if self._config is not None else None
        if config is not None and config._attn_implementation != ATTENTION_NAME:
            raise InvalidInputError(
                "this cache holds per-head packed (variable-length) layers, which only the "
                f"{ATTENTION_NAME!r} attention reads; the model runs {config._attn_implementation!r}. Decode "
                f"inside `with press(model):` or call model.set_attn_implementation({ATTENTION_NAME!r})"
            )
        expected = (self.batch, self.kv_heads)
        if tuple(key_states.shape[:2]) != expected or tuple(value_states.shape[:2]) != expected:
            raise InvalidInputError(
                f"new keys and values must be (batch, kv_heads, n, dim) with (batch, kv_heads) = {expected}; "
                f"got {tuple(key_states.shape)} and {tuple(value_states.shape)}"
            )
        self.decoded_keys = torch.cat([self.decoded_keys, key_states.to(self.dtype)], dim=2)
        self.decoded_values = torch.cat([self.decoded_values, value_states.to(self.dtype)], dim=2)
        keys = self.decoded_keys.view(self.decoded_keys.shape)
        setattr(keys, _LAYER_ATTR, self)
        return keys, self.decoded_values.view(self.decoded_values.shape)

    def get_seq_length(self):
        """Tokens seen: the context before compression plus the decoded tokens."""
        return self.context_length + self.decoded_keys.shape[2]

    def get_mask_sizes(self, cache_position):
        """``(kv_length, 0)``: masks cover every position seen, packed rows read theirs."""
        return self.get_seq_length() + cache_position.shape[0], 0

    def get_max_cache_shape(self):
        return -1

    def reset(self):
        for t in (self.keys, self.values, self.decoded_keys, self.decoded_values):
            t.zero_()

    def offload(self):
        self._move("cpu")

    def prefetch(self):
        if self.keys.device != self.device:
            self._move(self.device)

    def _move(self, device):
        for name in ("keys", "values", "positions", "cu_seqlens", "decoded_keys", "decoded_values"):
            setattr(self, name, getattr(self, name).to(device, non_blocking=True))

    def crop(self, max_length):
        """Drop decoded tokens beyond ``max_length`` seen tokens (negative: that many fewer).

        The compressed context itself cannot be cropped."""
        self._crop_tail("keys", max_length)
        self._crop_tail("values", max_length)

    def _crop_tail(self, name, max_length):
        tail = getattr(self, "decoded_" + name)
        seen = self.context_length + tail.shape[2]
        if max_length is None:
            return
        max_length = int(max_length)
        if max_length < 0:
            max_length = seen + max_length
        if max_length >= seen:
            return
        if max_length < self.context_length:
            raise InvalidInputError(
                f"cannot crop a compressed cache below its context of {self.context_length} tokens; "
                f"got max_length={max_length}"
            )
        setattr(self, "decoded_" + name, tail[:, :, : max_length - self.context_length])

    def batch_select_indices(self, indices):
        """Keep batch rows ``indices`` (in that order; a row may repeat)."""
        indices = torch.as_tensor(indices, device=self.cu_seqlens.device)
        if indices.dtype == torch.bool:
            indices = torch.nonzero(indices).flatten()
        indices = indices.to(torch.int64)
        heads = self.kv_heads
        seqs = (indices[:, None] * heads + torch.arange(heads, device=indices.device)).flatten()
        starts = self.cu_seqlens[:-1].to(torch.int64)[seqs]
        counts = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).to(torch.int64)[seqs]
        cu = torch.zeros(seqs.numel() + 1, dtype=torch.int64, device=seqs.device)
        cu[1:] = counts.cumsum(0)
        total = int(cu[-1])
        within = torch.arange(total, device=seqs.device) - torch.repeat_interleave(cu[:-1], counts, output_size=total)
        rows = torch.repeat_interleave(starts, counts, output_size=total) + within
        rows = rows.to(self.keys.device)
        self.keys, self.values = self.keys.index_select(0, rows), self.values.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)
        self.cu_seqlens = cu.to(torch.int32)
        self._offsets = [int(v) for v in cu.tolist()]
        self.batch = int(indices.numel())
        self.max_seqlen = int(counts.max()) if counts.numel() else 0
        batch_index = indices.to(self.decoded_keys.device)
        self.decoded_keys = self.decoded_keys.index_select(0, batch_index)
        self.decoded_values = self.decoded_values.index_select(0, batch_index)

    def reorder_cache(self, beam_idx):
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats):
        self.batch_select_indices(torch.arange(self.batch).repeat_interleave(repeats))

    def __repr__(self):
        return (f"VarlenLayer(batch={self.batch}, kv_heads={self.kv_heads}, rows={self.keys.shape[0]}, "
                f"decoded={self.decoded_keys.shape[2]}, context_length={self.context_length})")


class VarlenCache(DynamicCache):
    """A :class:`transformers.DynamicCache` whose compressed layers are :class:`VarlenLayer`.

    It fills like a ``DynamicCache``; ``BudgetPress(mode="varlen")`` replaces each layer by
    a :class:`VarlenLayer` at the end of pre-filling. When ``generate`` (or the caller) made
    a plain ``DynamicCache``, the press turns that same object into a ``VarlenCache``, so
    ``generate(..., return_dict_in_generate=True).past_key_values`` is this class.

    Examples
    --------
    >>> cache = VarlenCache()
    >>> cache.held_rows(), cache.nbytes()
    ([], 0)
    """

    def held_rows(self):
        """Key rows held per layer (a :class:`VarlenLayer` counts its packed rows plus
        ``batch * kv_heads`` per decoded token; other layers ``batch * kv_heads * length``)."""
        out = []
        for layer in self.layers:
            if isinstance(layer, VarlenLayer):
                out.append(layer.held_rows())
            elif getattr(layer, "keys", None) is not None and layer.keys.dim() == 4:
                out.append(layer.keys.shape[0] * layer.keys.shape[1] * layer.keys.shape[2])
            else:
                out.append(0)
        return out

    def nbytes(self):
        """Bytes held by all layers' tensors."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, VarlenLayer):
                total += layer.nbytes()
            else:
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                    if t is not None:
                        total += t.numel() * t.element_size()
        return total


# -- attention ----------------------------------------------------------------------------
def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention over a :class:`VarlenLayer`, transformers' ``sdpa`` attention otherwise.

    Registered as :data:`ATTENTION_NAME`; select it with
    ``model.set_attn_implementation("budgetopt_varlen")`` (``BudgetPress(mode="varlen")``
    does this inside its context). The signature is transformers' attention interface.

    Returns
    -------
    (torch.Tensor, None)
        Output of shape ``(batch, q_len, heads, head_dim)``, no attention weights.

    Examples
    --------
    >>> import torch
    >>> from budgetopt.torch import compact
    >>> kv = torch.randn(1, 1, 5, 4, generator=torch.Generator().manual_seed(0))
    >>> layer = VarlenLayer.from_varlen(compact(kv, kv, torch.arange(5.0).view(1, 1, 5), [2]).to_varlen(), 5)
    >>> new = torch.zeros(1, 1, 1, 4)
    >>> key, value = layer.update(new, new)
    >>> class Attn:  # the attributes transformers' attention modules have
    ...     num_key_value_groups, is_causal, training = 2, True, False
    >>> out, _ = varlen_attention_forward(Attn(), torch.randn(1, 2, 1, 4), key, value, None)
    >>> out.shape
    torch.Size([1, 1, 2, 4])
    """
    layer = getattr(key, _LAYER_ATTR, None)
    if layer is None:
        if attention_mask is not None and attention_mask.shape[-1] != key.shape[-2]:
            attention_mask = fit_mask_to_layer(attention_mask, key.shape[-2])
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                              scaling=scaling, **kwargs)
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise InvalidInputError(
            "the budgetopt_varlen attention supports neither sliding-window attention nor logit soft-capping"
        )
    if dropout and getattr(module, "training", False):
        raise InvalidInputError("the budgetopt_varlen attention is for inference: dropout is not supported")
    batch, heads, q_len, head_dim = query.shape
    if heads % layer.kv_heads or batch != layer.batch:
        raise InvalidInputError(
            f"the query has (batch, heads) = ({batch}, {heads}); the cache layer holds batch {layer.batch} and "
            f"{layer.kv_heads} KV heads"
        )
    scale = head_dim ** -0.5 if scaling is None else float(scaling)
    if attention_mask is not None and attention_mask.shape[-1] != layer.get_seq_length():
        raise InvalidInputError(
            f"the attention mask covers {attention_mask.shape[-1]} positions; the cache has seen "
            f"{layer.get_seq_length()} tokens"
        )
    out = None
    if attention_mask is None and q_len == 1 and query.is_cuda and query.dtype in _HALF:
        varlen = _cuda_varlen_attn(query.device, query.dtype)
        if varlen is not None:
            out = _decode_packed_merge(query, layer, key, value, scale, varlen)
    if out is None and q_len == 1 and _segments_pay(layer):
        out = _decode_segments(query, layer, key, value, attention_mask, scale)
    if out is None:
        out = _attend_per_sequence(query, layer, key, value, attention_mask, scale)
    return out.transpose(1, 2).contiguous(), None


def fit_mask_to_layer(attention_mask, key_length):
    """The attention mask of a layer whose cache holds ``key_length`` rows, from the mask
    transformers built for the model's first layer.

    transformers builds one mask for all full-attention layers, sized by the first layer's
    cache. After ``BudgetPress(mode="gather")`` each layer holds its own number of rows
    (its largest head budget, plus the tokens decoded since), so a step of several new
    tokens (kvpress's pipeline feeds each question at once) gets a mask of the wrong width
    on every other layer. The mask's last ``q_len`` columns are the new tokens, the same in
    every layer; the columns before them are the compressed past, whose order is the kept
    tokens' and not their positions. A past that every query row sees whole (or not at
    all) is the same for any number of rows, so it is widened or narrowed to
    ``key_length - q_len`` columns. A past seen in part (a padding mask over compacted
    rows, which have no positions to read it at) is refused rather than guessed.

    Raises
    ------
    InvalidInputError
        When the past is seen in part by some query row, or the layer holds fewer rows
        than the new tokens.

    Examples
    --------
    >>> import torch
    >>> causal = torch.ones(3, 5, dtype=torch.bool).tril(2).view(1, 1, 3, 5)  # 2 past rows, 3 new
    >>> fit_mask_to_layer(causal, 7)[0, 0].int().tolist()
    [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]]
    """
    q_len = attention_mask.shape[-2]
    past, new = attention_mask[..., : -q_len], attention_mask[..., -q_len:]
    if key_length < q_len or attention_mask.shape[-1] < q_len:
        raise InvalidInputError(
            f"the attention mask covers {attention_mask.shape[-1]} keys for {q_len} new tokens; the cache "
            f"layer holds {key_length}"
        )
    seen = past if past.dtype == torch.bool else past == 0
    if past.shape[-1] and not torch.equal(seen.all(-1), seen.any(-1)):
        raise InvalidInputError(
            "a padding mask cannot be applied to a cache compressed with per-layer lengths "
            "(BudgetPress mode='gather'): its rows have no positions; use mode='varlen' or 'mask', "
            "or a batch without padding"
        )
    width = key_length - q_len
    if past.shape[-1]:
        past = past[..., :1].expand(*past.shape[:-1], width)
    else:  # the first layer kept nothing: its mask says nothing about the past, which is seen
        fill = True if attention_mask.dtype == torch.bool else 0
        past = attention_mask.new_full((*attention_mask.shape[:-1], width), fill)
    return torch.cat([past, new], dim=-1)


def _bias(attention_mask, b, dtype):
    """Additive bias ``(q_len, kv_length)`` of batch row ``b`` (0 where attended, -inf else)."""
    row = attention_mask[b, 0] if attention_mask.dim() == 4 else attention_mask[b]
    if row.dtype == torch.bool:
        return torch.zeros(row.shape, dtype=dtype, device=row.device).masked_fill_(~row, float("-inf"))
    return row.to(dtype)


def _attend_per_sequence(query, layer, dec_keys, dec_values, attention_mask, scale):
    """Reference path: each (batch row, KV head) attends over its packed rows and the
    decoded tail; scores and softmax in float32 (float64 stays float64)."""
    batch, heads, q_len, _ = query.shape
    kv_heads = layer.kv_heads
    group = heads // kv_heads
    n_dec = dec_keys.shape[2]
    work = torch.float64 if query.dtype == torch.float64 else torch.float32
    out = query.new_empty(batch, heads, q_len, dec_values.shape[-1])
    offsets, keys, values = layer._offsets, layer._keys, layer._values
    tail_bias = None
    if attention_mask is None and q_len > 1:
        # Causal among the new tokens: query i sees decoded tokens 0 .. n_dec - q_len + i.
        last = n_dec - q_len + torch.arange(q_len, device=query.device)
        seen = torch.arange(n_dec, device=query.device)[None, :] <= last[:, None]
        tail_bias = torch.zeros(q_len, n_dec, dtype=work, device=query.device).masked_fill_(~seen, float("-inf"))
    for b in range(batch):
        bias = None if attention_mask is None else _bias(attention_mask, b, work)
        if bias is not None:
            tail_bias = bias[:, layer.context_length:]
        for h in range(kv_heads):
            i = b * kv_heads + h
            start, end = offsets[i], offsets[i + 1]
            q = query[b, h * group:(h + 1) * group].to(work) * scale             # (G, q_len, D)
            kp, vp = keys[start:end].to(work), values[start:end].to(work)
            kd, vd = dec_keys[b, h].to(work), dec_values[b, h].to(work)
            packed_scores = q @ kp.T
            if bias is not None and end > start:
                packed_scores = packed_scores + bias.index_select(1, layer.positions[start:end].to(torch.int64))
            tail_scores = q @ kd.T
            if tail_bias is not None:
                tail_scores = tail_scores + tail_bias
            weights = torch.softmax(torch.cat([packed_scores, tail_scores], dim=-1), dim=-1)
            o = weights[..., : end - start] @ vp + weights[..., end - start:] @ vd
            out[b, h * group:(h + 1) * group] = o.to(out.dtype)
    return out


# When the all-at-once step beats the per-sequence loop on the CPU: many short sequences.
# benchmarks/bench_varlen_step.py (one thread, shared machine): 0.10-0.56x the loop's time
# with 32-128 sequences of 50-180 rows, but 1.1-2.3x with 3 sequences (batch 1, 3 KV heads)
# and 1.46x with 64 sequences of ~770 rows, where its (rows, group, dim) temporaries cost
# more than the loop's Python overhead.
_SEGMENTS_MIN_SEQUENCES = 8
_SEGMENTS_MAX_MEAN_ROWS = 256


def _segments_pay(layer):
    seqs = layer.batch * layer.kv_heads
    return seqs >= _SEGMENTS_MIN_SEQUENCES and layer._keys.shape[0] <= _SEGMENTS_MAX_MEAN_ROWS * seqs


def _decode_segments(query, layer, dec_keys, dec_values, attention_mask, scale):
    """One decoding step over all (batch row, KV head) sequences at once, no Python loop:
    scores of every packed row against its sequence's queries, a softmax per sequence
    (segment maximum by ``scatter_reduce``, sums by ``index_add_``) joined with the
    decoded tail, and the weighted values summed back per sequence. Float32 (float64
    stays float64); the temporaries are ``(rows, group, dim)``."""
    batch, heads, _, head_dim = query.shape
    kv_heads = layer.kv_heads
    group, seqs = heads // kv_heads, batch * kv_heads
    work = torch.float64 if query.dtype == torch.float64 else torch.float32
    device = query.device
    counts = (layer.cu_seqlens[1:] - layer.cu_seqlens[:-1]).to(device=device, dtype=torch.int64)
    total = layer._keys.shape[0]
    seq = torch.repeat_interleave(torch.arange(seqs, device=device), counts, output_size=total)
    q = query.to(work).reshape(seqs, group, head_dim) * scale
    kp, vp = layer._keys.to(work), layer._values.to(work)
    packed = torch.bmm(q.index_select(0, seq), kp.unsqueeze(-1)).squeeze(-1)           # (rows, G)
    tail = q.view(batch, kv_heads, group, head_dim) @ dec_keys.to(work).transpose(-1, -2)  # (B, H, G, n)
    if attention_mask is not None:
        bias = _bias_rows(attention_mask, work)                                          # (B, seen)
        positions = layer.positions.to(device=device, dtype=torch.int64)
        packed = packed + bias[seq // kv_heads, positions].unsqueeze(-1)
        tail = tail + bias[:, layer.context_length:].view(batch, 1, 1, -1)
    tail = tail.reshape(seqs, group, -1)
    top = torch.full((seqs, group), float("-inf"), dtype=work, device=device)
    top = top.scatter_reduce(0, seq.unsqueeze(-1).expand(-1, group), packed, "amax")
    if tail.shape[-1]:
        top = torch.maximum(top, tail.amax(-1))
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)                    # nothing visible
    weights_p = torch.exp(packed - top.index_select(0, seq))
    weights_t = torch.exp(tail - top.unsqueeze(-1))
    denom = weights_t.sum(-1).index_add_(0, seq, weights_p)
    num = (weights_t @ dec_values.to(work).reshape(seqs, -1, dec_values.shape[-1]))
    num = num.index_add_(0, seq, weights_p.unsqueeze(-1) * vp.unsqueeze(1))
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))                       # nothing seen: zeros
    return (num / denom.unsqueeze(-1)).to(query.dtype).view(batch, heads, 1, -1)


def _bias_rows(attention_mask, dtype):
    """Additive bias ``(batch, kv_length)`` of a one-query mask (0 where attended, -inf else)."""
    rows = attention_mask[:, 0, -1] if attention_mask.dim() == 4 else attention_mask[:, -1]
    if rows.dtype == torch.bool:
        return torch.zeros(rows.shape, dtype=dtype, device=rows.device).masked_fill_(~rows, float("-inf"))
    return rows.to(dtype)


def _decode_packed_merge(query, layer, dec_keys, dec_values, scale, varlen):
    """One decoding step: ``varlen(...)`` over the packed rows (flash-attn layout, with
    log-sum-exp), the decoded tail in float32, merged by log-sum-exp.

    ``varlen`` has the signature of :func:`torch.nn.attention.varlen.varlen_attn` restricted
    to ``(q, k, v, cu_q, cu_k, max_q, max_k, scale) -> (out, lse)``, so a CPU reference can
    stand in for the CUDA kernel in tests."""
    batch, heads, _, head_dim = query.shape
    kv_heads = layer.kv_heads
    group = heads // kv_heads
    seqs = batch * kv_heads
    q = query.reshape(seqs, group, head_dim)                                   # one query row per sequence
    cu_q = torch.arange(seqs + 1, dtype=torch.int32, device=query.device)
    out_p, lse_p = varlen(q, layer._keys.unsqueeze(1), layer._values.unsqueeze(1), cu_q, layer.cu_seqlens, 1,
                          max(layer.max_seqlen, 1), scale)
    out_p = out_p.float().view(batch, kv_heads, group, -1)
    lse_p = lse_p.float().reshape(batch, kv_heads, group)
    empty = (layer.cu_seqlens[1:] == layer.cu_seqlens[:-1]).view(batch, kv_heads, 1)
    lse_p = lse_p.masked_fill(empty, float("-inf"))                            # kernels differ on empty sequences
    out_p = out_p.masked_fill(empty.unsqueeze(-1), 0.0)
    qf = query.float().view(batch, kv_heads, group, head_dim) * scale
    tail = qf @ dec_keys.float().transpose(-1, -2)                             # (B, H, G, n_dec)
    lse_t = torch.logsumexp(tail, dim=-1)
    out_t = torch.softmax(tail, dim=-1) @ dec_values.float()
    lse = torch.logaddexp(lse_p, lse_t)
    out = out_p * torch.exp(lse_p - lse).unsqueeze(-1) + out_t * torch.exp(lse_t - lse).unsqueeze(-1)
    return out.to(query.dtype).view(batch, heads, 1, -1)


_VARLEN_KERNEL = {}


def _cuda_varlen_attn(device=None, dtype=torch.bfloat16):
    """``varlen_attn`` adapted to :func:`_decode_packed_merge` (log-sum-exp as ``(total_q,
    heads)``), or None where torch lacks it or it fails a probe on ``device``.

    The probe, once per (device, dtype), runs three sequences (one empty) and compares
    the kernel with plain float32 math; it also settles the log-sum-exp layout, which torch
    documents as ``(total_q, heads)`` while flash-attn's varlen path returns ``(heads,
    total_q)``."""
    key = (str(device), dtype)
    if key not in _VARLEN_KERNEL:
        _VARLEN_KERNEL[key] = _probe_varlen_attn(device, dtype)
    return _VARLEN_KERNEL[key]


def _probe_varlen_attn(device, dtype):
    try:
        from torch.nn.attention.varlen import AuxRequest, varlen_attn
    except ImportError:  # older torch
        return None

    def call(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, return_aux=AuxRequest(lse=True), scale=scale,
                           enable_gqa=True)

    try:
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(3, 2, 64, generator=gen).to(device=device, dtype=dtype)   # 3 sequences, 2 query heads
        k = torch.randn(5, 1, 64, generator=gen).to(device=device, dtype=dtype)
        v = torch.randn(5, 1, 64, generator=gen).to(device=device, dtype=dtype)
        cu_q = torch.arange(4, dtype=torch.int32, device=device)
        cu_k = torch.tensor([0, 2, 2, 5], dtype=torch.int32, device=device)      # the middle one is empty
        out, lse = call(q, k, v, cu_q, cu_k, 1, 3, 0.125)
        if tuple(lse.shape) == (2, 3):
            transpose = True
        elif tuple(lse.shape) == (3, 2):
            transpose = False
        else:
            raise RuntimeError(f"unexpected log-sum-exp shape {tuple(lse.shape)}")
        lse = lse.t() if transpose else lse
        for i, (s, e) in enumerate(((0, 2), (2, 5))):
            row = 2 * i  # sequences 0 and 2
            scores = (q[row].float() @ k[s:e, 0].float().T) * 0.125
            if not (torch.allclose(out[row].float(), torch.softmax(scores, -1) @ v[s:e, 0].float(), atol=2e-2)
                    and torch.allclose(lse[row].float(), torch.logsumexp(scores, -1), atol=2e-2)):
                raise RuntimeError("varlen_attn disagrees with plain attention on the probe")
    except Exception as exc:  # noqa: BLE001 - any failure means: use the per-sequence loop
        warnings.warn(f"budgetopt_varlen: torch.nn.attention.varlen.varlen_attn unusable on {device} "
                      f"({type(exc).__name__}: {exc}); decoding uses the per-sequence loop", RuntimeWarning,
                      stacklevel=3)
        return None

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        out, lse = call(q.contiguous(), k, v, cu_q, cu_k, max_q, max_k, scale)
        return out, (lse.t() if transpose else lse)

    return kernel


def register():
    """Register :data:`ATTENTION_NAME` (attention function and its mask, the ``sdpa``
    mask) in transformers' registries. Idempotent; adds a name, replaces nothing."""
    AttentionInterface.register(ATTENTION_NAME, varlen_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


register()
