"""Profile a model over a calibration file: every (context, question) pair, resumable, sharded.

:func:`profile_model` turns a transformers model, its tokenizer and a calibration file
(:mod:`budgetopt.calibration`) into oracle, scorer and value-norm arrays, one set per pair,
by calling the engine :func:`budgetopt.torch.profiling.context.profile_context` once per context. With
``out_dir`` it writes a run directory (:mod:`budgetopt.runs`): a pair file per finished pair,
written atomically, so an interrupted run resumes where it stopped, and ``shard=(K, N)``
profiles the pairs ``i`` with ``i % N == K`` (shards merge into the unsharded result).
:func:`load_local_model` loads a model directory for the command line (local files only).

Importing this module imports kvpress (through the engine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..._checks import check_int
from ..._io import check_input_file, loads_json
from ..._progress import Progress
from ...calibration import Calibration, read_calibration
from ...errors import CurvesFileError, InvalidInputError, InvalidTypeError
from ...runs import (
    FORMAT,
    LOCK_NAME,
    ProfileRun,
    in_shard,
    load_probe_run,
    load_profile_run,
    lock_run_dir,
    open_run_dir,
    parse_shard,
    run_id,
    shard_label,
    write_pair,
)
from ..geometry import SUPPORTED_MODEL_TYPES, model_geometry, text_config
from . import context as engine
from .scorers import CallableScorer, resolve_scorer

__all__ = ["profile_model", "encode_calibration", "load_local_model", "model_fingerprint", "EncodedContext"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class EncodedContext:
    """Token ids of one calibration line: the context prefix and each question's (and probe's)
    continuation."""

    context_ids: tuple
    question_ids: tuple
    line: int
    probe_ids: tuple = ()


def _template_parts(tokenizer, context):
    """``(context text, question suffix)`` as kvpress's pipeline builds them."""
    if getattr(tokenizer, "chat_template", None) is None:
        return (getattr(tokenizer, "bos_token", None) or "") + context, "\n"
    separator = "#" * (len(context) + 10)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": context + separator}], add_generation_prompt=True, tokenize=False
    )
    before, after = text.split(separator)
    return before, after


def encode_calibration(tokenizer, calibration, *, sink, window, max_new_tokens, max_length=None):
    """Token ids of every context and question, as kvpress's pipeline tokenizes them.

    With a chat template, the context is the templated user turn up to the end of the context
    text, and a question is the question text, the rest of the template (end of turn and
    assistant header) and its answer prefix (a probe: the same, with no prefix). Without one, the context is the BOS token plus the
    text and a question is the question, ``"\\n"`` and its answer prefix. Each part is
    tokenized on its own (no special tokens added), so the context ids are exactly the prefix
    the question pass continues, and exactly what ``KVPressTextGenerationPipeline`` compresses.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
    calibration : Calibration or str or os.PathLike
    sink, window, max_new_tokens : int
    max_length : int, optional
        The model's maximum sequence length (``max_position_embeddings``).

    Returns
    -------
    list of EncodedContext

    Raises
    ------
    InvalidInputError
        A context of at most ``sink + window`` tokens, or a context + question +
        ``max_new_tokens`` longer than ``max_length``; the message names the file and line.
    """
    if not isinstance(calibration, Calibration):
        calibration = read_calibration(calibration)
    encoded = []
    for ctx in calibration.contexts:
        where = f"{calibration.path}:{ctx.line}"
        context_text, suffix = _template_parts(tokenizer, ctx.context)
        _refuse_long_text(tokenizer, context_text, max_length, f"{where}: the context")
        for i, (question, prefix) in enumerate(zip(ctx.questions, ctx.answer_prefixes)):
            _refuse_long_text(tokenizer, question + suffix + prefix, max_length, f"{where}: questions[{i}]")
        for i, probe in enumerate(ctx.probes):
            _refuse_long_text(tokenizer, probe + suffix, max_length, f"{where}: probes[{i}]")
        context_ids = tuple(tokenizer.encode(context_text, add_special_tokens=False))
        if len(context_ids) <= sink + window:
            raise InvalidInputError(
                f"{where}: the context has {len(context_ids)} tokens; profiling needs more than "
                f"sink + window = {sink + window}"
            )
        def query_ids(text, label, noun, new_name, new_tokens):
            """Ids of a question or probe after the context, within the model's maximum length."""
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if not ids:
                raise InvalidInputError(f"{where}: {label} encodes to no tokens")
            total = len(context_ids) + len(ids) + new_tokens
            if max_length is not None and total > max_length:
                raise InvalidInputError(
                    f"{where}: {label}: context ({len(context_ids)} tokens) + {noun} ({len(ids)}) + "
                    f"{new_name} ({new_tokens}) = {total} tokens exceeds the model's maximum length ({max_length})"
                )
            return ids

        questions = [query_ids(question + suffix + prefix, f"questions[{i}]", "question", "max_new_tokens",
                               max_new_tokens)
                     for i, (question, prefix) in enumerate(zip(ctx.questions, ctx.answer_prefixes))]
        # a probe is a question with no answer prefix
        probes = [query_ids(probe + suffix, f"probes[{i}]", "probe", "probe_tokens", ctx.probe_tokens)
                  for i, probe in enumerate(ctx.probes)]
        encoded.append(EncodedContext(context_ids, tuple(questions), ctx.line, tuple(probes)))
    return encoded


