"""Attention within a set as Numba CPU kernels: one program per (sample, head).

Same op pair and conventions as :class:`~..reference.attention.ReferenceAttention` (read
its docstring). A program copies its head's q, k, v (and dout) into contiguous scratch,
forms the head's ``[Lq, Lk]`` scores in a scratch array that never leaves the program,
and runs the products as BLAS calls on those 2-D blocks (Numba's ``np.dot``, which
reaches the BLAS through SciPy):

- forward: ``S = q k^T``; per query the masked softmax in place (maximum, exp, total)
  and its log-sum-exp; ``out = S v``;
- backward: ``P = exp(q k^T - lse)`` (masked, +inf rows 0), the output rebuilt as
  ``out = P v``, ``dS = P * (dout v^T - D)`` with ``D_i = dout_i . out_i``;
  ``dq = dS k``, ``dk = dS^T q``, ``dv = P^T dout``.

On these small blocks, plain Numba loops were about 3x slower than the BLAS calls
(measured on a loaded 2-core VM: indicative only); the exps are
:func:`~.exp.exp_row`, which LLVM vectorises. SciPy is optional (the ``cpu``
extra, see :func:`_scipy_blas`): without it the ops run the array-API definition on
NumPy, as before the kernels.

The programs are independent, so the parallel driver (a ``prange`` over them, off by
default like the other CPU kernels: see :mod:`.ops`) gives bitwise the same result.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import array_api_compat.numpy
import numpy as np
from numba import njit, prange

from ..errors import warn_once
from ..reference.attention import ReferenceAttention, check_attention_shapes
from .exp import NEG_INF, ZERO, exp_constants, exp_row, integer_like


# ---------------------------------------------------------------------------------
# one program: a (sample, head), with its scratch
# ---------------------------------------------------------------------------------
@njit(cache=True)
def _scratch(Lq, Lk, d, dtype, int_like):
    """One program's scratch: (qc ``[Lq, d]``, kc, vc ``[Lk, d]``, S, dS ``[Lq, Lk]``,
    n_scaled ``[Lk]`` of int_like's dtype)."""
    return (np.empty((Lq, d), dtype), np.empty((Lk, d), dtype), np.empty((Lk, d), dtype),
            np.empty((Lq, Lk), dtype), np.empty((Lq, Lk), dtype),
            np.empty(Lk, int_like.dtype))


@njit(cache=True, fastmath={"reassoc", "contract"})   # reassoc: a vector sum
def _softmax_rows(S, keep, lse, n_scaled, consts):
    """Scores S ``[Lq, Lk]`` -> their softmax over kept keys, in place, and lse ``[Lq]``;
    a row with no kept key gets 0 and lse = +inf; a NaN score makes its row NaN.
    keep ``[Lk]`` bool. Every scalar is in S's dtype (from consts), so the loops run in
    it."""
    neg_inf = consts[NEG_INF]
    for i in range(S.shape[0]):
        row = S[i]
        top = neg_inf
        for j in range(row.shape[0]):
            if keep[j] and (row[j] > top or row[j] != row[j]):   # a NaN stays on top
                top = row[j]
        if top == neg_inf:
            row[:] = 0
            lse[i] = np.inf
            continue
        for j in range(row.shape[0]):
            row[j] = row[j] - top if keep[j] else neg_inf
        exp_row(row, n_scaled, consts)
        total = consts[ZERO]
        for j in range(row.shape[0]):
            total += row[j]
        for j in range(row.shape[0]):
            row[j] /= total
        lse[i] = top + math.log(total)


@njit(cache=True)
def _forward_program(q, k, v, keep, out, lse, scratch, consts):
    """One head: q ``[Lq, d]``, k, v ``[Lk, d]`` (any strides), keep ``[Lk]`` ->
    out ``[Lq, d]`` (contiguous), lse ``[Lq]``."""
    qc, kc, vc, S, _, n_scaled = scratch
    qc[:] = q
    kc[:] = k
    vc[:] = v
    np.dot(qc, kc.T, S)                                   # scores [Lq, Lk]
    _softmax_rows(S, keep, lse, n_scaled, consts)         # probabilities
    np.dot(S, vc, out)


