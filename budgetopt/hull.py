"""Upper concave hulls of utility curves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels
from .curves import as_curves
from .problem import build_problem

__all__ = ["Hulls", "upper_hulls", "hull_gap"]


@dataclass(frozen=True)
class Hulls:
    """Every head's upper hull, as indices into its grid.

    Attributes
    ----------
    verts : ndarray int64 (H, K)
        ``verts[h, :nv[h]]`` are the grid indices of head ``h``'s hull vertices, left to right.
    nv : ndarray int64 (H,)
        Number of vertices per head (>= 1; ``nv - 1`` segments).
    """

    verts: np.ndarray
    nv: np.ndarray


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
    Monotone chain, O(K) per head, compiled and parallel over heads. Hull slopes are
    strictly decreasing; collinear points are not vertices.
    """
    H, K = problem.utility.shape
    verts = np.empty((H, K), np.int64)
    nv = np.empty(H, np.int64)
    _kernels.upper_hulls(
        problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi, verts, nv, drop_descending
    )
    return Hulls(verts, nv)


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
    problem = build_problem(as_curves(curves))
    hulls = upper_hulls(problem, drop_descending=False)
    out = np.empty(problem.n_heads, np.float64)
    _kernels.hull_gaps(
        problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi, hulls.verts, hulls.nv, out
    )
    return out.reshape(problem.curves.head_shape)
