"""The canonical problem that every algorithm takes, built once at the front door.

A :class:`Problem` holds validated arrays only: the algorithms never see user objects and
never re-check. Building one converts ``min_budget``/``max_budget`` into each head's range of
usable grid indices, so a floor or cap is applied in exactly one place.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ._checks import refuse_masked, too_large_ints
from ._limits import MAX_TOKENS, MAX_TOKENS_TEXT
from .curves import Curves, as_curves
from .errors import InfeasibleError, InvalidInputError, InvalidTypeError

__all__ = ["Problem", "build_problem", "check_total", "check_time_limit", "MAX_TOKENS"]


@dataclass(frozen=True)
class Problem:
    """Validated arrays of one allocation problem (all budgets still to be chosen).

    Attributes
    ----------
    curves : Curves
    utility : ndarray float64 (H, K)
    grid : ndarray int64 (G, K), G in {1, H}
    per_head : int
        1 when each head has its own grid row, else 0 (head ``h`` reads ``grid[h * per_head]``).
    lo, hi : ndarray int64 (H,)
        Head ``h`` may use grid indices ``lo[h] <= k < hi[h]`` (its floor and cap applied).
    floor_total : int
        Tokens used when every head takes its smallest usable grid point.
    ceiling_total : int
        Tokens used when every head takes its largest usable grid point (no total beyond it
        changes the answer).
    unit_steps : ndarray bool (H,)
        Whether each head's grid advances one token at a time (per-token curves).
    """

    curves: Curves
    utility: np.ndarray
    grid: np.ndarray
    per_head: int
    lo: np.ndarray
    hi: np.ndarray
    floor_total: int
    ceiling_total: int
    unit_steps: np.ndarray

    @property
    def n_heads(self):
        return self.utility.shape[0]

    def head_grid(self, h):
        return self.grid[h * self.per_head]

    def head_index(self, h):
        """Flat head ``h`` as a tuple index into the head shape, e.g. ``(3, 1)``."""
        if not 0 <= h < self.n_heads:
            raise IndexError(f"head {h} is out of range for {self.n_heads} heads")
        index = []
        for n in reversed(self.curves.head_shape):  # C order: the last axis varies fastest
            h, i = divmod(int(h), n)
            index.append(i)
        return tuple(reversed(index))

    def pick(self, idx):
        """Budgets (head shape) and total utility of grid indices ``idx`` (one per head)."""
        heads = np.arange(self.utility.shape[0])
        tokens = self.grid[heads, idx] if self.per_head else self.grid[0][idx]
        return tokens.reshape(self.curves.head_shape), float(self.utility[heads, idx].sum())


def _bound(value, name, head_shape):
    """A floor or cap as int64 ``(H,)``, or None."""
    if value is None:
        return None
    refuse_masked(value, name)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise InvalidTypeError(
            f"`{name}` must be a whole number of tokens or an array of them in the head shape "
            f"{tuple(head_shape)}; could not convert it ({exc})"
        ) from None
    if arr.dtype.kind == "O" and too_large_ints(arr):
        raise InvalidInputError(f"`{name}` values are too large: they must be below {MAX_TOKENS_TEXT} tokens")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise InvalidTypeError(f"`{name}` must be a whole number of tokens or an array of them; got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError(f"`{name}` must be finite")
        if np.any(arr != np.floor(arr)):
            raise InvalidInputError(f"`{name}` must hold whole token counts")
    if np.any(arr < 0):
        raise InvalidInputError(f"`{name}` must be non-negative")
    if arr.ndim and arr.shape != tuple(head_shape):
        raise InvalidInputError(
            f"`{name}` must be a scalar or have the head shape {tuple(head_shape)}; got shape {arr.shape}"
        )
    if arr.size and (int(arr.max()) if arr.dtype.kind in "iu" else float(arr.max())) >= MAX_TOKENS:
        raise InvalidInputError(f"`{name}` values are too large: they must be below {MAX_TOKENS_TEXT} tokens")
    return np.broadcast_to(arr.astype(np.int64), tuple(head_shape)).reshape(-1)


def build_problem(curves, min_budget=None, max_budget=None):
    """Validate ``curves`` and the per-head floors/caps into a :class:`Problem`.

    Raises
    ------
    InvalidInputError, InvalidTypeError
        Bad curves, or a floor/cap of the wrong type, sign or shape, or a floor above a cap.
    InfeasibleError
        Some head has no grid point within its [floor, cap].
    """
    curves = as_curves(curves)
    facts = curves._grid_facts()
    if facts.capacity >= MAX_TOKENS:
        raise InvalidInputError(
            f"`curves` hold {facts.capacity} tokens in all (the sum of each head's largest grid "
            f"point); the solvers handle totals below {MAX_TOKENS_TEXT}"
        )
    utility = curves.utility2d
    grid = curves.grid2d
    H, K = utility.shape
    per_head = 0 if curves.shared_grid else 1
    # Without a floor (cap) every head starts (ends) at its first (last) grid point: the
    # totals are the grid's own, known from the curves.
    if min_budget is None and max_budget is None:
        lo = np.zeros(H, np.int64)
        hi = np.full(H, K, np.int64)
        floor_total, ceiling_total = facts.floor, facts.capacity
    else:
        lo, hi, floor_total, ceiling_total = _index_ranges(curves, grid, per_head, facts, min_budget, max_budget)
    # Shared grid: one read-only view for every problem. Per-head flags: each problem's own.
    unit_steps = facts.unit.copy() if per_head else facts.unit
    return Problem(curves, utility, grid, per_head, lo, hi, floor_total, ceiling_total, unit_steps)


def _index_ranges(curves, grid, per_head, facts, min_budget, max_budget):
    """``lo, hi, floor_total, ceiling_total`` of a problem with a floor or a cap."""
    H, K = curves.n_heads, curves.n_points
    mins = _bound(min_budget, "min_budget", curves.head_shape)
    maxs = _bound(max_budget, "max_budget", curves.head_shape)
    if mins is not None and maxs is not None and np.any(mins > maxs):
        h = int(np.flatnonzero(mins > maxs)[0])
        label = _label(curves, h)
        raise InvalidInputError(
            f"`min_budget` must not exceed `max_budget`; at head {label} min is {mins[h]} and max is {maxs[h]}"
        )
    if per_head:
        lo = np.zeros(H, np.int64) if mins is None else _searchsorted_rows(grid, mins, "left")
        hi = np.full(H, K, np.int64) if maxs is None else _searchsorted_rows(grid, maxs, "right")
    else:
        row = grid[0]
        lo = np.zeros(H, np.int64) if mins is None else np.searchsorted(row, mins, "left").astype(np.int64)
        hi = np.full(H, K, np.int64) if maxs is None else np.searchsorted(row, maxs, "right").astype(np.int64)
    empty = lo >= hi
    if empty.any():
        h = int(np.flatnonzero(empty)[0])
        g = grid[h * per_head]
        lo_s = "-" if mins is None else mins[h]
        hi_s = "-" if maxs is None else maxs[h]
        raise InfeasibleError(
            f"head {_label(curves, h)} has no grid point within its [min_budget, max_budget] = "
            f"[{lo_s}, {hi_s}] (its grid spans {g[0]}..{g[-1]})"
        )
    rows = np.arange(H) * per_head
    floor_total = facts.floor if mins is None else int(grid[rows, lo].sum())
    ceiling_total = facts.capacity if maxs is None else int(grid[rows, hi - 1].sum())
    return lo, hi, floor_total, ceiling_total


def _label(curves, h):
    idx = np.unravel_index(h, curves.head_shape)
    return str(tuple(int(i) for i in idx)) if len(idx) != 1 else str(int(idx[0]))


def _searchsorted_rows(grid, values, side):
    # Rows are sorted: count of entries < v (left) or <= v (right), vectorised.
    if side == "left":
        return (grid < values[:, None]).sum(axis=1).astype(np.int64)
    return (grid <= values[:, None]).sum(axis=1).astype(np.int64)


def check_total(total_budget, name="total_budget"):
    """A total budget as a Python int in ``[0, 2**62)`` (whole tokens)."""
    if type(total_budget) is int and 0 <= total_budget < MAX_TOKENS:  # the common case, at once
        return total_budget
    if isinstance(total_budget, (np.ma.MaskedArray, np.ma.core.MaskedConstant)):
        raise InvalidTypeError(f"`{name}` must be a whole number of tokens; got a masked array or value")
    if isinstance(total_budget, np.ndarray) and total_budget.ndim == 0:
        total_budget = total_budget.item()
    if isinstance(total_budget, (bool, np.bool_)):
        raise InvalidTypeError(f"`{name}` must be a whole number of tokens; got a bool")
    if isinstance(total_budget, numbers.Integral):
        total = int(total_budget)
    elif isinstance(total_budget, numbers.Real):
        t = float(total_budget)
        if not np.isfinite(t):
            raise InvalidInputError(f"`{name}` must be finite; got {t}")
        if t != np.floor(t):
            raise InvalidInputError(
                f"`{name}` is in tokens and must be a whole number; got {t} "
                "(for a fraction of the cache use budgetopt.tokens_from_fraction(f, curves.capacity))"
            )
        total = int(t)
    else:
        raise InvalidTypeError(f"`{name}` must be a whole number of tokens; got {type(total_budget).__name__}")
    if total < 0:
        raise InvalidInputError(f"`{name}` must be >= 0; got {total}")
    if total >= MAX_TOKENS:
        raise InvalidInputError(f"`{name}` is too large: totals must be below {MAX_TOKENS_TEXT} tokens; got {total}")
    return total


def check_time_limit(time_limit, name="time_limit"):
    """A time limit as a float number of seconds > 0, or None."""
    if time_limit is None:
        return None
    if isinstance(time_limit, (bool, np.bool_)) or not isinstance(time_limit, numbers.Real):
        raise InvalidTypeError(f"`{name}` must be a number of seconds or None; got {type(time_limit).__name__}")
    t = float(time_limit)
    if not (np.isfinite(t) and t > 0):
        raise InvalidInputError(f"`{name}` must be a finite number of seconds > 0; got {t}")
    return t


def require_feasible(problem, total):
    """Raise :class:`InfeasibleError` when ``total`` is below the sum of the floors."""
    if total < problem.floor_total:
        raise InfeasibleError(
            f"`total_budget` {total} is below {problem.floor_total}, the tokens needed when every head "
            "takes its smallest allowed grid point (raise the budget or lower `min_budget`)"
        )
