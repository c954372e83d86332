"""PyTorch references of the brain-like model (sparse path) and the causal Transformer:
autograd checks our hand-written gradients, and PyTorch eager is the speed and memory
baseline of the benchmark.

Written the way a PyTorch user would write them, with the same math as
``brainlike_np.models.brainlike`` (every config field that changes the result:
``n_steps``, ``tau``, ``input_read``, ``act_update``, ``decoder_reads``; the learned
selection) and ``brainlike_np.models.transformer`` (``targets`` "all" or "last"), from
the same parameters (our parameter dicts, as NumPy arrays). Not a package: load it by
path.

Options a PyTorch user has for the brain-like model: ``checkpoint_steps=True`` recomputes
each interaction step in the backward (``torch.utils.checkpoint``) instead of keeping
its activations; ``train_step(..., compile=True)`` runs the loss under ``torch.compile``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from brainlike_np.layers import RMS_EPS


def to_torch(params_host: dict, dtype=torch.float64, device="cpu") -> dict:
    """NumPy parameters -> leaf tensors that collect gradients."""
    return {name: torch.tensor(value, dtype=dtype, device=device, requires_grad=True)
            for name, value in params_host.items()}


def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * g


def attention(xq, xkv, Wq, Wk, Wv, Wo, n_heads, softmax):
    """xq ``[B, Lq, D]``, xkv ``[B, Lk, D]`` -> ``[B, Lq, D]``; ``softmax(scores)``
    applies the mask."""
    B, Lq, D = xq.shape
    d = D // n_heads

    def heads(t):                                                   # [B, L, D] -> [B, h, L, d]
        return t.view(B, -1, n_heads, d).transpose(1, 2)

    q, k, v = heads(xq @ Wq), heads(xkv @ Wk), heads(xkv @ Wv)
    probs = softmax(q @ k.transpose(-2, -1) / math.sqrt(d))         # [B, h, Lq, Lk]
    return (probs @ v).transpose(1, 2).reshape(B, Lq, D) @ Wo


def key_masked_softmax(keep):
    """Softmax over the keys with ``keep`` ``[B, Lk]``; a row with no key is all zero."""
    keep = keep[:, None, None, :]                                   # [B, 1, 1, Lk]

    def softmax(scores):
        lowest = torch.finfo(scores.dtype).min
        row_max = scores.masked_fill(~keep, lowest).amax(-1, keepdim=True).detach()
        e = torch.where(keep, torch.exp(torch.where(keep, scores - row_max, 0.0)), 0.0)
        total = e.sum(-1, keepdim=True)
        return e / torch.where(total > 0, total, 1.0)

    return softmax


def causal_softmax(scores):
    T = scores.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


# ---------------------------------------------------------------------------------
# the brain-like model (brainlike_np.models.brainlike, sparse path)
# ---------------------------------------------------------------------------------
def interaction_step(p, H, keep, z_active, cfg):
    """One step: the active neurons ``H`` ``[B, k, D]`` attend to those with ``keep``
    ``[B, k]``; -> the new states and activations ``[B, k]``. The activation replaces
    the last one, or (``act_update="residual"``) adds to the encoder's ``z_active``."""
    X = rmsnorm(H, p["g"])
    M = attention(X, X, p["Wq"], p["Wk"], p["Wv"], p["Wo"], cfg.n_heads,
                  key_masked_softmax(keep))
    H = H + torch.tanh(torch.cat([X, M], -1) @ p["W_u"] + p["b_u"])
    base = z_active if cfg.act_update == "residual" else 0.0
    return H, torch.sigmoid(base + H @ p["w_a"] + p["b_a"])


