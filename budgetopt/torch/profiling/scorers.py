"""Scorer lookup: the kvpress ``ScorerPress`` a name, a press instance or a plain function means.

Importing this module imports kvpress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import InvalidInputError, InvalidTypeError
from .._kvpress import BasePress, ScorerPress
from .._kvpress import kvpress as _kvpress

__all__ = ["SCORER_NAMES", "CallableScorer", "resolve_scorer"]

#: Scorer names and the press each one builds with its default settings: the name of a kvpress
#: class, or a ``ScorerPress`` class defined elsewhere (docs/extending.md, "A new scorer").
SCORER_NAMES = {
    "snapkv": "SnapKVPress",
    "keydiff": "KeyDiffPress",
    "expected_attention": "ExpectedAttentionPress",
    "knorm": "KnormPress",
    "tova": "TOVAPress",
    "observed_attention": "ObservedAttentionPress",
    "streaming_llm": "StreamingLLMPress",
    "random": "RandomPress",
    "lagkv": "LagKVPress",
    "leverage": "LeverageScorePress",
    "non_causal_attention": "NonCausalAttnPress",
    "compactor": "CompactorPress",
    "cur": "CURPress",
}


@dataclass
class CallableScorer(ScorerPress):
    """A kvpress ScorerPress whose ``score`` is a plain function.

    ``fn(module, hidden_states, keys, values, attentions, kwargs)`` must return scores shaped
    ``(batch, kv_heads, T)``, higher meaning more important (kvpress's convention).
    """

    fn: Callable = None

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        return self.fn(module, hidden_states, keys, values, attentions, kwargs)


def resolve_scorer(scorer):
    """The kvpress ``ScorerPress`` named or given by ``scorer``.

    Parameters
    ----------
    scorer : str, kvpress.ScorerPress or callable
        * a name from :data:`SCORER_NAMES` (kvpress's press with its default settings):

          ==========================  ==========================
          name                        kvpress press
          ==========================  ==========================
          ``snapkv``                  ``SnapKVPress``
          ``keydiff``                 ``KeyDiffPress``
          ``expected_attention``      ``ExpectedAttentionPress``
          ``knorm``                   ``KnormPress``
          ``tova``                    ``TOVAPress``
          ``observed_attention``      ``ObservedAttentionPress`` (eager attention only)
          ``streaming_llm``           ``StreamingLLMPress``
          ``random``                  ``RandomPress``
          ``lagkv``                   ``LagKVPress``
          ``leverage``                ``LeverageScorePress``
          ``non_causal_attention``    ``NonCausalAttnPress``
          ``compactor``               ``CompactorPress``
          ``cur``                     ``CURPress``
          ==========================  ==========================

          Names are case-insensitive; ``-`` and ``_`` are interchangeable.
        * a ``ScorerPress`` instance, used as is (its ``compression_ratio`` is ignored);
        * a plain function ``(module, hidden_states, keys, values, attentions, kwargs) ->
          scores[batch, kv_heads, T]``, wrapped in a :class:`CallableScorer`.

    Returns
    -------
    kvpress.ScorerPress

    Raises
    ------
    InvalidInputError
        An unknown name (the message lists the valid ones).
    InvalidTypeError
        Anything else (for example a kvpress press that does not score tokens).

    Examples
    --------
    >>> type(resolve_scorer("snapkv")).__name__
    'SnapKVPress'
    >>> type(resolve_scorer(lambda m, h, k, v, a, kw: k.norm(dim=-1))).__name__
    'CallableScorer'
    """
    if isinstance(scorer, str):
        key = scorer.strip().lower().replace("-", "_")
        if key not in SCORER_NAMES:
            raise InvalidInputError(
                f"`scorer` {scorer!r} is not a known scorer name; choose one of "
                f"{', '.join(SCORER_NAMES)} (or pass a kvpress ScorerPress or a function)"
            )
        press = SCORER_NAMES[key]
        return (getattr(_kvpress, press) if isinstance(press, str) else press)()
    if isinstance(scorer, ScorerPress):
        return scorer
    if isinstance(scorer, BasePress):
        raise InvalidTypeError(
            f"`scorer` must be a kvpress ScorerPress (a press that scores tokens); "
            f"{type(scorer).__name__} is not one"
        )
    if callable(scorer):
        return CallableScorer(fn=scorer)
    raise InvalidTypeError(
        f"`scorer` must be a scorer name, a kvpress ScorerPress or a function; got {type(scorer).__name__}"
    )
