"""The Backend classes, one per array library, and the choice between them.

A :class:`Backend` answers the questions the math cannot answer portably: which
namespace and device to compute on, host-side random numbers moved to the device (one
seed, the same weights on every backend), moving arrays to and from NumPy (counted:
:mod:`.host_reads`), synchronising, free memory and memory accounting, the sparse
hot-path ops (``backend.ops``), and how data-parallel ranks sum its arrays
(``transport``). Each library is a subclass that carries its own behaviour:
:class:`NumpyBackend`, :class:`ArrayApiStrictBackend`, :class:`CupyBackend`,
:class:`TorchBackend`, :class:`JaxBackend`. A backend may also compile a pure function
(``compile_step``: the training step on jax). :func:`get_backend` picks one by name, else
``$BRAINLIKE_BACKEND``, else numpy.
"""

from __future__ import annotations

import numpy as np

from .cupy_probe import check_cublas, gpu_index, import_cupy
from .errors import BackendError, KernelsMissing
from .host_memory import host_free_memory_bytes, keep_freed_memory
from .host_reads import count_host_read
from .jax_probe import import_jax, jax_device
from .kernel_choice import choose_ops, importing_kernels
from .memory import MemoryTracker
from .settings import backend_name, check_environment, kernels_choice
from .torch_probe import import_torch, torch_device


class Backend:
    """An array library with its namespace, device, hot-path ops and memory accounting.

    Subclasses set ``name`` and build themselves in :meth:`create`; they override
    ``_to_numpy``, ``synchronize``, ``free_memory_bytes``, ``memory_tracker`` and
    ``transport`` where their library differs.
    """

    name = ""
    kernels = None        # the kind of its own kernels: "numba", "native" or None (see kernel_choice)
    transport = "mpi"     # data-parallel ranks sum these arrays with MPI on host buffers

    def __init__(self, xp, device, ops):
        self.xp = xp                  # the array-API namespace
        self.device = device
        self.ops = ops                # sparse hot-path operations (see reference/ops.py)
        self.memory = self.memory_tracker()

    def __repr__(self):
        return f"{type(self).__name__}(device={self.device!r}, ops={self.ops.name!r})"

    @classmethod
    def create(cls, kernels: str, device: int | None) -> "Backend":
        raise NotImplementedError

    @classmethod
    def kernel_ops(cls, xp):
        """This backend's own kernels on namespace ``xp``; KernelsMissing when it has none,
        KernelsUnavailable when they cannot run here."""
        raise KernelsMissing(f"backend '{cls.name}' has no kernels of its own; "
                             "use kernels='reference'")

    def memory_tracker(self, exact_peak: bool = False) -> MemoryTracker:
        """A new tracker of this backend's array memory (see memory.py); ``backend.memory``
        is one with the default mode. Host: tracemalloc, whose peak is always exact."""
        return MemoryTracker.for_host()

    # ---- arrays in and out -------------------------------------------------------
    def asarray(self, host_array, dtype=None):
        """A host (NumPy) array as an array of this backend, on its device; shape and
        dtype are kept exactly (0-d stays 0-d), unless ``dtype`` asks for another."""
        host = np.asarray(host_array, order="C")
        x = self.xp.asarray(host, device=self.device)
        return x if dtype is None else self.xp.astype(x, dtype)

    def asarray_ids(self, host_tokens):
        """Host integer tokens or ids, of any integer dtype, as int64 ids on the device
        (converted on the host: PyTorch indexes with nothing narrower than int32, and its
        take_along_dim with nothing but int64)."""
        return self.asarray(np.asarray(host_tokens, dtype=np.int64))

    def to_numpy(self, x) -> np.ndarray:
        """``x`` as a NumPy array: one counted device-to-host read (see host_reads)."""
        count_host_read()
        return self._to_numpy(x)

    def _to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def arrays_on_host(self) -> bool:
        """Whether this backend's arrays live in host memory (NumPy can share it)."""
        return True

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far (host: nothing)."""

    def compile_step(self, fn, donate_argnums: tuple = (), key=None):
        """``fn``, a pure function of arrays (and dicts of arrays), compiled for this
        backend, its arguments at ``donate_argnums`` donated (their buffers may hold the
        results: the caller must not use them again). ``key``, if given, is hashable and
        names what ``fn`` computes: a later call with an equal key may get the function
        compiled then. Here: ``fn`` itself, run op by op; the jax backend compiles it
        with ``jax.jit``."""
        return fn

    def free_memory_bytes(self) -> int | None:
        """Memory that new arrays can still take on this backend's device (host: the
        kernel's MemAvailable), or None where it cannot be told."""
        return host_free_memory_bytes()

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
    kernels = "numba"

    @classmethod
    def create(cls, kernels, device):
        import array_api_compat.numpy as xp
        keep_freed_memory()            # see host_memory.py
        return cls(xp, "cpu", choose_ops(cls, xp, kernels))

    @classmethod
    def kernel_ops(cls, xp):
        with importing_kernels("Numba comes with this package: pip install -e ."):
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
        return cls(xp, xp.Device("CPU_DEVICE"), choose_ops(cls, xp, kernels))


