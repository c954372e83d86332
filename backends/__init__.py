"""The hardware-abstraction layer: everything that differs between NumPy, CuPy,
array-api-strict and PyTorch lives here, and nowhere in the math.

This file only hands names on. One folder per target, each with the same ops
(``ops.py``: the ops class with the sparse hot path; ``attention.py``, ``rmsnorm.py``,
``step_tail.py``: the fused ops of the training step):

- ``reference/``: the portable array-API definition every kernel is tested against;
- ``numba_cpu/``: NumPy arrays with Numba CPU kernels;
- ``numba_cuda/``: CuPy arrays with Numba CUDA kernels (``target.py`` imports Numba's
  CUDA target);
- ``torch/``: PyTorch tensors with PyTorch's own operations where they help.
- ``jax/``: JAX arrays with JAX's native scatter-add and top-k (the step compiled whole
  by ``JaxBackend.compile_step``).

Beside them, the modules that make a backend, each with one job (none imports this one):

- ``backend``: the :class:`Backend` classes (one per array library: namespace and
  device, host RNG, moving arrays, synchronising, free memory, memory accounting, ops,
  data-parallel transport) and their choice, :func:`get_backend`;
- ``settings``: ``$BRAINLIKE_BACKEND`` and ``$BRAINLIKE_KERNELS``, read and checked
  (``$BRAINLIKE_DEVICE``: the torch and jax backends' device);
- ``kernel_choice``: reference ops or Numba kernels, and why the kernels cannot run;
- ``cupy_probe``: CuPy installed, a GPU visible, cuBLAS loadable; ``torch_probe``:
  PyTorch installed, the asked-for device there; ``jax_probe``: JAX installed (float64
  on), its device there;
- ``errors``: the exceptions, one-line warnings, NumPy's float warnings switched off;
- ``host_reads``: device-to-host reads, counted (:func:`to_float`, :func:`host_reads`);
- ``namespace``: the namespace and device of arrays (:func:`get_namespace`, ``device_of``);
- ``memory``: current and peak array memory; ``host_memory``: free host memory and the
  numpy backend's allocator policy;
- ``distributed``: data-parallel training over MPI / NCCL;
- ``aliasing``: which namespaces make a reshaped slice a view that writes through (the
  optimizer's flat buffers); ``counting``: a backend that counts the array operations a
  computation issues (the launch budget, ``bench/launches.py``).
"""

from .backend import (ArrayApiStrictBackend, Backend, CupyBackend, JaxBackend, NumpyBackend,
                      TorchBackend, backend_class, backend_is_available, get_backend)
from .errors import BackendError, KernelsMissing, KernelsUnavailable, quiet_float_warnings
from .host_memory import host_free_memory_bytes
from .host_reads import host_reads, to_float
from .namespace import device_of, get_namespace
from .settings import BACKEND_NAMES, ENV_BACKEND, ENV_DEVICE, ENV_KERNELS, KERNEL_CHOICES

__all__ = [
    "ArrayApiStrictBackend", "Backend", "CupyBackend", "JaxBackend", "NumpyBackend",
    "TorchBackend",
    "backend_class", "backend_is_available", "get_backend",
    "BackendError", "KernelsMissing", "KernelsUnavailable", "quiet_float_warnings",
    "host_free_memory_bytes",
    "host_reads", "to_float",
    "device_of", "get_namespace",
    "BACKEND_NAMES", "ENV_BACKEND", "ENV_DEVICE", "ENV_KERNELS", "KERNEL_CHOICES",
]
