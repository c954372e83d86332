"""The backend layer: its modules' layout, choosing a backend, its errors, arrays in and
out, host RNG, memory accounting, and the CuPy/NCCL specifics against stubs."""

import ast
import graphlib
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import brainlike_np.backends as backends_face
from brainlike_np.backends import BACKEND_NAMES, BackendError, backend_class, get_backend
from brainlike_np.backends.distributed import DistributedError, nccl_module
from brainlike_np.backends.errors import warn_once
from brainlike_np.backends.kernel_choice import importing_kernels
from brainlike_np.backends.memory import MemoryTracker


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "brainlike_np.backends"


# ---- the package's layout: leaf modules below a face that only hands names on -------------
def imports(path: Path, package: str):
    """(absolute module name, the ImportFrom node or None) of every import in ``path``,
    at the top or inside functions (a lazy import is still a dependency); ``package``:
    the package ``path`` belongs to, for relative imports."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1] if node.level else []
            yield ".".join(base + ([node.module] if node.module else [])), node


def module_name(path: Path) -> str:
    """``path``'s module below backends/, dotted ("backend", "numba_cpu.ops"; a target's
    folder is its ``__init__``: "numba_cpu"); the package itself is "__init__"."""
    parts = path.relative_to(ROOT / "backends").with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts) or "__init__"


def backends_imports(path: Path) -> set[str]:
    """The backends/ modules ``path`` (in backends/) imports; "__init__" for the package."""
    folder = path.relative_to(ROOT / "backends").parent.parts
    found = set()
    for name, _ in imports(path, ".".join((PACKAGE, *folder))):
        if name == PACKAGE:
            found.add("__init__")
        elif name.startswith(PACKAGE + "."):
            found.add(name.removeprefix(PACKAGE + "."))
    return found


def test_no_backends_module_imports_the_package_or_loops():
    graph = {module_name(path): backends_imports(path)
             for path in (ROOT / "backends").rglob("*.py") if module_name(path) != "__init__"}
    assert "backend" in graph["distributed"] and "numba_cuda" in graph["backend"]  # lazy too
    assert "reference.attention" in graph["numba_cpu.attention"]    # across target folders
    assert not [name for name, imported in graph.items() if "__init__" in imported]
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"backends/ modules import each other in a loop: {exc.args[1]}")
    assert set(order) >= set(graph)


def test_the_face_only_hands_names_on():
    """backends/__init__.py: a docstring, imports from its own modules, and __all__ (every
    name it imports, and no other)."""
    tree = ast.parse((ROOT / "backends" / "__init__.py").read_text())
    docstring, *rest = tree.body
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    imports = [node for node in rest if isinstance(node, ast.ImportFrom)]
    assert all(node.level == 1 and node.module for node in imports)
    (all_assignment,) = [node for node in rest if not isinstance(node, ast.ImportFrom)]
    assert [t.id for t in all_assignment.targets] == ["__all__"]
    handed_on = {alias.asname or alias.name for node in imports for alias in node.names}
    assert sorted(backends_face.__all__) == sorted(handed_on)
    assert all(hasattr(backends_face, name) for name in backends_face.__all__)


def names_imported_from_the_package(path: Path) -> set[str]:
    """Names ``path`` imports from brainlike_np.backends itself."""
    package = ".".join(path.relative_to(ROOT).parent.parts)    # brainlike_np.models, ...
    return {alias.name for name, node in imports(path, package) if name == PACKAGE and node
            for alias in node.names}


def test_every_name_the_code_imports_from_the_package_is_handed_on():
    files = [p for folder in ("brainlike_np", "bench", "tests")
             for p in (ROOT / folder).rglob("*.py")]
    submodules = {path.name for path in (ROOT / "backends").iterdir()
                  if path.suffix == ".py" or (path / "__init__.py").exists()}
    submodules = {name.removesuffix(".py") for name in submodules}
    used = set().union(*(names_imported_from_the_package(path) for path in files))
    assert {"get_backend", "host_free_memory_bytes", "quiet_float_warnings"} <= used
    assert not used - set(backends_face.__all__) - submodules


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


def test_every_backend_class_has_its_name_listed():
    from brainlike_np.backends.backend import BACKENDS
    assert sorted(BACKENDS) == sorted(BACKEND_NAMES)
    assert all(backend_class(name).name == name for name in BACKEND_NAMES)


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
    if backend.memory.mode == "resident":
        pytest.skip("resident memory: the allocator may reuse pages this process holds; "
                    "tests/test_torch_backend.py checks it in a fresh process")
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
    with pytest.raises(BackendError, match="has no numba kernels; choose kernels 'auto' or 'reference'"):
        get_backend("array_api_strict", kernels="numba")
    with pytest.raises(BackendError, match="has no native kernels; choose kernels 'auto' or 'numba' or"):
        get_backend("numpy", kernels="native")


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
    regular file in every folder (root can write anywhere, so permissions cannot deny it)."""
    root = Path(__file__).resolve().parents[1]
    packages = tmp_path_factory.mktemp("readonly") / "site"
    shutil.copytree(root / "brainlike_np", packages / "brainlike_np",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "backends", packages / "brainlike_np" / "backends",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [packages / "brainlike_np" / "backends",
                   *(packages / "brainlike_np" / "backends").glob("*/")]:
        (folder / "__pycache__").write_text("not a folder")
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
    """CuPy's memory pool and MemoryHook as far as the trackers use them.

    The pool keeps freed blocks for reuse (a block of the same size is reused first) until
    ``free_all_blocks()``; ``used_bytes()`` counts live blocks, ``total_bytes()`` live and
    kept ones. Hooks are kept by name, a second hook of the same name is refused, and
    every malloc and free is reported to the installed hooks (with CuPy's keywords)."""

    def __init__(self):
        self.hooks, self.next_ptr = {}, 1
        self.live, self.kept = {}, []            # ptr -> size; sizes of freed, kept blocks
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

        self.cupy = types.SimpleNamespace(
            cuda=types.SimpleNamespace(memory_hook=types.SimpleNamespace(MemoryHook=MemoryHook)),
            get_default_memory_pool=lambda: self)

    def malloc(self, size):
        if size in self.kept:
            self.kept.remove(size)
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + 1
        self.live[ptr] = size
        for hook in list(self.hooks.values()):
            hook.malloc_postprocess(device_id=0, size=size, mem_size=size, mem_ptr=ptr,
                                    pmem_id=0)
        return ptr

    def free(self, ptr, size):
        self.kept.append(self.live.pop(ptr))
        for hook in list(self.hooks.values()):
            hook.free_postprocess(device_id=0, mem_size=size, mem_ptr=ptr, pmem_id=0)

    def used_bytes(self):
        return sum(self.live.values())

    def total_bytes(self):
        return self.used_bytes() + sum(self.kept)

    def free_all_blocks(self):
        self.kept = []


def test_cupy_exact_memory_tracking_two_backends_and_older_blocks():
    pool = FakePool()
    params = pool.malloc(1000)                       # before counting starts
    first, second = (MemoryTracker.for_cupy(pool.cupy, exact_peak=True) for _ in range(2))
    assert first.mode == "hook"
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


def test_cupy_default_memory_tracking_samples_the_pool_with_no_hook():
    """A step's temporaries are freed before the trainer reads the peak: the pool still
    holds their blocks, so the sampled peak sees them; nothing hooks the allocations."""
    pool = FakePool()
    params = pool.malloc(1000)
    old = pool.malloc(500)
    pool.free(old, 500)                              # kept by the pool from before the run
    memory = MemoryTracker.for_cupy(pool.cupy)
    assert memory.mode == "pool"
    memory.reset_peak()                              # hands the kept 500 back
    assert not pool.hooks and memory.peak_bytes() == memory.current_bytes() == 1000
    for _ in range(3):                               # three steps, the same temporaries
        a, b = pool.malloc(300), pool.malloc(200)    # peak of the step: 1500
        pool.free(a, 300)
        pool.free(b, 200)
        assert memory.current_bytes() == 1000 and memory.peak_bytes() == 1500
    memory.stop()
    pool.free(params, 1000)
    pool.free_all_blocks()
    assert memory.current_bytes() == 1000 and memory.peak_bytes() == 1500   # kept at stop
    memory.reset_peak()
    assert memory.peak_bytes() == 0


@pytest.mark.parametrize("name", ["numpy", "array_api_strict"])
def test_host_memory_figures_survive_stop(name):
    backend = get_backend(name)
    backend.memory.reset_peak()
    x = backend.zeros((256, 1024), backend.dtype("float32"))   # 1 MiB
    backend.memory.stop()
    del x
    assert backend.memory.peak_bytes() >= 2**20


def fake_cupy_with_gpus(count, events, matmul_error=None):
    """A stub CuPy with ``count`` GPUs that logs device choices and the matmul check, with
    a memory pool, streams and NCCL (``cuda.nccl``, whose communicators log their ranks)."""
    def device(index=None):
        return types.SimpleNamespace(use=lambda: events.append(("use", index)))

    def ones(shape, dtype):
        if matmul_error:
            raise matmul_error
        events.append(("matmul", None))
        return np.ones(shape, np.float32)

    def nccl_communicator(size, unique_id, rank):
        events.append(("nccl", rank, size))

    nccl = types.SimpleNamespace(available=True, get_unique_id=lambda: "id",
                                 NcclCommunicator=nccl_communicator)
    pool = FakePool()
    runtime = types.SimpleNamespace(getDeviceCount=lambda: count, getDevice=lambda: 0)
    cuda = types.SimpleNamespace(runtime=runtime, Device=device, nccl=nccl,
                                 memory_hook=pool.cupy.cuda.memory_hook)
    return types.SimpleNamespace(cuda=cuda, ones=ones, float32=np.float32,
                                 get_default_memory_pool=lambda: pool)


def install_fake_cupy(monkeypatch, cupy):
    """``cupy``, ``cupy.cuda``, ``cupy.cuda.nccl`` and ``array_api_compat.cupy`` (only
    handed on: the reference ops keep it) importable as stubs."""
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", cupy.cuda.nccl)
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy",
                        types.ModuleType("array_api_compat.cupy"))


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


