"""The sparse hot path as portable array-API code: the reference every kernel is tested
against, and the implementation used on namespaces without kernels (array-api-strict).

The array API has no scatter-add, so ``scatter_add_rows`` is a segment sum: sort the
ids, take a running sum of the rows in that order, and difference it at each id's
segment bounds (found with ``searchsorted``). The running sum is kept in float64, so
the differences stay exact to float32 precision. It is deterministic.

Every implementation (reference, Numba CPU, Numba CUDA) offers the same operations,
named by what they do to arrays: ``gather_rows``, ``scatter_add_rows``, ``topk``, and
``gather_weighted_sum`` (``out[b] = sum_t table[ids[b, t]] * weights[t]``, rows of a
table gathered and summed with per-position weights) with its sparse backward
``gather_weighted_sum_backward``; and the fused ops of the training step, each defined
in its own module by its array-API version (mixed in here) with its kernels beside it:
attention within a set (``attention_forward``/``attention_backward``,
:mod:`.attention`), RMSNorm (``rmsnorm_forward``/``rmsnorm_backward``,
:mod:`.rmsnorm`) and the interaction step's tail
(``step_tail_forward``/``step_tail_backward``, :mod:`.step_tail`).
Conventions they share:
- ids are integer arrays (int32 or int64), in range; results do not depend on their width;
- ``topk`` returns, per row, the indices of the k largest values ordered by descending
  value, ties broken by the lower index (a stable descending sort).
"""

from __future__ import annotations

from array_api_compat import device as device_of

from .attention import ReferenceAttention
from .rmsnorm import ReferenceRmsnorm
from .step_tail import ReferenceStepTail


class ReferenceOps(ReferenceAttention, ReferenceRmsnorm, ReferenceStepTail):
    name = "reference"

    def __init__(self, xp):
        self.xp = xp

    def reproducible(self):
        """These ops made to give the same bits on every run (the reference always does)."""
        return self

    # ---- rows of a table ----------------------------------------------------------
    def gather_rows(self, table, ids):
        """``table[ids]``: table ``[R, *F]``, ids ``[*I]`` -> ``[*I, *F]``."""
        xp = self.xp
        flat = xp.reshape(ids, (-1,))
        out = xp.take(table, flat, axis=0)                    # [n, *F]
        return xp.reshape(out, tuple(ids.shape) + tuple(table.shape[1:]))

    def scatter_add_rows(self, ids, rows, n_rows):
        """``out[ids[i]] += rows[i]``: ids ``[n]``, rows ``[n, F]`` -> out ``[n_rows, F]``.

        Ids may repeat; every contribution is summed.
        """
        xp = self.xp
        n, width = rows.shape
        if n == 0:
            return xp.zeros((n_rows, width), dtype=rows.dtype, device=device_of(rows))
        wide = xp.float64 if rows.dtype == xp.float32 else rows.dtype
        order = xp.argsort(ids, stable=True)                              # [n]
        sorted_ids = xp.take(ids, order)                                   # [n]
        sorted_rows = xp.astype(xp.take(rows, order, axis=0), wide)       # [n, F]
        running = xp.cumulative_sum(sorted_rows, axis=0, include_initial=True)  # [n+1, F]
        all_ids = xp.arange(n_rows, dtype=ids.dtype, device=device_of(ids))
        lo = xp.searchsorted(sorted_ids, all_ids, side="left")            # [n_rows]
        hi = xp.searchsorted(sorted_ids, all_ids, side="right")           # [n_rows]
        out = xp.take(running, hi, axis=0) - xp.take(running, lo, axis=0)
        return xp.astype(out, rows.dtype)

    # ---- selection ------------------------------------------------------------------
    def topk(self, z, k):
        """Indices of the k largest entries of each row: z ``[B, N]`` -> ``[B, k]``."""
        order = self.xp.argsort(z, axis=-1, descending=True, stable=True)  # [B, N]
        return order[:, :k]

    # ---- gathered, position-weighted sums ------------------------------------------
    def gather_weighted_sum(self, table, ids, weights):
        """``out[b] = sum_t table[ids[b, t]] * weights[t]``: table ``[R, F]``, ids ``[B, T]``,
        weights ``[T', F]`` (T' >= T) -> out ``[B, F]``."""
        check_weighted_sum_shapes(table, ids, weights)
        rows = self.gather_rows(table, ids)                             # [B, T, F]
        return self.xp.sum(rows * weights[: ids.shape[1], :], axis=1)  # [B, F]

    def gather_weighted_sum_backward(self, dout, cols, table, ids, weights):
        """Gradients of ``gather_weighted_sum`` when only ``out[b, cols[b, j]]`` has a
        gradient, ``dout[b, j]``: dout, cols ``[B, k]`` -> (dtable ``[R, F]``, dweights
        ``[T', F]``); only ``B*T*k`` entries are touched, never ``B*T*F``.
        """
        xp = self.xp
        check_weighted_sum_backward_shapes(dout, cols, table, ids, weights)
        R, F = table.shape
        B, T = ids.shape
        T_max, k = weights.shape[0], cols.shape[1]
        cols = xp.astype(cols, xp.int64)
        ids = xp.astype(ids, xp.int64)
        at_table = ids[:, :, None] * F + cols[:, None, :]                 # [B, T, k] into table.flat
        at_weights = (xp.arange(T, dtype=xp.int64, device=device_of(ids))[None, :, None] * F
                      + cols[:, None, :])                                 # [B, T, k] into weights.flat
        table_at = self.gather_rows(xp.reshape(table, (R * F, 1)), at_table)[..., 0]      # [B, T, k]
        weights_at = self.gather_rows(xp.reshape(weights, (-1, 1)), at_weights)[..., 0]  # [B, T, k]
        dout_t = dout[:, None, :]                                        # [B, 1, k]
        n = B * T * k
        dtable = self.scatter_add_rows(xp.reshape(at_table, (n,)),
                                       xp.reshape(dout_t * weights_at, (n, 1)), R * F)
        dweights = self.scatter_add_rows(xp.reshape(at_weights, (n,)),  # rows past T stay zero
                                         xp.reshape(dout_t * table_at, (n, 1)), T_max * F)
        return xp.reshape(dtable, (R, F)), xp.reshape(dweights, weights.shape)


def check_weighted_sum_shapes(table, ids, weights):
    """ValueError unless table ``[R, F]``, ids ``[B, T]`` and weights ``[T', F]`` agree and
    T' covers the T positions."""
    if table.ndim != 2 or weights.ndim != 2 or table.shape[1] != weights.shape[1]:
        raise ValueError(f"table [R, F] and weights [T, F] do not match: "
                         f"{tuple(table.shape)}, {tuple(weights.shape)}")
    if ids.ndim != 2 or ids.shape[1] > weights.shape[0]:
        raise ValueError(f"ids must be [B, T] with T <= {weights.shape[0]} (the rows of "
                         f"weights), got {tuple(ids.shape)}")


def check_weighted_sum_backward_shapes(dout, cols, table, ids, weights):
    """ValueError unless the forward's shapes agree and dout, cols are both ``[B, k]``."""
    check_weighted_sum_shapes(table, ids, weights)
    if tuple(dout.shape) != tuple(cols.shape) or cols.shape[0] != ids.shape[0]:
        raise ValueError(f"dout and cols must both be [B={ids.shape[0]}, k]: "
                         f"{tuple(dout.shape)}, {tuple(cols.shape)}")
