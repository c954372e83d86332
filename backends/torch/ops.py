"""PyTorch's own operations for the sparse hot path: ``backend.ops`` of the torch backend.

Same methods and semantics as :class:`~..reference.ReferenceOps` (read its docstrings
for the conventions); only the ops where PyTorch has a faster native form are replaced:

- ``scatter_add_rows``: ``Tensor.index_add_`` into zeros, one pass over the rows instead
  of the reference's sort, running sum and two searches. Sums accumulate in the rows'
  dtype (float32 stays float32, like the Numba kernels); on CUDA the order of the sums,
  hence the last bits of the results, can vary from run to run (atomic adds), unless
  ``deterministic`` (:meth:`TorchOps.reproducible`).
- ``topk``: ``torch.topk`` finds the k-th largest value of each row, a partial
  selection instead of the reference's full sort. ``torch.topk`` promises neither which
  of several equal values it keeps nor their order, so the indices are then chosen by
  the convention (the k largest, ties to the lower index, NaN largest, as a stable
  descending sort) from that value, and only those k are sorted (see :meth:`topk`).

The gathers stay the reference's: the array-API ``take`` is ``torch.index_select``
here, which takes int32 and int64 ids alike.
"""

from __future__ import annotations

import torch

from ..reference import ReferenceOps


class TorchOps(ReferenceOps):
    """``deterministic``: on CUDA, the reference's sort-based scatter-add instead of
    ``index_add_``'s atomic adds (bitwise reproducible; the CPU's always is)."""

    name = "native"

    def __init__(self, xp, deterministic: bool = False):
        super().__init__(xp)
        self.deterministic = deterministic

    def reproducible(self):
        return self if self.deterministic else TorchOps(self.xp, deterministic=True)

    def scatter_add_rows(self, ids, rows, n_rows):
        """``out[ids[i]] += rows[i]``: ids ``[n]``, rows ``[n, F]`` -> out ``[n_rows, F]``."""
        if self.deterministic and rows.device.type == "cuda":
            return super().scatter_add_rows(ids, rows, n_rows)
        out = torch.zeros((n_rows,) + tuple(rows.shape[1:]), dtype=rows.dtype,
                          device=rows.device)                                # [n_rows, F]
        return out.index_add_(0, ids, rows)

    def topk(self, z, k):
        """Indices of the k largest entries of each row: z ``[B, N]`` -> ``[B, k]`` int64,
        by descending value, ties to the lower index, NaN first (as a stable argsort)."""
        B, N = z.shape
        if not 0 <= k <= N:
            raise ValueError(f"k = {k} is outside 0..{N} (the row length)")
        if k == 0 or B == 0:
            return torch.zeros((B, k), dtype=torch.int64, device=z.device)
        kth = torch.topk(z, k, dim=1).values[:, k - 1:]                      # [B, 1]
        above, tied = _above_and_tied(z, kth)                                # [B, N] each
        room = k - torch.sum(above, dim=1, keepdim=True)                     # [B, 1] tied slots
        keep = above | (tied & (torch.cumsum(tied, dim=1) <= room))          # [B, N], k per row
        # the kept indices in ascending order: the k largest of N - index where kept
        position = torch.arange(N, 0, -1, device=z.device)                    # [N]: N - index
        chosen = torch.topk(torch.where(keep, position, 0), k, dim=1).indices  # [B, k]
        order = torch.argsort(torch.gather(z, 1, chosen), dim=1, descending=True, stable=True)
        return torch.gather(chosen, 1, order)                                # [B, k]


def _above_and_tied(z, kth):
    """Where z ranks above the row's k-th value ``kth`` ``[B, 1]``, and where it ties with
    it, in torch's order (NaN above every number, equal to NaN): two bool ``[B, N]``."""
    z_nan, kth_nan = torch.isnan(z), torch.isnan(kth)
    above = (z > kth) | (z_nan & ~kth_nan)
    tied = (z == kth) | (z_nan & kth_nan)
    return above, tied
