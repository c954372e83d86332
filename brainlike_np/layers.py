"""Layers with hand-written backprop, written once against the Python array API.

Every layer is a pair, side by side (llm.c style):

    out, cache = name_forward(inputs..., params...)
    d_inputs..., d_params... = name_backward(dout, cache)

Backward functions return the gradients of their inputs and parameters; the caller
accumulates parameter gradients into its grads structure (parameters can be shared,
for example across interaction steps). Shapes are in the comments: B batch, L/Lq/Lk
sequence lengths, D width, h heads, d = D / h head width, R rows of a table.

The namespace comes from the arrays (``get_namespace``, through the backend layer);
nothing here imports numpy or cupy.
"""

from __future__ import annotations

import math

from .backends import device_of, get_namespace

RMS_EPS = 1e-6
MASK_BIAS = 1e30      # added (negated) to masked attention scores; finite in float32


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
    """x ``[..., D]``, g ``[D]`` -> ``[..., D]``."""
    xp = get_namespace(x)
    r = 1.0 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)  # [..., 1]
    xhat = x * r                                                           # [..., D]
    return xhat * g, (xhat, r, g)


def rmsnorm_backward(dout, cache):
    """-> (dx ``[..., D]``, dg ``[D]``)."""
    xp = get_namespace(dout)
    xhat, r, g = cache
    D = g.shape[0]
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


def concat_forward(parts):
    """Concatenate on the last axis; the cache is the widths."""
    xp = get_namespace(*parts)
    return xp.concat(parts, axis=-1), [p.shape[-1] for p in parts]


def concat_backward(dout, widths):
    """Split ``dout`` on the last axis back into the parts' widths."""
    grads, start = [], 0
    for w in widths:
        grads.append(dout[..., start:start + w])
        start += w
    return grads


# ---------------------------------------------------------------------------------
# embedding lookup (a shared table indexed by ids) and row gather (per sample)
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


def gather_forward(x, idx, ops):
    """Per-sample rows: x ``[B, N, F]``, idx ``[B, k]`` -> ``x[b, idx[b]]`` ``[B, k, F]``."""
    xp = get_namespace(x)
    B, N, F = x.shape
    flat_ids = per_sample_flat_ids(xp, idx, N)                     # [B, k]
    out = ops.gather_rows(xp.reshape(x, (B * N, F)), flat_ids)     # [B, k, F]
    return out, (flat_ids, B, N)


def gather_backward(dout, cache, ops):
    """-> dx ``[B, N, F]``, zero outside the gathered rows."""
    xp = get_namespace(dout)
    flat_ids, B, N = cache
    F = dout.shape[-1]
    dx = ops.scatter_add_rows(xp.reshape(flat_ids, (-1,)), xp.reshape(dout, (-1, F)), B * N)
    return xp.reshape(dx, (B, N, F))


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


def per_sample_flat_ids(xp, idx, N):
    """idx ``[B, k]`` into rows of a ``[B*N, F]`` view: ``idx[b, j] + b*N``."""
    B = idx.shape[0]
    offsets = xp.arange(B, dtype=idx.dtype, device=device_of(idx)) * N    # [B]
    return idx + offsets[:, None]


# ---------------------------------------------------------------------------------
# multi-head attention with an optional key mask
# ---------------------------------------------------------------------------------
def attention_forward(xq, xkv, Wq, Wk, Wv, Wo, n_heads, key_mask=None):
    """Multi-head scaled dot-product attention.

    xq ``[B, Lq, D]`` (queries), xkv ``[B, Lk, D]`` (keys and values), W* ``[D, D]``,
    key_mask ``[B, Lk]`` bool (True = the key may be attended to) or None.
    A query whose keys are all masked gets a zero output and passes zero gradient.
    -> out ``[B, Lq, D]``.
    """
    xp = get_namespace(xq, xkv)
    q, cq = linear_forward(xq, Wq)                     # [B, Lq, D]
    k, ck = linear_forward(xkv, Wk)                    # [B, Lk, D]
    v, cv = linear_forward(xkv, Wv)                    # [B, Lk, D]
    q, k, v = (split_heads(xp, t, n_heads) for t in (q, k, v))    # [B, h, L, d]
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ xp.matrix_transpose(k)) * scale      # [B, h, Lq, Lk]
    probs = _masked_softmax(xp, scores, key_mask)      # [B, h, Lq, Lk]
    heads = probs @ v                                  # [B, h, Lq, d]
    out, co = linear_forward(merge_heads(xp, heads), Wo)          # [B, Lq, D]
    cache = (cq, ck, cv, co, q, k, v, probs, scale, n_heads)
    return out, cache


