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
MASK_BIAS = 1e30      # added (negated) to masked attention scores; finite in float32


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
    Din, Dout = W.shape
    x2 = xp.reshape(x, (-1, Din))                 # [n, Din]
    d2 = xp.reshape(dout, (-1, Dout))             # [n, Dout]
    dW = x2.T @ d2                                # [Din, Dout]
    dx = xp.reshape(d2 @ W.T, tuple(x.shape))     # [..., Din]
    db = xp.sum(d2, axis=0) if has_bias else None
    return dx, dW, db


# ---------------------------------------------------------------------------------
# RMSNorm: y = x / sqrt(mean(x^2) + eps) * g
# ---------------------------------------------------------------------------------
def rmsnorm_forward(x, g):
    """x ``[..., D]``, g ``[D]`` -> ``[..., D]``. The cache keeps the input (which its
    producer keeps anyway) and the inverse norm ``[..., 1]``, not the normalised
    output: ``rmsnorm_output`` rebuilds that in one pass."""
    xp = get_namespace(x)
    r = 1.0 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)  # [..., 1]
    return (x * r) * g, (x, r, g)


def rmsnorm_output(cache):
    """The forward's output again, from its cache: ``[..., D]``."""
    x, r, g = cache
    return (x * r) * g


def rmsnorm_backward(dout, cache):
    """-> (dx ``[..., D]``, dg ``[D]``)."""
    xp = get_namespace(dout)
    x, r, g = cache
    D = g.shape[0]
    xhat = x * r                                                           # [..., D]
    dg = xp.sum(xp.reshape(dout * xhat, (-1, D)), axis=0)                 # [D]
    dxhat = dout * g                                                       # [..., D]
    # d/dx of x*r with r = (mean(x^2)+eps)^-1/2: r * (dxhat - xhat * mean(dxhat * xhat))
    dx = r * (dxhat - xhat * xp.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx, dg


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


def tanh_forward(x):
    y = get_namespace(x).tanh(x)
    return y, y


def tanh_backward(dout, y):
    return dout * (1.0 - y * y)


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
    which the caller keeps or rebuilds)."""
    q: object          # [B, h, Lq, d] queries, already scaled by 1/sqrt(d)
    k: object          # [B, h, Lk, d]
    v: object          # [B, h, Lk, d]
    lse: object        # [B, h, Lq, 1] each query's log-sum-exp of its scores
    keep: object       # [B, 1, 1, Lk] 0/1 key mask, or None
    weights: tuple     # (Wq, Wk, Wv, Wo), each [D, D]


def attention_forward(xq, xkv, Wq, Wk, Wv, Wo, n_heads, key_mask=None):
    """Multi-head scaled dot-product attention.

    xq ``[B, Lq, D]`` (queries), xkv ``[B, Lk, D]`` (keys and values), W* ``[D, D]``,
    key_mask ``[B, Lk]`` bool (True = the key may be attended to) or None.
    A query whose keys are all masked gets a zero output and passes zero gradient.
    -> out ``[B, Lq, D]``, cache.

    The cache keeps q, k, v and each query's log-sum-exp of its scores, not the
    ``[B, h, Lq, Lk]`` probabilities, the heads or the inputs: the backward rebuilds the
    probabilities from q, k and the log-sum-exp (as flash attention does) and takes the
    inputs from the caller, who keeps or rebuilds them.
    """
    xp = get_namespace(xq, xkv)
    q, k, v = (split_heads(linear_forward(x, W)[0], n_heads)
               for x, W in ((xq, Wq), (xkv, Wk), (xkv, Wv)))          # [B, h, L, d]
    q = q * (1.0 / math.sqrt(q.shape[-1]))   # scaling q, not the scores, saves a big pass
    keep = None if key_mask is None else xp.astype(key_mask[:, None, None, :], q.dtype)
    probs, lse = masked_softmax_forward(q @ xp.matrix_transpose(k), keep)
    out, _ = linear_forward(merge_heads(probs @ v), Wo)            # [B, Lq, D]
    return out, AttentionCache(q, k, v, lse, keep, (Wq, Wk, Wv, Wo))


def attention_backward(dout, cache, xq, xkv):
    """dout ``[B, Lq, D]``; xq, xkv: the forward's inputs ->
    (dxq, dxkv, dWq, dWk, dWv, dWo). For self-attention add dxq and dxkv.

    The ``[B, h, Lq, Lk]`` arrays are the largest of the model: the softmax backward
    updates its own temporary in place (array-API in-place operators), so at most two of
    them are alive at once."""
    xp = get_namespace(dout)
    q, k, v = cache.q, cache.k, cache.v                            # q is scaled
    Wq, Wk, Wv, Wo = cache.weights
    probs = softmax_from_lse(q @ xp.matrix_transpose(k), cache.lse, cache.keep)  # [B, h, Lq, Lk]
    heads = probs @ v                                              # [B, h, Lq, d]
    dmerged, dWo, _ = linear_backward(dout, (merge_heads(heads), Wo, False))
    dheads = split_heads(dmerged, q.shape[1])                      # [B, h, Lq, d]
    dxv, dWv, _ = linear_backward(merge_heads(xp.matrix_transpose(probs) @ dheads),
                                  (xkv, Wv, False))                # dv: [B, h, Lk, d]
    # softmax backward: d scores = probs * (d probs - sum_j d probs * probs), where the
    # sum is dheads . heads row by row (flash attention's trick: no [Lq, Lk] product)
    dscores = dheads @ xp.matrix_transpose(v)                      # d probs
    dscores -= xp.sum(dheads * heads, axis=-1, keepdims=True)
    dscores *= probs                                               # masked: probs 0, so 0
    del probs, heads, dheads, dmerged
    dq = (dscores @ k) * (1.0 / math.sqrt(q.shape[-1]))            # [B, h, Lq, d]
    dxq, dWq, _ = linear_backward(merge_heads(dq), (xq, Wq, False))
    del dq
    dxkv, dWk, _ = linear_backward(merge_heads(xp.matrix_transpose(dscores) @ q),
                                   (xkv, Wk, False))               # dk: [B, h, Lk, d]
    del dscores
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


def masked_softmax_forward(scores, keep):
    """Softmax over the last axis, over kept keys only -> (probs, log-sum-exp
    ``[..., 1]``). ``keep`` ``[B, 1, 1, Lk]`` 0/1 or None, broadcast: masked scores get a
    -1e30 bias (cheaper than ``where`` over the whole ``[B, h, Lq, Lk]`` tensor), so a
    masked score minus the row maximum is about -1e30, whose exp is exactly 0. A row
    with no kept key has probs 0 and log-sum-exp +inf. ``scores`` is overwritten."""
    xp = get_namespace(scores)
    if keep is not None:
        scores += (keep - 1.0) * MASK_BIAS
    top = xp.max(scores, axis=-1, keepdims=True)                        # [..., 1]
    scores -= top
    e = xp.exp(scores)
    del scores
    if keep is not None:
        e *= keep                                                       # all-masked rows: 0
    total = xp.sum(e, axis=-1, keepdims=True)                           # [..., 1]
    some = total > 0
    safe_total = xp.where(some, total, 1.0)
    e /= safe_total
    return e, xp.where(some, top + xp.log(safe_total), math.inf)


def softmax_from_lse(scores, lse, keep):
    """The probabilities of ``masked_softmax_forward`` again, from the scores and the
    saved log-sum-exp: one exp pass, no reduction (+inf rows give 0). ``scores`` is
    overwritten."""
    if keep is not None:
        scores += (keep - 1.0) * MASK_BIAS
    scores -= lse
    return get_namespace(scores).exp(scores)


# ---------------------------------------------------------------------------------
# softmax cross-entropy (mean over the batch)
# ---------------------------------------------------------------------------------
def cross_entropy_forward(logits, targets):
    """logits ``[B, V]``, targets ``[B]`` int -> (mean loss, cache).

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
