"""AdamW and gradient clipping against an independent NumPy transcription of the papers,
on both paths (flat buffers where views alias, one array per parameter elsewhere), and the
device-side guard that keeps a non-finite step out of the parameters and moments."""

import math

import numpy as np
import pytest

from brainlike_np import TrainSettings, TrainState
from brainlike_np.backends import get_backend, host_reads, quiet_float_warnings
from brainlike_np.backends.aliasing import views_alias
from brainlike_np.data import random_batch
from brainlike_np.models import MODELS, get_model, get_preset
from brainlike_np.optim import AdamW, cosine_lr


def numpy_adamw(p, grads, lr, b1, b2, eps, wd, decay):
    """The textbook AdamW of one parameter over a list of gradients (Loshchilov & Hutter)."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        if decay:
            p = p - lr * wd * p
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def host_problem(seed=1, steps=5):
    rng = np.random.default_rng(seed)
    host = {"W": rng.standard_normal((3, 4)), "g": rng.standard_normal(4),
            "b": np.asarray(rng.standard_normal())}                 # a 0-d parameter too
    grads = [{k: rng.standard_normal(v.shape) for k, v in host.items()} for _ in range(steps)]
    return host, grads


def adopted(backend, host, opt):
    f64 = backend.dtype("float64")
    return opt.adopt({k: backend.asarray(v, f64) for k, v in host.items()}, backend.xp)


def on_device(backend, grads):
    return {k: backend.asarray(v, backend.dtype("float64")) for k, v in grads.items()}


def test_adamw_matches_the_algorithm(backend):
    host, grads = host_problem()
    opt = AdamW(weight_decay=0.1, no_decay=frozenset({"g", "b"}))
    params = adopted(backend, host, opt)
    assert (opt.layout is not None) == views_alias(backend.xp)    # flat on numpy and cupy
    for g in grads:
        params = opt.update(params, on_device(backend, g), lr=0.01)
    for name in host:
        expected = numpy_adamw(host[name], [g[name] for g in grads], 0.01,
                               opt.beta1, opt.beta2, opt.eps, 0.1, name == "W")
        np.testing.assert_allclose(backend.to_numpy(params[name]), expected, rtol=1e-12)
    assert opt.step == 5


@pytest.mark.parametrize("max_norm, clipped", [(1.0, True), (100.0, False), (0.0, False),
                                             (-1.0, False)])
def test_clip_and_update_scales_to_the_global_norm(backend, max_norm, clipped):
    host, grads = host_problem(seed=2, steps=3)
    opt = AdamW(weight_decay=0.1, no_decay=frozenset({"g", "b"}))
    params = adopted(backend, host, opt)
    norms = [math.sqrt(sum(float(np.sum(a * a)) for a in g.values())) for g in grads]
    assert all(n > 1.0 for n in norms) and all(n < 100.0 for n in norms)
    for g, norm in zip(grads, norms):
        loss = backend.asarray(np.asarray(2.5), backend.dtype("float64"))
        stats = backend.to_numpy(opt.clip_and_update(params, on_device(backend, g), 0.01,
                                                     max_norm, loss))
        np.testing.assert_allclose(stats, [2.5, norm], rtol=1e-12)
    scales = [min(1.0, max_norm / (n + 1e-12)) if clipped else 1.0 for n in norms]
    for name in host:
        expected = numpy_adamw(host[name], [g[name] * s for g, s in zip(grads, scales)], 0.01,
                               opt.beta1, opt.beta2, opt.eps, 0.1, name == "W")
        np.testing.assert_allclose(backend.to_numpy(params[name]), expected, rtol=1e-12)


@pytest.mark.parametrize("bad", ["nan-gradient", "inf-gradient", "nan-loss", "inf-loss"])
@pytest.mark.parametrize("after_steps", [0, 2])
def test_a_step_that_is_not_finite_changes_nothing(backend, bad, after_steps):
    """Decided on the device, without a host read: parameters and moments keep every bit."""
    host, grads = host_problem(seed=3, steps=3)
    opt = AdamW(weight_decay=0.1, no_decay=frozenset({"g"}))
    params = adopted(backend, host, opt)
    finite_loss = backend.asarray(np.asarray(1.0), backend.dtype("float64"))
    for g in grads[:after_steps]:
        opt.clip_and_update(params, on_device(backend, g), 0.01, 1.0, finite_loss)
    before = [{k: backend.to_numpy(a).copy() for k, a in group.items()}
              for group in (params, opt.m, opt.v)]
    g, loss = dict(grads[-1]), 1.0
    if bad.endswith("gradient"):
        g["W"] = g["W"].copy()
        g["W"][1, 2] = np.nan if bad.startswith("nan") else np.inf
    else:
        loss = np.nan if bad.startswith("nan") else np.inf
    reads = host_reads()
    with quiet_float_warnings():                          # inf * scale: the trainer's too
        stats = opt.clip_and_update(params, on_device(backend, g), 0.01, 1.0,
                                    backend.asarray(np.asarray(loss), backend.dtype("float64")))
    assert host_reads() == reads                          # nothing read before the caller does
    assert not np.all(np.isfinite(backend.to_numpy(stats)))
    after = [{k: backend.to_numpy(a) for k, a in group.items()}
             for group in (params, opt.m, opt.v)]
    if not after_steps:       # moments the step allocated stay at their start, zero
        before[1:] = [{k: np.zeros_like(a) for k, a in group.items()} for group in after[1:]]
    for old, new in zip(before, after):
        assert old.keys() == new.keys() and old
        for name in old:
            np.testing.assert_array_equal(new[name], old[name], err_msg=name)


def test_flat_buffers_are_one_array_each_with_parameters_as_views():
    backend = get_backend("numpy")
    host, grads = host_problem(seed=4, steps=1)
    opt = AdamW(no_decay=frozenset({"g"}))
    params = adopted(backend, host, opt)
    assert list(params) == list(host)                     # the model's order, for checkpoints
    assert opt.m == {} and opt.v == {}                    # no moments before the first step
    opt.update(params, on_device(backend, grads[0]), lr=0.01)
    for group, flat in ((params, opt.flat["p"]), (opt.m, opt.flat["m"]), (opt.v, opt.flat["v"])):
        assert flat.ndim == 1 and flat.size == sum(a.size for a in host.values())
        assert all(np.shares_memory(a, flat) for a in group.values())
    # the decayed parameters come first: weight decay is one pass over a prefix
    assert opt.layout.order[0] != "g" and opt.layout.n_decayed == host["W"].size + 1


@pytest.mark.parametrize("model", list(MODELS))
def test_a_float64_step_matches_the_textbook_per_tensor_step(model):
    """Three TrainState steps (flat buffers, device clipping) against clipping and AdamW
    written out per parameter in NumPy, from the same gradients."""
    backend = get_backend("numpy")
    cfg = get_preset(model, "tiny")
    settings = TrainSettings(seed=0, dtype="float64", grad_clip=0.05, weight_decay=0.1)
    state = TrainState.create(model, cfg, backend, settings)
    assert state.optimizer.layout is not None
    module = get_model(model)
    host = {k: backend.to_numpy(v).copy() for k, v in state.params.items()}
    m = {k: np.zeros_like(v) for k, v in host.items()}
    v2 = {k: np.zeros_like(v) for k, v in host.items()}
    opt = state.optimizer
    for t in range(1, 4):
        x, y = random_batch(4, cfg.context, cfg.vocab_size, seed=t)
        device_params = {k: backend.asarray(a) for k, a in host.items()}
        loss, grads = module.loss_and_grads(device_params, backend.asarray(x),
                                            backend.asarray(y), cfg, backend.ops)
        g = {k: backend.to_numpy(a) for k, a in grads.items()}
        norm = math.sqrt(sum(float(np.sum(a * a)) for a in g.values()))
        scale = min(1.0, settings.grad_clip / (norm + 1e-12))
        lr = 1e-2
        for k in host:
            gk = g[k] * scale
            m[k] = opt.beta1 * m[k] + (1 - opt.beta1) * gk
            v2[k] = opt.beta2 * v2[k] + (1 - opt.beta2) * gk ** 2
            if k not in module.NO_DECAY:
                host[k] = host[k] - lr * settings.weight_decay * host[k]
            host[k] = host[k] - lr * (m[k] / (1 - opt.beta1 ** t)) / (
                np.sqrt(v2[k] / (1 - opt.beta2 ** t)) + opt.eps)
        metrics = state.train_step(x, y, lr)
        assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-12)
        assert metrics["loss"] == pytest.approx(float(loss), rel=1e-12)
        assert norm > settings.grad_clip                  # the clipping was exercised
    for k in host:
        np.testing.assert_allclose(backend.to_numpy(state.params[k]), host[k], rtol=1e-12,
                                   atol=1e-15, err_msg=k)


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(s, 1.0, warmup=10, max_steps=110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert cosine_lr(110, 1.0, 10, 110) == pytest.approx(0.1)
    assert cosine_lr(60, 1.0, 10, 110) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))


# ---------------------------------------------------------------------------------
# the published values and the edges: pinned against constants, not read back
# ---------------------------------------------------------------------------------
# beta1 0.9 and eps 1e-8: Adam's published values (Kingma & Ba), kept by Loshchilov &
# Hutter and by PyTorch's AdamW, whose default weight decay is 0.01 too; beta2 0.95, not
# their 0.999, is this trainer's choice (GPT-3's and nanoGPT's)
PUBLISHED = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.01}


def test_the_trainer_runs_adamw_at_the_published_defaults():
    state = TrainState.create("brainlike", get_preset("brainlike", "tiny"), get_backend("numpy"))
    for opt in (AdamW(), state.optimizer):
        assert {name: getattr(opt, name) for name in PUBLISHED} == PUBLISHED
        assert opt.step == 0


@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_twenty_steps_at_the_defaults_match_the_textbook(backend, weight_decay):
    """Long enough for every bias correction ``1 - beta^t`` to matter (beta1^t < 1/2
    from t = 7, beta2^t from t = 14); weight decay 0 (``--weight-decay 0``) included."""
    host, grads = host_problem(seed=5, steps=20)
    opt = AdamW(weight_decay=weight_decay, no_decay=frozenset({"b"}))
    params = adopted(backend, host, opt)
    loss = backend.asarray(np.asarray(0.5), backend.dtype("float64"))
    for g in grads:
        opt.clip_and_update(params, on_device(backend, g), 0.02, 0.0, loss)
    for name in host:
        expected = numpy_adamw(host[name], [g[name] for g in grads], 0.02, 0.9, 0.95, 1e-8,
                               weight_decay, name != "b")
        np.testing.assert_allclose(backend.to_numpy(params[name]), expected, rtol=1e-12,
                                   err_msg=name)
    assert opt.step == 20


def test_betas_below_one_half_match_the_textbook(backend):
    """``1 - beta`` for any beta in [0, 1), not only near 1 (where ``1 % beta`` agrees)."""
    host, grads = host_problem(seed=8, steps=4)
    opt = AdamW(beta1=0.3, beta2=0.45, eps=1e-6, weight_decay=0.1, no_decay=frozenset({"b"}))
    params = adopted(backend, host, opt)
    for g in grads:
        params = opt.update(params, on_device(backend, g), lr=0.05)
    for name in host:
        expected = numpy_adamw(host[name], [g[name] for g in grads], 0.05, 0.3, 0.45, 1e-6,
                               0.1, name != "b")
        np.testing.assert_allclose(backend.to_numpy(params[name]), expected, rtol=1e-12,
                                   err_msg=name)


def test_an_undone_step_leaves_the_count_and_the_next_steps_as_if_it_never_was(backend):
    """Two steps, a NaN step taken back with ``undo_count``, three more: the step count and
    the parameters are those of five finite steps (the bias corrections use the count)."""
    host, grads = host_problem(seed=7, steps=5)
    opt = AdamW(weight_decay=0.1, no_decay=frozenset({"g"}))
    params = adopted(backend, host, opt)
    loss = backend.asarray(np.asarray(1.0), backend.dtype("float64"))
    for g in grads[:2]:
        opt.clip_and_update(params, on_device(backend, g), 0.01, 0.0, loss)
    nan_grads = {k: np.full_like(v, np.nan) for k, v in host.items()}
    with quiet_float_warnings():
        opt.clip_and_update(params, on_device(backend, nan_grads), 0.01, 0.0, loss)
    assert opt.step == 3                                  # counted until the caller undoes it
    opt.undo_count()
    assert opt.step == 2
    for g in grads[2:]:
        opt.clip_and_update(params, on_device(backend, g), 0.01, 0.0, loss)
    assert opt.step == 5
    for name in host:
        expected = numpy_adamw(host[name], [g[name] for g in grads], 0.01, 0.9, 0.95, 1e-8,
                               0.1, name != "g")
        np.testing.assert_allclose(backend.to_numpy(params[name]), expected, rtol=1e-12,
                                   err_msg=name)


def textbook_cosine(step, warmup, max_steps, min_ratio):
    """Linear warmup to the peak at step ``warmup``, then the half cosine from the peak
    down to ``min_ratio`` at ``max_steps`` (at least one step after the peak), then flat."""
    if step < warmup:
        return (step + 1) / warmup
    end = max(max_steps, warmup + 1)
    if step >= end:
        return min_ratio
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * (step - warmup) /
                                                       (end - warmup))) / 2


@pytest.mark.parametrize("warmup, max_steps", [(0, 13), (1, 12), (3, 20), (6, 17), (4, 5),
                                               (5, 5), (7, 3)])
@pytest.mark.parametrize("min_ratio", [0.1, 0.0, 0.35])
def test_cosine_schedule_at_its_edges(warmup, max_steps, min_ratio):
    """Warmup 0 and 1, ``max_steps`` at, just past and before the warmup, and steps
    past ``max_steps`` (the rate stays at its floor)."""
    for step in range(max(max_steps, warmup) + 6):
        assert cosine_lr(step, 2.5, warmup, max_steps, min_ratio) == pytest.approx(
            2.5 * textbook_cosine(step, warmup, max_steps, min_ratio), rel=1e-12,
            abs=1e-15), step
    assert cosine_lr(warmup, 2.5, warmup, max_steps, min_ratio) == pytest.approx(2.5)
    assert cosine_lr(max_steps + 1000, 2.5, warmup, max_steps, min_ratio) == pytest.approx(
        2.5 * min_ratio, abs=1e-15)
