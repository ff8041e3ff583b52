"""The library's one thread-pool helper: ``fn(0), ..., fn(n - 1)`` in order on a few threads.

Used where a kernel releases the GIL and independent pieces can run at once: the pairs of
:func:`budgetopt.lukv_table` and the blocks of heads that :func:`budgetopt.request.proxy_curves`
reads. Results come back in index order whatever the thread count, so answers never depend on it.

The pool lives for one call (made, used, shut down): nothing outlives the call, nothing is
shared between callers and a forked child needs no special case. The per-request path used to
keep a pool per process; making one per call costs about 0.2 ms against 20-32 ms for
``RequestAllocator.allocate`` at 32 x 8 x 32,768 tokens, within that benchmark's noise
(``python benchmarks/bench_request.py --timing-only --baseline REV``; benchmarks/results/README.md,
"Issue 22"), so no pool is kept.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def map_in_order(fn, n, workers, *, name="budgetopt"):
    """Yield ``fn(0), ..., fn(n - 1)`` in order, computed on up to ``workers`` threads.

    ``workers <= 1`` (or ``n <= 1``) runs every call in the calling thread. Otherwise the calls
    run on a pool of ``min(workers, n)`` threads named ``name``; the first exception (from ``fn``
    or from the consumer) cancels the calls not yet started and propagates once the running
    ones end.

    Examples
    --------
    >>> list(map_in_order(lambda i: i * i, 4, 2))
    [0, 1, 4, 9]
    """
    if workers <= 1 or n <= 1:
        for i in range(n):
            yield fn(i)
        return
    pool = ThreadPoolExecutor(max_workers=min(workers, n), thread_name_prefix=name)
    try:
        futures = [pool.submit(fn, i) for i in range(n)]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
