"""budgetopt: per-head KV-cache budget allocation.

Turn per-attention-head utility curves into per-head token budgets for a global KV-cache
budget: the upper-hull marginal-utility greedy of LU-KV (arXiv 2602.08585) with an
optimality certificate, and exact baselines (MILP, cvxpy, dynamic programming).

``budget`` always means the fraction (or number of tokens) *kept*; kvpress's
``compression_ratio`` is the fraction removed, ``1 - budget``.
"""

from .api import METHODS, allocate, sweep
from .curves import Curves, load_curves, save_curves
from .errors import (
    BudgetoptError,
    CurvesFileError,
    InfeasibleError,
    InvalidInputError,
    InvalidTypeError,
    MissingDependencyError,
    ProblemTooLargeError,
    SolverError,
)
from .curves import hull_gap
from .lukv import load_lukv_table, lukv_table, save_lukv_table
from .profile import curves_from_scores
from .request import RequestAllocator
from .result import Allocation, Sweep
from .rounding import keep_counts_from_prune_ratios, tokens_from_fraction
from .calibration import Calibration, read_calibration
from .runs import ProfileRun, curves_from_run, load_profile_run, lukv_table_from_run

__version__ = "0.1.0"

__all__ = [
    "allocate",
    "sweep",
    "METHODS",
    "hull_gap",
    "curves_from_scores",
    "lukv_table",
    "RequestAllocator",
    "save_lukv_table",
    "load_lukv_table",
    "Sweep",
    "Curves",
    "load_curves",
    "save_curves",
    "Allocation",
    "tokens_from_fraction",
    "keep_counts_from_prune_ratios",
    "read_calibration",
    "Calibration",
    "load_profile_run",
    "ProfileRun",
    "lukv_table_from_run",
    "curves_from_run",
    "BudgetoptError",
    "CurvesFileError",
    "InfeasibleError",
    "InvalidInputError",
    "InvalidTypeError",
    "MissingDependencyError",
    "ProblemTooLargeError",
    "SolverError",
]
