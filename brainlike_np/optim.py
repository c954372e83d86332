"""AdamW (decoupled weight decay) and global-norm gradient clipping, issued on the device.

A training step's clipping and update read nothing back to the host, so a GPU can run
(or capture) the whole step without waiting: the global norm, the clip scale
``min(1, max_norm / (norm + 1e-12))`` and whether the step is finite are device arrays,
and a step whose loss or gradients are not finite changes nothing (its gradients are
replaced by zeros and its rates by zero on the device). :meth:`AdamW.clip_and_update`
returns ``[loss, norm]`` for the caller to read once, after the update is issued.

On backends whose views write through (numpy, cupy, torch: ``views_alias``),
:meth:`AdamW.adopt` keeps the parameters and both moments in one flat buffer each, every
parameter a view into it (the decayed ones first), and each step copies the gradients
into one flat buffer: the norm is one reduction and the update a few passes over the
whole model. Elsewhere (array-api-strict) the same expressions run once per parameter.

The update is the textbook one, arranged for fewer passes (as PyTorch's is):
``m += (1 - b1) (g - m)``, ``v += (1 - b2) (g^2 - v)``, ``p *= 1 - lr wd`` where p decays,
``p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps sqrt(1 - b2^t))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce

from .backends import device_of, get_namespace
from .backends.aliasing import views_alias
from .backends.distributed import unflatten

CLIP_EPS = 1e-12


def global_norm(arrays: list):
    """sqrt of the sum of squares of every entry of ``arrays``: a 0-d device array."""
    xp = get_namespace(arrays[0])
    return xp.sqrt(reduce(lambda a, b: a + b, (xp.sum(g * g) for g in arrays)))


def clip_scale(norm, max_norm: float):
    """``min(1, max_norm / (norm + 1e-12))`` as a 0-d device array; None if clipping is
    off (``max_norm <= 0``)."""
    if max_norm <= 0:
        return None
    return get_namespace(norm).clip(max_norm / (norm + CLIP_EPS), max=1.0)


class FlatLayout:
    """Where each parameter lives in a flat buffer ``[n]``: the decayed parameters first
    (a prefix, so weight decay is one pass over it), each group in the model's order."""

    def __init__(self, shapes: dict, no_decay: frozenset):
        self.shapes = shapes                                   # the model's order
        decayed = [n for n in shapes if n not in no_decay]
        self.order = decayed + [n for n in shapes if n in no_decay]
        self.n_decayed = sum(math.prod(shapes[n]) for n in decayed)

    def flatten(self, arrays: dict):
        """One new contiguous buffer ``[n]`` holding ``arrays`` (name -> array)."""
        xp = get_namespace(arrays[self.order[0]])
        return xp.concat([xp.reshape(arrays[n], (-1,)) for n in self.order])

    def views(self, flat) -> dict:
        """name -> view into ``flat``, in the model's order."""
        views = unflatten(flat, {n: self.shapes[n] for n in self.order})
        return {n: views[n] for n in self.shapes}


