"""The greedy's LP part for one total, from hulls built only where its threshold can fall.

:func:`bracketed_lp` is the entry point; :mod:`budgetopt.greedy` calls it for a single total
on problems large enough for it to pay (:func:`worthwhile`) and falls back to every head's
full hull when it returns ``None``. The answer is the one the full hulls give, bit for bit.
The kernels are in :mod:`budgetopt._kernels_bracket`; how it works and what it costs is in
``docs/performance.md``.

Why it stays: against the full hulls in one compiled call, ``allocate`` at 20% kept takes
1.1 ms instead of 7.5 ms for 32 x 8 heads x 4,096 tokens, 16 ms instead of 52 ms at 32,768
tokens and 14 ms instead of 37 ms for 5,120 heads x 1,023 tokens, with identical answers
(``python benchmarks/bench_greedy_paths.py``, 2 shared cores; benchmarks/results/README.md,
"Issue 22").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _kernels, _kernels_bracket, _kernels_greedy

# The threshold estimate samples 2 ** _OCTAVE_SHIFT points per doubling of the distance
# from either end of a head, in about _SAMPLE_HEADS heads (every head up to twice that:
# the heads' sum averages the sample's error out); problems smaller than
# _BRACKET_MIN_POINTS use full hulls.
_OCTAVE_SHIFT = 1
_SAMPLE_HEADS = 1024
_BRACKET_MIN_POINTS = 1 << 15
# Bracket search: the first multiplier tried (a multiple of the estimate), the smallest
# and largest step from one multiplier to the next, and the most multipliers tried.
_FIRST_STEP = 1.001
_MIN_STEP = 1.002
_MAX_STEP = 4.0
_MAX_TRIES = 10


class LPPart(NamedTuple):
    """The LP part of the greedy, as :func:`budgetopt._kernels_greedy.greedy_solve` gives it."""

    lp: float  #: LP value (the certificate's upper bound)
    threshold: float  #: slope at which the budget runs out (0.0 when everything fits)
    blocked: int  #: head whose segment did not fit, or -1
    left: int  #: tokens the LP part leaves over


class BracketedLP(NamedTuple):
    """:class:`LPPart` and the size of the hull pieces it was computed from."""

    part: LPPart
    hull_segments: int  #: segments of the hull pieces built
    hull_points: int  #: grid points the pieces were built from


class Maximisers(NamedTuple):
    """Each head's first point maximising ``u - lam * g`` for one multiplier ``lam``."""

    lam: float
    used: int  #: tokens those points use above the floors
    arg: np.ndarray  #: int64 (H,), grid indices
    robust: np.ndarray  #: bool (H,), no other point within rounding of the maximum


def lp_part(p, offsets, verts, slopes, spare, idx):
    """:func:`budgetopt._kernels_greedy.greedy_solve` on packed hulls, as an :class:`LPPart`."""
    return LPPart(*_kernels_greedy.greedy_solve(p.utility, p.grid, p.per_head, offsets, verts, slopes, spare, idx))


