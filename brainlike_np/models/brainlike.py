"""The brain-like model (v1): forward and hand-written backward, sparse and dense paths.

Notation: B batch, T context, V vocabulary, N neurons, D state width, k active neurons,
S interaction steps, h heads, M the neurons a path carries (k on the sparse path, N on
the dense one).

    z    = b_e + sum_t E[x[:, t]] * P[t]                          [B, N]
    idx  = top_k(z, k)                                            [B, k]
    a    = sigmoid(z[idx])                                        [B, k]
    C    = rms(Etok[x] + Epos, g_t)                               [B, T, D]
    H0   = a * U[idx];  H = H0 + MHA(rms(H0, g_x), C, C)          [B, k, D]
    S x: X = rms(H, g); M = MHA(X, X, X, mask a > tau)
         H = H + tanh([X, M] @ W_u + b_u);  a = sigmoid(H @ w_a + b_a)
    logits = b_dec + sum_j a_j W_dec[idx_j] + (mean_j a_j rms(H_j, g_f)) @ W_r   [B, V]

The sparse path computes on the gathered ``[B, k, D]`` active set. The dense path is
the design note's version: states for all N neurons ``[B, N, D]``, attention over all
N with non-selected or sub-threshold neurons masked as keys, and the activation of
non-selected neurons held at zero. Both give the same logits and gradients.

Ablations (config fields that change the result): ``n_steps=0`` (no interaction),
``tau=0`` (no active key is masked), ``input_read=False`` (H = H0: the active neurons
never attend to the context, and the read's parameters get zero gradient), and
``selection="random"`` (see ``random_scores``: idx is the top-k of a hash of the window
instead of z, so z only sets the activations of neurons it did not choose).

What the backward keeps (memory is the point of the model): each interaction step's
cache holds its input state, q/k/v, each query's attention log-sum-exp, the message and
the tanh output; normalised activations are rebuilt from the state and its saved inverse
norm, attention probabilities from q, k and the log-sum-exp, and each step's cache is
freed as the backward consumes it. ``recompute=True`` keeps only each step's input
state and activation and redoes the step in the backward (llm.c keeps a similar switch).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import layers as L
from ..backends import device_of, get_namespace, to_float
from ..config import ConfigDict, ConfigError, choose

PATHS = ("sparse", "dense")
SELECTIONS = ("learned", "random")
# gains and biases get no weight decay
NO_DECAY = frozenset({"b_e", "g_t", "g_x", "g", "b_u", "b_a", "g_f", "b_dec"})


# ---------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BrainlikeConfig(ConfigDict):
    vocab_size: int = 256      # V: bytes
    context: int = 64          # T: the window the model reads
    n_neurons: int = 1024      # N
    d_state: int = 128         # D
    k_active: int = 64         # k: neurons kept by top-k
    n_steps: int = 5           # S: interaction steps
    n_heads: int = 4           # h, with D % h == 0
    tau: float = 0.01          # activation threshold for attending
    input_read: bool = True    # False: H = H0, the active neurons never read the context
    selection: str = "learned" # "learned": top-k of z; "random": top-k of a fixed hash
                               # of the window (random_scores), an ablation
    # execution options: how to compute, not what (every choice gives the same result)
    path: str = "sparse"       # "sparse": [B, k, D] active set; "dense": [B, N, D]
    recompute: bool = False    # keep only each interaction step's input; redo the step
                               # in the backward (less memory, about one more forward)

    def __post_init__(self):
        self.check_types()
        for name in ("vocab_size", "context", "n_neurons", "d_state", "k_active", "n_heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_steps < 0:
            raise ConfigError(f"n_steps must be 0 or more, got {self.n_steps}")
        if self.k_active > self.n_neurons:
            raise ConfigError(f"k_active ({self.k_active}) must be at most n_neurons "
                              f"({self.n_neurons}): lower --k-active or raise --n-neurons")
        if self.d_state % self.n_heads:
            raise ConfigError(f"d_state ({self.d_state}) must be divisible by n_heads "
                              f"({self.n_heads})")
        if not 0.0 <= self.tau < 1.0:
            raise ConfigError(f"tau must be in [0, 1), got {self.tau}")
        choose(PATHS, self.path, "path")
        choose(SELECTIONS, self.selection, "selection")


Config = BrainlikeConfig

PRESETS = {
    # for tests: every code path, in milliseconds
    "tiny": Config(context=8, n_neurons=32, d_state=8, k_active=6, n_steps=2, n_heads=2),
    # 1200 steps of batch 64 train in about 8 minutes on 2 CPU cores (0.34-0.38 s a step)
    "default": Config(),
    # the design note's sizes
    "seed": Config(context=128, n_neurons=4096, d_state=256, k_active=128, n_steps=5,
                   n_heads=4),
}
BATCH_SIZES = {"tiny": 4, "default": 64, "seed": 32}


def supervised_targets(cfg: Config) -> int:
    """Next-byte targets a window trains on: the byte after it."""
    return 1


def forward_flops(cfg: Config, batch_size: int) -> int:
    """Matmul FLOPs of one forward pass (2*m*n*k each), M neurons carried per sample."""
    B, M = batch_size, cfg.k_active if cfg.path == "sparse" else cfg.n_neurons
    T, D, V = cfg.context, cfg.d_state, cfg.vocab_size
    read = 2 * B * (2 * M * D * D + 2 * T * D * D + 2 * M * T * D)      # q, o; k, v; qk, pv
    step = 2 * B * (4 * M * D * D + 2 * M * M * D + M * 2 * D * D + M * D)   # + W_u, w_a
    decode = 2 * B * (M * V + D * V)
    return read + cfg.n_steps * step + decode


def activation_bytes(cfg: Config, batch_size: int, itemsize: int) -> int:
    """An upper estimate of a training step's memory beyond the parameters, their
    gradients and AdamW's moments, from the shapes: what the backward keeps (see the
    module docstring) plus its largest transient. The trainer refuses runs that cannot
    fit by it; a test holds it above the measured peak."""
    B, T, N, D, k = batch_size, cfg.context, cfg.n_neurons, cfg.d_state, cfg.k_active
    M = k if cfg.path == "sparse" else N
    state, context = B * M * D, B * T * D                  # one [B, M, D], one [B, T, D]
    per_step = state if cfg.recompute else 6 * state
    kept = 6 * context + 6 * state + cfg.n_steps * per_step + 4 * B * (N + cfg.vocab_size)
    if cfg.path == "dense":
        kept += 3 * B * T * N                              # the gathered E rows
    scores = B * cfg.n_heads * M * max(M, T)               # one [B, h, M, M or T]
    return itemsize * (kept + 3 * scores + 10 * state)
EXECUTION_OPTIONS = {"path": ("dense",), "recompute": (True,)}


# ---------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------
def param_shapes(cfg: Config) -> dict:
    V, T, N, D = cfg.vocab_size, cfg.context, cfg.n_neurons, cfg.d_state
    return {
        "E": (V, N), "P": (T, N), "b_e": (N,),
        "Etok": (V, D), "Epos": (T, D), "g_t": (D,), "g_x": (D,),
        "Wq_x": (D, D), "Wk_x": (D, D), "Wv_x": (D, D), "Wo_x": (D, D),
        "U": (N, D),
        "g": (D,), "Wq": (D, D), "Wk": (D, D), "Wv": (D, D), "Wo": (D, D),
        "W_u": (2 * D, D), "b_u": (D,), "w_a": (D,), "b_a": (),
        "g_f": (D,), "W_dec": (N, V), "W_r": (D, V), "b_dec": (V,),
    }


def _init_std(name: str, shape: tuple, cfg: Config) -> float | str:
    """Standard deviation of a parameter's initial normal, or "zeros" / "ones"."""
    if name in ("E", "U", "Etok", "Epos"):
        return 1.0
    if name == "P":
        return (1.0 / cfg.context) ** 0.5
    if name in ("Wo", "Wo_x"):
        return "zeros"
    if name == "W_dec":
        return 0.02
    if name.startswith("g"):
        return "ones"
    if name.startswith("b"):
        return "zeros"
    return (1.0 / shape[0]) ** 0.5     # every other matrix / vector: N(0, 1/fan_in)


