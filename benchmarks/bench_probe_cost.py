"""Benchmark: what decoding probe queries costs per request, against the context's prefill.

For the first ``--contexts`` contexts of a calibration file (tokenized as ``budgetopt
profile`` does), interleaved, medians of ``--repeats``:

* ``prefill``: one forward pass over the context with a cache (what every request pays);
* ``probes, plain``: from that cache, each default probe (``budgetopt.calibration.
  DEFAULT_PROBES``) fed and greedily decoded for ``k`` tokens, one probe after the other, the
  cache cropped back after each (no oracle: the least a probe signal costs without batching);
* ``probes, profiled``: :func:`budgetopt.torch.profiling.context.profile_context` on the
  same probes (its own prefill with the SnapKV scorer's hook, plus one oracle attention row
  per layer and step): what ``bench_request_probes.py`` ran.

Ratios are against ``prefill`` measured in the same run. The probes are not batched here
(a batched version would share each step's weight reads between the three probes).

Usage::

    python benchmarks/bench_probe_cost.py --calibration runs/smollm2-snapkv-calibration.jsonl
    python benchmarks/bench_probe_cost.py --calibration FILE --contexts 1 --repeats 1  # quick

Output: ``bench_probe_cost.txt`` and ``.json`` in a new folder under ``benchmarks/out/``
(``--out DIR``), ``--record`` also in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import one_thread_model, probe_timing_options, write_result  # noqa: E402



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    probe_timing_options(parser, "bench_probe_cost", contexts=2, repeats=3)
    args = parser.parse_args(argv)

    import torch

    from budgetopt.calibration import DEFAULT_PROBES, Calibration, CalibrationContext, read_calibration
    from budgetopt.torch.profiling.context import profile_context
    from budgetopt.torch.profiling.run import encode_calibration

    env, model, tokenizer = one_thread_model("bench_probe_cost", argv, args.model)
    cal = read_calibration(args.calibration)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    rows = []
    for line in cal.contexts[: args.contexts]:
        probe_cal = Calibration(path=cal.path, sha256="", contexts=(CalibrationContext(
            context=line.context, questions=DEFAULT_PROBES, answer_prefixes=("",) * len(DEFAULT_PROBES), id=line.id,
            line=line.line),))
        (enc,) = encode_calibration(tokenizer, probe_cal, sink=4, window=1, max_new_tokens=max(args.probe_tokens))
        ctx = torch.tensor(enc.context_ids)[None]
        probes = [torch.tensor(q)[None] for q in enc.question_ids]
        times = {"prefill": []}
        for k in args.probe_tokens:
            times[f"probes plain k={k}"] = []
            times[f"probes profiled k={k}"] = []
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            with torch.inference_mode():
                t = time.perf_counter()
                out = model(input_ids=ctx, use_cache=True, logits_to_keep=1)
                times["prefill"].append(time.perf_counter() - t)
                cache = out.past_key_values
                for k in args.probe_tokens:
                    t = time.perf_counter()
                    for ids in probes:
                        for _ in range(k):
                            step = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                            ids = step.logits[:, -1].argmax(-1, keepdim=True)
                        cache.crop(ctx.shape[1])
                    times[f"probes plain k={k}"].append(time.perf_counter() - t)
            for k in args.probe_tokens:
                t = time.perf_counter()
                profile_context(model, ctx[0], [p[0] for p in probes], scorer="snapkv", max_new_tokens=k,
                                stop_at_eos=False)
                times[f"probes profiled k={k}"].append(time.perf_counter() - t)
        med = {name: float(np.median(v[1:])) for name, v in times.items()}
        row = {"context_tokens": ctx.shape[1], "seconds": med,
               "ratio_to_prefill": {name: med[name] / med["prefill"] for name in med}}
        rows.append(row)
        log(f"T = {ctx.shape[1]}: " + ", ".join(f"{name} {med[name]:.2f} s ({row['ratio_to_prefill'][name]:.1f}x)"
                                                for name in med))
    log(f"({env['command']}; commit {(env['git']['commit'] or 'unknown')[:10]}"
        f"{' + uncommitted changes' if env['git']['uncommitted'] else ''}; medians of {args.repeats} after a warm-up)")
    result = {"environment": env, "probes": list(DEFAULT_PROBES), "rows": rows}
    write_result("bench_probe_cost", args.out, args.record, result, lines)
    return result


if __name__ == "__main__":
    main()
