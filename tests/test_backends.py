"""The backend layer: choosing a backend, its errors, arrays in and out, host RNG, memory
accounting, and the CuPy/NCCL specifics against stubs."""

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from brainlike_np.backends import BACKEND_NAMES, BackendError, get_backend
from brainlike_np.backends.distributed import DistributedError, nccl_module
from brainlike_np.backends.memory import MemoryTracker


def test_default_is_numpy(monkeypatch):
    monkeypatch.delenv("BRAINLIKE_BACKEND", raising=False)
    assert get_backend().name == "numpy"


def test_environment_variable_picks_the_backend(monkeypatch):
    monkeypatch.setenv("BRAINLIKE_BACKEND", "array_api_strict")
    assert get_backend().name == "array_api_strict"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(BackendError) as err:
        get_backend("tensorflow")
    message = str(err.value)
    assert "unknown backend 'tensorflow'" in message
    for name in BACKEND_NAMES:
        assert name in message


def test_unknown_kernels_choice_is_an_error():
    with pytest.raises(BackendError, match="unknown kernels 'fast'"):
        get_backend("numpy", kernels="fast")


def test_cupy_not_installed_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)   # makes `import cupy` fail
    with pytest.raises(BackendError) as err:
        get_backend("cupy")
    assert "not installed" in str(err.value)
    assert ".[cuda12]" in str(err.value) and "numpy" in str(err.value)


def _fake_cupy(device_count):
    def count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count
    runtime = types.SimpleNamespace(getDeviceCount=count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


@pytest.mark.parametrize("device_count, expected", [
    (0, "no GPU is visible"),
    (RuntimeError("cudaErrorInsufficientDriver"), "no GPU is usable"),
])
def test_cupy_without_a_gpu_says_so(monkeypatch, device_count, expected):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count))
    with pytest.raises(BackendError, match=expected):
        get_backend("cupy")


def test_same_seed_same_weights_on_every_backend(backend):
    numpy_backend = get_backend("numpy")
    ref = numpy_backend.normal(numpy_backend.rng(7), (3, 4), 0.5, np.float32)
    got = backend.normal(backend.rng(7), (3, 4), 0.5, backend.dtype("float32"))
    np.testing.assert_array_equal(backend.to_numpy(got), ref)


def test_round_trip_to_numpy(backend):
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    np.testing.assert_array_equal(backend.to_numpy(backend.asarray(host)), host)


def test_memory_accounting_sees_an_allocation(backend):
    backend.memory.reset_peak()
    base = backend.memory.current_bytes()
    x = backend.zeros((1024, 1024), backend.dtype("float32"))   # 4 MiB
    backend.synchronize()
    assert backend.memory.current_bytes() - base >= 4 * 2**20
    del x
    assert backend.memory.peak_bytes() - base >= 4 * 2**20
    backend.memory.reset_peak()
    assert backend.memory.peak_bytes() < base + 4 * 2**20


def test_kernel_choice(monkeypatch):
    assert get_backend("numpy", kernels="reference").ops.name == "reference"
    assert get_backend("numpy", kernels="numba").ops.name == "numba"
    assert get_backend("array_api_strict").ops.name == "reference"
    monkeypatch.setenv("BRAINLIKE_KERNELS", "reference")
    assert get_backend("numpy").ops.name == "reference"
    with pytest.raises(BackendError, match="has no Numba kernels"):
        get_backend("array_api_strict", kernels="numba")


# ---- arrays in and out --------------------------------------------------------------------
@pytest.mark.parametrize("host", [np.float32(1.5), np.array(2.0), np.arange(3, dtype=np.int64),
                                  np.ones((2, 0, 3), np.float32),
                                  np.arange(6.0).reshape(2, 3).T],    # not C-contiguous
                         ids=["0-d float32", "0-d float64", "1-d int64", "empty 3-d", "2-d F"])
