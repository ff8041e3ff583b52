"""Seeded random curves and hypothesis strategies shared by the tests."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import strategies as st


def scaled(n):
    """``n`` examples, times ``$BUDGETOPT_HYPOTHESIS_SCALE`` (default 1) for longer searches."""
    return max(1, int(n * float(os.environ.get("BUDGETOPT_HYPOTHESIS_SCALE", "1"))))


def random_curves(seed, head_shape=(3,), n_points=5, *, kind="random", grid="unit", max_step=3):
    """Seeded ``(utility, grid)`` arrays for tests.

    Parameters
    ----------
    seed : int
    head_shape : tuple of int
    n_points : int
    kind : {"random", "monotone", "increasing", "concave"}
        ``"random"``: any values (non-monotone, non-concave); ``"monotone"``: non-decreasing
        (flat steps possible); ``"increasing"``: strictly increasing;
        ``"concave"``: non-decreasing with non-increasing increments (concave on an
        equally spaced grid).
    grid : {"unit", "equal", "shared", "per_head"}
        ``"unit"``: ``arange(K)``; ``"equal"``: equal steps of a random size, shared;
        ``"shared"``: random non-decreasing steps (repeats allowed), shared; ``"per_head"``:
        random non-decreasing steps per head, starting at a random offset.
    max_step : int
        Largest random grid step.
    """
    rng = np.random.default_rng(seed)
    shape = (*head_shape, n_points)
    if kind == "random":
        utility = rng.normal(size=shape).round(3)
    elif kind == "monotone":
        utility = np.cumsum(rng.random(shape).round(3), axis=-1)
    elif kind == "increasing":
        utility = np.cumsum(rng.random(shape).round(3) + 0.001, axis=-1)
    elif kind == "concave":
        steps = -np.sort(-rng.random(shape).round(3), axis=-1)
        steps[..., 0] = rng.random(head_shape).round(3)
        utility = np.cumsum(steps, axis=-1)
    else:
        raise ValueError(kind)
    if grid == "unit":
        g = np.arange(n_points)
    elif grid == "equal":
        g = np.arange(n_points) * int(rng.integers(1, max_step + 1))
    elif grid == "shared":
        g = np.concatenate([[0], np.cumsum(rng.integers(0, max_step + 1, n_points - 1))])
    elif grid == "per_head":
        start = rng.integers(0, max_step + 1, (*head_shape, 1))
        g = start + np.concatenate(
            [np.zeros((*head_shape, 1), dtype=np.int64), np.cumsum(rng.integers(0, max_step + 1, (*head_shape, n_points - 1)), axis=-1)],
            axis=-1,
        )
    else:
        raise ValueError(grid)
    return utility, np.asarray(g, dtype=np.int64)


# Utility values: quarters (exact in binary, so sums are exact and ties are common) or
# arbitrary floats of moderate size.
_quarters = st.integers(-40, 40).map(lambda i: i / 4)
_floats = st.floats(-100, 100, allow_nan=False, allow_infinity=False, allow_subnormal=False)
utility_values = st.one_of(_quarters, _floats)


@st.composite
def problems(draw, max_heads=4, max_points=5, *, concave_equal_steps=False, bounds=True, per_head_grid=None):
    """A dict ``utility, grid, total_budget, min_budget, max_budget`` for a small problem.

    With ``concave_equal_steps`` every head's curve is concave (quarter-valued) on a grid of
    one shared step size (per-head offsets allowed): the case where the greedy is exact.
    Floors and caps, when drawn, are scalars or head-shaped arrays with ``min <= max``.
    """
    n_dims = draw(st.integers(1, 2))
    if n_dims == 1:
        head_shape = (draw(st.integers(1, max_heads)),)
    else:
        head_shape = (draw(st.integers(1, 2)), draw(st.integers(1, max(1, max_heads // 2))))
    n_heads = int(np.prod(head_shape))
    k = draw(st.integers(1, max_points))
    if concave_equal_steps:
        step = draw(st.integers(1, 3))
        first = draw(st.lists(_quarters, min_size=n_heads, max_size=n_heads))
        rows = []
        for h in range(n_heads):
            inc = sorted(draw(st.lists(_quarters, min_size=k - 1, max_size=k - 1)), reverse=True)
            rows.append(np.concatenate([[first[h]], first[h] + np.cumsum(inc)]))
        utility = np.asarray(rows, dtype=np.float64).reshape(*head_shape, k)
        if draw(st.booleans()):
            grid = np.arange(k, dtype=np.int64) * step
        else:
            offsets = np.asarray(draw(st.lists(st.integers(0, 4), min_size=n_heads, max_size=n_heads)))
            grid = (offsets[:, None] + step * np.arange(k)[None, :]).reshape(*head_shape, k).astype(np.int64)
    else:
        utility = np.asarray(draw(st.lists(utility_values, min_size=n_heads * k, max_size=n_heads * k)))
        utility = utility.reshape(*head_shape, k)
        shared = draw(st.booleans()) if per_head_grid is None else not per_head_grid
        n_rows = 1 if shared else n_heads
        rows = []
        for _ in range(n_rows):
            start = draw(st.integers(0, 3))
            steps = draw(st.lists(st.integers(0, 4), min_size=k - 1, max_size=k - 1))
            rows.append(np.concatenate([[start], start + np.cumsum(steps, dtype=np.int64)]))
        grid = np.asarray(rows, dtype=np.int64)
        grid = grid[0] if shared else grid.reshape(*head_shape, k)
    g2 = np.broadcast_to(grid.reshape(-1, k), (n_heads, k))
    capacity = int(g2[:, -1].sum())
    total = draw(st.integers(0, capacity + 3))
    lo = hi = None
    if bounds:
        top = int(g2.max())
        kind = draw(st.sampled_from(["none", "scalar", "array"]))
        if kind == "scalar":
            lo = draw(st.one_of(st.none(), st.integers(0, top)))
            hi = draw(st.one_of(st.none(), st.integers(lo or 0, top + 2)))
        elif kind == "array":
            lo_list = draw(st.lists(st.integers(0, top), min_size=n_heads, max_size=n_heads))
            hi_list = [draw(st.integers(v, top + 2)) for v in lo_list]
            lo = np.asarray(lo_list, dtype=np.int64).reshape(head_shape) if draw(st.booleans()) else None
            hi = np.asarray(hi_list, dtype=np.int64).reshape(head_shape) if draw(st.booleans()) else None
    return {"utility": utility, "grid": grid, "total_budget": total, "min_budget": lo, "max_budget": hi}
