"""AdamW (decoupled weight decay) and global-norm gradient clipping, issued on the device.

A training step's clipping and update read nothing back to the host, so a GPU can run
(or capture) the whole step without waiting: the global norm, the clip scale
``min(1, max_norm / (norm + 1e-12))`` and whether the step is finite are device arrays,
and a step whose loss or gradients are not finite changes nothing (its gradients are
replaced by zeros and its rates by zero on the device). :meth:`AdamW.clip_and_update`
returns ``[loss, norm]`` for the caller to read once, after the update is issued.
:meth:`AdamW.clip_and_step` is the same step as a function of arrays (parameters,
moments, gradients, loss and the step's rates in, their updates out), which a backend
can compile with the model's step (``Backend.compile_step``: jax); the host keeps the
step count and uploads the rates it implies (:meth:`AdamW.next_rates`).

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
import numbers
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
        rates = self.upload_rates(self.next_rates(lr)[:1], params)       # [1, 5]
        buffers = self._gradient_buffers(params, grads)
        new, moments = self._step(params, self.moments(params), buffers, rates, None, None)
        self.set_moments(moments)
        params.update(new)       # the same arrays where they update in place (numpy)
        return params

    def clip_and_update(self, params: dict, grads: dict, lr: float, max_norm: float, loss):
        """Clip the gradients to global norm ``max_norm`` (0: off) and take one AdamW step,
        in place, reading nothing from the device. If the loss or the gradients are not
        finite, parameters and moments keep their values (the step count still advances:
        the caller, who reads the result, takes it back with :meth:`undo_count`).
        -> ``[loss, norm before clipping]``, a device array for the caller to read."""
        rates = self.upload_rates(self.next_rates(lr), params)
        new, moments, stats = self.clip_and_step(params, self.moments(params), grads, loss,
                                                 rates, max_norm)
        self.set_moments(moments)
        params.update(new)       # the same arrays where they update in place (numpy)
        return stats

    def clip_and_step(self, params: dict, moments: dict, grads: dict, loss, rates,
                      max_norm: float) -> tuple:
        """:meth:`clip_and_update` as a function of arrays, for a compiled step
        (``Backend.compile_step``): ``moments`` from :meth:`moments`, ``rates`` from
        :meth:`upload_rates` (the step count is advanced by :meth:`next_rates`).
        -> (parameters, moments, ``[loss, norm]``): the arrays passed in, updated in
        place, where the namespace allows it (numpy's flat buffers); new ones elsewhere."""
        buffers = self._gradient_buffers(params, grads)
        xp = get_namespace(buffers[0])
        norm = global_norm(buffers)
        stats = xp.stack([xp.asarray(loss, dtype=norm.dtype, device=device_of(norm)), norm])
        params, moments = self._step(params, moments, buffers, rates,
                                     clip_scale(norm, max_norm), xp.all(xp.isfinite(stats)))
        return params, moments, stats

    def rule(self) -> "AdamW":
        """What a step function calls :meth:`clip_and_step` on: this optimizer on the flat
        path (its buffers are updated in place), else a copy with its hyper-parameters
        and no arrays, whose :meth:`clip_and_step` depends on its arguments alone (so a
        compiled step can outlive this optimizer and be shared)."""
        if self.layout is not None:
            return self
        return AdamW(self.beta1, self.beta2, self.eps, self.weight_decay, self.no_decay)

    def undo_count(self) -> None:
        """The last step changed nothing (it was not finite): take its count back."""
        self.step -= 1

    def moments(self, params: dict) -> dict:
        """``{"m": ..., "v": ...}``, the moments of ``params`` as :meth:`clip_and_step` takes
        them (one flat buffer each after :meth:`adopt` on the flat path, else name ->
        array), made zero before the first step."""
        if not self.m and self.layout is not None:
            p = self.flat["p"]
            self._flat_moments(_zeros_like(p), _zeros_like(p))
        elif not self.m:
            self.m = {name: _zeros_like(p) for name, p in params.items()}
            self.v = {name: _zeros_like(p) for name, p in params.items()}
        if self.layout is not None:
            return {"m": self.flat["m"], "v": self.flat["v"]}
        return {"m": self.m, "v": self.v}

    def set_moments(self, moments: dict) -> None:
        """Keep the moments a step returned (:meth:`moments`' layout)."""
        if self.layout is not None and moments["m"] is self.flat["m"] \
                and moments["v"] is self.flat["v"]:
            return                                 # updated in place: nothing to keep
        if self.layout is not None:
            self._flat_moments(moments["m"], moments["v"])
        else:
            self.m, self.v = dict(moments["m"]), dict(moments["v"])

    def next_rates(self, lr: float) -> list:
        """Advance the step count; -> the step's scalars on the host, a table ``[2, 5]``:
        row 0 (1 - b1, 1 - b2, the decay factor 1 - lr wd, the step size, the bias-corrected
        eps), row 1 those of a step that changes nothing (0, 0, 1, 0, the same eps)."""
        self.step += 1
        bias1 = 1.0 - self.beta1 ** self.step
        step_size = lr * math.sqrt(1.0 - self.beta2 ** self.step) / bias1
        eps = self.eps * math.sqrt(1.0 - self.beta2 ** self.step)
        return [[1.0 - self.beta1, 1.0 - self.beta2, 1.0 - lr * self.weight_decay, step_size, eps],
                [0.0, 0.0, 1.0, 0.0, eps]]

    @staticmethod
    def upload_rates(table: list, params: dict):
        """A host table of :meth:`next_rates` as one device array of the parameters' dtype."""
        like = next(iter(params.values()))
        xp = get_namespace(like)
        return xp.asarray(table, dtype=like.dtype, device=device_of(like))

    def _gradient_buffers(self, params: dict, grads: dict) -> list:
        """[one flat buffer] on the flat path, else one array per parameter of ``params``."""
        if self.layout is not None:
            return [self.layout.flatten(grads)]
        return [grads[name] for name in params]

    def _step(self, params, moments, buffers, rates, scale, apply) -> tuple:
        """The update of ``params`` and ``moments`` by gradient ``buffers``, times ``scale``
        (a 0-d array or None); where ``apply`` (0-d bool or None) is False, nothing
        changes. -> (parameters, moments)."""
        xp = get_namespace(buffers[0])
        rates = _chosen_rates(xp, rates, apply)
        decay = rates[2] if self.weight_decay else None
        if self.layout is not None:
            p = self.flat["p"]
            if decay is not None and self.layout.n_decayed:
                decayed = p[:self.layout.n_decayed]        # a view: in place, no copy back
                decayed *= decay
            _adam(xp, p, _guarded(xp, buffers[0], scale, apply), moments["m"], moments["v"],
                  rates)                                   # in place: the same buffers
            return params, moments
        new = {"p": {}, "m": {}, "v": {}}
        for (name, p), g in zip(params.items(), buffers):
            m, v = moments["m"][name], moments["v"][name]
            if decay is not None and name not in self.no_decay:
                p *= decay                         # in place where arrays are mutable
            new["p"][name], new["m"][name], new["v"][name] = _adam(
                xp, p, _guarded(xp, g, scale, apply), m, v, rates)
        return new["p"], {"m": new["m"], "v": new["v"]}

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


def _chosen_rates(xp, table, apply) -> tuple:
    """The step's five scalars (see ``AdamW.next_rates``) as 0-d arrays, views of
    ``table`` ``[2, 5]`` (``[1, 5]`` when ``apply`` is None): its row 0 where ``apply``
    (a 0-d bool), else its row 1, a step that changes nothing."""
    chosen = table[0, :] if apply is None else xp.where(apply, table[0, :], table[1, :])  # [5]
    return tuple(xp.reshape(chosen[i:i + 1], ()) for i in range(5))


def _adam(xp, p, g, m, v, rates):
    """Moments and parameter step; p, g, m, v of one shape (one parameter or a whole flat
    buffer), ``rates`` from ``_chosen_rates``. -> (p, m, v): the same arrays, updated in
    place, where the namespace's arrays are mutable; new ones where they are not (JAX)."""
    m += rates[0] * (g - m)                     # m = b1 m + (1 - b1) g
    v += rates[1] * (g * g - v)                 # v = b2 v + (1 - b2) g^2
    p -= rates[3] * (m / (xp.sqrt(v) + rates[4]))
    return p, m, v


def _zeros_like(x):
    return get_namespace(x).zeros_like(x)


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
    ``decay_fraction`` of ``max_steps``, then a linear decay). TypeError or ValueError
    naming an argument out of its range."""
    _check_schedule(schedule, step, base_lr, warmup, max_steps, min_ratio, decay_fraction)
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


def _check_schedule(schedule, step, base_lr, warmup, max_steps, min_ratio, decay_fraction):
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    for name, value, least in (("step", step, 0), ("warmup", warmup, 0),
                               ("max_steps", max_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    for name, value, most in (("base_lr", base_lr, math.inf), ("min_ratio", min_ratio, 1.0),
                              ("decay_fraction", decay_fraction, 1.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(value) and 0.0 <= value <= most):
            raise ValueError(f"{name} must be finite and in [0, {most}], got {value}")


def continued_lr(new_lr: float, step: int, since: int, last_lr: float, steps: int) -> float:
    """A schedule changed on resume at step ``since``, after a rate of ``last_lr``: the
    rate moves linearly from ``last_lr`` to the new schedule's ``new_lr`` over ``steps``
    steps (0: at once), then follows it."""
    if step < since or step >= since + steps:
        return new_lr
    return last_lr + (new_lr - last_lr) * (step - since + 1) / steps