#: Characters tokenized to test a long text against the model's maximum length, per token.
_PROBE_CHARS_PER_TOKEN = 32
#: Longer texts than this many characters per token of the maximum length are refused unread.
_MAX_CHARS_PER_TOKEN = 1024


def _refuse_long_text(tokenizer, text, max_length, what):
    """Refuse ``text`` that cannot fit ``max_length`` tokens, without tokenizing it whole.

    A text of more than ``1024 * max_length`` characters is refused outright (no tokenizer
    averages a kilobyte per token). A text of more than ``32 * (max_length + 16)`` characters
    has that prefix tokenized first: more than ``max_length + 8`` tokens there (a prefix can
    split at most a token or two differently from the whole) proves the whole too long. Cost:
    O(max_length) characters tokenized, whatever the text's length.
    """
    if max_length is None:
        return
    max_length = int(max_length)
    if len(text) > _MAX_CHARS_PER_TOKEN * max_length:
        raise InvalidInputError(
            f"{what} has {len(text):,} characters: too long for the model's maximum length of {max_length} "
            f"tokens (refused before tokenizing; at most {_MAX_CHARS_PER_TOKEN} characters per token)"
        )
    probe = _PROBE_CHARS_PER_TOKEN * (max_length + 16)
    if len(text) > probe:
        n = len(tokenizer.encode(text[:probe], add_special_tokens=False))
        if n > max_length + 8:
            raise InvalidInputError(
                f"{what} exceeds the model's maximum length ({max_length} tokens): its first {probe:,} of "
                f"{len(text):,} characters already make {n} tokens"
            )


def _versions():
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "kvpress"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = getattr(sys.modules.get(name), "__version__", None)
    return out


def _scorer_name(scorer, press):
    if isinstance(scorer, str):
        return scorer.strip().lower().replace("-", "_")
    if isinstance(press, CallableScorer):
        return getattr(press.fn, "__name__", "function")
    return type(press).__name__


