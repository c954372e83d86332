"""The cross-backend test matrix: every test that takes ``backend`` runs on numpy,
array-api-strict, torch and jax (where installed) and (where a GPU is usable) cupy."""

import importlib.util
import signal
from pathlib import Path

import numpy as np
import pytest

from brainlike_np.backends import BACKEND_NAMES, backend_is_available, get_backend

BENCH = Path(__file__).resolve().parent.parent / "bench"
# a small Python-like corpus that the trainer's tests train on (``corpus_file``)
CORPUS_TEXT = b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 0\n" * 60


def load_bench_module(name: str):
    """``bench/<name>.py`` loaded as a module (``bench/`` holds scripts, not a package):
    ``from conftest import load_bench_module``."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Backends that run a test op by op slowly (JAX dispatches, and first compiles, every
# operation): the default run leaves their rows of the matrix (every test that takes the
# `backend` fixture) to `pytest --slow-backends`, which runs those rows only. CI runs both,
# so that together they are the whole matrix on every backend; the default run still
# checks jax through tests/test_jax.py (its ops, its compiled step against numpy's, the
# trainer and the generator).
SLOW_OP_BY_OP = ("jax",)


def pytest_addoption(parser):
    parser.addoption("--slow-backends", action="store_true",
                     help="only the test matrix's rows on the backends slow op by op "
                          f"({', '.join(SLOW_OP_BY_OP)}), which the default run leaves out")


def pytest_collection_modifyitems(config, items):
    slow, others = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend") if callspec else None
        (slow if name in SLOW_OP_BY_OP else others).append(item)
    keep, leave_out = (slow, others) if config.getoption("slow_backends") else (others, slow)
    if leave_out:
        config.hook.pytest_deselected(items=leave_out)
        items[:] = keep


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """A background job (`pytest &`, nohup, CI runners) starts with SIGINT ignored, and
    the trainer keeps an ignored signal ignored (stop.py): tests that press Ctrl-C get
    Python's handler, as in a terminal."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


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


@pytest.fixture
def corpus_file(tmp_path):
    """CORPUS_TEXT as a file, its path a str (as --data takes it)."""
    path = tmp_path / "corpus.txt"
    path.write_bytes(CORPUS_TEXT)
    return str(path)


@pytest.fixture(params=["int32", "int64"])
def id_dtype(request):
    """The ids' width: results must not depend on it."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(params=["float32", "float64"])
def dtype_name(request):
    return request.param
