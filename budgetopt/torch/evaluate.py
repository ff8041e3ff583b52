"""Answers under compression, side by side: every method against one shared full-cache reference.

For each example and setting, :func:`evaluate_example`

1. pre-fills the context once with the full cache, keeping each attention layer's inputs
   (what kvpress's forward hook receives) and its uncompressed keys and values;
2. decodes the full-cache answer greedily, as kvpress's ``KVPressTextGenerationPipeline``
   does, keeping the next-token distribution of every step: the **reference**;
3. for each method and compression ratio, compresses a copy of that cache by calling the
   press's own forward hook on each layer's recorded inputs (a press compresses a layer
   after the layer has computed its output, so this is the cache a pre-fill under the press
   would leave), decodes its answer greedily with the pipeline's calls, and scores the
   reference answer under the compressed cache in one teacher-forced pass (KL to the
   reference's distributions, negative log-likelihood of the reference answer).

Presses whose hooks do more than compress at pre-filling (decoding presses, key
re-rotation, presses with their own context manager) are run the pipeline's way, with a
real pre-fill under the press: :func:`replayable` says which path a press takes. Either way
the answer is the pipeline's, which ``tests/torch/test_evaluate.py`` checks for every
press. Two settings: ``"question"`` (the question follows the compressed context, the
pipeline's default) and ``"query_aware"`` (the question is part of the compressed context).

Importing this module imports kvpress (which patches transformers' attention functions).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._io import check_output_dir, write_atomic
from ..errors import CurvesFileError, InvalidInputError, InvalidTypeError
from ..evaluation import read_json_file, read_record
from ..tasks import Example, score
from ._kvpress import BasePress

__all__ = ["Method", "SETTINGS", "standard_methods", "replayable", "encode_example", "reference",
           "run_method", "evaluate_example", "evaluate", "METHOD_NAMES"]

#: Settings: the question after the compressed context, or inside it.
SETTINGS = ("question", "query_aware")

#: ``format`` of the files :func:`evaluate` writes.
FORMAT = "budgetopt-evaluate/1"

#: Method names :func:`standard_methods` builds besides kvpress scorers (``snapkv``, ``knorm``, ...).
METHOD_NAMES = ("full", "adakv", "uniform", "pyramidkv", "headkv", "duoattention", "lukv", "budgetpress",
                "allocate", "request", "probes", "probes_rank")
_NEEDS_RUN = ("headkv", "duoattention", "lukv", "budgetpress", "allocate", "request", "probes", "probes_rank")
_PROBE_METHODS = ("probes", "probes_rank")
#: Tokens per head of the grid the static baselines' counts are computed on; each context gets
#: the same fractions of its own length (``BudgetPress``'s ``head_capacity``).
BASELINE_CAPACITY = 1024


@dataclass(frozen=True)
class Method:
    """A named way to compress: ``make(compression_ratio)`` returns a kvpress press, or
    ``None`` for the full cache."""

    name: str
    make: Callable = field(compare=False)
    #: What the method fitted, for the report (``"probes"`` and ``"probes_rank"``: the probe
    #: tokens and the allocator's ``info["probes"]``, its gain and cross-validation); or None.
    fitted: dict | None = field(default=None, compare=False)


# -- methods -------------------------------------------------------------------------------------
def standard_methods(names, *, scorer="snapkv", run=None, head_shape=None, sink=4, window=1, probe_ids=None,
                     probe_gain=None):
    """:class:`Method` objects from names.

    Parameters
    ----------
    names : sequence of str
        * ``"full"``: the full cache;
        * a kvpress scorer name (``snapkv``, ``knorm``, ``expected_attention``, ..., every name
          of :data:`budgetopt.torch.profiler.SCORER_NAMES`): that press, every head keeping the
          same share (kvpress's default, uniform);
        * ``"adakv"``: kvpress's ``AdaKVPress`` around ``scorer``;
        * ``"uniform"``, ``"pyramidkv"``: the budget rules of :mod:`budgetopt.allocators`
          (uniform with sink and window kept; PyramidKV's layer schedule) through
          ``BudgetPress`` on ``scorer`` (needs ``head_shape``). kvpress's own
          ``PyramidKVPress`` leaves layers of different lengths, which transformers 5.2's
          attention mask cannot decode (its pipeline fails the same way);
        * with a calibration ``run``: ``"headkv"``, ``"duoattention"`` (the baselines' static
          rules on the run's head importance, through ``BudgetPress``), ``"lukv"`` (kvpress's
          ``LUKVPress`` reading the run's LU-KV table), ``"budgetpress"`` (``BudgetPress`` with
          that table), ``"allocate"`` (``BudgetPress`` with ``budgetopt.allocate`` on the run's
          mean curves, one allocation per ratio), ``"request"`` (``RequestBudgetPress``
          with a ``RequestAllocator`` fitted on the run) and ``"probes"``
          (``ProbeBudgetPress`` with a ``RequestAllocator`` fitted on the run's pairs and
          its probe oracles, decoding ``probe_ids`` for the run's ``probe_tokens`` steps
          over each request's context; the run must have been profiled with probes and
          carry them as ``run.probes``), ``"probes_rank"`` (the same press with
          ``rank="probes"``: the same budgets, each head keeping the tokens the request's
          probes attended to most instead of the best scored).
    scorer : str, default "snapkv"
        The scorer of every method that wraps one; with a run it must be the run's scorer.
    run : budgetopt.ProfileRun, optional
        Calibration pairs (``budgetopt profile``); its contexts must not be evaluated on.
    head_shape : (layers, kv_heads), optional
        The model's; needed by ``uniform`` and ``pyramidkv`` without a run.
    sink, window : int, default 4 and 1
        Tokens every head keeps in the budget rules (the run's own values when a run is given).
    probe_ids : sequence of torch.LongTensor, optional
        For ``"probes"`` and ``"probes_rank"``: the run's probes as token ids
        (:func:`budgetopt.torch.encode_probes` of the calibration file's probe texts).
    probe_gain : float, optional
        For ``"probes"`` and ``"probes_rank"``: the allocator's gain on its probe coefficients
        (``RequestAllocator.fit``'s ``probe_gain``); default: chosen by its cross-validation.

    Returns
    -------
    list of Method

    Raises
    ------
    InvalidTypeError, InvalidInputError
        An unknown or repeated name; a method that needs a run without one, or a run of
        another scorer; ``"probes"`` or ``"probes_rank"`` with a run profiled without probes (add ``"probes"``
        to the calibration lines and profile again), a run whose probes are not attached
        (``run.probes``, :func:`budgetopt.runs.load_probe_run`) or whose contexts decoded
        different ``probe_tokens``, or without ``probe_ids``.

    Notes
    -----
    The ``"probes"`` and ``"probes_rank"`` presses decode the probes during the pre-fill, so
    :func:`run_method` pre-fills under them (:func:`replayable` is False for them). Both fit
    the same allocator (once, when both are named).
    """
    from kvpress import AdaKVPress, LUKVPress

    from .. import allocators
    from ..rounding import tokens_from_fraction
    from .profiler import SCORER_NAMES, resolve_scorer

    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InvalidTypeError(f"`names` must be a list of method names; got {names!r}")
    known = ", ".join(METHOD_NAMES + tuple(SCORER_NAMES))
    for name in names:
        if name not in METHOD_NAMES and name.replace("-", "_").lower() not in SCORER_NAMES:
            raise InvalidInputError(f"unknown method {name!r}; methods: {known}")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"a method is named twice in {list(names)}")
    need = [n for n in names if n in _NEEDS_RUN]
    if need and run is None:
        raise InvalidInputError(
            f"method(s) {', '.join(need)} need calibration: a profile run (budgetopt profile) on other contexts")
    resolve_scorer(scorer)
    scored = lambda: resolve_scorer(scorer)  # a fresh scorer press per method and ratio
    if run is not None:
        sink, window = int(run.meta["sink"]), int(run.meta["window"])
        head_shape = run.head_shape
        if run.meta.get("scorer", {}).get("name") not in (None, scorer):
            raise InvalidInputError(
                f"the profile run was made with scorer {run.meta['scorer']['name']!r}, not {scorer!r}; "
                "evaluate with its scorer")
    if any(n in ("uniform", "pyramidkv") for n in names) and head_shape is None:
        raise InvalidInputError("methods uniform and pyramidkv need `head_shape` (the model's layers, kv_heads)")
    built = {}

    def static(rule):
        from .press import BudgetPress

        layers, heads = head_shape
        protected = sink + window
        cap = BASELINE_CAPACITY

        def make(c):
            total = max(tokens_from_fraction(1.0 - c, layers * heads * cap), layers * heads * protected)
            if rule == "uniform":
                counts = allocators.uniform_counts(layers, heads, cap, total, protected)
            elif rule == "pyramidkv":
                counts = allocators.pyramidkv_counts(layers, heads, cap, total, protected)
            else:
                counts = getattr(allocators, f"{rule}_counts")(importance(), cap, total, protected)
            return BudgetPress(scored(), counts, head_capacity=cap, sink=sink, window=window)

        return make

    def importance():
        if "importance" not in built:
            from ..profile import curves_from_scores

            utility = [curves_from_scores(o, s, sink=sink, window=window).utility
                       for o, s in zip(run.oracles, run.scores)]
            built["importance"] = np.mean([u[..., -1] - u[..., 0] for u in utility], axis=0)
        return built["importance"]

    out = []
    for name in names:
        if name == "full":
            make = lambda c: None
        elif name == "adakv":
            make = lambda c: AdaKVPress(_ratio(scored(), c))
        elif name in ("uniform", "pyramidkv", "headkv", "duoattention"):
            make = static(name)
        elif name in ("lukv", "budgetpress"):
            if "table" not in built:
                from ..runs import lukv_table_from_run

                built["table"] = lukv_table_from_run(run, progress=None)[0]
            table = built["table"]
            if name == "lukv":
                def make(c, table=table):
                    press = LUKVPress(press=scored(), compression_ratio=c, sink=sink, window=window)
                    press._budget_curves = table  # kvpress's documented table; nothing downloaded
                    return press
            else:
                from .press import BudgetPress

                make = lambda c, table=table: BudgetPress(scored(), table, compression_ratio=c, sink=sink,
                                                          window=window)
        elif name == "allocate":
            import budgetopt
            from ..runs import curves_from_run
            from .press import BudgetPress

            curves = _mean_curves(run, sink, window, curves_from_run)
            capacity = int(curves.grid[-1])
            floor = int(curves.grid[0]) * int(np.prod(curves.head_shape))

            def make(c, curves=curves, capacity=capacity, floor=floor):
                total = max(budgetopt.tokens_from_fraction(1.0 - c, curves.capacity), floor)
                return BudgetPress(scored(), budgetopt.allocate(curves, total), head_capacity=capacity, sink=sink,
                                   window=window)
        elif name == "request":
            from ..request import RequestAllocator
            from .request_press import RequestBudgetPress

            allocator = RequestAllocator.fit(list(run.oracles), list(run.scores), sink=sink, window=window)
            make = lambda c, ra=allocator: RequestBudgetPress(scored(), ra, compression_ratio=c)
        elif name in _PROBE_METHODS:
            from .probe_press import ProbeBudgetPress

            if "probe_allocator" not in built:
                built["probe_allocator"] = _probe_allocator(run, sink, window, probe_ids, probe_gain, name)
            allocator, probe_tokens = built["probe_allocator"]
            reduce = {k: run.meta[k] for k in ("head_reduce", "step_reduce") if run.meta.get(k) is not None}
            rank = "probes" if name == "probes_rank" else "scores"
            make = lambda c, ra=allocator, k=probe_tokens, rank=rank: ProbeBudgetPress(
                scored(), ra, probe_ids, probe_tokens=k, compression_ratio=c, rank=rank, **reduce)
            out.append(Method(name, make, {"probe_tokens": probe_tokens, "probes": allocator.info["probes"]}))
            continue
        else:
            make = lambda c, n=name: _ratio(resolve_scorer(n), c)
        out.append(Method(name, make))
    return out


def _probe_allocator(run, sink, window, probe_ids, probe_gain=None, method="probes"):
    """The ``RequestAllocator`` of the ``"probes"`` and ``"probes_rank"`` methods (the run's
    pairs, each with its context's probe oracles) and the run's ``probe_tokens``; errors name
    ``method``."""
    from ..request import RequestAllocator

    counts = run.meta.get("probes") or []
    if not any(counts):
        raise InvalidInputError(
            f'method {method} needs a profile run made with probes: add "probes": true (or a list of probe texts) '
            'and "probe_tokens" to the calibration lines and run budgetopt profile again')
    probes = run.probes
    if probes is None or not probes.pairs:
        raise InvalidInputError(
            f"method {method} needs the run's probes: attach them as run.probes (budgetopt.runs.load_probe_run on the "
            "same run directories)")
    steps = {int(k) for k, n in zip(run.meta.get("probe_tokens") or [], counts) if n}
    if len(steps) != 1:
        raise InvalidInputError(
            f"method {method} needs one probe_tokens for every calibration context; the run has {sorted(steps)}")
    if probe_ids is None:
        raise InvalidInputError(
            f"method {method} needs `probe_ids`: the run's probe texts encoded with budgetopt.torch.encode_probes")
    by_context = {}
    for (c, _), oracle in zip(probes.pairs, probes.oracles):
        by_context.setdefault(c, []).append(oracle)
    missing = sorted({c for c, _ in run.pairs} - set(by_context))
    if missing:
        raise InvalidInputError(f"method {method}: the run's probes miss context(s) {missing[:5]}; give every shard")
    allocator = RequestAllocator.fit(list(run.oracles), list(run.scores), sink=sink, window=window,
                                     probe_oracles=[by_context[c] for c, _ in run.pairs], probe_gain=probe_gain)
    return allocator, steps.pop()


def _mean_curves(run, sink, window, curves_from_run):
    """The run's mean utility curves; contexts of different lengths are resampled onto the
    fractions of the median length's middle tokens first (curves are per head fraction)."""
    from ..curves import Curves
    from ..profile import curves_from_scores

    lengths = [int(o.shape[-1]) for o in run.oracles]
    if len(set(lengths)) == 1:
        return curves_from_run(run)
    length = int(np.median(lengths))
    target = np.linspace(0.0, 1.0, length - sink - window + 1)
    mean = 0.0
    for oracle, scores in zip(run.oracles, run.scores):
        u = curves_from_scores(oracle, scores, sink=sink, window=window).utility
        source = np.linspace(0.0, 1.0, u.shape[-1])
        flat = u.reshape(-1, u.shape[-1])
        mean = mean + np.stack([np.interp(target, source, row) for row in flat]).reshape(*u.shape[:-1], -1)
    return Curves(mean / len(lengths), np.arange(sink + window, length + 1))


def _ratio(press, c):
    press.compression_ratio = c
    return press


def replayable(press):
    """Whether :func:`run_method` may compress a recorded pre-fill with ``press`` (its hooks
    only compress at pre-filling); otherwise it pre-fills under the press. Presses that
    compress while decoding or re-rotate keys are refused (``InvalidInputError``)."""
    from kvpress import (DecodingPress, DMSPress, FinchPress, KeyRerotationPress, PrefillDecodingPress,
                         RestoreKVPress)

    from .press import BudgetPress

    if isinstance(press, (DecodingPress, PrefillDecodingPress, DMSPress, RestoreKVPress, KeyRerotationPress,
                          FinchPress)):
        raise InvalidInputError(
            f"{type(press).__name__} compresses while decoding or moves positions; evaluate supports presses that "
            "compress the context at pre-filling")
    if isinstance(press, BudgetPress):
        return press.mode != "varlen"
    return type(press).__call__ is BasePress.__call__


# -- one example ---------------------------------------------------------------------------------
@dataclass
class Reference:
    """The full-cache pre-fill and answer of one example and setting (shared by all methods)."""

    context_ids: torch.Tensor
    question_ids: torch.Tensor
    layers: list  # per layer: (hook kwargs, attention weights or None, keys, values)
    answer_ids: list
    answer: str
    log_probs: torch.Tensor  # (answer tokens, vocab) float32
    seconds: float


def encode_example(tokenizer, example, *, setting="question"):
    """``(context_ids, question_ids)``, each ``(1, n)``, as kvpress's pipeline tokenizes them
    (chat template, the question's suffix and answer prefix). ``"query_aware"`` moves the
    question into the context; what follows it is the template's suffix and the prefix."""
    from .profiling.run import _template_parts

    if setting not in SETTINGS:
        raise InvalidInputError(f"`setting` must be one of {', '.join(SETTINGS)}; got {setting!r}")
    context, question = example.context, example.question
    if setting == "query_aware":
        context, question = f"{context}\n\n{question}", ""
    context_text, suffix = _template_parts(tokenizer, context)
    ids = tokenizer.encode(context_text, add_special_tokens=False)
    q = tokenizer.encode(question + suffix + example.answer_prefix, add_special_tokens=False)
    if not q:
        raise InvalidInputError(
            f"{example.id}: nothing follows the context in the {setting!r} setting (the tokenizer has no chat "
            "template and its question suffix encodes to no tokens)")
    return torch.tensor([ids], dtype=torch.long), torch.tensor([q], dtype=torch.long)


def _layers(model):
    base = model.model
    return getattr(base, "language_model", base).layers


def _stop_ids(model):
    stop = model.generation_config.eos_token_id
    return stop if isinstance(stop, list) else [stop]


def _greedy(model, cache, question_ids, context_length, max_new_tokens, keep_logits=False):
    """The pipeline's ``generate_answer`` loop (same calls), returning ids and per-step logits."""
    device = model.device
    position_ids = torch.arange(context_length, context_length + question_ids.shape[1], device=device).unsqueeze(0)
    outputs = model(input_ids=question_ids.to(device), past_key_values=cache, position_ids=position_ids,
                    logits_to_keep=1)
    position_ids = position_ids[:, -1:] + 1
    logits = [outputs.logits[0, -1].float().log_softmax(-1).cpu()] if keep_logits else []
    generated = [outputs.logits[0, -1].argmax()]
    stop = _stop_ids(model)
    for i in range(max_new_tokens - 1):
        outputs = model(input_ids=generated[-1].unsqueeze(0).unsqueeze(0), past_key_values=cache,
                        position_ids=position_ids + i)
        if keep_logits:
            logits.append(outputs.logits[0, -1].float().log_softmax(-1).cpu())
        generated.append(outputs.logits[0, -1].argmax())
        if generated[-1].item() in stop:
            break
    ids = [int(t) for t in generated]
    return ids, (torch.stack(logits) if keep_logits else None)


def _crop(cache, lengths):
    """Drop decoded tokens, as the pipeline's ``_remove_answer_from_cache``."""
    for layer, n in zip(cache.layers, lengths):
        layer.keys = layer.keys[:, :, :n]
        layer.values = layer.values[:, :, :n]


def reference(model, tokenizer, context_ids, question_ids, *, max_new_tokens=16):
    """Full-cache pre-fill (recording each attention layer's hook inputs) and greedy answer."""
    from transformers import DynamicCache

    start = time.perf_counter()
    cache = DynamicCache()
    recorded = {}

    def hook(module, args, kwargs, output):
        recorded[module.layer_idx] = (dict(kwargs), output[1] if len(output) > 1 else None)

    handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in _layers(model)]
    try:
        with torch.no_grad():
            model.model(input_ids=context_ids.to(model.device), past_key_values=cache)
    finally:
        for h in handles:
            h.remove()
    layers = []
    for i, layer in enumerate(cache.layers):
        kwargs, attentions = recorded[i]
        kwargs.pop("past_key_values", None)
        layers.append((kwargs, attentions, layer.keys, layer.values))
    with torch.no_grad():
        ids, log_probs = _greedy(model, cache, question_ids, context_ids.shape[1], max_new_tokens, keep_logits=True)
    answer = str(tokenizer.decode(torch.tensor(ids), skip_special_tokens=True))
    return Reference(context_ids, question_ids, layers, ids, answer, log_probs, time.perf_counter() - start)


def _compressed_cache(model, press, ref):
    """The cache ``press`` leaves after pre-filling ``ref``'s context."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if not replayable(press):
        with torch.no_grad(), press(model):
            model.model(input_ids=ref.context_ids.to(model.device), past_key_values=cache)
        return cache
    for i, (_, _, keys, values) in enumerate(ref.layers):
        cache.update(keys, values, i)
    modules = [layer.self_attn for layer in _layers(model)]
    with torch.no_grad(), press(model):
        for module, (kwargs, attentions, _, _) in zip(modules, ref.layers):
            module.masked_key_indices = None  # what kvpress's attention does at pre-filling
            press.forward_hook(module, (), {**kwargs, "past_key_values": cache}, (None, attentions))
    return cache


def _kept_tokens(model, cache):
    """Tokens the cache holds and does not hide, over all layers and KV heads."""
    kept = 0
    for module, layer in zip((l.self_attn for l in _layers(model)), cache.layers):
        if hasattr(layer, "lengths"):  # budgetopt's VarlenLayer
            kept += int(layer.lengths().sum())
            continue
        batch, heads, length = layer.keys.shape[:3]
        kept += batch * heads * length
        hidden = getattr(module, "masked_key_indices", None)
        if hidden is not None:
            kept -= int(hidden[0].numel())
    return kept


def run_method(model, tokenizer, ref, press, *, max_new_tokens=16):
    """One method on one example: its greedy answer, teacher-forced KL and NLL against
    ``ref``, and the tokens its cache keeps. ``press=None`` is the full cache."""
    start = time.perf_counter()
    n = len(ref.answer_ids)
    if press is None:
        nll = -float(ref.log_probs[torch.arange(n), torch.tensor(ref.answer_ids)].mean())
        kept = sum(k.shape[0] * k.shape[1] * k.shape[2] for _, _, k, _ in ref.layers)
        return {"answer": ref.answer, "answer_ids": list(ref.answer_ids), "kl": 0.0, "nll": nll,
                "kept_tokens": kept, "seconds": 0.0}
    context_length = ref.context_ids.shape[1]
    cache = _compressed_cache(model, press, ref)
    kept = _kept_tokens(model, cache)
    lengths = [cache.get_seq_length(i) for i in range(len(cache))]
    with torch.no_grad():
        ids, _ = _greedy(model, cache, ref.question_ids, context_length, max_new_tokens)
        _crop(cache, lengths)
        forced = torch.cat([ref.question_ids, torch.tensor([ref.answer_ids[:-1]], dtype=ref.question_ids.dtype)], 1)
        positions = torch.arange(context_length, context_length + forced.shape[1], device=model.device).unsqueeze(0)
        logits = model(input_ids=forced.to(model.device), past_key_values=cache, position_ids=positions,
                       logits_to_keep=n).logits[0]
    log_q = logits.float().log_softmax(-1).cpu()
    log_p = ref.log_probs
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0).mean())
    nll = -float(log_q[torch.arange(n), torch.tensor(ref.answer_ids)].mean())
    answer = str(tokenizer.decode(torch.tensor(ids), skip_special_tokens=True))
    del cache
    return {"answer": answer, "answer_ids": ids, "kl": kl, "nll": nll, "kept_tokens": kept,
            "seconds": time.perf_counter() - start}


def evaluate_example(model, tokenizer, example, methods, compressions, *, settings=("question",),
                     max_new_tokens=16, recorded=None):
    """Every method at every compression ratio on one example; a JSON-ready record.

    Parameters
    ----------
    model, tokenizer
        As for :func:`evaluate`.
    example : budgetopt.tasks.Example
    methods : sequence of Method
    compressions : sequence of float
    settings : sequence of {"question", "query_aware"}
    max_new_tokens : int
    recorded : dict, optional
        This example's record from an earlier call with fewer methods, ratios or settings. Its
        rows are kept as they are and only the (method, ratio) cells it lacks are computed, against
        a reference computed again, which must give the recorded full-cache answer (otherwise
        :class:`~budgetopt.errors.InvalidInputError`: the model or the library versions
        changed). A setting with nothing missing is not run at all.

    Returns
    -------
    dict
        ``{"id", "task", "answers", "scorer", "context_sha256", "settings": {setting:
        {"context_tokens", "reference": {...}, "results": [{"method", "compression",
        "answer", "correct", "agree", "kl", "nll", "kept_tokens", "kept_fraction",
        "seconds"}, ...]}}}``; ``kept_fraction`` is out of ``layers * kv_heads *
        context_tokens``. ``correct`` is ``None`` (null) for an example without answers
        (``example.answered`` is False): only agreement, KL and NLL apply to it.
    """
    record = {**example.to_json(), "settings": {}}
    old_settings = {}
    if recorded is not None:
        if recorded.get("id") != example.id or recorded.get("context_sha256") != record.get("context_sha256"):
            raise InvalidInputError(f"{example.id}: the recorded example is {recorded.get('id')!r} with another "
                                    "context; it cannot be extended")
        old_settings = recorded["settings"]
    wanted = [(m.name, c) for m in methods for c in compressions]
    for setting in settings:
        old = old_settings.get(setting)
        have = {(r["method"], float(r["compression"])): r for r in (old or {}).get("results", [])}
        if old is not None and all(key in have for key in wanted):
            record["settings"][setting] = old
            continue
        context_ids, question_ids = encode_example(tokenizer, example, setting=setting)
        ref = reference(model, tokenizer, context_ids, question_ids, max_new_tokens=max_new_tokens)
        if old is not None and ref.answer_ids != old["reference"]["answer_ids"]:
            raise InvalidInputError(
                f"{example.id}: the full-cache answer ({ref.answer!r}) differs from the recorded one "
                f"({old['reference']['answer']!r}) in the {setting!r} setting: the model or the library "
                "versions changed since it was recorded; evaluate the new methods in a new directory")
        capacity = sum(k.shape[0] * k.shape[1] * k.shape[2] for _, _, k, _ in ref.layers)
        results = []
        for method in methods:
            for i, c in enumerate(compressions):
                if (method.name, c) in have:
                    results.append(have[method.name, c])
                    continue
                press = method.make(c)
                out = run_method(model, tokenizer, ref, press, max_new_tokens=max_new_tokens)
                out.update(method=method.name, compression=c,
                           correct=_correct(example, out["answer"]),
                           agree=out["answer_ids"] == ref.answer_ids,
                           kept_fraction=out["kept_tokens"] / capacity)
                results.append(out)
                if press is None:
                    # the full cache is the same at every ratio: one row per ratio, computed once
                    results.extend(have.get((method.name, c2)) or {**out, "compression": c2}
                                   for c2 in compressions[i + 1:])
                    break
        results.extend(r for key, r in have.items() if key not in wanted)  # cells not asked for are kept
        if old is None:
            old = {"context_tokens": int(context_ids.shape[1]), "question_tokens": int(question_ids.shape[1]),
                   "reference": {"answer": ref.answer, "answer_ids": ref.answer_ids,
                                 "correct": _correct(example, ref.answer), "seconds": ref.seconds}}
        record["settings"][setting] = {**old, "results": results}
        del ref
    record["settings"].update((k, v) for k, v in old_settings.items() if k not in settings)
    return record


def _correct(example, answer):
    """The task scorer's verdict on ``answer``, or None when the example has no answers."""
    return score(example.scorer, answer, example.answers) if example.answered else None


# -- a whole evaluation --------------------------------------------------------------------------
def _example_path(out_dir, example):
    return Path(out_dir) / "examples" / f"{example.id}.json"


#: ``meta.json`` lists a resumed evaluation may add to.
_EXTENSIBLE = ("methods", "compressions", "settings")


def _lacks(record, methods, compressions, settings):
    """Whether a finished example's record lacks a (setting, method, ratio) cell."""
    for setting in settings:
        block = record["settings"].get(setting)
        have = {(r["method"], float(r["compression"])) for r in (block or {}).get("results", [])}
        if block is None or any((m.name, c) not in have for m in methods for c in compressions):
            return True
    return False


def open_eval_dir(out_dir, meta, *, resume=True):
    """Create or reopen an evaluation directory.

    An existing directory is resumed when its ``meta.json`` equals ``meta`` apart from the
    device, versions, shard and number of examples (examples are numbered, so asking for more
    extends the run), and apart from methods, compression ratios and settings that ``meta``
    adds to the recorded ones (:func:`evaluate` then computes only the cells each finished
    example lacks). Dropping a recorded method, ratio or setting is refused. With
    ``resume=False`` the example files are deleted first. A non-empty directory without an
    evaluation's ``meta.json`` is refused.

    Returns
    -------
    done : dict
        The finished examples' records by id, each read and checked (:func:`read_record`), so
        that a damaged file stops the call before anything is written.
    write_meta : callable or None
        Writes ``meta.json`` for a resumed directory that ``meta`` adds methods, ratios or
        settings to; call it before the first example file is written, so that a call that
        fails before finishing an example leaves the directory as it was. None when
        ``meta.json`` is already written (any other case).
    """
    from ..runs import _difference

    out = check_output_dir(out_dir)
    # more examples extend a run; "probe_fit" is derived from the run and the options compared
    loose = ("device", "versions", "shard", "commit", "examples", "probe_fit") + _EXTENSIBLE
    existing = out.is_dir() and any(out.iterdir())
    resumed, adds = resume and existing, False
    if existing:
        path = out / "meta.json"
        old = read_json_file(path, "evaluation's meta.json") if path.exists() or path.is_symlink() else None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise CurvesFileError(f"{out}: is not empty and not a budgetopt evaluation; choose a new or empty directory")
        if resume:
            diff = _difference({k: v for k, v in old.items() if k not in loose},
                               {k: v for k, v in meta.items() if k not in loose})
            if diff:
                raise InvalidInputError(
                    f"{out}: holds an evaluation with other settings ({diff}); use a new directory, "
                    "or --no-resume to start it over")
            for key in _EXTENSIBLE:
                recorded, asked = old.get(key) or [], meta.get(key) or []
                if not isinstance(recorded, list):
                    raise CurvesFileError(f"{path}: {key} must be a list; got {recorded!r}")
                dropped = [v for v in recorded if v not in asked]
                if dropped:
                    raise InvalidInputError(
                        f"{out}: holds {key} {', '.join(map(str, dropped))} that this evaluation does not ask for; "
                        f"ask for them as well (a resumed evaluation can add {', '.join(_EXTENSIBLE)}, not drop "
                        "them), use a new directory, or --no-resume to start it over")
                adds = adds or any(v not in recorded for v in asked)
    examples = out / "examples"
    done = {}
    if resumed and examples.is_dir():
        for entry in sorted(os.scandir(examples), key=lambda e: e.name):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                done[entry.name[:-5]] = read_record(entry.path)
    examples.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(examples):
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            os.unlink(entry.path)
        elif entry.name.endswith(".json") and not resume:
            os.unlink(entry.path)
    text = json.dumps(meta, indent=1) + "\n"
    write_meta = lambda: write_atomic(out / "meta.json", lambda f: f.write(text.encode("utf-8")))
    if resumed and adds:
        return done, write_meta
    write_meta()
    return done, None


def evaluate(model, tokenizer, examples, methods, compressions, *, settings=("question",), max_new_tokens=16,
             out_dir=None, meta=None, shard=None, resume=True, progress=None):
    """Evaluate ``methods`` on ``examples``; with ``out_dir``, one file per example (resumable).

    Parameters
    ----------
    model, tokenizer
        A transformers causal LM (sdpa attention for head-wise presses) and its tokenizer.
    examples : sequence of budgetopt.tasks.Example
    methods : sequence of Method
    compressions : sequence of float
        kvpress compression ratios (fraction removed), each in ``[0, 1)``.
    settings : sequence of {"question", "query_aware"}
    max_new_tokens : int
    out_dir : str or os.PathLike, optional
        ``examples/ID.json`` per finished example, written atomically; an example whose file
        exists is skipped (resume), or completed with the methods, ratios and settings it lacks
        when this call asks for more than the directory holds (its recorded rows are kept).
        ``meta.json`` holds ``meta``.
    shard : (K, N), optional
        Evaluate examples ``i`` (in the order given) with ``i % N == K`` only.
    progress : callable, optional
        ``progress(done, total)`` after each example.

    Returns
    -------
    list of dict
        The records of this call's examples (finished before or now), in order.
    """
    from ..runs import in_shard

    if not isinstance(methods, (list, tuple)) or not all(isinstance(m, Method) for m in methods):
        raise InvalidTypeError("`methods` must be a list of Method (see standard_methods)")
    comps = []
    for c in compressions:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c < 1:
            raise InvalidInputError(f"`compressions` must hold numbers in [0, 1); got {c!r}")
        comps.append(float(c))
    if not comps:
        raise InvalidInputError("`compressions` must not be empty")
    for s in settings:
        if s not in SETTINGS:
            raise InvalidInputError(f"`settings` must be among {', '.join(SETTINGS)}; got {s!r}")
    if not all(isinstance(e, Example) for e in examples):
        raise InvalidTypeError("`examples` must hold budgetopt.tasks.Example objects")
    wanted = [e for i, e in enumerate(examples) if in_shard(i, shard)]
    for example in wanted:  # tokenization errors before anything is written
        for setting in settings:
            encode_example(tokenizer, example, setting=setting)
    done, write_meta = {}, None
    if out_dir is not None:
        done, write_meta = open_eval_dir(out_dir, {"format": FORMAT, **(meta or {})}, resume=resume)
    records = []
    for n, example in enumerate(wanted):
        path = _example_path(out_dir, example) if out_dir is not None else None
        recorded = done.get(example.id)
        if recorded is not None and not _lacks(recorded, methods, comps, settings):
            records.append(recorded)
        else:
            record = evaluate_example(model, tokenizer, example, methods, comps, settings=tuple(settings),
                                      max_new_tokens=max_new_tokens, recorded=recorded)
            if path is not None:
                if write_meta is not None:  # what this call adds is recorded with its first example
                    write_meta()
                    write_meta = None
                text = json.dumps(record) + "\n"
                write_atomic(path, lambda f, text=text: f.write(text.encode("utf-8")))
            records.append(record)
        if progress is not None:
            progress(n + 1, len(wanted))
    return records
