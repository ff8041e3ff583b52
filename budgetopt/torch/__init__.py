"""Apply per-head budgets to PyTorch KV caches.

Pure-torch adapters that run on the tensors' own device (CPU or CUDA; float16, bfloat16,
float32):

* :func:`keep_mask` -- which tokens each KV head keeps;
* :func:`compact` -- physically smaller keys and values (:class:`CompactKV`, padded to the
  longest head, and :meth:`CompactKV.to_varlen`, the packed layout of
  ``flash_attn_varlen_func``);
* :func:`reduce_gqa` -- KV-head scores from query-head scores (grouped-query attention);
* :func:`layer_budgets` -- one layer's budgets from an :class:`~budgetopt.Allocation`, a
  budgets array, or an LU-KV prune-ratio table (read one with
  :func:`budgetopt.lukv.load_lukv_table`).

``BudgetPress``, a kvpress press, and :func:`~budgetopt.torch.press.lukv_press` (kvpress's
own ``LUKVPress`` reading a local table) live in :mod:`budgetopt.torch.press` (they need the
optional ``kvpress`` package, which is imported only when the press is first used);
``RequestBudgetPress`` (per-request budgets from a :class:`budgetopt.RequestAllocator`) lives in
:mod:`budgetopt.torch.request_press`, and ``ProbeBudgetPress`` (the same with the request's own
probe oracles, decoded online after the prefill) in :mod:`budgetopt.torch.probe_press`, are
loaded the same way. ``BudgetPress``'s
``mode="varlen"`` keeps each head's tokens packed in a transformers cache,
:class:`budgetopt.torch.varlen_cache.VarlenCache`, read by the ``"budgetopt_varlen"``
attention registered in that module.
The profiling side lives in :mod:`budgetopt.torch.profiling` (scorers, the score-capture
press, value norms, the oracle's attention patching, the engine, calibration runs), the model
geometry reader in :mod:`budgetopt.torch.geometry`; the engine's public names
(:func:`~budgetopt.torch.profiler.profile_context`,
:func:`~budgetopt.torch.profiler.model_geometry`,
:func:`~budgetopt.torch.profiler.resolve_scorer`, ...) are importable from
:mod:`budgetopt.torch.profiler`. They need kvpress and transformers in the same way, as do
:func:`~budgetopt.torch.profiling.run.profile_model` (a whole calibration file into a run
directory) and :func:`~budgetopt.torch.profiling.run.load_local_model`.

The core package never imports this one; torch is an optional extra
(``pip install 'budgetopt[torch]'``).
"""

from ..errors import MissingDependencyError

try:
    import torch as _torch  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise MissingDependencyError(
        "budgetopt.torch needs PyTorch; install it with: pip install 'budgetopt[torch]'"
    ) from _exc

from .compact import CompactKV, VarlenKV, compact
from .gqa import reduce_gqa
from .layers import layer_budgets, lukv_row
from .mask import keep_mask

__all__ = [
    "keep_mask",
    "compact",
    "CompactKV",
    "VarlenKV",
    "reduce_gqa",
    "layer_budgets",
    "lukv_row",
    "BudgetPress",
    "lukv_press",
]

# The profiling engine (budgetopt.torch.profiler) and the calibration runs around it
# (budgetopt.torch.profiling.run: profile_model, load_local_model) import kvpress and
# transformers: their names resolve here on first use and stay out of __all__, so
# ``import *`` loads neither.

_PROFILER_NAMES = frozenset(
    ("profile_context", "model_geometry", "resolve_scorer", "value_output_norms",
     "ContextProfile", "ModelGeometry")
)


def __getattr__(name):
    # BudgetPress needs kvpress (which patches transformers' attention functions when it
    # is imported), so it is loaded on first use only.
    if name in ("BudgetPress", "lukv_press"):
        from . import press

        return getattr(press, name)
    if name in _PROFILER_NAMES:
        from . import profiler

        return getattr(profiler, name)
    if name in ("profile_model", "load_local_model"):
        from .profiling import run

        return getattr(run, name)
    if name == "RequestBudgetPress":
        from .request_press import RequestBudgetPress

        return RequestBudgetPress
    if name in ("ProbeBudgetPress", "encode_probes", "probe_oracles"):
        from . import probe_press

        return getattr(probe_press, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
