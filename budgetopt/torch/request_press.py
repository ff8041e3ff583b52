"""``RequestBudgetPress``: per-request head budgets (:class:`budgetopt.RequestAllocator`) in kvpress.

Importing this module imports kvpress, which patches transformers' attention functions
(kvpress's own import-time behaviour, needed for head-wise masking).
"""

from __future__ import annotations


import numpy as np
import torch

from .._checks import check_fraction
from ..errors import InvalidInputError, InvalidTypeError
from ..request import RequestAllocator
from ..rounding import tokens_from_fraction
from .geometry import config_heads
from .mask import keep_mask

from ._kvpress import BasePress, ScorerPress

__all__ = ["RequestBudgetPress"]


class RequestBudgetPress(BasePress):
    """Head budgets chosen for each request from its own prefill scores, in kvpress's hooks.

    The wrapped ``press`` scores each layer's tokens; a :class:`budgetopt.RequestAllocator`
    turns the scores into per-KV-head budgets for this request (each batch row is its own
    request), and each head keeps its ``sink`` first and ``window`` last tokens and its best
    scored others (:func:`~budgetopt.torch.keep_mask`, kvpress's head-wise masking).

    Parameters
    ----------
    press : kvpress.ScorerPress
        The scorer the allocator was fitted with (for example ``SnapKVPress()``).
    allocator : RequestAllocator
        Fitted without value norms (features ``("scores",)``): the press sees only scores.
    compression_ratio : float, default 0.0
        Fraction of the whole cache removed (``1 - budget``); 0 compresses nothing.
    layerwise : bool, default False
        False: each layer is compressed in its own hook during prefill, its total fixed by
        the static curves (:meth:`RequestAllocator.layer_totals`) and split between its heads
        by this request's scores. True: one global split over all layers, which needs every
        layer's scores, so the masks are set after the last layer's prefill. In this press's
        masking mode the cache keeps its full length either way, so the global split costs no
        extra KV memory, only every layer's scores (``L * H * T`` floats per request on the
        host) until the last layer; a press that shrinks the cache physically would instead
        hold the whole uncompressed cache until the end of prefill.

    Raises
    ------
    InvalidTypeError, InvalidInputError
        Bad arguments, an allocator fitted with value norms, or (when applied) a model whose
        layers or KV heads differ from the allocator's, or eager attention.

    Notes
    -----
    A prompt of at most ``sink + window`` tokens is kept whole, and at a compression that
    would leave a head below its floor (``max(round(min_keep_fraction * T), sink + window)``)
    every head keeps its floor: like :class:`~budgetopt.torch.BudgetPress`, the press never
    drops protected tokens and never fails mid-forward on a short prompt.

    Examples
    --------
    >>> import numpy as np, budgetopt
    >>> from kvpress import KnormPress
    >>> s = [np.random.default_rng(0).random((2, 2, 50))]
    >>> ra = budgetopt.RequestAllocator.fit(s, s, sink=1, window=2)
    >>> RequestBudgetPress(KnormPress(), ra, compression_ratio=0.5).compression_ratio
    0.5
    """

    def __init__(self, press, allocator, *, compression_ratio=0.0, layerwise=False):
        if not isinstance(press, ScorerPress):
            raise InvalidTypeError(f"`press` must be a kvpress ScorerPress (it scores tokens); got {type(press).__name__}")
        if not isinstance(allocator, RequestAllocator):
            raise InvalidTypeError(f"`allocator` must be a budgetopt.RequestAllocator; got {type(allocator).__name__}")
        if "scores_x_norms" in allocator.features:
            raise InvalidInputError(
                "`allocator` was fitted with value norms, which this press does not compute; fit it on scores only")
        if not isinstance(layerwise, (bool, np.bool_)):
            raise InvalidTypeError(f"`layerwise` must be True or False; got {layerwise!r}")
        self.press = press
        self.allocator = allocator
        self.layerwise = bool(layerwise)
        self._ratio = 0.0
        self.compression_ratio = compression_ratio
        self._pending = {}

    @property
    def compression_ratio(self):
        """Fraction of the cache removed (``1 - budget``)."""
        return self._ratio

    @compression_ratio.setter
    def compression_ratio(self, value):
        self._ratio = check_fraction(value, "compression_ratio", upper_open=True)

    def total_budget(self, length):
        """Tokens all layers and KV heads keep for a ``length``-token request."""
        ra = self.allocator
        capacity = ra.layers * ra.kv_heads * length
        return tokens_from_fraction(1.0 - self._ratio, capacity)

    def post_init_from_model(self, model):
        self.press.post_init_from_model(model)
        layers, _, kv_heads = config_heads(model.config)
        if (layers, kv_heads) != (self.allocator.layers, self.allocator.kv_heads):
            raise InvalidInputError(
                f"`allocator` has (layers, kv_heads) = {(self.allocator.layers, self.allocator.kv_heads)} but the "
                f"model has ({layers}, {kv_heads})")
        self._pending = {}

    def _hide(self, module, scores, budgets):
        ra = self.allocator
        hidden = ~keep_mask(scores, torch.as_tensor(budgets, device=scores.device), sink=ra.sink, window=ra.window)
        indices = torch.where(hidden)
        module.masked_key_indices = indices if indices[0].numel() else None

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self._ratio <= 0:
            return keys, values
        if getattr(module.config, "_attn_implementation", None) == "eager":
            raise InvalidInputError(
                "RequestBudgetPress needs head-wise masking, which kvpress supports for sdpa and flash attention, "
                "not for attn_implementation='eager'")
        ra = self.allocator
        layer = int(module.layer_idx)
        length = keys.shape[2]
        if length <= ra.sink + ra.window:  # every token is protected: all are kept, as in BudgetPress
            return keys, values
        scores = self.press.score(module, hidden_states, keys, values, attentions, kwargs)
        host = scores.detach().to("cpu", torch.float32).numpy()
        # at high compression of a short prompt each head keeps at least its floor (its
        # protected tokens), as BudgetPress keeps them, instead of failing mid-forward
        total = max(self.total_budget(length), ra.min_total_budget(length))
        if not self.layerwise:
            layer_total = int(ra.layer_totals(length, total)[layer])
            budgets = np.stack([ra.allocate_layer(layer, row, layer_total) for row in host])
            self._hide(module, scores, budgets)
            return keys, values
        self._pending[layer] = (module, scores, host)
        if len(self._pending) == ra.layers:  # every layer scored: one global split per request
            pending, self._pending = self._pending, {}
            stacked = np.stack([pending[i][2] for i in range(ra.layers)], axis=1)  # (batch, L, H, T)
            budgets = np.stack([ra.allocate(request, total).budgets for request in stacked])  # (batch, L, H)
            for i in range(ra.layers):
                mod, sc, _ = pending[i]
                self._hide(mod, sc, budgets[:, i])
        return keys, values

    def __repr__(self):
        return (f"RequestBudgetPress(press={self.press!r}, allocator={self.allocator!r}, "
                f"compression_ratio={self._ratio!r}, layerwise={self.layerwise})")

    __eq__ = object.__eq__
    __hash__ = object.__hash__
