"""The interaction step's tail as Numba CUDA kernels: a thread per row of the state.

Same op pair and conventions as :class:`~..reference.step_tail.ReferenceStepTail` (read
its docstring), on CuPy arrays, on CuPy's current stream. Forward: one launch, a thread
per row r of ``[B*M, D]`` (tanh, residual add, the readout's dot product and sigmoid).
Backward: one launch for the rows (dpre, dH, dY), then one for the readout's gradients,
a thread per feature summing ``dpre H_new`` over the rows in order (and one thread
summing dpre): no atomics, bitwise reproducible. Without da, one launch (dY only).
``launch_*`` functions take any arrays ``numba.cuda`` accepts (the simulator's NumPy
arrays in the tests); :class:`NumbaCudaStepTail` checks, allocates and launches.
"""

from __future__ import annotations

import math

from ..reference.step_tail import check_step_tail_shapes
from .target import cuda, current_stream, launch_flat


@cuda.jit(cache=True)
def _step_tail_forward_kernel(Y, H, w_a, b_a, z, H_new, U, a):
    """Row r: ``U = tanh(Y)``, ``H_new = H + U``, ``a = sigmoid(H_new . w_a + b_a + z)``;
    Y, H, H_new, U ``[R, D]``, w_a ``[D]``, b_a ``[1]``, z, a ``[R]``."""
    r = cuda.grid(1)
    if r < Y.shape[0]:
        pre = 0.0
        for c in range(Y.shape[1]):
            u = math.tanh(Y[r, c])
            U[r, c] = u
            H_new[r, c] = H[r, c] + u
            pre += H_new[r, c] * w_a[c]
        pre += b_a[0] + z[r]
        e = math.exp(-abs(pre))
        a[r] = 1.0 / (1.0 + e) if pre >= 0 else e / (1.0 + e)


@cuda.jit(cache=True)
def _step_tail_backward_rows_kernel(dH_new, da, U, a, w_a, dY, dH, dpre):
    """Row r: ``dpre = da a (1 - a)``, ``dH = dH_new + dpre w_a``, ``dY = dH (1 - U^2)``."""
    r = cuda.grid(1)
    if r < dH_new.shape[0]:
        g = da[r] * a[r] * (1.0 - a[r])
        dpre[r] = g
        for c in range(dH_new.shape[1]):
            dh = dH_new[r, c] + g * w_a[c]
            dH[r, c] = dh
            dY[r, c] = dh * (1.0 - U[r, c] * U[r, c])


@cuda.jit(cache=True)
def _readout_grads_kernel(dpre, H_new, dw_a, db_a):
    """Thread c < D: ``dw_a[c] = sum_r dpre[r] H_new[r, c]``; thread D: ``db_a[0] =
    sum_r dpre[r]``; rows in order."""
    c = cuda.grid(1)
    D = H_new.shape[1]
    if c < D:
        acc = 0.0
        for r in range(H_new.shape[0]):
            acc += dpre[r] * H_new[r, c]
        dw_a[c] = acc
    elif c == D:
        acc = 0.0
        for r in range(dpre.shape[0]):
            acc += dpre[r]
        db_a[0] = acc


@cuda.jit(cache=True)
def _tanh_backward_kernel(dH_new, U, dY):
    """``dY = dH_new (1 - U^2)``, a thread per element of ``[R, D]``."""
    i = cuda.grid(1)
    D = U.shape[1]
    if i < U.shape[0] * D:
        r, c = i // D, i % D
        dY[r, c] = dH_new[r, c] * (1.0 - U[r, c] * U[r, c])


def launch_step_tail_forward(Y, H, w_a, b_a, z, H_new, U, a, stream=0):
    """H_new, U ``[R, D]`` and a ``[R]`` from Y, H ``[R, D]``, w_a ``[D]``, b_a ``[1]`` and
    z ``[R]``."""
    launch_flat(_step_tail_forward_kernel, Y.shape[0], stream, Y, H, w_a, b_a, z, H_new, U, a)


def launch_step_tail_backward(dH_new, da, U, H_new, a, w_a, dY, dH, dpre, dw_a, db_a,
                              stream=0):
    """dY, dH ``[R, D]``, dpre ``[R]``, dw_a ``[D]``, db_a ``[1]``: two launches."""
    launch_flat(_step_tail_backward_rows_kernel, dH_new.shape[0], stream,
                dH_new, da, U, a, w_a, dY, dH, dpre)
    launch_flat(_readout_grads_kernel, H_new.shape[1] + 1, stream, dpre, H_new, dw_a, db_a)


def launch_tanh_backward(dH_new, U, dY, stream=0):
    """``dY = dH_new (1 - U^2)``: all ``[R, D]``."""
    launch_flat(_tanh_backward_kernel, U.shape[0] * U.shape[1], stream, dH_new, U, dY)


class NumbaCudaStepTail:
    """The step-tail op pair as Numba CUDA kernels; a mixin of
    :class:`~.ops.NumbaCudaOps`, whose ``_cp`` allocates."""

    def step_tail_forward(self, Y, H, w_a, b_a, z=None):
        """Y, H ``[B, M, D]``, w_a ``[D]``, b_a ``[]``, z ``[B, M]`` or None ->
        (H_new ``[B, M, D]``, U ``[B, M, D]``, a ``[B, M]``)."""
        check_step_tail_shapes(Y, H, w_a, z)
        cp = self._cp
        B, M, D = Y.shape
        dtype = cp.result_type(Y, H, w_a)
        Y, H = (self._rows(t, dtype) for t in (Y, H))
        z = cp.zeros(B * M, dtype) if z is None else self._flat(z, dtype)
        H_new, U, a = cp.empty_like(Y), cp.empty_like(Y), cp.empty(B * M, dtype)
        launch_step_tail_forward(Y, H, self._flat(w_a, dtype), self._flat(b_a, dtype), z,
                                 H_new, U, a, current_stream())
        return H_new.reshape(B, M, D), U.reshape(B, M, D), a.reshape(B, M)

    def step_tail_backward(self, dH_new, da, U, H_new, a, w_a):
        """-> (dY, dH ``[B, M, D]``, dw_a ``[D]``, db_a ``[]``, dpre ``[B, M]``); the last
        three None when da is None."""
        cp = self._cp
        shape = U.shape
        dtype = cp.result_type(dH_new, U, H_new, w_a)
        dH_new, U, H_new = (self._rows(t, dtype) for t in (dH_new, U, H_new))
        dY = cp.empty_like(U)
        if da is None:
            launch_tanh_backward(dH_new, U, dY, current_stream())
            return dY.reshape(shape), dH_new.reshape(shape), None, None, None
        dH, dpre = cp.empty_like(U), cp.empty(U.shape[0], dtype)
        dw_a, db_a = cp.empty(shape[2], dtype), cp.empty(1, dtype)
        launch_step_tail_backward(dH_new, self._flat(da, dtype), U, H_new,
                                  self._flat(a, dtype), self._flat(w_a, dtype), dY, dH, dpre,
                                  dw_a, db_a, current_stream())
        return (dY.reshape(shape), dH.reshape(shape), dw_a, db_a.reshape(()),
                dpre.reshape(shape[:2]))

    def _rows(self, t, dtype):
        """``[B, M, D]`` -> a C-contiguous ``[B*M, D]`` array of dtype."""
        return self._cp.ascontiguousarray(t, dtype=dtype).reshape(-1, t.shape[-1])

    def _flat(self, t, dtype):
        """Any shape -> a C-contiguous 1-D array of dtype."""
        return self._cp.ascontiguousarray(t, dtype=dtype).reshape(-1)
