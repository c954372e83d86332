"""What is particular to the brain-like model: its masking and step-free configs against
finite differences, which parameters learn at init, a shorter context, its config rules.
The checks every model shares are in test_models.py."""

import numpy as np
import pytest

from brainlike_np.config import ConfigError
from brainlike_np.models import brainlike
from brainlike_np.optim import AdamW
from brainlike_np.backends import get_backend
from gradcheck import (assert_model_gradients_match, device_batch, measured_activation_bytes,
                       perturbed_params)

TINY = brainlike.PRESETS["tiny"]
# tau = 0.5 masks about half the keys at init, so the masked paths are exercised
CONFIGS = {"tiny-masking": TINY.with_overrides(tau=0.5), "no-steps": TINY.with_overrides(n_steps=0)}


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("path", brainlike.PATHS)
def test_gradients_match_finite_differences(backend, config_name, path):
    cfg = CONFIGS[config_name].with_overrides(path=path)
    x, y = device_batch(backend, cfg)
    assert_model_gradients_match(backend, brainlike, cfg, perturbed_params(backend, brainlike, cfg),
                                 x, y)


def test_every_parameter_gets_a_nonzero_gradient(backend):
    """At init Wo = Wo_x = 0 close the attention branches, so exactly the parameters
    behind them get zero gradient; after one AdamW step every parameter learns."""
    x, y = device_batch(backend, TINY, batch_size=8, seed=5)
    params = brainlike.init_params(TINY, backend, seed=0)

    def zero_grads(p):
        _, grads = brainlike.loss_and_grads(p, x, y, TINY, backend.ops)
        return {n for n, g in grads.items() if not np.any(backend.to_numpy(g) != 0)}, grads

    zero, grads = zero_grads(params)
    assert zero == {"Wq", "Wk", "Wv", "Wq_x", "Wk_x", "Wv_x", "g_x", "g_t", "Epos", "Etok"}
    params = AdamW().update(params, grads, lr=1e-2)
    assert zero_grads(params)[0] == set()


def test_a_shorter_context_than_trained_works(backend):
    x, y = device_batch(backend, TINY)
    params = brainlike.init_params(TINY, backend, seed=0)
    loss, grads = brainlike.loss_and_grads(params, x[:, :5], y, TINY, backend.ops)
    assert np.isfinite(loss)
    assert grads["P"].shape == params["P"].shape
    np.testing.assert_array_equal(backend.to_numpy(grads["P"])[5:], 0.0)


@pytest.mark.parametrize("overrides, message", [
    ({"k_active": 40}, "k_active (40) must be at most n_neurons (32)"),
    ({"n_heads": 3}, "divisible by n_heads"),
    ({"d_state": 0}, "d_state must be positive"),
    ({"n_steps": -1}, "n_steps must be 0 or more"),
    ({"tau": float("nan")}, "tau must be in [0, 1)"),
    ({"path": "bogus"}, "unknown path 'bogus'; choose one of: sparse, dense"),
])
def test_invalid_configs_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        brainlike.Config(**{**TINY.to_dict(), **overrides})


def test_recomputation_keeps_less_and_gives_bitwise_the_same_gradients():
    """With recompute only each step's input is kept: a lower traced peak at the default
    preset, and, since the step is redone with the same operations, the same bits."""
    backend = get_backend("numpy")
    cfg = brainlike.PRESETS["default"]
    lean = cfg.with_overrides(recompute=True)
    assert measured_activation_bytes(backend, brainlike, lean, 16) < \
        0.75 * measured_activation_bytes(backend, brainlike, cfg, 16)
    f64 = {"dtype": "float64"}
    params = brainlike.init_params(cfg, backend, seed=1, **f64)
    x, y = device_batch(backend, cfg, batch_size=4)
    loss, grads = brainlike.loss_and_grads(params, x, y, cfg, backend.ops)
    loss_r, grads_r = brainlike.loss_and_grads(params, x, y, lean, backend.ops)
    assert loss_r == loss
    for name, g in grads.items():
        np.testing.assert_array_equal(backend.to_numpy(grads_r[name]), backend.to_numpy(g), name)
