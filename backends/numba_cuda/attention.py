"""Attention within a set as Numba CUDA kernels: one block per (sample, head).

Same op pair and conventions as :class:`~..reference.attention.ReferenceAttention` (read
its docstring), on CuPy arrays, on CuPy's current stream (see :mod:`.target`); one
kernel launch per op, nothing read back to the host. The scores are recomputed where
they are needed (a dot product of two rows of length d) and never stored:

- forward: a thread per query row (striding over the rows): the maximum of its kept
  scores, then ``out_i = sum_j exp(s_ij - max) v_j / total`` and its log-sum-exp;
- backward, in two phases separated by a block barrier: a thread per query row rebuilds
  the output ``out_i = sum_j p_ij v_j``, computes ``D_i = dout_i . out_i`` (kept for
  phase two in ``row_dot``) and ``dq_i = sum_j ds_ij k_j``; then a thread per key row
  computes ``dk_j = sum_i ds_ij q_i`` and ``dv_j = sum_i p_ij dout_i``, with
  ``p_ij = exp(s_ij - lse_i)`` and ``ds_ij = p_ij (dout_i . v_j - D_i)``. Each output row
  is written by one thread, in a fixed order: no atomics, bitwise reproducible.

Scalars (maximum, total, D) are float64 whatever the arrays' dtype. ``launch_*``
functions take any arrays ``numba.cuda`` accepts (NumPy arrays in the CUDA simulator,
for the tests) and never allocate or synchronise; :class:`NumbaCudaAttention` checks,
allocates with the array module and launches.
"""

from __future__ import annotations

import math

from ..reference.attention import check_attention_shapes
from .target import cuda, current_stream

MAX_THREADS_PER_BLOCK = 256


# ---------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------
@cuda.jit(device=True)
def _dot(a, b):
    """``a . b``: both ``[d]``."""
    acc = 0.0
    for c in range(a.shape[0]):
        acc += a[c] * b[c]
    return acc


@cuda.jit(device=True)
def _zero(row):
    for c in range(row.shape[0]):
        row[c] = 0


@cuda.jit(device=True)
def _add_weighted_values(q_i, k, v, keep_b, shift, out_i):
    """``out_i += sum_j exp(q_i . k_j - shift) v_j`` over the kept keys j; -> the sum of
    the weights. k, v ``[Lk, d]`` (one head), keep_b ``[Lk]``."""
    total = 0.0
    for j in range(k.shape[0]):
        if keep_b[j]:
            p = math.exp(_dot(q_i, k[j]) - shift)
            total += p
            v_j = v[j]
            for c in range(out_i.shape[0]):
                out_i[c] += p * v_j[c]
    return total


@cuda.jit(cache=True)
def _attention_forward_kernel(q, k, v, keep, out, lse):
    """Block (b, h) of a grid of B*h: q ``[B, h, Lq, d]``, k, v ``[B, h, Lk, d]``, keep
    ``[B, Lk]`` bool -> out ``[B, h, Lq, d]``, lse ``[B, h, Lq]``."""
    n_heads = q.shape[1]
    b, h = cuda.blockIdx.x // n_heads, cuda.blockIdx.x % n_heads
    for i in range(cuda.threadIdx.x, q.shape[2], cuda.blockDim.x):
        q_i, out_i = q[b, h, i], out[b, h, i]
        _zero(out_i)
        top = -math.inf
        for j in range(k.shape[2]):
            if keep[b, j]:
                s = _dot(q_i, k[b, h, j])
                if s > top or s != s:                  # a NaN stays on top
                    top = s
        if top == -math.inf:                       # no kept key: zero output, lse +inf
            lse[b, h, i] = math.inf
            continue
        total = _add_weighted_values(q_i, k[b, h], v[b, h], keep[b], top, out_i)
        for c in range(out_i.shape[0]):
            out_i[c] /= total
        lse[b, h, i] = top + math.log(total)


@cuda.jit(device=True)
def _probability_and_dscore(q_i, k_j, v_j, dout_i, lse_i, row_dot_i):
    """(p_ij, ds_ij) for one query i and kept key j."""
    p = math.exp(_dot(q_i, k_j) - lse_i)
    return p, p * (_dot(dout_i, v_j) - row_dot_i)


