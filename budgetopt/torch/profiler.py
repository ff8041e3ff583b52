"""Profile one context of a transformers model into scorer, value-norm and oracle arrays.

This is the engine behind LU-KV tables: for one calibration context and its questions it
returns, per layer and KV head and context token,

* the **scores** a kvpress scorer gives at prefill (the press's own ``score()``, run in
  kvpress's hook flow exactly as it runs online);
* the **value-output norms** ``n[l, q, j] = ||W_O[l][:, q] v[l, g(q), j]||`` of every query
  head ``q`` (``g(q)`` its KV head), normalised to sum to 1 over the layer's query heads and
  context tokens;
* one **oracle** per question: while the model answers, the attention each generated step pays
  to each context token, times ``n``, reduced over the query heads of each KV group and over
  the steps.

Importing this module imports kvpress (which patches transformers' attention functions at
import, its own behaviour); :mod:`budgetopt.torch` therefore exposes these names lazily.
"""

from __future__ import annotations

import copy
import numbers
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import InvalidInputError, InvalidTypeError

from ._kvpress import BasePress, ScorerPress
from .geometry import SUPPORTED_MODEL_TYPES, ModelGeometry, language_model, model_geometry, text_config
from ._kvpress import kvpress as _kvpress

from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

__all__ = [
    "ModelGeometry",
    "ContextProfile",
    "SUPPORTED_MODEL_TYPES",
    "SCORER_NAMES",
    "model_geometry",
    "resolve_scorer",
    "value_output_norms",
    "profile_context",
]

#: Scorer names and the kvpress press each one builds (default settings).
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

_HEAD_REDUCE = ("max", "mean")
_STEP_REDUCE = ("max", "sum")


# --------------------------------------------------------------------------- scorers


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
        return getattr(_kvpress, SCORER_NAMES[key])()
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


@dataclass
class _CapturePress(BasePress):
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


# --------------------------------------------------------------------------- value norms


def value_output_norms(geometry, values, *, length=None):
    """Normalised value-output norms of every query head, unreduced: ``(layers, heads, T)``.

    .. math::

        n[l, q, j] = \\lVert W_O[l][:, q] \\, v[l, g(q), j] \\rVert, \\qquad
        \\textstyle\\sum_{q, j} n[l, q, j] = 1 \\text{ for every layer } l,

    where ``W_O[l][:, q]`` is query head ``q``'s column block of the output projection and
    ``g(q) = q // (heads // kv_heads)`` its KV head. Computed as ``sqrt(v^T G_q v)`` with the
    Gram matrix ``G_q = W_O[:, q]^T W_O[:, q]`` (``head_dim x head_dim``), in float32.

    Parameters
    ----------
    geometry : ModelGeometry
    values : sequence of torch.Tensor or transformers Cache
        Per layer, the cached values ``(1, kv_heads, T_l, head_dim)``; a Cache gives its
        layers' ``values``. A layer holding fewer than ``length`` tokens (a sliding-window
        layer) holds the last ``T_l``; the tokens it no longer holds get ``n = 0``.
    length : int, optional
        ``T``; default: the longest layer.

    Returns
    -------
    torch.Tensor
        float32 ``(layers, heads, T)`` on the values' device.

    Notes
    -----
    Cost per layer: ``heads * head_dim^2 * (hidden + T)`` multiply-adds.

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> g = model_geometry(LlamaForCausalLM(cfg))
    >>> n = value_output_norms(g, [torch.randn(1, 2, 5, 8) for _ in range(2)])
    >>> tuple(n.shape), [round(float(s), 5) for s in n.sum(dim=(1, 2))]
    ((2, 4, 5), [1.0, 1.0])
    """
    if hasattr(values, "layers"):
        values = [layer.values for layer in values.layers]
    values = list(values)
    if len(values) != geometry.layers:
        raise InvalidInputError(f"`values` must hold {geometry.layers} layers; got {len(values)}")
    if length is None:
        length = max(v.shape[2] for v in values)
    out = None
    for layer, v in enumerate(values):
        if v.ndim != 4 or v.shape[0] != 1 or v.shape[1] != geometry.kv_heads or v.shape[3] != geometry.head_dim:
            raise InvalidInputError(
                f"`values` layer {layer} must be shaped (1, {geometry.kv_heads}, T, {geometry.head_dim}); "
                f"got {tuple(v.shape)}"
            )
        if out is None:
            out = torch.zeros((geometry.layers, geometry.heads, length), dtype=torch.float32, device=v.device)
        w = geometry.o_proj_weight(layer).detach().to(device=v.device, dtype=torch.float32)
        w = w.view(w.shape[0], geometry.heads, geometry.head_dim)
        gram = torch.einsum("khd,khe->hde", w, w)  # (heads, d, d)
        held = min(v.shape[2], length)
        vq = v[0, :, v.shape[2] - held:].float().repeat_interleave(geometry.group, dim=0)  # (heads, held, d)
        sq = (torch.bmm(vq, gram) * vq).sum(-1).clamp_(min=0)
        norms = sq.sqrt_()
        total = norms.sum()
        if total > 0:
            norms /= total
        out[layer, :, length - held:] = norms
    return out


