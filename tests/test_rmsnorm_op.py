"""The RMSNorm op pair: the array-API definition against a per-row loop and central
finite differences; the Numba CPU kernels against the definition here, the Numba CUDA
kernels in the CUDA simulator (a subprocess).

Tolerances: float64 rtol = atol = 1e-12, float32 rtol = atol = 1e-5.
"""

import array_api_compat.numpy as xp
import numpy as np
import pytest

from brainlike_np.backends.numba_cpu import NumbaCpuOps
from brainlike_np.backends.reference import ReferenceOps
from gradcheck import numeric_grad

TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}
EPS = 1e-6
REF, CPU = ReferenceOps(xp), NumbaCpuOps()


def rmsnorm_inputs(dtype_name="float64", shape=(3, 4, 6), seed=0):
    """x [..., D] with rows of very different scales, g [D], and an upstream dy."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp(rng.standard_normal(shape[:-1] + (1,)))
    g, dy = rng.standard_normal(shape[-1]), rng.standard_normal(shape)
    return [a.astype(dtype_name) for a in (x, g, dy)]


def test_definition_forward_matches_per_row_loop():
    x, g, _ = rmsnorm_inputs()
    y, r = REF.rmsnorm_forward(x, g, EPS)
    for row in np.ndindex(x.shape[:-1]):
        rms = np.sqrt(np.mean(x[row] ** 2) + EPS)
        np.testing.assert_allclose(y[row], x[row] / rms * g, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(r[row], [1 / rms], rtol=1e-12)


def test_definition_backward_matches_finite_differences():
    x, g, dy = rmsnorm_inputs(shape=(2, 3, 4))
    y, r = REF.rmsnorm_forward(x, g, EPS)
    dx, dg = REF.rmsnorm_backward(dy, x, r, g)

    def loss_of(arrays):
        return float(np.sum(REF.rmsnorm_forward(*arrays, EPS)[0] * dy))

    for which, (name, grad) in enumerate(zip(("x", "g"), (dx, dg))):
        np.testing.assert_allclose(grad, numeric_grad(loss_of, [x, g], which), rtol=1e-6,
                                   atol=1e-8, err_msg=f"d{name}")


@pytest.mark.parametrize("shape", [(3, 4, 6), (5, 64)])
def test_cpu_kernels_match_definition(dtype_name, shape):
    x, g, dy = rmsnorm_inputs(dtype_name, shape)
    for got, want, name in zip(CPU.rmsnorm_forward(x, g, EPS), REF.rmsnorm_forward(x, g, EPS),
                               ("y", "r")):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, **TOL[dtype_name], err_msg=name)
    _, r = REF.rmsnorm_forward(x, g, EPS)
    for got, want, name in zip(CPU.rmsnorm_backward(dy, x, r, g),
                               REF.rmsnorm_backward(dy, x, r, g), ("dx", "dg")):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, **TOL[dtype_name], err_msg=name)


def test_shape_mismatch_says_which():
    x, g, _ = rmsnorm_inputs()
    for ops in (REF, CPU):
        with pytest.raises(ValueError, match=r"x must be \[\.\.\., D\] and g \[D\]"):
            ops.rmsnorm_forward(x, g[:3], EPS)


@pytest.mark.parametrize("ops", [REF, CPU], ids=["definition", "numba-cpu"])
def test_mismatched_shapes_are_refused_both_ways(ops):
    """A g that is not [D], or a backward dy whose shape is not x's, is a ValueError
    before any arithmetic (a kernel would read past a row otherwise)."""
    x, g, dy = rmsnorm_inputs(shape=(3, 4, 6))
    with pytest.raises(ValueError, match="g \\[D\\]"):
        ops.rmsnorm_forward(x, g[:5], EPS)
    _, r = REF.rmsnorm_forward(x, g, EPS)
    with pytest.raises(ValueError, match="dy must have x's shape"):
        ops.rmsnorm_backward(dy[:, :3], x, r, g)
