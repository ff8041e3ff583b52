"""Utility curves: the problem's data, its validation, and its ``.npz`` file format."""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np

from ._io import as_path, check_input_file, read_npz, write_atomic  # noqa: F401 (re-exported)
from ._checks import real_array
from .errors import CurvesFileError, InvalidInputError, InvalidTypeError
from ._limits import MAX_TOKENS, MAX_TOKENS_TEXT
from .hull import row_gaps

__all__ = ["Curves", "as_curves", "hull_gap", "load_curves", "save_curves", "MAX_TOKENS", "MAX_META_BYTES"]

#: Largest ``meta`` a curves file may hold, as JSON text (16 MiB).
MAX_META_BYTES = 2**24

_HALF_FLOAT_MAX = float(np.finfo(np.float64).max) / 2
_ALL_UNIT = np.ones(1, bool)  # the default grid arange(K) steps one token at a time
_ALL_UNIT.setflags(write=False)


class _GridFacts(NamedTuple):
    """What every solve needs to know about a grid, worked out once per :class:`Curves`."""

    capacity: int  #: sum over heads of each head's largest grid point
    floor: int  #: sum over heads of each head's smallest grid point
    unit: np.ndarray  #: bool (n_heads,), read-only: whether each head's grid advances one token at a time


def _grid_facts(grid2d, n_heads, unit):
    """:class:`_GridFacts` of a valid grid ``(G, K)`` (rows non-negative, non-decreasing)
    from ``unit``, bool ``(G,)``: whether each row advances one token at a time."""
    unit.setflags(write=False)
    if grid2d.shape[0] == 1:  # shared by every head
        return _GridFacts(int(grid2d[0, -1]) * n_heads, int(grid2d[0, 0]) * n_heads, np.broadcast_to(unit, (n_heads,)))
    first, last = grid2d[:, 0], grid2d[:, -1]
    if int(last.max()) * n_heads < MAX_TOKENS:  # no int64 overflow possible
        return _GridFacts(int(last.sum()), int(first.sum()), unit)
    return _GridFacts(sum(int(x) for x in last), sum(int(x) for x in first), unit)


def _where(shape, flat_index):
    """``"head (3, 1), point 7"`` for a flat index into an array of ``(*head_shape, K)``."""
    idx = np.unravel_index(int(flat_index), shape)
    head = tuple(int(i) for i in idx[:-1])
    return f"head {head if len(head) != 1 else head[0]}, point {int(idx[-1])}"


def _as_real_array(value, name):
    return real_array(value, f"`{name}`")


