"""``BudgetPress``: a kvpress press that applies budgetopt budgets per layer and KV head.

Importing this module imports kvpress, which patches transformers' attention functions
(kvpress's own import-time behaviour, needed for head-wise masking), and registers the
``"budgetopt_varlen"`` attention of :mod:`budgetopt.torch.varlen_cache` under a new name.
"""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager

import numpy as np
import torch

from .._checks import check_fraction, check_int, check_real
from ..errors import InvalidInputError, InvalidTypeError
from .compact import compact
from .geometry import config_heads
from ..lukv import load_lukv_table
from .layers import budget_source, layer_budgets
from .mask import keep_mask

from ._kvpress import BasePress, ScorerPress, is_prefilling, kvpress

from transformers.cache_utils import DynamicCache, DynamicLayer  # noqa: E402  (after kvpress's patching)

from .varlen_cache import ATTENTION_NAME, VarlenCache, VarlenLayer  # noqa: E402

__all__ = ["BudgetPress", "lukv_press"]

_MODES = ("mask", "gather", "varlen")


class _AttentionHold:
    """Keeps a model on the ``"budgetopt_varlen"`` attention while a press context is open
    or a varlen cache compressed under it is alive; then restores ``previous``."""

    def __init__(self, previous):
        self.previous = previous
        self.contexts = 0
        self.caches = 0


_HOLDS = weakref.WeakKeyDictionary()  # model -> _AttentionHold


def _release(model_ref, hold):
    """One context closed or one varlen cache freed: restore the attention when none is left."""
    model = model_ref()
    if model is None or hold.contexts or hold.caches or _HOLDS.get(model) is not hold:
        return
    del _HOLDS[model]
    if getattr(model.config, "_attn_implementation", None) == ATTENTION_NAME:
        model.set_attn_implementation(hold.previous)


def _cache_freed(model_ref, hold):
    hold.caches -= 1
    _release(model_ref, hold)


def _refuse_padding(module, mask):
    """Refuse to gather a padded batch: the gathered rows keep no positions, so the padding mask
    of later steps (laid out over positions) could not be applied to them.

    At pre-filling the last query sees every key of a full-attention layer except padding. A
    layer with a sliding window hides old keys from it anyway and is not checked here.
    """
    if mask is None or mask.dim() != 4:
        return
    if getattr(module, "sliding_window", getattr(getattr(module, "config", None), "sliding_window", None)):
        return
    last = mask[..., -1, :]
    if (~last if last.dtype == torch.bool else last < 0).any():
        raise InvalidInputError(
            "BudgetPress(mode='gather') cannot compress a padded batch: the gathered rows keep no "
            "positions for the padding mask; use mode='varlen' or 'mask', or batches without padding"
        )


def _become_varlen_cache(cache):
    """Turn a plain ``DynamicCache`` into a :class:`VarlenCache` in place (other caches are
    left alone).

    Why in place: the cache belongs to the caller (``generate`` or kvpress's pipeline made it
    and keeps using it); the press meets it only inside a forward hook and cannot hand back
    another object, yet ``generate(..., return_dict_in_generate=True).past_key_values`` is
    documented to be a :class:`VarlenCache` (``held_rows``, ``nbytes``). A new cache built
    from the layers would not reach the caller. :class:`VarlenCache` adds methods only (no
    ``__init__``, no state), so the object keeps its state; ``tests/torch/test_varlen_cache.py``
    and ``tests/torch/test_varlen_pipeline.py`` check the type after ``generate`` and the
    pipeline.
    """
    if type(cache) is DynamicCache:
        cache.__class__ = VarlenCache


