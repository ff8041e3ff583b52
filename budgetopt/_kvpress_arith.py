"""kvpress ``LUKVPress``'s keep counts, reproduced bit for bit without importing torch.

``LUKVPress.compress`` turns one layer's row of an LU-KV table into per-head keep counts in
float32 torch arithmetic:

1. ``ratios`` as float32; ``keep = clamp(1 - ratios, 0, 1)``; ``ideal = keep * T`` (float32);
2. ``total = round(ideal.sum())`` (float32 sum, round half to even), clamped to
   ``[heads, heads * T]``;
3. ``base = floor(ideal)``; the ``total - sum(base)`` leftover tokens go one each to the heads
   ``torch.topk(ideal - base, k)`` returns;
4. ``clamp(base, 1, T)``.

Two steps depend on more than IEEE arithmetic: the order in which torch's CPU kernel adds the
float32 ideals (it decides the total when the sum lands within rounding of a half), and which
of several equal fractional parts ``torch.topk`` picks (``std::nth_element`` or
``std::partial_sort`` from libstdc++, neither stable). Both are reproduced here for torch on
Linux CPUs: :func:`torch_cpu_sum` follows ATen's cascade sum (``SumKernel.cpp``: four
interleaved accumulators, vector lanes of ``lanes`` floats, 8 for AVX2 and 16 for AVX512) and
:func:`torch_cpu_topk_set` replays libstdc++'s selection algorithms. On a GPU both differ;
layer totals still match, and per-head counts can differ only on such ties.

Everything here is exercised against the real ``LUKVPress`` and ``torch.topk`` in the tests.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kvpress_keep_counts", "torch_cpu_sum", "torch_cpu_topk_set", "DEFAULT_LANES"]

#: float32 lanes of torch's CPU vector type on x86-64 with AVX2 (torch's usual build target).
DEFAULT_LANES = 8

_F32 = np.float32


def kvpress_keep_counts(ratios, length, lanes=DEFAULT_LANES):
    """Keep counts of ``LUKVPress`` for prune ``ratios`` (float64, ``(..., heads)``, checked
    by the caller) and ``length`` tokens per head (an int >= 1)."""
    heads = ratios.shape[-1]
    rows = np.ascontiguousarray(ratios.reshape(-1, heads), dtype=np.float64)
    keep = np.clip(_F32(1.0) - rows.astype(_F32), _F32(0.0), _F32(1.0))
    ideal = keep * _F32(length)  # float32 times float32: torch promotes the int to float32
    totals = np.rint(torch_cpu_sum(ideal, lanes)).astype(np.float64)
    totals = np.clip(totals, heads, heads * length).astype(np.int64)
    base = np.floor(ideal).astype(np.int64)
    leftover = totals - base.sum(axis=-1)
    frac = ideal - base.astype(_F32)  # float32 minus int64: float32 in torch
    k = np.clip(leftover, 0, heads)
    # Where the k-th and (k+1)-th largest fractional parts differ, the top k are the same set
    # in any order: rank them all at once. Rows with a tie across that boundary replay topk.
    order = np.argsort(-frac, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(heads), axis=-1)
    counts = base + (rank < k[:, None])
    ordered = np.take_along_axis(frac, order, axis=-1)
    inner = np.flatnonzero((k > 0) & (k < heads))
    kth = ordered[inner, k[inner] - 1]
    tied = inner[kth == ordered[inner, k[inner]]]
    for r in tied:
        counts[r] = base[r]
        counts[r, torch_cpu_topk_set(frac[r], int(k[r]))] += 1
    return np.clip(counts, 1, length).reshape(ratios.shape)


# -- torch's CPU float32 sum -------------------------------------------------------------------
def _ceil_log2(x):
    return 0 if x <= 1 else int(x - 1).bit_length()


def _multi_row_sum(rows):
    """ATen ``multi_row_sum``: ``rows`` (R, size, nrows, W) summed over ``size`` with a
    four-level cascade; returns (R, nrows, W)."""
    size = rows.shape[1]
    levels = 4
    power = max(4, _ceil_log2(size) // levels)
    step = 1 << power
    mask = step - 1
    acc = np.zeros((levels,) + rows.shape[:1] + rows.shape[2:], dtype=_F32)
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] += rows[:, i]
            i += 1
        for j in range(1, levels):
            acc[j] += acc[j - 1]
            acc[j - 1] = 0
            if i & (mask << (j * power)):
                break
    while i < size:
        acc[0] += rows[:, i]
        i += 1
    for j in range(1, levels):
        acc[0] += acc[j]
    return acc[0]


def _row_sum(items):
    """ATen ``row_sum`` with four interleaved accumulators: ``items`` (R, m, W) -> (R, W)."""
    R, m, W = items.shape
    groups = m // 4
    partial = _multi_row_sum(items[:, : 4 * groups].reshape(R, groups, 4, W))  # (R, 4, W)
    for i in range(4 * groups, m):
        partial[:, 0] += items[:, i]
    for k in range(1, 4):
        partial[:, 0] += partial[:, k]
    return partial[:, 0]


def torch_cpu_sum(x, lanes=DEFAULT_LANES):
    """float32 sums of the rows of ``x`` (R, n), in the order of ``torch.sum`` on a CPU whose
    vector type holds ``lanes`` floats (contiguous inner reduction)."""
    x = np.asarray(x, dtype=_F32)
    R, n = x.shape
    if n < lanes:  # scalar path
        return _row_sum(x[:, :, None])[:, 0]
    vectors = n // lanes
    vec = _row_sum(x[:, : vectors * lanes].reshape(R, vectors, lanes))  # (R, lanes)
    total = np.zeros(R, dtype=_F32)
    for k in range(vectors * lanes, n):
        total += x[:, k]
    for lane in range(lanes):
        total += vec[:, lane]
    return total


# -- torch.topk on CPU: libstdc++'s nth_element / partial_sort -----------------------------------
def torch_cpu_topk_set(values, k):
    """Indices ``torch.topk(values, k)`` returns on a CPU (as a set, in no order): the same
    selection algorithm on the same (value, index) pairs, so ties resolve the same way."""
    n = len(values)
    queue = [(float(v), i) for i, v in enumerate(values)]

    def comp(a, b):  # "a before b": larger value first (values here are never NaN)
        return a[0] > b[0]

    if k * 64 <= n:
        _heap_select(queue, 0, k, n, comp)
    else:
        _nth_element(queue, k - 1, comp)
    return np.array(sorted(i for _, i in queue[:k]), dtype=np.int64)


def _nth_element(a, nth, comp):
    n = len(a)
    if n == 0 or nth == n:
        return
    first, last = 0, n
    depth = 2 * (n.bit_length() - 1)
    while last - first > 3:
        if depth == 0:
            _heap_select(a, first, nth + 1, last, comp)
            a[first], a[nth] = a[nth], a[first]
            return
        depth -= 1
        cut = _unguarded_partition_pivot(a, first, last, comp)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(a, first, last, comp)


def _unguarded_partition_pivot(a, first, last, comp):
    mid = first + (last - first) // 2
    _move_median_to_first(a, first, first + 1, mid, last - 1, comp)
    return _unguarded_partition(a, first + 1, last, first, comp)


def _move_median_to_first(a, result, x, y, z, comp):
    if comp(a[x], a[y]):
        pick = y if comp(a[y], a[z]) else (z if comp(a[x], a[z]) else x)
    else:
        pick = x if comp(a[x], a[z]) else (z if comp(a[y], a[z]) else y)
    a[result], a[pick] = a[pick], a[result]


def _unguarded_partition(a, first, last, pivot, comp):
    while True:
        while comp(a[first], a[pivot]):
            first += 1
        last -= 1
        while comp(a[pivot], a[last]):
            last -= 1
        if not first < last:
            return first
        a[first], a[last] = a[last], a[first]
        first += 1


def _insertion_sort(a, first, last, comp):
    if first == last:
        return
    for i in range(first + 1, last):
        val = a[i]
        if comp(val, a[first]):
            a[first + 1 : i + 1] = a[first:i]
            a[first] = val
        else:
            j = i
            while comp(val, a[j - 1]):
                a[j] = a[j - 1]
                j -= 1
            a[j] = val


def _heap_select(a, first, middle, last, comp):
    _make_heap(a, first, middle, comp)
    for i in range(middle, last):
        if comp(a[i], a[first]):
            value = a[i]
            a[i] = a[first]
            _adjust_heap(a, first, 0, middle - first, value, comp)


def _make_heap(a, first, last, comp):
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(a, first, parent, length, a[first + parent], comp)
        if parent == 0:
            return
        parent -= 1


def _adjust_heap(a, first, hole, length, value, comp):
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if comp(a[first + child], a[first + child - 1]):
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and comp(a[first + parent], value):
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = value