# --------------------------------------------------------------------------- oracle attention


class _OracleState:
    """What the registered attention function needs while the question/decode passes run."""

    def __init__(self, norms, context, group, head_reduce, step_reduce):
        self.norms = norms  # (layers, heads, T) float32
        self.context = context  # T
        self.group = group
        self.head_reduce = head_reduce
        self.step_reduce = step_reduce
        self.seq_len = 0  # tokens in the sequence after the current pass
        self.acc = None  # (layers, kv_heads, T) float32, per question
        self.rows = 0

    def reset(self, kv_heads):
        layers, _, length = self.norms.shape
        self.acc = torch.zeros((layers, kv_heads, length), dtype=torch.float32, device=self.norms.device)

    def add_row(self, module, query, key, attention_mask, scaling, softcap):
        """Fold the last query row's attention over the context into the accumulator."""
        # query (1, H, q, d), key (1, Hkv, K, d): scores of the last query row only.
        kv_heads, klen = key.shape[1], key.shape[2]
        q = query[0, :, -1].float().view(kv_heads, self.group, -1)
        logits = torch.einsum("kgd,ktd->kgt", q, key[0].float()) * scaling
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if attention_mask is not None:
            row = attention_mask[0, :, -1, -klen:]  # (1 or heads, K)
            row = row.view(1, 1, klen) if row.shape[0] == 1 else row.view(kv_heads, self.group, klen)
            if row.dtype == torch.bool:
                logits = logits.masked_fill(~row, float("-inf"))
            else:
                logits = logits + row.float()
        probs = torch.softmax(logits, dim=-1)
        # Key column c holds sequence position seq_len - K + c (sliding-window layers keep the
        # last K tokens); context position j is column j - offset.
        offset = self.seq_len - klen
        length = self.context
        if offset == 0:
            ctx = probs[..., :length]
        else:
            ctx = torch.zeros((kv_heads, self.group, length), dtype=torch.float32, device=probs.device)
            first = max(offset, 0)
            if first < length:
                ctx[..., first:] = probs[..., first - offset:length - offset]
        layer = module.layer_idx
        weighted = ctx * self.norms[layer].view(kv_heads, self.group, length)
        reduced = weighted.amax(dim=1) if self.head_reduce == "max" else weighted.mean(dim=1)
        if self.step_reduce == "max":
            torch.maximum(self.acc[layer], reduced, out=self.acc[layer])
        else:
            self.acc[layer] += reduced


_ORACLE_NAMES = {"eager": "budgetopt_oracle_eager", "sdpa": "budgetopt_oracle_sdpa"}
_STATE_ATTR = "_budgetopt_oracle_state"


