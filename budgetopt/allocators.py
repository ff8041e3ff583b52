"""Budget rules of other allocators, as comparison points: uniform (SnapKV's default), PyramidKV,
AdaKV, HeadKV-style and DuoAttention-style keep counts per (layer, KV head).

Each function follows the cited paper's rule in whole tokens (largest remainder through
:func:`budgetopt.rounding.split_integer`, re-exported here); they are used by
``benchmarks/bench_quality.py`` (retained oracle mass) and by ``budgetopt evaluate``
(answers), so both compare the same rules. NumPy only.
"""

from __future__ import annotations

import numpy as np

from .rounding import split_integer

__all__ = ["split_integer", "uniform_counts", "pyramidkv_counts", "adakv_counts", "headkv_counts",
           "duoattention_counts", "PYRAMID_BETA", "ADAKV_ALPHA", "HEADKV_POOL"]

PYRAMID_BETA = 20
ADAKV_ALPHA = 0.2
HEADKV_POOL = 0.5  # share of the middle (non-protected) budget HeadKV distributes by importance


def uniform_counts(layers, heads, length, total, protected):
    """SnapKV (Li et al. 2024) default: every head of every layer keeps the same number of tokens.

    The total is split as evenly as integers allow (largest remainder)."""
    n = layers * heads
    return split_integer(total, np.ones(n), length).reshape(layers, heads).clip(protected)


def pyramidkv_counts(layers, heads, length, total, protected, beta=PYRAMID_BETA):
    """PyramidKV (Cai et al. 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
    Information Funneling"): per-layer budgets on an arithmetic sequence, the top layer keeping
    ``avg / beta`` selectable tokens and the bottom layer ``2 * avg - avg / beta``, where ``avg``
    is the mean selectable budget per layer (tokens beyond the always-kept sink + window). When
    the bottom layer would exceed its context, it is capped and the top raised so the mean holds
    (as in the published schedule). Heads of a layer share its budget equally."""
    n = layers * heads
    middle = total - n * protected
    avg = middle / layers
    room = heads * (length - protected)
    top = avg / beta
    bottom = 2 * avg - top
    if bottom > room:
        bottom = room
        top = 2 * avg - bottom
    per_layer = np.linspace(bottom, top, layers) if layers > 1 else np.array([avg])
    layer_tokens = split_integer(middle, per_layer, room)
    out = np.empty((layers, heads), np.int64)
    for layer in range(layers):
        out[layer] = split_integer(layer_tokens[layer], np.ones(heads), length - protected)
    return out + protected


def adakv_counts(scores, total, sink, window, alpha=ADAKV_ALPHA):
    """AdaKV (Feng et al. 2024, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget
    Allocation"): each layer keeps its share of the total; within a layer every head first keeps
    its own ``floor(alpha * B / H)`` best tokens (the safeguard, alpha = 0.2), then the rest of the
    layer budget ``B`` goes to the highest scores over all the layer's heads concatenated. Computed
    online from the request's own scorer values (middle tokens; sink and window are always kept)."""
    layers, heads, length = scores.shape
    protected = sink + window
    middle_scores = scores[..., sink:length - window].astype(np.float64)
    m = middle_scores.shape[-1]
    layer_middle = split_integer(total - layers * heads * protected, np.ones(layers), heads * m)
    out = np.empty((layers, heads), np.int64)
    for layer in range(layers):
        budget = int(layer_middle[layer])
        safe = min(int(alpha * budget / heads), m)
        s = -np.sort(-middle_scores[layer], axis=-1)  # each head's scores, best first
        rest = s[:, safe:].ravel()
        extra = budget - heads * safe
        counts = np.full(heads, safe, np.int64)
        if extra > 0 and m > safe:
            chosen = np.argsort(-rest, kind="stable")[:extra]
            counts += np.bincount(chosen // (m - safe), minlength=heads)
        out[layer] = counts
    return out + protected


def headkv_counts(importance, length, total, protected, pool=HEADKV_POOL):
    """HeadKV-style (Fu et al. 2024, "Not All Heads Matter: A Head-Level KV Cache Compression
    Method with Integrated Retrieval and Reasoning"): every head keeps a base budget and gives a
    share ``pool`` of it to a shared pool, which is split in proportion to a static head-importance
    score estimated offline. Here the score is each head's mean calibration oracle mass outside
    the sink and window (how much a head stands to lose), not HeadKV's retrieval-reasoning score."""
    layers, heads = importance.shape
    n = layers * heads
    middle = total - n * protected
    pooled = int(round(pool * middle))
    base = split_integer(middle - pooled, np.ones(n), length - protected)
    extra = split_integer(pooled, importance.ravel(), (length - protected) - base)
    return (base + extra).reshape(layers, heads) + protected


def duoattention_counts(importance, length, total, protected):
    """DuoAttention-style (Xiao et al. 2024, "DuoAttention: Efficient Long-Context LLM Inference
    with Retrieval and Streaming Heads"): retrieval heads keep the full context, streaming heads
    only their sink and recent-window tokens. Heads are ranked by a static importance score (here
    the mean calibration oracle mass outside sink and window, standing in for DuoAttention's
    learned gates) and made retrieval heads while the total allows; the tokens left over go to the
    next head (so every method spends the same total)."""
    layers, heads = importance.shape
    out = np.full(layers * heads, protected, np.int64)
    left = total - out.sum()
    for h in np.argsort(-importance.ravel(), kind="stable"):
        take = min(left, length - protected)
        out[h] += take
        left -= take
        if left <= 0:
            break
    return out.reshape(layers, heads)
