"""Numba CUDA kernels for the sparse hot path: ``backend.ops`` of the cupy backend.

Same methods and semantics as :class:`~.reference.ReferenceOps`, on CuPy arrays,
which go to the kernels as they are (through ``__cuda_array_interface__``, no copy)
and run on CuPy's current stream (see :mod:`.cuda_target`).

Two layers:

- ``launch_*`` functions run one kernel on arrays the caller allocated. They take any
  array ``numba.cuda`` accepts, so the tests run them in the CUDA simulator on NumPy
  arrays; they never allocate or synchronise.
- :class:`NumbaCudaOps` checks inputs, allocates outputs with CuPy and launches.

Layout: row kernels give each row of the output a group of lanes that walk its
feature axis, so a warp reads consecutive features (coalesced); narrow rows pack
several rows into one warp. The encoder kernels use one thread per output element
(consecutive threads on consecutive neurons) or per backward term.

Scatter-adds use float32/float64 atomics by default: fast, but the order of the
additions, and so the last bits of the result, can change from run to run. With
``deterministic=True`` they sort the ids (stable) and sum each output row's
contributions in one thread, in order of the input: bitwise reproducible, and equal
to the serial CPU kernels' sums.
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace

from .cuda_target import cuda, current_stream
from .numba_cpu import check_encoder_backward_shapes, check_encoder_shapes

THREADS_PER_BLOCK = 256


# ---------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------
@cuda.jit(device=True)
def _lane_and_row():
    """This thread's lane along the feature axis and its row (2-D blocks: lanes x rows)."""
    return cuda.threadIdx.x, cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y


@cuda.jit
def _gather_rows_kernel(table, ids, out):
    """``out[i, f] = table[ids[i], f]``: table ``[R, F]``, ids ``[n]``, out ``[n, F]``."""
    lane, i = _lane_and_row()
    if i < out.shape[0]:
        src = ids[i]
        for f in range(lane, out.shape[1], cuda.blockDim.x):
            out[i, f] = table[src, f]


@cuda.jit
def _scatter_add_rows_kernel(ids, rows, out):
    """``out[ids[i], f] += rows[i, f]`` with atomics: ids ``[n]``, rows ``[n, F]``,
    out ``[R, F]`` zeroed by the caller."""
    lane, i = _lane_and_row()
    if i < rows.shape[0]:
        dst = ids[i]
        for f in range(lane, rows.shape[1], cuda.blockDim.x):
            cuda.atomic.add(out, (dst, f), rows[i, f])


@cuda.jit
def _segment_sum_rows_kernel(order, starts, rows, out):
    """``out[r, f] += sum of rows[order[p], f]`` for p in ``starts[r]:starts[r+1]``, in
    that order, one thread per output element: order ``[n]``, starts ``[R+1]``,
    rows ``[n, F]``, out ``[R, F]`` zeroed by the caller. No atomics."""
    lane, r = _lane_and_row()
    if r < out.shape[0]:
        for f in range(lane, out.shape[1], cuda.blockDim.x):
            acc = out[r, f]
            for p in range(starts[r], starts[r + 1]):
                acc += rows[order[p], f]
            out[r, f] = acc


@cuda.jit
def _encoder_accumulate_kernel(E, P, b_e, x, out):
    """``out[b, n] = b_e[n] + sum_t E[x[b, t], n] * P[t, n]``, a thread per (b, n):
    E ``[V, N]``, P ``[T', N]``, b_e ``[N]``, x ``[B, T]``, out ``[B, N]``."""
    i = cuda.grid(1)
    N = out.shape[1]
    b, n = i // N, i % N
    if b < out.shape[0]:
        acc = b_e[n]
        for t in range(x.shape[1]):
            acc += E[x[b, t], n] * P[t, n]
        out[b, n] = acc


@cuda.jit(device=True)
def _backward_term(i, x, idx):
    """Term i of the encoder backward, in order of (b, t, j): -> (b, t, j, v, n)."""
    T, k = x.shape[1], idx.shape[1]
    b, t, j = i // (T * k), (i // k) % T, i % k
    return b, t, j, x[b, t], idx[b, j]


@cuda.jit
def _encoder_backward_kernel(dz, idx, E, P, x, dE, dP):
    """With atomics, a thread per term (b, t, j) with v = x[b, t], n = idx[b, j]:
    ``dE[v, n] += dz[b, j] * P[t, n]`` and ``dP[t, n] += dz[b, j] * E[v, n]``.
    dz, idx ``[B, k]``, x ``[B, T]``; dE ``[V, N]``, dP ``[T', N]`` zeroed by the caller."""
    i = cuda.grid(1)
    if i < x.shape[0] * x.shape[1] * idx.shape[1]:
        b, t, j, v, n = _backward_term(i, x, idx)
        cuda.atomic.add(dE, (v, n), dz[b, j] * P[t, n])
        cuda.atomic.add(dP, (t, n), dz[b, j] * E[v, n])


