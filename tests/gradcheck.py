"""Central finite differences in float64, on the host, for checking hand-written backprop;
the cross-backend agreement check; a step's measured activation memory."""

import numpy as np
import pytest


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


def assert_model_gradients_match(backend, model, cfg, params, x, y, eps=1e-6, seed=2):
    """A model's ``loss_and_grads`` against central differences of its loss, in float64:
    along a random direction over all parameters at once (rel 1e-6), and per tensor at
    its largest-gradient entry and a random one (rel 1e-5)."""
    f64 = backend.dtype("float64")
    _, grads = model.loss_and_grads(params, x, y, cfg, backend.ops)
    host = {n: backend.to_numpy(v) for n, v in params.items()}
    grads = {n: backend.to_numpy(g) for n, g in grads.items()}
    assert set(grads) == set(host)

    def loss_at(values):
        p = {n: backend.asarray(v, f64) for n, v in values.items()}
        return float(model.loss_and_grads(p, x, y, cfg, backend.ops)[0])

    def central_difference(shifted):
        return (loss_at(shifted(eps)) - loss_at(shifted(-eps))) / (2 * eps)

    rng = np.random.default_rng(seed)
    direction = {n: rng.standard_normal(v.shape) for n, v in host.items()}
    numeric = central_difference(lambda s: {n: host[n] + s * direction[n] for n in host})
    analytic = sum(float(np.sum(grads[n] * direction[n])) for n in host)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)

    for name, value in host.items():
        for i in {int(np.argmax(np.abs(grads[name]))), int(rng.integers(value.size))}:
            def shifted(s):
                moved = value.copy()
                moved.reshape(-1)[i] += s
                return {**host, name: moved}
            assert grads[name].reshape(-1)[i] == pytest.approx(
                central_difference(shifted), rel=1e-5, abs=1e-8), f"{name}[{i}]"


# float32: sums are reordered between implementations (Numba kernels vs the reference,
# BLAS blockings), so 1e-4 relative; float64 agrees to rounding (~5e-15 measured), 1e-12.
CROSS_BACKEND_TOL = {"float32": 1e-4, "float64": 1e-12}


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


# Each model's tiny preset at sizes no two alike and none a power of two: at N = 32 an
# offset b * N added to an index equals it OR-ed in, at batch = heads = head width two
# axes can be swapped unseen. The generic tests run both, and every model needs an entry.
ODD_SIZES = {
    "brainlike": {"context": 11, "n_neurons": 29, "d_state": 18, "k_active": 7, "n_heads": 3},
    "transformer": {"context": 11, "d_model": 18, "n_heads": 3, "d_mlp": 13},
}
SIZES = ("tiny", "odd")


def sized_preset(model_name, sizes):
    """The model's tiny preset (``sizes`` "tiny"), or it at ``ODD_SIZES`` ("odd")."""
    from brainlike_np.models import get_preset
    tiny = get_preset(model_name, "tiny")
    return tiny if sizes == "tiny" else tiny.with_overrides(**ODD_SIZES[model_name])


def perturbed_params(backend, model, cfg, seed=1):
    """float64 initial parameters plus N(0, 0.3^2) noise, so zero- or one-initialised ones
    (Wo, gains, biases) are generic points for a gradient check."""
    params = model.init_params(cfg, backend, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 100)
    return {n: backend.asarray(backend.to_numpy(v) + 0.3 * rng.standard_normal(v.shape),
                               backend.dtype("float64"))
            for n, v in params.items()}


def device_batch(backend, cfg, batch_size=3, seed=0):
    """Random tokens for ``cfg`` on ``backend``: x ``[B, T]``, y ``[B]``."""
    from brainlike_np.data import random_batch
    x, y = random_batch(batch_size, cfg.context, cfg.vocab_size, seed)
    return backend.asarray(x), backend.asarray(y)


def measured_activation_bytes(backend, model, cfg, batch_size, dtype="float32"):
    """Traced peak of one loss_and_grads above the parameters, less its gradients."""
    params = model.init_params(cfg, backend, seed=0, dtype=dtype)
    x, y = device_batch(backend, cfg, batch_size=batch_size)
    model.loss_and_grads(params, x, y, cfg, backend.ops)              # warm-up (JIT caches)
    backend.memory.reset_peak()
    start = backend.memory.current_bytes()
    _, grads = model.loss_and_grads(params, x, y, cfg, backend.ops)
    peak = backend.memory.peak_bytes() - start
    backend.memory.stop()
    return peak - sum(int(g.nbytes) for g in grads.values())
