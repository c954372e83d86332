"""CuPy arrays with Numba CUDA kernels on CuPy's current stream: the cupy backend's ops.

- ``target``: the one module that imports the Numba CUDA target (streams, launch sizes);
- ``ops``: :class:`NumbaCudaOps`, the sparse hot path, with the fused ops mixed in;
- ``attention``, ``rmsnorm``, ``step_tail``: the fused ops' kernels.
"""

from .ops import NumbaCudaOps

__all__ = ["NumbaCudaOps"]
