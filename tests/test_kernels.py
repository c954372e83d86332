"""The Numba kernels against ReferenceOps: CPU kernels here, CUDA kernels in the
CUDA simulator (tests/cudasim_checks.py, in a subprocess).

Tolerances (sums in a different order than the reference's float64 running sum):
float32 rtol = atol = 1e-5, float64 rtol = atol = 1e-12; gathers and top-k are exact.
"""

import os
import subprocess
import sys
from pathlib import Path

import array_api_compat.numpy as xp
import numpy as np
import pytest

from brainlike_np.backends import get_backend
from brainlike_np.backends.numba_cpu import NumbaCpuOps
from brainlike_np.backends.reference import ReferenceOps

REF = ReferenceOps(xp)
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(params=["serial", "parallel"])
def ops(request):
    return NumbaCpuOps(parallel_min_work=float("inf") if request.param == "serial" else 0)


def normal(rng, shape, dtype_name):
    return rng.standard_normal(shape).astype(dtype_name)


def assert_close(got, want, dtype_name):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL[dtype_name])


# ---- gather / scatter-add ---------------------------------------------------------
@pytest.mark.parametrize("feature_shape", [(), (6,), (3, 4)])
def test_gather_rows_matches_reference(ops, rng, dtype_name, id_dtype, feature_shape):
    table = normal(rng, (20,) + feature_shape, dtype_name)
    ids = rng.integers(0, 20, (5, 7)).astype(id_dtype)                  # repeats
    got = ops.gather_rows(table, ids)
    assert np.array_equal(got, REF.gather_rows(table, ids))
    assert got.shape == (5, 7) + feature_shape


def test_gather_rows_empty(ops, rng, id_dtype):
    table = normal(rng, (4, 3), "float32")
    got = ops.gather_rows(table, np.zeros((2, 0), dtype=id_dtype))
    assert got.shape == (2, 0, 3)


@pytest.mark.parametrize("n, n_rows", [(500, 7), (30, 100), (1, 1)])
def test_scatter_add_rows_matches_reference(ops, rng, dtype_name, id_dtype, n, n_rows):
    ids = rng.integers(0, n_rows, n).astype(id_dtype)
    rows = normal(rng, (n, 9), dtype_name)
    assert_close(ops.scatter_add_rows(ids, rows, n_rows),
                 REF.scatter_add_rows(ids, rows, n_rows), dtype_name)


def test_scatter_add_rows_empty(ops, id_dtype):
    got = ops.scatter_add_rows(np.zeros(0, id_dtype), np.zeros((0, 3), np.float32), 5)
    assert got.shape == (5, 3) and got.dtype == np.float32 and not got.any()


def test_scatter_add_rows_serial_equals_parallel(rng):
    ids = rng.integers(0, 13, 4000)
    rows = normal(rng, (4000, 17), "float32")
    serial = NumbaCpuOps(parallel_min_work=float("inf")).scatter_add_rows(ids, rows, 13)
    parallel = NumbaCpuOps(parallel_min_work=0).scatter_add_rows(ids, rows, 13)
    assert np.array_equal(serial, parallel)


@pytest.mark.parametrize("bad", [-1, 10])
def test_ids_out_of_range_raise(ops, rng, id_dtype, bad):
    ids = np.array([0, 3, bad, 2], dtype=id_dtype)
    with pytest.raises(ValueError, match="out of range"):
        ops.gather_rows(normal(rng, (10, 2), "float32"), ids)
    with pytest.raises(ValueError, match="out of range"):
        ops.scatter_add_rows(ids, normal(rng, (4, 2), "float32"), 10)


# ---- top-k --------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 64])
def test_topk_matches_reference(ops, rng, dtype_name, k):
    z = normal(rng, (6, 64), dtype_name)
    z[1] = np.round(z[1])            # many ties
    z[2] = 0.5                       # all tied
    z[3, [4, 9, 40]] = np.nan        # NaN ranks first, as in a stable descending sort
    z[4] = np.arange(64)             # ascending: every element enters the heap
    got = ops.topk(z, k)
    assert got.dtype == np.int64
    assert np.array_equal(got, REF.topk(z, k))


def test_topk_empty_batch_and_bad_k(ops):
    assert ops.topk(np.zeros((0, 8), np.float32), 3).shape == (0, 3)
    for k in (-1, 9):
        with pytest.raises(ValueError):
            ops.topk(np.zeros((2, 8), np.float32), k)


# ---- gathered, position-weighted sums ------------------------------------------------
def weighted_sum_inputs(rng, dtype_name, id_dtype, B=4, T=10, R=30, F=64, T_max=12):
    """table [R, F], ids [B, T] with repeats, weights [T_max, F] with T_max > T."""
    table, weights = normal(rng, (R, F), dtype_name), normal(rng, (T_max, F), dtype_name)
    ids = rng.integers(0, R, (B, T)).astype(id_dtype)
    return table, ids, weights


def test_gather_weighted_sum_matches_reference(ops, rng, dtype_name, id_dtype):
    table, ids, weights = weighted_sum_inputs(rng, dtype_name, id_dtype)
    got = ops.gather_weighted_sum(table, ids, weights)
    assert_close(got, REF.gather_weighted_sum(table, ids, weights), dtype_name)
    b, t = 1, np.arange(10)                                    # one sample, by hand
    np.testing.assert_allclose(got[b], (table[ids[b]] * weights[t]).sum(0), **TOL[dtype_name])


def test_gather_weighted_sum_empty_batch(ops, rng, id_dtype):
    table, ids, weights = weighted_sum_inputs(rng, "float32", id_dtype, B=0)
    assert ops.gather_weighted_sum(table, ids, weights).shape == (0, 64)


