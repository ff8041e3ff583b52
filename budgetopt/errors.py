"""The package's own exception types.

Every error that budgetopt raises on purpose derives from :class:`BudgetoptError`, so a
caller (and the CLI) can tell "your input is wrong" apart from a bug. Each class also
derives from the matching built-in (``ValueError``, ``TypeError``, ...) so code that
catches the built-in keeps working.
"""

from __future__ import annotations

__all__ = [
    "BudgetoptError",
    "InvalidInputError",
    "InvalidTypeError",
    "CurvesFileError",
    "InfeasibleError",
    "ProblemTooLargeError",
    "MissingDependencyError",
    "SolverError",
]


class BudgetoptError(Exception):
    """Base class of every error budgetopt raises on purpose."""


class InvalidInputError(BudgetoptError, ValueError):
    """An argument has the right type but a value that breaks a stated rule."""


class InvalidTypeError(BudgetoptError, TypeError):
    """An argument has a type budgetopt cannot use (object, complex, bool, ...)."""


class CurvesFileError(InvalidInputError):
    """A curves or table file is missing, unreadable, or does not hold what it should."""


class InfeasibleError(InvalidInputError):
    """No allocation satisfies the budget together with the per-head floors and caps."""


class ProblemTooLargeError(InvalidInputError):
    """An exact method was asked to solve a problem above its documented size limit."""


class MissingDependencyError(BudgetoptError, ImportError):
    """An optional dependency needed by the requested feature is not installed."""


class SolverError(BudgetoptError, RuntimeError):
    """An external solver failed to return an optimal solution."""