class BudgetPress(BasePress):
    """Apply per-layer, per-KV-head budgets around any kvpress scorer press.

    The wrapped ``press`` scores the cached tokens of each layer; each KV head then keeps
    its own number of tokens: its first ``sink`` and last ``window`` tokens and the best
    scored of the rest (:func:`~budgetopt.torch.keep_mask`). Compression happens once, at
    pre-filling, as for every kvpress press.

    Parameters
    ----------
    press : kvpress.ScorerPress
        Scores tokens (for example ``KnormPress()``, ``ExpectedAttentionPress()``); its own
        ``compression_ratio`` is not used.
    allocation : Allocation, array_like, str or os.PathLike
        Where the budgets come from:

        * an :class:`~budgetopt.Allocation` with ``head_shape`` ``(layers, kv_heads)``, or
          an integer array of that shape: tokens per head out of ``head_capacity``;
        * an LU-KV prune-ratio table ``(99, layers, kv_heads)`` (kvpress ``LUKVPress``'s
          format), as an array or a path to a ``.npy`` file. Nothing is ever downloaded.
    compression_ratio : float, optional
        Fraction of the cache removed (``1 - budget``).

        * With a table: selects the row, like ``LUKVPress`` (default 0.0: no compression);
          settable later.
        * With budgets: fixed by the allocation, ``1 - sum(budgets) / (layers * kv_heads *
          head_capacity)``. Passing or setting a different value is an error (allocate
          again for another total, or use a table).
    head_capacity : int
        Budgets only (required there): tokens per head of the grid the allocation was
        computed on (its largest grid point). A sequence of ``T`` tokens gives head ``h``
        ``budgets[h] / head_capacity`` of ``T`` tokens, rounded by largest remainder so each
        layer's total is exact (see :func:`~budgetopt.torch.layer_budgets`). Use
        ``head_capacity=T`` to apply token counts as they are. Budgets allocated on curves
        with a relative grid (:func:`budgetopt.curves_from_run` over contexts of different
        lengths, ``meta["grid"] == "relative"``) are in ``1/resolution`` of the context: pass
        ``head_capacity=curves.meta["resolution"]``.
    sink, window : int, default 0
        Leading and trailing tokens every head keeps; they count in its budget.
    mode : {"mask", "gather", "varlen"}, default "mask"
        * ``"mask"``: kvpress's head-wise masking path (as ``AdaKVPress`` and
          ``LUKVPress``): the cache keeps its full length and the evicted keys are hidden
          at decoding through ``module.masked_key_indices``. Frees no memory.
        * ``"gather"``: each layer's cache is physically gathered down to its largest
          head budget (:func:`~budgetopt.torch.compact`): kept tokens in ascending
          position, heads with fewer tokens padded with zero slots that are hidden through
          ``module.masked_key_indices``. Every head keeps exactly the tokens of ``"mask"``
          mode, and the layer frees ``1 - max_budget / T`` of its keys and values. Layers
          then differ in length, and transformers sizes its causal mask by the first one,
          so on an ``sdpa`` model the press runs the ``"budgetopt_varlen"`` attention, held
          as for ``"varlen"``: ``sdpa`` with the mask fitted to each layer
          (:func:`~budgetopt.torch.varlen_cache.fit_mask_to_layer`). That is what lets
          kvpress's pipeline feed a question of several tokens. Gathered rows keep no
          positions, so a padded batch is refused at pre-filling (use ``"varlen"``).
        * ``"varlen"``: each layer becomes a
          :class:`~budgetopt.torch.varlen_cache.VarlenLayer` holding exactly each head's
          kept tokens packed end to end, plus the tokens decoded since; the cache object
          becomes a :class:`~budgetopt.torch.varlen_cache.VarlenCache`. Inside the press's
          context the model runs the ``"budgetopt_varlen"`` attention, which reads it
          (sdpa models only). The model stays on it while a cache compressed in the
          context is alive, so kvpress's pipeline, which decodes after the context, works;
          the previous implementation comes back once the context has closed and those
          caches are freed. Every head keeps exactly the tokens of ``"mask"`` mode.

    Raises
    ------
    InvalidTypeError, InvalidInputError, CurvesFileError
        Bad arguments, a table file that cannot be read, or (when the press is applied) a
        model whose layers or KV heads do not match the allocation, or eager attention
        (head-wise masking needs ``sdpa`` or flash attention; ``"varlen"`` needs ``sdpa``
        and a ``DynamicCache``, without sliding-window layers except marked ones, below).

    Notes
    -----
    Layers whose attention module is marked ``is_sliding`` (Gemma3's sliding-window layers)
    are left uncompressed in every mode, as kvpress does for Gemma3: their cache keeps only
    the window anyway. Their rows of the allocation are not applied.

    A head whose budget is below ``sink + window`` keeps its protected tokens all the same.
    Cost per layer: the scorer, one top-k (or value sort) per head to find its score
    threshold, and in ``"gather"`` mode one row copy of the kept tokens (see
    :func:`budgetopt.torch.compact`).

    In ``"gather"`` mode the cache is shorter than the context, as with every kvpress press
    that evicts tokens: decode with explicit ``position_ids`` (kvpress's pipeline does) so
    new tokens keep their true positions.

    Examples
    --------
    >>> import numpy as np
    >>> from kvpress import KnormPress
    >>> press = BudgetPress(KnormPress(), np.array([[3, 1], [2, 2]]), head_capacity=4)
    >>> press.compression_ratio
    0.5
    >>> press.layer_budgets(0, 100)
    array([75, 25])
    """

    def __init__(self, press, allocation, *, compression_ratio=None, head_capacity=None,
                 sink=0, window=0, mode="mask"):
        if not isinstance(press, ScorerPress):
            raise InvalidTypeError(
                f"`press` must be a kvpress ScorerPress (it scores tokens); got {type(press).__name__}"
            )
        sink, window = check_int(sink, "sink"), check_int(window, "window")
        if mode not in _MODES:
            raise InvalidInputError(f"`mode` must be one of {', '.join(map(repr, _MODES))}; got {mode!r}")
        if isinstance(allocation, (str, bytes, os.PathLike)):
            allocation = load_lukv_table(allocation)
        self._table, self._budgets = budget_source(allocation)
        self.press = press
        self.sink = int(sink)
        self.window = int(window)
        self.mode = mode
        if self._table is not None:
            if head_capacity is not None:
                raise InvalidInputError("`head_capacity` applies to budgets, not to an LU-KV table")
            self._head_capacity = None
            self._ratio = 0.0
            self.compression_ratio = 0.0 if compression_ratio is None else compression_ratio
        else:
            if head_capacity is None:
                raise InvalidInputError(
                    "`head_capacity` is required with budgets: the tokens per head of the grid "
                    "the allocation was computed on (its largest grid point; for curves on a relative "
                    "grid, their meta['resolution'], 1000 by default)"
                )
            layer_budgets(self._budgets, 0, int(head_capacity), head_capacity=head_capacity)
            self._head_capacity = int(head_capacity)
            self._ratio = 1.0 - float(self._budgets.sum()) / (self._budgets.size * self._head_capacity)
            if compression_ratio is not None:
                self.compression_ratio = compression_ratio

    @property
    def compression_ratio(self):
        """Fraction of the cache removed (``1 - budget``), as kvpress tooling reads it."""
        return self._ratio

    @compression_ratio.setter
    def compression_ratio(self, value):
        if self._table is not None:
            self._ratio = check_fraction(value, "compression_ratio", upper_open=True)
            return
        value = check_real(value, "compression_ratio")
        if abs(value - self._ratio) > 1e-9:
            raise InvalidInputError(
                f"`compression_ratio` is fixed by the allocation at {self._ratio!r}; got {value!r} "
                "(allocate again for another total, or use an LU-KV table)"
            )

    @property
    def head_shape(self):
        """``(layers, kv_heads)`` of the allocation or table."""
        source = self._table if self._table is not None else self._budgets
        return tuple(source.shape[-2:])

    def layer_budgets(self, layer, length, *, device=None):
        """Tokens each KV head of ``layer`` keeps for a ``length``-token context (before the
        ``sink``/``window`` floor of :func:`~budgetopt.torch.keep_mask`). A table row is
        converted on ``device`` (default the CPU; the press uses its keys' device, as
        ``LUKVPress`` does)."""
        if self._table is not None:
            return layer_budgets(self._table, layer, length, compression_ratio=self._ratio, device=device)
        return layer_budgets(self._budgets, layer, length, head_capacity=self._head_capacity)

    def post_init_from_model(self, model):
        self.press.post_init_from_model(model)
        layers, _, kv_heads = config_heads(model.config)
        if (layers, kv_heads) != self.head_shape:
            raise InvalidInputError(
                f"`allocation` has (layers, kv_heads) = {self.head_shape} but the model has "
                f"({layers}, {kv_heads})"
            )

    @contextmanager
    def __call__(self, model):
        """Apply the press to ``model`` inside a ``with`` block (kvpress's usage).

        In ``"varlen"`` mode, and in ``"gather"`` mode on an ``sdpa`` model, the model also
        runs the ``"budgetopt_varlen"`` attention inside the block and for as long as a cache compressed in it is alive, so that it can be
        decoded after the block (kvpress's pipeline does); its previous attention
        implementation is restored when the block has closed and those caches have been
        freed (on error too). ``"budgetopt_varlen"`` runs ``"sdpa"`` on ordinary caches.
        """
        current = getattr(model.config, "_attn_implementation", None)
        if self.mode == "mask" or (self.mode == "gather" and current not in ("sdpa", ATTENTION_NAME)):
            with super().__call__(model):
                yield
            return
        hold = _HOLDS.get(model)
        if hold is None or current != ATTENTION_NAME:
            if current not in ("sdpa", ATTENTION_NAME):
                raise InvalidInputError(
                    f"BudgetPress(mode='varlen') needs a model with attn_implementation='sdpa'; this one runs "
                    f"{current!r}"
                )
            hold = _HOLDS[model] = _AttentionHold(current)
        hold.contexts += 1
        model_ref = weakref.ref(model)
        self._hold = (model_ref, hold)
        try:
            model.set_attn_implementation(ATTENTION_NAME)
            with super().__call__(model):
                yield
        finally:
            self._hold = None
            hold.contexts -= 1
            _release(model_ref, hold)

    def forward_hook(self, module, input, kwargs, output):
        if getattr(module, "is_sliding", False):
            return output  # a sliding-window layer (Gemma3): its cache keeps only the window anyway
        if self.mode != "varlen":
            return super().forward_hook(module, input, kwargs, output)
        hidden_states = kwargs["hidden_states"]
        if not is_prefilling(kwargs["cache_position"], hidden_states.shape[1]):
            return output
        cache = kwargs["past_key_values"]
        index = int(module.layer_idx)
        layer = cache.layers[index] if cache is not None and index < len(cache.layers) else None
        if not isinstance(cache, DynamicCache) or type(layer) is not DynamicLayer:
            raise InvalidInputError(
                "BudgetPress(mode='varlen') needs a DynamicCache (or VarlenCache) without sliding-window or "
                f"quantized layers; layer {index} is {type(layer).__name__} in a {type(cache).__name__}"
            )
        keys, values = layer.keys, layer.values
        length = keys.shape[2]
        if self._table is not None and self._ratio <= 0:
            budgets = np.full(keys.shape[1], length)
        else:
            budgets = self._checked_budgets(index, keys)
        scores = self.press.score(module, hidden_states, keys, values, output[1], kwargs)
        packed = compact(keys, values, scores, budgets, sink=self.sink, window=self.window).to_varlen()
        cache.layers[index] = VarlenLayer.from_varlen(packed, length, config=module.config)
        _become_varlen_cache(cache)
        self._hold_for(cache)
        return output

    def _hold_for(self, cache):
        """Keep the model on the budgetopt attention while ``cache`` (compressed here) lives."""
        hold = getattr(self, "_hold", None)
        if hold is not None and cache is not None and getattr(cache, "_budgetopt_hold", None) is not hold[1]:
            cache._budgetopt_hold = hold[1]
            hold[1].caches += 1
            weakref.finalize(cache, _cache_freed, *hold)

    def _checked_budgets(self, layer, keys):
        budgets = self.layer_budgets(layer, keys.shape[2], device=keys.device)
        if budgets.shape[0] != keys.shape[1]:
            raise InvalidInputError(
                f"`allocation` has {budgets.shape[0]} KV heads per layer; the cache has {keys.shape[1]}"
            )
        return budgets

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self._table is not None and self._ratio <= 0:
            return keys, values
        if getattr(module.config, "_attn_implementation", None) == "eager":
            raise InvalidInputError(
                "BudgetPress needs head-wise masking, which kvpress supports for sdpa and flash "
                "attention, not for attn_implementation='eager'"
            )
        budgets = self._checked_budgets(int(module.layer_idx), keys)
        scores = self.press.score(module, hidden_states, keys, values, attentions, kwargs)
        if self.mode == "mask":
            hidden = ~keep_mask(scores, budgets, sink=self.sink, window=self.window)
        else:
            _refuse_padding(module, kwargs.get("attention_mask"))
            kv = compact(keys, values, scores, budgets, sink=self.sink, window=self.window)
            keys, values, hidden = kv.keys, kv.values, ~kv.valid
            self._hold_for(kwargs.get("past_key_values"))
        indices = torch.where(hidden)
        module.masked_key_indices = indices if indices[0].numel() else None
        return keys, values

    def __repr__(self):
        source = "table" if self._table is not None else "budgets"
        return (
            f"BudgetPress(press={self.press!r}, {source} {self.head_shape}, "
            f"compression_ratio={self._ratio!r}, sink={self.sink}, window={self.window}, "
            f"mode={self.mode!r})"
        )

    __eq__ = object.__eq__
    __hash__ = object.__hash__




