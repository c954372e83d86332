"""What bench/claims.py measures in its own process: a model at a size (``Subject``) and
the ``Lab`` that runs its training step on one backend: the step's memory split, its
time, and the largest batch under a memory budget.

Memory is the backend's accounting (``measure.traced_peak``): bytes of arrays alive
above the parameters. A training step's memory is split into parameters, gradients,
AdamW state (2 moments) and activations = peak(forward + backward) - gradients.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from brainlike_np.data import random_batch
from brainlike_np.models import get_model, get_preset
from brainlike_np.optim import AdamW
from brainlike_np.train_state import accumulate
from measure import best_time, fmt_bytes, log, traced_peak


# ---------------------------------------------------------------------------------
# what is measured: one model at one size
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Subject:
    label: str
    kind: str                  # a registered model's name
    cfg: object                # its config (execution options included)

    @property
    def module(self):
        return get_model(self.kind)

    @property
    def targets_per_window(self) -> int:
        return self.module.supervised_targets(self.cfg)

    def loss_and_grads(self, params, x, y, ops):
        return self.module.loss_and_grads(params, x, y, self.cfg, ops)

    def forward_matmul_flops(self, B: int) -> int:
        return self.module.forward_flops(self.cfg, B)

    def to_spec(self) -> dict:
        return {"label": self.label, "kind": self.kind, "cfg": self.cfg.to_dict()}

    @classmethod
    def from_spec(cls, spec: dict) -> "Subject":
        return cls(spec["label"], spec["kind"], get_model(spec["kind"]).Config.from_dict(spec["cfg"]))


def note_subjects() -> dict:
    seed = get_preset("brainlike", "seed")
    note = get_preset("transformer", "note")
    return {
        "brain128": Subject("brain-like sparse, T 128", "brainlike", seed),
        "recompute128": Subject("brain-like sparse --recompute, T 128", "brainlike",
                                dataclasses.replace(seed, recompute=True)),
        "dense128": Subject("brain-like dense, T 128", "brainlike",
                            dataclasses.replace(seed, path="dense")),
        "brain512": Subject("brain-like sparse, T 512", "brainlike",
                            dataclasses.replace(seed, context=512)),
        "tr128": Subject("Transformer, T 128", "transformer", note),
        "tr512": Subject("Transformer, T 512", "transformer",
                         dataclasses.replace(note, context=512)),
    }


# ---------------------------------------------------------------------------------
# measuring one training step
# ---------------------------------------------------------------------------------
def nbytes(arrays: dict) -> int:
    return sum(int(a.nbytes) for a in arrays.values())


class Lab:
    """Runs measurements on one backend and keeps every (batch, memory) point."""

    def __init__(self, backend):
        self.backend = backend
        self.points: dict[str, list] = {}     # label -> [(B, training bytes)]
        self._params: dict[str, dict] = {}

    def params(self, subject) -> dict:
        key = json.dumps(subject.cfg.to_dict(), sort_keys=True) + subject.kind
        if key not in self._params:
            self._params[key] = subject.module.init_params(subject.cfg, self.backend, seed=0)
        return self._params[key]

    def batch(self, cfg, B: int):
        """Random windows x ``[B, T]`` and next bytes y ``[B]`` on the backend."""
        x, y = random_batch(B, cfg.context, cfg.vocab_size)
        return self.backend.asarray(x), self.backend.asarray(y)

    def fixed_bytes(self, subject) -> int:
        """Parameters + AdamW moments: alive for the whole of training."""
        return 3 * nbytes(self.params(subject))

    def step_peak(self, subject, B: int) -> int:
        """Peak bytes of one forward + backward above the parameters (grads included)."""
        p, ops = self.params(subject), self.backend.ops
        x, y = self.batch(subject.cfg, B)
        peak = traced_peak(self.backend, lambda: subject.loss_and_grads(p, x, y, ops))
        self.points.setdefault(subject.label, []).append((B, self.fixed_bytes(subject) + peak))
        return peak

    def accumulated_peak(self, subject, B: int, n: int) -> int:
        """Peak bytes above the parameters of one step's gradients accumulated over ``n``
        micro-batches of B (``--grad-accum``): one micro-batch's forward + backward plus
        the accumulator."""
        p, ops = self.params(subject), self.backend.ops
        batches = [self.batch(subject.cfg, B) for _ in range(n)]   # ids: small beside activations
        return traced_peak(self.backend, lambda: accumulate(
            lambda x, y: subject.loss_and_grads(p, x, y, ops), iter(batches), n))

    def step(self, subject, B: int, repeats: int) -> dict:
        """Memory split and best step time at batch B (the traced run warms up)."""
        p, ops = self.params(subject), self.backend.ops
        peak = self.step_peak(subject, B)
        x, y = self.batch(subject.cfg, B)
        seconds = best_time(self.backend.synchronize,
                            lambda: subject.loss_and_grads(p, x, y, ops), repeats)
        return split(subject, B, nbytes(p), peak, seconds)

    def step_extrapolated(self, subject, B: int, small: tuple, repeats: int) -> dict:
        """The step at batch B from a straight line through the steps at ``small`` batches
        (memory and time grow linearly in B); marked ``extrapolated_from``."""
        a, b = (self.step(subject, s, repeats) for s in small)
        at = lambda key: a[key] + (b[key] - a[key]) * (B - a["batch"]) / (b["batch"] - a["batch"])  # noqa: E731
        out = split(subject, B, a["params_bytes"], round(at("peak_fb_bytes")), at("step_s"))
        out["extrapolated_from"] = list(small)
        return out

    def loop_step(self, subject, B: int, repeats: int) -> dict:
        """The note's "before": B calls at batch 1, gradients summed, then averaged."""
        p, ops = self.params(subject), self.backend.ops
        x, y = self.batch(subject.cfg, B)

        def one_by_one():
            total = None
            for i in range(B):
                _, grads = subject.loss_and_grads(p, x[i:i + 1, :], y[i:i + 1], ops)
                total = grads if total is None else {n: total[n] + g for n, g in grads.items()}
            return {n: g / B for n, g in total.items()}

        peak = traced_peak(self.backend, one_by_one)
        return {"batch": B, "peak_fb_bytes": peak,
                "step_s": best_time(self.backend.synchronize, one_by_one, repeats)}

    def update_transient(self, subject) -> int:
        """Peak bytes of one AdamW update above parameters + moments + gradients: the
        functional update builds new arrays before the old ones go."""
        p = self.params(subject)
        grads = {n: v * 0.0 + 1e-3 for n, v in p.items()}
        opt = AdamW()
        opt.update(p, grads, lr=1e-3)                       # moments exist from here on
        return traced_peak(self.backend, lambda: opt.update(p, grads, lr=1e-3))


