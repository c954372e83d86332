"""The causal Transformer baseline: backward against finite differences, causality,
the shifted next-byte targets, and config validation."""

import numpy as np
import pytest

from brainlike_np import transformer as tr
from brainlike_np.config import ConfigError
import gradcheck
from gradcheck import assert_matches_numpy_backend

TINY = tr.preset("tiny")
STACKED = ("g_attn", "Wq", "Wk", "Wv", "Wo", "g_mlp", "W1", "W2")   # [n_layers, ...]


def batch(cfg, B=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, size=(B, cfg.context)),
            rng.integers(0, cfg.vocab_size, size=B))


def perturbed_params(backend, cfg, seed=1):
    return gradcheck.perturbed_params(backend, tr.init_params, cfg, seed)


def loss_at(backend, cfg, params_host, x, y):
    f64 = backend.dtype("float64")
    p = {n: backend.asarray(v, f64) for n, v in params_host.items()}
    return tr.loss_and_grads(p, x, y, cfg, backend.ops)[0]


def central_difference(loss_of, eps):
    return (loss_of(eps) - loss_of(-eps)) / (2 * eps)


def test_gradients_match_finite_differences(backend):
    cfg = TINY
    xh, yh = batch(cfg)
    x, y = backend.asarray(xh), backend.asarray(yh)
    params = perturbed_params(backend, cfg)
    _, grads = tr.loss_and_grads(params, x, y, cfg, backend.ops)
    host = {n: backend.to_numpy(v) for n, v in params.items()}
    grads = {n: backend.to_numpy(g) for n, g in grads.items()}
    assert set(grads) == set(host)
    rng = np.random.default_rng(2)
    # small: RMSNorm of the small-initialised embeddings curves the loss sharply
    eps = 1e-6

    # a random direction over all parameters at once
    direction = {n: rng.standard_normal(v.shape) for n, v in host.items()}
    numeric = central_difference(
        lambda s: loss_at(backend, cfg, {n: host[n] + s * direction[n] for n in host}, x, y),
        eps)
    analytic = sum(float(np.sum(grads[n] * direction[n])) for n in host)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)

    # per tensor: its largest-gradient entry and a random one
    for name, value in host.items():
        for i in (int(np.argmax(np.abs(grads[name]))), int(rng.integers(value.size))):
            def shifted(s):
                moved = value.copy()
                moved.reshape(-1)[i] += s
                return loss_at(backend, cfg, {**host, name: moved}, x, y)
            numeric = central_difference(shifted, eps)
            assert grads[name].reshape(-1)[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8), \
                f"{name}[{i}]"


def test_earlier_positions_do_not_see_later_tokens(backend):
    cfg = TINY
    xh, _ = batch(cfg, B=2, seed=3)
    params = perturbed_params(backend, cfg, seed=4)
    t = 5
    changed = xh.copy()
    changed[:, t] = (changed[:, t] + 1) % cfg.vocab_size
    before, _ = tr.forward(params, backend.asarray(xh), cfg, backend.ops)
    after, _ = tr.forward(params, backend.asarray(changed), cfg, backend.ops)
    before, after = backend.to_numpy(before), backend.to_numpy(after)
    np.testing.assert_array_equal(after[:, :t, :], before[:, :t, :])
    assert np.all(np.abs(after[:, t:, :] - before[:, t:, :]).max(axis=-1) > 1e-6)


def test_loss_is_mean_cross_entropy_of_the_next_byte_at_every_position(backend):
    cfg = TINY
    xh, yh = batch(cfg, B=2, seed=5)
    x, y = backend.asarray(xh), backend.asarray(yh)
    params = tr.init_params(cfg, backend, seed=6, dtype="float64")
    logits, _ = tr.forward(params, x, cfg, backend.ops)
    logits = backend.to_numpy(logits)                                # [B, T, V]
    targets = np.concatenate([xh[:, 1:], yh[:, None]], axis=1)       # [B, T]
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(log_probs, targets[..., None], axis=-1))
    loss, _ = tr.loss_and_grads(params, x, y, cfg, backend.ops)
    assert loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(tr.next_logits(params, x, cfg, backend.ops)),
                               logits[:, -1, :], rtol=1e-12)
    # evaluation scores the last position alone: the brain-like model's task
    last = -np.mean(log_probs[np.arange(len(yh)), -1, yh])
    assert tr.loss(params, x, y, cfg, backend.ops) == pytest.approx(last, rel=1e-12)


def test_every_parameter_gets_a_nonzero_gradient_at_init(backend):
    cfg = TINY
    xh, yh = batch(cfg, B=4, seed=7)
    params = tr.init_params(cfg, backend, seed=0)
    _, grads = tr.loss_and_grads(params, backend.asarray(xh), backend.asarray(yh), cfg,
                                 backend.ops)
    assert set(grads) == set(params)
    for name, g in grads.items():
        g = backend.to_numpy(g)
        assert g.shape == params[name].shape, name
        # a stacked weight: every layer's slice learns, not just one layer's
        rows = g.reshape(cfg.n_layers, -1) if name in STACKED else g.reshape(1, -1)
        assert np.all(np.any(rows != 0, axis=1)), name


def test_a_shorter_context_than_trained_works(backend):
    cfg = TINY
    xh, yh = batch(cfg)
    params = tr.init_params(cfg, backend, seed=0)
    loss, grads = tr.loss_and_grads(params, backend.asarray(xh[:, :5]), backend.asarray(yh),
                                    cfg, backend.ops)
    assert np.isfinite(loss)
    epos = backend.to_numpy(grads["Epos"])
    assert epos.shape == (cfg.context, cfg.d_model)
    np.testing.assert_array_equal(epos[5:], 0.0)
    assert np.all(np.any(epos[:5] != 0, axis=-1))


def test_same_seed_same_loss_and_gradients_on_every_backend(backend, dtype_name):
    xh, yh = batch(TINY, B=4, seed=8)

    def loss_and_grads_on(b):
        params = tr.init_params(TINY, b, seed=11, dtype=dtype_name)
        return tr.loss_and_grads(params, b.asarray(xh), b.asarray(yh), TINY, b.ops)

    assert_matches_numpy_backend(backend, dtype_name, loss_and_grads_on)


@pytest.mark.parametrize("overrides, message", [
    ({"n_heads": 3}, r"d_model \(8\) must be divisible by n_heads \(3\)"),
    ({"d_model": 0}, "d_model must be positive"),
    ({"n_layers": -1}, "n_layers must be positive"),
    ({"d_mlp": 0}, "d_mlp must be positive"),
    ({"context": 0}, "context must be positive"),
])
def test_invalid_configs_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tr.TransformerConfig(**{**TINY.to_dict(), **overrides})


def test_config_round_trips_and_overrides():
    cfg = tr.preset("default")
    assert tr.TransformerConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.with_overrides(n_layers=2, d_mlp=None) == tr.TransformerConfig(n_layers=2)
    with pytest.raises(ConfigError, match="unknown config fields: n_neurons"):
        tr.TransformerConfig.from_dict({**cfg.to_dict(), "n_neurons": 4})
    with pytest.raises(ConfigError, match="n_heads"):
        cfg.with_overrides(n_heads=3)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="tiny, default, note"):
        tr.preset("huge")
