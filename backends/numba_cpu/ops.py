"""Numba CPU kernels for the sparse hot path: ``backend.ops`` of the numpy backend.

Same methods and semantics as :class:`~..reference.ReferenceOps` (read its docstrings
for the index conventions), on NumPy arrays. Each operation is a small ``@njit``
row function driven by a serial loop or, where enabled, a ``prange`` loop:

- parallel loops never let two threads write the same output row: scatter-adds split
  the *output rows* between threads (each thread scans all ids and keeps its own), so
  every output element is summed in the same order as the serial loop and the result
  is bitwise identical whatever the thread count;
- parallel loops are off by default. On the 2-vCPU machine they were tuned on
  they ran ~2x faster than serial with nothing else running, but 2.5-30x slower
  (up to ~12 ms a call) with a matmul between calls, as in training: the BLAS
  threads and Numba's OpenMP threads wait for each other's cores
  (``bench/kernels.py --interleave-matmul``). Serial is the predictable choice. Turn
  them on for inputs with at least ``parallel_min_work`` elements of work (argument,
  or ``$BRAINLIKE_PARALLEL_MIN_WORK``) on machines with cores to spare, after
  comparing the bench's serial and parallel columns there.

Sums accumulate in the arrays' dtype (float32 stays float32, like ``np.add.at``).
Compiled code is cached on disk (``cache=True``), one specialisation per dtype.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ..settings import parallel_min_work as parallel_min_work_from_env
from ..reference.ops import check_weighted_sum_backward_shapes, check_weighted_sum_shapes
from .attention import NumbaCpuAttention
from .rmsnorm import NumbaCpuRmsnorm
from .step_tail import NumbaCpuStepTail


# ---------------------------------------------------------------------------------
# row functions shared by the serial and parallel drivers
# ---------------------------------------------------------------------------------
@njit(cache=True)
def _first_out_of_range(ids, n_rows):
    """Position of the first id outside ``[0, n_rows)``, or -1: ids ``[n]``."""
    for i in range(ids.shape[0]):
        if ids[i] < 0 or ids[i] >= n_rows:
            return i
    return -1


@njit(cache=True)
def _copy_row(src, dst):
    """``dst[:] = src``: both ``[F]``."""
    for f in range(src.shape[0]):
        dst[f] = src[f]


@njit(cache=True)
def _add_row(src, dst):
    """``dst[:] += src``: both ``[F]``."""
    for f in range(src.shape[0]):
        dst[f] += src[f]


@njit(cache=True)
def _owned_rows(n_rows, n_parts, part):
    """The output rows ``[lo, hi)`` that thread ``part`` of ``n_parts`` writes."""
    return n_rows * part // n_parts, n_rows * (part + 1) // n_parts


@njit(cache=True)
def _scatter_scaled(dst, src, coef, at):
    """``dst[at[j]] += coef[j] * src[at[j]]`` for each j: dst, src ``[N]``, coef, at ``[k]``."""
    for j in range(at.shape[0]):
        n = at[j]
        dst[n] += coef[j] * src[n]


# ---------------------------------------------------------------------------------
# gather / scatter-add of rows
# ---------------------------------------------------------------------------------
@njit(cache=True)
def _gather_rows_serial(table, ids, out):
    """``out[i] = table[ids[i]]``: table ``[R, F]``, ids ``[n]``, out ``[n, F]``."""
    for i in range(ids.shape[0]):
        _copy_row(table[ids[i]], out[i])


@njit(cache=True, parallel=True)
def _gather_rows_parallel(table, ids, out):
    """:func:`_gather_rows_serial` with the rows split between threads."""
    for i in prange(ids.shape[0]):
        _copy_row(table[ids[i]], out[i])


@njit(cache=True)
def _scatter_add_rows_serial(ids, rows, out):
    """``out[ids[i]] += rows[i]`` in order of i: ids ``[n]``, rows ``[n, F]``, out ``[R, F]``."""
    for i in range(ids.shape[0]):
        _add_row(rows[i], out[ids[i]])


@njit(cache=True, parallel=True)
def _scatter_add_rows_parallel(ids, rows, out, n_parts):
    """:func:`_scatter_add_rows_serial`, each of ``n_parts`` threads owning a block of
    output rows and adding, in order of i, the rows whose id falls in its block."""
    for part in prange(n_parts):
        lo, hi = _owned_rows(out.shape[0], n_parts, part)
        for i in range(ids.shape[0]):
            if lo <= ids[i] < hi:
                _add_row(rows[i], out[ids[i]])


# ---------------------------------------------------------------------------------
# top-k: a bounded heap per row
# ---------------------------------------------------------------------------------
@njit(cache=True)
def _comes_after(z, i, j):
    """True when index i ranks after index j in the top-k order of row z ``[N]``:
    larger values first, NaN above every number, ties to the lower index (the order
    of a stable descending argsort)."""
    a, b = z[i], z[j]
    if a == b or (np.isnan(a) and np.isnan(b)):
        return i > j
    if np.isnan(a):
        return False
    if np.isnan(b):
        return True
    return a < b


@njit(cache=True)
def _sift_down(heap, z, pos, size):
    """Restore the heap below ``pos``: every parent ranks after its children, so
    ``heap[0]`` is the index ranking last. heap ``[>= size]`` indices into z ``[N]``."""
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        if child + 1 < size and _comes_after(z, heap[child + 1], heap[child]):
            child += 1
        if not _comes_after(z, heap[child], heap[pos]):
            return
        heap[pos], heap[child] = heap[child], heap[pos]
        pos = child


@njit(cache=True)
def _topk_row(z, out):
    """The indices of the k largest entries of z ``[N]``, best first, into out ``[k]``.

    One pass over z keeps the best k seen in a heap (worst at the root), then the
    heap is sorted in place: O(N log k).
    """
    k = out.shape[0]
    if k == 0:
        return
    for j in range(k):
        out[j] = j
    for pos in range(k // 2 - 1, -1, -1):
        _sift_down(out, z, pos, k)
    worst = z[out[0]]
    for j in range(k, z.shape[0]):
        # every index in the heap is below j, so j wins only by a larger value (a tie
        # keeps the lower index); the same test as _comes_after(z, out[0], j)
        if z[j] > worst or (np.isnan(z[j]) and not np.isnan(worst)):
            out[0] = j
            _sift_down(out, z, 0, k)
            worst = z[out[0]]
    for end in range(k - 1, 0, -1):   # move the worst remaining to the back
        out[0], out[end] = out[end], out[0]
        _sift_down(out, z, 0, end)


@njit(cache=True)
def _topk_serial(z, out):
    """:func:`_topk_row` for every row: z ``[B, N]``, out ``[B, k]``."""
    for b in range(z.shape[0]):
        _topk_row(z[b], out[b])


@njit(cache=True, parallel=True)
def _topk_parallel(z, out):
    """:func:`_topk_serial` with the rows split between threads."""
    for b in prange(z.shape[0]):
        _topk_row(z[b], out[b])


# ---------------------------------------------------------------------------------
# gathered, position-weighted sums of rows: out[b] = sum_t table[ids[b, t]] * weights[t]
# ---------------------------------------------------------------------------------
@njit(cache=True)
def _weighted_sum_row(table, weights, ids_row, out):
    """``out = sum_t table[ids_row[t]] * weights[t]``: ids_row ``[T]``, out ``[F]``."""
    for f in range(out.shape[0]):
        out[f] = 0
    for t in range(ids_row.shape[0]):
        row, w = table[ids_row[t]], weights[t]           # [F], [F]
        for f in range(out.shape[0]):
            out[f] += row[f] * w[f]


@njit(cache=True)
def _gather_weighted_sum_serial(table, weights, ids, out):
    """:func:`_weighted_sum_row` for every sample: ids ``[B, T]``, out ``[B, F]``."""
    for b in range(ids.shape[0]):
        _weighted_sum_row(table, weights, ids[b], out[b])


@njit(cache=True, parallel=True)
def _gather_weighted_sum_parallel(table, weights, ids, out):
    """:func:`_gather_weighted_sum_serial` with the samples split between threads."""
    for b in prange(ids.shape[0]):
        _weighted_sum_row(table, weights, ids[b], out[b])


@njit(cache=True)
def _gather_weighted_sum_backward_serial(dout, cols, table, weights, ids, dtable, dweights):
    """Add the gradients at the given columns into dtable ``[R, F]``, dweights ``[T', F]``:

    ``dtable[ids[b, t], cols[b, j]] += dout[b, j] * weights[t, cols[b, j]]`` and
    ``dweights[t, cols[b, j]] += dout[b, j] * table[ids[b, t], cols[b, j]]``, in order of
    (b, t, j); dout, cols ``[B, k]``, ids ``[B, T]``. B*T*k terms, nothing else is touched.
    """
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            r = ids[b, t]
            _scatter_scaled(dtable[r], weights[t], dout[b], cols[b])
            _scatter_scaled(dweights[t], table[r], dout[b], cols[b])


@njit(cache=True, parallel=True)
def _gather_weighted_sum_backward_parallel(dout, cols, table, weights, ids, dtable, dweights,
                                           n_parts):
    """:func:`_gather_weighted_sum_backward_serial` in two race-free parallel loops, with
    the same order of terms for every output element: dweights split by row t, dtable by
    blocks of rows."""
    for t in prange(ids.shape[1]):
        for b in range(ids.shape[0]):
            _scatter_scaled(dweights[t], table[ids[b, t]], dout[b], cols[b])
    for part in prange(n_parts):
        lo, hi = _owned_rows(dtable.shape[0], n_parts, part)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                r = ids[b, t]
                if lo <= r < hi:
                    _scatter_scaled(dtable[r], weights[t], dout[b], cols[b])


# ---------------------------------------------------------------------------------
# host side: checks, allocation, and the choice of serial or parallel
# ---------------------------------------------------------------------------------
def _as_ids(ids, what):
    """ids as a C-contiguous integer array; TypeError for a non-integer dtype."""
    ids = np.ascontiguousarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer array, got dtype {ids.dtype}")
    return ids


def _check_range(ids, n_rows, what):
    """ValueError naming the first id of ``ids`` outside ``[0, n_rows)``."""
    flat = ids.reshape(-1)
    bad = _first_out_of_range(flat, n_rows)
    if bad >= 0:
        raise ValueError(
            f"{what} out of range: {what}.flat[{bad}] = {flat[bad]}, valid ids are 0..{n_rows - 1}")


class NumbaCpuOps(NumbaCpuAttention, NumbaCpuRmsnorm, NumbaCpuStepTail):
    """The sparse hot path as Numba CPU kernels (see the module docstring).

    ``parallel_min_work``: elements of work (rows x features, or B*T*k terms) from
    which an operation runs its parallel loop; 0 always does, ``math.inf`` never does.
    Default: ``$BRAINLIKE_PARALLEL_MIN_WORK``, else never.
    """

    name = "numba"

    def reproducible(self):
        """These ops made to give the same bits on every run (serial and parallel already
        do, whatever the thread count)."""
        return self

    def __init__(self, parallel_min_work: float | None = None):
        if parallel_min_work is None:
            parallel_min_work = parallel_min_work_from_env()
        self.parallel_min_work = parallel_min_work

    def _parts(self, work):
        """Number of threads for ``work`` elements: 1 means run the serial loop."""
        threads = numba.get_num_threads()
        return threads if threads > 1 and work >= self.parallel_min_work else 1

    # ---- rows of a table ----------------------------------------------------------
    def gather_rows(self, table, ids):
        """``table[ids]``: table ``[R, *F]``, ids ``[*I]`` -> ``[*I, *F]``."""
        table = np.ascontiguousarray(table)
        ids = _as_ids(ids, "ids")
        flat_ids = ids.reshape(-1)                                        # [n]
        rows = table.reshape(table.shape[0], math.prod(table.shape[1:]))  # [R, F]
        _check_range(flat_ids, rows.shape[0], "ids")
        out = np.empty((flat_ids.shape[0], rows.shape[1]), dtype=table.dtype)  # [n, F]
        if self._parts(out.size) > 1:
            _gather_rows_parallel(rows, flat_ids, out)
        else:
            _gather_rows_serial(rows, flat_ids, out)
        return out.reshape(ids.shape + table.shape[1:])

    def scatter_add_rows(self, ids, rows, n_rows):
        """``out[ids[i]] += rows[i]``: ids ``[n]``, rows ``[n, F]`` -> out ``[n_rows, F]``.

        Ids may repeat; every contribution is summed, in order of i.
        """
        ids = _as_ids(ids, "ids")
        rows = np.ascontiguousarray(rows)
        if ids.shape != rows.shape[:1] or rows.ndim != 2:
            raise ValueError(f"ids [n] and rows [n, F] do not match: {ids.shape}, {rows.shape}")
        _check_range(ids, n_rows, "ids")
        out = np.zeros((n_rows, rows.shape[1]), dtype=rows.dtype)       # [n_rows, F]
        parts = self._parts(rows.size)
        if parts > 1:
            _scatter_add_rows_parallel(ids, rows, out, parts)
        else:
            _scatter_add_rows_serial(ids, rows, out)
        return out

    # ---- selection ------------------------------------------------------------------
    def topk(self, z, k):
        """Indices of the k largest entries of each row: z ``[B, N]`` -> ``[B, k]`` int64,
        by descending value, ties to the lower index, NaN first (as a stable argsort)."""
        z = np.ascontiguousarray(z)
        if not 0 <= k <= z.shape[1]:
            raise ValueError(f"k = {k} is outside 0..{z.shape[1]} (the row length)")
        out = np.empty((z.shape[0], k), dtype=np.int64)                  # [B, k]
        if self._parts(z.size) > 1:
            _topk_parallel(z, out)
        else:
            _topk_serial(z, out)
        return out

    # ---- gathered, position-weighted sums ------------------------------------------
    def gather_weighted_sum(self, table, ids, weights):
        """``out[b] = sum_t table[ids[b, t]] * weights[t]``: table ``[R, F]``, ids ``[B, T]``,
        weights ``[T', F]`` (T' >= T) -> out ``[B, F]``, without forming ``[B, T, F]``."""
        table, weights = np.ascontiguousarray(table), np.ascontiguousarray(weights)
        ids = _as_ids(ids, "ids")
        B, T = ids.shape
        check_weighted_sum_shapes(table, ids, weights)
        _check_range(ids, table.shape[0], "ids")
        out = np.empty((B, table.shape[1]), dtype=np.result_type(table, weights))  # [B, F]
        if self._parts(B * T * table.shape[1]) > 1:
            _gather_weighted_sum_parallel(table, weights, ids, out)
        else:
            _gather_weighted_sum_serial(table, weights, ids, out)
        return out

    def gather_weighted_sum_backward(self, dout, cols, table, ids, weights):
        """Gradients of ``gather_weighted_sum`` when only ``out[b, cols[b, j]]`` has a
        gradient, ``dout[b, j]``: dout, cols ``[B, k]`` -> (dtable ``[R, F]``, dweights
        ``[T', F]``); only ``B*T*k`` entries are touched, never ``B*T*F``."""
        table, weights, dout = (np.ascontiguousarray(a) for a in (table, weights, dout))
        cols, ids = _as_ids(cols, "cols"), _as_ids(ids, "ids")
        B, T = ids.shape
        check_weighted_sum_backward_shapes(dout, cols, table, ids, weights)
        _check_range(ids, table.shape[0], "ids")
        _check_range(cols, table.shape[1], "cols")
        dtable, dweights = np.zeros_like(table), np.zeros_like(weights)   # [R, F], [T', F]
        parts = self._parts(B * T * cols.shape[1])
        if parts > 1:
            _gather_weighted_sum_backward_parallel(dout, cols, table, weights, ids, dtable,
                                                   dweights, parts)
        else:
            _gather_weighted_sum_backward_serial(dout, cols, table, weights, ids, dtable,
                                                 dweights)
        return dtable, dweights


