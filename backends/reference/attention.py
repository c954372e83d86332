"""Attention within a set as portable array-API code: the definition every attention
kernel is tested against, and the implementation on namespaces without kernels.

One op pair, for every head of every sample at once (the kernels run one program per
(sample, head)):

    out, lse = attention_forward(q, k, v, key_keep)
    dq, dk, dv, out = attention_backward(dout, q, k, v, lse, key_keep)

- q ``[B, h, Lq, d]``, **already scaled** by the caller (``q / sqrt(d)``), so the
  scores are ``q @ k^T``; ``dq`` is the gradient of that scaled q.
- k, v ``[B, h, Lk, d]``: the same set as the queries (the model's interaction, Lq = Lk)
  or another one (the input read: queries the active set, keys the context).
- key_keep ``[B, Lk]`` bool, True where the key may be attended to, or None (all may).
- out ``[B, h, Lq, d]`` = softmax over kept keys of the scores, times v;
  lse ``[B, h, Lq]``, each query's log-sum-exp of its kept scores.
- A query whose keys are all masked gets a zero output, lse = +inf and zero gradients
  (the convention of ``layers.masked_softmax_forward``).

The backward rebuilds the probabilities from q, k and lse, ``p = exp(q k^T - lse)``, and
from them the output, ``out = p v``, which it uses for the softmax's row sums
``D_i = sum(dout_i * out_i)`` (flash attention) and returns: the caller needs it for its
output projection's gradient, and neither side keeps it between the passes, so the forward
keeps no ``[Lq, Lk]`` array and no output. Here the scores are formed, as
``[B, h, Lq, Lk]`` arrays; in the kernels they never leave the program.
"""

from __future__ import annotations


class ReferenceAttention:
    """The attention op pair on ``self.xp`` (an array-API namespace); a mixin of
    :class:`~.ops.ReferenceOps`."""

    def attention_forward(self, q, k, v, key_keep=None):
        """q ``[B, h, Lq, d]`` (scaled), k, v ``[B, h, Lk, d]``, key_keep ``[B, Lk]`` or None
        -> (out ``[B, h, Lq, d]``, lse ``[B, h, Lq]``)."""
        xp = self.xp
        check_attention_shapes(q, k, v, key_keep)
        scores = q @ xp.matrix_transpose(k)                               # [B, h, Lq, Lk]
        if key_keep is not None:
            scores = xp.where(key_keep[:, None, None, :], scores, -xp.inf)
        top = xp.max(scores, axis=-1, keepdims=True)                      # [B, h, Lq, 1]
        some = top != -xp.inf                                   # a key is kept (or NaN)
        e = xp.exp(scores - xp.where(some, top, 0.0))                     # masked: 0
        total = xp.where(some, xp.sum(e, axis=-1, keepdims=True), 1.0)    # [B, h, Lq, 1]
        out = (e / total) @ v                                             # [B, h, Lq, d]
        lse = xp.where(some, top + xp.log(total), xp.inf)                 # [B, h, Lq, 1]
        return out, lse[..., 0]

    def attention_backward(self, dout, q, k, v, lse, key_keep=None):
        """Gradients of ``attention_forward``: dout ``[B, h, Lq, d]``, lse ``[B, h, Lq]``
        (the forward's) -> (dq ``[B, h, Lq, d]``, dk, dv ``[B, h, Lk, d]``, out
        ``[B, h, Lq, d]`` the forward's output, rebuilt)."""
        xp = self.xp
        check_attention_shapes(q, k, v, key_keep)
        probs = xp.exp(q @ xp.matrix_transpose(k) - lse[..., None])       # [B, h, Lq, Lk]
        if key_keep is not None:                                          # +inf rows: 0
            probs = xp.where(key_keep[:, None, None, :], probs, 0.0)
        out = probs @ v                                                   # [B, h, Lq, d]
        row_dot = xp.sum(dout * out, axis=-1, keepdims=True)              # D: [B, h, Lq, 1]
        dscores = probs * (dout @ xp.matrix_transpose(v) - row_dot)       # [B, h, Lq, Lk]
        dq = dscores @ k                                                  # [B, h, Lq, d]
        dk = xp.matrix_transpose(dscores) @ q                             # [B, h, Lk, d]
        dv = xp.matrix_transpose(probs) @ dout                            # [B, h, Lk, d]
        return dq, dk, dv, out


def check_attention_shapes(q, k, v, key_keep):
    """ValueError unless q ``[B, h, Lq, d]``, k and v ``[B, h, Lk, d]`` and key_keep
    ``[B, Lk]`` (or None) agree."""
    if q.ndim != 4 or k.ndim != 4 or tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"q must be [B, h, Lq, d] and k, v both [B, h, Lk, d]: "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if (tuple(q.shape[:2]) != tuple(k.shape[:2])) or q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k do not match in B, h or d: {tuple(q.shape)}, {tuple(k.shape)}")
    if key_keep is not None and tuple(key_keep.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(f"key_keep must be [B, Lk] = {(k.shape[0], k.shape[2])}, "
                         f"got {tuple(key_keep.shape)}")
