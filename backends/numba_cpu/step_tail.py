"""The interaction step's tail as a Numba CPU kernel: one pass over the state's rows.

Same op pair and conventions as :class:`~..reference.step_tail.ReferenceStepTail` (read
its docstring). Per row of D features: ``U = tanh(Y)`` (from the vectorised exp of
:mod:`.exp`: ``tanh y = sign(y) (1 - e) / (1 + e)``, ``e = exp(-2|y|)``,
accurate to about one unit in the last place of 1 near y = 0), ``H_new = H + U``, the
readout's dot product and sigmoid; the backward's row pass computes dH, dY and adds
``dpre H_new`` into dw_a. Serial: the rows are memory-bound work, and dw_a is a sum over
all of them in row order.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..reference.step_tail import check_step_tail_shapes
from .exp import HALF, ZERO, exp_constants, exp_row, integer_like
from .rmsnorm import _rows  # [..., D] -> C-contiguous [R, D] of dtype


@njit(cache=True, fastmath={"contract"})
def _tanh_row(y, u, n_scaled, consts):
    """``u = tanh(y)``: y, u ``[D]``; n_scaled, consts as for :func:`exp_row`."""
    one = consts[HALF] + consts[HALF]
    for c in range(y.shape[0]):
        u[c] = -(abs(y[c]) + abs(y[c]))
    exp_row(u, n_scaled, consts)                           # e = exp(-2|y|)
    for c in range(y.shape[0]):
        t = (one - u[c]) / (one + u[c])
        u[c] = t if y[c] >= 0 else -t


@njit(cache=True)
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow for any x."""
    e = math.exp(-abs(x))
    return 1 / (1 + e) if x >= 0 else e / (1 + e)


@njit(cache=True, fastmath={"contract"})
def _forward_rows(Y, H, w_a, b_a, z, H_new, U, a, consts, int_like):
    """Y, H, H_new, U ``[R, D]``; w_a ``[D]``; b_a ``[1]``; z, a ``[R]``."""
    n_scaled = np.empty(Y.shape[1], int_like.dtype)
    for r in range(Y.shape[0]):
        _tanh_row(Y[r], U[r], n_scaled, consts)
        pre = consts[ZERO]
        for c in range(Y.shape[1]):
            H_new[r, c] = H[r, c] + U[r, c]
            pre += H_new[r, c] * w_a[c]
        a[r] = _sigmoid(pre + b_a[0] + z[r])


@njit(cache=True, fastmath={"contract"})
def _backward_rows(dH_new, da, U, H_new, a, w_a, dY, dH, dw_a, dpre, consts):
    """dH_new, U, H_new, dY, dH ``[R, D]``; da, a, dpre ``[R]``; w_a, dw_a ``[D]``
    (dw_a zeroed by the caller)."""
    one = consts[HALF] + consts[HALF]                      # 1 in the arrays' dtype
    for r in range(dH_new.shape[0]):
        dpre[r] = da[r] * a[r] * (one - a[r])
        for c in range(dH_new.shape[1]):
            dH[r, c] = dH_new[r, c] + dpre[r] * w_a[c]
            dY[r, c] = dH[r, c] * (one - U[r, c] * U[r, c])
            dw_a[c] += dpre[r] * H_new[r, c]


@njit(cache=True, fastmath={"contract"})
def _tanh_backward_rows(dH_new, U, dY, consts):
    """``dY = dH_new (1 - U^2)``: all ``[R, D]``."""
    one = consts[HALF] + consts[HALF]
    for r in range(dH_new.shape[0]):
        for c in range(dH_new.shape[1]):
            dY[r, c] = dH_new[r, c] * (one - U[r, c] * U[r, c])


class NumbaCpuStepTail:
    """The step-tail op pair as a Numba CPU kernel; a mixin of
    :class:`~.ops.NumbaCpuOps`."""

    def step_tail_forward(self, Y, H, w_a, b_a, z=None):
        """Y, H ``[B, M, D]``, w_a ``[D]``, b_a ``[]``, z ``[B, M]`` or None ->
        (H_new ``[B, M, D]``, U ``[B, M, D]``, a ``[B, M]``)."""
        check_step_tail_shapes(Y, H, w_a, z)
        B, M, D = Y.shape
        dtype = np.result_type(Y, H, w_a)
        Y, H = (_rows(t, dtype) for t in (Y, H))
        z = np.zeros(B * M, dtype) if z is None else np.asarray(z, dtype).reshape(-1)
        H_new, U, a = np.empty_like(Y), np.empty_like(Y), np.empty(B * M, dtype)
        _forward_rows(Y, H, np.asarray(w_a, dtype), np.asarray(b_a, dtype).reshape(1), z,
                      H_new, U, a, exp_constants(dtype), integer_like(dtype))
        return H_new.reshape(B, M, D), U.reshape(B, M, D), a.reshape(B, M)

    def step_tail_backward(self, dH_new, da, U, H_new, a, w_a):
        """-> (dY, dH ``[B, M, D]``, dw_a ``[D]``, db_a ``[]``, dpre ``[B, M]``); the last
        three None when da is None."""
        shape = U.shape
        dtype = np.result_type(dH_new, U, H_new, w_a)
        dH_new, U, H_new = (_rows(t, dtype) for t in (dH_new, U, H_new))
        dY = np.empty_like(U)
        if da is None:
            _tanh_backward_rows(dH_new, U, dY, exp_constants(dtype))
            return dY.reshape(shape), dH_new.reshape(shape), None, None, None
        da, a = (np.asarray(t, dtype).reshape(-1) for t in (da, a))
        dH, dw_a, dpre = np.empty_like(U), np.zeros(shape[2], dtype), np.empty_like(a)
        _backward_rows(dH_new, da, U, H_new, a, np.asarray(w_a, dtype), dY, dH, dw_a, dpre,
                       exp_constants(dtype))
        return (dY.reshape(shape), dH.reshape(shape), dw_a, np.asarray(np.sum(dpre)),
                dpre.reshape(shape[:2]))
