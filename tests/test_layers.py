"""Every layer's backward against central finite differences in float64, on every backend."""

import numpy as np
import pytest

from brainlike_np import layers as L
from brainlike_np.backends import get_namespace
from gradcheck import assert_close, numeric_grad

RNG = np.random.default_rng(0)


def check_layer(backend, forward, backward, inputs, rtol=1e-6, atol=1e-8):
    """Check ``backward`` against finite differences of ``sum(forward(*inputs) * R)``.

    ``inputs`` are float64 host arrays, every one differentiated; ``backward(dout, cache)``
    returns one gradient per input, in order.
    """
    f64 = backend.dtype("float64")
    dev = [backend.asarray(a, f64) for a in inputs]
    out, cache = forward(*dev)
    upstream = RNG.standard_normal(tuple(out.shape))
    analytic = backward(backend.asarray(upstream, f64), cache)

    def loss_of(arrays):
        o, _ = forward(*[backend.asarray(a, f64) for a in arrays])
        return float(np.sum(backend.to_numpy(o) * upstream))

    for i, g in enumerate(analytic):
        expected = numeric_grad(loss_of, inputs, i)
        assert_close(backend.to_numpy(g), expected, rtol, atol, what=f"input {i}")


def test_linear(backend):
    x, W, b = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((4, 5)), RNG.standard_normal(5)
    check_layer(backend, L.linear_forward, L.linear_backward, [x, W, b])


def test_linear_without_bias(backend):
    x, W = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 2))
    out, cache = L.linear_forward(backend.asarray(x), backend.asarray(W))
    assert L.linear_backward(out, cache)[2] is None
    check_layer(backend, L.linear_forward, lambda d, c: L.linear_backward(d, c)[:2], [x, W])


def test_rmsnorm(backend):
    x, g = RNG.standard_normal((2, 3, 6)), RNG.standard_normal(6)
    check_layer(backend, lambda x, g: L.rmsnorm_forward(x, g, backend.ops),
                lambda d, c: L.rmsnorm_backward(d, c, backend.ops), [x, g])


def test_rmsnorm_output_rebuilds_the_forward_output(backend):
    x, g = backend.asarray(RNG.standard_normal((2, 3, 7))), backend.asarray(RNG.standard_normal(7))
    y, cache = L.rmsnorm_forward(x, g, backend.ops)
    np.testing.assert_allclose(backend.to_numpy(L.rmsnorm_output(cache)), backend.to_numpy(y),
                               rtol=1e-6, atol=1e-7)


def test_rmsnorm_normalises(backend):
    x = backend.asarray(RNG.standard_normal((4, 8)) * 7.0)
    y, _ = L.rmsnorm_forward(x, backend.ones((8,), x.dtype), backend.ops)
    rms = np.sqrt(np.mean(backend.to_numpy(y) ** 2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-6)


def test_sigmoid(backend):
    check_layer(backend, L.sigmoid_forward, lambda d, c: [L.sigmoid_backward(d, c)],
                [RNG.standard_normal((3, 5)) * 3])


def test_sigmoid_extreme_inputs_are_finite(backend):
    x = backend.asarray(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0]))
    y = backend.to_numpy(L.sigmoid_forward(x)[0])
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0], rtol=1e-12)


def test_embedding_with_repeated_ids(backend):
    ids = backend.asarray(np.array([[1, 3, 1], [0, 1, 3]]))
    table = RNG.standard_normal((5, 4))
    check_layer(backend,
                lambda t: L.embedding_forward(t, ids, backend.ops),
                lambda d, c: [L.embedding_backward(d, c, backend.ops)], [table])


def test_embedding_is_a_lookup(backend):
    table = RNG.standard_normal((6, 3))
    ids = np.array([[5, 0], [2, 2]])
    out, _ = L.embedding_forward(backend.asarray(table), backend.asarray(ids), backend.ops)
    np.testing.assert_array_equal(backend.to_numpy(out), table[ids])


# batch 3, heads 2, head width 5 (D = 10) and sequence lengths of other sizes: every
# axis of the attention's arrays has its own size, so a mixed-up axis cannot pass
B, HEADS, D = 3, 2, 10


def _attention(mask, ops):
    """The attention layer with its inputs and ops kept in the cache, for check_layer:
    the layer's backward takes them from its caller."""
    def forward(xq, xkv, Wq, Wk, Wv, Wo):
        out, cache = L.attention_forward(xq, xkv, Wq, Wk, Wv, Wo, HEADS, ops, key_mask=mask)
        return out, (cache, xq, xkv, ops)
    return forward


def _attention_backward(dout, cache):
    return L.attention_backward(dout, *cache)


def _attention_inputs(Lq, Lk):
    return [RNG.standard_normal((B, Lq, D)), RNG.standard_normal((B, Lk, D))] + [
        RNG.standard_normal((D, D)) / 3 for _ in range(4)]


# sample 0: two keys masked; sample 1: every key masked; sample 2: none
MASK = np.array([[True, False, True, False], [False] * 4, [True] * 4])


def test_cross_attention(backend):
    check_layer(backend, _attention(None, backend.ops), _attention_backward,
                _attention_inputs(4, 7))


def test_attention_with_some_and_all_keys_masked(backend):
    check_layer(backend, _attention(backend.asarray(MASK), backend.ops), _attention_backward,
                _attention_inputs(6, 4))