@cuda.jit
def _encoder_backward_terms_kernel(dz, idx, E, P, x, keys_e, vals_e, keys_p, vals_p):
    """The terms of :func:`_encoder_backward_kernel` written out instead of added:
    term i goes to ``dE.flat[keys_e[i]]`` (value ``vals_e[i]``) and ``dP.flat[keys_p[i]]``
    (value ``vals_p[i]``); all four ``[B*T*k]``."""
    i = cuda.grid(1)
    if i < keys_e.shape[0]:
        b, t, j, v, n = _backward_term(i, x, idx)
        N = E.shape[1]
        keys_e[i] = v * N + n
        vals_e[i] = dz[b, j] * P[t, n]
        keys_p[i] = t * N + n
        vals_p[i] = dz[b, j] * E[v, n]


# ---------------------------------------------------------------------------------
# launch helpers: any arrays numba.cuda accepts, outputs allocated by the caller
# ---------------------------------------------------------------------------------
def _launch_rows(kernel, n_rows, width, stream, *args):
    """Launch a row kernel over ``n_rows`` rows of ``width`` features."""
    if n_rows == 0 or width == 0:
        return
    lanes = min(32, 1 << (width - 1).bit_length())          # a power of two >= width
    rows_per_block = THREADS_PER_BLOCK // lanes
    blocks = math.ceil(n_rows / rows_per_block)
    kernel[blocks, (lanes, rows_per_block), stream](*args)


def _launch_flat(kernel, n_threads, stream, *args):
    """Launch a kernel with one thread per item, ``n_threads`` items."""
    if n_threads == 0:
        return
    kernel[math.ceil(n_threads / THREADS_PER_BLOCK), THREADS_PER_BLOCK, stream](*args)


def launch_gather_rows(table, ids, out, stream=0):
    """``out[i] = table[ids[i]]``: table ``[R, F]``, ids ``[n]``, out ``[n, F]``."""
    _launch_rows(_gather_rows_kernel, out.shape[0], out.shape[1], stream, table, ids, out)


def launch_scatter_add_rows(ids, rows, out, stream=0):
    """``out[ids[i]] += rows[i]`` with atomics: ids ``[n]``, rows ``[n, F]``, out ``[R, F]``."""
    _launch_rows(_scatter_add_rows_kernel, rows.shape[0], rows.shape[1], stream, ids, rows, out)


def launch_segment_sum_rows(order, starts, rows, out, stream=0):
    """Deterministic scatter-add: ``out[r] += rows[order[starts[r]:starts[r+1]]].sum(0)``
    summed in that order; order and starts from :func:`segment_bounds`."""
    _launch_rows(_segment_sum_rows_kernel, out.shape[0], out.shape[1], stream,
                 order, starts, rows, out)


def launch_encoder_accumulate(E, P, b_e, x, out, stream=0):
    """``out[b] = b_e + sum_t E[x[b, t]] * P[t]``: out ``[B, N]``."""
    _launch_flat(_encoder_accumulate_kernel, out.shape[0] * out.shape[1], stream,
                 E, P, b_e, x, out)


def launch_encoder_backward(dz, idx, E, P, x, dE, dP, stream=0):
    """Add the encoder gradients at neurons idx into zeroed dE ``[V, N]``, dP ``[T', N]``
    with atomics: B*T*k threads."""
    n_terms = x.shape[0] * x.shape[1] * idx.shape[1]
    _launch_flat(_encoder_backward_kernel, n_terms, stream, dz, idx, E, P, x, dE, dP)


def launch_encoder_backward_terms(dz, idx, E, P, x, keys_e, vals_e, keys_p, vals_p, stream=0):
    """Write the B*T*k encoder backward terms as (flat index, value) pairs for dE and dP."""
    _launch_flat(_encoder_backward_terms_kernel, keys_e.shape[0], stream,
                 dz, idx, E, P, x, keys_e, vals_e, keys_p, vals_p)


def segment_bounds(xp, ids, n_rows):
    """(order ``[n]``, starts ``[n_rows+1]``): ids ``[n]`` sorted stably, the positions
    with id r being ``order[starts[r]:starts[r+1]]``; xp is the arrays' namespace."""
    order = xp.argsort(ids, stable=True)
    all_ids = xp.arange(n_rows + 1, dtype=ids.dtype)
    return order, xp.searchsorted(xp.take(ids, order), all_ids, side="left")


