"""The score-capture press: a scorer's scores at prefill, recorded in kvpress's own hook flow.

:class:`CapturePress` wraps a ``ScorerPress`` and calls its ``score()`` from kvpress's forward
hook exactly as the press does when it compresses online, but leaves the cache untouched.
Importing this module imports kvpress.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import InvalidInputError
from .._kvpress import BasePress, ScorerPress

__all__ = ["CapturePress"]


@dataclass
class CapturePress(BasePress):
    """Record what a ScorerPress's ``score`` returns at prefill; leave the cache untouched."""

    press: ScorerPress = None
    scores: dict = field(default_factory=dict)

    def post_init_from_model(self, model):
        self.press.post_init_from_model(model)

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        try:
            scores = self.press.score(module, hidden_states, keys, values, attentions, kwargs)
        except AssertionError as exc:  # kvpress checks its own preconditions with assert
            raise InvalidInputError(
                f"`scorer` {type(self.press).__name__} cannot score this context of "
                f"{keys.shape[2]} tokens at layer {module.layer_idx}: {exc}"
            ) from exc
        expected = (keys.shape[0], keys.shape[1], keys.shape[2])
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise InvalidInputError(
                f"`scorer` must return scores shaped (batch, kv_heads, T) = {expected}; got {got} "
                f"at layer {module.layer_idx}"
            )
        self.scores[module.layer_idx] = scores.detach()[0].float()
        return keys, values

    def stacked(self, layers, length):
        """Scores ``(layers, kv_heads, length)``; a layer holding only its last tokens (a
        sliding-window layer) gets the lowest float32 for the tokens it no longer holds."""
        missing = [layer for layer in range(layers) if layer not in self.scores]
        if missing:
            raise InvalidInputError(f"`scorer` produced no scores for layers {missing}")
        rows = []
        for layer in range(layers):
            row = self.scores[layer]
            if row.shape[-1] < length:
                pad = torch.full((row.shape[0], length - row.shape[-1]), torch.finfo(torch.float32).min,
                                 dtype=torch.float32, device=row.device)
                row = torch.cat([pad, row], dim=-1)
            rows.append(row)
        return torch.stack(rows)
