"""What every registered model must satisfy, run on each one without edits: the backward
against finite differences, each execution option against the default, agreement across
backends, its config, and the checkpoint round trip through chains of resumes. That the
module has what the interface lists (its constants and their contents included) is
test_model_interface.py's check.

A new model in ``brainlike_np.models.MODELS`` is tested here as soon as it is registered;
``test_<model>.py`` holds only what is particular to one model."""

import dataclasses

import numpy as np
import pytest

from brainlike_np.backends import get_backend
from brainlike_np.config import ConfigError
from brainlike_np.data import random_batch
from brainlike_np.models import MODELS, get_model, get_preset
from brainlike_np.train_state import TrainSettings, TrainState
from gradcheck import (ODD_SIZES, SIZES, assert_matches_numpy_backend,
                       assert_model_gradients_match, device_batch, measured_activation_bytes,
                       perturbed_params, sized_preset)


def execution_options():
    """(model name, {field: value} or {} for the preset's own options)."""
    for name, model in MODELS.items():
        yield pytest.param(name, {}, id=f"{name}")
        for field, values in model.EXECUTION_OPTIONS.items():
            for value in values:
                yield pytest.param(name, {field: value}, id=f"{name}-{field}={value}")


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("model_name, options", list(execution_options()))
def test_gradients_match_finite_differences(backend, model_name, options, sizes):
    model = get_model(model_name)
    cfg = sized_preset(model_name, sizes).with_overrides(**options)
    x, y = device_batch(backend, cfg, batch_size=5)
    assert_model_gradients_match(backend, model, cfg, perturbed_params(backend, model, cfg), x, y)


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("model_name, options", [p for p in execution_options() if p.values[1]])
def test_execution_options_give_the_default_result(backend, model_name, options, sizes):
    """Options say how to compute, not what: same logits, loss and gradients (float64)."""
    model = get_model(model_name)
    default = sized_preset(model_name, sizes)
    other = default.with_overrides(**options)
    x, y = device_batch(backend, default, batch_size=4, seed=3)
    params = perturbed_params(backend, model, default, seed=4)
    np.testing.assert_allclose(
        backend.to_numpy(model.next_logits(params, x, other, backend.ops)),
        backend.to_numpy(model.next_logits(params, x, default, backend.ops)), rtol=1e-10,
        atol=1e-10)
    loss_d, grads_d = model.loss_and_grads(params, x, y, default, backend.ops)
    loss_o, grads_o = model.loss_and_grads(params, x, y, other, backend.ops)
    assert float(loss_o) == pytest.approx(float(loss_d), rel=1e-12)
    for name in grads_d:
        np.testing.assert_allclose(backend.to_numpy(grads_o[name]), backend.to_numpy(grads_d[name]),
                                   rtol=1e-9, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_same_seed_same_loss_and_gradients_on_every_backend(backend, dtype_name, model_name,
                                                            sizes):
    """float32 to 1e-4 relative (sums reorder across implementations), float64 to 1e-12."""
    model = get_model(model_name)
    cfg = sized_preset(model_name, sizes)
    xh, yh = random_batch(4, cfg.context, cfg.vocab_size, seed=6)

    def loss_and_grads_on(b):
        params = perturbed_params(b, model, cfg, seed=11)
        params = {n: b.xp.astype(v, b.dtype(dtype_name)) for n, v in params.items()}
        return model.loss_and_grads(params, b.asarray(xh), b.asarray(yh), cfg, b.ops)

    assert_matches_numpy_backend(backend, dtype_name, loss_and_grads_on)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_init_params_have_the_declared_shapes_and_dtype(backend, model_name):
    model = get_model(model_name)
    cfg = get_preset(model_name, "tiny")
    params = model.init_params(cfg, backend, seed=0, dtype="float64")
    assert {n: tuple(p.shape) for n, p in params.items()} == \
        {n: tuple(s) for n, s in model.param_shapes(cfg).items()}
    assert all(p.dtype == backend.dtype("float64") for p in params.values())


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_next_logits_is_one_row_of_byte_logits_per_window(backend, model_name, sizes):
    model = get_model(model_name)
    cfg = sized_preset(model_name, sizes)
    x, y = device_batch(backend, cfg, batch_size=5)
    params = perturbed_params(backend, model, cfg)
    logits = backend.to_numpy(model.next_logits(params, x, cfg, backend.ops))
    assert logits.shape == (5, cfg.vocab_size)
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    expected = -np.mean(log_probs[np.arange(5), backend.to_numpy(y)])
    assert model.loss(params, x, y, cfg, backend.ops) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_supervised_targets_is_what_the_loss_averages_over(model_name):
    """Changing the byte after window 0 changes the training loss by the change of that
    one target's loss over all B * supervised_targets targets it averages."""
    backend = get_backend("numpy")
    model = get_model(model_name)
    cfg = get_preset(model_name, "tiny")
    x, y = random_batch(4, cfg.context, cfg.vocab_size, seed=8)
    params = perturbed_params(backend, model, cfg, seed=9)
    logits = backend.to_numpy(model.next_logits(params, backend.asarray(x), cfg, backend.ops))
    log_p = logits[0] - np.log(np.sum(np.exp(logits[0])))                  # [V]
    y2 = y.copy()
    y2[0] = (y[0] + 1) % cfg.vocab_size
    def training_loss(targets):
        return float(model.loss_and_grads(params, backend.asarray(x), backend.asarray(targets),
                                          cfg, backend.ops)[0])
    change = training_loss(y2) - training_loss(y)
    assert change == pytest.approx((log_p[y[0]] - log_p[y2[0]]) /
                                   (4 * model.supervised_targets(cfg)), rel=1e-9)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_model_has_odd_sizes_no_two_alike(model_name):
    """``ODD_SIZES``: an entry for each registered model, its sizes distinct and none a
    power of two, the head width included."""
    assert model_name in ODD_SIZES, f"add model '{model_name}' to tests/gradcheck.py ODD_SIZES"
    sizes = dict(ODD_SIZES[model_name])
    width = next(v for k, v in sizes.items() if k in ("d_state", "d_model"))
    sizes["head width"] = width // sizes["n_heads"]
    assert all(v & (v - 1) for v in sizes.values()), sizes
    assert len(set(sizes.values())) == len(sizes), sizes
    sized_preset(model_name, "odd")                        # a valid config


@pytest.mark.parametrize("model_name", list(MODELS))
def test_config_round_trips_overrides_and_rejects(model_name):
    model = get_model(model_name)
    cfg = get_preset(model_name, "default")
    assert model.Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.with_overrides(context=16, vocab_size=None) == dataclasses.replace(cfg, context=16)
    with pytest.raises(ConfigError, match="unknown config fields: bogus"):
        model.Config.from_dict({**cfg.to_dict(), "bogus": 4})
    with pytest.raises(ConfigError, match="context must be positive"):
        cfg.with_overrides(context=0)
    with pytest.raises(ConfigError, match="context must be of type int"):
        cfg.with_overrides(context="8")


def test_unknown_model_and_preset_name_the_choices():
    with pytest.raises(ConfigError, match="unknown model 'gpt'; choose one of: brainlike"):
        get_model("gpt")
    with pytest.raises(ConfigError, match="choose one of: tiny, default"):
        get_preset("brainlike", "huge")


# ---------------------------------------------------------------------------------
# checkpoints: the round trip the next run makes, through chains of resumes
# ---------------------------------------------------------------------------------
def host_arrays(state):
    arrays = {f"p/{n}": state.backend.to_numpy(v) for n, v in state.params.items()}
    for group, moments in (("m", state.optimizer.m), ("v", state.optimizer.v)):
        arrays.update({f"{group}/{n}": state.backend.to_numpy(v) for n, v in moments.items()})
    return arrays


def train_steps(state, tokens, n):
    for _ in range(n):
        x, y = state.sample_batch(tokens, 3)
        state.train_step(x, y, lr=1e-2)


def with_reproducible_ops(backend):
    """``backend``, on ops that give the same bits every run: the CUDA ops' scatter-adds
    add with float atomics, in an order that varies, unless made deterministic."""
    backend.ops = backend.ops.reproducible()
    return backend


@pytest.mark.parametrize("model_name", list(MODELS))
def test_a_chain_of_resumes_continues_exactly(backend, dtype_name, model_name, tmp_path):
    """save -> load -> train -> save -> load ... equals training without a break, bit for
    bit; every array keeps its shape (0-d included) and dtype. On cupy, on the
    deterministic CUDA ops (bits are what this test compares)."""
    backend = with_reproducible_ops(backend)
    cfg = get_preset(model_name, "tiny")
    tokens = np.frombuffer(b"def f(x):\n    return x + 1\n" * 40, dtype=np.uint8)
    settings = TrainSettings(seed=3, dtype=dtype_name, batch_size=3)
    straight = TrainState.create(model_name, cfg, backend, settings)
    train_steps(straight, tokens, 6)

    state = TrainState.create(model_name, cfg, backend, settings)
    path = str(tmp_path / "ckpt.npz")
    for _ in range(3):
        train_steps(state, tokens, 2)
        before = host_arrays(state)
        state.save(path)
        state = TrainState.load(path, backend)
        after = host_arrays(state)
        assert {k: (a.shape, a.dtype) for k, a in after.items()} == \
            {k: (a.shape, a.dtype) for k, a in before.items()}
        assert state.cfg == cfg and state.settings == settings and state.model_name == model_name
    assert state.step == straight.step == 6
    for key, value in host_arrays(straight).items():
        np.testing.assert_array_equal(host_arrays(state)[key], value, err_msg=key)


# ---------------------------------------------------------------------------------
# memory: the estimate the trainer checks before a run holds the measured peak
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name, options", list(execution_options()))
@pytest.mark.parametrize("batch_size", [128, 512])
def test_activation_estimate_bounds_the_measured_peak(model_name, options, batch_size):
    """Above the measured peak (so the trainer never lets a run through that cannot
    fit) and within 2x of it (so it refuses few runs that would); at the tiny preset,
    with batches large enough that arrays, not Python objects, fill the memory. (At
    the brain-like dense path the most: 1.78x, the attention scores it counts for the
    reference attention, which the kernels measured here never form.)"""
    backend = get_backend("numpy")
    model = get_model(model_name)
    cfg = get_preset(model_name, "tiny").with_overrides(**options)
    measured = measured_activation_bytes(backend, model, cfg, batch_size)
    estimate = model.activation_bytes(cfg, batch_size, itemsize=4)
    assert measured <= estimate <= 2 * measured, (measured, estimate)
