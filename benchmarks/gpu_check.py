"""GPU check of budgetopt.torch: CUDA equals CPU, and how fast ``compact`` moves a KV cache.

One prepared script (under 3 minutes on one H200):

1. ``keep_mask``, ``compact``, ``CompactKV.to_varlen`` and ``reduce_gqa`` on CUDA give the
   same results as on the CPU, on seeded inputs in float32, float16 and bfloat16 (random,
   tied, and with signed zeros, NaN and infinities; host and device budgets; contiguous and
   strided caches).
2. ``compact`` over 32 layers x 8 KV heads x 131,072 tokens x head_dim 128 in bfloat16 at a
   20% budget (per-head budgets around 20%, exact total), timed with CUDA events after a
   warm-up, one layer per call. Throughput is reported against the bytes the issue counts
   (read K and V once, write the kept K and V) and, separately, against the bytes a gather
   physically moves (read and write the kept rows), each as GB/s and as a fraction of the
   card's device-to-device copy bandwidth measured in the same run (``copy_`` of a large
   tensor, counted as bytes read + bytes written).
3. Memory: kept bytes after compaction against kvpress-style masking, which keeps the full
   tensors (plus three int64 indices per evicted token in ``masked_key_indices``); measured
   with ``torch.cuda.memory_allocated`` as well as counted.
4. ``BudgetPress(mode="varlen")`` (skip with ``--skip-varlen``): the decoding path through
   ``torch.nn.attention.varlen.varlen_attn`` (bfloat16, float16) against the float32
   per-sequence loop, heads with no kept token included; ``generate`` against
   ``mode="mask"`` on a tiny Llama (float32 and bfloat16, one row left-padded); cache bytes
   after pre-filling and decode time per token of ``full``, ``gather`` and ``varlen`` at
   32,768 tokens (4 layers x 8 KV heads x head_dim 128, bfloat16, a skewed per-layer split
   at 20% kept; batch 1 and 8).

Prints a JSON summary and writes it to ``$OUT/gpu_check.json`` when ``OUT`` is set.

Usage::

    python benchmarks/gpu_check.py            # needs CUDA
    python benchmarks/gpu_check.py --smoke    # tiny sizes; runs on the CPU too (tests use it)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests"))  # the CPU reference for varlen attention (smoke runs)

from _env import record  # noqa: E402
from budgetopt.rounding import keep_counts_from_prune_ratios, tokens_from_fraction  # noqa: E402
from budgetopt.torch import compact, keep_mask, reduce_gqa  # noqa: E402
from reference_varlen import cpu_varlen  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GiB = 2**30


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, reps):
    """Median seconds of ``fn()`` over ``reps`` runs (CUDA events on a GPU); each run's
    outputs stay alive until it has been timed."""
    times = []
    for _ in range(reps):
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        del out
    return float(np.median(times))


def _same(a, b):
    """Bitwise equality of two tensors (moved to the CPU)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        a, b = a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    return bool(torch.equal(a, b))


def _same_compact(x, y):
    return all(_same(getattr(x, n), getattr(y, n)) for n in ("keys", "values", "positions", "lengths", "valid")) \
        and x.total == y.total


def _same_varlen(x, y):
    return all(_same(getattr(x, n), getattr(y, n)) for n in ("keys", "values", "positions", "cu_seqlens")) \
        and x.max_seqlen == y.max_seqlen


