"""The brain-like model: forward and hand-written backward, sparse and dense paths.

Notation: B batch, T context, V vocabulary, N neurons, D state width, k active neurons,
S interaction steps, h heads, M the neurons a path carries (k on the sparse path, N on
the dense one).

    z    = b_e + sum_t E[x[:, t]] * P[t]                          [B, N]
    idx  = top_k(z, k)                                            [B, k]
    a    = sigmoid(z[idx])                                        [B, k]
    C    = rms(Etok[x] + Epos, g_t)                               [B, T, D]
    H0   = a * U[idx];  H = H0 + MHA(rms(H0, g_x), C, C)          [B, k, D]
    S x: X = rms(H, g); M = MHA(X, X, X, mask a > tau)
         H = H + tanh([X, M] @ W_u + b_u)
         a = sigmoid(H @ w_a + b_a)                  act_update="replace" (the design note's)
         a = sigmoid(z[idx] + H @ w_a + b_a)         act_update="residual" (w_a starts at 0)
    pooled(H, a) = mean_j a_j rms(H_j, g_f)                       [B, D]
    logits = b_dec + sum_j a_j W_dec[idx_j] + pooled(H, a) @ W_r  [B, V]

``decoder_reads="last"`` (the design note's) decodes the last state (H, a);
``decoder_reads="all"`` decodes the mean over the S + 1 states (after the input read and
after each step) of the activations a and of the pooled states pooled(H, a), so every
step and the encoder get a gradient from the decoder directly. With "residual" the steps
refine the encoder's activation instead of replacing it (the RMSNorm of the steps would
otherwise cancel the scale that carries the encoder's evidence).

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
Caches with more than three fields are ``NamedTuple``s read by name.

Here: the config, the interface's constants, the parameters, the decoder and the whole
model; the encoder is in ``brainlike_encoder.py``, the input read and the interaction
steps in ``brainlike_steps.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .. import layers as L
from ..backends import get_namespace, to_float
from ..config import ConfigDict, ConfigError, choose
from .brainlike_encoder import (encoder_dense_backward, encoder_dense_forward,
                                encoder_sparse_backward, encoder_sparse_forward,
                                per_sample_scatter)
from .brainlike_steps import (input_read_backward, input_read_forward, step_backward,
                              step_forward)

PATHS = ("sparse", "dense")
SELECTIONS = ("learned", "random")
ACT_UPDATES = ("replace", "residual")
DECODER_READS = ("last", "all")
CHOICES = {"path": PATHS, "selection": SELECTIONS, "act_update": ACT_UPDATES,   # for --help
           "decoder_reads": DECODER_READS}


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
    act_update: str = "replace"    # each step's activation: "replace" sigmoid(H w_a + b_a);
                                   # "residual" sigmoid(z[idx] + H w_a + b_a)
    decoder_reads: str = "last"    # the decoder reads the "last" state, or the mean of
                                   # "all" S + 1 states
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
        choose(ACT_UPDATES, self.act_update, "act_update")
        choose(DECODER_READS, self.decoder_reads, "decoder_reads")


# ---------------------------------------------------------------------------------
# the model interface's constants (models.Model)
# ---------------------------------------------------------------------------------
Config = BrainlikeConfig

# the design note's model: activations replaced by each step, the last state decoded
NOTE_MODEL = {"act_update": "replace", "decoder_reads": "last"}
# issue 24's B + C: the steps refine the encoder's activation, the decoder reads every
# state; with one step, chosen by bench/learning.py at both of the trainer's budgets
REFINE_MODEL = {"act_update": "residual", "decoder_reads": "all"}
PRESETS = {
    # for tests: every code path, in milliseconds
    "tiny": Config(context=8, n_neurons=32, d_state=8, k_active=6, n_steps=2, n_heads=2),
    # 1200 steps of batch 64 train in about 2 minutes on 2 CPU cores
    "default": Config(n_steps=1, **REFINE_MODEL),
    # the design note's model at the default's sizes (the default before issue 24)
    "note": Config(n_steps=5, **NOTE_MODEL),
    # the design note's model at the design note's sizes
    "seed": Config(context=128, n_neurons=4096, d_state=256, k_active=128, n_steps=5,
                   n_heads=4, **NOTE_MODEL),
}
BATCH_SIZES = {"tiny": 4, "default": 64, "note": 64, "seed": 32}
EXECUTION_OPTIONS = {"path": ("dense",), "recompute": (True,)}
# gains and biases get no weight decay
NO_DECAY = frozenset({"b_e", "g_t", "g_x", "g", "b_u", "b_a", "g_f", "b_dec"})


def supervised_targets(cfg: Config) -> int:
    """Next-byte targets a window trains on: the byte after it."""
    return 1


def carried(cfg: Config) -> int:
    """M: the neurons a path carries, k on the sparse path, N on the dense one."""
    return cfg.k_active if cfg.path == "sparse" else cfg.n_neurons


def forward_flops(cfg: Config, batch_size: int) -> int:
    """Matmul FLOPs of one forward pass (2*m*n*k each), M neurons carried per sample."""
    B, M = batch_size, carried(cfg)
    T, D, V = cfg.context, cfg.d_state, cfg.vocab_size
    read = 2 * B * (2 * M * D * D + 2 * T * D * D + 2 * M * T * D)      # q, o; k, v; qk, pv
    step = 2 * B * (4 * M * D * D + 2 * M * M * D + M * 2 * D * D + M * D)   # + W_u, w_a
    decode = 2 * B * (M * V + D * V)
    return read + cfg.n_steps * step + decode


ID_ITEMSIZE = 8    # the active neurons' ids idx: int64, as topk gives them


def step_cache_bytes(cfg: Config, batch_size: int, itemsize: int) -> int:
    """One interaction step's cache, its input state aside (the read's output or the
    previous step's new state): the input's inverse norm [B, M, 1], q, k, v [B, M, D]
    (as heads), each head's log-sum-exp [B, h, M], the message, the tanh and the new
    state [B, M, D], the readout [B, M] and the key mask [B, M] (bool)."""
    M = carried(cfg)
    state, act = batch_size * M * cfg.d_state, batch_size * M
    return itemsize * (6 * state + (2 + cfg.n_heads) * act) + act


def kept_bytes(cfg: Config, batch_size: int, itemsize: int) -> int:
    """Exactly the bytes of the distinct arrays that ``forward``'s cache holds for the
    backward (on numpy): an array held in several places once (a step's new state is
    the next step's input), not the parameters (the dense path holds U and P's rows,
    views of them) nor the tokens x."""
    B, T, N, D, k, S = (batch_size, cfg.context, cfg.n_neurons, cfg.d_state, cfg.k_active,
                        cfg.n_steps)
    sparse, M = cfg.path == "sparse", carried(cfg)
    state, context, act = B * M * D, B * T * D, B * M      # [B, M, D], [B, T, D], [B, M]
    reads = S + 1 if cfg.decoder_reads == "all" else 1
    # the encoder's a [B, M]; sparse: the U rows [B, k, D] (and idx [B, k], below);
    # dense: E's rows [B, T, N], sigmoid(z) and the selection [B, N]
    floats = act + (state if sparse else B * T * N + 2 * B * N)
    if cfg.act_update == "residual":
        floats += act                                      # z [B, M]
    floats += state                                        # the read's output H
    if cfg.input_read:
        # H0 and the queries q [B, M, D], H0's inverse norm and each head's log-sum-exp;
        # the context Etok[x] + Epos, its keys and values [B, T, D], its inverse norm
        floats += 2 * state + (1 + cfg.n_heads) * act + 3 * context + B * T
    steps = 0
    if cfg.recompute:
        floats += S * (state + act)                        # each later step's input H, a
    else:
        steps = S * step_cache_bytes(cfg, B, itemsize)
        if not sparse:    # a step's readout times the selection [B, N], if decoded
            floats += (S if cfg.decoder_reads == "all" else min(S, 1)) * act
    # the decoder: each read's inverse norm [B, M], the pooled mean [B, D], the mean
    # activation over all N [B, N] (dense with one read: that read's a, counted)
    floats += reads * act + B * D + (B * N if sparse or reads > 1 else 0)
    return itemsize * floats + steps + (ID_ITEMSIZE * B * k if sparse else 0)


def transient_bytes(cfg: Config, batch_size: int, itemsize: int) -> int:
    """An upper bound of what a training step holds at once beyond ``kept_bytes``: the
    largest working set of its phases, counted from the code and checked against numpy's
    traced peak (tests/test_brainlike.py). The reference attention (torch, jax, numpy
    without SciPy) forms three ``[B, h, M, M or T]`` score arrays at once, the kernels
    none. With recompute each phase may also hold a redone step's cache (the backward
    keeps the last one redone until it ends)."""
    B, T, D, h, M = batch_size, cfg.context, cfg.d_state, cfg.n_heads, carried(cfg)
    state, context, logits = B * M * D, B * T * D, B * cfg.vocab_size
    # the cross-entropy: the logits, three temporaries and its result [B, V] in floats, the
    # one-hot mask [B, V] in bools (a byte each, not a float: counted as one it left the
    # bound 1.24x the traced peak where this term decides), a few [B, 1]; then the
    # backward holds the logits and their gradient [B, V] and one of:
    loss = itemsize * 5 * logits + logits
    layers = 6 * state                  # the decoder's backward or the encoder's
    if cfg.path == "dense":
        layers += B * T * cfg.n_neurons                    # with dE's [B, T, N]
    if cfg.n_steps:                     # a step's, with its scores [B, h, M, M]
        layers = max(layers, 14 * state + 3 * B * h * M * M)
    if cfg.input_read:                  # the input read's, with its scores [B, h, M, T]
        layers = max(layers, 5 * state + 6 * context + 3 * B * h * M * T)
    redone = step_cache_bytes(cfg, B, itemsize) if cfg.recompute else 0
    return max(loss, itemsize * (2 * logits + layers) + redone)


def activation_bytes(cfg: Config, batch_size: int, itemsize: int) -> int:
    """An upper estimate of a training step's memory beyond the parameters, their
    gradients and AdamW's moments, from the shapes: what the backward keeps plus its
    largest transient. The trainer refuses runs that cannot fit by it; a test holds it
    above the measured peak."""
    return kept_bytes(cfg, batch_size, itemsize) + transient_bytes(cfg, batch_size, itemsize)


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
    on every backend. With ``act_update="residual"`` w_a is drawn as for "replace" (so
    every other weight is the same for a seed) and then zeroed: the steps start by
    keeping the encoder's activation."""
    params = backend.init_params(param_shapes(cfg), lambda n, s: _init_std(n, s, cfg),
                                 seed, dtype)
    if cfg.act_update == "residual":
        params["w_a"] = get_namespace(params["w_a"]).zeros_like(params["w_a"])
    return params