def lukv_press(table, press, *, compression_ratio, sink=4, window=1):
    """kvpress's own ``LUKVPress`` around ``press``, reading ``table`` instead of a download.

    kvpress 0.5.5's ``LUKVPress`` takes no table argument: it fetches a published table for
    the models it knows, into the attribute set here. The press this returns is kvpress's,
    unchanged otherwise (its keep counts are exactly
    ``budgetopt.keep_counts_from_prune_ratios(table[row, layer], T)``).

    Parameters
    ----------
    table : array_like or str or os.PathLike
        A ``[99, layers, kv_heads]`` prune-ratio table, or a ``.npy`` file of one
        (:func:`budgetopt.load_lukv_table` reads it; never unpickled).
    press : kvpress.ScorerPress
        The scorer that ranks tokens within each head (``SnapKVPress()``, ...).
    compression_ratio : float
        Fraction of the cache removed, in ``[0, 1)`` (``1 - budget``).
    sink, window : int
        First and last tokens every head keeps (kvpress's defaults 4 and 1); use the values
        the table was profiled with.

    Returns
    -------
    kvpress.LUKVPress

    Examples
    --------
    >>> import numpy as np
    >>> from kvpress import SnapKVPress
    >>> table = np.full((99, 2, 2), 0.5)
    >>> p = lukv_press(table, SnapKVPress(), compression_ratio=0.5)
    >>> type(p).__name__, p.compression_ratio, p._budget_curves.shape
    ('LUKVPress', 0.5, (99, 2, 2))
    """
    from ..lukv import _check_table

    if isinstance(table, (str, bytes, os.PathLike)):
        table = load_lukv_table(table)
    table = _check_table(table, "table")
    if not isinstance(press, ScorerPress):
        raise InvalidTypeError(f"`press` must be a kvpress ScorerPress (SnapKVPress(), ...); got {type(press).__name__}")
    ratio = check_fraction(compression_ratio, "compression_ratio", upper_open=True)
    out = kvpress.LUKVPress(press=press, compression_ratio=ratio, sink=check_int(sink, "sink"),
                            window=check_int(window, "window"))
    out._budget_curves = np.array(table, dtype=np.float64)  # kvpress's loader fills this attribute
    return out
