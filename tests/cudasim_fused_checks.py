"""The fused ops' CUDA kernels checked in the CUDA simulator against their array-API
definitions, on tiny NumPy arrays: ``cudasim_fused_checks.py OP``, OP one of attention,
rmsnorm, step_tail.

Run as a script (``tests/test_attention_op.py``, ``test_rmsnorm_op.py`` and
``test_step_tail_op.py`` do, in a subprocess): the simulator is chosen when
``numba.cuda`` is first imported. Exits non-zero on the first failed check.
"""

import math
import os
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before anything imports numba.cuda

import numpy as np  # noqa: E402

from brainlike_np.backends.numba_cuda import attention as kernels  # noqa: E402
from brainlike_np.backends.numba_cuda.target import SIMULATOR, current_stream  # noqa: E402
from brainlike_np.backends.numba_cuda import NumbaCudaOps  # noqa: E402
from test_attention_op import REF, TOL, attention_inputs  # noqa: E402
from test_rmsnorm_op import EPS, rmsnorm_inputs  # noqa: E402
from test_step_tail_op import REF as STEP_TAIL_REF, step_tail_inputs  # noqa: E402

# (B, h, Lq, Lk, d), small: the simulator runs every thread in Python
SHAPES = [(2, 2, 3, 3, 2), (2, 1, 3, 5, 3)]


def check_against_definition(shape, dtype_name, mask):
    """Forward and backward through the ops object against the definition."""
    ops = NumbaCudaOps(array_module=np)        # NumPy allocates under the simulator
    q, k, v, keep = attention_inputs(shape, dtype_name, mask)
    out, lse = ops.attention_forward(q, k, v, keep)
    want_out, want_lse = REF.attention_forward(q, k, v, keep)
    what = f"{shape} {dtype_name} mask={mask}"
    for got, want, name in ((out, want_out, "out"), (lse, want_lse, "lse")):
        assert got.dtype == want.dtype, f"{name} dtype, {what}"
        np.testing.assert_allclose(got, want, **TOL[dtype_name], err_msg=f"{name}, {what}")
    dout = np.random.default_rng(3).standard_normal(q.shape).astype(dtype_name)
    got = ops.attention_backward(dout, q, k, v, lse, keep)
    want = REF.attention_backward(dout, q, k, v, want_lse, keep)
    for name, g, w in zip(("dq", "dk", "dv", "rebuilt out"), got, want):
        np.testing.assert_allclose(g, w, **TOL[dtype_name], err_msg=f"{name}, {what}")
    np.testing.assert_allclose(got[3], want_out, **TOL[dtype_name],
                               err_msg=f"rebuilt out against the forward's, {what}")
    if mask == "random":                      # sample 1: no kept key anywhere
        assert np.all(out[1] == 0) and np.all(lse[1] == math.inf), what
        assert all(np.all(g[1] == 0) for g in got), what


def check_launch_helpers_with_strided_rows():
    """The launch helpers on a grid of one block with fewer threads than rows (each
    thread takes several rows), float64."""
    q, k, v, keep = attention_inputs((1, 1, 40, 36, 2), "float64", "some")
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    out, lse = np.empty(q.shape), np.empty(q.shape[:3])
    real = kernels.MAX_THREADS_PER_BLOCK
    kernels.MAX_THREADS_PER_BLOCK = 32
    try:
        kernels.launch_attention_forward(q, k, v, keep, out, lse, current_stream())
        want_out, want_lse = REF.attention_forward(q, k, v, keep)
        np.testing.assert_allclose(out, want_out, **TOL["float64"])
        np.testing.assert_allclose(lse, want_lse, **TOL["float64"])
        dout = np.ones(q.shape)
        rebuilt = np.empty(q.shape)
        grads = [np.empty(q.shape), np.empty(k.shape), np.empty(v.shape)]
        kernels.launch_attention_backward(dout, q, k, v, lse, keep, rebuilt,
                                          np.empty(q.shape[:3]), *grads, current_stream())
        want = REF.attention_backward(dout, q, k, v, lse, keep)
        for g, w in zip(grads + [rebuilt], want):
            np.testing.assert_allclose(g, w, **TOL["float64"])
    finally:
        kernels.MAX_THREADS_PER_BLOCK = real


def check_step_tail(dtype_name, with_z, with_da):
    """The step tail's forward and backward through the ops object against the definition."""
    ops = NumbaCudaOps(array_module=np)        # NumPy allocates under the simulator
    Y, H, w_a, b_a, z, dH_new, da = step_tail_inputs(dtype_name, B=2, M=3, D=4,
                                                     with_z=with_z)
    da = da if with_da else None
    what = f"{dtype_name} z={with_z} da={with_da}"
    want = STEP_TAIL_REF.step_tail_forward(Y, H, w_a, b_a, z)
    for g, w, name in zip(ops.step_tail_forward(Y, H, w_a, b_a, z), want, ("H_new", "U", "a")):
        assert g.dtype == w.dtype, f"{name} dtype, {what}"
        np.testing.assert_allclose(g, w, **TOL[dtype_name], err_msg=f"{name}, {what}")
    H_new, U, a = want
    got = ops.step_tail_backward(dH_new, da, U, H_new, a, w_a)
    want = STEP_TAIL_REF.step_tail_backward(dH_new, da, U, H_new, a, w_a)
    for g, w, name in zip(got, want, ("dY", "dH", "dw_a", "db_a", "dpre")):
        if w is None:
            assert g is None, f"{name}, {what}"
        else:
            assert g.shape == w.shape, f"{name} shape, {what}"
            np.testing.assert_allclose(g, w, **TOL[dtype_name], err_msg=f"{name}, {what}")


def check_attention():
    for shape in SHAPES:
        for dtype_name in ("float32", "float64"):
            for mask in (None, "random"):
                check_against_definition(shape, dtype_name, mask)
    check_launch_helpers_with_strided_rows()


def check_step_tails():
    for dtype_name in ("float32", "float64"):
        for with_z in (True, False):
            for with_da in (True, False):
                check_step_tail(dtype_name, with_z, with_da)


def check_rmsnorm():
    """Forward and backward through the ops object against the definition."""
    ops = NumbaCudaOps(array_module=np)
    for dtype_name in ("float32", "float64"):
        x, g, dy = rmsnorm_inputs(dtype_name, shape=(2, 3, 4))
        want_y, want_r = REF.rmsnorm_forward(x, g, EPS)
        for got, want, name in zip(ops.rmsnorm_forward(x, g, EPS), (want_y, want_r), "yr"):
            assert got.dtype == want.dtype and got.shape == want.shape, (name, dtype_name)
            np.testing.assert_allclose(got, want, **TOL[dtype_name], err_msg=name)
        for got, want, name in zip(ops.rmsnorm_backward(dy, x, want_r, g),
                                   REF.rmsnorm_backward(dy, x, want_r, g), ("dx", "dg")):
            assert got.dtype == want.dtype and got.shape == want.shape, (name, dtype_name)
            np.testing.assert_allclose(got, want, **TOL[dtype_name], err_msg=name)


CHECKS = {"attention": check_attention, "rmsnorm": check_rmsnorm, "step_tail": check_step_tails}


def main(argv):
    assert SIMULATOR, "numba.cuda was imported before NUMBA_ENABLE_CUDASIM was set"
    CHECKS[argv[1]]()
    print(f"{argv[1]}: cudasim checks passed")


if __name__ == "__main__":
    main(sys.argv)
