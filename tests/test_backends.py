"""The backend layer: choosing a backend, its errors, host RNG, memory accounting."""

import sys
import types

import numpy as np
import pytest

from brainlike_np.backends import BACKEND_NAMES, BackendError, get_backend


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
