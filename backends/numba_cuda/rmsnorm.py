"""RMSNorm as Numba CUDA kernels: a thread per row.

Same op pair and conventions as :class:`~..reference.rmsnorm.ReferenceRmsnorm` (read its
docstring), on CuPy arrays, on CuPy's current stream. Forward: one launch, a thread per
row (its mean square, r, y). Backward: one launch for the rows (dx), then one with a
thread per feature summing ``dy x r`` over the rows in order (dg): no atomics, bitwise
reproducible. Scalars are float64. ``launch_*`` take any arrays ``numba.cuda`` accepts;
:class:`NumbaCudaRmsnorm` checks, allocates and launches.
"""

from __future__ import annotations

import math

from ..reference.rmsnorm import check_rmsnorm_shapes
from .target import cuda, current_stream, launch_flat


@cuda.jit(cache=True)
def _rmsnorm_forward_kernel(x, g, eps, y, r):
    """Row i: ``r = 1 / sqrt(mean(x^2) + eps)``, ``y = x r g``; x, y ``[R, D]``, r ``[R]``."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        total = 0.0
        for c in range(x.shape[1]):
            total += x[i, c] * x[i, c]
        ri = 1.0 / math.sqrt(total / x.shape[1] + eps)
        r[i] = ri
        for c in range(x.shape[1]):
            y[i, c] = x[i, c] * ri * g[c]


@cuda.jit(cache=True)
def _rmsnorm_backward_rows_kernel(dy, x, r, g, dx):
    """Row i: ``dx = r (dy g - x r mean(dy g x r))``."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        ri = r[i]
        total = 0.0
        for c in range(x.shape[1]):
            total += dy[i, c] * g[c] * x[i, c] * ri
        mean = total / x.shape[1]
        for c in range(x.shape[1]):
            dx[i, c] = ri * (dy[i, c] * g[c] - x[i, c] * ri * mean)


@cuda.jit(cache=True)
def _rmsnorm_gain_grad_kernel(dy, x, r, dg):
    """Feature c: ``dg[c] = sum_i dy[i, c] x[i, c] r[i]``, rows in order."""
    c = cuda.grid(1)
    if c < x.shape[1]:
        acc = 0.0
        for i in range(x.shape[0]):
            acc += dy[i, c] * x[i, c] * r[i]
        dg[c] = acc


def launch_rmsnorm_forward(x, g, eps, y, r, stream=0):
    """y ``[R, D]``, r ``[R]`` from x ``[R, D]`` and g ``[D]``."""
    launch_flat(_rmsnorm_forward_kernel, x.shape[0], stream, x, g, eps, y, r)


def launch_rmsnorm_backward(dy, x, r, g, dx, dg, stream=0):
    """dx ``[R, D]`` and dg ``[D]``: two launches."""
    launch_flat(_rmsnorm_backward_rows_kernel, x.shape[0], stream, dy, x, r, g, dx)
    launch_flat(_rmsnorm_gain_grad_kernel, x.shape[1], stream, dy, x, r, dg)


class NumbaCudaRmsnorm:
    """The RMSNorm op pair as Numba CUDA kernels; a mixin of
    :class:`~.ops.NumbaCudaOps`, whose ``_cp`` allocates."""

    def rmsnorm_forward(self, x, g, eps):
        """x ``[..., D]``, g ``[D]`` -> (y ``[..., D]``, r ``[..., 1]``)."""
        check_rmsnorm_shapes(x, g)
        cp = self._cp
        dtype = cp.result_type(x, g)
        rows = cp.ascontiguousarray(x, dtype=dtype).reshape(-1, x.shape[-1])
        y, r = cp.empty_like(rows), cp.empty(rows.shape[0], dtype)
        launch_rmsnorm_forward(rows, cp.ascontiguousarray(g, dtype=dtype), float(eps), y, r,
                               current_stream())
        return y.reshape(x.shape), r.reshape(x.shape[:-1] + (1,))

    def rmsnorm_backward(self, dy, x, r, g):
        """-> (dx ``[..., D]``, dg ``[D]``)."""
        check_rmsnorm_shapes(x, g, dy)
        cp = self._cp
        dtype = cp.result_type(dy, x, r, g)
        dy_rows, x_rows = (cp.ascontiguousarray(t, dtype=dtype).reshape(-1, x.shape[-1])
                           for t in (dy, x))
        dx, dg = cp.empty_like(x_rows), cp.empty(g.shape[0], dtype)
        launch_rmsnorm_backward(dy_rows, x_rows, cp.ascontiguousarray(r, dtype=dtype).reshape(-1),
                                cp.ascontiguousarray(g, dtype=dtype), dx, dg, current_stream())
        return dx.reshape(x.shape), dg
