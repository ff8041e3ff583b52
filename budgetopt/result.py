"""The one result type every solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Allocation", "Sweep", "STATS_KEYS", "STATUSES"]

#: The values of :attr:`Allocation.status`.
STATUSES = ("optimal", "time_limit", "feasible")

#: The keys of :attr:`Allocation.stats` for each method (every result has all of them).
STATS_KEYS = {
    "greedy": ("lp_bound", "blocked_head", "left_after_lp", "hull_segments", "hull_points_fraction"),
    "milp": ("lp_bound", "variables", "mip_gap"),
    "cvxpy": ("lp_bound", "variables"),
    "dp": ("lp_bound", "unit", "budget_units", "cell_updates"),
    # budgetopt.RequestAllocator.allocate: budgets for one request from its own scores
    "request": ("shrinkage", "layerwise", "floor"),
    "exact": (
        "lp_bound", "tolerance", "integral", "value_step", "greedy_utility", "improved_on_greedy",
        "lagrangian_bound", "cardinality_bound", "rank_limit", "proved_by", "fixed_heads", "core_heads",
        "core_options", "layers_done", "states", "max_layer_states",
    ),
}


@dataclass(frozen=True)
class Allocation:
    """Per-head token budgets chosen for one total budget, with their certificate.

    Every method (``"greedy"``, ``"milp"``, ``"cvxpy"``, ``"dp"``, ``"exact"``, and
    ``"request"`` from :class:`budgetopt.RequestAllocator`) returns this type with the same
    fields; solver-specific figures live in :attr:`stats`, whose keys are
    fixed per method (see :data:`STATS_KEYS`).

    Attributes
    ----------
    budgets : numpy.ndarray of int64, shape ``head_shape``
        Tokens each head keeps; each is one of that head's grid points, within its floor and
        cap. Read-only.
    used : int
        ``budgets.sum()``; never more than :attr:`total_budget`.
    total_budget : int
        The total budget that was asked for, in tokens (the grid's unit).
    utility : float
        Total utility of :attr:`budgets`, recomputed from the input curves.
    upper_bound : float
        A proven upper bound on the best achievable total utility. For ``"greedy"`` it is the
        value of the LP relaxation (the upper concave hulls); for the exact methods it is the
        optimum (for ``"milp"``/``"cvxpy"``, the solver's proven dual bound).
    gap : float
        ``upper_bound - utility`` (>= 0): how far from optimal the answer can be at most.
    threshold : float
        The marginal utility per token at which the greedy stopped: the multiplier (dual
        value) of the budget constraint in the LP relaxation. 0 when the budget does not bind.
        Every method reports it (exact methods compute it from the same hulls).
    method : str
        The method that produced the result.
    status : str
        What the method proved about :attr:`budgets`: ``"optimal"`` (an exact method proved
        that no allocation is better, up to its tolerance), ``"time_limit"`` (an exact method
        stopped at its time limit: the best allocation found, with a valid
        :attr:`upper_bound`) or ``"feasible"`` (the greedy and per-request budgets: within
        every floor, cap and the budget, and at most :attr:`gap` below the optimum of their
        curves; they do not try to prove more).
    seconds : float
        Wall-clock time of the solve, front-door validation excluded, and so is the one-time
        compilation (or loading from the cache) of budgetopt's compiled kernels, for every
        method.
    stats : dict
        Method-specific figures; every result of a method has the same keys
        (:data:`STATS_KEYS`), a key whose figure was not computed on a run holds None.
        Greedy: ``lp_bound``, ``blocked_head`` (the index tuple in the head shape, e.g.
        ``(3, 1)``, of the head whose hull segment did not fit; None when every segment
        fit), ``left_after_lp`` (tokens the LP part left to the repair), ``hull_segments``
        (segments in the hulls searched) and ``hull_points_fraction`` (share of the usable
        grid points whose hulls were built: below 1 when only the range around the
        threshold was needed). Exact methods: sizes and bounds (docs/api.md describes each).

    Notes
    -----
    Allocations behave like values: ``a == b`` compares the solution (``budgets``, ``used``,
    ``total_budget``, ``utility``, ``upper_bound``, ``gap``, ``threshold``, ``method``
    and ``status``), never the timing ``seconds`` nor the diagnostic ``stats``, so the same problem solved
    twice gives equal results. They are hashable, consistently with ``==`` (the object and
    its arrays are read-only), so they can be dict keys or set members.

    Examples
    --------
    >>> import budgetopt
    >>> a = budgetopt.allocate([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]], 2)
    >>> b = budgetopt.allocate([[0.0, 0.6, 0.7], [0.0, 0.5, 0.9]], 2)
    >>> a == b, hash(a) == hash(b), a.seconds is b.seconds
    (True, True, False)
    >>> a.status, sorted(a.stats) == sorted(STATS_KEYS["greedy"])
    ('feasible', True)
    """

    budgets: np.ndarray
    used: int
    total_budget: int
    utility: float
    upper_bound: float
    gap: float
    threshold: float
    method: str
    status: str
    seconds: float
    stats: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        budgets = np.array(self.budgets, dtype=np.int64, copy=True)
        budgets.setflags(write=False)
        object.__setattr__(self, "budgets", budgets)

    def _key(self):
        return (self.budgets.shape, self.budgets.tobytes(), self.used, self.total_budget, self.utility,
                self.upper_bound, self.gap, self.threshold, self.method, self.status)

    def __eq__(self, other):
        if not isinstance(other, Allocation):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    @classmethod
    def from_solution(cls, budgets, utility, *, total_budget, upper_bound, threshold, method, status, seconds,
                      stats):
        """The result of a solver: ``used`` and ``gap`` derived, and the bound guarded
        against the last-bit rounding of sums (a proven bound is never below a value
        actually reached)."""
        budgets = np.array(budgets, dtype=np.int64, copy=True)
        budgets.setflags(write=False)
        utility = float(utility)
        bound = max(float(upper_bound), utility)
        # The fields as the generated __init__ and __post_init__ would set them (``budgets``
        # is already the read-only copy), without their per-field frozen-setattr calls.
        self = object.__new__(cls)
        self.__dict__.update(
            budgets=budgets,
            used=int(budgets.sum()),
            total_budget=int(total_budget),
            utility=utility,
            upper_bound=bound,
            gap=bound - utility,
            threshold=float(threshold),
            method=method,
            status=status,
            seconds=float(seconds),
            stats=stats,
        )
        return self

    @property
    def head_shape(self):
        """Shape of the head grid, as in the input curves."""
        return self.budgets.shape

    def to_dict(self):
        """JSON-ready dictionary of the fixed fields (``budgets`` as nested lists)."""
        return {
            "budgets": self.budgets.tolist(),
            "head_shape": list(self.budgets.shape),
            "used": int(self.used),
            "total_budget": int(self.total_budget),
            "utility": float(self.utility),
            "upper_bound": float(self.upper_bound),
            "gap": float(self.gap),
            "threshold": float(self.threshold),
            "method": self.method,
            "status": self.status,
            "seconds": float(self.seconds),
        }


@dataclass(frozen=True)
class Sweep:
    """Greedy allocations for many total budgets at once (see :func:`budgetopt.sweep`).

    Row ``i`` of every array belongs to ``totals[i]`` and equals
    ``allocate(curves, totals[i], method="greedy")`` with the same floors and caps.

    Attributes
    ----------
    totals : ndarray int64 (n,)
    budgets : ndarray int64 (n, *head_shape)
    used : ndarray int64 (n,)
    utility, upper_bound, gap, threshold : ndarray float64 (n,)
    seconds : float
        Wall-clock time of the whole sweep.

    Notes
    -----
    Like :class:`Allocation`, a value: ``==`` compares every array (``totals``, ``budgets``,
    ``used``, ``utility``, ``upper_bound``, ``gap``, ``threshold``), never ``seconds``, and
    the hash agrees with ``==``.
    """

    totals: np.ndarray
    budgets: np.ndarray
    used: np.ndarray
    utility: np.ndarray
    upper_bound: np.ndarray
    gap: np.ndarray
    threshold: np.ndarray
    seconds: float

    def __post_init__(self):
        for name in ("totals", "budgets", "used", "utility", "upper_bound", "gap", "threshold"):
            arr = np.array(getattr(self, name), copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    _ARRAYS = ("totals", "budgets", "used", "utility", "upper_bound", "gap", "threshold")

    def __eq__(self, other):
        if not isinstance(other, Sweep):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in self._ARRAYS)

    def __hash__(self):  # from the integer arrays only, so equal sweeps hash alike
        return hash((self.budgets.shape, self.totals.astype(np.int64).tobytes(),
                     self.budgets.astype(np.int64).tobytes()))

    def __len__(self):
        return len(self.totals)

    def __getitem__(self, i):
        """Row ``i`` as an :class:`Allocation` (method ``"greedy"``, status ``"feasible"``;
        ``seconds`` is the sweep's time divided by its number of rows; the ``stats`` that a
        sweep does not work out are None)."""
        return Allocation(
            budgets=self.budgets[i],
            used=int(self.used[i]),
            total_budget=int(self.totals[i]),
            utility=float(self.utility[i]),
            upper_bound=float(self.upper_bound[i]),
            gap=float(self.gap[i]),
            threshold=float(self.threshold[i]),
            method="greedy",
            status="feasible",
            seconds=self.seconds / len(self),
            stats=dict.fromkeys(STATS_KEYS["greedy"]),
        )
