"""Upper concave hulls of utility curves, over canonical arrays.

This module sits below the data model: it imports only the kernels, so that
:mod:`budgetopt.curves` (``Curves.is_concave``, :func:`budgetopt.hull_gap`) and the solvers
can all use it. Its functions take the canonical arrays of :mod:`budgetopt._kernels`, or a
:class:`budgetopt.problem.Problem` that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels

__all__ = ["Hulls", "upper_hulls", "row_gaps"]


@dataclass(frozen=True)
class Hulls:
    """Every head's upper hull, packed head after head.

    Attributes
    ----------
    offsets : ndarray int64 (H + 1,)
        Head ``h``'s vertices are entries ``offsets[h]:offsets[h + 1]`` of the other arrays.
    verts : ndarray int64
        Grid indices of the hull vertices, left to right within each head.
    slopes : ndarray float64
        Slope of the segment that starts at each vertex (strictly decreasing within a head;
        ``-inf`` at each head's last vertex).
    """

    offsets: np.ndarray
    verts: np.ndarray
    slopes: np.ndarray

    @property
    def n_segments(self):
        return int(self.verts.shape[0] - (self.offsets.shape[0] - 1))


def upper_hulls(problem, *, drop_descending=True):
    """Upper concave hull of each head over its usable grid points.

    Parameters
    ----------
    problem : budgetopt.problem.Problem
    drop_descending : bool
        Drop trailing segments of negative slope (what allocation wants).

    Returns
    -------
    Hulls

    Notes
    -----
    O(K) per head, compiled: branch-free pruning rounds, then a monotone chain over what
    survives. Hull slopes are strictly decreasing; collinear points are not vertices.
    """
    offsets, verts, slopes = _kernels.upper_hulls(
        problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi, problem.unit_steps,
        drop_descending,
    )
    return Hulls(offsets, verts, slopes)


def row_gaps(utility, grid):
    """Per row, the largest distance by which a point lies below the row's upper concave hull.

    Parameters
    ----------
    utility : ndarray float64 (H, K)
    grid : ndarray int64 (G, K)
        ``G == 1`` (one grid for every row) or ``G == H``; each row strictly increasing.

    Returns
    -------
    ndarray float64 (H,)
        Zero for a concave row. O(H * K).

    Examples
    --------
    >>> import numpy as np
    >>> row_gaps(np.array([[0.0, 0.2, 1.0], [0.0, 0.6, 1.0]]), np.arange(3)[None])
    array([0.3, 0. ])
    """
    H, K = utility.shape
    per_head = 1 if grid.shape[0] > 1 else 0
    lo = np.zeros(H, np.int64)
    hi = np.full(H, K, np.int64)
    unit = np.broadcast_to(np.all(np.diff(grid, axis=1) == 1, axis=1), (H,))
    offsets, verts, _ = _kernels.upper_hulls(utility, grid, per_head, lo, hi, unit, False)
    out = np.empty(H, np.float64)
    _kernels.hull_gaps(utility, grid, per_head, lo, hi, offsets, verts, out)
    return out
