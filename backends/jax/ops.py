"""JAX's native operations for the sparse hot path: ``backend.ops`` of the jax backend.

Same methods and semantics as :class:`~..reference.ReferenceOps` (read its docstrings
for the conventions), on ``jax.numpy`` arrays; where JAX has an operation that does the
job in one pass, it replaces the reference's array-API composition:

- ``scatter_add_rows``: ``zeros.at[ids].add(rows)``, one XLA scatter, instead of the
  reference's sort, running sum and two searches; it sums in the rows' dtype (float32
  stays float32, as in the Numba kernels);
- ``topk`` in float32: ``lax.top_k``, a partial selection instead of a full stable sort.
  On its own it does not keep the reference's order of ties (descending value, ties by
  the lower index, NaN first): on the CPU (jax 0.10) tied values come out of order once
  k exceeds about 10. So it selects on unique int64 keys, the value's bits made
  order-preserving in the high half and the reversed index in the low half. float64
  values leave no room for the index: they take the reference's stable sort.

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
        xp = self.xp
        if not 0 <= k <= z.shape[-1]:
            raise ValueError(f"k must be in [0, {z.shape[-1]}] (the row's length), got {k}")
        if z.dtype != xp.float32:
            return super().topk(z, k)
        _keys, indices = lax.top_k(_unique_keys(xp, z), k)           # [B, k] int32
        return xp.astype(indices, xp.int64)


def _unique_keys(xp, z):
    """float32 z ``[B, N]`` -> int64 keys ``[B, N]``, all different within a row, ordered
    as the reference orders z: by value (-0.0 equal to 0.0, every NaN above +inf), then
    the lower index first."""
    n = z.shape[-1]
    z = xp.where(xp.isnan(z), xp.nan, z + 0.0)                   # one NaN; -0.0 -> +0.0
    bits = xp.astype(lax.bitcast_convert_type(z, xp.int32), xp.int64)      # [B, N]
    ordered = xp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)        # negative floats reversed
    reversed_index = n - 1 - xp.arange(n, dtype=xp.int64, device=device_of(z))  # [N]
    return ordered * (2 ** 32) + reversed_index
