"""Numba CUDA kernels for the sparse hot path: ``backend.ops`` of the cupy backend.

Same methods and semantics as :class:`~..reference.ReferenceOps`, on CuPy arrays,
which go to the kernels as they are (through ``__dlpack__``, no copy) and run on
CuPy's current stream (see :mod:`.target`). Nothing here reads from the device:
ids are not range-checked (a check would wait for the device on every call); the
batches are checked on the host when they are built, and top-k ids are in range by
construction.

Two layers:

- ``launch_*`` functions run one kernel on arrays the caller allocated. They take any
  array ``numba.cuda`` accepts, so the tests run them in the CUDA simulator on NumPy
  arrays; they never allocate or synchronise.
- :class:`NumbaCudaOps` checks inputs, allocates outputs with CuPy and launches.

Layout: row kernels give each row of the output a group of lanes that walk its
feature axis, so a warp reads consecutive features (coalesced); narrow rows pack
several rows into one warp. The weighted-sum kernels use one thread per output element
(consecutive threads on consecutive features) or per backward term.

Compiled kernels are cached on disk (``cache=True``, one entry per signature and GPU
architecture), so a new process does not compile them again.

Scatter-adds use float32/float64 atomics by default: fast, but the order of the
additions, and so the last bits of the result, can change from run to run. With
``deterministic=True`` they sort the ids (stable) and sum each output row's
contributions in one thread, in order of the input: bitwise reproducible, and equal
to the serial CPU kernels' sums.
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace

from ..errors import KernelsUnavailable
from ..reference.ops import check_weighted_sum_backward_shapes, check_weighted_sum_shapes
from .attention import NumbaCudaAttention
from .rmsnorm import NumbaCudaRmsnorm
from .step_tail import NumbaCudaStepTail
from .target import THREADS_PER_BLOCK, cuda, current_stream, launch_flat


# ---------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------
@cuda.jit(device=True)
def _lane_and_row():
    """This thread's lane along the feature axis and its row (2-D blocks: lanes x rows)."""
    return cuda.threadIdx.x, cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y


@cuda.jit(cache=True)
def _gather_rows_kernel(table, ids, out):
    """``out[i, f] = table[ids[i], f]``: table ``[R, F]``, ids ``[n]``, out ``[n, F]``."""
    lane, i = _lane_and_row()
    if i < out.shape[0]:
        src = ids[i]
        for f in range(lane, out.shape[1], cuda.blockDim.x):
            out[i, f] = table[src, f]


@cuda.jit(cache=True)
def _scatter_add_rows_kernel(ids, rows, out):
    """``out[ids[i], f] += rows[i, f]`` with atomics: ids ``[n]``, rows ``[n, F]``,
    out ``[R, F]`` zeroed by the caller."""
    lane, i = _lane_and_row()
    if i < rows.shape[0]:
        dst = ids[i]
        for f in range(lane, rows.shape[1], cuda.blockDim.x):
            cuda.atomic.add(out, (dst, f), rows[i, f])


@cuda.jit(cache=True)
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


@cuda.jit(cache=True)
def _gather_weighted_sum_kernel(table, weights, ids, out):
    """``out[b, f] += sum_t table[ids[b, t], f] * weights[t, f]``, a thread per (b, f):
    table ``[R, F]``, weights ``[T', F]``, ids ``[B, T]``, out ``[B, F]`` zeroed by the caller."""
    i = cuda.grid(1)
    F = out.shape[1]
    b, f = i // F, i % F
    if b < out.shape[0]:
        acc = out[b, f]
        for t in range(ids.shape[1]):
            acc += table[ids[b, t], f] * weights[t, f]
        out[b, f] = acc


@cuda.jit(device=True)
def _backward_term(i, ids, cols):
    """Term i of the weighted-sum backward, in order of (b, t, j): -> (b, t, j, r, f)."""
    T, k = ids.shape[1], cols.shape[1]
    b, t, j = i // (T * k), (i // k) % T, i % k
    return b, t, j, ids[b, t], cols[b, j]


@cuda.jit(cache=True)
def _gather_weighted_sum_backward_kernel(dout, cols, table, weights, ids, dtable, dweights):
    """With atomics, a thread per term (b, t, j) with r = ids[b, t], f = cols[b, j]:
    ``dtable[r, f] += dout[b, j] * weights[t, f]`` and ``dweights[t, f] += dout[b, j] *
    table[r, f]``. dout, cols ``[B, k]``, ids ``[B, T]``; dtable ``[R, F]``, dweights
    ``[T', F]`` zeroed by the caller."""
    i = cuda.grid(1)
    if i < ids.shape[0] * ids.shape[1] * cols.shape[1]:
        b, t, j, r, f = _backward_term(i, ids, cols)
        cuda.atomic.add(dtable, (r, f), dout[b, j] * weights[t, f])
        cuda.atomic.add(dweights, (t, f), dout[b, j] * table[r, f])