@njit(cache=True)
def _backward_program(dout, q, k, v, lse, keep, out, dq, dk, dv, scratch, dout_c, consts):
    """One head's gradients: dout, q ``[Lq, d]``, k, v ``[Lk, d]``, lse ``[Lq]``, keep
    ``[Lk]`` -> out (rebuilt), dq ``[Lq, d]``, dk, dv ``[Lk, d]`` (contiguous); dout_c
    ``[Lq, d]`` scratch."""
    qc, kc, vc, P, dS, n_scaled = scratch
    qc[:] = q
    kc[:] = k
    vc[:] = v
    dout_c[:] = dout
    np.dot(qc, kc.T, P)                                   # scores [Lq, Lk]
    for i in range(P.shape[0]):
        p = P[i]
        for j in range(p.shape[0]):                      # +inf lse (no kept key): 0
            p[j] = p[j] - lse[i] if keep[j] else consts[NEG_INF]
        exp_row(p, n_scaled, consts)                      # probabilities
    np.dot(P, vc, out)                                    # the output, rebuilt
    np.dot(dout_c, vc.T, dS)                              # d probabilities
    for i in range(P.shape[0]):
        p, ds = P[i], dS[i]
        row_dot = consts[ZERO]                            # D_i = dout_i . out_i
        for c in range(out.shape[1]):
            row_dot += dout_c[i, c] * out[i, c]
        for j in range(p.shape[0]):
            ds[j] = p[j] * (ds[j] - row_dot)              # d scores
    np.dot(dS, kc, dq)
    np.dot(dS.T, qc, dk)
    np.dot(P.T, dout_c, dv)


# ---------------------------------------------------------------------------------
# drivers: every (sample, head), serially or split between threads
# ---------------------------------------------------------------------------------
@njit(cache=True)
def _forward_serial(q, k, v, keep, out, lse, consts, int_like):
    """:func:`_forward_program` for every (b, h): q ``[B, h, Lq, d]``, k, v
    ``[B, h, Lk, d]``, keep ``[B, Lk]``, out ``[B, h, Lq, d]``, lse ``[B, h, Lq]``."""
    scratch = _scratch(q.shape[2], k.shape[2], q.shape[3], out.dtype, int_like)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            _forward_program(q[b, h], k[b, h], v[b, h], keep[b], out[b, h], lse[b, h],
                             scratch, consts)


@njit(cache=True, parallel=True)
def _forward_parallel(q, k, v, keep, out, lse, consts, int_like):
    """:func:`_forward_serial` with the (b, h) programs split between threads."""
    n_heads = q.shape[1]
    for bh in prange(q.shape[0] * n_heads):
        b, h = bh // n_heads, bh % n_heads
        scratch = _scratch(q.shape[2], k.shape[2], q.shape[3], out.dtype, int_like)
        _forward_program(q[b, h], k[b, h], v[b, h], keep[b], out[b, h], lse[b, h],
                         scratch, consts)


@njit(cache=True)
def _backward_serial(dout, q, k, v, lse, keep, out, dq, dk, dv, consts, int_like):
    """:func:`_backward_program` for every (b, h); shapes as in :func:`_forward_serial`."""
    scratch = _scratch(q.shape[2], k.shape[2], q.shape[3], dq.dtype, int_like)
    dout_c = np.empty(q.shape[2:], dq.dtype)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            _backward_program(dout[b, h], q[b, h], k[b, h], v[b, h], lse[b, h], keep[b],
                              out[b, h], dq[b, h], dk[b, h], dv[b, h], scratch, dout_c, consts)


@njit(cache=True, parallel=True)
def _backward_parallel(dout, q, k, v, lse, keep, out, dq, dk, dv, consts, int_like):
    """:func:`_backward_serial` with the (b, h) programs split between threads."""
    n_heads = q.shape[1]
    for bh in prange(q.shape[0] * n_heads):
        b, h = bh // n_heads, bh % n_heads
        scratch = _scratch(q.shape[2], k.shape[2], q.shape[3], dq.dtype, int_like)
        _backward_program(dout[b, h], q[b, h], k[b, h], v[b, h], lse[b, h], keep[b],
                          out[b, h], dq[b, h], dk[b, h], dv[b, h], scratch,
                          np.empty(q.shape[2:], dq.dtype), consts)


