"""The Numba CUDA kernels checked in the CUDA simulator, on tiny NumPy arrays.

Run as a script (``tests/test_kernels.py`` does, in a subprocess): the simulator is
chosen when ``numba.cuda`` is first imported, and a test session has imported it
already for real hardware. Exits non-zero on the first failed check.
"""

import os
import warnings

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before anything imports numba.cuda

import array_api_compat.numpy as xp  # noqa: E402
import numpy as np  # noqa: E402

from brainlike_np.backends import KernelsUnavailable  # noqa: E402
from brainlike_np.backends.numba_cuda import ops as kernels  # noqa: E402
from brainlike_np.backends.numba_cuda.target import SIMULATOR, cuda_config, current_stream  # noqa: E402
from brainlike_np.backends.numba_cpu import NumbaCpuOps  # noqa: E402
from brainlike_np.backends.reference import ReferenceOps  # noqa: E402

REF = ReferenceOps(xp)
CPU = NumbaCpuOps()
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
DTYPES = [(np.float32, np.int32), (np.float64, np.int64)]  # each float and id width once


def check_launch_helpers(rng):
    """Each launch helper against the reference, outputs allocated here."""
    stream = current_stream()
    for dtype, id_dtype in DTYPES:
        table = rng.standard_normal((9, 5)).astype(dtype)                 # [R, F]
        ids = rng.integers(0, 9, 7).astype(id_dtype)                      # [n], repeats
        out = np.empty((7, 5), dtype)
        kernels.launch_gather_rows(table, ids, out, stream)
        assert np.array_equal(out, REF.gather_rows(table, ids)), "gather_rows"

        rows = rng.standard_normal((12, 3)).astype(dtype)                 # [n, F]
        ids = rng.integers(0, 4, 12).astype(id_dtype)
        expected = REF.scatter_add_rows(ids, rows, 5)
        out = np.zeros((5, 3), dtype)
        kernels.launch_scatter_add_rows(ids, rows, out, stream)
        np.testing.assert_allclose(out, expected, **TOL[dtype], err_msg="atomic scatter")
        order, starts = kernels.segment_bounds(xp, ids, 5)
        out = np.zeros((5, 3), dtype)
        kernels.launch_segment_sum_rows(order, starts, rows, out, stream)
        assert np.array_equal(out, CPU.scatter_add_rows(ids, rows, 5)), "segment sum"

        table, ids, weights = _weighted_sum_inputs(rng, dtype, id_dtype)
        out = np.zeros((ids.shape[0], table.shape[1]), dtype)
        kernels.launch_gather_weighted_sum(table, weights, ids, out, stream)
        np.testing.assert_allclose(out, REF.gather_weighted_sum(table, ids, weights),
                                   **TOL[dtype], err_msg="gather_weighted_sum")
        dout, cols = _backward_inputs(rng, dtype, id_dtype, ids.shape[0], table.shape[1])
        dtable, dweights = np.zeros_like(table), np.zeros_like(weights)
        kernels.launch_gather_weighted_sum_backward(dout, cols, table, weights, ids, dtable,
                                                    dweights, stream)
        want = REF.gather_weighted_sum_backward(dout, cols, table, ids, weights)
        for got, w in zip((dtable, dweights), want):
            np.testing.assert_allclose(got, w, **TOL[dtype],
                                       err_msg="gather_weighted_sum_backward")


