"""The brain-like model's input read and interaction steps (the model, its notation and
its decoder are in ``brainlike.py``):

    H0   = a * U[idx];  H = H0 + MHA(rms(H0, g_x), C, C)          [B, k, D]
    S x: X = rms(H, g); M = MHA(X, X, X, mask a > tau)
         H = H + tanh([X, M] @ W_u + b_u);  a = sigmoid((z[idx] +) H @ w_a + b_a)
"""

from __future__ import annotations

from typing import NamedTuple

from .. import layers as L
from ..backends import get_namespace


# ---------------------------------------------------------------------------------
# input read: the active neurons attend to the context once
# ---------------------------------------------------------------------------------
def input_read_forward(p, a, U_rows, x, cfg, ops):
    """a ``[B, M]``, U rows ``[B or 1, M, D]``, x ``[B, T]`` -> H ``[B, M, D]``: the
    initial state H0 = a * U rows, plus what it reads from the context unless
    ``cfg.input_read`` is False."""
    H0 = a[..., None] * U_rows                                       # [B, M, D]
    if not cfg.input_read:
        return H0, (a, U_rows, None)
    Mx, cread = context_read_forward(p, H0, x, cfg, ops)             # [B, M, D]
    return H0 + Mx, (a, U_rows, cread)


def input_read_backward(dH, p, cache, grads, ops):
    """-> (da ``[B, M]``, dU_rows ``[B, M, D]``)."""
    xp = get_namespace(dH)
    a, U_rows, cread = cache
    dH0 = dH if cread is None else dH + context_read_backward(dH, p, cread, grads, ops)
    da = xp.sum(dH0 * U_rows, axis=-1)                               # [B, M]
    dU_rows = dH0 * a[..., None]                                     # [B, M, D]
    return da, dU_rows


class ContextReadCache(NamedTuple):
    tokens: tuple          # the embedding cache of Etok[x]
    context_norm: tuple    # rmsnorm cache of C
    query_norm: tuple      # rmsnorm cache of rms(H0, g_x)
    attn: L.AttentionCache
    n_positions: int       # Epos's rows


def context_read_forward(p, H0, x, cfg, ops):
    """MHA(rms(H0, g_x), C, C) with C = rms(Etok[x] + Epos, g_t): H0 ``[B, M, D]``,
    x ``[B, T]`` -> ``[B, M, D]``."""
    T = x.shape[1]
    tok, ct = L.embedding_forward(p["Etok"], x, ops)                 # [B, T, D]
    pos, n_positions = L.first_rows_forward(p["Epos"], T)           # [T, D]
    C, cc = L.rmsnorm_forward(tok + pos, p["g_t"], ops)              # [B, T, D]
    Xq, cq = L.rmsnorm_forward(H0, p["g_x"], ops)                    # [B, M, D]
    Mx, cm = L.attention_forward(Xq, C, p["Wq_x"], p["Wk_x"], p["Wv_x"], p["Wo_x"],
                                 cfg.n_heads, ops)                   # [B, M, D]
    return Mx, ContextReadCache(ct, cc, cq, cm, n_positions)


def context_read_backward(dMx, p, cache, grads, ops):
    """-> dH0 ``[B, M, D]`` through the read (H0's direct path is the caller's)."""
    xp = get_namespace(dMx)
    dXq, dC, dWq, dWk, dWv, dWo = L.attention_backward(
        dMx, cache.attn, L.rmsnorm_output(cache.query_norm),
        L.rmsnorm_output(cache.context_norm), ops)
    dH0, dg_x = L.rmsnorm_backward(dXq, cache.query_norm, ops)      # [B, M, D]
    dC_in, dg_t = L.rmsnorm_backward(dC, cache.context_norm, ops)   # [B, T, D]
    dEpos = L.first_rows_backward(xp.sum(dC_in, axis=0), cache.n_positions)
    for name, g in (("Wq_x", dWq), ("Wk_x", dWk), ("Wv_x", dWv), ("Wo_x", dWo),
                    ("g_x", dg_x), ("g_t", dg_t), ("Epos", dEpos),
                    ("Etok", L.embedding_backward(dC_in, cache.tokens, ops))):
        L.accumulate(grads, name, g)
    return dH0


