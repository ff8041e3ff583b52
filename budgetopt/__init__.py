"""budgetopt: per-head KV-cache budget allocation.

Turn per-attention-head utility curves into per-head token budgets for a global KV-cache
budget: the upper-hull marginal-utility greedy of LU-KV (arXiv 2602.08585) with an
optimality certificate, and exact baselines (MILP, cvxpy, dynamic programming).

``budget`` always means the fraction (or number of tokens) *kept*; kvpress's
``compression_ratio`` is the fraction removed, ``1 - budget``.

``import budgetopt`` is cheap: each public name is imported from its module the first time it
is used (``budgetopt.allocate``, ``from budgetopt import allocate``), so the command line starts
without loading numpy, scipy or numba until a command needs them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first use, PEP 562).
_SOURCES = {
    "allocate": "api",
    "sweep": "api",
    "METHODS": "api",
    "hull_gap": "curves",
    "curves_from_scores": "profile",
    "lukv_table": "lukv",
    "RequestAllocator": "request",
    "save_lukv_table": "lukv",
    "load_lukv_table": "lukv",
    "Sweep": "result",
    "Curves": "curves",
    "load_curves": "curves",
    "save_curves": "curves",
    "Allocation": "result",
    "tokens_from_fraction": "rounding",
    "keep_counts_from_prune_ratios": "rounding",
    "read_calibration": "calibration",
    "Calibration": "calibration",
    "load_profile_run": "runs",
    "ProfileRun": "runs",
    "lukv_table_from_run": "runs",
    "curves_from_run": "runs",
    "BudgetoptError": "errors",
    "CurvesFileError": "errors",
    "InfeasibleError": "errors",
    "InvalidInputError": "errors",
    "InvalidTypeError": "errors",
    "MissingDependencyError": "errors",
    "ProblemTooLargeError": "errors",
    "SolverError": "errors",
}

__all__ = list(_SOURCES)


def __getattr__(name):
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'budgetopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():  # the public API only
    return sorted([*__all__, "__version__"])

