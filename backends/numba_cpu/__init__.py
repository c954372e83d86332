"""NumPy arrays with Numba CPU kernels (``@njit``, cached on disk): the numpy backend's ops.

- ``ops``: :class:`NumbaCpuOps`, the sparse hot path, with the fused ops mixed in;
- ``attention``, ``rmsnorm``, ``step_tail``: the fused ops' kernels;
- ``exp``: the vectorised exp the attention and step-tail kernels share.
"""

from .ops import NumbaCpuOps

__all__ = ["NumbaCpuOps"]
