"""The hardware-abstraction layer: everything that differs between NumPy, CuPy and
array-api-strict lives here, and nowhere in the math.

A :class:`Backend` answers the questions the math cannot answer portably:

- which array namespace and device to compute on (``backend.xp``, ``backend.device``);
- host-side random numbers (a seeded NumPy ``Generator``) moved to the device, so one
  seed gives the same weights on every backend (``backend.normal``);
- moving arrays to and from NumPy, and synchronising the device;
- memory accounting: current and peak bytes of array memory (``backend.memory``);
- the sparse hot-path operations (gather rows, scatter-add rows, top-k, the encoder
  accumulate and its sparse backward) as ``backend.ops``: a portable array-API
  reference here, Numba kernels where they exist.

Pick one with :func:`get_backend` (by name, else ``$BRAINLIKE_BACKEND``, else numpy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as device_of

from .memory import MemoryTracker
from .reference import ReferenceOps

BACKEND_NAMES = ("numpy", "array_api_strict", "cupy")
KERNEL_CHOICES = ("auto", "reference", "numba")
ENV_BACKEND = "BRAINLIKE_BACKEND"
ENV_KERNELS = "BRAINLIKE_KERNELS"


class BackendError(RuntimeError):
    """A backend cannot be used as asked; the message says why and how to fix it."""


def get_namespace(*arrays):
    """The array-API namespace of ``arrays`` (Chainer's ``get_array_module``)."""
    return array_namespace(*arrays)


@dataclass
class Backend:
    name: str
    xp: Any                          # the array-API namespace
    device: Any
    ops: Any                         # sparse hot-path operations (see reference.py)
    memory: MemoryTracker
    _native: Any = field(default=None, repr=False)   # numpy / cupy module, if any

    # ---- arrays in and out -------------------------------------------------------
    def asarray(self, host_array, dtype=None):
        """A host (NumPy) array as an array of this backend, on its device."""
        x = self.xp.asarray(np.asarray(host_array, order="C"), device=self.device)   # keeps 0-d
        return x if dtype is None else self.xp.astype(x, dtype)

    def to_numpy(self, x) -> np.ndarray:
        if self.name == "cupy":
            return self._native.asnumpy(x)
        return np.asarray(x)

    def synchronize(self) -> None:
        if self.name == "cupy":
            self._native.cuda.get_current_stream().synchronize()

    # ---- host-side random numbers --------------------------------------------------
    @staticmethod
    def rng(seed: int) -> np.random.Generator:
        return np.random.default_rng(seed)

    def normal(self, rng: np.random.Generator, shape, std: float, dtype):
        """N(0, std^2) drawn on the host in float64 and moved to the device."""
        return self.asarray(rng.standard_normal(shape) * std, dtype=dtype)

    def init_params(self, shapes: dict, std_of, seed: int, dtype: str) -> dict:
        """Parameters ``name -> array``, drawn on the host in ``shapes`` order, so the same
        seed gives the same weights on every backend. ``std_of(name, shape)`` is a
        standard deviation for N(0, std^2), or "zeros" / "ones"."""
        rng, dt = self.rng(seed), self.dtype(dtype)
        params = {}
        for name, shape in shapes.items():
            std = std_of(name, shape)
            if std == "zeros":
                params[name] = self.zeros(shape, dt)
            elif std == "ones":
                params[name] = self.ones(shape, dt)
            else:
                params[name] = self.normal(rng, shape, std, dt)
        return params

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype, device=self.device)

    def ones(self, shape, dtype):
        return self.xp.ones(shape, dtype=dtype, device=self.device)

    def dtype(self, name: str):
        """``"float32"`` / ``"float64"`` as this namespace's dtype object."""
        return getattr(self.xp, name)