def profile_model(model, tokenizer, calibration, *, scorer, out_dir=None, sink=4, window=1,
                  max_new_tokens=64, head_reduce="max", step_reduce="max", sampling=False,
                  temperature=0.7, seed=0, shard=None, resume=True, progress=True):
    """Oracle, scorer and value-norm arrays of every calibration pair, optionally on disk.

    For each context of ``calibration`` (one context-only prefill, then each question with
    ``max_new_tokens`` generated tokens) the engine
    :func:`~budgetopt.torch.profiling.context.profile_context` gives ``scores`` and ``value_norms``
    (context-only prefill, shared by its questions) and one ``oracle`` per question, each
    float32 ``(layers, kv_heads, T)``. The result feeds :func:`budgetopt.lukv_table` and
    :func:`budgetopt.curves_from_scores` (see :func:`budgetopt.runs.lukv_table_from_run`).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a family kvpress supports, in eval mode, on its device.
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer (its chat template, if any, is applied as kvpress's pipeline
        does; see :func:`encode_calibration`).
    calibration : str, os.PathLike or Calibration
        The calibration file (JSON lines; :func:`budgetopt.calibration.read_calibration`).
    scorer : str, kvpress.ScorerPress or callable
        A kvpress scorer name (``"snapkv"``, ``"keydiff"``, ``"expected_attention"``,
        ``"knorm"``, ...), a ``ScorerPress``, or a function ``(module, hidden_states, keys,
        values, attentions, kwargs) -> scores[batch, kv_heads, T]``.
    out_dir : str or os.PathLike, optional
        Run directory to write (``meta.json`` and ``pairs/``). None: keep everything in
        memory.
    sink, window : int, optional
        Tokens the table will always keep (default 4 and 1, as kvpress's ``LUKVPress``);
        recorded in the run, and every context must be longer than ``sink + window``.
    max_new_tokens : int, optional
        Tokens generated per question (default 64).
    head_reduce : {"max", "mean"}, optional
        Reduction over a KV group's query heads (published: max).
    step_reduce : {"max", "sum"}, optional
        Reduction over generated steps (published: running max).
    sampling : bool, optional
        False (default): greedy decoding. True: sampling at ``temperature``; the question of
        global pair ``i`` samples with the generator seeded by ``seed + i``, so shards and
        resumed runs sample exactly as one uninterrupted run.
    temperature : float, optional
        Sampling temperature (default 0.7, published).
    seed : int, optional
    shard : str or (int, int), optional
        ``"K/N"``: profile only the pairs ``i`` (global order) with ``i % N == K``.
    resume : bool, optional
        True (default): pairs already in ``out_dir`` are not profiled again (the directory
        must hold a run with the same settings). False: start ``out_dir`` over.
    progress : bool, optional
        A tqdm progress bar over pairs (with tokens per second) on stderr.

    Returns
    -------
    ProfileRun
        The pairs of this run (of this shard only, with the others in ``missing``).

    Raises
    ------
    InvalidInputError, InvalidTypeError
        An unsupported model, an unknown scorer, a bad calibration file or a context too short
        or too long (naming the file and line), a run directory holding other settings, bad
        option values. Nothing is profiled or written before these checks pass.

    Notes
    -----
    Cost: per context one prefill, per question one question pass and ``max_new_tokens - 1``
    decode steps (with sampling, one prefill per question).

    **Probes.** Calibration lines with ``"probes"`` (:mod:`budgetopt.calibration`) have each
    probe profiled like a question (one more prefill per such context, then ``probe_tokens``
    steps per probe; with sampling, probe ``i`` in global probe order samples with ``seed +
    n_pairs + i``), stored in the run's ``probes/`` folder (read them with
    :func:`budgetopt.runs.load_probe_run`), and held in memory as the returned run's
    ``probes``. ``meta`` then records ``"probes"`` and ``"probe_tokens"`` per context; a
    calibration file without probes gives exactly the run it gave before. Memory: the engine's, plus the
    arrays of the pairs held in memory when ``out_dir`` is None. A pair file appears only
    once complete (atomic rename); an interrupted write leaves a temporary file that the next
    run removes.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> words = "the a cat dog sat ran on mat what who where did".split()
    >>> tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    >>> _ = torch.manual_seed(0)
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
    >>> calib = os.path.join(tempfile.mkdtemp(), "calib.jsonl")
    >>> with open(calib, "w") as f:
    ...     _ = f.write('{"context": "the cat sat on the mat the dog ran", "questions": ["who sat"]}\\n')
    >>> run = profile_model(model, tokenizer, calib, scorer="knorm", max_new_tokens=3, progress=False)
    >>> run.pairs, run.oracles[0].shape
    (((0, 0),), (2, 2, 9))
    """
    geometry = model_geometry(model)
    press = resolve_scorer(scorer)
    for name, value, options in (("head_reduce", head_reduce, ("max", "mean")),
                                 ("step_reduce", step_reduce, ("max", "sum"))):
        if value not in options:
            raise InvalidInputError(f"`{name}` must be one of {', '.join(map(repr, options))}; got {value!r}")
    sink = check_int(sink, "sink")
    window = check_int(window, "window")
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", minimum=1)
    seed = check_int(seed, "seed")
    if not isinstance(sampling, (bool, np.bool_)):
        raise InvalidTypeError(f"`sampling` must be True or False; got {sampling!r}")
    if sampling and (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                     or not temperature > 0):
        raise InvalidInputError(f"`temperature` must be a number > 0; got {temperature!r}")
    shard = parse_shard(shard)
    if not isinstance(calibration, Calibration):
        calibration = read_calibration(calibration)
    max_length = getattr(text_config(model.config), "max_position_embeddings", None)
    encoded = encode_calibration(tokenizer, calibration, sink=sink, window=window,
                                 max_new_tokens=max_new_tokens, max_length=max_length)

    parameter = next(model.parameters())
    name_or_path = str(getattr(model.config, "name_or_path", "") or "")
    meta = {
        "format": FORMAT,
        "model": {
            "name": os.path.basename(name_or_path.rstrip("/\\")) or type(model).__name__,
            "path": name_or_path,
            "model_type": geometry.model_type,
            "fingerprint": model_fingerprint(model),
        },
        "layers": geometry.layers,
        "kv_heads": geometry.kv_heads,
        "heads": geometry.heads,
        "head_dim": geometry.head_dim,
        "dtype": str(parameter.dtype).replace("torch.", ""),
        "attention": getattr(model.config, "_attn_implementation", None),
        "scorer": {"name": _scorer_name(scorer, press), "repr": repr(press)},
        "sink": sink,
        "window": window,
        "max_new_tokens": max_new_tokens,
        "head_reduce": head_reduce,
        "step_reduce": step_reduce,
        "sampling": bool(sampling),
        "temperature": float(temperature) if sampling else None,
        "seed": seed,
        "tokenization": "plain" if getattr(tokenizer, "chat_template", None) is None else "chat_template",
        "calibration": {"path": os.path.abspath(calibration.path), "sha256": calibration.sha256},
        "n_contexts": len(encoded),
        "n_pairs": calibration.n_pairs,
        "questions": [len(e.question_ids) for e in encoded],
        "context_tokens": [len(e.context_ids) for e in encoded],
        **({"probes": [len(c.probes) for c in calibration.contexts],
            "probe_tokens": [c.probe_tokens or 0 for c in calibration.contexts]} if calibration.n_probes else {}),
        "shard": shard_label(shard),
        "device": str(parameter.device),
        "versions": _versions(),
        "budgetopt_version": _budgetopt_version(),
    }

    meta["run_id"] = run_id(meta)  # the run's identity: every pair carries it
    order = calibration.pairs()
    index_of = {pair: i for i, pair in enumerate(order)}
    wanted = [pair for i, pair in enumerate(order) if in_shard(i, shard)]
    finished, created, lock = set(), False, None
    if out_dir is not None:
        if not isinstance(resume, (bool, np.bool_)):
            raise InvalidTypeError(f"`resume` must be True or False; got {resume!r}")
        created = not os.path.exists(out_dir)
        lock = lock_run_dir(out_dir)  # held until this run is written: a second writer is refused
        try:
            finished = open_run_dir(out_dir, meta, resume=resume, lock=lock)
        except BaseException:
            if created:
                _remove_empty_run(out_dir)
            lock.release()
            raise
    pending = {}
    for c, q in wanted:
        if (c, q) not in finished:
            pending.setdefault(c, []).append(q)
    probe_order = calibration.probe_pairs()
    probe_index = {pair: i for i, pair in enumerate(probe_order)}
    wanted_probes = [pair for i, pair in enumerate(probe_order) if in_shard(i, shard)]
    pending_probes = {}
    for c, p in wanted_probes:
        if ("probe", c, p) not in finished:
            pending_probes.setdefault(c, []).append(p)
    n_wanted = len(wanted) + len(wanted_probes)
    n_pending = sum(map(len, pending.values())) + sum(map(len, pending_probes.values()))

    bar = Progress(n_wanted, progress, "profile", initial=n_wanted - n_pending, terminal_only=False, counter=False)
    held, held_probes = {}, {}
    try:
        tokens, seconds = 0, 0.0
        for c in sorted(set(pending) | set(pending_probes)):
            e = encoded[c]
            context_ids = torch.tensor(e.context_ids, dtype=torch.int64)
            questions, probes = pending.get(c, []), pending_probes.get(c, [])
            if sampling:  # one call per question so that pair i always samples with seed + i
                calls = [(False, [q], seed + index_of[(c, q)]) for q in questions]
                calls += [(True, [p], seed + len(order) + probe_index[(c, p)]) for p in probes]
            else:
                calls = ([(False, questions, seed)] if questions else []) + ([(True, probes, seed)] if probes else [])
            for is_probe, qs, call_seed in calls:
                ids_of = e.probe_ids if is_probe else e.question_ids
                try:
                    result = engine.profile_context(
                        model, context_ids, [torch.tensor(ids_of[q], dtype=torch.int64) for q in qs],
                        scorer=press, head_reduce=head_reduce, step_reduce=step_reduce, sampling=bool(sampling),
                        max_new_tokens=calibration.contexts[c].probe_tokens if is_probe else max_new_tokens,
                        temperature=temperature, seed=call_seed,
                    )
                except (InvalidInputError, InvalidTypeError) as exc:
                    raise type(exc)(f"{calibration.path}:{e.line}: {exc}") from None
                share = result.seconds / len(qs)
                for q, oracle, new in zip(qs, result.oracles, result.new_tokens):
                    pair_meta = {
                        "context": c, ("probe" if is_probe else "question"): q, "context_tokens": len(e.context_ids),
                        ("probe_tokens" if is_probe else "question_tokens"): len(ids_of[q]), "new_tokens": int(new),
                        "seconds": share,
                    }
                    if meta.get("run_id") is not None:  # (a resumed run from before identities has none)
                        pair_meta["run_id"] = meta["run_id"]
                    if out_dir is not None:
                        write_pair(out_dir, c, q, oracle=oracle, scores=result.scores,
                                   value_norms=result.value_norms, meta=pair_meta, lock=lock, probe=is_probe)
                    else:
                        (held_probes if is_probe else held)[(c, q)] = (oracle, result.scores, result.value_norms,
                                                                       pair_meta)
                tokens += len(e.context_ids) + sum(len(ids_of[q]) for q in qs) + sum(result.new_tokens)
                seconds += result.seconds
                bar.advance(len(qs), postfix=f"{tokens / max(seconds, 1e-9):,.0f} tok/s")
    except BaseException:
        if out_dir is not None and created and not os.listdir(Path(out_dir) / "pairs"):
            _remove_empty_run(out_dir)  # failed before finishing any pair: leave nothing behind
        raise
    finally:
        bar.close()
        if lock is not None:
            lock.release()
    if out_dir is not None:
        run = load_profile_run(out_dir, partial=shard is not None)
        probes = load_probe_run(out_dir, partial=shard is not None) if calibration.n_probes else None
    else:
        run = _in_memory_run(meta, order, wanted, held)
        probes = _in_memory_run(meta, probe_order, wanted_probes, held_probes) if calibration.n_probes else None
    return dataclasses.replace(run, probes=probes) if probes is not None else run


