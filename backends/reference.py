"""The sparse hot path as portable array-API code: the reference every kernel is tested
against, and the implementation used on namespaces without kernels (array-api-strict).

The array API has no scatter-add, so ``scatter_add_rows`` is a segment sum: sort the
ids, take a running sum of the rows in that order, and difference it at each id's
segment bounds (found with ``searchsorted``). The running sum is kept in float64, so
the differences stay exact to float32 precision. It is deterministic.

Index conventions shared by every implementation (reference, Numba CPU, Numba CUDA):
- ids are integer arrays (int32 or int64), in range; results do not depend on their width;
- ``topk`` returns, per row, the indices of the k largest values ordered by descending
  value, ties broken by the lower index (a stable descending sort).
"""

from __future__ import annotations

from array_api_compat import device as device_of


class ReferenceOps:
    name = "reference"

    def __init__(self, xp):
        self.xp = xp

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

    # ---- the encoder ----------------------------------------------------------------
    def encoder_accumulate(self, E, P, b_e, x):
        """``z[b] = b_e + sum_t E[x[b, t]] * P[t]``: E ``[V, N]``, P ``[T, N]``, x ``[B, T]``."""
        xp = self.xp
        rows = self.gather_rows(E, x)                          # [B, T, N]
        return b_e + xp.sum(rows * P[: x.shape[1], :], axis=1)  # [B, N]

    def encoder_backward(self, dz, idx, E, P, x):
        """Gradients of ``encoder_accumulate`` when only ``dz[b, idx[b, j]]`` is nonzero.

        dz ``[B, k]`` at neurons idx ``[B, k]`` -> (dE ``[V, N]``, dP ``[T, N]``); only
        ``B*T*k`` entries are touched, never ``B*T*N``.
        """
        xp = self.xp
        V, N = E.shape
        B, T = x.shape
        k = idx.shape[1]
        idx = xp.astype(idx, xp.int64)
        x = xp.astype(x, xp.int64)
        ids_e = x[:, :, None] * N + idx[:, None, :]                     # [B, T, k] into E.flat
        ids_p = (xp.arange(T, dtype=xp.int64, device=device_of(x))[None, :, None] * N
                 + idx[:, None, :])                                     # [B, T, k] into P.flat
        E_at = self.gather_rows(xp.reshape(E, (V * N, 1)), ids_e)[..., 0]   # [B, T, k]
        P_at = self.gather_rows(xp.reshape(P, (-1, 1)), ids_p)[..., 0]      # [B, T, k]
        dz_t = dz[:, None, :]                                           # [B, 1, k]
        n = B * T * k
        dE = self.scatter_add_rows(xp.reshape(ids_e, (n,)),
                                   xp.reshape(dz_t * P_at, (n, 1)), V * N)
        dP = self.scatter_add_rows(xp.reshape(ids_p, (n,)),       # rows past T stay zero
                                   xp.reshape(dz_t * E_at, (n, 1)), P.shape[0] * N)
        return xp.reshape(dE, (V, N)), xp.reshape(dP, P.shape)