# ---------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------
@functools.cache
def _scipy_blas() -> bool:
    """Whether Numba's ``np.dot`` can reach a BLAS, which it does through SciPy (the
    ``cpu`` extra); without SciPy, False and one line on stderr.

    SciPy's wheels bring their own OpenBLAS, which only these calls use here; it is held
    to one thread (with threadpoolctl, also in the extra): splitting each head's small
    products between threads made them up to ~3x slower on the loaded 2-core VM, and the
    kernels' parallelism is across heads. A BLAS that SciPy shares with NumPy (other
    builds) is left alone, as NumPy's large products use its threads."""
    try:
        import scipy.linalg.cython_blas  # loads the library np.dot calls
    except ImportError:
        warn_once("the CPU attention kernel needs SciPy for its BLAS calls (pip install "
                  "-e '.[cpu]'): attention runs as array-API code on NumPy instead")
        return False
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return True
    vendored = Path(scipy.linalg.cython_blas.__file__).parents[2] / "scipy.libs"
    controller = ThreadpoolController()
    own = [lib.filepath for lib in controller.lib_controllers
           if Path(lib.filepath).parent == vendored]
    if own:
        controller.select(filepath=own).limit(limits=1)
    return True


class _NumpyAttention(ReferenceAttention):
    """The array-API definition on NumPy: the ops without SciPy."""
    xp = array_api_compat.numpy


class NumbaCpuAttention:
    """The attention op pair as Numba CPU kernels; a mixin of
    :class:`~.ops.NumbaCpuOps`, whose ``_parts(work)`` chooses serial or parallel
    (work: B*h*Lq*Lk scores)."""

    def attention_forward(self, q, k, v, key_keep=None):
        """q ``[B, h, Lq, d]`` (scaled), k, v ``[B, h, Lk, d]``, key_keep ``[B, Lk]`` or None
        -> (out ``[B, h, Lq, d]``, lse ``[B, h, Lq]``)."""
        if not _scipy_blas():
            return _NumpyAttention().attention_forward(q, k, v, key_keep)
        check_attention_shapes(q, k, v, key_keep)
        dtype = _float_dtype(q, k, v)
        q, k, v = (np.asarray(a, dtype) for a in (q, k, v))
        B, h, Lq, d = q.shape
        out, lse = np.empty((B, h, Lq, d), dtype), np.empty((B, h, Lq), dtype)
        parallel = self._parts(B * h * Lq * k.shape[2]) > 1
        forward = _forward_parallel if parallel else _forward_serial
        forward(q, k, v, _keep_or_all(key_keep, k), out, lse, *_kernel_constants(dtype))
        return out, lse

    def attention_backward(self, dout, q, k, v, lse, key_keep=None):
        """Gradients of ``attention_forward`` -> (dq ``[B, h, Lq, d]``, dk, dv
        ``[B, h, Lk, d]``, out ``[B, h, Lq, d]`` rebuilt)."""
        if not _scipy_blas():
            return _NumpyAttention().attention_backward(dout, q, k, v, lse, key_keep)
        check_attention_shapes(q, k, v, key_keep)
        dtype = _float_dtype(dout, q, k, v, lse)
        dout, q, k, v, lse = (np.asarray(a, dtype) for a in (dout, q, k, v, lse))
        out, dq = np.empty(q.shape, dtype), np.empty(q.shape, dtype)
        dk, dv = np.empty(k.shape, dtype), np.empty(v.shape, dtype)
        B, h, Lq, _ = q.shape
        parallel = self._parts(B * h * Lq * k.shape[2]) > 1
        backward = _backward_parallel if parallel else _backward_serial
        backward(dout, q, k, v, lse, _keep_or_all(key_keep, k), out, dq, dk, dv,
                 *_kernel_constants(dtype))
        return dq, dk, dv, out


def _float_dtype(*arrays):
    """The arrays' common dtype; TypeError unless float32 or float64 (the BLAS types)."""
    dtype = np.result_type(*arrays)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"attention kernels take float32 or float64 arrays, got {dtype}")
    return dtype


def _kernel_constants(dtype):
    """(exp constants, a one-element integer array as wide as dtype) for the drivers."""
    return exp_constants(dtype), integer_like(dtype)


def _keep_or_all(key_keep, k):
    """key_keep as a bool array ``[B, Lk]``, all True when None."""
    if key_keep is None:
        return np.ones((k.shape[0], k.shape[2]), dtype=np.bool_)
    return np.asarray(key_keep, dtype=np.bool_)