_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json")
_SAMPLE_BYTES = 1 << 20


def model_fingerprint(model):
    """A hash that tells one model's weights from another's, cheaply (a few MiB read).

    It covers the configuration (architecture and sizes, without file paths and versions), a
    sample of every parameter (its name, shape, dtype and first and last 64 values, as
    loaded) and, when the model was loaded from a local folder, each weight file's name and
    size, its safetensors header (names, shapes and offsets of every tensor) and its first
    and last MiB. Two folders with the same name but other weights get other fingerprints;
    the same weights on another device or machine get the same one.
    """
    digest = hashlib.sha256()
    config = model.config.to_dict()
    for key in list(config):
        if key.startswith("_") or key in ("transformers_version", "name_or_path", "torch_dtype", "dtype"):
            del config[key]
    digest.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = torch.cat([flat[:64], flat[-64:]]).to("cpu").contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode("utf-8"))
            digest.update(sample.view(torch.uint8).numpy().tobytes())
    folder = str(getattr(model.config, "name_or_path", "") or "")
    if folder and os.path.isdir(folder):
        files = sorted({p for pattern in _WEIGHT_GLOBS for p in Path(folder).glob(pattern) if p.is_file()})
        for path in files:
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode("utf-8"))
            try:
                with open(path, "rb") as f:
                    if path.suffix == ".safetensors" and size >= 8:
                        header = int.from_bytes(f.read(8), "little")
                        digest.update(f.read(min(header, 100 << 20)))
                    f.seek(0)
                    digest.update(f.read(_SAMPLE_BYTES))
                    f.seek(max(size - _SAMPLE_BYTES, 0))
                    digest.update(f.read(_SAMPLE_BYTES))
            except OSError as exc:
                raise CurvesFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()[:32]


