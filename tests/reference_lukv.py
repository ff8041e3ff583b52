"""A plain re-expression of the published LU-KV offline budget solver, kept as a test reference.

Nothing here imports budgetopt: the point is an independent, slow, readable statement of the
algorithm that LU-KV (arXiv 2602.08585; baidu-baige/LU-KV,
``evaluation/curve_data/step2_compute_curve.py``) uses to build the ``[99, layers, kv_heads]``
prune-ratio tables that kvpress's ``LUKVPress`` loads. Tests and benchmarks compare
``budgetopt.lukv_table`` with it. Benchmarks import it after putting ``tests/`` on ``sys.path``.

Public functions (all arrays are numpy; ``L`` layers, ``H`` KV heads, ``T`` context tokens)::

    lukv_reference_costs(oracle, scores, sink, window) -> float64 (L, H, T - sink - window)
        Hull-smoothed eviction cost of each middle token of each head, in scorer-rank order
        (index 0 = the token the scorer likes most). With m middle tokens kept, evicting one
        more costs ``costs[l, h, m - 1]``.

    lukv_reference_prune_ratios(oracle, scores, sink, window, compression_ratios=None,
                                floor=None, *, limit_ratio=None, layerwise=True)
        -> float64 (len(compression_ratios), L, H)
        One calibration pair solved for each global compression ratio (fraction REMOVED,
        ascending; default 0.01, 0.02, ..., 0.99) by evicting one token at a time from a
        min-heap of per-token costs. ``floor`` is the fewest tokens a head may keep (default
        ``sink + window``); rows whose ratio exceeds ``limit_ratio`` are uniform.
        Returns per-head prune ratios ``1 - kept / T``.

    lukv_reference_table(oracles, scores, sink, window, floor=None, *, threshold=99,
                         layerwise=True, processes=1) -> float64 (99, L, H)
        The published pipeline: every (oracle, scores) pair solved on its own at 1%..99%
        with ``floor = max(round((1 - threshold / 100) * T), sink + window)`` unless ``floor``
        is given, and rows above ``threshold`` % uniform; the prune ratios are averaged over
        the pairs. ``oracles`` is a sequence of arrays (L, H, T) or ``.npy`` paths;
        ``scores`` is one array/path shared by every pair or a sequence with one per pair.
        ``processes > 1`` solves the pairs in a ``multiprocessing`` pool (the published way).

The algorithm, per pair:

1. The first ``sink`` and last ``window`` tokens of every head are always kept. The middle
   tokens are ranked by score, highest first (ties: lower position first, a choice of this
   reference; the published code leaves tie order to an unstable sort).
2. Evicting a head's middle tokens lowest-rank first, the cumulative oracle mass lost after
   ``d`` evictions is ``loss[d]``. Its lower convex hull (a monotone-stack scan that drops
   collinear points) gives each eviction the slope of the hull segment it lies on: a
   non-decreasing per-token cost.
3. Every head starts full (``T`` kept). A min-heap holds each head's next eviction, keyed
   ``(cost, layer, head)``; popping evicts one token (unless the head is at its floor, which
   retires the head) and pushes that head's next eviction. For each ratio ``c`` in ascending
   order it evicts until ``round(c * L * H * T)`` tokens are gone (``round(c * H * T)`` per
   layer when ``layerwise`` is false, each layer with its own heap).
"""

from __future__ import annotations

import heapq
import multiprocessing
import os

import numpy as np

__all__ = [
    "lukv_reference_costs",
    "lukv_reference_prune_ratios",
    "lukv_reference_table",
    "PUBLISHED_RATIOS",
]

#: The 99 global compression ratios of a published table, computed as the published code does.
PUBLISHED_RATIOS = [(i + 1) / 100.0 for i in range(99)]


