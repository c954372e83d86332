"""RMSNorm as Numba CPU kernels: one pass over the rows each way.

Same op pair and conventions as :class:`~..reference.rmsnorm.ReferenceRmsnorm` (read its
docstring). Per row of D features, forward: the mean square, r, ``y = x r g``; backward:
``xhat = x r``, ``dxhat = dy g``, their mean product, dx, and ``dy xhat`` added into dg
(rows in order: serial, like the sums of the other CPU kernels). Row sums use
reassociation (a vector sum); sums are in the arrays' dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..reference.rmsnorm import check_rmsnorm_shapes


@njit(cache=True, fastmath={"reassoc", "contract"})
def _forward_rows(x, g, eps, y, r, zero, inv_d):
    """x, y ``[R, D]``, g ``[D]``, r ``[R]``; eps, zero and inv_d = 1/D in x's dtype."""
    D = x.shape[1]
    for i in range(x.shape[0]):
        total = zero
        for c in range(D):
            total += x[i, c] * x[i, c]
        r[i] = 1 / math.sqrt(total * inv_d + eps)
        ri = r[i]
        for c in range(D):
            y[i, c] = x[i, c] * ri * g[c]


@njit(cache=True, fastmath={"reassoc", "contract"})
def _backward_rows(dy, x, r, g, dx, dg, zero, inv_d):
    """dy, x, dx ``[R, D]``, r ``[R]``, g ``[D]``, dg ``[D]`` zeroed by the caller; zero
    and inv_d = 1/D in x's dtype."""
    D = x.shape[1]
    for i in range(x.shape[0]):
        ri = r[i]
        total = zero
        for c in range(D):
            total += dy[i, c] * g[c] * x[i, c] * ri            # dxhat . xhat
        mean = total * inv_d
        for c in range(D):
            xhat = x[i, c] * ri
            dg[c] += dy[i, c] * xhat
            dx[i, c] = ri * (dy[i, c] * g[c] - xhat * mean)


class NumbaCpuRmsnorm:
    """The RMSNorm op pair as Numba CPU kernels; a mixin of :class:`~.ops.NumbaCpuOps`."""

    def rmsnorm_forward(self, x, g, eps):
        """x ``[..., D]``, g ``[D]`` -> (y ``[..., D]``, r ``[..., 1]``)."""
        check_rmsnorm_shapes(x, g)
        dtype = np.result_type(x, g)
        rows = _rows(x, dtype)
        y, r = np.empty_like(rows), np.empty(rows.shape[0], dtype)
        _forward_rows(rows, np.asarray(g, dtype), dtype.type(eps), y, r, *_typed(dtype, rows))
        return y.reshape(x.shape), r.reshape(x.shape[:-1] + (1,))

    def rmsnorm_backward(self, dy, x, r, g):
        """-> (dx ``[..., D]``, dg ``[D]``)."""
        check_rmsnorm_shapes(x, g, dy)
        dtype = np.result_type(dy, x, r, g)
        dy_rows, x_rows = _rows(dy, dtype), _rows(x, dtype)
        dx, dg = np.empty_like(x_rows), np.zeros(g.shape[0], dtype)
        _backward_rows(dy_rows, x_rows, np.asarray(r, dtype).reshape(-1),
                       np.asarray(g, dtype), dx, dg, *_typed(dtype, x_rows))
        return dx.reshape(x.shape), dg


def _typed(dtype, rows):
    """(0, 1/D) as dtype scalars, so the kernels' row loops stay in dtype."""
    return dtype.type(0), dtype.type(1.0 / rows.shape[1])


def _rows(t, dtype):
    """``[..., D]`` -> a C-contiguous ``[R, D]`` array of dtype."""
    return np.ascontiguousarray(t, dtype).reshape(-1, t.shape[-1])