def check_equality(device, size):
    """Compare every adapter on ``device`` with the CPU, per dtype."""
    batch, kv_heads, group, length, dim = size
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    budgets = rng.integers(0, length + 1, size=(batch, kv_heads))
    budgets[0, 0], budgets[-1, -1] = 0, length + 5  # zero and above T
    sink, window = 4, 16
    results = {}
    for name, dtype in DTYPES.items():
        keys = torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype)
        values = torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype)
        query_scores = torch.randn(batch, kv_heads * group, length, generator=gen).to(dtype)
        tied = (torch.randint(0, 4, (batch, kv_heads, length), generator=gen).to(dtype) / 4)
        special = torch.randn(batch, kv_heads, length, generator=gen)
        picks = torch.randint(0, 6, special.shape, generator=gen)
        for code, value in enumerate((-0.0, 0.0, float("nan"), float("inf"), float("-inf"))):
            special[picks == code] = value  # about 1/6 of each
        special = special.to(dtype)
        gpu = lambda t: t.to(device)  # noqa: E731
        row = {}
        cases = (("random", reduce_gqa(query_scores, kv_heads, how="max")), ("tied", tied), ("special", special))
        for label, scores in cases:
            cpu_mask = keep_mask(scores, budgets, sink=sink, window=window)
            dev_mask = keep_mask(gpu(scores), budgets, sink=sink, window=window)
            row[f"keep_mask_{label}"] = _same(cpu_mask, dev_mask)
            cpu_kv = compact(keys, values, scores, budgets, sink=sink, window=window)
            dev_kv = compact(gpu(keys), gpu(values), gpu(scores), budgets, sink=sink, window=window)
            row[f"compact_{label}"] = _same_compact(cpu_kv, dev_kv)
            dev_kv_tensor_budgets = compact(gpu(keys), gpu(values), gpu(scores), gpu(torch.as_tensor(budgets)),
                                            sink=sink, window=window)
            row[f"compact_{label}_device_budgets"] = _same_compact(cpu_kv, dev_kv_tensor_budgets)
            strided_k = gpu(keys).transpose(1, 2).contiguous().transpose(1, 2)
            strided_v = gpu(values).transpose(1, 2).contiguous().transpose(1, 2)
            dev_kv_strided = compact(strided_k, strided_v, gpu(scores), budgets, sink=sink, window=window)
            row[f"compact_{label}_strided"] = _same_compact(cpu_kv, dev_kv_strided)
            row[f"to_varlen_{label}"] = _same_varlen(cpu_kv.to_varlen(), dev_kv.to_varlen())
        row["reduce_gqa_max"] = _same(reduce_gqa(query_scores, kv_heads, how="max"),
                                      reduce_gqa(gpu(query_scores), kv_heads, how="max"))
        mean_cpu = reduce_gqa(query_scores, kv_heads, how="mean").double()
        mean_dev = reduce_gqa(gpu(query_scores), kv_heads, how="mean").double().cpu()
        diff = float((mean_cpu - mean_dev).abs().max())
        spacing = float(torch.finfo(dtype).eps) * float(mean_cpu.abs().max())
        row["reduce_gqa_mean_max_abs_diff"] = diff
        row["reduce_gqa_mean_within_1ulp"] = diff <= spacing  # summation order may differ
        results[name] = row
    flags = [v for row in results.values() for k, v in row.items() if isinstance(v, bool)]
    return {"all_equal": all(flags), "per_dtype": results,
            "shape": {"batch": batch, "kv_heads": kv_heads, "query_group": group, "T": length, "head_dim": dim,
                      "sink": sink, "window": window}}


def make_budgets(layers, kv_heads, length, fraction, seed=0):
    """Per-head budgets varying around ``fraction`` (+-50%) with an exact total."""
    rng = np.random.default_rng(seed)
    keep = fraction * (1.0 + rng.uniform(-0.5, 0.5, size=layers * kv_heads))
    keep *= fraction / keep.mean()
    counts = keep_counts_from_prune_ratios(1.0 - keep, length).reshape(layers, kv_heads)
    return counts, tokens_from_fraction(fraction, layers * kv_heads * length)


