"""Build the example curves shipped in budgetopt/data/example_curves.npz.

The curves are attention-derived from a randomly initialised 32-layer Llama with 8 KV heads
(16 query heads, GQA 2:1), built from a config (no download), on random token ids:

* context of ``T`` tokens, then a "question" and an "answer" continuation;
* oracle: attention mass each context token receives from the question and answer queries
  (averaged over those queries and over the query heads of each KV head);
* scorer: SnapKV-style, attention from the last 32 context queries, max-pooled over 7 tokens;
* ``budgetopt.curves_from_scores(oracle, scores, sink=4, window=32)``, then sampled every
  ``STEP`` tokens (page-sized steps) to keep the file small.

Weights are drawn with a larger initialiser range than usual so that heads differ (some
attend locally, some to the sink, some diffusely), as trained heads do. These curves are
for demonstration and tests of the tooling, not a measurement of any real model.

Run (needs torch and transformers): ``python benchmarks/make_example.py``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import budgetopt  # noqa: E402

T = 1024  # context tokens
Q = 48  # question + answer tokens
SINK, WINDOW, STEP = 4, 32, 16
SEED = 0


def main():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=32,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        initializer_range=0.25,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, T + Q), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    group = config.num_attention_heads // config.num_key_value_heads
    oracle, scores = [], []
    for att in out.attentions:  # (1, heads, T+Q, T+Q)
        a = att[0].double()
        per_kv = lambda x: x.reshape(config.num_key_value_heads, group, *x.shape[1:]).mean(1)
        oracle.append(per_kv(a[:, T:, :T].mean(1)).numpy())
        window = a[:, T - 32 : T, :T].mean(1)
        pooled = torch.nn.functional.max_pool1d(window[None], 7, stride=1, padding=3)[0]
        scores.append(per_kv(pooled).numpy())
    oracle = np.stack(oracle)  # (32, 8, T)
    scores = np.stack(scores)
    curves = budgetopt.curves_from_scores(oracle, scores, sink=SINK, window=WINDOW)
    keep = np.r_[np.arange(0, curves.n_points - 1, STEP), curves.n_points - 1]
    meta = {
        "description": "attention-derived example: randomly initialised Llama (32 layers, 8 KV heads), random tokens",
        "model": "LlamaConfig(hidden 256, 32 layers, 16 heads, 8 KV heads, init range 0.25), seed 0",
        "oracle": f"mean attention from {Q} question/answer queries to {T} context tokens",
        "scorer": "snapkv (last 32 context queries, max-pool 7)",
        "sink": SINK,
        "window": WINDOW,
        "context_tokens": T,
        "grid_step": STEP,
        "made_by": "benchmarks/make_example.py",
    }
    example = budgetopt.Curves(curves.utility[..., keep], curves.grid[keep], meta=meta)
    path = ROOT / "budgetopt" / "data" / "example_curves.npz"
    budgetopt.save_curves(path, example)
    gaps = budgetopt.hull_gap(example)
    print(json.dumps({"path": str(path), "bytes": path.stat().st_size, "head_shape": example.head_shape,
                      "points": example.n_points, "concave_heads": int((gaps <= 0).sum()),
                      "largest_hull_gap": float(gaps.max())}))


if __name__ == "__main__":
    main()