def check_ops(rng):
    """NumbaCudaOps end to end (NumPy allocating), atomic and deterministic modes."""
    for deterministic in (False, True):
        ops = kernels.NumbaCudaOps(deterministic=deterministic, array_module=np)
        dtype, id_dtype = DTYPES[deterministic]
        tol = TOL[dtype]
        table = rng.standard_normal((6, 2, 2)).astype(dtype)
        ids = rng.integers(0, 6, (2, 3)).astype(id_dtype)
        assert np.array_equal(ops.gather_rows(table, ids), REF.gather_rows(table, ids))

        rows = rng.standard_normal((10, 3)).astype(dtype)
        ids = rng.integers(0, 3, 10).astype(id_dtype)
        got = ops.scatter_add_rows(ids, rows, 4)
        np.testing.assert_allclose(got, REF.scatter_add_rows(ids, rows, 4), **tol)
        empty = ops.scatter_add_rows(ids[:0], rows[:0], 4)
        assert empty.shape == (4, 3) and not empty.any()

        z = np.round(rng.standard_normal((3, 8)), 1).astype(dtype)       # ties
        for k in (1, 3, 8):
            assert np.array_equal(ops.topk(z, k), REF.topk(z, k)), f"topk k={k}"

        table, ids, weights = _weighted_sum_inputs(rng, dtype, id_dtype)
        np.testing.assert_allclose(ops.gather_weighted_sum(table, ids, weights),
                                   REF.gather_weighted_sum(table, ids, weights), **tol)
        assert ops.gather_weighted_sum(table, ids[:0], weights).shape == (0, table.shape[1])
        dout, cols = _backward_inputs(rng, dtype, id_dtype, ids.shape[0], table.shape[1])
        got = ops.gather_weighted_sum_backward(dout, cols, table, ids, weights)
        for g, want in zip(got, REF.gather_weighted_sum_backward(dout, cols, table, ids,
                                                                 weights)):
            np.testing.assert_allclose(g, want, **tol)
        if deterministic:  # same order of additions as the serial CPU kernel
            cpu = CPU.gather_weighted_sum_backward(dout, cols, table, ids, weights)
            for g, c in zip(got, cpu):
                assert np.array_equal(g, c), "deterministic gather_weighted_sum_backward"


def check_kernel_load_failure_names_driver_and_toolkit():
    """A kernel that cannot load (here: a launch raising the driver's PTX error) makes
    NumbaCudaOps raise KernelsUnavailable naming both versions and the fix."""
    real = kernels.launch_gather_rows

    def rejected_by_driver(*args):
        raise RuntimeError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION")

    kernels.launch_gather_rows = rejected_by_driver
    try:
        kernels.NumbaCudaOps(array_module=np)
    except KernelsUnavailable as exc:
        message = str(exc)
        assert "UNSUPPORTED_PTX_VERSION" in message and "NVIDIA driver supports CUDA" in message
        assert "update the NVIDIA driver" in message and "\n" not in message
    else:
        raise AssertionError("expected KernelsUnavailable")
    finally:
        kernels.launch_gather_rows = real


def check_cupy_stream_warning_is_silenced():
    """CuPy's warning when a kernel launch names stream 0 (its default stream), in
    CuPy's words, is filtered out by numba_cuda/target.py; other warnings are not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("Stream 0 is passed from a library that you are converting to; CuPy "
                      "assumes 0 as a legacy default stream. Please report this problem to "
                      "the library as this violates the DLPack protocol.")
        warnings.warn("another warning")
    assert [str(w.message) for w in caught] == ["another warning"]


def _weighted_sum_inputs(rng, dtype, id_dtype):
    """table [R, F], ids [B, T] with repeated rows, weights [T', F] with T' > T."""
    table = rng.standard_normal((5, 8)).astype(dtype)
    ids = rng.integers(0, 5, (2, 3)).astype(id_dtype)
    weights = rng.standard_normal((4, 8)).astype(dtype)
    return table, ids, weights


def _backward_inputs(rng, dtype, id_dtype, B, F):
    """dout [B, k] and cols [B, k] with a repeated column in every row."""
    cols = rng.integers(0, F, (B, 3)).astype(id_dtype)
    cols[:, -1] = cols[:, 0]
    return rng.standard_normal((B, 3)).astype(dtype), cols


def main():
    assert SIMULATOR, "numba.cuda was imported before NUMBA_ENABLE_CUDASIM was set"
    assert not cuda_config.CUDA_LOW_OCCUPANCY_WARNINGS, "small launches would warn"
    rng = np.random.default_rng(0)
    check_launch_helpers(rng)
    check_ops(rng)
    check_kernel_load_failure_names_driver_and_toolkit()
    check_cupy_stream_warning_is_silenced()
    print("cudasim checks passed")


if __name__ == "__main__":
    main()