def measure_copy_bandwidth(device, nbytes, reps):
    """Device-to-device ``copy_`` bandwidth, bytes read + bytes written per second."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = _time(lambda: dst.copy_(src), device, reps)
    del src, dst
    return 2 * nbytes / seconds, seconds


def row_copy_variants(keys, kv, device, reps):
    """Times of four ways to gather the same kept rows of one layer (informative)."""
    batch, heads, length, dim = keys.shape
    source = kv.positions.clamp(min=0)
    rows = ((torch.arange(batch * heads, device=device) * length).view(batch, heads, 1) + source).reshape(-1)
    flat = keys.reshape(-1, dim)
    words = flat.view(torch.int64) if (dim * keys.element_size()) % 8 == 0 else flat
    index = source.unsqueeze(-1).expand(batch, heads, source.shape[-1], dim)
    words4d = keys.view(torch.int64) if (dim * keys.element_size()) % 8 == 0 else keys
    word_index = source.unsqueeze(-1).expand(batch, heads, source.shape[-1], words4d.shape[-1])
    variants = {
        "index_select_int64_words": lambda: words.index_select(0, rows),
        "index_select_native_dtype": lambda: flat.index_select(0, rows),
        "torch_gather_dim2": lambda: keys.gather(2, index),
        "torch_gather_dim2_int64_words": lambda: words4d.gather(2, word_index),  # what compact does
    }
    out = {}
    for name, fn in variants.items():
        fn()
        out[name] = _time(fn, device, reps) * 1e3
    return out


def time_compact(device, budgets, kv_heads, length, dim, reps):
    """Timings of ``compact`` over every layer, one call per layer (the normal use) and one
    call for all layers stacked along the batch axis (no per-call overhead)."""
    layers = budgets.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (layers, kv_heads, length, dim)
    all_keys = torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
    all_values = torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
    all_scores = torch.randn((layers, kv_heads, length), device=device, generator=gen)
    keys = [all_keys[i : i + 1] for i in range(layers)]  # contiguous per-layer views
    values = [all_values[i : i + 1] for i in range(layers)]
    scores = [all_scores[i : i + 1] for i in range(layers)]
    device_budgets = torch.as_tensor(budgets, device=device)
    tops = [int(b.max()) for b in budgets]
    _sync(device)

    runs = {
        # One call per layer with host budgets: no host synchronisation at all.
        "compact": lambda: [compact(keys[i], values[i], scores[i], budgets[i]) for i in range(layers)],
        # Budgets already on the device: one synchronisation per layer (the max budget).
        "compact_device_budgets": lambda: [compact(keys[i], values[i], scores[i], device_budgets[i])
                                           for i in range(layers)],
        # All layers in one call (layers as the batch axis; padding to the global max budget).
        "compact_one_call_all_layers": lambda: compact(all_keys, all_values, all_scores, budgets),
        "keep_mask": lambda: [keep_mask(scores[i], budgets[i]) for i in range(layers)],
        "argsort": lambda: [torch.argsort(scores[i], dim=-1, descending=True, stable=True) for i in range(layers)],
        # The selection step compact now uses instead of a full argsort.
        "topk": lambda: [scores[i].topk(tops[i], dim=-1, sorted=True) for i in range(layers)],
    }
    for fn in runs.values():
        fn()  # warm-up
    seconds = {name: _time(fn, device, reps) for name, fn in runs.items()}
    one = compact(keys[0], values[0], scores[0], budgets[0])
    variants = row_copy_variants(keys[0], one, device, reps)
    return seconds, variants


def measure_memory(device, budgets, kv_heads, length, dim):
    """Compact a cache held as one tensor per layer, one layer at a time, freeing each full
    layer once compacted; compare with kvpress-style masking, which keeps the full cache."""
    layers = budgets.shape[0]
    itemsize = 2
    keys = [torch.randn(1, kv_heads, length, dim, device=device, dtype=torch.bfloat16) for _ in range(layers)]
    values = [torch.randn(1, kv_heads, length, dim, device=device, dtype=torch.bfloat16) for _ in range(layers)]
    scores = [torch.randn(1, kv_heads, length, device=device) for _ in range(layers)]
    full_bytes = sum(k.nbytes + v.nbytes for k, v in zip(keys, values))
    kept = int(budgets.sum())
    _sync(device)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    outputs = []
    for i in range(layers):
        outputs.append(compact(keys[i], values[i], scores[i], budgets[i]))
        keys[i] = values[i] = None
    _sync(device)
    compact_bytes = sum(o.keys.nbytes + o.values.nbytes + o.positions.nbytes + o.lengths.nbytes + o.valid.nbytes
                        for o in outputs)
    masking_bytes = full_bytes + 3 * 8 * (layers * kv_heads * length - kept)
    memory = {
        "full_kv_bytes": full_bytes,
        "kvpress_masking_bytes": masking_bytes,  # full K, V + masked_key_indices (3 x int64 per evicted)
        "compact_bytes": compact_bytes,  # padded K, V + positions, lengths, valid
        "varlen_kv_bytes": 2 * kept * dim * itemsize,  # to_varlen() K and V, no padding
        "freed_vs_full_kv_bytes": full_bytes - compact_bytes,
        "saved_vs_kvpress_masking_bytes": masking_bytes - compact_bytes,
        "freed_fraction_of_full_kv": 1 - compact_bytes / full_bytes,
    }
    if cuda:
        after = torch.cuda.memory_allocated(device)
        memory.update({
            "measured_allocated_before_bytes": before,
            "measured_allocated_after_bytes": after,
            "measured_freed_bytes": before - after,
            "measured_peak_above_start_bytes": torch.cuda.max_memory_allocated(device) - before,
        })
    return memory


def benchmark(device, layers, kv_heads, length, dim, fraction, reps, copy_bw):
    itemsize = 2  # bfloat16
    budgets, target = make_budgets(layers, kv_heads, length, fraction)
    kept = int(budgets.sum())
    seconds, variants = time_compact(device, budgets, kv_heads, length, dim, reps)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory = measure_memory(device, budgets, kv_heads, length, dim)

    full_bytes = 2 * layers * kv_heads * length * dim * itemsize
    kept_bytes = 2 * kept * dim * itemsize  # K and V rows kept
    written = {  # rows written, zero padding to the largest budget of each call included
        "compact": 2 * kv_heads * int(budgets.max(axis=1).sum()) * dim * itemsize,
        "compact_one_call_all_layers": 2 * layers * kv_heads * int(budgets.max()) * dim * itemsize,
    }
    written["compact_device_budgets"] = written["compact"]
    issue_bytes = full_bytes + kept_bytes  # the issue's count: read K and V once, write the kept
    throughput = {}
    for name in ("compact", "compact_device_budgets", "compact_one_call_all_layers"):
        gather_bytes = kept_bytes + written[name]  # what a row gather reads and writes
        throughput[name] = {
            "seconds_all_layers": seconds[name],
            "ms_per_layer": seconds[name] / layers * 1e3,
            "gbps_issue_definition": issue_bytes / seconds[name] / 1e9,
            "fraction_of_copy_bw_issue_definition": issue_bytes / seconds[name] / copy_bw,
            "gbps_gather_physical": gather_bytes / seconds[name] / 1e9,
            "fraction_of_copy_bw_gather_physical": gather_bytes / seconds[name] / copy_bw,
            "bytes_gather_physical": gather_bytes,
        }
    return {
        "shape": {"layers": layers, "kv_heads": kv_heads, "T": length, "head_dim": dim, "dtype": "bfloat16",
                  "budget_fraction": fraction},
        "budgets": {"total_kept": kept, "target_total": target, "exact_total": kept == target,
                    "min_per_head": int(budgets.min()), "max_per_head": int(budgets.max())},
        "bytes_issue_definition": issue_bytes,
        "throughput": throughput,
        "goal_half_of_copy_bw_met": throughput["compact"]["fraction_of_copy_bw_issue_definition"] >= 0.5,
        "selection_seconds_all_layers": {"keep_mask": seconds["keep_mask"], "argsort_only": seconds["argsort"],
                                        "topk_only": seconds["topk"]},
        "row_copy_variants_ms_one_layer": variants,
        "memory": memory,
    }


# -- the varlen cache (BudgetPress(mode="varlen")) -------------------------------------------
def _tiny_llama(device, dtype, layers=3, hidden=128, heads=8, kv_heads=2, vocab=256, intermediate=256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=65536, attn_implementation="sdpa", pad_token_id=0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def check_varlen(device, smoke):
    """The ``budgetopt_varlen`` attention on ``device``: its kernel path against the
    per-sequence loop, generation against ``mode="mask"``, and (full runs) memory and decode
    time against the uncompressed cache at 32k tokens."""
    from kvpress import KnormPress
    from transformers import DynamicCache

    from budgetopt.torch.press import BudgetPress
    from budgetopt.torch.varlen_cache import (ATTENTION_NAME, VarlenLayer, _attend_per_sequence,
                                              _cuda_varlen_attn, _decode_packed_merge, _decode_segments)

    out = {}
    cuda = device.type == "cuda"
    kernels = {name: (_cuda_varlen_attn(device, DTYPES[name]) if cuda else None) for name in ("bfloat16", "float16")}
    out["varlen_attn_kernel"] = {name: "torch.nn.attention.varlen.varlen_attn" if k else
                                 ("unusable: the vectorised step decodes" if cuda else "cpu reference stand-in")
                                 for name, k in kernels.items()}
    # 1. Kernel path (varlen_attn + log-sum-exp merge) against the float32 loop, heads with 0 rows.
    gen = torch.Generator().manual_seed(0)
    batch, kv_heads, group, length, dim = (2, 8, 4, 3000, 128) if not smoke else (2, 2, 2, 64, 16)
    kernel_rows = {}
    for name in ("bfloat16", "float16"):
        dtype = DTYPES[name]
        keys = torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype).to(device)
        values = torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype).to(device)
        scores = torch.randn(batch, kv_heads, length, generator=gen).to(device)
        counts = np.random.default_rng(1).integers(0, length + 1, (batch, kv_heads))
        counts[0, 0], counts[-1, -1] = 0, length
        layer = VarlenLayer.from_varlen(compact(keys, values, scores, counts).to_varlen(), length)
        for _ in range(3):
            new = torch.randn(batch, kv_heads, 1, dim, generator=gen).to(dtype).to(device)
            tail_k, tail_v = layer.update(new, -new)
        query = torch.randn(batch, kv_heads * group, 1, dim, generator=gen).to(dtype).to(device)
        merged = _decode_packed_merge(query, layer, tail_k, tail_v, dim ** -0.5, kernels[name] or cpu_varlen)
        looped = _attend_per_sequence(query, layer, tail_k, tail_v, None, dim ** -0.5)
        diff = float((merged.float() - looped.float()).abs().max())
        segments = _decode_segments(query, layer, tail_k, tail_v, None, dim ** -0.5)
        diff_segments = float((segments.float() - looped.float()).abs().max())
        kernel_rows[name] = {"max_abs_diff": diff, "close": bool(diff <= 2e-2 and torch.isfinite(merged).all()),
                             "vectorised_step_max_abs_diff": diff_segments,
                             "vectorised_step_close": bool(diff_segments <= 2e-2)}
    out["kernel_vs_loop"] = kernel_rows

    # 2. Generation: varlen against mask mode (greedy, batch 2, one row left-padded).
    gen_rows = {}
    for name in (("float32", "bfloat16") if cuda else ("float32",)):
        model = _tiny_llama(device, DTYPES[name])
        ids = torch.randint(1, 256, (2, 200), generator=torch.Generator().manual_seed(2)).to(device)
        attention_mask = torch.ones_like(ids)
        attention_mask[1, :9] = 0
        budgets = np.random.default_rng(3).integers(0, 120, (3, 2))
        results = {}
        for mode in ("mask", "varlen"):
            press = BudgetPress(KnormPress(), budgets, head_capacity=200, sink=4, window=8, mode=mode)
            for mask_name, mask in (("unpadded", torch.ones_like(ids)), ("padded", attention_mask)):
                with torch.no_grad(), press(model):
                    results[mode, mask_name] = model.generate(
                        ids, attention_mask=mask, max_new_tokens=24, min_new_tokens=24, do_sample=False,
                        suppress_tokens=[0], pad_token_id=0, return_dict_in_generate=True, output_logits=True)
        row = {}
        for mask_name in ("unpadded", "padded"):
            a, b = results["mask", mask_name], results["varlen", mask_name]
            same = (a.sequences == b.sequences).all(dim=0)
            first_diff = int((~same).nonzero()[0]) - 200 if (~same).any() else None
            row[mask_name] = {"same_tokens": bool(same.all()), "first_differing_new_token": first_diff,
                              "max_abs_logit_diff_while_same": max(
                                  float((x - y).abs().max()) for x, y in
                                  list(zip(a.logits, b.logits))[: first_diff if first_diff is not None else 24]
                                  or [(a.logits[0], b.logits[0])]),
                              "cache": type(b.past_key_values).__name__}
        gen_rows[name] = row
        del model
    out["generate_vs_mask"] = gen_rows
    out["all_ok"] = all(r["close"] and r["vectorised_step_close"] for r in kernel_rows.values()) and (all(kernels.values()) or not cuda) and all(
        r["unpadded"]["same_tokens"] for k, r in gen_rows.items() if k == "float32")

    # 3. Memory after pre-filling and decode time per token, against the uncompressed cache.
    layers, length = (2, 512) if smoke else (4, 32768)
    model = _tiny_llama(device, torch.bfloat16 if cuda else torch.float32, layers=layers,
                        hidden=128 if smoke else 2048, heads=4 if smoke else 16, kv_heads=2 if smoke else 8,
                        vocab=256, intermediate=256 if smoke else 5632)
    cfg = model.config
    rng = np.random.default_rng(4)
    share = rng.dirichlet(np.full(cfg.num_key_value_heads, 0.3), size=layers)  # skewed split per layer
    budgets = keep_counts_from_prune_ratios(1 - np.clip(share * cfg.num_key_value_heads * 0.2, 0, 1), length)
    modes = ("full", "gather", "varlen")
    timing = {}
    for batch in ((1,) if smoke else (1, 8)):
        ids = torch.randint(1, 256, (batch, length), generator=torch.Generator().manual_seed(5)).to(device)
        caches, memory, indices = {}, {}, {}
        for mode in modes:
            cache = DynamicCache()
            _sync(device)
            before = torch.cuda.memory_allocated(device) if cuda else 0
            with torch.no_grad():
                if mode == "full":
                    model.model(input_ids=ids, past_key_values=cache)
                else:
                    with BudgetPress(KnormPress(), budgets, head_capacity=length, mode=mode)(model):
                        model.model(input_ids=ids, past_key_values=cache)
            _sync(device)
            caches[mode] = cache
            indices[mode] = [getattr(layer.self_attn, "masked_key_indices", None) for layer in model.model.layers]
            held = sum(layer.nbytes() if isinstance(layer, VarlenLayer) else layer.keys.nbytes + layer.values.nbytes
                       for layer in cache.layers)
            memory[mode] = {"cache_bytes": held,
                            "allocated_delta_bytes": (torch.cuda.memory_allocated(device) - before) if cuda else None}
        target = 2 * batch * int(budgets.sum()) * (cfg.hidden_size // cfg.num_attention_heads) * \
            (2 if cuda else 4)
        for mode in modes:
            memory[mode]["over_sum_budgets_rows"] = memory[mode]["cache_bytes"] / target
        steps, rounds = (2, 1) if smoke else (20, 3)
        times = {mode: [] for mode in modes}
        token = ids[:, -1:]
        for r in range(rounds + 1):  # round 0 is a warm-up
            for mode in modes:
                model.set_attn_implementation(ATTENTION_NAME if mode == "varlen" else "sdpa")
                for layer, ix in zip(model.model.layers, indices[mode]):
                    layer.self_attn.masked_key_indices = ix  # gather mode hides its padding slots
                _sync(device)
                t0 = time.perf_counter()
                with torch.no_grad():
                    for step in range(steps):
                        position = torch.full((batch, 1), length + r * steps + step, device=device)
                        model(input_ids=token, past_key_values=caches[mode], position_ids=position, logits_to_keep=1)
                _sync(device)
                if r:
                    times[mode].append((time.perf_counter() - t0) / steps)
        model.set_attn_implementation("sdpa")
        decode = {mode: 1e3 * float(np.median(times[mode])) for mode in modes}
        timing[f"batch={batch}"] = {
            "memory": memory,
            "decode_ms_per_token": decode,
            "varlen_over_full": decode["varlen"] / decode["full"],
            "varlen_faster_than_full": decode["varlen"] < decode["full"],
        }
        del caches
    out["decode_benchmark"] = {"layers": layers, "T": length, "kv_heads": cfg.num_key_value_heads,
                               "head_dim": cfg.hidden_size // cfg.num_attention_heads,
                               "dtype": str(model.dtype), "kept_fraction": float(budgets.sum()) / budgets.size / length,
                               "per_batch": timing}
    return out


def environment(device, argv):
    """:func:`_env.record`, plus the CUDA version and the device measured."""
    env = record("gpu_check.py", argv, packages=("numpy", "torch", "transformers", "kvpress"))
    env["machine"].update(cuda=torch.version.cuda, device=torch.cuda.get_device_name(device)
                          if device.type == "cuda" else platform.processor() or "cpu")
    return env


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs on the CPU too")
    parser.add_argument("--device", default=None, help="default: cuda (cpu allowed with --smoke)")
    parser.add_argument("--skip-varlen", action="store_true", help="skip the varlen cache check (needs kvpress)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        parser.error("a CUDA device is needed (or pass --smoke for a tiny CPU run)")
    started = time.perf_counter()
    if args.smoke:
        eq_size, bench = (2, 2, 2, 257, 16), dict(layers=2, kv_heads=2, length=2048, dim=16, fraction=0.2, reps=2)
        copy_bytes = 8 * 2**20
    else:
        eq_size, bench = (2, 8, 4, 8211, 128), dict(layers=32, kv_heads=8, length=131072, dim=128, fraction=0.2,
                                                     reps=5)
        copy_bytes = 2 * GiB

    summary = {"environment": environment(device, argv), "smoke": args.smoke}
    # Several lengths, so that each of torch's sort paths (<= 32, <= 128, <= 4096 and
    # larger segments) is compared; sink 4 + window 16 leave T - 20 tokens to sort.
    batch, kv_heads, group, _, dim = eq_size
    checks = {f"T={t}": check_equality(device, (batch, kv_heads, group, t, dim))
              for t in (eq_size[3], 1000, 120, 40)}
    summary["equality"] = {"all_equal": all(c["all_equal"] for c in checks.values()), "per_length": checks}
    copy_bw, copy_seconds = measure_copy_bandwidth(device, copy_bytes, reps=10)
    summary["copy_bandwidth"] = {"bytes_copied": copy_bytes, "seconds": copy_seconds,
                                 "gbps_read_plus_write": copy_bw / 1e9}
    summary["compact_benchmark"] = benchmark(device, **bench, copy_bw=copy_bw)
    if not args.skip_varlen:
        if importlib.util.find_spec("kvpress") is None:
            summary["varlen"] = "skipped: kvpress is not installed"
        else:
            summary["varlen"] = check_varlen(device, args.smoke)
    summary["wall_seconds"] = time.perf_counter() - started

    text = json.dumps(summary, indent=2)
    print(text)
    run = summary["compact_benchmark"]["throughput"]["compact"]
    print(f"headline: all_equal={summary['equality']['all_equal']} "
          f"copy={summary['copy_bandwidth']['gbps_read_plus_write']:.0f} GB/s "
          f"compact={run['gbps_issue_definition']:.0f} GB/s (issue bytes, "
          f"{run['fraction_of_copy_bw_issue_definition']:.0%} of copy) "
          f"physical={run['fraction_of_copy_bw_gather_physical']:.0%} of copy "
          f"freed={summary['compact_benchmark']['memory']['freed_fraction_of_full_kv']:.0%} of full KV"
          + (f" varlen_ok={summary['varlen']['all_ok']}" if isinstance(summary.get("varlen"), dict) else ""))
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        Path(out_dir, "gpu_check.json").write_text(text + "\n")
    return 0 if summary["equality"]["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