def check_meta(meta, name="meta"):
    """``meta`` as a dict that round-trips through standard JSON (no NaN or Infinity)."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidTypeError(f"`{name}` must be a dict; got {type(meta).__name__}")
    try:
        text = json.dumps(meta, allow_nan=False)
    except RecursionError:
        raise InvalidInputError(f"`{name}` is nested too deeply to be stored as JSON") from None
    except (TypeError, ValueError) as exc:
        raise InvalidTypeError(
            f"`{name}` must be JSON-serialisable (str, int, finite float, bool, None, lists, "
            f"dicts with str keys); {exc}"
        ) from None
    if len(text) > MAX_META_BYTES:
        raise InvalidInputError(
            f"`{name}` is {len(text)} bytes as JSON, above the limit of {MAX_META_BYTES} bytes"
        )
    return json.loads(text)


class Curves:
    """Per-head utility curves on integer token grids.

    Head ``h`` keeping ``grid[h, k]`` tokens retains utility ``utility[h, k]``. A problem
    picks one grid point per head.

    Parameters
    ----------
    utility : array_like of float, shape ``(*head_shape, K)``
        Utility of each head at each grid point. ``head_shape`` is usually
        ``(layers, kv_heads)`` and is kept in every output. Curves may be non-monotone and
        non-concave. Must be finite.
    grid : array_like of int, shape ``(K,)`` or ``(*head_shape, K)``, optional
        Token counts of the grid points: shared by all heads, or one row per head. Values are
        non-negative and non-decreasing along the last axis. A repeated point is allowed (pad
        ragged heads by repeating their last point); the best utility at a repeated point
        counts. Default ``arange(K)``.
    meta : dict, optional
        Description (model, scorer, sink, window, ...) kept in files: standard JSON (no
        NaN or Infinity), at most 16 MiB as text. Stored as its JSON round trip.

    Raises
    ------
    InvalidTypeError
        ``utility`` or ``grid`` is not a real numeric array (masked arrays are refused), or
        ``meta`` is not a JSON-serialisable dict.
    InvalidInputError
        A rule above is broken; the message names the argument and the first place it fails.

    Notes
    -----
    Validation is O(heads * K). The arrays are stored as read-only float64 / int64 copies
    that this object owns (changing the arrays passed in changes nothing here), so what
    every solve needs to know about the grid (capacity, smallest total, whether each head
    steps one token at a time) is worked out once, here. A copy or pickle is built and
    checked again from the arrays.

    Examples
    --------
    >>> c = Curves([[0.0, 0.6, 0.7], [0.0, 0.1, 0.9]])
    >>> c.head_shape, c.n_points, c.capacity
    ((2,), 3, 4)
    >>> c.is_concave()
    False
    """

    __slots__ = ("_utility", "_grid", "_meta", "_facts", "_scale")

    def __init__(self, utility, grid=None, *, meta=None):
        u = _as_real_array(utility, "utility")
        if u.ndim < 2:
            raise InvalidInputError(
                "`utility` must have shape (*head_shape, K) with at least one head axis; "
                f"got shape {u.shape} (for a single head pass utility[None])"
            )
        if 0 in u.shape:
            raise InvalidInputError(
                f"`utility` must have at least one head and one point; got shape {u.shape}"
            )
        # A list or tuple became a new array that nothing else holds: no second copy.
        u = np.array(u, dtype=np.float64, order="C", copy=None if isinstance(utility, (list, tuple)) else True)
        K = u.shape[-1]
        # The maximum and minimum are NaN or infinite exactly when `utility` holds NaN or inf,
        # and bound every magnitude: two whole-array reductions, no temporary of its size.
        with np.errstate(invalid="ignore"):
            top = float(u.max())
            bottom = float(u.min())
        if not (math.isfinite(top) and math.isfinite(bottom)):
            bad = ~np.isfinite(u)
            first = int(np.flatnonzero(bad.ravel())[0])
            kind = "NaN" if np.isnan(u.flat[first]) else "inf"
            raise InvalidInputError(f"`utility` must be finite; found {kind} at {_where(u.shape, first)}")
        # The rule: the sum over heads of each head's largest magnitude stays finite. With
        # every magnitude at most `largest`, it does whenever heads * largest is below half
        # the float64 maximum (rounding cannot double a sum); only beyond that are the rows
        # summed.
        largest = max(top, -bottom)
        if largest * (u.size // K) >= _HALF_FLOAT_MAX:
            with np.errstate(over="ignore"):
                total_magnitude = np.maximum(u.max(axis=-1), -u.min(axis=-1)).sum()
            if not np.isfinite(total_magnitude):
                raise InvalidInputError(
                    "`utility` values are too large: a total over heads would overflow float64"
                )

        if grid is None:
            g = np.arange(K, dtype=np.int64)
            unit = _ALL_UNIT
        else:
            g = _as_real_array(grid, "grid")
            if g.shape not in ((K,), u.shape):
                raise InvalidInputError(
                    f"`grid` must have shape ({K},) or {u.shape} to match `utility`; got {g.shape}"
                )
            if g.dtype.kind == "f":
                g = g.astype(np.float64)
                if not np.all(np.isfinite(g)):
                    raise InvalidInputError("`grid` must hold finite whole token counts; found NaN or inf")
                if np.any(g != np.floor(g)):
                    first = int(np.flatnonzero((g != np.floor(g)).ravel())[0])
                    raise InvalidInputError(
                        f"`grid` must hold whole token counts; found {g.flat[first]!r} at "
                        f"{_where(g.shape if g.ndim > 1 else (1,) + g.shape, first)}"
                    )
                if np.any(np.abs(g) >= float(MAX_TOKENS)):
                    raise InvalidInputError(f"`grid` values are too large: they must be below {MAX_TOKENS_TEXT} tokens")
            elif g.dtype.kind == "u" and g.size and int(g.max()) >= MAX_TOKENS:
                raise InvalidInputError(f"`grid` values are too large: they must be below {MAX_TOKENS_TEXT} tokens")
            g = np.array(g, dtype=np.int64, order="C", copy=None if isinstance(grid, (list, tuple)) else True)
            g2 = g.reshape(-1, K)
            if g2.min() < 0:
                first = int(np.flatnonzero((g2 < 0).ravel())[0])
                raise InvalidInputError(
                    f"`grid` must be non-negative; found {g2.flat[first]} at "
                    f"{_where(g.shape if g.ndim > 1 else (1, K), first)}"
                )
            steps = g2[:, 1:] - g2[:, :-1]  # no overflow: every entry is in [0, 2**63)
            if steps.size and steps.min() < 0:
                r, c = np.argwhere(steps < 0)[0]
                where = _where(g.shape if g.ndim > 1 else (1, K), r * K + c + 1)
                raise InvalidInputError(
                    f"`grid` must be non-decreasing along the last axis; it decreases at {where}"
                )
            unit = (steps == 1).all(axis=1)
        meta = check_meta(meta)
        u.setflags(write=False)
        g.setflags(write=False)
        self._utility = u
        self._grid = g
        self._meta = meta
        self._facts = _grid_facts(g.reshape(-1, K), u.size // K, unit)
        self._scale = None

    @classmethod
    def _trusted(cls, utility, grid, meta=None):
        """Curves from arrays the package itself just built and checked (float64 utility,
        int64 grid, already valid): no copy, no validation pass. The arrays are handed over:
        nothing may write to them afterwards. Internal."""
        self = cls.__new__(cls)
        u = utility.view()
        g = grid.view()
        u.setflags(write=False)
        g.setflags(write=False)
        self._utility = u
        self._grid = g
        self._meta = dict(meta or {})
        self._facts = None  # worked out on first use (``_grid_facts``)
        self._scale = None
        return self

    def _grid_facts(self):
        """The :class:`_GridFacts` of this grid (worked out once: the arrays are read-only
        copies this object owns, so they cannot change). Internal."""
        facts = self._facts
        if facts is None:
            g2 = self.grid2d
            unit = (g2[:, 1:] - g2[:, :-1] == 1).all(axis=1)
            facts = self._facts = _grid_facts(g2, self.n_heads, unit)
        return facts

    def _utility_scale(self):
        """``sum_h max_k |utility[h, k]|``, the largest possible |total utility| (the scale
        of the solvers' tolerances), worked out on first use. Internal."""
        scale = self._scale
        if scale is None:
            scale = self._scale = float(np.abs(self.utility2d).max(axis=1).sum())
        return scale

    # -- structure -------------------------------------------------------------------------
    @property
    def utility(self):
        """Read-only float64 array ``(*head_shape, K)``."""
        return self._utility

    @property
    def grid(self):
        """Read-only int64 array ``(K,)`` (shared) or ``(*head_shape, K)`` (per head)."""
        return self._grid

    @property
    def meta(self):
        """The description dict given at construction (a copy)."""
        return dict(self._meta)

    @property
    def head_shape(self):
        """Shape of the heads, e.g. ``(layers, kv_heads)``."""
        return self._utility.shape[:-1]

    @property
    def n_heads(self):
        """Number of heads (product of :attr:`head_shape`)."""
        return math.prod(self.head_shape)

    @property
    def n_points(self):
        """Grid points per head, ``K``."""
        return self._utility.shape[-1]

    @property
    def shared_grid(self):
        """True when all heads share one grid row."""
        return self._grid.ndim == 1

    @property
    def utility2d(self):
        """Utility viewed as ``(n_heads, K)``."""
        return self._utility.reshape(-1, self.n_points)

    @property
    def grid2d(self):
        """Grid viewed as ``(1, K)`` when shared, else ``(n_heads, K)``."""
        return self._grid.reshape(-1, self.n_points)

    @property
    def capacity(self):
        """Tokens of the full cache: the sum over heads of each head's largest grid point."""
        return self._grid_facts().capacity

    def is_concave(self, *, tol=0.0):
        """Whether every head's curve equals its upper concave hull.

        Parameters
        ----------
        tol : float, optional
            Utility by which a point may lie below its hull and still count as on it.

        Returns
        -------
        bool

        Notes
        -----
        O(heads * K): computes the hulls (see :func:`hull_gap`).
        """
        return bool(np.all(row_gaps(self.utility2d, self.grid2d) <= tol))

    def __repr__(self):
        kind = "shared" if self.shared_grid else "per-head"
        return f"Curves(head_shape={self.head_shape}, K={self.n_points}, grid={kind}, capacity={self.capacity})"

    def __eq__(self, other):
        if not isinstance(other, Curves):
            return NotImplemented
        return (
            np.array_equal(self._utility, other._utility)
            and np.array_equal(self._grid, other._grid)
            and self._meta == other._meta
        )

    __hash__ = None

    def __reduce__(self):
        # Rebuilt through the constructor: the copy owns read-only arrays, checked again.
        return _rebuild, (self._utility, self._grid, self._meta)


def _rebuild(utility, grid, meta):
    """A :class:`Curves` from its pickled (or copied) arrays and meta."""
    return Curves(utility, grid, meta=meta)


def as_curves(curves):
    """``curves`` itself if it is a :class:`Curves`, else ``Curves(curves)`` (grid ``arange(K)``)."""
    return curves if isinstance(curves, Curves) else Curves(curves)


def hull_gap(curves):
    """Per head, the largest distance by which a point lies below the upper concave hull.

    Zero for a concave head. The largest entry tells how much the LP relaxation (which
    replaces each curve by its hull) can overstate a single head.

    Parameters
    ----------
    curves : Curves or array_like

    Returns
    -------
    ndarray of float64, shape ``head_shape``

    Notes
    -----
    O(heads * K).

    Examples
    --------
    >>> hull_gap([[0.0, 0.2, 1.0], [0.0, 0.6, 1.0]])
    array([0.3, 0. ])
    """
    curves = as_curves(curves)
    return row_gaps(curves.utility2d, curves.grid2d).reshape(curves.head_shape)


# -- files ---------------------------------------------------------------------------------
def load_curves(path, *, max_bytes=None):
    """Read curves from an ``.npz`` file with keys ``utility``, ``grid`` and optional ``meta``.

    Parameters
    ----------
    path : str or os.PathLike
        The file. ``grid`` may be absent (then ``arange(K)``); ``meta``, when present, is a
        JSON object stored as a string. Other keys are ignored (and not read).
    max_bytes : int, optional
        Most bytes one array may take once read. Default: the environment variable
        ``BUDGETOPT_MAX_ARRAY_BYTES`` if set, else 1 GiB. ``meta`` may hold at most 16 MiB.

    Returns
    -------
    Curves

    Raises
    ------
    InvalidTypeError
        ``path`` is not a str or os.PathLike (a file object, None).
    CurvesFileError
        The file is missing, not a regular file, not an ``.npz`` archive, lacks ``utility``,
        holds object (pickled) arrays, holds an array whose declared size is above the limit
        (checked before reading, so a zip bomb costs nothing), or its contents break a rule
        of :class:`Curves`. The message starts with the path. Loading never unpickles.

    Notes
    -----
    Memory: each array is read once at its declared size (checked against the limit first),
    then converted to float64 / int64.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> save_curves(os.path.join(d, "c.npz"), Curves([[0.0, 1.0, 1.5]], meta={"scorer": "snapkv"}))
    >>> load_curves(os.path.join(d, "c.npz")).meta
    {'scorer': 'snapkv'}
    """
    path = check_input_file(path, ".npz file")
    arrays = read_npz(path, ("utility", "grid", "meta"), max_bytes=max_bytes,
                      max_bytes_of={"meta": 4 * MAX_META_BYTES})
    if "utility" not in arrays:
        import zipfile

        with zipfile.ZipFile(path) as z:
            found = sorted(n[:-4] if n.endswith(".npy") else n for n in z.namelist())
        raise CurvesFileError(f"{path}: missing key 'utility' (found {found or 'no keys'})")
    meta = {}
    if "meta" in arrays:
        m = arrays["meta"]
        if m.dtype.kind not in "US" or m.shape != ():
            raise CurvesFileError(f"{path}: key 'meta' must be a JSON string; got a {m.dtype} array of shape {m.shape}")
        try:
            text = m.item() if m.dtype.kind == "U" else m.item().decode("utf-8")
            meta = json.loads(text, parse_constant=_no_constant)
        except RecursionError:
            raise CurvesFileError(f"{path}: key 'meta' is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CurvesFileError(f"{path}: key 'meta' is not valid standard JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise CurvesFileError(f"{path}: key 'meta' must hold a JSON object; got {type(meta).__name__}")
    try:
        return Curves(arrays["utility"], arrays.get("grid"), meta=meta)
    except (InvalidInputError, InvalidTypeError) as exc:
        raise CurvesFileError(f"{path}: {exc}") from None


def _no_constant(name):
    raise ValueError(f"{name} is not standard JSON")


def save_curves(path, curves):
    """Write ``curves`` to ``path`` as ``.npz`` (keys ``utility``, ``grid``, ``meta``), atomically.

    The file is written beside its destination and renamed into place, so a failed write
    leaves no partial file. The path is used as given (no ``.npz`` is appended).

    Parameters
    ----------
    path : str or os.PathLike
        Destination: a new or existing regular file (a symbolic link is written through; an
        existing file keeps its permission bits). Directories, devices and FIFOs are refused.
    curves : Curves or array_like

    Raises
    ------
    CurvesFileError
        The destination is refused (see above) or cannot be written; the message names it.
    """
    curves = as_curves(curves)
    path = as_path(path)
    meta = json.dumps(curves.meta, allow_nan=False)
    write_atomic(path, lambda f: np.savez(f, utility=curves.utility, grid=curves.grid, meta=np.array(meta)))