@cuda.jit(cache=True)
def _attention_backward_kernel(dout, q, k, v, lse, keep, out, row_dot, dq, dk, dv):
    """Block (b, h) of a grid of B*h: the forward's q, k, v, lse, keep and dout
    ``[B, h, Lq, d]`` -> out (rebuilt), dq ``[B, h, Lq, d]``, dk, dv ``[B, h, Lk, d]``;
    row_dot ``[B, h, Lq]`` is scratch."""
    n_heads = q.shape[1]
    b, h = cuda.blockIdx.x // n_heads, cuda.blockIdx.x % n_heads
    for i in range(cuda.threadIdx.x, q.shape[2], cuda.blockDim.x):    # phase 1: queries
        dout_i, q_i, out_i, dq_i = dout[b, h, i], q[b, h, i], out[b, h, i], dq[b, h, i]
        _zero(out_i)
        _zero(dq_i)
        row_dot[b, h, i] = 0.0
        if lse[b, h, i] == math.inf:
            continue
        _add_weighted_values(q_i, k[b, h], v[b, h], keep[b], lse[b, h, i], out_i)  # rebuilt
        row_dot[b, h, i] = _dot(dout_i, out_i)
        for j in range(k.shape[2]):
            if keep[b, j]:
                k_j = k[b, h, j]
                _, ds = _probability_and_dscore(q_i, k_j, v[b, h, j], dout_i, lse[b, h, i],
                                                row_dot[b, h, i])
                for c in range(dq_i.shape[0]):
                    dq_i[c] += ds * k_j[c]
    cuda.syncthreads()                                                 # row_dot complete
    for j in range(cuda.threadIdx.x, k.shape[2], cuda.blockDim.x):    # phase 2: keys
        k_j, v_j, dk_j, dv_j = k[b, h, j], v[b, h, j], dk[b, h, j], dv[b, h, j]
        _zero(dk_j)
        _zero(dv_j)
        if not keep[b, j]:
            continue
        for i in range(q.shape[2]):
            if lse[b, h, i] != math.inf:
                q_i, dout_i = q[b, h, i], dout[b, h, i]
                p, ds = _probability_and_dscore(q_i, k_j, v_j, dout_i, lse[b, h, i],
                                                row_dot[b, h, i])
                for c in range(dk_j.shape[0]):
                    dk_j[c] += ds * q_i[c]
                    dv_j[c] += p * dout_i[c]


# ---------------------------------------------------------------------------------
# launch helpers: any arrays numba.cuda accepts, outputs allocated by the caller
# ---------------------------------------------------------------------------------
def _threads(rows):
    """Threads per block for a block striding over ``rows`` rows: whole warps, at most
    MAX_THREADS_PER_BLOCK."""
    return min(MAX_THREADS_PER_BLOCK, 32 * max(1, math.ceil(rows / 32)))


def launch_attention_forward(q, k, v, keep, out, lse, stream=0):
    """out ``[B, h, Lq, d]``, lse ``[B, h, Lq]`` from q, k, v and keep ``[B, Lk]``."""
    blocks = q.shape[0] * q.shape[1]
    if blocks:
        _attention_forward_kernel[blocks, _threads(q.shape[2]), stream](q, k, v, keep, out, lse)


def launch_attention_backward(dout, q, k, v, lse, keep, out, row_dot, dq, dk, dv, stream=0):
    """out (rebuilt), dq, dk, dv from the forward's q, k, v, lse, keep and dout; row_dot
    ``[B, h, Lq]`` scratch."""
    blocks = q.shape[0] * q.shape[1]
    if blocks:
        threads = _threads(max(q.shape[2], k.shape[2]))
        _attention_backward_kernel[blocks, threads, stream](dout, q, k, v, lse, keep, out,
                                                            row_dot, dq, dk, dv)


# ---------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------
class NumbaCudaAttention:
    """The attention op pair as Numba CUDA kernels; a mixin of
    :class:`~.ops.NumbaCudaOps`, whose ``_cp`` (CuPy, or NumPy under the
    simulator) allocates."""

    def attention_forward(self, q, k, v, key_keep=None):
        """q ``[B, h, Lq, d]`` (scaled), k, v ``[B, h, Lk, d]``, key_keep ``[B, Lk]`` or None
        -> (out ``[B, h, Lq, d]``, lse ``[B, h, Lq]``)."""
        check_attention_shapes(q, k, v, key_keep)
        q, k, v = self._same_dtype_contiguous(q, k, v)
        out = self._cp.empty(q.shape, q.dtype)
        lse = self._cp.empty(q.shape[:3], q.dtype)
        launch_attention_forward(q, k, v, self._keep(key_keep, k), out, lse, current_stream())
        return out, lse

    def attention_backward(self, dout, q, k, v, lse, key_keep=None):
        """Gradients of ``attention_forward`` -> (dq ``[B, h, Lq, d]``, dk, dv
        ``[B, h, Lk, d]``, out ``[B, h, Lq, d]`` rebuilt)."""
        check_attention_shapes(q, k, v, key_keep)
        dout, q, k, v, lse = self._same_dtype_contiguous(dout, q, k, v, lse)
        cp = self._cp
        out, dq, dk, dv = (cp.empty(a.shape, a.dtype) for a in (q, q, k, v))
        row_dot = cp.empty(q.shape[:3], q.dtype)
        launch_attention_backward(dout, q, k, v, lse, self._keep(key_keep, k), out, row_dot,
                                  dq, dk, dv, current_stream())
        return dq, dk, dv, out

    def _same_dtype_contiguous(self, *arrays):
        """The arrays C-contiguous in their common float dtype (copies only if needed)."""
        dtype = self._cp.result_type(*arrays)
        return tuple(self._cp.ascontiguousarray(a, dtype=dtype) for a in arrays)

    def _keep(self, key_keep, k):
        """key_keep as a contiguous bool array ``[B, Lk]``, all True when None."""
        if key_keep is None:
            return self._cp.ones((k.shape[0], k.shape[2]), dtype=bool)
        return self._cp.ascontiguousarray(key_keep, dtype=bool)
