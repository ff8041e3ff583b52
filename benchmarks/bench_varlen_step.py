"""One decoding step on a VarlenLayer: the per-sequence loop against the all-at-once step.

Times ``_attend_per_sequence`` and ``_decode_segments`` (budgetopt.torch.varlen_cache) on
random packed layers of several shapes (batch rows x KV heads sequences, kept rows per
sequence drawn uniformly up to 40% of the context), float32, one query token, G = 3 query
heads per KV head, head_dim 64. Both outputs are compared. Records machine, versions and
commit next to the numbers (same helpers as bench_varlen.py).

Writes ``bench_varlen_step.{json,txt}`` into a new folder under ``benchmarks/out/``
(``--record``: the committed ``benchmarks/results/bench_varlen_step.*``). Usage::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 \\
        python benchmarks/bench_varlen_step.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _env import add_output_options, output_path  # noqa: E402
from bench_varlen import environment  # noqa: E402

from budgetopt.curves import write_atomic  # noqa: E402
from budgetopt.torch import compact  # noqa: E402
from budgetopt.torch.varlen_cache import VarlenLayer, _attend_per_sequence, _decode_segments  # noqa: E402

SHAPES = ((1, 3, 1024), (1, 3, 4096), (4, 8, 1024), (8, 8, 512), (8, 8, 4096), (16, 8, 256))


def one(batch, kv_heads, length, group=3, dim=64, repeats=15):
    gen = torch.Generator().manual_seed(batch * 1000 + length)
    keys, values = (torch.randn(batch, kv_heads, length, dim, generator=gen) for _ in "kv")
    counts = (torch.rand(batch, kv_heads, generator=gen) * 0.4 * length).long()
    scores = torch.randn(batch, kv_heads, length, generator=gen)
    layer = VarlenLayer.from_varlen(compact(keys, values, scores, counts).to_varlen(), length)
    tail_k, tail_v = layer.update(*(torch.randn(batch, kv_heads, 1, dim, generator=gen) for _ in "kv"))
    query = torch.randn(batch, kv_heads * group, 1, dim, generator=gen)
    row = {"batch": batch, "kv_heads": kv_heads, "context": length, "rows": int(layer.keys.shape[0])}
    outs = {}
    for name, fn in (("loop", _attend_per_sequence), ("segments", _decode_segments)):
        for _ in range(3):
            outs[name] = fn(query, layer, tail_k, tail_v, None, dim ** -0.5)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(query, layer, tail_k, tail_v, None, dim ** -0.5)
            times.append(time.perf_counter() - t0)
        row[name + "_ms"] = 1e3 * sorted(times)[repeats // 2]
    row["segments_over_loop"] = row["segments_ms"] / row["loop_ms"]
    row["max_abs_diff"] = float((outs["loop"] - outs["segments"]).abs().max())
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_output_options(parser, "bench_varlen_step")
    args = parser.parse_args(argv)
    out = output_path(args.out, args.record, "bench_varlen_step")
    torch.set_num_threads(1)
    start, env = time.time(), environment("bench_varlen_step.py", argv)
    rows = [one(*shape) for shape in SHAPES]
    res = {"rows": rows, **env, "seconds": time.time() - start}
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    lines = ["| batch x KV heads | context | packed rows | loop ms | all-at-once ms | ratio | max abs diff |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['batch']} x {r['kv_heads']} | {r['context']} | {r['rows']} | {r['loop_ms']:.3f} | "
              f"{r['segments_ms']:.3f} | {r['segments_over_loop']:.2f} | {r['max_abs_diff']:.1e} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    header = (f"command: {res['command']}\nmachine: {res['machine']}\nversions: {res['versions']}\n"
              f"git: {res['git']}\nseconds: {res['seconds']:.0f}\n\n")
    write_atomic(out + ".json", lambda f: f.write(json.dumps(res, indent=1).encode()))
    write_atomic(out + ".txt", lambda f: f.write((header + text + "\n").encode()))


if __name__ == "__main__":
    main()
