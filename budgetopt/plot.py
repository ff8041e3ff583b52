"""Figures of curves, hulls and allocations (matplotlib, optional: ``pip install "budgetopt[plot]"``).

The functions return a :class:`matplotlib.figure.Figure` built without pyplot, so they never
need a display and leave no global state behind; :func:`save_figure` writes one atomically.
matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ._checks import real_array
from .api import allocate
from .curves import as_curves, write_atomic
from .errors import InvalidInputError, InvalidTypeError, MissingDependencyError
from .hull import upper_hulls
from .problem import build_problem

__all__ = ["curves_figure", "allocation_heatmap", "save_figure", "FIGURE_SUFFIXES"]

#: File types :func:`save_figure` writes (by suffix).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
#: Most heads one curves figure draws (more are unreadable, and slow to draw).
MAX_FIGURE_HEADS = 64


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("plotting needs matplotlib (pip install 'budgetopt[plot]')") from exc
    return Figure(**kwargs)


def _check_head(curves, head, i):
    try:
        idx = tuple(int(v) for v in (head if np.ndim(head) else (head,)))
        if any(int(v) != v for v in np.ravel(head)):
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidTypeError(f"`heads[{i}]` must be a tuple of integers (one per head axis); got {head!r}") from None
    shape = curves.head_shape
    if len(idx) != len(shape) or any(not 0 <= v < n for v, n in zip(idx, shape)):
        raise InvalidInputError(
            f"`heads[{i}]` must index a head of shape {shape} ({len(shape)} integers, each in "
            f"[0, size)); got {head!r}"
        )
    return idx


def curves_figure(curves, heads, *, total_budget=None, min_budget=None, max_budget=None):
    """Chosen heads' utility curves, their upper concave hulls and, optionally, their budgets.

    Parameters
    ----------
    curves : Curves or array_like
    heads : sequence of tuple of int
        Head indices, one integer per head axis (``(layer, kv_head)`` for the usual shape);
        a head named twice is drawn once; at most :data:`MAX_FIGURE_HEADS` (64) distinct heads.
    total_budget : int, optional
        When given, :func:`budgetopt.allocate` (greedy) splits this many tokens over *all*
        heads, and each chosen head's budget is marked by a vertical line.
    min_budget, max_budget : optional
        Floors and caps, as in :func:`budgetopt.allocate`.

    Returns
    -------
    matplotlib.figure.Figure
        One axes. For head ``i`` its lines carry the labels ``"curve <head>"`` and
        ``"hull <head>"`` (x: tokens, y: utility) and, with a budget, ``"budget <head>"``.

    Raises
    ------
    InvalidInputError, InvalidTypeError
        A head index is malformed or out of range, or ``heads`` is empty.
    MissingDependencyError
        matplotlib is not installed.

    Notes
    -----
    O(heads * K) for the hulls and the allocation.

    Examples
    --------
    >>> fig = curves_figure([[0.0, 0.2, 1.0], [0.0, 0.6, 0.7]], [(0,), (1,)], total_budget=2)
    >>> [line.get_label() for line in fig.axes[0].lines][:3]
    ['curve (0,)', 'hull (0,)', 'budget (0,)']
    >>> fig.axes[0].lines[1].get_xydata().tolist()  # head 0's hull skips the point (1, 0.2)
    [[0.0, 0.0], [2.0, 1.0]]
    """
    curves = as_curves(curves)
    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise InvalidTypeError(f"`heads` must be a sequence of head indices; got {heads!r}")
    heads = list(dict.fromkeys(_check_head(curves, h, i) for i, h in enumerate(heads)))
    if not heads:
        raise InvalidInputError("`heads` must name at least one head")
    if len(heads) > MAX_FIGURE_HEADS:
        raise InvalidInputError(f"`heads` may name at most {MAX_FIGURE_HEADS} distinct heads; got {len(heads)}")
    problem = build_problem(curves)
    hulls = upper_hulls(problem, drop_descending=False)
    budgets = None
    if total_budget is not None:
        budgets = allocate(curves, total_budget, min_budget=min_budget, max_budget=max_budget).budgets
    grid = curves.grid2d
    utility = curves.utility2d
    fig = _figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(heads))]
    for head, color in zip(heads, colors):
        flat = int(np.ravel_multi_index(head, curves.head_shape))
        g = grid[flat if not curves.shared_grid else 0]
        label = str(head)
        ax.plot(g, utility[flat], color=color, lw=1, alpha=0.6, label=f"curve {label}")
        verts = hulls.verts[hulls.offsets[flat]:hulls.offsets[flat + 1]]
        ax.plot(g[verts], utility[flat, verts], color=color, lw=1.5, ls="--", marker=".", label=f"hull {label}")
        if budgets is not None:
            b = int(budgets[head])
            ax.axvline(b, color=color, lw=1, ls=":", label=f"budget {label}")
    relative = curves.meta.get("grid") == "relative"  # curves_from_run over contexts of several lengths
    unit = f"1/{curves.meta.get('resolution')} of the context" if relative else "tokens"
    ax.set_xlabel(f"kept ({unit})" if relative else "tokens kept")
    ax.set_ylabel("utility")
    title = "Utility curves and upper hulls"
    if total_budget is not None:
        title += f" (budgets for {total_budget} {'units' if relative else 'tokens'} in all)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def allocation_heatmap(budgets, *, title=None, label="tokens kept"):
    """Per-head values (budgets, kept fractions) as a layers x heads heatmap.

    Parameters
    ----------
    budgets : array_like of real, shape ``(layers, heads)`` or ``(heads,)``
        One value per head; more than two head axes are drawn as ``(first, rest)``.
    title : str, optional
    label : str, optional
        Colour-bar label.

    Returns
    -------
    matplotlib.figure.Figure
        Its first image holds the values, one row per layer (``fig.axes[0].images[0]``).

    Raises
    ------
    InvalidInputError, InvalidTypeError
        ``budgets`` is empty, not real or not finite.
    MissingDependencyError
        matplotlib is not installed.

    Examples
    --------
    >>> fig = allocation_heatmap([[3, 1], [0, 4]])
    >>> fig.axes[0].images[0].get_array().tolist()
    [[3, 1], [0, 4]]
    """
    arr = real_array(budgets, "`budgets`")
    if arr.size == 0 or arr.ndim == 0:
        raise InvalidInputError(f"`budgets` must hold at least one head; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("`budgets` must be finite")
    rows = arr.reshape(1, -1) if arr.ndim == 1 else arr.reshape(arr.shape[0], -1)
    layers, heads = rows.shape
    width = min(max(2.5 + 0.45 * heads, 4.5), 12)
    fig = _figure(figsize=(width, min(1.5 + 0.22 * layers, 12)))
    ax = fig.add_subplot()
    image = ax.imshow(rows, aspect="auto", interpolation="nearest", cmap="viridis", origin="upper")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xlabel("KV head" if arr.ndim <= 2 else "head (flattened)")
    if heads <= 32:  # whole head numbers, not matplotlib's half steps
        ax.set_xticks(range(heads))
    ax.set_ylabel("layer")
    if title:
        # Wrapped to the figure's width (about 12 characters an inch at this size), so a
        # narrow model's heatmap does not clip its title.
        ax.set_title("\n".join(textwrap.wrap(title, width=max(int(width * 11), 20))), fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path):
    """Write ``fig`` to ``path`` (``.png``, ``.pdf`` or ``.svg``) atomically: a failed write
    leaves no partial file.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "alloc.png")
    >>> save_figure(allocation_heatmap([[3, 1], [0, 4]]), path)
    >>> open(path, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_SUFFIXES:
        raise InvalidInputError(f"`path` must end in {', '.join(FIGURE_SUFFIXES)}; got {str(path)!r}")
    write_atomic(path, lambda f: fig.savefig(f, format=suffix.lstrip("."), dpi=110))
