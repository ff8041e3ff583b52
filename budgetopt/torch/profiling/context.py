"""The profiling engine: one context and its questions into scorer, value-norm and oracle arrays.

For one calibration context and its questions, :func:`profile_context` returns, per layer and
KV head and context token,

* the **scores** a kvpress scorer gives at prefill (:mod:`.scorers`, recorded by
  :mod:`.capture`);
* the **value-output norms** ``n[l, q, j] = ||W_O[l][:, q] v[l, g(q), j]||`` of every query
  head ``q`` (``g(q)`` its KV head), normalised to sum to 1 over the layer's query heads and
  context tokens (:mod:`.norms`);
* one **oracle** per question: while the model answers, the attention each generated step pays
  to each context token, times ``n``, reduced over the query heads of each KV group and over
  the steps (:mod:`.oracle`).

Importing this module imports kvpress (which patches transformers' attention functions at
import, its own behaviour).
"""

from __future__ import annotations

import copy
import numbers
import time
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InvalidInputError, InvalidTypeError
from ..geometry import language_model, model_geometry, text_config
from .capture import CapturePress
from .norms import value_output_norms
from .oracle import OracleAttention, OracleState
from .scorers import resolve_scorer

from transformers.cache_utils import DynamicLayer  # noqa: E402  (after kvpress's patching)

__all__ = ["ContextProfile", "profile_context"]

_HEAD_REDUCE = ("max", "mean")
_STEP_REDUCE = ("max", "sum")


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
    capture = CapturePress(press=press)
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
        state = OracleState(norms, length, geometry.group, head_reduce, step_reduce)
        generator = None
        if sampling:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        oracles, counts, generated = [], [], []
        with OracleAttention(model, geometry, state):
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
                oracles.append(state.acc[0].cpu().numpy())
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
