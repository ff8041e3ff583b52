"""Front-door checks shared by the torch adapters.

Every public function in :mod:`budgetopt.torch` converts and checks its arguments here, once,
and hands only canonical tensors to the kernels. Each message names the argument and states
the whole rule; the rules that are not about tensors are the core's (:mod:`budgetopt._checks`).
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import refuse_masked
from ..errors import InvalidInputError, InvalidTypeError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(value, name, ndim, layout):
    """``value`` as a floating tensor with ``ndim`` axes; ``layout`` names the axes."""
    if not isinstance(value, torch.Tensor):
        raise InvalidTypeError(f"`{name}` must be a torch.Tensor {layout}; got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise InvalidTypeError(
            f"`{name}` must have a floating dtype (float16, bfloat16, float32 or float64); "
            f"got {value.dtype}"
        )
    if value.ndim != ndim:
        raise InvalidInputError(
            f"`{name}` must have {ndim} axes {layout}; got shape {tuple(value.shape)}"
        )
    return value


def budgets_on_host(budgets, batch, heads):
    """Budgets as a host int64 array of shape ``(batch, heads)``, or ``None`` for a tensor.

    Tensors are checked without reading their values (no device synchronisation); other
    inputs (NumPy arrays, lists) are converted on the host.
    """
    if isinstance(budgets, torch.Tensor):
        dtype_ok = budgets.dtype not in (torch.bool,) and not budgets.dtype.is_floating_point \
            and not budgets.dtype.is_complex
        kind = str(budgets.dtype)
        shape = tuple(budgets.shape)
        arr = None
    else:
        refuse_masked(budgets, "budgets")
        try:
            arr = np.asarray(budgets)
        except Exception as exc:  # ragged lists and the like
            raise InvalidTypeError(f"`budgets` must be an integer array; could not convert it ({exc})") from exc
        dtype_ok = arr.dtype.kind in "iu"
        kind = str(arr.dtype)
        shape = arr.shape
    if not dtype_ok:
        raise InvalidTypeError(
            "`budgets` must hold whole token counts with an integer dtype; got dtype "
            f"{kind} (turn fractions into tokens with budgetopt.tokens_from_fraction or "
            "budgetopt.keep_counts_from_prune_ratios)"
        )
    if shape != (heads,) and shape != (batch, heads):
        raise InvalidInputError(
            f"`budgets` must have shape (kv_heads,) = ({heads},) or (batch, kv_heads) = "
            f"({batch}, {heads}); got {shape}"
        )
    if arr is None:
        return None
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        arr = np.minimum(arr, np.iinfo(np.int64).max)  # any budget >= T keeps all: no wrap-around
    return np.broadcast_to(arr.astype(np.int64, copy=False), (batch, heads))


def budgets_tensor(budgets, batch, heads, device):
    """A checked budgets tensor as int64 ``(batch, heads)`` on ``device``."""
    # Host-to-device copies need not wait; a device-to-host copy must (it is read at once).
    out = budgets.to(device=device, dtype=torch.int64, non_blocking=device.type != "cpu")
    return out.expand(batch, heads)


def protected_span(length, sink, window):
    """``(s, w)``: the first ``s`` and last ``w`` of ``length`` tokens that are always kept.

    ``s = min(sink, length)`` and ``w = min(window, length - s)``, so the two never overlap
    and ``s + w`` is the number of protected tokens.
    """
    s = min(sink, length)
    return s, min(window, length - s)