# ---------------------------------------------------------------------------------
# one interaction step (shared weights across the S steps)
# ---------------------------------------------------------------------------------
class StepCache(NamedTuple):
    norm: tuple            # rmsnorm cache of the input state H (X is rebuilt from it)
    attn: L.AttentionCache
    msg: object            # [B, M, D] the message
    update: object         # [B, M, D] tanh of the update (its backward reads the output)
    state: object          # [B, M, D] the new state H (the next step's input: no copy)
    act: object            # [B, M] the readout's sigmoid, before the selection
    selected: object       # [B, N] 0/1 on the dense path, else None


def step_forward(p, H, a, cfg, ops, selected=None, z=None):
    """H ``[B, M, D]``, a ``[B, M]`` -> new H, new a, cache. ``selected`` ``[B, M]``
    (dense path) holds non-selected activations at zero. ``z`` ``[B, M]``: the encoder's
    pre-activations, which the new a adds to (``act_update="residual"``), or None.
    ``ops``: the backend's hot path (the attention runs there).

    The update's weight W_u ``[2D, D]`` is applied as two products (X @ W_u[:D] +
    message @ W_u[D:]), so the ``[B, M, 2D]`` concat is never built. The tail (tanh,
    residual add, the readout's sigmoid) is one op, ``ops.step_tail_forward``. The cache
    keeps the state H, the message and the tanh output; the normalised X is rebuilt
    from H in the backward."""
    D = H.shape[-1]
    X, cx = L.rmsnorm_forward(H, p["g"], ops)                        # [B, M, D]
    msg, cm = L.attention_forward(X, X, p["Wq"], p["Wk"], p["Wv"], p["Wo"], cfg.n_heads,
                                  ops, key_mask=a > cfg.tau)         # [B, M, D]
    Y = L.linear_forward(X, p["W_u"][:D, :], p["b_u"])[0] + L.linear_forward(
        msg, p["W_u"][D:, :])[0]                                     # [B, M, D]
    del X
    H_new, U, act = ops.step_tail_forward(Y, H, p["w_a"], p["b_a"], z)   # [B, M, D], [B, M]
    a_new = act if selected is None else act * selected
    return H_new, a_new, StepCache(cx, cm, msg, U, H_new, act, selected)


def step_backward(dH_new, da_new, p, cache, grads, ops):
    """-> (dH of the step's input state, d of the readout's pre-activation ``[B, M]``,
    which is z's gradient through this step when the update is residual). ``da_new`` is
    None when the step's activation only feeds the next step's key mask, which is not
    differentiated; the second result is then None."""
    xp = get_namespace(dH_new)
    D = dH_new.shape[-1]
    if da_new is not None and cache.selected is not None:
        da_new = da_new * cache.selected
    dY, dH, dw_a, db_a, dpre = ops.step_tail_backward(dH_new, da_new, cache.update,
                                                      cache.state, cache.act, p["w_a"])
    if da_new is not None:
        L.accumulate(grads, "w_a", dw_a)
        L.accumulate(grads, "b_a", db_a)
    X = L.rmsnorm_output(cache.norm)                                 # [B, M, D]
    dX, dW_x, db_u = L.linear_backward(dY, (X, p["W_u"][:D, :], True))
    dmsg, dW_m, _ = L.linear_backward(dY, (cache.msg, p["W_u"][D:, :], False))
    del dY
    dXq, dXkv, dWq, dWk, dWv, dWo = L.attention_backward(dmsg, cache.attn, X, X, ops)
    del X, dmsg
    dX += dXq
    dX += dXkv
    del dXq, dXkv
    dH_norm, dg = L.rmsnorm_backward(dX, cache.norm, ops)
    for name, g in (("W_u", xp.concat([dW_x, dW_m], axis=0)), ("b_u", db_u), ("Wq", dWq),
                    ("Wk", dWk), ("Wv", dWv), ("Wo", dWo), ("g", dg)):
        L.accumulate(grads, name, g)
    return dH + dH_norm, dpre