class CupyBackend(Backend):
    """CuPy on one GPU, with the Numba CUDA kernels on CuPy's current stream; its
    data-parallel ranks sum with NCCL on the GPUs."""

    name = "cupy"
    kernels = "numba"
    transport = "nccl"

    def __init__(self, xp, device, ops, cupy):
        self._cupy = cupy
        super().__init__(xp, device, ops)

    @classmethod
    def create(cls, kernels, device):
        """``device``: the GPU's index (default: CUDA's current device). It is made the
        current device before anything is allocated."""
        cupy = import_cupy()
        gpu = cupy.cuda.Device(gpu_index(cupy, device))
        gpu.use()
        check_cublas(cupy)
        import array_api_compat.cupy as xp
        return cls(xp, gpu, choose_ops(cls, xp, kernels), cupy)

    @classmethod
    def kernel_ops(cls, xp):
        with importing_kernels("pip install -e '.[cuda12]' (or '.[cuda13]') brings "
                               "numba-cuda"):
            from .numba_cuda import NumbaCudaOps
        return NumbaCudaOps()

    def memory_tracker(self, exact_peak: bool = False) -> MemoryTracker:
        """Sampled from CuPy's pool by default; ``exact_peak=True``: a hook on every
        allocation (see memory.py)."""
        return MemoryTracker.for_cupy(self._cupy, exact_peak)

    def arrays_on_host(self) -> bool:
        return False

    def _to_numpy(self, x) -> np.ndarray:
        return self._cupy.asnumpy(x)

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()

    def free_memory_bytes(self) -> int | None:
        """The GPU's free memory plus what CuPy's pool holds unused."""
        free, _total = self._cupy.cuda.runtime.memGetInfo()
        return int(free) + int(self._cupy.get_default_memory_pool().free_bytes())


class TorchBackend(Backend):
    """PyTorch on the CPU (the default), a CUDA GPU (``cuda:N``) or Apple's GPU (``mps``),
    with PyTorch's own operations on the hot path (``torch/``); data-parallel ranks sum
    through host buffers with MPI."""

    name = "torch"
    kernels = "native"

    def __init__(self, xp, device, ops, torch):
        self._torch = torch
        super().__init__(xp, device, ops)

    @classmethod
    def create(cls, kernels, device):
        """``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a GPU index
        (default: ``$BRAINLIKE_DEVICE``, else the CPU; see torch_probe.py). A GPU named by
        index is made CUDA's current device, as CuPy's is."""
        torch = import_torch()
        device = torch_device(torch, device)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        import array_api_compat.torch as xp
        return cls(xp, device, choose_ops(cls, xp, kernels), torch)

    @classmethod
    def kernel_ops(cls, xp):
        from .torch import TorchOps
        return TorchOps(xp)

    def memory_tracker(self, exact_peak: bool = False) -> MemoryTracker:
        """CUDA: PyTorch's allocator statistics (exact); elsewhere nothing counts PyTorch's
        arrays, so: the process's resident memory (see memory.py)."""
        if self.device.type == "cuda":
            return MemoryTracker.for_torch_cuda(self._torch, self.device)
        return MemoryTracker.for_resident()

    def arrays_on_host(self) -> bool:
        return self.device.type == "cpu"

    def _to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            self._torch.mps.synchronize()

    def free_memory_bytes(self) -> int | None:
        """CUDA: the GPU's free memory plus what PyTorch's cache holds unused; CPU: the
        host's; MPS: None (not told)."""
        if self.device.type == "cuda":
            cuda = self._torch.cuda
            free, _total = cuda.mem_get_info(self.device)
            return int(free) + cuda.memory_reserved(self.device) - cuda.memory_allocated(self.device)
        return host_free_memory_bytes() if self.device.type == "cpu" else None