def test_asarray_keeps_shape_and_dtype_exactly(backend, host):
    x = backend.asarray(host)
    assert tuple(x.shape) == np.shape(host)
    back = backend.to_numpy(x)
    assert back.dtype == np.asarray(host).dtype
    np.testing.assert_array_equal(back, host)
    assert tuple(backend.asarray(host, backend.dtype("float32")).shape) == np.shape(host)


# ---- the Numba CPU kernels' settings ------------------------------------------------------
@pytest.mark.parametrize("kernels", ["numba", "auto"])
def test_parallel_min_work_must_be_a_number(monkeypatch, kernels):
    monkeypatch.setenv("BRAINLIKE_PARALLEL_MIN_WORK", "abc")
    with pytest.raises(BackendError) as err:
        get_backend("numpy", kernels=kernels)
    message = str(err.value)
    assert "BRAINLIKE_PARALLEL_MIN_WORK='abc' is not a number" in message
    assert "unset it" in message and "\n" not in message


NO_CACHE_SCRIPT = """
import sys
from brainlike_np.backends import BackendError, get_backend
try:
    print(get_backend("numpy", kernels=sys.argv[1]).ops.name)
except BackendError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def no_writable_numba_cache(tmp_path_factory):
    """A copy of the package where Numba can write no cache: NUMBA_CACHE_DIR and the
    user-wide cache lie under a regular file, and the package's own __pycache__ is a
    regular file (root can write anywhere, so permissions cannot deny it)."""
    root = Path(__file__).resolve().parents[1]
    packages = tmp_path_factory.mktemp("readonly") / "site"
    shutil.copytree(root / "brainlike_np", packages / "brainlike_np",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "backends", packages / "brainlike_np" / "backends",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (packages / "brainlike_np" / "backends" / "__pycache__").write_text("not a folder")
    env = dict(os.environ, PYTHONPATH=str(packages), PYTHONDONTWRITEBYTECODE="1",
               NUMBA_CACHE_DIR="/dev/null/numba", XDG_CACHE_HOME="/dev/null/cache")
    return packages, env


def run_without_cache(setup, kernels):
    packages, env = setup
    return subprocess.run([sys.executable, "-c", NO_CACHE_SCRIPT, kernels], env=env,
                          cwd=packages, capture_output=True, text=True, timeout=120)


def test_no_writable_numba_cache_falls_back_to_reference(no_writable_numba_cache):
    result = run_without_cache(no_writable_numba_cache, "auto")
    assert result.returncode == 0 and result.stdout.strip() == "reference", result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "NUMBA_CACHE_DIR" in lines[0] and "reference" in lines[0]


def test_no_writable_numba_cache_is_an_error_when_numba_is_asked_for(no_writable_numba_cache):
    result = run_without_cache(no_writable_numba_cache, "numba")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "writable" in lines[0] and "BRAINLIKE_KERNELS=reference" in lines[0]


# ---- CuPy specifics, against stubs (no GPU here) ------------------------------------------
class FakePool:
    """CuPy's memory pool and MemoryHook as far as the tracker uses them: hooks are kept
    by name, a second hook of the same name is refused, and every malloc and free is
    reported to the installed hooks (with CuPy's keyword arguments)."""

    def __init__(self):
        self.hooks, self.next_ptr = {}, 1
        pool = self

        class MemoryHook:
            name = "MemoryHook"

            def __enter__(self):
                if self.name in pool.hooks:
                    raise KeyError(f"memory hook {self.name} already exists")
                pool.hooks[self.name] = self
                return self

            def __exit__(self, *exc):
                del pool.hooks[self.name]

        self.cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
            memory_hook=types.SimpleNamespace(MemoryHook=MemoryHook)))

    def malloc(self, size):
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + 1
        for hook in list(self.hooks.values()):
            hook.malloc_postprocess(device_id=0, size=size, mem_size=size, mem_ptr=ptr,
                                    pmem_id=0)
        return ptr

    def free(self, ptr, size):
        for hook in list(self.hooks.values()):
            hook.free_postprocess(device_id=0, mem_size=size, mem_ptr=ptr, pmem_id=0)