def _remove_empty_run(out_dir):
    path = Path(out_dir)
    for name in ("meta.json", LOCK_NAME):
        try:
            os.unlink(path / name)
        except OSError:
            pass
    for folder in (path / "pairs", path):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _budgetopt_version():
    from ... import __version__

    return __version__


def _in_memory_run(meta, order, wanted, held):
    wanted_set = set(wanted)
    pairs = [p for p in order if p in wanted_set]
    per_context = {}
    oracles, scores, norms, pair_meta = [], [], [], []
    for c, q in pairs:
        oracle, s, v, pm = held[(c, q)]
        if c not in per_context:
            s, v = np.asarray(s, np.float32), np.asarray(v, np.float32)
            s.setflags(write=False)
            v.setflags(write=False)
            per_context[c] = (s, v)
        oracle = np.asarray(oracle, np.float32)
        oracle.setflags(write=False)
        oracles.append(oracle)
        scores.append(per_context[c][0])
        norms.append(per_context[c][1])
        pair_meta.append(pm)
    meta = dict(meta)
    missing = tuple(p for p in order if p not in wanted_set)
    return ProfileRun(meta=meta, pairs=tuple(pairs), oracles=tuple(oracles), scores=tuple(scores),
                      value_norms=tuple(norms), pair_meta=tuple(pair_meta), missing=missing)


