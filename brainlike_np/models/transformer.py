"""A causal decoder-only Transformer on the same stack as the brain-like model: the
same layers, the same hand-written backward style, the same module API (so the
trainer can swap models), and the baseline the benchmark compares against.

Notation: B batch, T context, V vocabulary (bytes), D model width, F MLP width,
h heads, d = D / h head width, Ly layers.

    X = Etok[x] + Epos[:T]                                          [B*T, D]
    each layer l:  X = X + CausalMHA(rms(X, g_attn[l]))              [B*T, D]
                   X = X + relu(rms(X, g_mlp[l]) @ W1[l]) @ W2[l]     [B*T, D]
    logits = rms(X, g_f) @ W_out                                    [B, T, V]

The output head ``W_out`` is untied from ``Etok``. The MLP uses ReLU (on NumPy an
unfused GELU costs ~10x more elementwise passes). Linear layers have no biases.
Position t predicts byte t + 1, so a window x ``[B, T]`` with its next byte y ``[B]``
gives T supervised targets: ``concat(x[:, 1:], y)``. ``targets="last"`` trains on the
last position's alone (y: the brain-like model's supervision, one target per window);
evaluation (``loss``) scores the last position either way.

The residual stream is kept as rows ``[B*T, D]``: every matmul except attention's
is then one 2-D product, which NumPy runs ~2.7x faster than the same product over
a ``[B, T, D]`` stack.

Per-layer weights are stacked on a leading layer axis (``Wq`` is ``[Ly, D, D]``), so
the parameter names are the same for every depth and ``NO_DECAY`` is a constant.

A cache with more than three fields is a ``NamedTuple`` read by name in the backward
(``AttentionCache``, ``MLPCache``, ``BlockCache``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

from .. import layers as L
from ..backends import device_of, get_namespace, to_float
from ..config import ConfigDict, ConfigError, choose

# which positions' next bytes the training loss supervises
TARGETS = ("all", "last")
CHOICES = {"targets": TARGETS}    # for --help


# ---------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransformerConfig(ConfigDict):
    vocab_size: int = 256      # V: bytes
    context: int = 64          # T
    d_model: int = 128         # D
    n_layers: int = 4          # Ly
    n_heads: int = 4           # h, with D % h == 0
    d_mlp: int = 512           # F
    targets: str = "all"       # training loss over "all" T positions, or the "last" only

    def __post_init__(self):
        self.check_types()
        for f in fields(self):
            if f.type == "int" and getattr(self, f.name) <= 0:
                raise ConfigError(f"{f.name} must be positive, got {getattr(self, f.name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads "
                              f"({self.n_heads})")
        choose(TARGETS, self.targets, "targets")


# ---------------------------------------------------------------------------------
# the model interface's constants (models.Model)
# ---------------------------------------------------------------------------------
Config = TransformerConfig

PRESETS = {
    # for tests: every code path, in milliseconds
    "tiny": Config(context=8, d_model=8, n_layers=2, n_heads=2, d_mlp=16),
    # about the brain-like default's parameter count (0.86M vs 0.96M) and context
    "default": Config(),
    # the design note's Transformer
    "note": Config(context=128, d_model=512, n_layers=12, n_heads=8, d_mlp=2048),
}
BATCH_SIZES = {"tiny": 4, "default": 64, "note": 32}
EXECUTION_OPTIONS: dict = {}                 # no field that changes only how it computes
NO_DECAY = frozenset({"g_attn", "g_mlp", "g_f"})   # gains get no weight decay


def supervised_targets(cfg: Config) -> int:
    """Next-byte targets a window trains on: one at every position, or the last alone."""
    return cfg.context if cfg.targets == "all" else 1


def forward_flops(cfg: Config, batch_size: int) -> int:
    """Matmul FLOPs of one forward pass (2*m*n*k each); attention counted in full."""
    B, T, D, F, V = batch_size, cfg.context, cfg.d_model, cfg.d_mlp, cfg.vocab_size
    layer = 2 * B * T * (4 * D * D + 2 * T * D + 2 * D * F)     # qkvo, qk+pv, mlp
    return cfg.n_layers * layer + 2 * B * T * D * V


def activation_bytes(cfg: Config, batch_size: int, itemsize: int) -> int:
    """An upper estimate of a training step's memory beyond the parameters, their
    gradients and AdamW's moments, from the shapes: each layer keeps about ten
    ``[B, T, D]`` arrays, two ``[B, T, F]`` and its ``[B, h, T, T]`` probabilities; the
    head six ``[B, T, V]`` (logits, log-probabilities, one-hot targets and their grads)."""
    B, T, D = batch_size, cfg.context, cfg.d_model
    per_layer = 10 * B * T * D + 2 * B * T * cfg.d_mlp + 2 * B * cfg.n_heads * T * T
    return itemsize * (cfg.n_layers * per_layer + 6 * B * T * cfg.vocab_size + 4 * B * T * D)


# ---------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------
def param_shapes(cfg: TransformerConfig) -> dict:
    V, T, D, F, Ly = cfg.vocab_size, cfg.context, cfg.d_model, cfg.d_mlp, cfg.n_layers
    return {
        "Etok": (V, D), "Epos": (T, D),
        "g_attn": (Ly, D), "Wq": (Ly, D, D), "Wk": (Ly, D, D), "Wv": (Ly, D, D),
        "Wo": (Ly, D, D),
        "g_mlp": (Ly, D), "W1": (Ly, D, F), "W2": (Ly, F, D),
        "g_f": (D,), "W_out": (D, V),
    }


def _init_std(name: str, shape: tuple, cfg: TransformerConfig) -> float | str:
    """Standard deviation of a parameter's initial normal, or "ones"."""
    if name.startswith("g"):
        return "ones"
    if name in ("Etok", "Epos"):
        return 0.02
    fan_in = shape[-2]
    if name in ("Wo", "W2"):      # residual-branch outputs: scaled down with depth
        return (1.0 / (fan_in * 2 * cfg.n_layers)) ** 0.5
    return (1.0 / fan_in) ** 0.5


