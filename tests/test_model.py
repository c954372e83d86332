"""The whole model: both paths agree, and the backward matches finite differences."""

import numpy as np
import pytest

from brainlike_np import layers as L
from brainlike_np import model
from brainlike_np.config import ConfigError, ModelConfig, preset
from brainlike_np.optim import AdamW
import gradcheck
from gradcheck import assert_matches_numpy_backend

TINY = preset("tiny")
# tau = 0.5 masks about half the keys at init, so the masked paths are exercised
CONFIGS = {"tiny": TINY, "tiny-masking": TINY.with_overrides(tau=0.5),
           "no-steps": TINY.with_overrides(n_steps=0)}


def batch(cfg, B=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cfg.vocab_size, size=(B, cfg.context))
    y = rng.integers(0, cfg.vocab_size, size=B)
    return x, y


def perturbed_params(backend, cfg, seed=1):
    return gradcheck.perturbed_params(backend, model.init_params, cfg, seed)


def loss_at(backend, cfg, params_host, x, y, path):
    f64 = backend.dtype("float64")
    p = {n: backend.asarray(v, f64) for n, v in params_host.items()}
    logits, _ = model.forward(p, x, cfg, backend.ops, path)
    return float(L.cross_entropy_forward(logits, y)[0])


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("path", model.PATHS)
def test_gradients_match_finite_differences(backend, config_name, path):
    cfg = CONFIGS[config_name]
    xh, yh = batch(cfg)
    x, y = backend.asarray(xh), backend.asarray(yh)
    params = perturbed_params(backend, cfg)
    _, grads = model.loss_and_grads(params, x, y, cfg, backend.ops, path)
    host = {n: backend.to_numpy(v) for n, v in params.items()}
    grads = {n: backend.to_numpy(g) for n, g in grads.items()}
    assert set(grads) == set(host)
    eps = 1e-5
    rng = np.random.default_rng(2)

    # a random direction over all parameters at once
    direction = {n: rng.standard_normal(v.shape) for n, v in host.items()}
    shifted = lambda s: {n: host[n] + s * eps * direction[n] for n in host}  # noqa: E731
    numeric = (loss_at(backend, cfg, shifted(1), x, y, path)
               - loss_at(backend, cfg, shifted(-1), x, y, path)) / (2 * eps)
    analytic = sum(float(np.sum(grads[n] * direction[n])) for n in host)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)

    # a few single entries of each tensor
    for name, value in host.items():
        for i in rng.choice(value.size, size=min(2, value.size), replace=False):
            plus, minus = dict(host), dict(host)
            plus[name], minus[name] = value.copy(), value.copy()
            plus[name].reshape(-1)[i] += eps
            minus[name].reshape(-1)[i] -= eps
            numeric = (loss_at(backend, cfg, plus, x, y, path)
                       - loss_at(backend, cfg, minus, x, y, path)) / (2 * eps)
            assert grads[name].reshape(-1)[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_sparse_and_dense_paths_agree(backend, config_name):
    cfg = CONFIGS[config_name]
    xh, yh = batch(cfg, B=4, seed=3)
    x, y = backend.asarray(xh), backend.asarray(yh)
    params = perturbed_params(backend, cfg, seed=4)
    logits_s, _ = model.forward(params, x, cfg, backend.ops, "sparse")
    logits_d, _ = model.forward(params, x, cfg, backend.ops, "dense")
    np.testing.assert_allclose(backend.to_numpy(logits_s), backend.to_numpy(logits_d),
                               rtol=1e-10, atol=1e-10)
    loss_s, grads_s = model.loss_and_grads(params, x, y, cfg, backend.ops, "sparse")
    loss_d, grads_d = model.loss_and_grads(params, x, y, cfg, backend.ops, "dense")
    assert loss_s == pytest.approx(loss_d, rel=1e-12)
    for name in grads_s:
        np.testing.assert_allclose(backend.to_numpy(grads_s[name]),
                                   backend.to_numpy(grads_d[name]),
                                   rtol=1e-9, atol=1e-10, err_msg=name)


def test_every_parameter_gets_a_nonzero_gradient(backend):
    """At init Wo = Wo_x = 0 close the attention branches, so exactly the parameters
    behind them get zero gradient; after one AdamW step every parameter learns."""
    cfg = TINY
    xh, yh = batch(cfg, B=8, seed=5)
    x, y = backend.asarray(xh), backend.asarray(yh)
    params = model.init_params(cfg, backend, seed=0)

    def zero_grads(p):
        _, grads = model.loss_and_grads(p, x, y, cfg, backend.ops)
        return {n for n, g in grads.items() if not np.any(backend.to_numpy(g) != 0)}, grads

    zero, grads = zero_grads(params)
    assert zero == {"Wq", "Wk", "Wv", "Wq_x", "Wk_x", "Wv_x", "g_x", "g_t", "Epos", "Etok"}
    params = AdamW().update(params, grads, lr=1e-2)
    assert zero_grads(params)[0] == set()


def test_a_shorter_context_than_trained_works(backend):
    cfg = TINY
    xh, yh = batch(cfg)
    params = model.init_params(cfg, backend, seed=0)
    x = backend.asarray(xh[:, :5])
    loss, grads = model.loss_and_grads(params, x, backend.asarray(yh), cfg, backend.ops)
    assert np.isfinite(loss)
    assert grads["P"].shape == params["P"].shape
    np.testing.assert_array_equal(backend.to_numpy(grads["P"])[5:], 0.0)


def test_same_seed_same_logits_on_every_backend(backend, dtype_name):
    """Cross-backend agreement: float32 to 1e-4 relative (sums reorder across
    implementations), float64 to 1e-10."""
    xh, yh = batch(TINY, B=4, seed=6)

    def loss_and_grads_on(b):
        params = model.init_params(TINY, b, seed=11, dtype=dtype_name)
        params["Wo"] = b.normal(b.rng(12), params["Wo"].shape, 0.3, b.dtype(dtype_name))
        return model.loss_and_grads(params, b.asarray(xh), b.asarray(yh), TINY, b.ops)

    assert_matches_numpy_backend(backend, dtype_name, loss_and_grads_on)


@pytest.mark.parametrize("overrides, message", [
    ({"k_active": 40}, "k_active (40) must be at most n_neurons (32)"),
    ({"n_heads": 3}, "divisible by n_heads"),
    ({"d_state": 0}, "d_state must be positive"),
    ({"n_steps": -1}, "n_steps must be 0 or more"),
])
def test_invalid_configs_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**{**TINY.to_dict(), **overrides})
