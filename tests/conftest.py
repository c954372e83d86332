"""The cross-backend test matrix: every test that takes ``backend`` runs on numpy,
array-api-strict, torch and jax (where installed) and (where a GPU is usable) cupy."""

import importlib.util
from pathlib import Path

import pytest

from brainlike_np.backends import BACKEND_NAMES, backend_is_available, get_backend

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench_module(name: str):
    """``bench/<name>.py`` loaded as a module (``bench/`` holds scripts, not a package):
    ``from conftest import load_bench_module``."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Backends that run a test op by op slowly (JAX dispatches, and first compiles, every
# operation): on them a test marked `combinatorial` (a matrix over the model's options, each
# point a gradient check) runs its first point only. The math is the same on every backend,
# their agreement with numpy is checked to 1e-12 in float64, and each gradient check runs
# on them at least once.
SLOW_OP_BY_OP = ("jax",)


def pytest_collection_modifyitems(config, items):
    first_points = set()
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend") if callspec else None
        if item.get_closest_marker("combinatorial") is None or name not in SLOW_OP_BY_OP:
            continue
        test = (item.path, item.originalname, name)
        if test in first_points:
            item.add_marker(pytest.mark.skip(
                reason=f"combinatorial on {name}: its first point only (see conftest.py)"))
        first_points.add(test)


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    ok, reason = backend_is_available(request.param)
    if not ok:
        pytest.skip(reason)
    if request.param == "torch":
        single_threaded_torch()
    return get_backend(request.param)


def single_threaded_torch():
    """PyTorch on one thread: the tests' tensors are tiny, where its thread pool only adds
    a wait at each op's barrier, and on a loaded machine a wait for a descheduled thread
    (milliseconds an op: a test ran 50x slower)."""
    import torch
    torch.set_num_threads(1)


@pytest.fixture(params=["float32", "float64"])
def dtype_name(request):
    return request.param