@dataclass
class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter).

    Parameters named in ``no_decay`` (gains, biases) get no weight decay. ``m`` and ``v``
    map each parameter's name to its moment (empty before the first step).
    """

    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.01
    no_decay: frozenset = field(default_factory=frozenset)
    step: int = 0
    m: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)
    layout: FlatLayout | None = field(default=None, repr=False)   # set by adopt()
    flat: dict = field(default_factory=dict, repr=False)   # "p", "m", "v" -> flat buffer

    def adopt(self, params: dict, xp) -> dict:
        """Take over ``params`` and the moments set so far: where the views of namespace
        ``xp`` write through, copy them into flat buffers and return the parameters as
        views into theirs (train those; the arrays passed in are no longer updated);
        elsewhere return ``params`` itself."""
        if not views_alias(xp):
            return params
        self.layout = FlatLayout({n: tuple(p.shape) for n, p in params.items()}, self.no_decay)
        self.flat = {"p": self.layout.flatten(params)}
        if self.m:
            self._flat_moments(self.layout.flatten(self.m), self.layout.flatten(self.v))
        return self.layout.views(self.flat["p"])

    def _flat_moments(self, m, v) -> None:
        self.flat["m"], self.flat["v"] = m, v
        self.m, self.v = self.layout.views(m), self.layout.views(v)

    # ---- steps --------------------------------------------------------------------
    def update(self, params: dict, grads: dict, lr: float) -> dict:
        """One AdamW step without clipping, in place: the arrays of ``params`` (which the
        caller owns and nothing else may share; after :meth:`adopt`, the views it
        returned) and the moments; returns ``params``."""
        self._step(params, self._gradient_buffers(params, grads), lr, None, None)
        return params

    def clip_and_update(self, params: dict, grads: dict, lr: float, max_norm: float, loss):
        """Clip the gradients to global norm ``max_norm`` (0: off) and take one AdamW step,
        in place, reading nothing from the device. If the loss or the gradients are not
        finite, parameters and moments keep their values (the step count still advances:
        the caller, who reads the result, takes it back with :meth:`undo_count`).
        -> ``[loss, norm before clipping]``, a device array for the caller to read."""
        buffers = self._gradient_buffers(params, grads)
        xp = get_namespace(buffers[0])
        norm = global_norm(buffers)
        stats = xp.stack([xp.asarray(loss, dtype=norm.dtype, device=device_of(norm)), norm])
        self._step(params, buffers, lr, clip_scale(norm, max_norm), xp.all(xp.isfinite(stats)))
        return stats

    def undo_count(self) -> None:
        """The last step changed nothing (it was not finite): take its count back."""
        self.step -= 1

    def _gradient_buffers(self, params: dict, grads: dict) -> list:
        """[one flat buffer] on the flat path, else one array per parameter of ``params``."""
        if self.layout is not None:
            return [self.layout.flatten(grads)]
        return [grads[name] for name in params]

    def _step(self, params, buffers, lr, scale, apply) -> None:
        """The update of ``params`` by gradient ``buffers``, times ``scale`` (a 0-d array
        or None); where ``apply`` (0-d bool or None) is False, nothing changes."""
        self.step += 1
        xp = get_namespace(buffers[0])
        rates = self._rates(xp, buffers[0], lr, apply)
        eps = self.eps * math.sqrt(1.0 - self.beta2 ** self.step)
        decay = rates[2] if self.weight_decay else None
        if self.layout is not None:
            p = self.flat["p"]
            if not self.m:                         # the first step: moments start at zero
                self._flat_moments(xp.zeros_like(p), xp.zeros_like(p))
            if decay is not None and self.layout.n_decayed:
                decayed = p[:self.layout.n_decayed]        # a view: in place, no copy back
                decayed *= decay
            _adam_in_place(xp, p, _guarded(xp, buffers[0], scale, apply),
                           self.flat["m"], self.flat["v"], rates, eps)
            return
        for (name, p), g in zip(params.items(), buffers):
            m, v = self.m.get(name), self.v.get(name)
            if m is None:                          # the first step: moments start at zero
                m, v = xp.zeros_like(p), xp.zeros_like(p)
            if decay is not None and name not in self.no_decay:
                p *= decay
            _adam_in_place(xp, p, _guarded(xp, g, scale, apply), m, v, rates, eps)
            # stored back: NumPy's 0-d results are scalars, which in-place operators rebind
            self.m[name], self.v[name], params[name] = m, v, p

    def _rates(self, xp, like, lr, apply) -> tuple:
        """The step's scalars as 0-d device arrays, views of one uploaded vector:
        (1 - b1, 1 - b2, the decay factor 1 - lr wd, the step size); where ``apply`` is
        False, those of a step that changes nothing (0, 0, 1, 0)."""
        bias1 = 1.0 - self.beta1 ** self.step
        step_size = lr * math.sqrt(1.0 - self.beta2 ** self.step) / bias1
        rates = [1.0 - self.beta1, 1.0 - self.beta2, 1.0 - lr * self.weight_decay, step_size]
        where = {"dtype": like.dtype, "device": device_of(like)}
        if apply is None:
            chosen = xp.asarray(rates, **where)                                 # [4]
        else:
            both = xp.asarray([rates, [0.0, 0.0, 1.0, 0.0]], **where)          # [2, 4]
            chosen = xp.where(apply, both[0, :], both[1, :])                    # [4]
        return tuple(xp.reshape(chosen[i:i + 1], ()) for i in range(4))

    # ---- checkpoints ---------------------------------------------------------------
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


def _guarded(xp, g, scale, apply):
    """The gradient times ``scale``, and zero where ``apply`` is False (NaN * 0 is NaN)."""
    if scale is not None:
        g = g * scale
    return g if apply is None else xp.where(apply, g, 0.0)


def _adam_in_place(xp, p, g, m, v, rates, eps):
    """Moments and parameter step, in place; p, g, m, v of one shape (one parameter or a
    whole flat buffer), ``rates`` from ``AdamW._rates``."""
    m += rates[0] * (g - m)                     # m = b1 m + (1 - b1) g
    v += rates[1] * (g * g - v)                 # v = b2 v + (1 - b2) g^2
    p -= rates[3] * (m / (xp.sqrt(v) + eps))


SCHEDULES = ("cosine", "linear", "constant", "wsd")


def cosine_lr(step: int, base_lr: float, warmup: int, max_steps: int,
              min_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio * base_lr``."""
    return scheduled_lr("cosine", step, base_lr, warmup, max_steps, min_ratio)


def scheduled_lr(schedule: str, step: int, base_lr: float, warmup: int, max_steps: int,
                 min_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """The rate of step ``step`` (0-based): a linear warmup over ``warmup`` steps, then
    ``schedule`` down to ``min_ratio * base_lr`` at ``max_steps``: ``cosine``; ``linear``;
    ``constant`` (no decay); ``wsd`` (warmup-stable-decay: the peak rate until the last
    ``decay_fraction`` of ``max_steps``, then a linear decay)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    start = warmup
    if schedule == "wsd":
        start = max(warmup, max_steps - round(decay_fraction * max_steps))
    progress = min(1.0, max(0.0, (step - start) / max(1, max_steps - start)))
    if schedule == "cosine":       # (the expression of every release: bit-exact resume)
        cosine = math.cos(math.pi * progress)
        return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + cosine))
    return base_lr * (min_ratio + (1.0 - min_ratio) * (1.0 - progress))    # linear, wsd


def continued_lr(new_lr: float, step: int, since: int, last_lr: float, steps: int) -> float:
    """A schedule changed on resume at step ``since``, after a rate of ``last_lr``: the
    rate moves linearly from ``last_lr`` to the new schedule's ``new_lr`` over ``steps``
    steps (0: at once), then follows it."""
    if step < since or step >= since + steps:
        return new_lr
    return last_lr + (new_lr - last_lr) * (step - since + 1) / steps
