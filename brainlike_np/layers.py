"""Layers with hand-written backprop, written once against the Python array API.

Every layer is a pair, side by side (llm.c style):

    out, cache = name_forward(inputs..., params...)
    d_inputs..., d_params... = name_backward(dout, cache)

Backward functions return the gradients of their inputs and parameters; the caller
accumulates parameter gradients into its grads dict with ``accumulate`` (parameters can
be shared, for example across interaction steps). Shapes are in the comments: B batch, L/Lq/Lk
sequence lengths, D width, h heads, d = D / h head width, R rows of a table.

One convention for the array namespace: every function derives it from the arrays it
receives (``xp = get_namespace(...)``, through the backend layer); none takes an ``xp``
argument, so a caller never has to keep one in step with its arrays. Nothing here
imports numpy or cupy.

A cache that a forward/backward pair must agree on field by field is a ``NamedTuple``
when it has more than three fields (``AttentionCache``), as llm.c names its activation
buffers: the backward reads fields by name, so adding one cannot shift the others.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .backends import device_of, get_namespace

RMS_EPS = 1e-6


def accumulate(grads: dict, name: str, g) -> None:
    """Add a parameter's gradient g to ``grads[name]`` (set it the first time)."""
    grads[name] = g if name not in grads else grads[name] + g


# ---------------------------------------------------------------------------------
# linear: out = x @ W (+ b), over any leading batch dimensions
# ---------------------------------------------------------------------------------
def linear_forward(x, W, b=None):
    """x ``[..., Din]``, W ``[Din, Dout]``, b ``[Dout]`` -> ``[..., Dout]``.

    The leading dimensions are folded into rows first: one ``[n, Din] @ [Din, Dout]``
    product, which BLAS runs several times faster than a stack of small ones."""
    xp = get_namespace(x)
    Din, Dout = W.shape
    out = xp.reshape(x, (-1, Din)) @ W            # [n, Dout]
    if b is not None:
        out = out + b
    return xp.reshape(out, tuple(x.shape[:-1]) + (Dout,)), (x, W, b is not None)


def linear_backward(dout, cache):
    """-> (dx ``[..., Din]``, dW ``[Din, Dout]``, db ``[Dout]`` or None)."""
    xp = get_namespace(dout)
    x, W, has_bias = cache
    dx = linear_input_grad(dout, W)               # [..., Din]
    dW = linear_weight_grad(dout, x)              # [Din, Dout]
    db = xp.sum(xp.reshape(dout, (-1, W.shape[1])), axis=0) if has_bias else None
    return dx, dW, db


def linear_input_grad(dout, W):
    """dx ``[..., Din]`` of ``x @ W``: dout ``[..., Dout]``, W ``[Din, Dout]`` (the leading
    dimensions folded into rows: one product)."""
    xp = get_namespace(dout)
    Din, Dout = W.shape
    d2 = xp.reshape(dout, (-1, Dout))             # [n, Dout]
    return xp.reshape(d2 @ W.T, tuple(dout.shape[:-1]) + (Din,))


def linear_weight_grad(dout, x):
    """dW ``[Din, Dout]`` of ``x @ W``: x ``[..., Din]``, dout ``[..., Dout]`` (the leading
    dimensions folded into rows: one product)."""
    xp = get_namespace(dout)
    x2 = xp.reshape(x, (-1, x.shape[-1]))         # [n, Din]
    d2 = xp.reshape(dout, (-1, dout.shape[-1]))   # [n, Dout]
    return x2.T @ d2


# ---------------------------------------------------------------------------------
# RMSNorm: y = x / sqrt(mean(x^2) + eps) * g
# ---------------------------------------------------------------------------------
def rmsnorm_forward(x, g, ops):
    """x ``[..., D]``, g ``[D]`` -> ``[..., D]``, one op of the backend's hot path
    (``ops.rmsnorm_forward``). The cache keeps the input (which its producer keeps
    anyway) and the inverse norm ``[..., 1]``, not the normalised output:
    ``rmsnorm_output`` rebuilds that in one pass."""
    y, r = ops.rmsnorm_forward(x, g, RMS_EPS)                              # r: [..., 1]
    return y, (x, r, g)