def init_params(cfg: Config, backend, seed: int = 0, dtype: str = "float32") -> dict:
    """Initial parameters, drawn on the host: the same seed gives the same weights
    on every backend."""
    return backend.init_params(param_shapes(cfg), lambda n, s: _init_std(n, s, cfg),
                               seed, dtype)


def _accumulate(grads: dict, name: str, g) -> None:
    grads[name] = g if name not in grads else grads[name] + g


# ---------------------------------------------------------------------------------
# encoder: tokens -> active set
# ---------------------------------------------------------------------------------
def encoder_sparse_forward(p, x, cfg, ops):
    """-> a ``[B, k]``, U rows ``[B, k, D]``, idx ``[B, k]``, cache."""
    xp = get_namespace(p["E"])
    z = p["b_e"] + ops.gather_weighted_sum(p["E"], x, p["P"])        # [B, N]
    idx = select(z, x, cfg, ops)                                     # [B, k]
    a, ca = L.sigmoid_forward(xp.take_along_axis(z, idx, axis=1))    # [B, k]
    U_rows, cu = L.embedding_forward(p["U"], idx, ops)               # [B, k, D]
    return a, U_rows, idx, (x, idx, ca, cu)


def encoder_sparse_backward(da, dU_rows, p, cache, grads, ops):
    x, idx, ca, cu = cache
    xp = get_namespace(da)
    dz = L.sigmoid_backward(da, ca)                                  # [B, k]
    dE, dP = ops.gather_weighted_sum_backward(dz, idx, p["E"], x, p["P"])  # [V, N], [T, N]
    n = dz.shape[0] * dz.shape[1]
    db_e = ops.scatter_add_rows(xp.reshape(idx, (n,)), xp.reshape(dz, (n, 1)),
                                p["b_e"].shape[0])[:, 0]             # [N]
    for name, g in (("E", dE), ("P", dP), ("b_e", db_e),
                    ("U", L.embedding_backward(dU_rows, cu, ops))):
        _accumulate(grads, name, g)


