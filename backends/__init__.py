"""The hardware-abstraction layer: everything that differs between NumPy, CuPy and
array-api-strict lives here, and nowhere in the math.

A :class:`Backend` answers the questions the math cannot answer portably:

- which array namespace and device to compute on (``backend.xp``, ``backend.device``);
- host-side random numbers (a seeded NumPy ``Generator``) moved to the device, so one
  seed gives the same weights on every backend (``backend.normal``);
- moving arrays to and from NumPy, and synchronising the device;
- memory accounting: current and peak bytes of array memory (``backend.memory``);
- the sparse hot-path operations (gather rows, scatter-add rows, top-k, a gathered
  position-weighted sum of rows and its sparse backward) as ``backend.ops``: a portable
  array-API reference here, Numba kernels where they exist;
- the communicator its arrays need when training data-parallel (``backend.communicator``).

Each library is a subclass (:class:`NumpyBackend`, :class:`ArrayApiStrictBackend`,
:class:`CupyBackend`) that carries its own behaviour. Pick one with :func:`get_backend`
(by name, else ``$BRAINLIKE_BACKEND``, else numpy).

Device-to-host reads (a GPU waits for its queue to drain) go through :func:`to_float`
(a scalar) or :meth:`Backend.to_numpy` (an array), which count them: :func:`host_reads`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as device_of

from .host_memory import keep_freed_memory
from .memory import MemoryTracker
from .reference import ReferenceOps

BACKEND_NAMES = ("numpy", "array_api_strict", "cupy")
KERNEL_CHOICES = ("auto", "reference", "numba")
ENV_BACKEND = "BRAINLIKE_BACKEND"
ENV_KERNELS = "BRAINLIKE_KERNELS"


class BackendError(RuntimeError):
    """A backend cannot be used as asked; the message says why and how to fix it."""


class KernelsMissing(RuntimeError):
    """This backend has no Numba kernels, or their Numba target is not installed."""


class KernelsUnavailable(RuntimeError):
    """The Numba kernels are installed but cannot run here; the message says why."""


def get_namespace(*arrays):
    """The array-API namespace of ``arrays`` (Chainer's ``get_array_module``)."""
    return array_namespace(*arrays)


# ---- device-to-host reads ---------------------------------------------------------------
_host_reads = 0


def host_reads() -> int:
    """How many device-to-host reads this process has made through :func:`to_float` and
    :meth:`Backend.to_numpy` (on a GPU, each one waits for the device)."""
    return _host_reads


def _count_host_read() -> None:
    global _host_reads
    _host_reads += 1


def to_float(x) -> float:
    """A 0-d array of any backend as a Python float: one counted device-to-host read."""
    _count_host_read()
    return float(x)


# ---- the backends -------------------------------------------------------------------------
def quiet_float_warnings():
    """A context in which NumPy's floating-point warnings (overflow, invalid) are silent:
    a diverged loss is caught and reported in one line by the trainer itself."""
    return np.errstate(all="ignore")


def host_free_memory_bytes() -> int | None:
    """The host memory new allocations can take (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


class Backend:
    """An array library with its namespace, device, hot-path ops and memory accounting.

    Subclasses set ``name`` and build themselves in :meth:`create`; they override
    ``_to_numpy``, ``synchronize`` and ``communicator`` where their library differs.
    """

    name = ""

    def __init__(self, xp, device, ops, memory: MemoryTracker):
        self.xp = xp                  # the array-API namespace
        self.device = device
        self.ops = ops                # sparse hot-path operations (see reference.py)
        self.memory = memory

    def __repr__(self):
        return f"{type(self).__name__}(device={self.device!r}, ops={self.ops.name!r})"

    @classmethod
    def create(cls, kernels: str, device: int | None) -> "Backend":
        raise NotImplementedError

    @classmethod
    def numba_ops(cls):
        """This backend's Numba kernels; KernelsMissing when it has none or their Numba
        target is not installed, KernelsUnavailable when they cannot run here."""
        raise KernelsMissing(f"backend '{cls.name}' has no Numba kernels; "
                             "use kernels='reference'")

    # ---- arrays in and out -------------------------------------------------------
    def asarray(self, host_array, dtype=None):
        """A host (NumPy) array as an array of this backend, on its device; shape and
        dtype are kept exactly (0-d stays 0-d), unless ``dtype`` asks for another."""
        host = np.asarray(host_array, order="C")
        x = self.xp.asarray(host, device=self.device)
        return x if dtype is None else self.xp.astype(x, dtype)

    def to_numpy(self, x) -> np.ndarray:
        """``x`` as a NumPy array: one counted device-to-host read (see host_reads)."""
        _count_host_read()
        return self._to_numpy(x)

    def _to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far (host: nothing)."""

    def free_memory_bytes(self) -> int | None:
        """Memory that new arrays can still take on this backend's device (host: the
        kernel's MemAvailable), or None where it cannot be told."""
        return host_free_memory_bytes()

    def communicator(self, MPI, world):
        """The data-parallel communicator for this backend's arrays over ``world``: MPI
        all-reduces on host buffers."""
        from .distributed import MpiCommunicator
        return MpiCommunicator(MPI, world)

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


class NumpyBackend(Backend):
    """NumPy on the CPU, with the Numba CPU kernels."""

    name = "numpy"

    @classmethod
    def create(cls, kernels, device):
        import array_api_compat.numpy as xp
        keep_freed_memory()            # see host_memory.py
        return cls(xp, "cpu", _choose_ops(cls, xp, kernels), MemoryTracker.for_host())

    @classmethod
    def numba_ops(cls):
        with _importing_kernels(cls.name):
            from .numba_cpu import NumbaCpuOps
        return NumbaCpuOps()


class ArrayApiStrictBackend(Backend):
    """array-api-strict: the standard's strict reference, which proves the math portable."""

    name = "array_api_strict"

    @classmethod
    def create(cls, kernels, device):
        try:
            import array_api_strict as xp
        except ImportError as exc:
            raise BackendError(
                "backend 'array_api_strict' needs the array-api-strict package: "
                "pip install -e '.[test]'") from exc
        return cls(xp, xp.Device("CPU_DEVICE"), _choose_ops(cls, xp, kernels),
                   MemoryTracker.for_host())


class CupyBackend(Backend):
    """CuPy on one GPU, with the Numba CUDA kernels on CuPy's current stream."""

    name = "cupy"

    def __init__(self, xp, device, ops, memory, cupy):
        super().__init__(xp, device, ops, memory)
        self._cupy = cupy

    @classmethod
    def create(cls, kernels, device):
        """``device``: the GPU's index (default: CUDA's current device). It is made the
        current device before anything is allocated."""
        cupy = _cupy_module()
        gpu = cupy.cuda.Device(_gpu_index(cupy, device))
        gpu.use()
        _check_cublas(cupy)
        import array_api_compat.cupy as xp
        return cls(xp, gpu, _choose_ops(cls, xp, kernels), MemoryTracker.for_cupy(cupy), cupy)

    @classmethod
    def numba_ops(cls):
        with _importing_kernels(cls.name):
            from .numba_cuda import NumbaCudaOps
        return NumbaCudaOps()

    def _to_numpy(self, x) -> np.ndarray:
        return self._cupy.asnumpy(x)

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()

    def free_memory_bytes(self) -> int | None:
        """The GPU's free memory plus what CuPy's pool holds unused."""
        free, _total = self._cupy.cuda.runtime.memGetInfo()
        return int(free) + int(self._cupy.get_default_memory_pool().free_bytes())

    def communicator(self, MPI, world):
        """NCCL all-reduces on this backend's GPU (MPI broadcasts NCCL's id)."""
        from .distributed import NcclCommunicator, nccl_module
        return NcclCommunicator(MPI, world, self._cupy, nccl_module())


BACKENDS = {cls.name: cls for cls in (NumpyBackend, ArrayApiStrictBackend, CupyBackend)}
ALIASES = {"array-api-strict": "array_api_strict", "strict": "array_api_strict"}


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


def _gpu_index(cupy, device: int | None) -> int:
    """The GPU to use: ``device``, else CUDA's current one; BackendError if it is not there."""
    if device is None:
        return cupy.cuda.runtime.getDevice()
    count = cupy.cuda.runtime.getDeviceCount()
    if not 0 <= device < count:
        raise BackendError(
            f"backend 'cupy': GPU {device} was asked for but {count} GPU(s) are visible; "
            "run at most one rank per GPU on each node, or check CUDA_VISIBLE_DEVICES")
    return device


def _check_cublas(cupy) -> None:
    """One tiny matmul, so a missing cuBLAS is a one-line error now, not a traceback later."""
    try:
        a = cupy.ones((2, 2), dtype=cupy.float32)
        a @ a
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise BackendError(
            f"backend 'cupy': CuPy cannot run a matmul ({type(exc).__name__}: {reason}); "
            "cuBLAS and the other CUDA libraries come with CuPy's [ctk] extra: "
            "pip install -e '.[cuda12]' (or '.[cuda13]')") from None


def _choose_ops(backend_cls, xp, kernels: str):
    """The ops ``kernels`` asks for: reference, numba, or auto (Numba where it runs, else
    reference, saying why on stderr when the kernels are installed but cannot run)."""
    if kernels == "reference":
        return ReferenceOps(xp)
    try:
        return backend_cls.numba_ops()
    except KernelsMissing as exc:
        if kernels == "numba":
            raise BackendError(str(exc)) from None
    except KernelsUnavailable as exc:
        if kernels == "numba":
            raise BackendError(f"kernels 'numba' for backend '{backend_cls.name}': {exc}, "
                               f"or set {ENV_KERNELS}=reference") from None
        _warn_once(f"warning: the Numba kernels cannot run ({exc}); using the reference "
                   f"ops instead (slower; {ENV_KERNELS}=reference silences this)")
    return ReferenceOps(xp)


@contextlib.contextmanager
def _importing_kernels(backend_name: str):
    """Turn the import errors of a kernel module into KernelsMissing (Numba or its CUDA
    target not installed) or KernelsUnavailable (no writable cache for compiled code)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("numba", "cuda"):
            raise
        raise KernelsMissing(
            f"kernels 'numba' for backend '{backend_name}' need {exc.name}, which is not "
            f"installed: pip install -e '.[cuda12]' for the GPU kernels, or set "
            f"{ENV_KERNELS}=reference") from None
    except RuntimeError as exc:       # numba.core.caching: "cannot cache function ..."
        if "cannot cache function" not in str(exc):
            raise
        raise KernelsUnavailable(
            f"Numba found no writable folder for its compiled-code cache "
            f"(NUMBA_CACHE_DIR={os.environ.get('NUMBA_CACHE_DIR', 'unset')}, and the "
            "package folder is read-only): set NUMBA_CACHE_DIR to a writable folder") from None


@functools.cache
def _warn_once(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def backend_class(name: str | None = None) -> type[Backend]:
    """The Backend subclass called ``name`` (default: ``$BRAINLIKE_BACKEND``, else numpy);
    imports no array library."""
    name = (name or os.environ.get(ENV_BACKEND) or "numpy").strip().lower()
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise BackendError(
            f"unknown backend '{name}'; choose one of: {', '.join(BACKEND_NAMES)} "
            f"(by argument or ${ENV_BACKEND})")
    return BACKENDS[name]


def get_backend(name: str | None = None, kernels: str | None = None,
                device: int | None = None) -> Backend:
    """The backend called ``name`` (default: ``$BRAINLIKE_BACKEND``, else ``numpy``).

    ``kernels`` picks the sparse hot-path implementation: ``"reference"`` (portable
    array API), ``"numba"`` (Numba CPU / CUDA kernels) or ``"auto"`` (Numba where it
    runs, else reference). Default: ``$BRAINLIKE_KERNELS``, else ``auto``.

    ``device``: for cupy, the index of the GPU to use (default: CUDA's current device);
    the host backends have one device, the CPU, and ignore it.
    """
    cls = backend_class(name)
    kernels = (kernels or os.environ.get(ENV_KERNELS) or "auto").strip().lower()
    if kernels not in KERNEL_CHOICES:
        raise BackendError(
            f"unknown kernels '{kernels}'; choose one of: {', '.join(KERNEL_CHOICES)}")
    return cls.create(kernels, device)


def backend_is_available(name: str) -> tuple[bool, str]:
    """(True, "") if ``get_backend(name)`` would work, else (False, reason)."""
    try:
        get_backend(name, kernels="reference")
    except BackendError as exc:
        return False, str(exc)
    return True, ""


__all__ = ["Backend", "BackendError", "BACKEND_NAMES", "ArrayApiStrictBackend", "CupyBackend",
           "NumpyBackend", "backend_class", "backend_is_available", "device_of", "get_backend",
           "get_namespace", "host_reads", "to_float"]