def rmsnorm_output(cache):
    """The forward's output again, from its cache: ``[..., D]``."""
    x, r, g = cache
    return (x * r) * g


def rmsnorm_backward(dout, cache, ops):
    """-> (dx ``[..., D]``, dg ``[D]``), one op (``ops.rmsnorm_backward``)."""
    x, r, g = cache
    return ops.rmsnorm_backward(dout, x, r, g)


# ---------------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------------
def sigmoid_forward(x):
    xp = get_namespace(x)
    # 1 / (1 + exp(-x)) overflows for very negative x; this form never does.
    e = xp.exp(-xp.abs(x))
    y = xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return y, y


def sigmoid_backward(dout, y):
    return dout * y * (1.0 - y)


# ---------------------------------------------------------------------------------
# embedding lookup (a shared table indexed by ids)
# ---------------------------------------------------------------------------------
def embedding_forward(table, ids, ops):
    """table ``[R, F]``, ids ``[*I]`` -> ``[*I, F]``; ``ops`` is the backend's hot path."""
    return ops.gather_rows(table, ids), (ids, table.shape[0])


def embedding_backward(dout, cache, ops):
    """-> dtable ``[R, F]``: a scatter-add, ids may repeat."""
    xp = get_namespace(dout)
    ids, n_rows = cache
    F = dout.shape[-1]
    return ops.scatter_add_rows(xp.reshape(ids, (-1,)), xp.reshape(dout, (-1, F)), n_rows)


def first_rows_forward(table, n):
    """The first n rows (e.g. positions of a shorter context): ``[R, F]`` -> ``[n, F]``."""
    return table[:n, :], table.shape[0]


def first_rows_backward(dout, n_rows):
    """-> dtable ``[R, F]``: dout on the first rows, zero below."""
    xp = get_namespace(dout)
    n, F = dout.shape
    if n == n_rows:
        return dout
    zeros = xp.zeros((n_rows - n, F), dtype=dout.dtype, device=device_of(dout))
    return xp.concat([dout, zeros], axis=0)


def per_sample_flat_ids(idx, N):
    """idx ``[B, k]`` into rows of a ``[B*N, F]`` view: ``idx[b, j] + b*N``."""
    xp = get_namespace(idx)
    B = idx.shape[0]
    offsets = xp.arange(B, dtype=idx.dtype, device=device_of(idx)) * N    # [B]
    return idx + offsets[:, None]


# ---------------------------------------------------------------------------------
# multi-head attention with an optional key mask
# ---------------------------------------------------------------------------------
class AttentionCache(NamedTuple):
    """What ``attention_backward`` needs from ``attention_forward`` (not the inputs,
    which the caller keeps or rebuilds, nor the heads' outputs, which it rebuilds)."""
    q: object          # [B, h, Lq, d] queries, already scaled by 1/sqrt(d)
    k: object          # [B, h, Lk, d]
    v: object          # [B, h, Lk, d]
    lse: object        # [B, h, Lq] each query's log-sum-exp of its kept scores
    key_mask: object   # [B, Lk] bool, True where the key may be attended to, or None
    weights: tuple     # (Wq, Wk, Wv, Wo), each [D, D]


def attention_forward(xq, xkv, Wq, Wk, Wv, Wo, n_heads, ops, key_mask=None):
    """Multi-head scaled dot-product attention.

    xq ``[B, Lq, D]`` (queries), xkv ``[B, Lk, D]`` (keys and values), W* ``[D, D]``,
    key_mask ``[B, Lk]`` bool (True = the key may be attended to) or None. ``ops`` is the
    backend's hot path: its ``attention_forward`` runs every head of every sample (one
    program per (sample, head) in the kernels; the ``[Lq, Lk]`` scores never leave it).
    A query whose keys are all masked gets a zero output and passes zero gradient.
    -> out ``[B, Lq, D]``, cache.

    The cache keeps q, k, v and each query's log-sum-exp, not the heads' outputs or the
    inputs: ``ops.attention_backward`` rebuilds the outputs from the probabilities it
    rebuilds anyway, and the inputs come from the caller, who keeps or rebuilds them.
    """
    q, k, v = (split_heads(linear_forward(x, W)[0], n_heads)
               for x, W in ((xq, Wq), (xkv, Wk), (xkv, Wv)))          # [B, h, L, d]
    q = q * (1.0 / math.sqrt(q.shape[-1]))          # the op takes q scaled
    heads, lse = ops.attention_forward(q, k, v, key_mask)          # [B, h, Lq, d], [B, h, Lq]
    out, _ = linear_forward(merge_heads(heads), Wo)                # [B, Lq, D]
    return out, AttentionCache(q, k, v, lse, key_mask, (Wq, Wk, Wv, Wo))