def encoder_dense_forward(p, x, cfg, ops):
    """-> a ``[B, N]`` (zero off the top-k), U ``[1, N, D]``, selection ``[B, N]``, cache."""
    xp = get_namespace(p["E"])
    T = x.shape[1]
    N = cfg.n_neurons
    E_rows, ce = L.embedding_forward(p["E"], x, ops)                 # [B, T, N]
    P_used, n_positions = L.first_rows_forward(p["P"], T)           # [T, N]
    z = p["b_e"] + xp.sum(E_rows * P_used, axis=1)                   # [B, N]
    idx = select(z, x, cfg, ops)                                     # [B, k]
    selected = _per_sample_scatter(xp.ones(idx.shape, dtype=z.dtype, device=device_of(z)),
                                   idx, N, ops)                      # [B, N] 0/1
    s, cs = L.sigmoid_forward(z)
    a = s * selected                                                 # [B, N]
    return a, p["U"][None, :, :], selected, (E_rows, ce, cs, selected, P_used, n_positions)


def encoder_dense_backward(da, dU_rows, p, cache, grads, ops):
    E_rows, ce, cs, selected, P_used, n_positions = cache
    xp = get_namespace(da)
    dz = L.sigmoid_backward(da * selected, cs)                       # [B, N]
    dE = L.embedding_backward(dz[:, None, :] * P_used, ce, ops)      # [V, N]
    dP = L.first_rows_backward(xp.sum(dz[:, None, :] * E_rows, axis=0), n_positions)
    for name, g in (("E", dE), ("P", dP), ("b_e", xp.sum(dz, axis=0)),
                    ("U", xp.sum(dU_rows, axis=0))):
        _accumulate(grads, name, g)


def select(z, x, cfg, ops):
    """The active neurons idx ``[B, k]``: the top-k of z, or with ``selection="random"``
    the top-k of ``random_scores(x)``. Either way no gradient flows through the choice
    itself (top-k is piecewise constant); z's gradient comes through a = sigmoid(z[idx])."""
    scores = z if cfg.selection == "learned" else random_scores(x, cfg.n_neurons)
    return ops.topk(scores, cfg.k_active)


# a prime below 2^31: products of two residues fit in int64
_HASH_PRIME = 2 ** 31 - 1


