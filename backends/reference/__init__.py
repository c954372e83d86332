"""The array-API reference: every op as portable array-API code (what array-api-strict
runs, and what every kernel is tested against).

- ``ops``: :class:`ReferenceOps`, the sparse hot path (gather, scatter-add, top-k,
  gathered weighted sums), with the fused ops mixed in;
- ``attention``, ``rmsnorm``, ``step_tail``: the fused ops of the training step, each
  the definition its kernels are checked against.
"""

from .ops import ReferenceOps

__all__ = ["ReferenceOps"]