def attention_backward(dout, cache, xq, xkv, ops):
    """dout ``[B, Lq, D]``; xq, xkv: the forward's inputs ->
    (dxq, dxkv, dWq, dWk, dWv, dWo). For self-attention add dxq and dxkv."""
    q, k, v = cache.q, cache.k, cache.v                            # q is scaled
    Wq, Wk, Wv, Wo = cache.weights
    dmerged = linear_input_grad(dout, Wo)                          # [B, Lq, D]
    dq, dk, dv, heads = ops.attention_backward(split_heads(dmerged, q.shape[1]), q, k, v,
                                               cache.lse, cache.key_mask)  # [B, h, L, d]
    dWo = linear_weight_grad(dout, merge_heads(heads))             # heads: rebuilt
    del heads, dmerged
    dq = dq * (1.0 / math.sqrt(q.shape[-1]))                       # of the unscaled q
    dxq, dWq, _ = linear_backward(merge_heads(dq), (xq, Wq, False))
    dxkv, dWk, _ = linear_backward(merge_heads(dk), (xkv, Wk, False))
    dxv, dWv, _ = linear_backward(merge_heads(dv), (xkv, Wv, False))
    dxkv += dxv
    return dxq, dxkv, dWq, dWk, dWv, dWo


def split_heads(t, n_heads):
    """``[B, L, D]`` -> ``[B, h, L, D/h]``."""
    xp = get_namespace(t)
    B, L, D = t.shape
    return xp.permute_dims(xp.reshape(t, (B, L, n_heads, D // n_heads)), (0, 2, 1, 3))


def merge_heads(t):
    """``[B, h, L, d]`` -> ``[B, L, h*d]``."""
    xp = get_namespace(t)
    B, h, L, d = t.shape
    return xp.reshape(xp.permute_dims(t, (0, 2, 1, 3)), (B, L, h * d))


def softmax_backward(probs, dprobs):
    """d scores = probs * (dprobs - sum(dprobs * probs)) over the last axis; masked
    entries have probs 0 and so get zero gradient."""
    xp = get_namespace(probs)
    return probs * (dprobs - xp.sum(dprobs * probs, axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------
# softmax cross-entropy (mean over the batch)
# ---------------------------------------------------------------------------------
def cross_entropy_forward(logits, targets):
    """logits ``[B, V]``, targets ``[B]`` int64 (PyTorch's take_along_dim takes no other
    index dtype) -> (mean loss, cache).

    One pass gives the loss and its gradient, ``(softmax - onehot) / B``, which the cache
    keeps (``[B, V]``, the only array kept): the backward only scales it."""
    xp = get_namespace(logits)
    B, V = logits.shape
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)              # [B, V]
    probs = xp.exp(shifted)                                                # [B, V], unnormalised
    total = xp.sum(probs, axis=-1, keepdims=True)                          # [B, 1]
    picked = xp.take_along_axis(shifted, targets[:, None], axis=-1)         # [B, 1]
    loss = xp.mean(xp.log(total) - picked)                                 # mean of -log p[y]
    probs /= total * B                                                     # softmax / B
    is_target = targets[:, None] == xp.arange(V, dtype=targets.dtype,
                                              device=device_of(targets))[None, :]  # [B, V]
    return loss, xp.where(is_target, probs - 1.0 / B, probs)


def cross_entropy_backward(dloss, cache):
    """-> dlogits ``[B, V]`` = (softmax - onehot) / B * dloss (a Python 1, the training
    loss's own gradient, costs nothing)."""
    if isinstance(dloss, (int, float)) and dloss == 1:
        return cache
    return cache * dloss