def random_scores(x, N):
    """A fixed pseudo-random score per (window, neuron): x ``[B, T']`` -> ``[B, N]``
    float64, distinct within a row. Its top-k is a set of k neurons that depends only on
    the window's bytes (the same window always gets the same set, in training and in
    evaluation, on every backend), looks uniformly random over the N neurons, and carries
    no similarity between windows: two windows that differ in one byte get unrelated sets
    (about k*k/N neurons shared, as for independent draws).

    The hash is integer arithmetic on the device (no host read): a polynomial hash of the
    window modulo a prime, combined with each neuron's id and mixed by three rounds of
    squaring modulo the same prime; ``score = hash * N + n`` breaks ties by neuron id and
    stays exact in float64 for N < 2^22."""
    xp = get_namespace(x)
    device = device_of(x)
    q = _HASH_PRIME
    T = x.shape[1]
    powers = xp.asarray([pow(131, t + 1, q) for t in range(T)], dtype=xp.int64, device=device)
    window = xp.sum(xp.astype(x, xp.int64) * powers, axis=1) % q                # [B]
    n = xp.arange(N, dtype=xp.int64, device=device)                             # [N]
    h = (window[:, None] * 48271 + (n[None, :] + 1) * 69621) % q                # [B, N]
    for c in (11, 4099, 65537):
        h = (h * h + c) % q
    return xp.astype(h * N + n, xp.float64)


def _per_sample_scatter(values, idx, N, ops):
    """``out[b, idx[b, j]] = values[b, j]``, zero elsewhere: values, idx ``[B, k]`` ->
    ``[B, N]`` (the ids of a row are distinct, as top-k's are)."""
    xp = get_namespace(values)
    B, k = idx.shape
    flat = L.per_sample_flat_ids(idx, N)                      # [B, k]
    out = ops.scatter_add_rows(xp.reshape(flat, (-1,)), xp.reshape(values, (B * k, 1)), B * N)
    return xp.reshape(out, (B, N))


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


def context_read_forward(p, H0, x, cfg, ops):
    """MHA(rms(H0, g_x), C, C) with C = rms(Etok[x] + Epos, g_t): H0 ``[B, M, D]``,
    x ``[B, T]`` -> ``[B, M, D]``."""
    T = x.shape[1]
    tok, ct = L.embedding_forward(p["Etok"], x, ops)                 # [B, T, D]
    pos, n_positions = L.first_rows_forward(p["Epos"], T)            # [T, D]
    C, cc = L.rmsnorm_forward(tok + pos, p["g_t"])                   # [B, T, D]
    Xq, cq = L.rmsnorm_forward(H0, p["g_x"])                         # [B, M, D]
    Mx, cm = L.attention_forward(Xq, C, p["Wq_x"], p["Wk_x"], p["Wv_x"], p["Wo_x"],
                                 cfg.n_heads)                        # [B, M, D]
    return Mx, (ct, cc, cq, cm, n_positions)


def context_read_backward(dMx, p, cache, grads, ops):
    """-> dH0 ``[B, M, D]`` through the read (H0's direct path is the caller's)."""
    xp = get_namespace(dMx)
    ct, cc, cq, cm, n_positions = cache
    dXq, dC, dWq, dWk, dWv, dWo = L.attention_backward(dMx, cm, L.rmsnorm_output(cq),
                                                       L.rmsnorm_output(cc))
    dH0, dg_x = L.rmsnorm_backward(dXq, cq)                          # [B, M, D]
    dC_in, dg_t = L.rmsnorm_backward(dC, cc)                         # [B, T, D]
    dEpos = L.first_rows_backward(xp.sum(dC_in, axis=0), n_positions)
    for name, g in (("Wq_x", dWq), ("Wk_x", dWk), ("Wv_x", dWv), ("Wo_x", dWo),
                    ("g_x", dg_x), ("g_t", dg_t), ("Epos", dEpos),
                    ("Etok", L.embedding_backward(dC_in, ct, ops))):
        _accumulate(grads, name, g)
    return dH0


