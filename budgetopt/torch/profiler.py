"""The profiling engine's public names, in the one module the docs import them from.

``from budgetopt.torch.profiler import profile_context`` (also lazily as
``budgetopt.torch.profile_context``). Each name is defined in the module of its concept:
:mod:`budgetopt.torch.geometry` (:func:`model_geometry`, :class:`ModelGeometry`,
:data:`SUPPORTED_MODEL_TYPES`), :mod:`budgetopt.torch.profiling.scorers`
(:func:`resolve_scorer`, :data:`SCORER_NAMES`), :mod:`budgetopt.torch.profiling.norms`
(:func:`value_output_norms`) and :mod:`budgetopt.torch.profiling.context`
(:func:`profile_context`, :class:`ContextProfile`); see :mod:`budgetopt.torch.profiling` for the
whole profiling side.

Importing this module imports kvpress (which patches transformers' attention functions at
import, its own behaviour); :mod:`budgetopt.torch` therefore exposes these names lazily.
"""

from __future__ import annotations

from .geometry import SUPPORTED_MODEL_TYPES, ModelGeometry, model_geometry
from .profiling.context import ContextProfile, profile_context
from .profiling.norms import value_output_norms
from .profiling.scorers import SCORER_NAMES, resolve_scorer

__all__ = [
    "ModelGeometry",
    "ContextProfile",
    "SUPPORTED_MODEL_TYPES",
    "SCORER_NAMES",
    "model_geometry",
    "resolve_scorer",
    "value_output_norms",
    "profile_context",
]