@cuda.jit(cache=True)
def _gather_weighted_sum_backward_terms_kernel(dout, cols, table, weights, ids,
                                               keys_t, vals_t, keys_w, vals_w):
    """The terms of :func:`_gather_weighted_sum_backward_kernel` written out instead of
    added: term i goes to ``dtable.flat[keys_t[i]]`` (value ``vals_t[i]``) and
    ``dweights.flat[keys_w[i]]`` (value ``vals_w[i]``); all four ``[B*T*k]``."""
    i = cuda.grid(1)
    if i < keys_t.shape[0]:
        b, t, j, r, f = _backward_term(i, ids, cols)
        F = table.shape[1]
        keys_t[i] = r * F + f
        vals_t[i] = dout[b, j] * weights[t, f]
        keys_w[i] = t * F + f
        vals_w[i] = dout[b, j] * table[r, f]


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


def launch_gather_weighted_sum(table, weights, ids, out, stream=0):
    """``out[b] += sum_t table[ids[b, t]] * weights[t]``: out ``[B, F]`` zeroed by the caller."""
    launch_flat(_gather_weighted_sum_kernel, out.shape[0] * out.shape[1], stream,
                table, weights, ids, out)


def launch_gather_weighted_sum_backward(dout, cols, table, weights, ids, dtable, dweights,
                                        stream=0):
    """Add the weighted-sum gradients at columns cols into zeroed dtable ``[R, F]``,
    dweights ``[T', F]`` with atomics: B*T*k threads."""
    n_terms = ids.shape[0] * ids.shape[1] * cols.shape[1]
    launch_flat(_gather_weighted_sum_backward_kernel, n_terms, stream,
                dout, cols, table, weights, ids, dtable, dweights)


def launch_gather_weighted_sum_backward_terms(dout, cols, table, weights, ids,
                                              keys_t, vals_t, keys_w, vals_w, stream=0):
    """Write the B*T*k backward terms as (flat index, value) pairs for dtable and dweights."""
    launch_flat(_gather_weighted_sum_backward_terms_kernel, keys_t.shape[0], stream,
                dout, cols, table, weights, ids, keys_t, vals_t, keys_w, vals_w)


def segment_bounds(xp, ids, n_rows):
    """(order ``[n]``, starts ``[n_rows+1]``): ids ``[n]`` sorted stably, the positions
    with id r being ``order[starts[r]:starts[r+1]]``; xp is the arrays' namespace."""
    order = xp.argsort(ids, stable=True)
    all_ids = xp.arange(n_rows + 1, dtype=ids.dtype)
    return order, xp.searchsorted(xp.take(ids, order), all_ids, side="left")


