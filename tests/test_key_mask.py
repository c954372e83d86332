"""The interaction step's key mask is strict: a neuron attends as a key only when its
activation is above tau, so a neuron exactly at tau is masked."""

import numpy as np
import pytest

from brainlike_np.models import brainlike as model
import gradcheck

TAU = 0.5
CFG = model.PRESETS["tiny"].with_overrides(tau=TAU)


def params_with(backend, cfg, **host_overrides):
    """Generic float64 parameters (non-zero Wo, so attention reaches the state), with
    the named ones replaced by host arrays."""
    p = gradcheck.perturbed_params(backend, model, cfg)
    f64 = backend.dtype("float64")
    p.update({n: backend.asarray(v, f64) for n, v in host_overrides.items()})
    return p


def logits(backend, p, x, cfg, path):
    cfg = cfg.with_overrides(path=path)
    return backend.to_numpy(model.next_logits(p, backend.asarray(x), cfg, backend.ops))


@pytest.mark.parametrize("path", model.PATHS)
def test_activations_exactly_at_tau_give_no_attention_message(backend, path):
    """With z = 0 (E, P, b_e zero) the encoder's activations are sigmoid(0) = 0.5, and
    with w_a = b_a = 0 so is every step's: all at tau, so every key is masked and each
    step's attention message is exactly zero, the same as with Wo = 0."""
    shapes = model.param_shapes(CFG)
    at_tau = {n: np.zeros(shapes[n]) for n in ("E", "P", "b_e", "w_a", "b_a")}
    x = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(3, CFG.context))
    got = logits(backend, params_with(backend, CFG, **at_tau), x, CFG, path)
    no_message = logits(backend, params_with(backend, CFG, **at_tau, Wo=np.zeros(shapes["Wo"])),
                        x, CFG, path)
    np.testing.assert_array_equal(got, no_message)
    # the control: just below those activations the keys are used and the message counts
    below = CFG.with_overrides(tau=float(np.nextafter(TAU, 0.0)))
    used = logits(backend, params_with(backend, below, **at_tau), x, below, path)
    assert np.max(np.abs(used - no_message)) > 1e-3


@pytest.mark.parametrize("path", model.PATHS)
def test_a_key_at_tau_does_not_reach_the_other_neurons(backend, path):
    """In one step, a neuron whose activation equals tau is not a key: changing its state
    leaves every other neuron's new state unchanged; just above tau it changes them."""
    rng = np.random.default_rng(5)
    M = CFG.k_active
    H = rng.standard_normal((2, M, CFG.d_state))                     # [B, M, D]
    H_moved = H.copy()
    H_moved[:, 0, :] += 1.0                                          # neuron 0's state
    a = rng.uniform(0.6, 0.9, size=(2, M))                           # [B, M], above tau
    p = params_with(backend, CFG)
    # the dense path's step also gets the selection (all of these M neurons are selected)
    selected = None if path == "sparse" else backend.asarray(np.ones((2, M)),
                                                             backend.dtype("float64"))

    def others_after_step(H_in, a0):
        a_in = a.copy()
        a_in[:, 0] = a0
        f64 = backend.dtype("float64")
        H_new, _, _ = model.step_forward(p, backend.asarray(H_in, f64),
                                         backend.asarray(a_in, f64), CFG, backend.ops, selected)
        return backend.to_numpy(H_new)[:, 1:, :]

    np.testing.assert_array_equal(others_after_step(H, TAU), others_after_step(H_moved, TAU))
    above = float(np.nextafter(TAU, 1.0))
    assert np.max(np.abs(others_after_step(H, above) - others_after_step(H_moved, above))) > 1e-6
