"""AdamW (decoupled weight decay) and global-norm gradient clipping, on any backend.

Parameters, gradients and moments are dicts ``name -> array``. AdamW updates the
parameters and its moments in place with the array API's in-place operators, so a step
holds no second copy of either; the arithmetic, and so every bit of the result, is that
of the textbook expressions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .backends import get_namespace, to_float


def global_norm(grads: dict) -> float:
    """sqrt of the sum of squares of every gradient entry."""
    squares = [get_namespace(g).sum(g * g) for g in grads.values()]
    return math.sqrt(to_float(sum(squares)))     # one device-to-host read, not one per tensor


def clip_by_global_norm(grads: dict, max_norm: float) -> tuple[dict, float]:
    """Scale all gradients by ``min(1, max_norm / norm)``; -> (grads, norm before)."""
    norm = global_norm(grads)
    if max_norm <= 0 or norm <= max_norm:
        return grads, norm
    scale = max_norm / (norm + 1e-12)
    return {name: g * scale for name, g in grads.items()}, norm


@dataclass
class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter).

    ``decay_filter(name)`` says which parameters get weight decay (default: matrices,
    not gains and biases; decided by the caller through ``no_decay``).
    """

    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.01
    no_decay: frozenset = field(default_factory=frozenset)
    step: int = 0
    m: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)

    def update(self, params: dict, grads: dict, lr: float) -> dict:
        """One AdamW step, in place: the arrays of ``params`` (which the caller owns and
        nothing else may share) and the moments are updated; returns ``params``."""
        self.step += 1
        b1, b2 = self.beta1, self.beta2
        bias1 = 1.0 - b1 ** self.step
        bias2 = 1.0 - b2 ** self.step
        for name, p in params.items():
            g = grads[name]
            xp = get_namespace(p)
            m, v = self.m.get(name), self.v.get(name)
            if m is None:                         # the first step: moments start at zero
                m, v = (1.0 - b1) * g, (1.0 - b2) * (g * g)
            else:
                m *= b1
                m += (1.0 - b1) * g
                v *= b2
                v += (1.0 - b2) * (g * g)
            if name not in self.no_decay and self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            p -= lr * (m / bias1) / (xp.sqrt(v / bias2) + self.eps)
            # stored back: NumPy's 0-d results are scalars, which in-place operators rebind
            self.m[name], self.v[name], params[name] = m, v, p
        return params

    def state(self) -> dict:
        """Hyper-parameters and step (moments are saved separately, as arrays)."""
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay, "step": self.step}

    @classmethod
    def from_state(cls, state: dict, no_decay: frozenset) -> "AdamW":
        """The optimizer ``state()`` describes, without moments; ValueError if a field is
        missing, of the wrong type or out of range."""
        if not isinstance(state, dict):
            raise ValueError(f"optimizer state must be a mapping, got {type(state).__name__}")
        numbers = {}
        for name in ("beta1", "beta2", "eps", "weight_decay"):
            value = state[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"optimizer {name} must be a finite number, got {value!r}")
            numbers[name] = float(value)
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"optimizer step must be an integer >= 0, got {step!r}")
        return cls(**numbers, no_decay=no_decay, step=step)


def cosine_lr(step: int, base_lr: float, warmup: int, max_steps: int,
              min_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio * base_lr``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, max_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
