"""AdamW and gradient clipping against an independent NumPy transcription of the papers."""

import math

import numpy as np
import pytest

from brainlike_np.optim import AdamW, clip_by_global_norm, cosine_lr, global_norm


def numpy_adamw(p, grads, lr, b1, b2, eps, wd, decay):
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        if decay:
            p = p - lr * wd * p
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def test_adamw_matches_the_algorithm(backend):
    rng = np.random.default_rng(1)
    host = {"W": rng.standard_normal((3, 4)), "g": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in host.items()} for _ in range(5)]
    f64 = backend.dtype("float64")
    opt = AdamW(weight_decay=0.1, no_decay=frozenset({"g"}))
    params = {k: backend.asarray(v, f64) for k, v in host.items()}
    for g in grads:
        params = opt.update(params, {k: backend.asarray(v, f64) for k, v in g.items()}, lr=0.01)
    for name, decay in [("W", True), ("g", False)]:
        expected = numpy_adamw(host[name], [g[name] for g in grads], 0.01,
                               opt.beta1, opt.beta2, opt.eps, 0.1, decay)
        np.testing.assert_allclose(backend.to_numpy(params[name]), expected, rtol=1e-12)
    assert opt.step == 5


def test_clip_by_global_norm(backend):
    grads = {"a": backend.asarray(np.array([3.0, 0.0])), "b": backend.asarray(np.array([[4.0]]))}
    assert global_norm(grads) == pytest.approx(5.0)
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    assert global_norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(backend.to_numpy(clipped["a"]), [0.6, 0.0])
    unclipped, _ = clip_by_global_norm(grads, 10.0)
    assert unclipped is grads


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(s, 1.0, warmup=10, max_steps=110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert cosine_lr(110, 1.0, 10, 110) == pytest.approx(0.1)
    assert cosine_lr(60, 1.0, 10, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