def _cupy_module():
    """Import CuPy and check that a GPU is visible; raise BackendError otherwise."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed: "
            "pip install -e '.[cuda12]' (or '.[cuda13]' for CUDA 13), "
            "or choose BRAINLIKE_BACKEND=numpy") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver
        raise BackendError(
            f"backend 'cupy': CuPy is installed but no GPU is usable ({exc}); "
            "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, "
            "or choose BRAINLIKE_BACKEND=numpy") from exc
    if count == 0:
        raise BackendError(
            "backend 'cupy': CuPy is installed but no GPU is visible; "
            "check CUDA_VISIBLE_DEVICES, or choose BRAINLIKE_BACKEND=numpy")
    return cupy


def _numba_ops(backend_name: str, required: bool):
    """The Numba kernels for this backend, or None when Numba (or, for cupy, the Numba
    CUDA target) is not installed and ``required`` is False. Other import errors are
    bugs and propagate."""
    if backend_name not in ("numpy", "cupy"):
        if required:
            raise BackendError(f"backend '{backend_name}' has no Numba kernels; "
                               "use kernels='reference'")
        return None
    try:
        if backend_name == "numpy":
            from .numba_cpu import NumbaCpuOps as Ops
        else:
            from .numba_cuda import NumbaCudaOps as Ops
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("numba", "cuda"):
            raise
        if required:
            raise BackendError(
                f"kernels 'numba' for backend '{backend_name}' need {exc.name}, which is not "
                f"installed: pip install -e '.[cuda12]' for the GPU kernels, or set "
                f"{ENV_KERNELS}=reference") from exc
        return None
    return Ops()


def _choose_ops(backend_name: str, xp, kernels: str):
    if kernels not in KERNEL_CHOICES:
        raise BackendError(
            f"unknown kernels '{kernels}'; choose one of: {', '.join(KERNEL_CHOICES)}")
    if kernels == "reference":
        return ReferenceOps(xp)
    ops = _numba_ops(backend_name, required=(kernels == "numba"))
    return ops if ops is not None else ReferenceOps(xp)


def get_backend(name: str | None = None, kernels: str | None = None) -> Backend:
    """The backend called ``name`` (default: ``$BRAINLIKE_BACKEND``, else ``numpy``).

    ``kernels`` picks the sparse hot-path implementation: ``"reference"`` (portable
    array API), ``"numba"`` (Numba CPU / CUDA kernels) or ``"auto"`` (Numba where it
    loads, else reference). Default: ``$BRAINLIKE_KERNELS``, else ``auto``.
    """
    name = (name or os.environ.get(ENV_BACKEND) or "numpy").strip().lower()
    kernels = (kernels or os.environ.get(ENV_KERNELS) or "auto").strip().lower()
    if name == "numpy":
        import array_api_compat.numpy as xp
        return Backend(name, xp, "cpu", _choose_ops(name, xp, kernels),
                       MemoryTracker.for_host(), np)
    if name in ("array_api_strict", "array-api-strict", "strict"):
        try:
            import array_api_strict as xp
        except ImportError as exc:
            raise BackendError(
                "backend 'array_api_strict' needs the array-api-strict package: "
                "pip install -e '.[test]'") from exc
        device = xp.Device("CPU_DEVICE") if hasattr(xp, "Device") else None
        return Backend("array_api_strict", xp, device, _choose_ops("array_api_strict", xp, kernels),
                       MemoryTracker.for_host())
    if name == "cupy":
        cupy = _cupy_module()
        import array_api_compat.cupy as xp
        device = cupy.cuda.Device()
        return Backend(name, xp, device, _choose_ops(name, xp, kernels),
                       MemoryTracker.for_cupy(cupy), cupy)
    raise BackendError(
        f"unknown backend '{name}'; choose one of: {', '.join(BACKEND_NAMES)} "
        f"(by argument or ${ENV_BACKEND})")


def backend_is_available(name: str) -> tuple[bool, str]:
    """(True, "") if ``get_backend(name)`` would work, else (False, reason)."""
    try:
        get_backend(name, kernels="reference")
    except BackendError as exc:
        return False, str(exc)
    return True, ""


__all__ = ["Backend", "BackendError", "BACKEND_NAMES", "get_backend", "get_namespace", "device_of",
           "backend_is_available"]
