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
