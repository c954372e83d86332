"""PyTorch tensors with PyTorch's own operations on the sparse hot path: the torch
backend's ops (CPU, CUDA or MPS: they run wherever the tensors are).

- ``ops``: :class:`TorchOps`, the reference ops with scatter-add and top-k replaced by
  PyTorch's ``index_add_`` and ``topk``; the gathers (``index_select``, which the
  array-API ``take`` already is on PyTorch) and the fused ops (attention, RMSNorm, the
  step's tail) stay the reference's array-API code.
"""

from .ops import TorchOps

__all__ = ["TorchOps"]