# ---------------------------------------------------------------------------------
# decoder: logits from the mean over the states it reads (the last one, or all)
# ---------------------------------------------------------------------------------
def pool_forward(p, H, a, cfg, ops):
    """pooled = sum_j a_j rms(H_j, g_f) / k: H ``[B, M, D]``, a ``[B, M]`` -> ``[B, D]``."""
    xp = get_namespace(H)
    F, cf = L.rmsnorm_forward(H, p["g_f"], ops)                      # [B, M, D]
    return xp.sum(a[..., None] * F, axis=1) / cfg.k_active, (cf, a)


def pool_backward(dpooled, p, cache, cfg, grads, ops):
    """dpooled ``[B, D]`` -> (dH ``[B, M, D]``, da ``[B, M]``)."""
    xp = get_namespace(dpooled)
    cf, a = cache
    F = L.rmsnorm_output(cf)                                         # [B, M, D]
    dF = a[..., None] * dpooled[:, None, :] / cfg.k_active           # [B, M, D]
    da = xp.sum(F * dpooled[:, None, :], axis=-1) / cfg.k_active     # [B, M]
    dH, dg_f = L.rmsnorm_backward(dF, cf, ops)
    L.accumulate(grads, "g_f", dg_f)
    return dH, da


class DecoderCache(NamedTuple):
    pools: list            # pool_forward's cache of each state read, in order
    pooled: object         # [B, D] the mean of the pooled states
    a_all: object          # [B, N] the mean activation, scattered to all N neurons
    idx: object            # [B, k] (sparse path) or None