def attention_backward(dout, cache):
    """-> (dxq, dxkv, dWq, dWk, dWv, dWo). For self-attention add dxq and dxkv."""
    xp = get_namespace(dout)
    cq, ck, cv, co, q, k, v, probs, scale, n_heads = cache
    dmerged, dWo, _ = linear_backward(dout, co)                    # [B, Lq, D]
    dheads = split_heads(xp, dmerged, n_heads)                    # [B, h, Lq, d]
    dprobs = dheads @ xp.matrix_transpose(v)                       # [B, h, Lq, Lk]
    dv = xp.matrix_transpose(probs) @ dheads                       # [B, h, Lk, d]
    dscores = softmax_backward(probs, dprobs) * scale              # [B, h, Lq, Lk]
    dq = dscores @ k                                               # [B, h, Lq, d]
    dk = xp.matrix_transpose(dscores) @ q                          # [B, h, Lk, d]
    dxq, dWq, _ = linear_backward(merge_heads(xp, dq), cq)
    dxk, dWk, _ = linear_backward(merge_heads(xp, dk), ck)
    dxv, dWv, _ = linear_backward(merge_heads(xp, dv), cv)
    return dxq, dxk + dxv, dWq, dWk, dWv, dWo


def split_heads(xp, t, n_heads):
    """``[B, L, D]`` -> ``[B, h, L, D/h]``."""
    B, L, D = t.shape
    return xp.permute_dims(xp.reshape(t, (B, L, n_heads, D // n_heads)), (0, 2, 1, 3))


def merge_heads(xp, t):
    """``[B, h, L, d]`` -> ``[B, L, h*d]``."""
    B, h, L, d = t.shape
    return xp.reshape(xp.permute_dims(t, (0, 2, 1, 3)), (B, L, h * d))


def softmax_backward(probs, dprobs):
    """d scores = probs * (dprobs - sum(dprobs * probs)) over the last axis; masked
    entries have probs 0 and so get zero gradient."""
    xp = get_namespace(probs)
    return probs * (dprobs - xp.sum(dprobs * probs, axis=-1, keepdims=True))


def _masked_softmax(xp, scores, key_mask):
    """Softmax over the last axis, over unmasked keys only; all-masked rows are zero.

    Masking is by a 0 / -1e30 bias and a 0/1 factor on ``[B, 1, 1, Lk]``, broadcast:
    cheaper than ``where`` over the whole ``[B, h, Lq, Lk]`` tensor. A masked score
    minus the row maximum is about -1e30, whose exp is exactly 0."""
    if key_mask is None:
        e = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
        return e / xp.sum(e, axis=-1, keepdims=True)
    keep = xp.astype(key_mask[:, None, None, :], scores.dtype)         # [B, 1, 1, Lk] 0/1
    biased = scores + (keep - 1.0) * MASK_BIAS                          # [B, h, Lq, Lk]
    e = xp.exp(biased - xp.max(biased, axis=-1, keepdims=True)) * keep  # all-masked rows: 0
    total = xp.sum(e, axis=-1, keepdims=True)                           # [B, h, Lq, 1]
    return e / xp.where(total > 0, total, 1.0)


# ---------------------------------------------------------------------------------
# softmax cross-entropy (mean over the batch)
# ---------------------------------------------------------------------------------
def cross_entropy_forward(logits, targets):
    """logits ``[B, V]``, targets ``[B]`` int -> (mean loss, cache)."""
    xp = get_namespace(logits)
    B, V = logits.shape
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)              # [B, V]
    log_z = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))        # [B, 1]
    log_probs = shifted - log_z                                            # [B, V]
    onehot = xp.astype(targets[:, None] == xp.arange(V, dtype=targets.dtype,
                                                     device=device_of(targets))[None, :],
                       logits.dtype)                                       # [B, V]
    loss = -xp.sum(log_probs * onehot) / B
    return loss, (log_probs, onehot)


def cross_entropy_backward(dloss, cache):
    """-> dlogits ``[B, V]`` = (softmax - onehot) / B * dloss."""
    xp = get_namespace(cache[0])
    log_probs, onehot = cache
    return (xp.exp(log_probs) - onehot) * (dloss / log_probs.shape[0])
