"""Benchmark: what ProbeBudgetPress adds per request, against the context's prefill.

For the first ``--contexts`` contexts of a calibration file (tokenized as ``budgetopt
profile`` does), interleaved, medians of ``--repeats`` after a dropped warm-up round:

* ``prefill``: the pipeline's context prefill, ``model.model(context, cache)``, no press;
* ``request press``: the same under :class:`budgetopt.torch.RequestBudgetPress` (SnapKV
  scores, ``layerwise=True``, 80% compression): scoring and one global split, no probes;
* ``probe press k``: the same under :class:`budgetopt.torch.ProbeBudgetPress` with the
  default probes decoding ``k`` tokens as one batch (the online path of issue 21);
* ``probes only k``: :func:`budgetopt.torch.probe_oracles` alone from a filled cache.

The allocators are fitted on seeded random arrays of the model's geometry (the budgets'
values do not change the work done). Ratios are against ``prefill`` in the same run.

Usage::

    python benchmarks/bench_probe_press.py --model /path/to/smollm2 --calibration FILE
    python benchmarks/bench_probe_press.py --calibration FILE --contexts 1 --repeats 1  # quick

Output: ``bench_probe_press.txt`` and ``.json`` in a new folder under ``benchmarks/out/``
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



def synthetic_allocator(layers, kv_heads, *, probes, seed=0):
    import budgetopt

    rng = np.random.default_rng(seed)
    scores, oracles, probe = [], [], []
    for c in range(3):
        context_probes = [rng.gamma(0.5, size=(layers, kv_heads, 200)) for _ in range(3)]
        for _ in range(2):
            s = rng.gamma(0.5, size=(layers, kv_heads, 200))
            scores.append(s)
            oracles.append(s ** 2 * rng.random(s.shape) + context_probes[0] * rng.random(s.shape))
            probe.append(context_probes)
    extra = dict(probe_oracles=probe, probe_gain=1.0) if probes else {}
    return budgetopt.RequestAllocator.fit(oracles, scores, sink=4, window=1, shrinkage=0.25, **extra)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    probe_timing_options(parser, "bench_probe_press", contexts=1, repeats=2)
    parser.add_argument("--compression", type=float, default=0.8)
    args = parser.parse_args(argv)

    import torch
    from kvpress import SnapKVPress
    from transformers import DynamicCache

    from budgetopt.calibration import DEFAULT_PROBES, read_calibration
    from budgetopt.torch import ProbeBudgetPress, RequestBudgetPress, encode_probes, probe_oracles
    from budgetopt.torch.geometry import config_heads
    from budgetopt.torch.profiling.run import _template_parts

    env, model, tokenizer = one_thread_model("bench_probe_press", argv, args.model)
    model.set_attn_implementation("sdpa")
    layers, _, kv_heads = config_heads(model.config)
    request_alloc = synthetic_allocator(layers, kv_heads, probes=False)
    probe_alloc = synthetic_allocator(layers, kv_heads, probes=True)
    probe_ids = encode_probes(tokenizer, DEFAULT_PROBES)
    cal = read_calibration(args.calibration)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    def prefill(ctx, press=None):
        cache = DynamicCache()
        t = time.perf_counter()
        with torch.inference_mode():
            if press is None:
                model.model(input_ids=ctx, past_key_values=cache)
            else:
                with press(model):
                    model.model(input_ids=ctx, past_key_values=cache)
        return time.perf_counter() - t, cache

    presses = {"request press": RequestBudgetPress(SnapKVPress(), request_alloc, compression_ratio=args.compression,
                                                   layerwise=True)}
    for k in args.probe_tokens:
        presses[f"probe press k={k}"] = ProbeBudgetPress(SnapKVPress(), probe_alloc, probe_ids, probe_tokens=k,
                                                         compression_ratio=args.compression, stop_at_eos=False)
    rows = []
    for line in cal.contexts[: args.contexts]:
        context_text, _ = _template_parts(tokenizer, line.context)
        ctx = torch.tensor(tokenizer.encode(context_text, add_special_tokens=False))[None]
        times = {"prefill": []}
        times.update({name: [] for name in presses})
        times.update({f"probes only k={k}": [] for k in args.probe_tokens})
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            seconds, cache = prefill(ctx)
            times["prefill"].append(seconds)
            for k in args.probe_tokens:
                t = time.perf_counter()
                probe_oracles(model, cache, probe_ids, probe_tokens=k, stop_at_eos=False)
                times[f"probes only k={k}"].append(time.perf_counter() - t)
            del cache
            for name, press in presses.items():
                times[name].append(prefill(ctx, press)[0])
        med = {name: float(np.median(v[1:])) for name, v in times.items()}
        row = {"context_tokens": ctx.shape[1], "seconds": med,
               "ratio_to_prefill": {name: med[name] / med["prefill"] for name in med}}
        rows.append(row)
        log(f"T = {ctx.shape[1]}: " + ", ".join(f"{name} {med[name]:.2f} s ({row['ratio_to_prefill'][name]:.2f}x)"
                                                for name in med))
    log(f"({env['command']}; commit {(env['git']['commit'] or 'unknown')[:10]}"
        f"{' + uncommitted changes' if env['git']['uncommitted'] else ''}; {len(DEFAULT_PROBES)} default probes "
        f"batched; medians of {args.repeats} after a warm-up; one torch thread)")
    result = {"environment": env, "probes": list(DEFAULT_PROBES), "compression": args.compression, "rows": rows}
    write_result("bench_probe_press", args.out, args.record, result, lines)
    return result


if __name__ == "__main__":
    main()