def decoder_forward(p, reads, idx, cfg, ops):
    """reads: the states ``(H [B, M, D], a [B, M])`` decoded, -> logits ``[B, V]``:
    b_dec + mean(a) @ W_dec[idx] + mean(pooled(H, a)) @ W_r. ``idx`` ``[B, k]`` on the
    sparse path (the mean activation is scattered to ``[B, N]`` for one product with
    W_dec, rather than gathering ``[B, k, V]`` rows of it), None on the dense path."""
    pools, pooled, a = [], None, None
    for H_r, a_r in reads:
        pooled_r, cp = pool_forward(p, H_r, a_r, cfg, ops)           # [B, D]
        pools.append(cp)
        pooled, a = (pooled_r, a_r) if a is None else (pooled + pooled_r, a + a_r)
    if len(reads) > 1:
        pooled, a = pooled / len(reads), a / len(reads)              # [B, D], [B, M]
    a_all = a if idx is None else per_sample_scatter(a, idx, cfg.n_neurons, ops)  # [B, N]
    logits = p["b_dec"] + a_all @ p["W_dec"] + pooled @ p["W_r"]      # [B, V]
    return logits, DecoderCache(pools, pooled, a_all, idx)


def decoder_backward(dlogits, p, cache, grads):
    """-> (d of each read's pooled state ``[B, D]``, d of each read's activations
    through the direct path ``[B, M]``): the same for every read, the mean's 1/reads
    included. The reads' pools are the caller's (``pool_backward``), one at a time."""
    xp = get_namespace(dlogits)
    dpooled = dlogits @ p["W_r"].T                                   # [B, D]
    da_all = dlogits @ p["W_dec"].T                                  # [B, N]
    da = da_all if cache.idx is None else xp.take_along_axis(da_all, cache.idx, axis=1)
    if len(cache.pools) > 1:
        dpooled, da = dpooled / len(cache.pools), da / len(cache.pools)
    for name, g in (("b_dec", xp.sum(dlogits, axis=0)), ("W_r", cache.pooled.T @ dlogits),
                    ("W_dec", cache.a_all.T @ dlogits)):
        L.accumulate(grads, name, g)
    return dpooled, da