# ---------------------------------------------------------------------------------
# one interaction step (shared weights across the S steps)
# ---------------------------------------------------------------------------------
def step_forward(p, H, a, cfg, selected=None):
    """H ``[B, M, D]``, a ``[B, M]`` -> new H, new a, cache. ``selected`` ``[B, M]``
    (dense path) holds non-selected activations at zero.

    The update's weight W_u ``[2D, D]`` is applied as two products (X @ W_u[:D] +
    message @ W_u[D:]), so the ``[B, M, 2D]`` concat is never built. The cache keeps
    the state H, the message and the tanh output; the normalised X is rebuilt from H
    in the backward."""
    D = H.shape[-1]
    X, cx = L.rmsnorm_forward(H, p["g"])                             # [B, M, D]
    msg, cm = L.attention_forward(X, X, p["Wq"], p["Wk"], p["Wv"], p["Wo"], cfg.n_heads,
                                  key_mask=a > cfg.tau)              # [B, M, D]
    Y = L.linear_forward(X, p["W_u"][:D, :], p["b_u"])[0] + L.linear_forward(
        msg, p["W_u"][D:, :])[0]                                     # [B, M, D]
    del X
    dH_t, ct = L.tanh_forward(Y)
    H_new = H + dH_t                                                 # [B, M, D]
    a_new, ca = readout_forward(p, H_new)                            # [B, M]
    if selected is not None:
        a_new = a_new * selected
    return H_new, a_new, (cx, cm, msg, ct, ca, selected)


def step_backward(dH_new, da_new, p, cache, grads):
    """-> dH (the step's input state). ``da_new`` is None when the step's activation
    only feeds the next step's key mask, which is not differentiated."""
    xp = get_namespace(dH_new)
    cx, cm, msg, ct, ca, selected = cache
    D = dH_new.shape[-1]
    dH = dH_new
    if da_new is not None:
        if selected is not None:
            da_new = da_new * selected
        dH = dH + readout_backward(da_new, p, ca, grads)             # [B, M, D]
    dY = L.tanh_backward(dH, ct)                                     # [B, M, D]
    X = L.rmsnorm_output(cx)                                         # [B, M, D]
    dX, dW_x, db_u = L.linear_backward(dY, (X, p["W_u"][:D, :], True))
    dmsg, dW_m, _ = L.linear_backward(dY, (msg, p["W_u"][D:, :], False))
    del dY
    dXq, dXkv, dWq, dWk, dWv, dWo = L.attention_backward(dmsg, cm, X, X)
    del X, dmsg
    dX += dXq
    dX += dXkv
    del dXq, dXkv
    dH_norm, dg = L.rmsnorm_backward(dX, cx)
    for name, g in (("W_u", xp.concat([dW_x, dW_m], axis=0)), ("b_u", db_u), ("Wq", dWq),
                    ("Wk", dWk), ("Wv", dWv), ("Wo", dWo), ("g", dg)):
        _accumulate(grads, name, g)
    return dH + dH_norm


def readout_forward(p, H):
    """a = sigmoid(H @ w_a + b_a): H ``[B, M, D]`` -> ``[B, M]``."""
    a, ca = L.sigmoid_forward(H @ p["w_a"] + p["b_a"])
    return a, (ca, H)


def readout_backward(da, p, cache, grads):
    """-> dH ``[B, M, D]``."""
    xp = get_namespace(da)
    ca, H = cache
    dpre = L.sigmoid_backward(da, ca)                                # [B, M]
    D = H.shape[-1]
    _accumulate(grads, "w_a", xp.reshape(H, (-1, D)).T @ xp.reshape(dpre, (-1,)))  # [D]
    _accumulate(grads, "b_a", xp.sum(dpre))
    return dpre[..., None] * p["w_a"]


# ---------------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------------
def decoder_forward(p, H, a, idx, cfg, ops):
    """H ``[B, M, D]``, a ``[B, M]`` -> logits ``[B, V]``. ``idx`` ``[B, k]`` on the
    sparse path (the activations are scattered to ``[B, N]`` for one product with
    W_dec, rather than gathering ``[B, k, V]`` rows of it), None on the dense path."""
    xp = get_namespace(H)
    F, cf = L.rmsnorm_forward(H, p["g_f"])                           # [B, M, D]
    pooled = xp.sum(a[..., None] * F, axis=1) / cfg.k_active         # [B, D]
    a_all = a if idx is None else _per_sample_scatter(a, idx, cfg.n_neurons, ops)  # [B, N]
    logits = p["b_dec"] + a_all @ p["W_dec"] + pooled @ p["W_r"]      # [B, V]
    return logits, (cf, pooled, a_all, a, idx)