# ---------------------------------------------------------------------------------
# the ops object
# ---------------------------------------------------------------------------------
class NumbaCudaOps:
    """The sparse hot path as Numba CUDA kernels on CuPy arrays (see the module docstring).

    ``deterministic``: sort-based scatter-adds instead of atomics (bitwise reproducible).
    ``check_ids``: raise ValueError for ids out of range; each check reads the ids'
    min and max back to the host, a wait for the device; False skips it.
    ``array_module``: the module that allocates the outputs, CuPy by default (NumPy
    under the CUDA simulator, for tests).
    """

    name = "numba-cuda"

    def __init__(self, deterministic: bool = False, check_ids: bool = True,
                 array_module=None):
        if array_module is None:
            import cupy as array_module
        self.deterministic = deterministic
        self.check_ids = check_ids
        self._cp = array_module                          # cupy (numpy under the simulator)
        self.xp = array_namespace(array_module.empty(0))

    # ---- helpers --------------------------------------------------------------------
    def _contiguous(self, *arrays):
        return tuple(self._cp.ascontiguousarray(a) for a in arrays)

    def _check_range(self, ids, n_rows, what):
        if not self.check_ids or ids.size == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n_rows:
            raise ValueError(
                f"{what} out of range: found {lo}..{hi}, valid ids are 0..{n_rows - 1}")

    def _scatter_add(self, ids, rows, n_rows, stream):
        """Scatter-add of rows ``[n, F]`` at ids ``[n]`` into a new ``[n_rows, F]``."""
        out = self._cp.zeros((n_rows, rows.shape[1]), dtype=rows.dtype)
        if self.deterministic:
            order, starts = segment_bounds(self.xp, ids, n_rows)
            launch_segment_sum_rows(order, starts, rows, out, stream)
        else:
            launch_scatter_add_rows(ids, rows, out, stream)
        return out

    # ---- rows of a table ----------------------------------------------------------
    def gather_rows(self, table, ids):
        """``table[ids]``: table ``[R, *F]``, ids ``[*I]`` -> ``[*I, *F]``."""
        table, ids = self._contiguous(table, ids)
        flat_ids = ids.reshape(-1)                                       # [n]
        rows = table.reshape(table.shape[0], math.prod(table.shape[1:]))  # [R, F]
        self._check_range(flat_ids, rows.shape[0], "ids")
        out = self._cp.empty((flat_ids.shape[0], rows.shape[1]), dtype=table.dtype)
        launch_gather_rows(rows, flat_ids, out, current_stream())
        return out.reshape(ids.shape + table.shape[1:])

    def scatter_add_rows(self, ids, rows, n_rows):
        """``out[ids[i]] += rows[i]``: ids ``[n]``, rows ``[n, F]`` -> out ``[n_rows, F]``."""
        ids, rows = self._contiguous(ids, rows)
        if rows.ndim != 2 or ids.shape != rows.shape[:1]:
            raise ValueError(f"ids [n] and rows [n, F] do not match: {ids.shape}, {rows.shape}")
        self._check_range(ids, n_rows, "ids")
        return self._scatter_add(ids, rows, n_rows, current_stream())

    # ---- selection ------------------------------------------------------------------
    def topk(self, z, k):
        """Indices of the k largest entries of each row: z ``[B, N]`` -> ``[B, k]``, by
        descending value, ties to the lower index (CuPy's stable sort, no kernel)."""
        if not 0 <= k <= z.shape[1]:
            raise ValueError(f"k = {k} is outside 0..{z.shape[1]} (the row length)")
        return self.xp.argsort(z, axis=-1, descending=True, stable=True)[:, :k]

    # ---- the encoder ----------------------------------------------------------------
    def encoder_accumulate(self, E, P, b_e, x):
        """``z[b] = b_e + sum_t E[x[b, t]] * P[t]``: E ``[V, N]``, P ``[T', N]``,
        b_e ``[N]``, x ``[B, T]`` -> z ``[B, N]``."""
        E, P, b_e, x = self._contiguous(E, P, b_e, x)
        check_encoder_shapes(E, P, x.shape[1])
        self._check_range(x, E.shape[0], "x")
        dtype = self._cp.result_type(E, P, b_e)
        out = self._cp.empty((x.shape[0], E.shape[1]), dtype=dtype)   # [B, N]
        launch_encoder_accumulate(E, P, b_e, x, out, current_stream())
        return out

    def encoder_backward(self, dz, idx, E, P, x):
        """Gradients of ``encoder_accumulate`` when only ``dz[b, idx[b, j]]`` is nonzero:
        dz ``[B, k]`` at neurons idx ``[B, k]`` -> (dE ``[V, N]``, dP ``[T', N]``)."""
        dz, idx, E, P, x = self._contiguous(dz, idx, E, P, x)
        B, T = x.shape
        check_encoder_backward_shapes(dz, idx, E, P, x)
        self._check_range(x, E.shape[0], "x")
        self._check_range(idx, E.shape[1], "idx")
        stream = current_stream()
        if not self.deterministic:
            dE, dP = self._cp.zeros_like(E), self._cp.zeros_like(P)
            launch_encoder_backward(dz, idx, E, P, x, dE, dP, stream)
            return dE, dP
        n_terms = B * T * idx.shape[1]
        keys_e, keys_p = (self._cp.empty(n_terms, dtype=self._cp.int64) for _ in range(2))
        vals_e, vals_p = self._cp.empty(n_terms, E.dtype), self._cp.empty(n_terms, P.dtype)
        launch_encoder_backward_terms(dz, idx, E, P, x, keys_e, vals_e, keys_p, vals_p, stream)
        dE = self._scatter_add(keys_e, vals_e[:, None], E.size, stream)
        dP = self._scatter_add(keys_p, vals_p[:, None], P.size, stream)
        return dE.reshape(E.shape), dP.reshape(P.shape)