@pytest.mark.parametrize("k", [1, 8, 64])
def test_gather_weighted_sum_backward_matches_reference(ops, rng, dtype_name, id_dtype, k):
    table, ids, weights = weighted_sum_inputs(rng, dtype_name, id_dtype)
    cols = REF.topk(normal(rng, (4, 64), "float64"), k).astype(id_dtype)   # [B, k]
    dout = normal(rng, (4, k), dtype_name)
    for got, want in zip(ops.gather_weighted_sum_backward(dout, cols, table, ids, weights),
                         REF.gather_weighted_sum_backward(dout, cols, table, ids, weights)):
        assert_close(got, want, dtype_name)


def test_gather_weighted_sum_backward_is_the_gradient(rng, id_dtype):
    """The reference backward against the gradient of sum(dout * out[b, cols]) by hand."""
    table, ids, weights = weighted_sum_inputs(rng, "float64", id_dtype, B=2, T=3, R=5,
                                              F=6, T_max=4)
    cols = np.array([[0, 4], [4, 2]], dtype=id_dtype)
    dout = normal(rng, (2, 2), "float64")
    dtable, dweights = np.zeros_like(table), np.zeros_like(weights)
    for b in range(2):
        for t in range(3):
            for j in range(2):
                dtable[ids[b, t], cols[b, j]] += dout[b, j] * weights[t, cols[b, j]]
                dweights[t, cols[b, j]] += dout[b, j] * table[ids[b, t], cols[b, j]]
    got = REF.gather_weighted_sum_backward(dout, cols, table, ids, weights)
    np.testing.assert_allclose(got[0], dtable, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], dweights, rtol=1e-12, atol=1e-12)


def test_gather_weighted_sum_backward_repeated_columns(ops, rng, id_dtype):
    table, ids, weights = weighted_sum_inputs(rng, "float64", id_dtype)
    cols = rng.integers(0, 64, (4, 20)).astype(id_dtype)
    cols[:, 1] = cols[:, 0]                                               # a repeat per row
    dout = normal(rng, (4, 20), "float64")
    for got, want in zip(ops.gather_weighted_sum_backward(dout, cols, table, ids, weights),
                         REF.gather_weighted_sum_backward(dout, cols, table, ids, weights)):
        assert_close(got, want, "float64")


def test_gather_weighted_sum_backward_empty_batch(ops, rng, id_dtype):
    table, ids, weights = weighted_sum_inputs(rng, "float32", id_dtype, B=0)
    dtable, dweights = ops.gather_weighted_sum_backward(
        np.zeros((0, 5), np.float32), np.zeros((0, 5), id_dtype), table, ids, weights)
    assert dtable.shape == table.shape and dweights.shape == weights.shape
    assert not dtable.any() and not dweights.any()


def test_gather_weighted_sum_backward_serial_equals_parallel(rng):
    table, ids, weights = weighted_sum_inputs(rng, "float32", "int64", B=16, T=12)
    cols = rng.integers(0, 64, (16, 32))
    dout = normal(rng, (16, 32), "float32")
    serial = NumbaCpuOps(parallel_min_work=float("inf")).gather_weighted_sum_backward(
        dout, cols, table, ids, weights)
    parallel = NumbaCpuOps(parallel_min_work=0).gather_weighted_sum_backward(
        dout, cols, table, ids, weights)
    for s, p in zip(serial, parallel):
        assert np.array_equal(s, p)


def test_weighted_sum_ids_out_of_range_raise(ops, rng):
    table, ids, weights = weighted_sum_inputs(rng, "float32", "int64")
    ids[1, 2] = table.shape[0]
    with pytest.raises(ValueError, match="out of range"):
        ops.gather_weighted_sum(table, ids, weights)
    cols = np.array([[0, 64]] * 4)
    with pytest.raises(ValueError, match="out of range"):
        ops.gather_weighted_sum_backward(np.ones((4, 2), np.float32), cols, table,
                                         ids % table.shape[0], weights)


@pytest.mark.parametrize("impl", ["reference", "numba"])
def test_weighted_sum_shape_mismatch_says_which(impl, rng):
    ops = REF if impl == "reference" else NumbaCpuOps()
    table, ids, weights = weighted_sum_inputs(rng, "float32", "int64", T=10, T_max=12)
    with pytest.raises(ValueError, match="do not match"):
        ops.gather_weighted_sum(table, ids, weights[:, :5])
    with pytest.raises(ValueError, match=r"T <= 8"):
        ops.gather_weighted_sum(table, ids, weights[:8])


def test_numpy_backend_uses_numba_kernels():
    assert get_backend("numpy", kernels="numba").ops.name == "numba"


# ---- CUDA kernels in the simulator ---------------------------------------------------
def test_cuda_kernels_in_simulator():
    """tests/cudasim_checks.py in a fresh interpreter with NUMBA_ENABLE_CUDASIM=1."""
    script = Path(__file__).with_name("cudasim_checks.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_cuda_kernel_is_cached_on_disk():
    """cache=True on every kernel, so a new process loads them instead of compiling."""
    numba_cuda = pytest.importorskip("brainlike_np.backends.numba_cuda.ops")
    from numba.cuda.core.caching import NullCache
    from numba.cuda.dispatcher import CUDADispatcher

    kernels = {name: obj for name, obj in vars(numba_cuda).items()
               if isinstance(obj, CUDADispatcher) and not obj.targetoptions["device"]}
    assert len(kernels) >= 6
    assert [name for name, k in kernels.items() if isinstance(k._cache, NullCache)] == []
