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
        problem.utility, problem.grid, problem.per_head, problem.lo, problem.hi, hulls.offsets, hulls.verts, out
    )
    return out.reshape(problem.curves.head_shape)