def _eager_of(module):
    """The eager attention function of ``module``'s own modeling file."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:  # pragma: no cover - every transformers decoder defines one
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _make_oracle_attention(base):
    def oracle_attention(module, query, key, value, attention_mask, *args, **kwargs):
        fn = _eager_of(module) if base == "eager" else AttentionInterface._global_mapping["sdpa"]
        output = fn(module, query, key, value, attention_mask, *args, **kwargs)
        state = getattr(module, _STATE_ATTR, None)
        if state is not None:
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
            state.add_row(module, query, key, attention_mask, scaling, kwargs.get("softcap"))
        return output

    return oracle_attention


def _register_oracle_attention():
    for base, name in _ORACLE_NAMES.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _make_oracle_attention(base))
            AttentionMaskInterface.register(name, eager_mask if base == "eager" else sdpa_mask)


class _OracleAttention:
    """Context manager: switch the model's attention to the oracle function, restore after."""

    def __init__(self, model, geometry, state):
        self.model, self.geometry, self.state = model, geometry, state
        self.saved = []

    def __enter__(self):
        _register_oracle_attention()
        configs = {id(self.model.config): self.model.config}
        for module in self.geometry.attention:
            configs.setdefault(id(module.config), module.config)
        for config in configs.values():
            current = config._attn_implementation_internal
            self.saved.append((config, current))
        for config, current in self.saved:
            name = _ORACLE_NAMES["eager" if current in (None, "eager") else "sdpa"]
            config._attn_implementation_internal = name
        for module in self.geometry.attention:
            setattr(module, _STATE_ATTR, self.state)
        return self

    def __exit__(self, *exc):
        for module in self.geometry.attention:
            if hasattr(module, _STATE_ATTR):
                delattr(module, _STATE_ATTR)
        for config, current in self.saved:
            config._attn_implementation_internal = current
        return False


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class ContextProfile:
    """Profiling arrays of one context and its questions.

    Attributes
    ----------
    scores : numpy.ndarray
        float32 ``(layers, kv_heads, T)``: the scorer's scores at prefill (higher = keep).
    value_norms : numpy.ndarray
        float32 ``(layers, kv_heads, T)``: the normalised value-output norms ``n`` reduced
        over each KV group's query heads with ``head_reduce``.
    oracles : tuple of numpy.ndarray
        One float32 ``(layers, kv_heads, T)`` array per question.
    new_tokens : tuple of int
        Tokens generated for each question (``max_new_tokens``, fewer when EOS came first).
    generated : tuple of numpy.ndarray
        The generated token ids of each question (int64).
    seconds : float
        Wall time of the whole call.
    """

    scores: np.ndarray
    value_norms: np.ndarray
    oracles: tuple
    new_tokens: tuple
    generated: tuple
    seconds: float