def brainlike_logits(p, x, cfg, key_masks=None, *, checkpoint_steps=False):
    """x ``[B, T]`` -> logits ``[B, V]``; each step's key mask ``[B, k]`` is appended
    to the list ``key_masks`` when one is given (tests check what was masked)."""
    T = x.shape[1]
    z = p["b_e"] + (p["E"][x] * p["P"][:T]).sum(1)                  # [B, N]
    idx = torch.topk(z, cfg.k_active, dim=1).indices                # [B, k]
    z_active = z.gather(1, idx)                                     # [B, k]
    a = torch.sigmoid(z_active)                                     # [B, k]
    C = rmsnorm(p["Etok"][x] + p["Epos"][:T], p["g_t"])             # [B, T, D]
    H = a[..., None] * p["U"][idx]                                  # [B, k, D]
    if cfg.input_read:
        H = H + attention(rmsnorm(H, p["g_x"]), C, p["Wq_x"], p["Wk_x"], p["Wv_x"],
                          p["Wo_x"], cfg.n_heads, lambda s: s.softmax(-1))
    step = (partial(checkpoint, interaction_step, use_reentrant=False) if checkpoint_steps
            else interaction_step)
    states = [(H, a)]
    for _ in range(cfg.n_steps):
        keep = a > cfg.tau                                          # [B, k]
        if key_masks is not None:
            key_masks.append(keep)
        H, a = step(p, H, keep, z_active, cfg)
        states.append((H, a))
    read = states if cfg.decoder_reads == "all" else states[-1:]
    a_mean = torch.stack([a for _, a in read]).mean(0)              # [B, k]
    pooled = torch.stack([(a[..., None] * rmsnorm(H, p["g_f"])).sum(1) / cfg.k_active
                          for H, a in read]).mean(0)                # [B, D]
    vote = (a_mean[:, None, :] @ p["W_dec"][idx]).squeeze(1)        # [B, V]
    return p["b_dec"] + vote + pooled @ p["W_r"]


def brainlike_loss(p, x, y, cfg, checkpoint_steps=False):
    return F.cross_entropy(brainlike_logits(p, x, cfg, checkpoint_steps=checkpoint_steps), y)


# ---------------------------------------------------------------------------------
# the causal Transformer (brainlike_np.models.transformer)
# ---------------------------------------------------------------------------------
def transformer_logits(p, x, cfg):
    """x ``[B, T]`` -> logits at every position ``[B, T, V]``."""
    T = x.shape[1]
    X = p["Etok"][x] + p["Epos"][:T]                                # [B, T, D]
    for l in range(cfg.n_layers):
        A = rmsnorm(X, p["g_attn"][l])
        X = X + attention(A, A, p["Wq"][l], p["Wk"][l], p["Wv"][l], p["Wo"][l],
                          cfg.n_heads, causal_softmax)
        hidden = F.relu(rmsnorm(X, p["g_mlp"][l]) @ p["W1"][l])
        X = X + hidden @ p["W2"][l]
    return rmsnorm(X, p["g_f"]) @ p["W_out"]


def transformer_loss(p, x, y, cfg):
    logits = transformer_logits(p, x, cfg)                          # [B, T, V]
    if cfg.targets == "last":
        return F.cross_entropy(logits[:, -1], y)
    targets = torch.cat([x[:, 1:], y[:, None]], 1)                  # [B, T]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


LOSSES = {"brainlike": brainlike_loss, "transformer": transformer_loss}


def loss_and_grads(model: str, p, x, y, cfg, **options):
    """One training step's forward and backward: -> (float loss, {name: grad});
    ``options`` go to the model's loss (``checkpoint_steps`` for the brain-like model)."""
    loss = LOSSES[model](p, x, y, cfg, **options)
    grads = torch.autograd.grad(loss, list(p.values()), allow_unused=True,
                                materialize_grads=True)
    return float(loss.detach()), dict(zip(p, grads))


def train_step(model: str, p, cfg, no_decay, *, compile=False, **options):
    """A full training step as a PyTorch user writes it, matching ``TrainState.train_step``:
    loss, backward, gradients clipped to norm 1, AdamW (betas 0.9/0.95, weight decay 0.01
    except on ``no_decay``). -> ``step(x, y)``, which returns the float loss."""
    loss_fn = partial(LOSSES[model], cfg=cfg, **options)
    if compile:
        loss_fn = torch.compile(loss_fn)
    groups = [{"params": [v for n, v in p.items() if n not in no_decay]},
              {"params": [v for n, v in p.items() if n in no_decay], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.01)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(p, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        optimizer.step()
        return float(loss.detach())

    return step
