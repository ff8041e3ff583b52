"""Which heads carry the answer: oracle mass over the answer's span, and a curve objective weighted to it.

A profile run's oracle is each head's attention to every context token while the model answers.
On retrieval tasks a few tokens decide the answer (the pass key, the value to copy), so two
splits can keep nearly the same oracle mass and still differ in whether the heads that read
those tokens keep them. This script measures that, for the static splits ``budgetopt
evaluate`` compares, and tries a curve objective weighted to the answer's span.

* **Held-out mass** (no model run; seconds): leave one calibration context out, build each
  split from the other contexts, and measure on the held-out context's pairs the share of the
  oracle mass kept (``total``) and the share of the oracle mass over the answer's span kept
  (``span``: the tokens of every occurrence of an accepted answer in the context). Splits:
  ``table`` (the LU-KV table, kvpress's ``LUKVPress``), ``allocate`` (the solver on the mean
  curves), ``span_mix`` (the same on curves of ``oracle / sum + w * span oracle / sum``, per
  pair, ``w = --span-weight``) and ``span_only`` (curves of the span oracle alone). A head
  keeps ``round(f * T)`` tokens, ``f`` its kept fraction, ``T`` the context's length.
* **Answers** (``--evaluate N``): ``budgetopt evaluate``'s machinery on ``N`` examples per
  task (question after the compressed context), methods ``full``, ``allocate``,
  ``span_mix`` and ``span_only``, each split from every calibration pair; the report lands
  in ``--eval-out`` (resumable, as ``budgetopt evaluate``'s).

The calibration file's lines must carry ``"answers"`` (one list per question, as
:func:`budgetopt.tasks.read_examples` reads them), or be the generated tasks that
``budgetopt evaluate --write-calibration`` writes: then each line is generated again from its
id with ``--context-tokens`` and must match the file. Usage (the commands of
``benchmarks/results/evaluate_smollm2_1k/README.md`` make ``run`` and ``cal.jsonl``)::

    python benchmarks/answer_span_objective.py --model smollm2 --run run --calibration cal.jsonl \\
        --context-tokens 1000 --evaluate 10 --eval-out eval_span

Output: ``answer_span_objective.txt`` and ``.json`` in a new folder under ``benchmarks/out/``
(``--out DIR``), ``--record`` also in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import describe, one_thread_model, profile_run_or_exit, table_row, write_result  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt import tasks  # noqa: E402

#: The splits compared, in report order.
SPLITS = ("table", "allocate", "span_mix", "span_only")
TASKS = ("passkey", "multikey", "vartrack", "span")


def calibration_answers(calibration, tokenizer, context_tokens):
    """Accepted answers of every calibration context's questions: ``answers[c][q]``."""
    from budgetopt.calibration import read_calibration

    cal = read_calibration(calibration)
    lines = Path(calibration).read_text(encoding="utf-8").splitlines()
    length = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    out = []
    for ctx in cal.contexts:
        given = json.loads(lines[ctx.line - 1]).get("answers")
        if given is not None:
            if not (isinstance(given, list) and len(given) == len(ctx.questions)
                    and all(isinstance(a, list) and all(isinstance(x, str) for x in a) for a in given)):
                raise SystemExit(f'{calibration}:{ctx.line}: "answers" must be a list with one list of strings per '
                                 "question")
            out.append([tuple(a) for a in given])
            continue
        task, _, index = (ctx.id or "").rpartition("-")
        if task not in tasks.TASKS or not index.isdigit() or context_tokens is None:
            raise SystemExit(f"{calibration}:{ctx.line}: no \"answers\"; give them, or pass --context-tokens for a "
                             "file written by budgetopt evaluate --write-calibration")
        ex = tasks.make_examples(task, 1, start=int(index), split="calibration", context_length=context_tokens,
                                 length=length)[0]
        if ex.context != ctx.context:
            raise SystemExit(f"{calibration}:{ctx.line}: {ctx.id} is not the generated task at "
                             f"--context-tokens {context_tokens}")
        out.append([ex.answers] * len(ctx.questions))
    return cal, out


def answer_masks(run, cal, answers, tokenizer):
    """One boolean ``(T,)`` array per pair of ``run``: the context tokens that overlap an
    occurrence of one of the pair's accepted answers."""
    from budgetopt.torch.profiling.run import _template_parts

    masks = []
    for (c, q), oracle in zip(run.pairs, run.oracles):
        context = cal.contexts[c].context
        text, _ = _template_parts(tokenizer, context)
        start = len(text) - len(context)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) != oracle.shape[-1]:
            raise SystemExit(f"pair {(c, q)}: the context tokenizes to {len(enc['input_ids'])} tokens, the run "
                             f"holds {oracle.shape[-1]}; is this the run's calibration file and model?")
        spans = []
        for answer in answers[c][q]:
            at = context.find(answer)
            while answer and at >= 0:
                spans.append((start + at, start + at + len(answer)))
                at = context.find(answer, at + 1)
        masks.append(np.array([any(a < e and s < b for s, e in spans) for a, b in enc["offset_mapping"]]))
    return masks