# ---------------------------------------------------------------------------------
# the ops object
# ---------------------------------------------------------------------------------
class NumbaCudaOps(NumbaCudaAttention, NumbaCudaRmsnorm, NumbaCudaStepTail):
    """The sparse hot path as Numba CUDA kernels on CuPy arrays (see the module docstring).

    ``deterministic``: sort-based scatter-adds instead of atomics (bitwise reproducible).
    ``array_module``: the module that allocates the outputs, CuPy by default (NumPy
    under the CUDA simulator, for tests).

    Creating one compiles and runs one small kernel, so kernels this machine cannot load
    (a driver older than the toolkit) fail here, with KernelsUnavailable.
    """

    name = "numba-cuda"

    def __init__(self, deterministic: bool = False, array_module=None):
        if array_module is None:
            import cupy as array_module
        self.deterministic = deterministic
        self._cp = array_module                          # cupy (numpy under the simulator)
        self.xp = array_namespace(array_module.empty(0))
        self._check_kernels_load()

    def reproducible(self):
        """These ops made to give the same bits on every run: sort-based scatter-adds."""
        return self if self.deterministic else NumbaCudaOps(True, self._cp)

    # ---- helpers --------------------------------------------------------------------
    def _contiguous(self, *arrays):
        return tuple(self._cp.ascontiguousarray(a) for a in arrays)

    def _check_kernels_load(self):
        """Run one gather of a single row; KernelsUnavailable naming the driver and the
        toolkit when the kernel cannot be compiled or loaded."""
        try:
            self.gather_rows(self._cp.zeros((1, 1), dtype="float32"),
                             self._cp.zeros(1, dtype="int64"))
        except Exception as exc:
            reason = " ".join(str(exc).split())
            raise KernelsUnavailable(
                f"a Numba CUDA kernel failed to load ({type(exc).__name__}: {reason}); "
                f"{_cuda_versions(self._cp)}: a driver older than the toolkit rejects its "
                "code, so update the NVIDIA driver (CUDA 13 needs driver >= 580) or install "
                "the extra of the driver's CUDA major version (pip install -e '.[cuda12]' "
                "includes nvJitLink, which links for older 12.x drivers)") from None

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
        out = self._cp.empty((flat_ids.shape[0], rows.shape[1]), dtype=table.dtype)
        launch_gather_rows(rows, flat_ids, out, current_stream())
        return out.reshape(ids.shape + table.shape[1:])

    def scatter_add_rows(self, ids, rows, n_rows):
        """``out[ids[i]] += rows[i]``: ids ``[n]``, rows ``[n, F]`` -> out ``[n_rows, F]``."""
        ids, rows = self._contiguous(ids, rows)
        if rows.ndim != 2 or ids.shape != rows.shape[:1]:
            raise ValueError(f"ids [n] and rows [n, F] do not match: {ids.shape}, {rows.shape}")
        return self._scatter_add(ids, rows, n_rows, current_stream())

    # ---- selection ------------------------------------------------------------------
    def topk(self, z, k):
        """Indices of the k largest entries of each row: z ``[B, N]`` -> ``[B, k]``, by
        descending value, ties to the lower index (CuPy's stable sort, no kernel)."""
        if not 0 <= k <= z.shape[1]:
            raise ValueError(f"k = {k} is outside 0..{z.shape[1]} (the row length)")
        return self.xp.argsort(z, axis=-1, descending=True, stable=True)[:, :k]

    # ---- gathered, position-weighted sums ------------------------------------------
    def gather_weighted_sum(self, table, ids, weights):
        """``out[b] = sum_t table[ids[b, t]] * weights[t]``: table ``[R, F]``, ids ``[B, T]``,
        weights ``[T', F]`` (T' >= T) -> out ``[B, F]``."""
        table, ids, weights = self._contiguous(table, ids, weights)
        check_weighted_sum_shapes(table, ids, weights)
        dtype = self._cp.result_type(table, weights)
        out = self._cp.zeros((ids.shape[0], table.shape[1]), dtype=dtype)   # [B, F]
        launch_gather_weighted_sum(table, weights, ids, out, current_stream())
        return out

    def gather_weighted_sum_backward(self, dout, cols, table, ids, weights):
        """Gradients of ``gather_weighted_sum`` when only ``out[b, cols[b, j]]`` has a
        gradient, ``dout[b, j]``: dout, cols ``[B, k]`` -> (dtable ``[R, F]``, dweights
        ``[T', F]``)."""
        dout, cols, table, ids, weights = self._contiguous(dout, cols, table, ids, weights)
        check_weighted_sum_backward_shapes(dout, cols, table, ids, weights)
        stream = current_stream()
        if not self.deterministic:
            dtable, dweights = self._cp.zeros_like(table), self._cp.zeros_like(weights)
            launch_gather_weighted_sum_backward(dout, cols, table, weights, ids, dtable,
                                                dweights, stream)
            return dtable, dweights
        n_terms = ids.shape[0] * ids.shape[1] * cols.shape[1]
        keys_t, keys_w = (self._cp.empty(n_terms, dtype=self._cp.int64) for _ in range(2))
        vals_t = self._cp.empty(n_terms, table.dtype)
        vals_w = self._cp.empty(n_terms, weights.dtype)
        launch_gather_weighted_sum_backward_terms(dout, cols, table, weights, ids,
                                                  keys_t, vals_t, keys_w, vals_w, stream)
        # reshape, not [:, None]: a new axis may get stride 0, which Numba types as a
        # non-contiguous array (another kernel signature than the C-contiguous one)
        dtable = self._scatter_add(keys_t, vals_t.reshape(-1, 1), table.size, stream)
        dweights = self._scatter_add(keys_w, vals_w.reshape(-1, 1), weights.size, stream)
        return dtable.reshape(table.shape), dweights.reshape(weights.shape)


def _cuda_versions(array_module) -> str:
    """'the NVIDIA driver supports CUDA a.b, the CUDA runtime is c.d', from CuPy's
    runtime ('unknown' for what cannot be read)."""
    def version(name):
        try:
            v = getattr(array_module.cuda.runtime, name)()
        except Exception:          # no driver, or not CuPy (the simulator)
            return "unknown"
        return f"{v // 1000}.{v % 1000 // 10}"
    return (f"the NVIDIA driver supports CUDA {version('driverGetVersion')}, "
            f"the CUDA runtime is {version('runtimeGetVersion')}")
