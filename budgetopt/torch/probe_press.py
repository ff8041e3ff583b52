"""``ProbeBudgetPress``: per-request head budgets from the request's own probe oracles, online.

After the context's prefill, the allocator's probes (generic queries such as "Summarize the
text above.") are decoded over the uncompressed context as one batch, their attention folded
into probe oracles by the profiler's own oracle code (:mod:`budgetopt.torch.profiling.oracle`),
and :meth:`budgetopt.RequestAllocator.allocate` turns the request's scores and probe oracles
into per-KV-head budgets, applied by kvpress's head-wise masking. Each head keeps its best
scored tokens, or (``rank="probes"``) those its probes attended to most.

Importing this module imports kvpress, which patches transformers' attention functions
(kvpress's own import-time behaviour, needed for head-wise masking).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from .._checks import check_int
from ..calibration import DEFAULT_PROBE_TOKENS, DEFAULT_PROBES
from ..errors import InvalidInputError, InvalidTypeError
from .geometry import language_model, model_geometry, text_config
from .profiling.context import _check_ids, _choice, _eos_ids, _HEAD_REDUCE, _STEP_REDUCE
from .profiling.norms import value_output_norms
from .profiling.oracle import OracleAttention, OracleState
from .request_press import RequestBudgetPress

from transformers import DynamicCache  # noqa: E402  (after kvpress's patching)
from transformers.cache_utils import DynamicLayer  # noqa: E402

__all__ = ["ProbeBudgetPress", "encode_probes", "probe_oracles"]

#: What ``ProbeBudgetPress(rank=...)`` ranks each head's tokens by.
RANKS = ("scores", "probes")


def encode_probes(tokenizer, probes=DEFAULT_PROBES):
    """Token ids of each probe, as ``budgetopt profile`` encodes a calibration line's probes.

    With a chat template, a probe is its text plus the rest of the template after the user's
    content (end of turn and assistant header); without one, the text plus ``"\\n"``: what
    kvpress's pipeline appends to a question, with no answer prefix.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
    probes : sequence of str, default :data:`budgetopt.calibration.DEFAULT_PROBES`

    Returns
    -------
    list of torch.LongTensor
        One ``(n_i,)`` tensor per probe.

    Raises
    ------
    InvalidTypeError, InvalidInputError
        ``probes`` not a non-empty sequence of non-empty strings, or a probe that encodes to
        no tokens.
    """
    from .profiling.run import _template_parts

    if isinstance(probes, (str, bytes)) or not isinstance(probes, (list, tuple)) or not probes:
        raise InvalidTypeError(f"`probes` must be a non-empty list of strings; got {type(probes).__name__}")
    _, suffix = _template_parts(tokenizer, "")
    out = []
    for i, text in enumerate(probes):
        if not isinstance(text, str) or not text:
            raise InvalidInputError(f"`probes[{i}]` must be a non-empty string; got {text!r}")
        ids = tokenizer.encode(text + suffix, add_special_tokens=False)
        if not ids:
            raise InvalidInputError(f"`probes[{i}]` encodes to no tokens")
        out.append(torch.tensor(ids, dtype=torch.int64))
    return out


def _check_probe_ids(probe_ids, vocab):
    if isinstance(probe_ids, torch.Tensor) or not isinstance(probe_ids, (list, tuple)) or not probe_ids:
        raise InvalidTypeError("`probe_ids` must be a non-empty list of token-id tensors, one per probe "
                               "(see encode_probes)")
    return [_check_ids(p, f"probe_ids[{i}]", vocab) for i, p in enumerate(probe_ids)]


def probe_oracles(model, cache, probe_ids, *, probe_tokens=DEFAULT_PROBE_TOKENS, head_reduce="max",
                  step_reduce="max", stop_at_eos=True):
    """Oracles ``(K, layers, kv_heads, T)`` of K probes decoded as one batch over a pre-filled context.

    Each probe is fed after the context held in ``cache`` and ``probe_tokens`` tokens are
    decoded greedily, all probes together: the batch rows share a copy of the context's keys
    and values, each probe right-aligned behind padding that the attention mask hides, with
    the positions it would have alone. The oracle is the profiler's
    (:func:`~budgetopt.torch.profiling.context.profile_context`): each step's attention over
    the context times the value-output norms, reduced over each KV group's query heads
    (``head_reduce``) and over the steps (``step_reduce``); a probe stops at its EOS token
    (with ``stop_at_eos``), as there. ``cache`` is not modified.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The causal LM that filled ``cache``, in eval mode.
    cache : transformers.DynamicCache
        The context's uncompressed cache, batch 1, every layer a full (not sliding) layer.
    probe_ids : sequence of torch.LongTensor
        Each probe's token ids (:func:`encode_probes`).
    probe_tokens : int, default 32
        Tokens each probe decodes (``"probe_tokens"`` of the calibration file).
    head_reduce, step_reduce, stop_at_eos
        As in :func:`~budgetopt.torch.profiling.context.profile_context` (and ``budgetopt
        profile``); keep the calibration's values.

    Returns
    -------
    numpy.ndarray
        float32 ``(K, layers, kv_heads, T)``.

    Raises
    ------
    InvalidTypeError, InvalidInputError
        Bad ids or options, a cache of another batch size, a sliding-window cache, or a
        context plus probe plus ``probe_tokens`` longer than ``max_position_embeddings``.

    Notes
    -----
    Cost: one forward over the K padded probes (``K * max_i n_i`` query rows against ``T``
    keys) and ``probe_tokens - 1`` decode steps of K rows, each with one extra attention row
    per layer for the oracle; memory: K copies of the context's keys and values (freed on
    return) plus ``O(K * layers * heads * T)`` floats.

    Examples
    --------
    >>> import torch
    >>> from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    >>> _ = torch.manual_seed(0)
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> cache = DynamicCache()
    >>> with torch.no_grad():
    ...     _ = model.model(input_ids=torch.arange(1, 21)[None], past_key_values=cache)
    >>> o = probe_oracles(model, cache, [torch.tensor([5, 6, 7]), torch.tensor([9])], probe_tokens=4)
    >>> o.shape, cache.get_seq_length()
    ((2, 2, 2, 20), 20)
    """
    geometry = model_geometry(model)
    text = text_config(model.config)
    vocab = getattr(text, "vocab_size", None)
    probes = _check_probe_ids(probe_ids, vocab)
    probe_tokens = check_int(probe_tokens, "probe_tokens", minimum=1)
    _choice(head_reduce, "head_reduce", _HEAD_REDUCE)
    _choice(step_reduce, "step_reduce", _STEP_REDUCE)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        raise InvalidInputError("`cache` must be a DynamicCache of full layers (no sliding-window layers)")
    first = cache.layers[0].keys
    if first.shape[0] != 1:
        raise InvalidInputError(f"`cache` must hold one request (batch 1); got batch {first.shape[0]}")
    length = int(first.shape[2])
    limit = getattr(text, "max_position_embeddings", None)
    for i, p in enumerate(probes):
        if limit is not None and length + p.numel() + probe_tokens > limit:
            raise InvalidInputError(
                f"`probe_ids[{i}]`: context ({length}) + probe ({p.numel()}) + probe_tokens ({probe_tokens}) "
                f"exceeds the model's max_position_embeddings ({limit})")
    device = first.device
    k, width = len(probes), max(int(p.numel()) for p in probes)
    eos = _eos_ids(model) if stop_at_eos else frozenset()
    ids = torch.zeros((k, width), dtype=torch.int64)
    mask = torch.ones((k, length + width), dtype=torch.int64)
    positions = torch.zeros((k, width), dtype=torch.int64)
    for i, p in enumerate(probes):
        n = int(p.numel())
        ids[i, width - n:] = p
        ids[i, :width - n] = p[0]  # hidden by the mask
        mask[i, length:length + width - n] = 0
        positions[i] = torch.arange(length + n - width, length + n).clamp(min=length)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    with torch.inference_mode():
        batch = DynamicCache()
        for layer in range(len(cache.layers)):
            keys, values = cache.layers[layer].keys, cache.layers[layer].values
            batch.update(keys.expand(k, -1, -1, -1).contiguous(), values.expand(k, -1, -1, -1).contiguous(), layer)
        norms = value_output_norms(geometry, cache, length=length)
        state = OracleState(norms, length, geometry.group, head_reduce, step_reduce)
        state.reset(geometry.kv_heads, batch=k)
        active = torch.ones(k, dtype=torch.bool, device=device)
        state.seq_len = length + width
        with OracleAttention(model, geometry, state):
            for step in range(probe_tokens):
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=batch,
                            use_cache=True, logits_to_keep=1)
                tokens = out.logits[:, -1].float().argmax(dim=-1)
                if eos:
                    active &= ~torch.isin(tokens, torch.tensor(sorted(eos), device=device))
                if step == probe_tokens - 1 or not bool(active.any()):
                    break
                state.active = active.clone()
                ids = tokens.view(k, 1)
                mask = torch.cat([mask, torch.ones((k, 1), dtype=mask.dtype, device=device)], dim=1)
                positions = positions[:, -1:] + 1
                state.seq_len += 1
        del batch
    return state.acc.cpu().numpy()


def probe_rank_keys(oracles):
    """Per-token keys ``(L, H, T)`` that ``rank="probes"`` ranks each head's tokens by.

    Each probe's oracle is divided by its total mass (all layers, heads and tokens; a probe
    with no mass counts as 1) and the K probes are summed. Keeping a head's tokens in the
    order of these keys keeps, at every budget, the largest mean over the probes of the
    share of each probe's mass kept: the quantity the allocator's probe curves measure
    (:func:`budgetopt.request_probes.probe_curve`). float64; O(K L H T).
    """
    arr = np.asarray(oracles, dtype=np.float64)
    mass = arr.reshape(arr.shape[0], -1).sum(axis=1)
    mass = np.where(mass > 0, mass, 1.0)
    return (arr / mass[:, None, None, None]).sum(axis=0)


class ProbeBudgetPress(RequestBudgetPress):
    """Head budgets from the request's scores and its own probe oracles, computed online.

    For each request: (1) the context is pre-filled uncompressed, the wrapped ``press``
    scoring every layer; (2) after the last layer, the allocator's probes are decoded
    greedily as one batch over a copy of the context's cache (:func:`probe_oracles`), the
    profiler's oracle recording their attention; (3) the copy is dropped, so the context's
    cache is exactly the prefill's; (4) :meth:`budgetopt.RequestAllocator.allocate` splits
    the budget over all layers and KV heads from the scores and the probe oracles; (5) each
    head hides all but its budget (its ``sink`` first, ``window`` last and best scored
    tokens) with kvpress's head-wise masking, as :class:`RequestBudgetPress` does with
    ``layerwise=True``. With ``rank="probes"`` step (5) ranks each head's tokens by its
    probe oracles instead of the scores (tokens ranked by the attention of generic queries,
    as KVzip ranks them); the budgets are the same.

    **Cost.** Per request, on top of the prefill: ``probe_tokens`` forward passes of K rows
    (K probes) against the ``T``-token context, the first over the probes' tokens, plus one
    extra attention row per layer and step for the oracle, and K copies of the context's
    keys and values while the probes decode (the cache itself is masked, not shrunk).
    ``benchmarks/bench_probe_press.py`` measures the time against the prefill.

    Parameters
    ----------
    press : kvpress.ScorerPress
        The scorer the allocator was fitted with.
    allocator : RequestAllocator
        Fitted with ``probe_oracles`` (and without value norms).
    probe_ids : sequence of torch.LongTensor
        The calibration's probes as token ids (:func:`encode_probes` with the tokenizer).
    probe_tokens : int, default 32
        Tokens each probe decodes: the calibration's ``"probe_tokens"``.
    compression_ratio : float, default 0.0
        Fraction of the whole cache removed (``1 - budget``); 0 compresses nothing and
        decodes no probes.
    head_reduce, step_reduce, stop_at_eos
        The oracle's options, as given to ``budgetopt profile`` (defaults: its defaults).
    rank : {"scores", "probes"}, default "scores"
        Which tokens a head keeps within its budget (besides its sink and window): the best
        scored by ``press`` (``"scores"``), or those the request's probes attended to most
        (``"probes"``: each probe's oracle as a share of its total mass, summed over the
        probes, :func:`probe_rank_keys`). The scores are computed either way: the allocator
        needs them for the budgets.

    Raises
    ------
    InvalidTypeError, InvalidInputError
        Bad arguments, an allocator fitted without probes or with value norms, and (when
        applied) a model whose layers or KV heads differ from the allocator's, eager
        attention (head-wise masking needs sdpa or flash attention), or a batch of more than
        one request.

    Notes
    -----
    Works wherever kvpress's presses work: ``with press(model): model.generate(ids)`` (the
    prompt is the context) and ``KVPressTextGenerationPipeline`` (the context only; the
    question is fed after). The probes run from a forward hook on the decoder, after the
    prefill forward has filled every layer's cache. A prompt of at most ``sink + window``
    tokens is kept whole (no probes run); at high compression each head keeps at least its
    floor, as in :class:`RequestBudgetPress`. Budgets are a deterministic function of the
    scores and oracles; the oracles equal ``budgetopt profile``'s up to float rounding
    (padding and batching change the order of a few sums).

    With either ``rank``, each head keeps exactly its budget (which is never below its
    ``sink + window`` protected tokens), and equal keys go to the lower position
    (:func:`budgetopt.torch.keep_mask`).
    ``rank="probes"`` mixes no scores into the ranking: scorers' scales differ (KnormPress's
    are negative norms), so a sum of the two would need a weight of its own. Measured
    downstream against ``rank="scores"``: ``docs/request.md``, "Probe queries".

    Examples
    --------
    >>> import numpy as np, budgetopt, torch
    >>> from kvpress import KnormPress
    >>> rng = np.random.default_rng(0)
    >>> s = [rng.random((2, 2, 50)) for _ in range(3)]
    >>> ra = budgetopt.RequestAllocator.fit(s, s, sink=1, window=2, probe_oracles=[[x] for x in s])
    >>> p = ProbeBudgetPress(KnormPress(), ra, [torch.tensor([5, 6])], probe_tokens=4, compression_ratio=0.5)
    >>> p.compression_ratio, p.probe_tokens, p.rank
    (0.5, 4, 'scores')
    >>> ProbeBudgetPress(KnormPress(), ra, [torch.tensor([5, 6])], rank="probes").rank
    'probes'
    """

    def __init__(self, press, allocator, probe_ids, *, probe_tokens=DEFAULT_PROBE_TOKENS, compression_ratio=0.0,
                 head_reduce="max", step_reduce="max", stop_at_eos=True, rank="scores"):
        super().__init__(press, allocator, compression_ratio=compression_ratio, layerwise=True)
        if allocator.probe_beta is None:
            raise InvalidInputError("`allocator` was fitted without probes; fit it with `probe_oracles` "
                                    "(or use RequestBudgetPress)")
        self.probe_ids = _check_probe_ids(probe_ids, None)
        self.probe_tokens = check_int(probe_tokens, "probe_tokens", minimum=1)
        self.head_reduce = _choice(head_reduce, "head_reduce", _HEAD_REDUCE)
        self.step_reduce = _choice(step_reduce, "step_reduce", _STEP_REDUCE)
        if not isinstance(stop_at_eos, (bool, np.bool_)):
            raise InvalidTypeError(f"`stop_at_eos` must be True or False; got {stop_at_eos!r}")
        self.stop_at_eos = bool(stop_at_eos)
        if not isinstance(rank, str):
            raise InvalidTypeError(f"`rank` must be one of {', '.join(map(repr, RANKS))}; got {rank!r}")
        self.rank = _choice(rank, "rank", RANKS)
        self.last_probe_oracles = None
        self._model = None

    def post_init_from_model(self, model):
        super().post_init_from_model(model)
        if getattr(model.config, "_attn_implementation", None) == "eager":
            raise InvalidInputError(
                "ProbeBudgetPress needs head-wise masking, which kvpress supports for sdpa and flash attention, "
                "not for attn_implementation='eager'")
        vocab = getattr(text_config(model.config), "vocab_size", None)
        _check_probe_ids(self.probe_ids, vocab)
        self._model = model
        self.last_probe_oracles = None

    @contextmanager
    def __call__(self, model):
        with super().__call__(model):
            handle = language_model(model).register_forward_hook(self._after_prefill, with_kwargs=True)
            try:
                yield
            finally:
                handle.remove()
                self._pending = {}

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self._ratio <= 0 or keys.shape[2] <= self.allocator.sink + self.allocator.window:
            return keys, values
        if keys.shape[0] != 1:
            raise InvalidInputError(
                f"ProbeBudgetPress compresses one request at a time (batch 1); got batch {keys.shape[0]}")
        try:
            scores = self.press.score(module, hidden_states, keys, values, attentions, kwargs)
        except AssertionError as exc:  # kvpress checks its own preconditions with assert
            raise InvalidInputError(f"`press` {type(self.press).__name__} cannot score this context of "
                                    f"{keys.shape[2]} tokens at layer {module.layer_idx}: {exc}") from exc
        self._pending[int(module.layer_idx)] = (module, scores)
        return keys, values

    def _after_prefill(self, module, args, kwargs, output):
        ra = self.allocator
        if len(self._pending) != ra.layers:  # not a prefill this press compresses (or a probe step)
            return output
        pending, self._pending = self._pending, {}
        cache = getattr(output, "past_key_values", None)
        if cache is None:
            cache = kwargs.get("past_key_values")
        oracles = probe_oracles(self._model, cache, self.probe_ids, probe_tokens=self.probe_tokens,
                                head_reduce=self.head_reduce, step_reduce=self.step_reduce,
                                stop_at_eos=self.stop_at_eos)
        self.last_probe_oracles = oracles
        scores = np.stack([pending[i][1][0].detach().to("cpu", torch.float32).numpy() for i in range(ra.layers)])
        length = scores.shape[-1]
        total = max(self.total_budget(length), ra.min_total_budget(length))
        budgets = ra.allocate(scores, total, probe_oracles=list(oracles)).budgets
        keys = probe_rank_keys(oracles) if self.rank == "probes" else None
        for i in range(ra.layers):
            mod, sc = pending[i]
            if keys is not None:
                sc = torch.from_numpy(keys[None, i]).to(sc.device)
            self._hide(mod, sc, budgets[None, i].copy())
        return output

    def __repr__(self):
        return (f"ProbeBudgetPress(press={self.press!r}, allocator={self.allocator!r}, probes={len(self.probe_ids)}, "
                f"probe_tokens={self.probe_tokens}, compression_ratio={self._ratio!r}, rank={self.rank!r})")
