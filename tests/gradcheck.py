"""Central finite differences in float64, on the host, for checking hand-written backprop."""

import numpy as np


def numeric_grad(loss_of, arrays, which, eps=1e-6):
    """d loss / d arrays[which] by central differences, entry by entry.

    ``loss_of(list_of_numpy_arrays) -> float``; arrays are float64 NumPy arrays.
    """
    base = [a.copy() for a in arrays]
    target = base[which]
    grad = np.zeros_like(target)
    flat, gflat = target.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = loss_of(base)
        flat[i] = old - eps
        minus = loss_of(base)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def assert_close(actual, expected, rtol=1e-6, atol=1e-8, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# float32: sums are reordered between implementations (Numba kernels vs the reference,
# BLAS blockings), so 1e-4 relative; float64 agrees to rounding.
CROSS_BACKEND_TOL = {"float32": 1e-4, "float64": 1e-10}


def assert_matches_numpy_backend(backend, dtype_name, loss_and_grads_on):
    """``loss_and_grads_on(b) -> (loss, grads)`` on backend b agrees with the numpy
    backend: the loss to the dtype's tolerance, relative, and each gradient relative to
    its largest entry."""
    from brainlike_np.backends import get_backend
    tol = CROSS_BACKEND_TOL[dtype_name]
    outs = []
    for b in (get_backend("numpy"), backend):
        loss, grads = loss_and_grads_on(b)
        outs.append((loss, {n: b.to_numpy(g) for n, g in grads.items()}))
    (loss_ref, grads_ref), (loss, grads) = outs
    np.testing.assert_allclose(loss, loss_ref, rtol=tol)
    for name in grads_ref:
        scale = np.max(np.abs(grads_ref[name])) + 1e-30
        np.testing.assert_allclose(grads[name] / scale, grads_ref[name] / scale,
                                   atol=tol, err_msg=name)


def perturbed_params(backend, init_params, cfg, seed=1):
    """float64 initial parameters plus N(0, 0.3^2) noise, so zero- or one-initialised ones
    (Wo, gains, biases) are generic points for a gradient check."""
    params = init_params(cfg, backend, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 100)
    return {n: backend.asarray(backend.to_numpy(v) + 0.3 * rng.standard_normal(v.shape),
                               backend.dtype("float64"))
            for n, v in params.items()}
