"""What is particular to the causal Transformer baseline: causality, the shifted
next-byte targets (every position's, or the last one's), which parameters learn, a
shorter context, its config rules. The checks every model shares are in test_models.py."""

import numpy as np
import pytest

from brainlike_np.config import ConfigError
from brainlike_np.data import random_batch
from brainlike_np.models import transformer as tr
from gradcheck import assert_model_gradients_match, device_batch, perturbed_params

TINY = tr.PRESETS["tiny"]
STACKED = ("g_attn", "Wq", "Wk", "Wv", "Wo", "g_mlp", "W1", "W2")   # [n_layers, ...]


def batch(cfg, B=3, seed=0):
    return random_batch(B, cfg.context, cfg.vocab_size, seed)


def test_earlier_positions_do_not_see_later_tokens(backend):
    cfg = TINY
    xh, _ = batch(cfg, B=2, seed=3)
    params = perturbed_params(backend, tr, cfg, seed=4)
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
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(tr.next_logits(params, x, cfg, backend.ops)),
                               logits[:, -1, :], rtol=1e-12)
    # evaluation scores the last position alone: the brain-like model's task
    last = -np.mean(log_probs[np.arange(len(yh)), -1, yh])
    assert tr.loss(params, x, y, cfg, backend.ops) == pytest.approx(last, rel=1e-12)


def test_last_position_targets_train_on_y_alone(backend):
    """targets="last": the training loss is the evaluation loss (the last position's
    cross-entropy), not the mean over every position's next byte."""
    cfg = TINY.with_overrides(targets="last")
    xh, yh = batch(cfg, B=3, seed=8)
    x, y = backend.asarray(xh), backend.asarray(yh)
    params = perturbed_params(backend, tr, cfg, seed=9)
    loss = float(tr.loss_and_grads(params, x, y, cfg, backend.ops)[0])
    assert loss == pytest.approx(tr.loss(params, x, y, cfg, backend.ops), rel=1e-12)
    assert loss == pytest.approx(tr.loss(params, x, y, TINY, backend.ops), rel=1e-12)
    assert loss != pytest.approx(float(tr.loss_and_grads(params, x, y, TINY, backend.ops)[0]),
                                 rel=1e-3)


def test_last_position_targets_match_finite_differences(backend):
    cfg = TINY.with_overrides(targets="last")
    x, y = device_batch(backend, cfg)
    assert_model_gradients_match(backend, tr, cfg, perturbed_params(backend, tr, cfg), x, y)


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
    assert np.isfinite(backend.to_numpy(loss))
    epos = backend.to_numpy(grads["Epos"])
    assert epos.shape == (cfg.context, cfg.d_model)
    np.testing.assert_array_equal(epos[5:], 0.0)
    assert np.all(np.any(epos[:5] != 0, axis=-1))


@pytest.mark.parametrize("overrides, message", [
    ({"n_heads": 3}, r"d_model \(8\) must be divisible by n_heads \(3\)"),
    ({"d_model": 0}, "d_model must be positive"),
    ({"n_layers": -1}, "n_layers must be positive"),
    ({"d_mlp": 0}, "d_mlp must be positive"),
    ({"context": 0}, "context must be positive"),
    ({"targets": "first"}, "unknown targets 'first'; choose one of: all, last"),
    ({"targets": 1}, "targets must be of type str, got 1"),
])
def test_invalid_configs_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tr.TransformerConfig(**{**TINY.to_dict(), **overrides})