def test_all_masked_query_row_gives_zero_message_and_gradient(backend):
    f64 = backend.dtype("float64")
    inputs = [backend.asarray(a, f64) for a in _attention_inputs(6, 4)]
    out, cache = _attention(backend.asarray(MASK), backend.ops)(*inputs)
    out = backend.to_numpy(out)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[1], 0.0)
    assert np.all(out[[0, 2]] != 0.0)
    dxq, dxkv, *_ = _attention_backward(backend.ones(tuple(out.shape), f64), cache)
    np.testing.assert_array_equal(backend.to_numpy(dxkv)[1], 0.0)
    np.testing.assert_array_equal(backend.to_numpy(dxq)[1], 0.0)
    assert np.all(np.isfinite(backend.to_numpy(dxkv)))


def test_masked_keys_do_not_change_the_output(backend):
    """Changing a masked key/value row must not change any output."""
    xq, xkv, *W = _attention_inputs(6, 4)
    attention = _attention(backend.asarray(MASK), backend.ops)
    out1, _ = attention(*[backend.asarray(a) for a in [xq, xkv, *W]])
    xkv2 = xkv.copy()
    xkv2[~MASK] += 100.0
    out2, _ = attention(*[backend.asarray(a) for a in [xq, xkv2, *W]])
    np.testing.assert_allclose(backend.to_numpy(out1), backend.to_numpy(out2), rtol=1e-5, atol=1e-6)


def test_heads_split_and_merge_along_the_last_axis(backend):
    t = RNG.standard_normal((B, 7, D))                                   # [B, L, D]
    heads = L.split_heads(backend.asarray(t), HEADS)
    expected = t.reshape(B, 7, HEADS, D // HEADS).transpose(0, 2, 1, 3)  # [B, h, L, d]
    np.testing.assert_array_equal(backend.to_numpy(heads), expected)
    np.testing.assert_array_equal(backend.to_numpy(L.merge_heads(heads)), t)


def _softmax(x):
    xp = get_namespace(x)
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    probs = e / xp.sum(e, axis=-1, keepdims=True)
    return probs, probs


def test_softmax_backward(backend):
    check_layer(backend, _softmax, lambda d, probs: [L.softmax_backward(probs, d)],
                [RNG.standard_normal((2, 3, 5)) * 2])


def test_softmax_backward_gives_masked_entries_no_gradient(backend):
    probs = np.array([[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]])
    d = L.softmax_backward(backend.asarray(probs), backend.asarray(RNG.standard_normal((2, 3))))
    d = backend.to_numpy(d)
    np.testing.assert_array_equal(d[probs == 0.0], 0.0)
    np.testing.assert_allclose(np.sum(d, axis=-1), 0.0, atol=1e-15)   # softmax sums to 1


def test_cross_entropy(backend):
    targets = backend.asarray(np.array([2, 0, 4]))
    logits = RNG.standard_normal((3, 5))

    def forward(z):
        loss, cache = L.cross_entropy_forward(z, targets)
        return loss, cache
    check_layer(backend, forward, lambda d, c: [L.cross_entropy_backward(d, c)], [logits])


def test_cross_entropy_backward_scales_by_a_python_number(backend):
    """The trainer passes 1 (the cache is the gradient); any other number scales it."""
    logits, targets = RNG.standard_normal((3, 5)), np.array([4, 1, 1])
    _, cache = L.cross_entropy_forward(backend.asarray(logits), backend.asarray(targets))
    probs = np.exp(logits) / np.sum(np.exp(logits), axis=-1, keepdims=True)
    gradient = (probs - np.eye(5)[targets]) / 3                        # [B, V]
    for dloss in (1, 1.0, 0.25, -2.0, 2, 2.0, 3):
        np.testing.assert_allclose(backend.to_numpy(L.cross_entropy_backward(dloss, cache)),
                                   dloss * gradient, rtol=1e-12, atol=1e-15)
    assert L.cross_entropy_backward(1, cache) is cache       # the trainer's 1 costs nothing


def test_cross_entropy_is_stable_for_large_logits(backend):
    logits = backend.asarray(np.array([[1000.0, 0.0, -1000.0]]))
    loss, _ = L.cross_entropy_forward(logits, backend.asarray(np.array([0])))
    assert float(loss) == pytest.approx(0.0, abs=1e-12)
    loss, _ = L.cross_entropy_forward(logits, backend.asarray(np.array([1])))
    assert float(loss) == pytest.approx(1000.0)


def test_first_rows(backend):
    table = RNG.standard_normal((5, 3))
    out, _ = L.first_rows_forward(backend.asarray(table), 2)
    np.testing.assert_array_equal(backend.to_numpy(out), table[:2])
    check_layer(backend, lambda t: L.first_rows_forward(t, 2),
                lambda d, c: [L.first_rows_backward(d, c)], [table])


def test_accumulate_sets_then_adds_per_name():
    grads = {}
    a, b, c = (RNG.standard_normal((2, 3)) for _ in range(3))
    L.accumulate(grads, "W", a)
    assert grads["W"] is a
    L.accumulate(grads, "b", c)
    L.accumulate(grads, "W", b)
    np.testing.assert_array_equal(grads["W"], a + b)
    assert grads["b"] is c


def test_per_sample_flat_ids_index_each_samples_own_rows(backend):
    """At N = 29 (a sum of distinct bits, as N = 32 is not, ``idx + b N`` differs from
    ``idx | b N``): row ``idx[b, j]`` of sample b is row ``idx[b, j] + b N`` of the
    ``[B N, F]`` view."""
    Bn, N, F = 3, 29, 5
    idx = np.array([[28, 3, 17, 0], [5, 12, 1, 27], [9, 2, 26, 14]])            # [B, k]
    table = RNG.standard_normal((Bn, N, F))                                      # [B, N, F]
    flat = backend.to_numpy(L.per_sample_flat_ids(backend.asarray(idx), N))     # [B, k]
    assert flat.dtype == idx.dtype
    np.testing.assert_array_equal(table.reshape(Bn * N, F)[flat],
                                  np.take_along_axis(table, idx[:, :, None], axis=1))