def init_params(cfg: TransformerConfig, backend, seed: int = 0, dtype: str = "float32") -> dict:
    """Initial parameters, drawn on the host: the same seed gives the same weights on
    every backend."""
    return backend.init_params(param_shapes(cfg), lambda n, s: _init_std(n, s, cfg),
                               seed, dtype)


# ---------------------------------------------------------------------------------
# causal multi-head self-attention (tokens as rows: [B*T, D] in and out)
# ---------------------------------------------------------------------------------
class AttentionCache(NamedTuple):
    X: object          # [B*T, D] the input
    weights: tuple     # (Wq, Wk, Wv, Wo), each [D, D]
    merged: object     # [B*T, D] the heads' outputs, merged (Wo's input)
    q: object          # [B, h, T, d], scaled by ``scale``
    k: object          # [B, h, T, d]
    v: object          # [B, h, T, d]
    probs: object      # [B, h, T, T]
    scale: float       # 1/sqrt(d)


def causal_attention_forward(X, B, Wq, Wk, Wv, Wo, n_heads):
    """X ``[B*T, D]``, W* ``[D, D]`` -> ``[B*T, D]``; position i attends to j <= i."""
    xp = get_namespace(X)
    BT, D = X.shape
    q, k, v = (xp.reshape(X @ W, (B, BT // B, D)) for W in (Wq, Wk, Wv))   # [B, T, D]
    q, k, v = (L.split_heads(t, n_heads) for t in (q, k, v))      # [B, h, T, d]
    scale = 1.0 / math.sqrt(q.shape[-1])
    q = q * scale                # scaling q, not the [B, h, T, T] scores, saves a pass
    probs = _causal_softmax(q @ xp.matrix_transpose(k))             # [B, h, T, T]
    merged = xp.reshape(L.merge_heads(probs @ v), (BT, D))         # [B*T, D]
    return merged @ Wo, AttentionCache(X, (Wq, Wk, Wv, Wo), merged, q, k, v, probs, scale)


def causal_attention_backward(dout, cache):
    """dout ``[B*T, D]`` -> (dX ``[B*T, D]``, dWq, dWk, dWv, dWo)."""
    xp = get_namespace(dout)
    X, q, k, v, probs = cache.X, cache.q, cache.k, cache.v, cache.probs
    Wq, Wk, Wv, Wo = cache.weights
    B, h, T, d = q.shape
    dWo = cache.merged.T @ dout                                     # [D, D]
    dheads = L.split_heads(xp.reshape(dout @ Wo.T, (B, T, h * d)), h)   # [B, h, T, d]
    dv = xp.matrix_transpose(probs) @ dheads                        # [B, h, T, d]
    dscores = L.softmax_backward(probs, dheads @ xp.matrix_transpose(v))  # [B, h, T, T]
    dq = (dscores @ k) * cache.scale                                # [B, h, T, d]
    dk = xp.matrix_transpose(dscores) @ q                           # q is scaled already
    rows = lambda t: xp.reshape(L.merge_heads(t), (B * T, h * d))   # noqa: E731
    dq, dk, dv = rows(dq), rows(dk), rows(dv)                       # [B*T, D]
    dX = dq @ Wq.T + dk @ Wk.T + dv @ Wv.T                          # [B*T, D]
    return dX, X.T @ dq, X.T @ dk, X.T @ dv, dWo


def _causal_softmax(scores):
    """Softmax over keys j <= query i: scores ``[B, h, T, T]``. The diagonal is always
    kept, so no row is empty. Names are rebound so that few ``[B, h, T, T]`` arrays
    are alive at once: they are the largest of the model."""
    xp = get_namespace(scores)
    s = scores + _causal_bias(scores)
    del scores
    s = xp.exp(s - xp.max(s, axis=-1, keepdims=True))               # 0 where masked
    return s / xp.sum(s, axis=-1, keepdims=True)


def _causal_bias(scores):
    """``[T, T]`` for scores ``[..., T, T]``: 0 where key j <= query i, -inf after.
    Adding it is ~5x faster on NumPy than ``where`` over the scores."""
    xp, T, dtype, device = get_namespace(scores), scores.shape[-1], scores.dtype, device_of(scores)
    pos = xp.arange(T, device=device)
    blocked = xp.full((T, T), -math.inf, dtype=dtype, device=device)
    return xp.where(pos[None, :] <= pos[:, None], xp.zeros_like(blocked), blocked)


# ---------------------------------------------------------------------------------
# MLP: relu(X @ W1) @ W2
# ---------------------------------------------------------------------------------
class MLPCache(NamedTuple):
    X: object          # [B*T, D] the input
    W1: object         # [D, F]
    W2: object         # [F, D]
    act: object        # [B*T, F] relu(X @ W1)


def mlp_forward(X, W1, W2):
    """X ``[B*T, D]``, W1 ``[D, F]``, W2 ``[F, D]`` -> ``[B*T, D]``. The hidden ``act``
    is the only ``[B*T, F]`` array kept: W2's gradient needs it, and the ReLU's
    backward reads its mask from it (act > 0 exactly where the input was)."""
    xp = get_namespace(X)
    act = xp.maximum(X @ W1, 0.0)                                   # [B*T, F]
    return act @ W2, MLPCache(X, W1, W2, act)


def mlp_backward(dout, cache):
    """-> (dX ``[B*T, D]``, dW1, dW2)."""
    xp = get_namespace(dout)
    act = cache.act
    dW2 = act.T @ dout                                              # [F, D]
    # times the 0/1 mask: ~8x faster on NumPy than where(act > 0, ..., 0)
    dpre = (dout @ cache.W2.T) * xp.astype(act > 0, act.dtype)      # [B*T, F]
    return dpre @ cache.W1.T, cache.X.T @ dpre, dW2


# ---------------------------------------------------------------------------------
# one pre-norm block (layer l's slice of the stacked weights)
# ---------------------------------------------------------------------------------
class BlockCache(NamedTuple):
    attn_norm: tuple           # rmsnorm cache before attention
    attn: AttentionCache
    mlp_norm: tuple            # rmsnorm cache before the MLP
    mlp: MLPCache


def block_forward(p, l, X, B, cfg, ops):
    """X ``[B*T, D]`` -> ``[B*T, D]``."""
    A, ca = L.rmsnorm_forward(X, p["g_attn"][l, :], ops)
    M, cm = causal_attention_forward(A, B, p["Wq"][l, :, :], p["Wk"][l, :, :],
                                     p["Wv"][l, :, :], p["Wo"][l, :, :], cfg.n_heads)
    X = X + M                                                       # [B*T, D]
    Z, cz = L.rmsnorm_forward(X, p["g_mlp"][l, :], ops)
    Y, cy = mlp_forward(Z, p["W1"][l, :, :], p["W2"][l, :, :])
    return X + Y, BlockCache(ca, cm, cz, cy)


def block_backward(dX, cache, ops):
    """-> (dX of the block's input, {name: this layer's gradient})."""
    dZ, dW1, dW2 = mlp_backward(dX, cache.mlp)
    dX_mlp, dg_mlp = L.rmsnorm_backward(dZ, cache.mlp_norm, ops)
    dX = dX + dX_mlp                                                # [B*T, D]
    dA, dWq, dWk, dWv, dWo = causal_attention_backward(dX, cache.attn)
    dX_attn, dg_attn = L.rmsnorm_backward(dA, cache.attn_norm, ops)
    return dX + dX_attn, {"g_attn": dg_attn, "Wq": dWq, "Wk": dWk, "Wv": dWv, "Wo": dWo,
                          "g_mlp": dg_mlp, "W1": dW1, "W2": dW2}


# ---------------------------------------------------------------------------------
# trunk (embeddings + blocks) and head
# ---------------------------------------------------------------------------------
def trunk_forward(p, x, cfg, ops):
    """tokens x ``[B, T']`` (T' <= T) -> final residual stream ``[B*T', D]``."""
    xp = get_namespace(p["Etok"])
    B, T = x.shape
    tok, ct = L.embedding_forward(p["Etok"], x, ops)                # [B, T, D]
    X = xp.reshape(tok + p["Epos"][:T, :], (B * T, cfg.d_model))    # [B*T, D]
    blocks = []
    for l in range(cfg.n_layers):
        X, cb = block_forward(p, l, X, B, cfg, ops)
        blocks.append(cb)
    return X, (ct, B, blocks)


def trunk_backward(dX, p, cache, cfg, grads, ops):
    """Consumes the cache: each block's activations are freed once its gradient is
    done, so memory falls as the backward pass goes."""
    xp = get_namespace(dX)
    ct, B, blocks = cache
    per_layer = [None] * cfg.n_layers
    while blocks:
        l = len(blocks) - 1
        dX, per_layer[l] = block_backward(dX, blocks.pop(), ops)
    for name in per_layer[0]:
        grads[name] = xp.stack([g[name] for g in per_layer], axis=0)   # [Ly, ...]
    dX = xp.reshape(dX, (B, -1, cfg.d_model))                        # [B, T, D]
    grads["Etok"] = L.embedding_backward(dX, ct, ops)               # [V, D]
    grads["Epos"] = L.first_rows_backward(xp.sum(dX, axis=0), p["Epos"].shape[0])   # [T, D]


def head_forward(p, X, ops):
    """X ``[n, D]`` -> logits ``[n, V]``."""
    Fn, cf = L.rmsnorm_forward(X, p["g_f"], ops)
    logits, co = L.linear_forward(Fn, p["W_out"])
    return logits, (cf, co)


def head_backward(dlogits, cache, grads, ops):
    """-> dX ``[n, D]``."""
    cf, co = cache
    dFn, grads["W_out"], _ = L.linear_backward(dlogits, co)
    dX, grads["g_f"] = L.rmsnorm_backward(dFn, cf, ops)
    return dX


# ---------------------------------------------------------------------------------
# the whole model (the interface in models/__init__.py)
# ---------------------------------------------------------------------------------
def forward(p, x, cfg: TransformerConfig, ops):
    """tokens x ``[B, T']`` -> (logits at every position ``[B, T', V]``, cache)."""
    xp = get_namespace(p["W_out"])
    B, T = x.shape
    X, ctrunk = trunk_forward(p, x, cfg, ops)                       # [B*T, D]
    logits, chead = head_forward(p, X, ops)                         # [B*T, V]
    return xp.reshape(logits, (B, T, cfg.vocab_size)), (ctrunk, chead)


def next_logits(p, x, cfg: TransformerConfig, ops):
    """Logits for the byte after each window: x ``[B, T']`` -> ``[B, V]``."""
    return forward(p, x, cfg, ops)[0][:, -1, :]


def loss(p, x, y, cfg: TransformerConfig, ops) -> float:
    """Cross-entropy of y ``[B]`` at the last position only, without the backward
    (for evaluation): the same task, from the same full window, that the brain-like
    model is scored on, whatever ``cfg.targets`` the model trains on."""
    return to_float(L.cross_entropy_forward(next_logits(p, x, cfg, ops), y)[0])


def next_byte_targets(x, y):
    """Position t's target is byte t + 1: x ``[B, T]``, y ``[B]`` -> ``[B, T]``."""
    xp = get_namespace(x)
    return xp.concat([x[:, 1:], xp.astype(y, x.dtype)[:, None]], axis=1)


def loss_and_grads(p, x, y, cfg: TransformerConfig, ops):
    """Mean cross-entropy of the next bytes of windows x ``[B, T]`` whose next byte is
    y ``[B]``: over all B*T positions (``targets="all"``), or over the B last positions
    (``targets="last"``: the head then runs on those rows alone, and the trunk's
    backward starts from a gradient that is zero at every other position)."""
    xp = get_namespace(p["W_out"])
    B, T = x.shape
    D = cfg.d_model
    X, ctrunk = trunk_forward(p, x, cfg, ops)                        # [B*T, D]
    if cfg.targets == "all":
        rows, targets = X, xp.reshape(next_byte_targets(x, y), (B * T,))
    else:
        rows, targets = xp.reshape(X, (B, T, D))[:, -1, :], y         # [B, D], [B]
    logits, chead = head_forward(p, rows, ops)                       # [B*T or B, V]
    loss, closs = L.cross_entropy_forward(logits, targets)
    grads = {}
    drows = head_backward(L.cross_entropy_backward(1.0, closs), chead, grads, ops)
    if cfg.targets == "all":
        dX = drows                                                   # [B*T, D]
    else:
        earlier = xp.zeros((B, T - 1, D), dtype=drows.dtype, device=device_of(drows))
        dX = xp.reshape(xp.concat([earlier, drows[:, None, :]], axis=1), (B * T, D))
    trunk_backward(dX, p, ctrunk, cfg, grads, ops)
    return loss, grads