def bracketed_lp(p, spare, idx):
    """The LP part of the greedy from hulls built only between two multipliers.

    An estimate ``sigma`` of the threshold comes from a geometric sample of each head (of
    every ``H // _SAMPLE_HEADS``-th head on very many heads;
    :func:`budgetopt._kernels_bracket.sample_threshold`). Multipliers ``lam`` are tried from
    it (:func:`find_bracket`) until the points maximising ``u - lam * g`` use at most
    ``spare`` tokens at one (``lam_hi``) and more at another (``lam_lo``). Hull segments left
    of a head's maximiser at ``lam_hi`` are steeper than ``lam_hi`` (all taken), those right
    of its maximiser at ``lam_lo`` flatter than ``lam_lo`` (none taken); only the hull
    between the two is built, and the greedy runs on those pieces with the tokens the taken
    parts use set aside. A head whose maximiser is not robust (another point within
    rounding) has that side built in full, to its floor or cap.

    Parameters
    ----------
    p : budgetopt.problem.Problem
    spare : int
        Tokens above the floors.
    idx : ndarray int64 (H,)
        Filled with each head's chosen grid index.

    Returns
    -------
    BracketedLP or None
        ``None`` when this does not apply (the caller then uses the full hulls); otherwise
        equal bit for bit to the LP part over the full hulls. The proof: the threshold found
        lies strictly between ``lam_lo`` and ``lam_hi`` (checked); there both computations
        see the same segments with the same slopes, the same tokens above them and the same
        ties in head order, so they select the same threshold and vertices.
    """
    if spare <= 0:
        return None
    H = p.n_heads
    head_step = max(1, H // _SAMPLE_HEADS)
    sigma = _kernels_bracket.sample_threshold(
        p.utility, p.grid, p.per_head, p.lo, p.hi, _OCTAVE_SHIFT, head_step, spare
    )
    if not sigma > 0.0:
        return None
    chunk = _kernels_bracket._CHUNK
    chunk_max = np.empty((H, (int((p.hi - p.lo).max()) + chunk - 1) // chunk))
    _kernels_bracket.tilted_chunk_max(p.utility, p.grid, p.per_head, p.lo, p.hi, sigma, chunk_max)

    def maximisers(lam):
        arg = np.empty(H, np.int64)
        robust = np.empty(H, np.bool_)
        used = _kernels_bracket.tilted_argmax(
            p.utility, p.grid, p.per_head, p.lo, p.hi, sigma, chunk_max, lam, arg, robust
        )
        return Maximisers(lam, used, arg, robust)

    found = find_bracket(maximisers, sigma, spare)
    if found is None:
        return None
    above, below = found
    start = np.where(above.robust, above.arg, p.lo)
    stop = np.where(below.robust, below.arg + 1, p.hi)
    if np.any(start >= stop):
        return None
    rows = np.arange(H) * p.per_head
    fixed = int((p.grid[rows, start] - p.grid[rows, p.lo]).sum())
    if fixed > spare:
        return None
    offsets, verts, slopes = _kernels.upper_hulls(p.utility, p.grid, p.per_head, start, stop, p.unit_steps, True)
    part = lp_part(p, offsets, verts, slopes, spare - fixed, idx)
    if not below.lam < part.threshold < above.lam:
        return None
    return BracketedLP(part, int(verts.shape[0] - H), int((stop - start).sum()))


def worthwhile(p):
    """Large enough for the bracket to pay, and grid values exact as floats."""
    if p.utility.size < _BRACKET_MIN_POINTS or int((p.hi - p.lo).max()) < 4 * _kernels_bracket._CHUNK:
        return False
    rows = np.arange(p.n_heads) * p.per_head
    return int(p.grid[rows, p.hi - 1].max()) < 2**52


def find_bracket(maximisers, sigma, spare):
    """:class:`Maximisers` above and below the threshold, as ``(above, below)``, or ``None``.

    ``maximisers(lam)`` gives the tokens the maximisers of ``u - lam * g`` use, which never
    grow with ``lam``: where they fit in ``spare``, ``lam`` is above the threshold. From
    ``sigma * _FIRST_STEP`` the search moves towards the threshold, each step aimed by
    the secant through the last two tries (a little past the predicted crossing, so that
    it lands on the far side) but at least the square of the step before (``_MIN_STEP``
    first) and at most ``_MAX_STEP``, until one try falls on each side.
    """
    lam = sigma * _FIRST_STEP
    tries = []  # (lam, used) on the side where the search started
    above = below = None
    step = 1.0
    for _ in range(_MAX_TRIES):
        found = maximisers(lam)
        if found.used <= spare:
            above = found
        else:
            below = found
        if above is not None and below is not None:
            return above, below
        down = above is not None  # the threshold lies below every multiplier tried
        tries.append((lam, found.used))
        # Each step is at least the square of the last (so that plateaus of ``used`` and
        # secants that fall short cannot stall the search), and the secant's if larger.
        step = max(step * step, _MIN_STEP)
        if len(tries) >= 2:
            (lam0, used0), (lam1, used1) = tries[-2], tries[-1]
            if used1 != used0:
                target = lam1 + (spare - used1) * (lam1 - lam0) / (used1 - used0)
                if target > 0.0:
                    step = max(step, (target / lam1 if target > lam1 else lam1 / target) * _MIN_STEP)
        step = min(step, _MAX_STEP)
        lam = lam / step if down else lam * step
    return None