def test_cupy_memory_tracking_two_backends_and_older_blocks():
    pool = FakePool()
    params = pool.malloc(1000)                       # before counting starts
    first, second = (MemoryTracker.for_cupy(pool.cupy) for _ in range(2))
    first.reset_peak()
    second.reset_peak()                              # a second backend in the same thread
    grads = pool.malloc(300)
    pool.free(params, 1000)                          # allocated before the reset: not counted
    assert first.current_bytes() == second.current_bytes() == 300
    pool.free(grads, 300)
    assert first.current_bytes() == 0 and first.peak_bytes() == 300
    first.stop()
    assert first.peak_bytes() == 300 and len(pool.hooks) == 1   # figures kept, hook gone
    second.stop()
    assert not pool.hooks


@pytest.mark.parametrize("name", ["numpy", "array_api_strict"])
def test_host_memory_figures_survive_stop(name):
    backend = get_backend(name)
    backend.memory.reset_peak()
    x = backend.zeros((256, 1024), backend.dtype("float32"))   # 1 MiB
    backend.memory.stop()
    del x
    assert backend.memory.peak_bytes() >= 2**20


def fake_cupy_with_gpus(count, events, matmul_error=None):
    """A stub CuPy with ``count`` GPUs that logs device choices and the matmul check."""
    def device(index=None):
        return types.SimpleNamespace(use=lambda: events.append(("use", index)))

    def ones(shape, dtype):
        if matmul_error:
            raise matmul_error
        events.append(("matmul", None))
        return np.ones(shape, np.float32)

    runtime = types.SimpleNamespace(getDeviceCount=lambda: count, getDevice=lambda: 0)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime, Device=device),
                                 ones=ones, float32=np.float32)


def test_cupy_device_out_of_range_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_with_gpus(2, []))
    with pytest.raises(BackendError, match="GPU 2 was asked for but 2 GPU") as err:
        get_backend("cupy", device=2)
    assert "\n" not in str(err.value)


def test_cupy_picks_the_device_before_checking_cublas(monkeypatch):
    events = []
    missing = ImportError("libcublas.so.12: cannot open shared object file")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_with_gpus(2, events, missing))
    with pytest.raises(BackendError, match=r"cuBLAS .* CuPy's \[ctk\] extra"):
        get_backend("cupy", device=1)
    assert events == [("use", 1)]


def test_nccl_that_cannot_load_is_one_line(monkeypatch):
    """cupy.cuda.nccl imports fine with available = False when libnccl is missing."""
    nccl = types.SimpleNamespace(available=False)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "cupy.cuda", types.SimpleNamespace(nccl=nccl))
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    with pytest.raises(DistributedError, match="NCCL library, which CuPy could not load") as err:
        nccl_module()
    assert "cuda12-distributed" in str(err.value) and "\n" not in str(err.value)


def test_connect_puts_each_rank_on_its_local_device(monkeypatch):
    """connect creates the backend on the rank's index on its node, then asks that
    backend for its communicator (the transport comes from the backend)."""
    from brainlike_np.backends import distributed

    made = []

    class FakeBackend:
        def communicator(self, MPI, world):
            return ("communicator", world)

    def fake_get_backend(name, kernels, device):
        made.append((name, kernels, device))
        return FakeBackend()

    node = types.SimpleNamespace(Get_rank=lambda: 3)
    world = types.SimpleNamespace(Split_type=lambda kind: node)
    mpi = types.SimpleNamespace(COMM_WORLD=world, COMM_TYPE_SHARED="shared")
    monkeypatch.setattr(distributed, "_mpi", lambda: mpi)
    monkeypatch.setattr(distributed, "get_backend", fake_get_backend)
    comm, backend = distributed.connect("cupy", "numba")
    assert made == [("cupy", "numba", 3)]
    assert comm == ("communicator", world) and isinstance(backend, FakeBackend)