# ---------------------------------------------------------------------------------
# the whole model
# ---------------------------------------------------------------------------------
class ForwardCache(NamedTuple):
    encoder: tuple         # the encoder's cache (sparse or dense)
    read: tuple            # input_read_forward's cache
    steps: list            # each step's StepCache, or with recompute its inputs (H, a)
    decoder: DecoderCache
    selected: object       # [B, N] 0/1 on the dense path, else None
    z: object              # [B, M] the encoder's pre-activations (residual update) or None


def forward(p, x, cfg: Config, ops):
    """tokens x ``[B, T']`` (T' <= T) -> (logits ``[B, V]``, cache for ``backward``)."""
    encoder_forward = encoder_sparse_forward if cfg.path == "sparse" else encoder_dense_forward
    enc, cenc = encoder_forward(p, x, cfg, ops)
    z = enc.z if cfg.act_update == "residual" else None
    H, cread = input_read_forward(p, enc.a, enc.U_rows, x, cfg, ops)
    a = enc.a
    reads_all = cfg.decoder_reads == "all"
    reads = [(H, a)] if reads_all else []
    steps = []     # each step's cache, or with recompute only its inputs
    for _ in range(cfg.n_steps):
        inputs = (H, a)
        H, a, cs = step_forward(p, H, a, cfg, ops, enc.selected, z)
        steps.append(inputs if cfg.recompute else cs)
        del cs         # with recompute, nothing else holds the step's cache
        if reads_all:
            reads.append((H, a))
    logits, cdec = decoder_forward(p, reads if reads_all else [(H, a)], enc.idx, cfg, ops)
    return logits, ForwardCache(cenc, cread, steps, cdec, enc.selected, z)


def backward(dlogits, p, cache, cfg: Config, ops) -> dict:
    """-> grads, a dict with one entry per parameter."""
    grads = {}
    dpooled, da_direct = decoder_backward(dlogits, p, cache.decoder, grads)
    pools, steps = cache.decoder.pools, cache.steps

    def read_backward():
        """The last unconsumed read's gradient: -> (dH, da)."""
        dH_r, da_r = pool_backward(dpooled, p, pools.pop(), cfg, grads, ops)
        return dH_r, da_r + da_direct

    dH, da = read_backward()
    dz = None      # z's gradient through the residual readouts
    while steps:   # each step's cache is freed as soon as its gradient is done
        cs = steps.pop()
        if cfg.recompute:
            cs = step_forward(p, *cs, cfg, ops, cache.selected, cache.z)[2]
        dH, dpre = step_backward(dH, da, p, cs, grads, ops)
        if cache.z is not None and dpre is not None:
            dz = dpre if dz is None else dz + dpre
        da = None  # an earlier activation only sets the next step's key mask, unless read
        if pools:
            dH_r, da = read_backward()
            dH = dH + dH_r
    da_read, dU_rows = input_read_backward(dH, p, cache.read, grads, ops)
    da_enc = da_read if da is None else da + da_read
    encoder_backward = encoder_sparse_backward if cfg.path == "sparse" else encoder_dense_backward
    encoder_backward(da_enc, dz, dU_rows, p, cache.encoder, grads, ops)
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
