"""The step-tail op pair (tanh, residual add, the readout's sigmoid): the array-API
definition against central finite differences; the Numba CPU kernel against the
definition here, the Numba CUDA kernels in the CUDA simulator (a subprocess).

Tolerances: float64 rtol = atol = 1e-12, float32 rtol = atol = 1e-5.
"""

import array_api_compat.numpy as xp
import numpy as np
import pytest

from brainlike_np.backends.numba_cpu import NumbaCpuOps
from brainlike_np.backends.reference import ReferenceOps
from gradcheck import numeric_grad

TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


REF, CPU = ReferenceOps(xp), NumbaCpuOps()


def step_tail_inputs(dtype_name="float64", B=3, M=5, D=7, with_z=True, seed=0):
    """Y ``[B, M, D]`` spanning tanh's saturated, linear and near-zero ranges, H, w_a,
    b_a, z (or None), and the upstream dH_new, da."""
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((B, M, D)) * 3
    Y[0, 0, :3] = [25.0, -25.0, 1e-9]
    arrays = [Y, rng.standard_normal((B, M, D)), rng.standard_normal(D), np.array(0.3),
              rng.standard_normal((B, M)) if with_z else None,
              rng.standard_normal((B, M, D)), rng.standard_normal((B, M))]
    return [None if a is None else a.astype(dtype_name) for a in arrays]


def test_definition_backward_matches_finite_differences():
    """d(sum(H_new * dH_new) + sum(a * da)) with respect to Y, H, w_a, b_a and z."""
    Y, H, w_a, b_a, z, dH_new, da = step_tail_inputs(B=2, M=3, D=4)
    H_new, U, a = REF.step_tail_forward(Y, H, w_a, b_a, z)
    dY, dH, dw_a, db_a, dpre = REF.step_tail_backward(dH_new, da, U, H_new, a, w_a)

    def loss_of(arrays):
        h_new, _, act = REF.step_tail_forward(*arrays)
        return float(np.sum(h_new * dH_new) + np.sum(act * da))

    inputs = [Y, H, w_a, b_a, z]
    for which, (name, g) in enumerate(zip(("Y", "H", "w_a", "b_a", "z"),
                                          (dY, dH, dw_a, db_a, dpre))):
        np.testing.assert_allclose(g, numeric_grad(loss_of, inputs, which), rtol=1e-6,
                                   atol=1e-8, err_msg=f"d{name}")


def test_definition_without_da_is_the_tanh_backward_alone():
    Y, H, w_a, b_a, z, dH_new, _ = step_tail_inputs()
    H_new, U, a = REF.step_tail_forward(Y, H, w_a, b_a, z)
    dY, dH, *rest = REF.step_tail_backward(dH_new, None, U, H_new, a, w_a)
    assert rest == [None, None, None] and dH is dH_new
    np.testing.assert_allclose(dY, dH_new / np.cosh(Y) ** 2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_z", [True, False])
@pytest.mark.parametrize("with_da", [True, False])
def test_cpu_kernel_matches_definition(dtype_name, with_z, with_da):
    Y, H, w_a, b_a, z, dH_new, da = step_tail_inputs(dtype_name, with_z=with_z)
    da = da if with_da else None
    got = CPU.step_tail_forward(Y, H, w_a, b_a, z)
    want = REF.step_tail_forward(Y, H, w_a, b_a, z)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, **TOL[dtype_name])
    H_new, U, a = want
    got = CPU.step_tail_backward(dH_new, da, U, H_new, a, w_a)
    want = REF.step_tail_backward(dH_new, da, U, H_new, a, w_a)
    for name, g, w in zip(("dY", "dH", "dw_a", "db_a", "dpre"), got, want):
        if w is None:
            assert g is None, name
        else:
            assert g.shape == w.shape, name
            np.testing.assert_allclose(g, w, **TOL[dtype_name], err_msg=name)


def test_shape_mismatch_says_which():
    Y, H, w_a, b_a, z, _, _ = step_tail_inputs()
    for ops in (REF, CPU):
        with pytest.raises(ValueError, match=r"both be \[B, M, D\] and w_a \[D\]"):
            ops.step_tail_forward(Y, H, w_a[:3], b_a, z)
        with pytest.raises(ValueError, match=r"z must be \[B, M\]"):
            ops.step_tail_forward(Y, H, w_a, b_a, z[:, :2])