class JaxBackend(Backend):
    """JAX on the CPU (the default) or a GPU (``gpu:N``), with JAX's own operations on the
    hot path (``jax/``) and the training step compiled whole by ``jax.jit``; float64 on
    (see jax_probe.py); data-parallel ranks sum through host buffers with MPI."""

    name = "jax"
    kernels = "native"

    def __init__(self, xp, device, ops, jax):
        self._jax = jax
        super().__init__(xp, device, ops)

    @classmethod
    def create(cls, kernels, device):
        """``device``: ``"cpu"``, ``"gpu"``, ``"gpu:N"`` or a GPU index (default:
        ``$BRAINLIKE_DEVICE``, else the CPU; see jax_probe.py)."""
        jax = import_jax()
        import jax.numpy as xp
        return cls(xp, jax_device(jax, device), choose_ops(cls, xp, kernels), jax)

    @classmethod
    def kernel_ops(cls, xp):
        from .jax import JaxOps
        return JaxOps(xp)

    def memory_tracker(self, exact_peak: bool = False) -> MemoryTracker:
        """The bytes of JAX's live arrays on this device (XLA's buffers, which tracemalloc
        does not see); the peak is the largest seen when read (``exact_peak`` cannot be)."""
        return MemoryTracker.for_jax(self._jax, self.device)

    _compiled = {}        # (key, donated, device) -> jitted function, for the whole process

    def arrays_on_host(self) -> bool:
        return self.device.platform == "cpu"

    def _to_numpy(self, x) -> np.ndarray:
        """A copy: NumPy's zero-copy view of a CPU buffer would keep a later compiled
        step from donating that buffer (and would be read-only)."""
        return np.array(x, copy=True)

    def compile_step(self, fn, donate_argnums: tuple = (), key=None):
        """``jax.jit(fn)``: traced once per shape and dtype of its arguments, then run as
        one XLA program, the donated arguments' buffers reused for its results. With a
        ``key``, one jitted function per key in the process (a new training state of the
        same model reuses the programs compiled for the last: compiling takes seconds)."""
        if key is None:
            return self._jax.jit(fn, donate_argnums=donate_argnums)
        full_key = (key, tuple(donate_argnums), self.device)
        if full_key not in JaxBackend._compiled:
            JaxBackend._compiled[full_key] = self._jax.jit(fn, donate_argnums=donate_argnums)
        return JaxBackend._compiled[full_key]

    def synchronize(self) -> None:
        """JAX runs a device's work in order: waiting for a new array waits for it all."""
        self.xp.zeros((), device=self.device).block_until_ready()

    def free_memory_bytes(self) -> int | None:
        """A GPU's limit less what JAX's arrays hold; the CPU: the host's."""
        stats = self.device.memory_stats() if self.device.platform != "cpu" else None
        if not stats:
            return host_free_memory_bytes() if self.device.platform == "cpu" else None
        return int(stats["bytes_limit"]) - int(stats["bytes_in_use"])


BACKENDS = {cls.name: cls for cls in (NumpyBackend, ArrayApiStrictBackend, CupyBackend,
                                      TorchBackend, JaxBackend)}


def backend_class(name: str | None = None) -> type[Backend]:
    """The Backend subclass called ``name`` (default: ``$BRAINLIKE_BACKEND``, else numpy);
    imports no array library."""
    return BACKENDS[backend_name(name)]


def get_backend(name: str | None = None, kernels: str | None = None,
                device: int | str | None = None) -> Backend:
    """The backend called ``name`` (default: ``$BRAINLIKE_BACKEND``, else ``numpy``).

    ``kernels`` picks the sparse hot-path implementation: ``"reference"`` (portable
    array API), the backend's own kernels by their kind (``"numba"``: Numba CPU / CUDA
    kernels; ``"native"``: the array library's own operations) or ``"auto"`` (its own
    kernels where they run, else reference). Default: ``$BRAINLIKE_KERNELS``, else ``auto``.

    ``device``: for cupy, the index of the GPU to use (default: CUDA's current device);
    for torch, ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``; for jax, ``"cpu"``, ``"gpu"`` or
    ``"gpu:N"`` (default for both: ``$BRAINLIKE_DEVICE``, else the CPU); the host backends
    have one device, the CPU, and ignore it.
    """
    check_environment()          # every BRAINLIKE_* variable, as a flag is checked
    cls = backend_class(name)
    return cls.create(kernels_choice(kernels), device)


def backend_is_available(name: str) -> tuple[bool, str]:
    """(True, "") if ``get_backend(name)`` would work, else (False, reason)."""
    try:
        get_backend(name, kernels="reference")
    except BackendError as exc:
        return False, str(exc)
    return True, ""
