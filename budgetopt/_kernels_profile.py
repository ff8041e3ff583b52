"""Compiled kernels (numba) behind curves from scores (:mod:`budgetopt.profile`): a
descending float32 rank as one integer sort, and prefix sums in rank order."""

from __future__ import annotations

import numpy as np

from ._kernels_jit import jit


@jit
def ranked_cumsum(middle, order, protected, out):
    """``out[r, 0] = protected[r]``; ``out[r, i + 1] = cumsum(middle[r, order[r]])[i] +
    protected[r]``: the same left-to-right sums as numpy's ``cumsum``, in one pass."""
    R, M = middle.shape
    for r in range(R):
        p = protected[r]
        out[r, 0] = p
        c = 0.0
        for i in range(M):
            c += middle[r, order[r, i]]
            out[r, i + 1] = c + p


@jit
def pack_descending_f32(values, packed):
    """``packed[r, i] = key(values[r, i]) << 32 | i`` with ``key`` a uint32 whose ascending
    order is the descending order of the float32 ``values`` (-0.0 and 0.0 share a key), so
    one ascending sort of each row gives "highest first, ties by position"."""
    R, M = values.shape
    bits = values.view(np.uint32)
    for r in range(R):
        for i in range(M):
            b = bits[r, i]
            if b == np.uint32(0x80000000):  # -0.0 sorts with +0.0
                b = np.uint32(0)
            if b >> np.uint32(31):
                asc = ~b
            else:
                asc = b | np.uint32(0x80000000)
            packed[r, i] = (np.uint64(~asc) << np.uint64(32)) | np.uint64(i)


@jit
def unpack_positions(packed, order):
    """The low 32 bits of each packed key (a position), as int64."""
    R, M = packed.shape
    for r in range(R):
        for i in range(M):
            order[r, i] = np.int64(packed[r, i] & np.uint64(0xFFFFFFFF))
