"""The ``budgetopt evaluate`` command: answers under compression, side by side.

Like :mod:`budgetopt.cli_profile`, it imports only the standard library and
:mod:`budgetopt._cli_common` at module level; torch, transformers and kvpress load inside
:func:`cmd_evaluate`, after the arguments and input files have been checked.
"""

from __future__ import annotations

import math
import os
import sys

from ._cli_common import (UsageError, check_output_path, fraction_below_one, non_negative_int, positive_int,
                          write_json)
from ._progress import Progress
from .cli_profile import shard_argument

DEFAULT_TASKS = "passkey,multikey,vartrack,span"
DEFAULT_METHODS = "full,snapkv,adakv,pyramidkv"
RUN_METHODS = "lukv,budgetpress,allocate,request,headkv,duoattention"


def add_evaluate_command(sub):
    """Register ``evaluate`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "evaluate",
        help="answer seeded long-context tasks under every compression method, against the full cache",
        description="Evaluate compression methods on MODEL_DIR (local files only): seeded RULER-style tasks "
                    "(or your JSON lines), each method's greedy answers, accuracy, agreement and KL to the "
                    "full-cache answer, per compression ratio. Writes a resumable directory with a Markdown and "
                    "JSON report and a figure.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory (save_pretrained layout; never downloaded)")
    p.add_argument("-o", "--output", required=True, metavar="EVAL",
                   help="evaluation directory to write, or to resume (naming more methods, ratios or settings "
                        "adds them to the finished examples)")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help=f"comma list of generated tasks (default {DEFAULT_TASKS}); all: passkey, multikey, "
                        "multivalue, vartrack, common, frequent, span")
    p.add_argument("--data", metavar="FILE.jsonl",
                   help='your examples instead of generated tasks: {"context", "questions", "answers"} per line; '
                        'answers null for a question without an answer string (accuracy not applicable)')
    p.add_argument("--haystack", nargs="+", metavar="TEXT",
                   help="UTF-8 text files to fill generated contexts with (default: Python's stdlib docstrings)")
    p.add_argument("--examples", type=positive_int, default=20, help="examples per task (default 20)")
    p.add_argument("--context-tokens", type=positive_int, default=1000,
                   help="target context length in the model's tokens (default 1000)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="task seed (default 0)")
    p.add_argument("--compression", type=fraction_below_one, nargs="+", default=[0.5, 0.75, 0.9],
                   help="kvpress compression ratios, the fraction REMOVED (default 0.5 0.75 0.9)")
    p.add_argument("--methods", default=None,
                   help=f"comma list (default {DEFAULT_METHODS}, plus {RUN_METHODS} with --profile): full, any "
                        "kvpress scorer (snapkv, knorm, expected_attention, ...), adakv, uniform, pyramidkv, "
                        "headkv, duoattention, lukv, budgetpress, allocate, request, probes and probes_rank (a run "
                        "profiled with probes; probes_rank ranks each head's tokens by the probes' attention)")
    p.add_argument("--probe-gain", type=float, default=None, metavar="G",
                   help="methods probes and probes_rank: the allocator's gain on its probe coefficients (default: "
                        "chosen by its cross-validation on the run)")
    p.add_argument("--scorer", default="snapkv", help="scorer of the wrapped methods (default snapkv)")
    p.add_argument("--profile", nargs="+", metavar="RUN",
                   help="calibration: profile run directories (budgetopt profile) on contexts disjoint from these")
    p.add_argument("--calibration", metavar="FILE.jsonl",
                   help="the calibration file of --profile, checked for overlap (default: the path the run records)")
    p.add_argument("--settings", default="question",
                   help="comma list: question (after the compressed context, kvpress's default), query_aware")
    p.add_argument("--max-new-tokens", type=positive_int, default=16, help="answer tokens (default 16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="model dtype (default: the checkpoint's)")
    p.add_argument("--shard", metavar="K/N", help="evaluate examples i with i %% N == K only; 'env' reads RANK/WORLD_SIZE")
    p.add_argument("--no-resume", action="store_true", help="start the directory over instead of resuming it")
    p.add_argument("--write-calibration", metavar="FILE.jsonl",
                   help="instead: write a calibration file for budgetopt profile from the other half of the haystack "
                        "(--examples contexts per task) and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_evaluate)


def _comma_list(text, option, allowed=None):
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"{option} needs at least one name")
    if len(set(items)) != len(items):
        raise UsageError(f"{option} names something twice: {text!r}")
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise UsageError(f"{option}: unknown {bad[0]!r}; choose from {', '.join(allowed)}")
    return items


def cmd_evaluate(args):
    from . import tasks as tasks_module
    from ._limits import MAX_TOKENS

    settings = _comma_list(args.settings, "--settings", ("question", "query_aware"))
    task_names = _comma_list(args.tasks, "--tasks", tasks_module.TASKS)
    shard = shard_argument(args.shard) if args.shard is not None else None
    if args.context_tokens >= MAX_TOKENS:
        raise UsageError(f"--context-tokens is too large; got {args.context_tokens}")
    comps = sorted(set(args.compression))
    calibration_out = None
    if args.write_calibration:
        calibration_out = check_output_path(args.write_calibration, (".jsonl",), option="--write-calibration")
    out = os.path.abspath(args.output)
    if calibration_out is None and not os.path.isdir(os.path.dirname(out)):
        raise UsageError(f"-o/--output: directory {os.path.dirname(out)!r} does not exist")
    paragraphs, haystack = None, None
    if args.haystack:
        paragraphs, haystack = tasks_module.paragraphs_from_files(args.haystack)
    data = tasks_module.read_examples(args.data) if args.data else None
    run = None
    if args.profile:
        from .runs import load_profile_run

        run = load_profile_run(*args.profile)
    methods = _comma_list(args.methods or (DEFAULT_METHODS + ("," + RUN_METHODS if run is not None else "")),
                          "--methods")
    try:
        from .torch.profiling.run import load_local_model
        from .torch import evaluate as ev
    except ImportError as exc:
        from .errors import MissingDependencyError

        raise MissingDependencyError(
            f"budgetopt evaluate needs torch, transformers and kvpress (pip install 'budgetopt[kvpress]'): {exc}"
        ) from None
    from .torch.profiler import SCORER_NAMES, resolve_scorer

    resolve_scorer(args.scorer)
    for name in methods:
        if name not in ev.METHOD_NAMES and name.replace("-", "_").lower() not in SCORER_NAMES:
            raise UsageError(f"--methods: unknown {name!r}; choose from "
                             f"{', '.join(ev.METHOD_NAMES + tuple(SCORER_NAMES))}")
    need = [n for n in methods if n in ev._NEEDS_RUN]
    if need and run is None:
        raise UsageError(f"--methods {','.join(need)} need --profile RUN (calibration on other contexts)")
    model, tokenizer = _load(load_local_model, args, tokenizer_only=True)
    length = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    if calibration_out is not None:
        lines = tasks_module.calibration_lines(task_names, args.examples, seed=args.seed,
                                               context_length=args.context_tokens, length=length,
                                               paragraphs=paragraphs)
        from ._io import write_atomic

        text = "\n".join(lines) + "\n"
        write_atomic(calibration_out, lambda f: f.write(text.encode("utf-8")))
        sys.stderr.write(f"wrote {calibration_out}: {len(lines)} calibration context(s), disjoint from the "
                         "evaluation contexts of the same haystack\n")
        return 0
    if data is not None:
        examples = data
    else:
        per_task = [tasks_module.make_examples(t, args.examples, seed=args.seed, context_length=args.context_tokens,
                                               length=length, paragraphs=paragraphs) for t in task_names]
        examples = [e for group in zip(*per_task) for e in group]  # interleaved: a partial run covers every task
    calibration_info = None
    if run is not None:
        path = args.calibration or (run.meta.get("calibration") or {}).get("path")
        if not path or not os.path.isfile(path):
            raise UsageError("--profile: give --calibration FILE.jsonl (the run's calibration file) so that "
                             "overlap with the evaluation contexts can be checked")
        info = tasks_module.check_disjoint(examples, path)
        calibration_info = {"pairs": len(run.pairs), "scorer": run.meta.get("scorer", {}).get("name"),
                            "sink": run.meta.get("sink"), "window": run.meta.get("window"), **info,
                            "disjointness": "no evaluation context shares a paragraph with a calibration context "
                                            "(checked)."}
    probed = [m for m in methods if m in ("probes", "probes_rank")]
    if args.probe_gain is not None and (not probed or not math.isfinite(args.probe_gain)
                                        or args.probe_gain < 0):
        raise UsageError("--probe-gain: must be a finite number >= 0, with --methods including probes or "
                         f"probes_rank; got {args.probe_gain}")
    probe_ids = None
    if probed:
        run, probe_ids = _with_probes(run, args.profile, path, tokenizer, probed[0])
    model, tokenizer = _load(load_local_model, args)
    config = model.config.get_text_config()
    head_shape = (int(config.num_hidden_layers),
                  int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    method_objs = ev.standard_methods(methods, scorer=args.scorer, run=run, head_shape=head_shape,
                                      probe_ids=probe_ids, probe_gain=args.probe_gain)
    from .torch.profiling.run import _versions

    meta = {"model": os.path.basename(os.path.abspath(args.model_dir)), "tasks": task_names if data is None else ["user"],
            "data": None if data is None else os.path.basename(args.data), "examples": args.examples,
            "context_tokens": args.context_tokens, "seed": args.seed, "compressions": comps, "methods": methods,
            "scorer": args.scorer, "settings": settings, "max_new_tokens": args.max_new_tokens,
            **({"probe_gain": args.probe_gain,
                "probe_fit": next(m.fitted for m in method_objs if m.name in probed)} if probed else {}),
            "haystack": haystack or tasks_module.stdlib_paragraphs()[1], "calibration": calibration_info,
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}", "device": str(model.device),
            "versions": _versions()}
    wanted = sum(1 for i in range(len(examples)) if shard is None or i % shard[1] == shard[0])
    bar = Progress(wanted, not args.no_progress, "evaluate")
    try:
        records = ev.evaluate(model, tokenizer, examples, method_objs, comps, settings=settings,
                              max_new_tokens=args.max_new_tokens, out_dir=args.output, meta=meta, shard=shard,
                              resume=not args.no_resume, progress=bar)
    finally:
        bar.close()
    paths = write_report(args.output, meta)
    sys.stderr.write(f"wrote {args.output}: {len(records)} example(s) of this call, report {', '.join(paths)}\n")
    return 0


def _with_probes(run, run_dirs, calibration_path, tokenizer, method="probes"):
    """The run with its probes attached, and the calibration file's probe texts as token ids
    (one set of probes for every context, the counts the run recorded)."""
    import dataclasses

    from .calibration import read_calibration
    from .errors import InvalidInputError
    from .runs import load_probe_run
    from .torch.probe_press import encode_probes

    counts = run.meta.get("probes") or []
    if not any(counts):
        raise InvalidInputError(
            f'--methods {method}: the profile run was made without probes; add "probes": true (or a list of probe '
            'texts) and "probe_tokens" to the calibration lines and run budgetopt profile again')
    contexts = read_calibration(calibration_path).contexts
    if [len(c.probes) for c in contexts] != list(counts):
        raise InvalidInputError(f"{calibration_path}: its probes are not the profile run's (probes per context "
                                "differ); give the run's calibration file")
    texts = {c.probes for c in contexts if c.probes}
    if len(texts) != 1:
        raise InvalidInputError(f"{calibration_path}: --methods {method} needs the same probes on every calibration "
                                f"line that has probes; found {len(texts)} different sets")
    return dataclasses.replace(run, probes=load_probe_run(*run_dirs)), encode_probes(tokenizer, list(texts.pop()))


def _load(load_local_model, args, tokenizer_only=False):
    if tokenizer_only:
        from pathlib import Path

        from transformers import AutoTokenizer

        from .errors import CurvesFileError

        if not Path(args.model_dir).is_dir():
            raise CurvesFileError(f"{args.model_dir}: no such model directory")
        try:
            return None, AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CurvesFileError(f"{args.model_dir}: no usable tokenizer ({str(exc).strip().splitlines()[0]})") from None
    return load_local_model(args.model_dir, device=args.device, dtype=args.dtype)


def write_report(out_dir, meta):
    """``report.json``, ``report.md`` and (with matplotlib) ``report.png`` from every example
    file of ``out_dir``; returns the names written."""
    from ._io import write_atomic
    from .evaluation import format_markdown, load_records, plot_report, summarise

    report = summarise(load_records(out_dir))
    report["meta"] = {k: v for k, v in meta.items() if k != "versions"}
    write_json(os.path.join(out_dir, "report.json"), report)
    text = format_markdown(report, meta=meta) + "\n"
    write_atomic(os.path.join(out_dir, "report.md"), lambda f: f.write(text.encode("utf-8")))
    names = ["report.md", "report.json"]
    try:
        plot_report(report, os.path.join(out_dir, "report.png"))
        names.append("report.png")
    except ImportError:
        pass
    return names