def _check_ids(ids, name, vocab):
    if not isinstance(ids, torch.Tensor):
        raise InvalidTypeError(f"`{name}` must be a torch.LongTensor of token ids; got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise InvalidTypeError(f"`{name}` must hold integer token ids; got dtype {ids.dtype}")
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise InvalidInputError(f"`{name}` must be shaped (T,) or (1, T); got {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise InvalidInputError(f"`{name}` is empty; it needs at least one token")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise InvalidInputError(
            f"`{name}` holds token id {low if low < 0 else high}, outside the vocabulary [0, {vocab})"
        )
    return ids.to(torch.int64)


def _choice(value, name, options):
    if value not in options:
        raise InvalidInputError(f"`{name}` must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def _eos_ids(model):
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = getattr(text_config(model.config), "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, numbers.Integral) else map(int, eos))


def profile_context(model, context_ids, questions, *, scorer, max_new_tokens=64,
                    head_reduce="max", step_reduce="max", sampling=False,
                    temperature=0.7, seed=0, stop_at_eos=True):
    """Scorer, value-norm and oracle arrays of one context and its questions.

    One context-only prefill gives the scorer's scores (``scorer``'s own ``score()``, called
    from kvpress's forward hook exactly as when the press compresses online, with the
    model's own attention implementation) and the value-output norms ``n`` (see
    :func:`value_output_norms`). Then, for each question, starting from that context cache,
    the question tokens are fed and ``max_new_tokens`` tokens generated. The **oracle** is

    .. math::

        o[l, h, j] = \\operatorname{R}_{s}\\; \\operatorname{R}_{q \\in G(h)}\\;
                     a_s[l, q, j] \\, n[l, q, j]

    where ``a_s[l, q, j]`` is the attention probability that query head ``q`` of layer ``l``
    gives context token ``j`` at generated step ``s`` (the softmax over the whole sequence:
    context, question and tokens generated so far; not renormalised to the context),
    ``R_q`` reduces the query heads of KV group ``G(h)`` (``head_reduce``) and ``R_s`` the
    steps (``step_reduce``).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a supported family (:func:`model_geometry`), in eval mode, with
        ``sdpa``, ``eager`` or flash attention.
    context_ids : torch.LongTensor
        ``(T,)`` or ``(1, T)`` context token ids.
    questions : sequence of torch.LongTensor
        Token ids appended after the context for each question (the question, plus an
        answer prefix such as a chat template's assistant header if wanted). May be empty:
        then only scores and norms are computed.
    scorer : str, kvpress.ScorerPress or callable
        See :func:`resolve_scorer`.
    max_new_tokens : int, default 64
        Generated tokens per question.
    head_reduce : {"max", "mean"}, default "max"
        Reduction over the query heads of a KV group (published LU-KV: max).
    step_reduce : {"max", "sum"}, default "max"
        Reduction over generated steps (published LU-KV: running max).
    sampling : bool, default False
        False: greedy decoding (reproducible). True: sample from ``softmax(logits /
        temperature)`` (no top-k/top-p) with a ``torch.Generator`` seeded with ``seed``,
        shared by the questions in order.
    temperature : float, default 0.7
        Sampling temperature (published LU-KV setting); used only when ``sampling``.
    seed : int, default 0
    stop_at_eos : bool, default True
        Stop a question's generation once the model emits one of its EOS tokens
        (``generation_config.eos_token_id``), as ``generate`` does; that step counts.

    Returns
    -------
    ContextProfile

    Raises
    ------
    InvalidInputError, InvalidTypeError
        Unsupported model, unknown scorer, empty or non-integer ids, ids outside the
        vocabulary, a context plus question plus ``max_new_tokens`` longer than the model's
        ``max_position_embeddings``, a scorer that cannot score this context (for example
        SnapKV on a context not longer than its window), bad option values.

    Notes
    -----
    **Generated steps.** The steps are the query rows that produce each new token: the last
    question position (it produces the first token), then each fed-back token except the
    last. That is ``new_tokens`` rows per question, the same forward passes ``generate``
    runs. The question rows before the last do not count.

    **Cache reuse.** A question continues from the context's cache instead of re-feeding
    context + question: causal attention makes the two mathematically identical (the cache
    holds exactly the keys and values a joint forward would compute for the context). The
    cache is cropped back to the context after each question (or copied, for caches with
    sliding-window layers).

    **Memory.** No ``(heads, T, T)`` matrix is formed by the oracle: for the question and
    decode passes the model runs a registered attention function (the model's own eager or
    sdpa kernel for the output) that also computes the one row it needs,
    ``softmax(q k^T * scaling + mask)`` for the last query, and folds it at once into a
    ``(layers, kv_heads, T)`` float32 accumulator. Extra memory is ``O(layers * heads * T)``
    (``n`` and the accumulator) plus one row per layer at a time. The prefill computes only
    the last position's logits. The model's attention implementation is restored on exit,
    even on error. The prefill's memory is the scorer's (SnapKV under sdpa forms a
    ``(heads, window, T)`` block per layer; ``observed_attention`` needs eager attention and
    its full matrices).

    Cost: one context prefill, then per question one pass over the question and
    ``new_tokens - 1`` single-token decode steps, each with one extra attention row per
    layer (``heads * T`` multiply-adds per head dimension).

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> p = profile_context(model, torch.arange(20), [torch.tensor([5, 6, 7])],
    ...                     scorer="knorm", max_new_tokens=4, stop_at_eos=False)
    >>> p.scores.shape, p.oracles[0].shape, p.new_tokens
    ((2, 2, 20), (2, 2, 20), (4,))
    >>> bool((p.oracles[0] >= 0).all())
    True
    """
    start = time.perf_counter()
    geometry = model_geometry(model)
    if model.training:
        raise InvalidInputError(
            "`model` is in training mode (dropout would perturb the oracle); call model.eval() first"
        )
    press = resolve_scorer(scorer)
    text = text_config(model.config)
    vocab = getattr(text, "vocab_size", None)
    context = _check_ids(context_ids, "context_ids", vocab)
    if isinstance(questions, torch.Tensor) or isinstance(questions, (str, bytes)):
        raise InvalidTypeError("`questions` must be a sequence of token-id tensors, one per question")
    questions = [_check_ids(q, f"questions[{i}]", vocab) for i, q in enumerate(questions)]
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise InvalidTypeError(f"`max_new_tokens` must be an int; got {type(max_new_tokens).__name__}")
    if max_new_tokens < 1:
        raise InvalidInputError(f"`max_new_tokens` must be >= 1; got {max_new_tokens}")
    max_new_tokens = int(max_new_tokens)
    _choice(head_reduce, "head_reduce", _HEAD_REDUCE)
    _choice(step_reduce, "step_reduce", _STEP_REDUCE)
    if sampling:
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise InvalidInputError(f"`temperature` must be a number > 0; got {temperature!r}")
    limit = getattr(text, "max_position_embeddings", None)
    length = int(context.numel())
    for i, q in enumerate(questions):
        total = length + int(q.numel()) + max_new_tokens
        if limit is not None and total > limit:
            raise InvalidInputError(
                f"`questions[{i}]`: context ({length}) + question ({q.numel()}) + max_new_tokens "
                f"({max_new_tokens}) = {total} tokens exceeds the model's max_position_embeddings ({limit})"
            )
    if limit is not None and length > limit:
        raise InvalidInputError(
            f"`context_ids` has {length} tokens, more than the model's max_position_embeddings ({limit})"
        )

    device = next(model.parameters()).device
    eos = _eos_ids(model) if stop_at_eos else frozenset()
    capture = _CapturePress(press=press)
    with torch.inference_mode():
        # 1. Context-only prefill: scorer scores from kvpress's hook, cache for the questions.
        hooks = []
        capture.post_init_from_model(model)
        lm = language_model(model)
        try:
            for module in geometry.attention:
                # kvpress's presses read RoPE from module.rotary_emb (BasePress.__call__ sets it).
                module.rotary_emb = lm.rotary_emb
                hooks.append(module.register_forward_hook(capture.forward_hook, with_kwargs=True))
            out = model(input_ids=context.view(1, -1).to(device), use_cache=True, logits_to_keep=1)
        finally:
            for hook in hooks:
                hook.remove()
        cache = out.past_key_values
        del out
        scores = capture.stacked(geometry.layers, length)
        norms = value_output_norms(geometry, cache, length=length)
        norms_kv = norms.view(geometry.layers, geometry.kv_heads, geometry.group, length)
        norms_kv = norms_kv.amax(dim=2) if head_reduce == "max" else norms_kv.mean(dim=2)

        # 2. Questions: continue from the context cache, one oracle row per generated step.
        croppable = all(type(layer) is DynamicLayer for layer in cache.layers)
        state = _OracleState(norms, length, geometry.group, head_reduce, step_reduce)
        generator = None
        if sampling:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        oracles, counts, generated = [], [], []
        with _OracleAttention(model, geometry, state):
            for index, question in enumerate(questions):
                qcache = cache if (croppable or index == len(questions) - 1) else copy.deepcopy(cache)
                state.reset(geometry.kv_heads)
                tokens = []
                ids = question.view(1, -1).to(device)
                state.seq_len = length + ids.shape[1]
                try:
                    while True:
                        out = model(input_ids=ids, past_key_values=qcache, use_cache=True, logits_to_keep=1)
                        logits = out.logits[0, -1].float()
                        if sampling:
                            scaled = logits / float(temperature)
                            if not bool(torch.isfinite(scaled).all()):  # a tiny temperature overflows:
                                # its limit is greedy (float64: the temperature itself may be below float32's range)
                                scaled = (logits.double() - logits.double().max()) / float(temperature)
                            probs = torch.softmax(scaled, dim=-1)
                            token = int(torch.multinomial(probs, 1, generator=generator))
                        else:
                            token = int(torch.argmax(logits))
                        tokens.append(token)
                        if len(tokens) == max_new_tokens or token in eos:
                            break
                        ids = torch.tensor([[token]], device=device)
                        state.seq_len += 1
                finally:
                    if croppable:
                        cache.crop(length)
                oracles.append(state.acc.cpu().numpy())
                counts.append(len(tokens))
                generated.append(np.asarray(tokens, dtype=np.int64))
    return ContextProfile(
        scores=scores.cpu().numpy().astype(np.float32, copy=False),
        value_norms=norms_kv.cpu().numpy(),
        oracles=tuple(oracles),
        new_tokens=tuple(counts),
        generated=tuple(generated),
        seconds=time.perf_counter() - start,
    )