def split(subject, B, params_bytes, peak_fb, seconds) -> dict:
    """One step's memory split (bytes) and throughput."""
    grads = params_bytes
    return {
        "subject": subject.label, "batch": B, "step_s": seconds,
        "params_bytes": params_bytes, "grads_bytes": grads, "adamw_bytes": 2 * params_bytes,
        "activation_bytes": peak_fb - grads, "peak_fb_bytes": peak_fb,
        "training_bytes": 3 * params_bytes + peak_fb,
        "sequences_per_s": B / seconds,
        "tokens_per_s": B * subject.targets_per_window / seconds,
        "train_flops": 3 * subject.forward_matmul_flops(B),
    }


# ---------------------------------------------------------------------------------
# the largest batch under a memory budget
# ---------------------------------------------------------------------------------
def max_batch(lab: Lab, subject, budget: int, tolerance: float) -> int:
    """Largest B whose parameters + AdamW state + forward/backward peak fit ``budget``:
    a bisection on measured peaks, bracketed from a line through the points so far."""
    fixed = lab.fixed_bytes(subject)

    def fits(B):
        total = fixed + lab.step_peak(subject, B)
        log(f"  {subject.label}, B {B}: {fmt_bytes(total)}")
        return total <= budget

    guess = max(1, int(linear_capacity(lab.points[subject.label], budget)))
    margin = max(1, guess // 20)
    if fits(guess):
        lo, hi = guess, guess + margin
        while fits(hi):
            lo, hi = hi, hi + 2 * (hi - lo)
    else:
        lo, hi = max(0, guess - margin), guess
        while lo > 0 and not fits(lo):
            lo, hi = max(0, lo - 2 * (hi - lo)), lo
    while hi - lo > max(1, tolerance * lo):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def linear_fit(points) -> tuple[float, float]:
    """(bytes per sample, bytes at B = 0) of training memory over measured points."""
    Bs, mem = zip(*points)
    if len(set(Bs)) < 2:
        return mem[0] / Bs[0], 0.0
    slope, intercept = np.polyfit(np.array(Bs, float), np.array(mem, float), 1)
    return float(slope), float(intercept)


def linear_capacity(points, budget: int) -> float:
    slope, intercept = linear_fit(points)
    return (budget - intercept) / slope


def matmul_rate(backend, n=2048, repeats=10) -> float:
    """float32 FLOP/s of an n x n x n matmul on this backend."""
    rng = backend.rng(0)
    a = backend.normal(rng, (n, n), 1.0, backend.dtype("float32"))
    a @ a
    return 2 * n ** 3 / best_time(backend.synchronize, lambda: a @ a, repeats)