# -- loading a model directory ----------------------------------------------------------------
def load_local_model(model_dir, *, device="auto", dtype="auto"):
    """Model and tokenizer from a local directory (never downloads anything).

    Parameters
    ----------
    model_dir : str or os.PathLike
        A directory written by ``save_pretrained`` (``config.json``, weights as safetensors
        or ``pytorch_model.bin``, tokenizer files).
    device : str, optional
        ``"auto"`` (default: ``cuda:$LOCAL_RANK`` when CUDA is available, else ``cpu``),
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    dtype : {"auto", "float32", "float16", "bfloat16"}, optional
        ``"auto"``: the checkpoint's dtype.

    Returns
    -------
    (model, tokenizer)
        The model in eval mode on ``device``.

    Raises
    ------
    CurvesFileError
        The directory is missing, has no ``config.json``, no weights or no tokenizer.
    InvalidInputError
        An unsupported ``model_type`` (checked before the weights are read), a bad ``device``
        or ``dtype``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(model_dir)
    if not path.is_dir():
        raise CurvesFileError(f"{model_dir}: no such model directory")
    for entry in os.scandir(path):  # a FIFO or device among the files read would block or never end
        if not (entry.is_file() or entry.is_dir()):
            raise CurvesFileError(
                f"{os.path.join(model_dir, entry.name)}: is not a regular file (a device, FIFO, socket or "
                "broken link) in the model directory"
            )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CurvesFileError(f"{model_dir}: not a model directory (no config.json)")
    if not any((path / name).is_file() for name in _WEIGHTS) and not any(path.glob("*.safetensors")):
        raise CurvesFileError(
            f"{model_dir}: no model weights (expected model.safetensors, a sharded safetensors "
            "index or pytorch_model.bin)"
        )
    try:
        config_bytes = _read_small(config_path)
    except OSError as exc:
        raise CurvesFileError(f"{config_path}: cannot be read ({exc.strerror or exc})") from None
    config = loads_json(config_bytes, str(config_path), standard=False)
    if not isinstance(config, dict):
        raise CurvesFileError(f"{config_path}: not a JSON object")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InvalidInputError(
            f"{model_dir}: model_type {model_type!r} is not supported; supported model types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if dtype != "auto" and dtype not in _DTYPES:
        raise InvalidInputError(f"`dtype` must be 'auto' or one of {', '.join(_DTYPES)}; got {dtype!r}")
    device = _resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # a broken tokenizer.json raises KeyError, Exception, ...
        raise CurvesFileError(f"{model_dir}: no usable tokenizer ({_first_line(exc)})") from None
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one line of output per command, not a loading bar
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the missing weights are reported below, as an error
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype="auto" if dtype == "auto" else _DTYPES[dtype],
            output_loading_info=True,
        )
    except MemoryError:
        raise
    except Exception as exc:  # a truncated or corrupt weights file raises whatever its reader raises
        raise CurvesFileError(f"{model_dir}: the model could not be loaded ({_first_line(exc)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        total = sum(1 for _ in model.state_dict())
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise CurvesFileError(
            f"{model_dir}: the weights hold {total - len(missing)} of the model's {total} tensors "
            f"(missing {len(missing)}: {shown}); profiling would use random weights"
        )
    return model.to(device).eval(), tokenizer


def _read_small(path, limit=16 * 2**20):
    """The bytes of the regular file ``path`` (at most ``limit``; a JSON config is small)."""
    path = check_input_file(path, "JSON file")
    if os.path.getsize(path) > limit:
        raise CurvesFileError(f"{path}: {os.path.getsize(path)} bytes; a JSON file here holds at most {limit}")
    with open(path, "rb") as f:
        return f.read()


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resolve_device(device):
    if not isinstance(device, str):
        raise InvalidTypeError(f"`device` must be a string such as 'cpu' or 'cuda:0'; got {device!r}")
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        text = os.environ.get("LOCAL_RANK", "0")
        if not text.strip().isdigit() or int(text) >= torch.cuda.device_count():
            raise InvalidInputError(
                f"`device` 'auto': the environment variable LOCAL_RANK={text!r} does not name one of this "
                f"machine's {torch.cuda.device_count()} CUDA devices; give --device explicitly"
            )
        return torch.device("cuda", int(text))
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise InvalidInputError(f"`device` {device!r} is not a torch device (try cpu, cuda, cuda:1)") from None
    if resolved.type == "cpu":
        return resolved
    backends = {
        "cuda": ("CUDA", lambda: torch.cuda.is_available(), lambda: torch.cuda.device_count()),
        "mps": ("MPS (Apple GPU)", lambda: torch.backends.mps.is_available(), lambda: 1),
        "xpu": ("XPU (Intel GPU)", lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
                lambda: torch.xpu.device_count()),
    }
    if resolved.type not in backends:
        raise InvalidInputError(
            f"`device` {device!r}: profiling runs on cpu, cuda, mps or xpu devices, not {resolved.type!r}"
        )
    name, available, count = backends[resolved.type]
    try:
        present = bool(available())
        devices = int(count()) if present else 0
    except Exception:  # a backend that fails to initialise is not there
        present, devices = False, 0
    if not present:
        raise InvalidInputError(f"`device` {device!r}: {name} is not available on this machine")
    if resolved.index is not None and resolved.index >= devices:
        raise InvalidInputError(
            f"`device` {device!r}: this machine has {devices} {resolved.type} device(s) (indices 0..{devices - 1})"
        )
    return resolved
