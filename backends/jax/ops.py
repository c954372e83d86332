"""JAX's native operations for the sparse hot path: ``backend.ops`` of the jax backend.

Same methods and semantics as :class:`~..reference.ReferenceOps` (read its docstrings
for the conventions), on ``jax.numpy`` arrays; where JAX has an operation that does the
job in one pass, it replaces the reference's array-API composition:

- ``scatter_add_rows``: ``zeros.at[ids].add(rows)``, one XLA scatter, instead of the
  reference's sort, running sum and two searches;
- ``topk``: ``lax.top_k``, a partial selection instead of a full stable sort. It keeps
  the reference's order: descending value, ties by the lower index, NaN first.

The gathers are the reference's ``take`` already (one XLA gather). Unlike the Numba
kernels, nothing here checks that ids are in range: that would read them back to the
host, which a compiled step cannot do (XLA clamps a gather's ids and drops a
scatter's out-of-range rows).
"""

from __future__ import annotations

from array_api_compat import device as device_of
from jax import lax

from ..reference import ReferenceOps


class JaxOps(ReferenceOps):
    name = "jax"

    def scatter_add_rows(self, ids, rows, n_rows):
        """``out[ids[i]] += rows[i]``: ids ``[n]``, rows ``[n, F]`` -> out ``[n_rows, F]``."""
        xp = self.xp
        out = xp.zeros((n_rows, rows.shape[1]), dtype=rows.dtype,
                       device=device_of(rows))                  # [n_rows, F]
        return out.at[ids].add(rows)

    def topk(self, z, k):
        """Indices of the k largest entries of each row: z ``[B, N]`` -> ``[B, k]`` int64
        (the reference's dtype)."""
        if not 0 <= k <= z.shape[-1]:
            raise ValueError(f"k must be in [0, {z.shape[-1]}] (the row's length), got {k}")
        _values, indices = lax.top_k(z, k)                          # [B, k] int32
        return self.xp.astype(indices, self.xp.int64)