def decoder_backward(dlogits, p, cache, cfg, grads):
    """-> (dH ``[B, M, D]``, da ``[B, M]``)."""
    xp = get_namespace(dlogits)
    cf, pooled, a_all, a, idx = cache
    F = L.rmsnorm_output(cf)                                         # [B, M, D]
    dpooled = dlogits @ p["W_r"].T                                   # [B, D]
    dF = a[..., None] * dpooled[:, None, :] / cfg.k_active           # [B, M, D]
    da = xp.sum(F * dpooled[:, None, :], axis=-1) / cfg.k_active     # [B, M]
    da_all = dlogits @ p["W_dec"].T                                  # [B, N]
    da = da + (da_all if idx is None else xp.take_along_axis(da_all, idx, axis=1))
    dH, dg_f = L.rmsnorm_backward(dF, cf)
    for name, g in (("b_dec", xp.sum(dlogits, axis=0)), ("W_r", pooled.T @ dlogits),
                    ("W_dec", a_all.T @ dlogits), ("g_f", dg_f)):
        _accumulate(grads, name, g)
    return dH, da


# ---------------------------------------------------------------------------------
# the whole model
# ---------------------------------------------------------------------------------
def forward(p, x, cfg: Config, ops):
    """tokens x ``[B, T']`` (T' <= T) -> (logits ``[B, V]``, cache for ``backward``)."""
    if cfg.path == "sparse":
        a, U_rows, idx, cenc = encoder_sparse_forward(p, x, cfg, ops)
        selected = None
    else:
        a, U_rows, selected, cenc = encoder_dense_forward(p, x, cfg, ops)
        idx = None
    H, cread = input_read_forward(p, a, U_rows, x, cfg, ops)
    steps = []     # each step's cache, or with recompute only its inputs
    for _ in range(cfg.n_steps):
        inputs = (H, a)
        H, a, cs = step_forward(p, H, a, cfg, selected)
        steps.append(inputs if cfg.recompute else cs)
        del cs         # with recompute, nothing else holds the step's cache
    logits, cdec = decoder_forward(p, H, a, idx, cfg, ops)
    return logits, (cenc, cread, steps, cdec, selected)


def backward(dlogits, p, cache, cfg: Config, ops) -> dict:
    """-> grads, a dict with one entry per parameter."""
    cenc, cread, steps, cdec, selected = cache
    grads = {}
    dH, da = decoder_backward(dlogits, p, cdec, cfg, grads)
    while steps:       # each step's cache is freed as soon as its gradient is done
        cs = steps.pop()
        if cfg.recompute:
            cs = step_forward(p, *cs, cfg, selected)[2]
        dH = step_backward(dH, da, p, cs, grads)
        da = None      # earlier activations only set the next step's key mask
    da_read, dU_rows = input_read_backward(dH, p, cread, grads, ops)
    da_enc = da_read if da is None else da + da_read
    encoder_backward = encoder_sparse_backward if cfg.path == "sparse" else encoder_dense_backward
    encoder_backward(da_enc, dU_rows, p, cenc, grads, ops)
    for name, value in p.items():      # parameters unused by this config (S = 0, no read)
        if name not in grads:
            grads[name] = get_namespace(value).zeros_like(value)
    return grads


def next_logits(p, x, cfg: Config, ops):
    """Logits of the byte after each window: x ``[B, T']`` -> ``[B, V]``."""
    return forward(p, x, cfg, ops)[0]


def loss(p, x, y, cfg: Config, ops) -> float:
    """Mean cross-entropy without the backward pass (for evaluation)."""
    return to_float(L.cross_entropy_forward(next_logits(p, x, cfg, ops), y)[0])


def loss_and_grads(p, x, y, cfg: Config, ops):
    """Mean cross-entropy of the next byte ``y`` ``[B]`` given windows ``x`` ``[B, T]``."""
    logits, cache = forward(p, x, cfg, ops)
    loss, closs = L.cross_entropy_forward(logits, y)
    grads = backward(L.cross_entropy_backward(1.0, closs), p, cache, cfg, ops)
    return loss, grads