def _lower_hull(values):
    """Indices of the lower convex hull of the points (i, values[i]), collinear points dropped."""
    hull = [0]
    for k in range(1, len(values)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # Cross product of (b - a) and (k - a); <= 0 means b is not strictly below a-k.
            cross = (b - a) * (values[k] - values[a]) - (k - a) * (values[b] - values[a])
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def _head_costs(oracle_mid, scores_mid):
    """Hull-smoothed per-token eviction costs of one head, in scorer-rank order."""
    n = len(oracle_mid)
    rank_order = np.argsort(-scores_mid, kind="stable")
    ranked = oracle_mid[rank_order]
    # loss[d]: oracle mass lost after evicting the d lowest-ranked tokens.
    loss = [0.0]
    for value in ranked[::-1]:
        loss.append(loss[-1] + float(value))
    hull = _lower_hull(loss)
    per_eviction = [0.0] * n  # indexed by eviction step d = 0 .. n-1
    for a, b in zip(hull[:-1], hull[1:]):
        slope = (loss[b] - loss[a]) / (b - a)
        for d in range(a, b):
            per_eviction[d] = slope
    # Eviction step d removes the token of rank n - 1 - d.
    return np.array(per_eviction[::-1], dtype=np.float64)


def lukv_reference_costs(oracle, scores, sink, window):
    """Hull-smoothed eviction costs, shape (L, H, T - sink - window), in scorer-rank order."""
    oracle = np.asarray(oracle, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    layers, heads, length = oracle.shape
    if scores.shape != oracle.shape:
        raise ValueError(f"scores shape {scores.shape} differs from oracle shape {oracle.shape}")
    middle = length - sink - window
    if middle <= 0:
        raise ValueError(f"T = {length} leaves no middle tokens with sink={sink}, window={window}")
    costs = np.zeros((layers, heads, middle))
    for layer in range(layers):
        for head in range(heads):
            costs[layer, head] = _head_costs(
                oracle[layer, head, sink : length - window],
                scores[layer, head, sink : length - window],
            )
    return costs


def _evict(costs, keep, heap, floor, discarded, target):
    """Pop the heap until ``target`` tokens are evicted or every head is retired."""
    while discarded < target and heap:
        _, layer, head, index = heapq.heappop(heap)
        if keep[layer][head] > floor:
            keep[layer][head] -= 1
            discarded += 1
            if index - 1 >= 0:
                heapq.heappush(heap, (costs[layer, head, index - 1], layer, head, index - 1))
    return discarded


def lukv_reference_prune_ratios(
    oracle,
    scores,
    sink,
    window,
    compression_ratios=None,
    floor=None,
    *,
    limit_ratio=None,
    layerwise=True,
):
    """Per-head prune ratios of one calibration pair at each compression ratio (see module)."""
    oracle = np.asarray(oracle, dtype=np.float64)
    layers, heads, length = oracle.shape
    if compression_ratios is None:
        compression_ratios = PUBLISHED_RATIOS
    ratios = [float(c) for c in compression_ratios]
    if any(b < a for a, b in zip(ratios[:-1], ratios[1:])):
        raise ValueError("compression_ratios must be ascending")
    if floor is None:
        floor = sink + window
    if floor < sink + window:
        raise ValueError("floor must be >= sink + window")
    costs = lukv_reference_costs(oracle, scores, sink, window)
    middle = costs.shape[-1]
    result = np.zeros((len(ratios), layers, heads))

    # Each group is a set of heads sharing one heap: all heads, or the heads of one layer.
    groups = [list(range(layers))] if layerwise else [[layer] for layer in range(layers)]
    for group in groups:
        keep = [[length] * heads for _ in range(layers)]
        heap = [(costs[layer, head, middle - 1], layer, head, middle - 1)
                for layer in group for head in range(heads)]
        heapq.heapify(heap)
        group_tokens = len(group) * heads * length
        discarded = 0
        for row, ratio in enumerate(ratios):
            if limit_ratio is not None and ratio > limit_ratio:
                for layer in group:
                    result[row, layer, :] = ratio
                continue
            target = int(round(ratio * group_tokens))
            discarded = _evict(costs, keep, heap, floor, discarded, target)
            for layer in group:
                result[row, layer, :] = [1.0 - keep[layer][head] / length for head in range(heads)]
    return result


def _load(item):
    if isinstance(item, (str, os.PathLike)):
        return np.load(item)
    return item


def _solve_pair(task):
    oracle, scores, sink, window, floor, threshold, layerwise = task
    oracle = _load(oracle)
    scores = _load(scores)
    length = oracle.shape[-1]
    limit_ratio = threshold / 100.0
    if floor is None:
        floor = max(int(round((1.0 - limit_ratio) * length)), sink + window)
    return lukv_reference_prune_ratios(
        oracle, scores, sink, window, PUBLISHED_RATIOS, floor,
        limit_ratio=limit_ratio, layerwise=layerwise,
    )


def lukv_reference_table(
    oracles, scores, sink, window, floor=None, *, threshold=99, layerwise=True, processes=1
):
    """The published table: pairs solved one by one (or in a pool), prune ratios averaged."""
    oracles = list(oracles)
    if isinstance(scores, (str, os.PathLike, np.ndarray)):
        scores = [scores] * len(oracles)
    scores = list(scores)
    if len(scores) != len(oracles):
        raise ValueError("need one scores array per oracle, or one shared")
    tasks = [(o, s, sink, window, floor, threshold, layerwise) for o, s in zip(oracles, scores)]
    total = None
    if processes > 1:
        with multiprocessing.Pool(processes=processes) as pool:
            results = list(pool.imap(_solve_pair, tasks))
            pool.close()
            pool.join()  # reaped workers: their CPU time shows in RUSAGE_CHILDREN
    else:
        results = [_solve_pair(task) for task in tasks]
    for result in results:
        total = result.copy() if total is None else total + result
    return total / len(results)