def subset(run, masks, keep):
    """The pairs of ``run`` (and their masks) whose context ``keep(c)`` accepts."""
    idx = [i for i, (c, _) in enumerate(run.pairs) if keep(c)]
    pick = lambda xs: tuple(xs[i] for i in idx)
    return dataclasses.replace(run, pairs=pick(run.pairs), oracles=pick(run.oracles), scores=pick(run.scores),
                               value_norms=pick(run.value_norms), pair_meta=pick(run.pair_meta)), pick(masks)


def weighted(run, masks, weight):
    """``run`` with each pair's oracle replaced by ``oracle / sum + weight * span / sum(span)``
    (``weight=None``: the span oracle alone, normalised)."""
    out = []
    for oracle, mask in zip(run.oracles, masks):
        o = oracle.astype(np.float64)
        span = o * mask
        span = span / span.sum() if span.sum() > 0 else span
        out.append((span if weight is None else o / o.sum() + weight * span).astype(np.float32))
    return dataclasses.replace(run, oracles=tuple(out))


def split_curves(run, masks, kind, weight):
    """The mean curves an ``allocate``-type split solves (``budgetopt evaluate``'s rule for
    contexts of different lengths)."""
    from budgetopt.runs import curves_from_run
    from budgetopt.torch.evaluate import _mean_curves

    source = {"allocate": run, "span_mix": None, "span_only": None}[kind]
    if source is None:
        source = weighted(run, masks, weight if kind == "span_mix" else None)
    return _mean_curves(source, int(run.meta["sink"]), int(run.meta["window"]), curves_from_run)


def allocation(curves, compression):
    """``budgetopt.allocate`` at ``compression`` (the fraction removed), as ``evaluate``'s ``allocate``."""
    floor = int(curves.grid[0]) * int(np.prod(curves.head_shape))
    return budgetopt.allocate(curves, max(budgetopt.tokens_from_fraction(1.0 - compression, curves.capacity), floor))


def kept_fractions(run, masks, kind, compression, weight):
    """Each head's kept fraction ``(layers, kv_heads)`` under split ``kind``."""
    if kind == "table":
        table = budgetopt.lukv_table_from_run(run, progress=None)[0]
        return 1.0 - table[int(round(compression * 100)) - 1]
    curves = split_curves(run, masks, kind, weight)
    return allocation(curves, compression).budgets / curves.grid.max()


def held_out_mass(run, masks, compressions, weight):
    """Rows ``{compression, split, total, span, span_per_pair}``: leave one context out."""
    sink, window = int(run.meta["sink"]), int(run.meta["window"])
    contexts = sorted({c for c, _ in run.pairs})
    rows = []
    for compression in compressions:
        for kind in SPLITS:
            total, span = [], []
            for held in contexts:
                train, train_masks = subset(run, masks, lambda c: c != held)
                f = kept_fractions(train, train_masks, kind, compression, weight)
                test, test_masks = subset(run, masks, lambda c: c == held)
                for oracle, scores, mask in zip(test.oracles, test.scores, test_masks):
                    t = oracle.shape[-1]
                    b = np.clip(np.rint(f * t).astype(np.int64), sink + window, t) - sink - window
                    heads = np.indices(b.shape)
                    for values, out in ((oracle, total), (oracle * mask, span)):
                        u = budgetopt.curves_from_scores(values, scores, sink=sink, window=window).utility
                        out.append(float(u[heads[0], heads[1], b].sum() / u[..., -1].sum()))
            rows.append({"compression": compression, "split": kind, "total": float(np.mean(total)),
                         "span": float(np.mean(span)), "total_per_pair": total, "span_per_pair": span})
    return rows


