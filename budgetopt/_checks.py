"""Argument checks shared by every front door, core and torch alike: one rule, one message.

Each check names what it checks with ``ref``, the text the message uses for it: an
argument in backticks (```scores```) or a file the user gave (``--oracle run1.npy``).
Functions that take a bare ``name`` put it in backticks themselves.

The rules:

* a masked array is refused (its mask would be dropped): :func:`refuse_masked`;
* an array must convert and hold real numbers (integer or float dtype): :func:`real_array`;
* array values must be finite (the first bad one is located): :func:`check_finite`;
* a count is a Python or NumPy integer (not a bool) at least ``minimum``: :func:`check_int`;
* a real number is an int or float (not a bool, string or array): :func:`check_real`;
* a fraction is a real number in ``[0, 1]`` (or ``[0, 1)``): :func:`check_fraction`;
* a thread count is a positive integer or -1 (all cores): :func:`check_workers`, whose rule
  (:data:`WORKERS_RULE`, :func:`workers_ok`) the CLI's ``--workers`` parser uses too;
* a torch tensor is read as a NumPy array on the CPU, its device kept: :func:`from_tensor`.
"""

from __future__ import annotations

import numbers
import os
import sys

import numpy as np

from .errors import InvalidInputError, InvalidTypeError
from ._limits import MAX_TOKENS_TEXT


def refuse_masked(value, name):
    """:class:`InvalidTypeError` for a NumPy masked array: a mask would be silently dropped."""
    if isinstance(value, np.ma.MaskedArray):
        raise InvalidTypeError(
            f"`{name}` is a masked array; budgetopt does not read masks (fill the masked entries "
            "with `.filled(value)` or drop them first)"
        )


def too_large_ints(arr):
    """Whether the object array ``arr`` holds Python ints only, some beyond int64 (so NumPy
    could not give it an integer dtype): a number too large, not a wrong type."""
    values = list(arr.flat)
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values) and any(
        abs(v) >= 2**63 for v in values
    )


def real_array(value, ref):
    """``value`` as a NumPy array of integer or float dtype (no copy when it already is one).

    Raises :class:`InvalidTypeError` for a masked array, a value NumPy cannot convert
    (ragged lists) and any other dtype; :class:`InvalidInputError` for Python integers
    beyond int64 (a number too large, not a wrong type).
    """
    refuse_masked(value, ref.strip("`"))
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise InvalidTypeError(f"{ref} must be a numeric array; could not convert it ({exc})") from None
    if arr.dtype.kind == "O" and too_large_ints(arr):
        raise InvalidInputError(f"{ref} holds integers too large for int64 (values must be below {MAX_TOKENS_TEXT})")
    if arr.dtype.kind not in "iuf":
        raise InvalidTypeError(f"{ref} must hold real numbers (integer or float dtype); got dtype {arr.dtype}")
    return arr


def check_finite(arr, ref, *, by_token=True):
    """:class:`InvalidInputError` naming the first NaN or infinite entry of ``arr``, if any:
    by head and token for arrays of shape ``(*head_shape, T)`` (``by_token``), else by index.
    Integer arrays pass at once."""
    if arr.dtype.kind != "f":
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), arr.shape)
        kind = "NaN" if np.isnan(arr[idx]) else "inf"
        if by_token and arr.ndim >= 2:
            where = f" at head {tuple(int(i) for i in idx[:-1])}, token {int(idx[-1])}"
        else:
            where = f" at index {tuple(int(i) for i in idx)}" if arr.ndim else ""
        raise InvalidInputError(f"{ref} must be finite; found {kind}{where}")


def check_int(value, name, *, minimum=0):
    """``value`` as a Python int ``>= minimum``: a Python or NumPy integer, not a bool.
    ``minimum=None`` checks the type only (for a range the caller states in full).

    Examples
    --------
    >>> check_int(3, "sink")
    3
    >>> check_int(0, "head_capacity", minimum=1)
    Traceback (most recent call last):
    ...
    budgetopt.errors.InvalidInputError: `head_capacity` must be >= 1; got 0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"`{name}` must be an integer; got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"`{name}` must be >= {minimum}; got {value}")
    return value


def check_real(value, name):
    """``value`` as a Python float: an int or float (NumPy's too), not a bool, string or array."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"`{name}` must be a real number; got {type(value).__name__}")
    return float(value)


def check_fraction(value, name, *, upper_open=False):
    """``value`` as a Python float in ``[0, 1]``, or ``[0, 1)`` with ``upper_open`` (see
    :func:`check_real`; NaN is out of range)."""
    value = check_real(value, name)
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        raise InvalidInputError(f"`{name}` must be in [0, 1{')' if upper_open else ']'}; got {value!r}")
    return value


#: The rule for a thread count, in the words every front door (Python and CLI) uses.
WORKERS_RULE = "a positive integer or -1 (all cores)"


def workers_ok(value):
    """Whether the integer ``value`` is a valid thread count (see :data:`WORKERS_RULE`)."""
    return value >= 1 or value == -1


def check_workers(value, name="workers"):
    """``value`` as a number of threads: a positive Python or NumPy integer (not a bool), or
    -1 for one per core (``os.cpu_count()``).

    Examples
    --------
    >>> check_workers(3)
    3
    >>> check_workers(0)
    Traceback (most recent call last):
    ...
    budgetopt.errors.InvalidInputError: `workers` must be a positive integer or -1 (all cores); got 0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"`{name}` must be {WORKERS_RULE}; got {value!r}")
    value = int(value)
    if not workers_ok(value):
        raise InvalidInputError(f"`{name}` must be {WORKERS_RULE}; got {value}")
    return (os.cpu_count() or 1) if value == -1 else value


def from_tensor(value):
    """``(array, device)`` for a torch tensor: its values as a NumPy array on the CPU (float64
    for floating dtypes, which holds every float32, float16 and bfloat16 value exactly; NumPy
    has no bfloat16) and its device. Anything else is returned as ``(value, None)``; torch is
    never imported here (a tensor exists only if torch already is)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.Tensor):
        return value, None
    tensor = value.detach()
    if tensor.is_floating_point():
        tensor = tensor.to(device="cpu", dtype=torch.float64)
    return tensor.cpu().numpy(), value.device
