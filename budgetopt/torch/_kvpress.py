"""kvpress, imported in one place for the presses and the profiler.

Importing kvpress patches transformers' attention functions (kvpress's own import-time
behaviour, which its head-wise masking needs); a missing kvpress is a
:class:`~budgetopt.MissingDependencyError` that says how to install it.
"""

from ..errors import MissingDependencyError

try:
    import kvpress
    from kvpress.presses.base_press import BasePress, is_prefilling
    from kvpress.presses.scorer_press import ScorerPress
except ImportError as _exc:  # pragma: no cover - exercised only without kvpress
    raise MissingDependencyError(
        "budgetopt's kvpress presses and profiler need kvpress; install it with: "
        "pip install 'budgetopt[kvpress]'"
    ) from _exc

__all__ = ["kvpress", "BasePress", "ScorerPress", "is_prefilling"]