def downstream(model, tokenizer, run, masks, n, compressions, weight, out_dir, context_tokens, names):
    """``budgetopt evaluate`` on ``n`` examples per task with the ``allocate``-type splits."""
    from budgetopt.cli_evaluate import write_report
    from budgetopt.torch import evaluate as ev
    from budgetopt.torch.press import BudgetPress
    from budgetopt.torch.profiler import resolve_scorer

    sink, window = int(run.meta["sink"]), int(run.meta["window"])

    def method(kind):
        curves = split_curves(run, masks, kind, weight)
        make = lambda c: BudgetPress(resolve_scorer("snapkv"), allocation(curves, c),
                                     head_capacity=int(curves.grid[-1]), sink=sink, window=window)
        return ev.Method(kind, make)

    methods = [ev.Method("full", lambda c: None)] + [method(k) for k in ("allocate", "span_mix", "span_only")]
    length = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    per_task = [tasks.make_examples(t, n, context_length=context_tokens, length=length) for t in TASKS]
    examples = [e for group in zip(*per_task) for e in group]
    meta = {"model": "smollm2", "tasks": list(TASKS), "examples": n, "context_tokens": context_tokens, "seed": 0,
            "compressions": list(compressions), "methods": [m.name for m in methods], "scorer": "snapkv",
            "settings": ["question"], "max_new_tokens": 16,
            "calibration": {"run": names[0], "file": names[1], "span_weight": weight}}
    start = time.time()
    ev.evaluate(model, tokenizer, examples, methods, list(compressions), out_dir=out_dir, meta=meta, max_new_tokens=16,
                progress=lambda done, total: print(f"evaluate {done}/{total} {time.time() - start:.0f} s", flush=True))
    write_report(out_dir, meta)
    return json.loads(Path(out_dir, "report.json").read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="model folder, or smollm2 (the wheel's model)")
    parser.add_argument("--run", required=True, help="a budgetopt profile output folder")
    parser.add_argument("--calibration", required=True, help="the run's calibration file")
    parser.add_argument("--context-tokens", type=int, default=None,
                        help="the --context-tokens the calibration file was written with (lines without answers)")
    parser.add_argument("--compression", type=table_row, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--span-weight", type=float, default=1.0, help="w of span_mix (default 1)")
    parser.add_argument("--evaluate", type=int, default=0, metavar="N", help="examples per task (default 0: none)")
    parser.add_argument("--eval-out", default=None, help="the evaluation folder (with --evaluate)")
    parser.add_argument("--out", default=None, help="folder of the report (default: a new one under benchmarks/out/)")
    parser.add_argument("--record", action="store_true", help="also write benchmarks/results/answer_span_objective[_LABEL].*")
    parser.add_argument("--label", default=None, help="a suffix of the report's name (for example 2k)")
    args = parser.parse_args(argv)
    if args.evaluate < 0 or (args.evaluate and not args.eval_out):
        parser.error(f"--evaluate: a number of examples per task >= 0, with --eval-out; got {args.evaluate}")
    if not (np.isfinite(args.span_weight) and args.span_weight >= 0):
        parser.error(f"--span-weight: must be a finite number >= 0; got {args.span_weight}")
    if args.context_tokens is not None and args.context_tokens < 1:
        parser.error(f"--context-tokens: must be >= 1; got {args.context_tokens}")
    run = profile_run_or_exit(args.run, parser)
    if not os.path.isfile(args.calibration):
        parser.error(f"--calibration: {args.calibration}: no such file")
    env, model, tokenizer = one_thread_model("answer_span_objective", argv, args.model)
    try:
        cal, answers = calibration_answers(args.calibration, tokenizer, args.context_tokens)
    except budgetopt.BudgetoptError as e:
        parser.error(f"--calibration: {e}")
    masks = answer_masks(run, cal, answers, tokenizer)
    rows = held_out_mass(run, masks, args.compression, args.span_weight)
    lines = describe(env) + [f"command : {env['command']}", f"run: {len(run.pairs)} pairs, sink {run.meta['sink']}, window {run.meta['window']}; "
             f"answer-span tokens per pair: {[int(m.sum()) for m in masks]}", "",
             "held out (leave one context out): share of the oracle mass kept, total / over the answer's span"]
    for r in rows:
        lines.append(f"  {r['compression']:.2f} {r['split']:9s} total {r['total']:.3f}  span {r['span']:.3f}")
    report = None
    if args.evaluate:
        report = downstream(model, tokenizer, run, masks, args.evaluate, args.compression, args.span_weight,
                            args.eval_out, args.context_tokens or 1000,
                            (os.path.basename(os.path.normpath(args.run)), os.path.basename(args.calibration)))
        lines += ["", f"answers: see {args.eval_out}/report.md"]
    name = "answer_span_objective" + (f"_{args.label}" if args.label else "")
    write_result(name, args.out, args.record,
                 {"env": env, "rows": rows, "answer_tokens": [int(m.sum()) for m in masks],
                  "report": report}, lines)


if __name__ == "__main__":
    main()