def test_cupy_backend_memory_is_sampled_unless_an_exact_peak_is_asked_for(monkeypatch):
    install_fake_cupy(monkeypatch, fake_cupy_with_gpus(1, []))
    backend = get_backend("cupy", kernels="reference")
    assert backend.memory.mode == "pool"
    assert backend.memory_tracker(exact_peak=True).mode == "hook"


def test_nccl_that_cannot_load_is_one_line(monkeypatch):
    """cupy.cuda.nccl imports fine with available = False when libnccl is missing."""
    nccl = types.SimpleNamespace(available=False)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "cupy.cuda", types.SimpleNamespace(nccl=nccl))
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    with pytest.raises(DistributedError, match="NCCL library, which CuPy could not load") as err:
        nccl_module()
    assert "cuda12-distributed" in str(err.value) and "\n" not in str(err.value)


# ---- the kernels' import failing: one line, never a traceback -----------------------------
def kernel_import_fails(monkeypatch, module, error):
    """From now on (in this test) importing ``module`` raises ``error``, and the kernel
    modules are imported afresh."""
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == module:
                raise error

    for name in (module, "brainlike_np.backends.numba_cuda.target",
                 "brainlike_np.backends.numba_cuda"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    warn_once.cache_clear()          # "once" per process: this test's warning is new


def not_installed(module):
    return module, ModuleNotFoundError(f"No module named '{module}'", name=module)


KERNEL_IMPORT_FAILURES = {
    # numba-cuda not installed, Numba without a CUDA target
    "no numba.cuda": (*not_installed("numba.cuda"), "numba.cuda is not installed"),
    # numba-cuda not installed, Numba's old built-in target (which has no numba.cuda.core)
    "built-in numba.cuda": (*not_installed("numba.cuda.core"), "numba.cuda.core is not"),
    # installed, but a library it loads is of another version
    "not importable": ("numba.cuda.core", ImportError(
        "cannot import name 'nvvm' from 'cuda.bindings'", name="cuda.bindings"),
        "cannot import name 'nvvm'"),
}


@pytest.mark.parametrize("failure", KERNEL_IMPORT_FAILURES.values(),
                         ids=KERNEL_IMPORT_FAILURES.keys())
def test_auto_on_cupy_without_numba_cuda_says_so_once(monkeypatch, capsys, failure):
    module, error, says = failure
    install_fake_cupy(monkeypatch, fake_cupy_with_gpus(1, []))
    kernel_import_fails(monkeypatch, module, error)
    for _ in range(2):
        assert get_backend("cupy", kernels="auto").ops.name == "reference"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert ".[cuda12]" in lines[0] and "BRAINLIKE_KERNELS=reference" in lines[0]


@pytest.mark.parametrize("failure", KERNEL_IMPORT_FAILURES.values(),
                         ids=KERNEL_IMPORT_FAILURES.keys())
def test_numba_kernels_on_cupy_without_numba_cuda_are_a_one_line_error(monkeypatch, failure):
    module, error, says = failure
    install_fake_cupy(monkeypatch, fake_cupy_with_gpus(1, []))
    kernel_import_fails(monkeypatch, module, error)
    with pytest.raises(BackendError) as err:
        get_backend("cupy", kernels="numba")
    message = str(err.value)
    assert says in message and ".[cuda12]" in message and "\n" not in message


def test_an_import_error_in_this_package_is_not_hidden():
    """A broken import of the package's own modules is a bug: it surfaces as it is."""
    with pytest.raises(ImportError, match="cannot import name 'x'"):
        with importing_kernels("pip install ..."):
            raise ImportError("cannot import name 'x'", name="brainlike_np.backends.errors")


# ---- data-parallel: each rank's device and transport --------------------------------------
def fake_mpi(local_rank, size=4):
    """mpi4py's MPI as connect() uses it: rank ``local_rank`` of ``size`` on one node."""
    node = types.SimpleNamespace(Get_rank=lambda: local_rank)
    world = types.SimpleNamespace(Split_type=lambda kind: node, Get_rank=lambda: local_rank,
                                  Get_size=lambda: size, bcast=lambda value, root: value)
    return types.SimpleNamespace(COMM_WORLD=world, COMM_TYPE_SHARED="shared")


@pytest.mark.parametrize("visible, gpus, local_rank, device", [
    ("3", 1, 2, 0),                  # Slurm --gpus-per-task=1: the rank's own GPU
    ("GPU-8f2e31a4", 1, 5, 0),       # ... named by UUID
    (None, 4, 2, 2),                 # every GPU of the node visible: the rank's index
    ("0,1", 2, 1, 1),
])
def test_connect_puts_each_rank_on_its_device_with_nccl(monkeypatch, visible, gpus,
                                                        local_rank, device):
    from brainlike_np.backends import distributed

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    events = []
    install_fake_cupy(monkeypatch, fake_cupy_with_gpus(gpus, events))
    monkeypatch.setattr(distributed, "_mpi", lambda: fake_mpi(local_rank))
    comm, backend = distributed.connect("cupy", "reference")
    assert backend.name == "cupy" and isinstance(comm, distributed.NcclCommunicator)
    assert events == [("use", device), ("matmul", None), ("nccl", local_rank, 4)]


def test_connect_on_a_host_backend_reduces_with_mpi(monkeypatch):
    from brainlike_np.backends import distributed

    monkeypatch.setattr(distributed, "_mpi", lambda: fake_mpi(1))
    comm, backend = distributed.connect("numpy", "reference")
    assert backend.name == "numpy" and type(comm) is distributed.MpiCommunicator
    assert (comm.rank, comm.size) == (1, 4)


# ---- one Numba stream per CuPy stream -----------------------------------------------------
def test_kernels_launch_on_one_numba_stream_per_cupy_stream(monkeypatch):
    """A Numba launch configuration is cached per stream object: the same CuPy stream
    must give the same Numba stream, made once."""
    cuda_target = pytest.importorskip("brainlike_np.backends.numba_cuda.target")
    if cuda_target.SIMULATOR:
        pytest.skip("the simulator launches on its default stream")
    now = {"ptr": 0, "device": 0}
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_current_stream=lambda: types.SimpleNamespace(ptr=now["ptr"]),
        runtime=types.SimpleNamespace(getDevice=lambda: now["device"])))
    made = []
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_target.cuda, "external_stream",
                        lambda ptr: made.append(ptr) or types.SimpleNamespace(ptr=ptr))
    monkeypatch.setattr(cuda_target, "_streams", {})
    default = cuda_target.current_stream()
    assert cuda_target.current_stream() is default
    now["ptr"] = 0x7F00
    other = cuda_target.current_stream()
    now["ptr"] = 0
    assert other is not default and cuda_target.current_stream() is default
    now["device"] = 1                                # stream 0 of another GPU
    assert cuda_target.current_stream() is not default
    assert made == [0, 0x7F00, 0]


def test_importing_the_package_and_training_on_numpy_loads_no_other_array_library():
    """``import brainlike_np`` stays light: PyTorch, JAX and CuPy load only when their
    backend is asked for."""
    code = ("import sys, brainlike_np, brainlike_np.train, brainlike_np.generate\n"
            "from brainlike_np.backends import BACKEND_NAMES, backend_class, get_backend\n"
            "get_backend('numpy'); [backend_class(n) for n in BACKEND_NAMES]\n"
            "print(sorted(m for m in ('torch', 'jax', 'cupy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, BRAINLIKE_BACKEND="numpy"))
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
