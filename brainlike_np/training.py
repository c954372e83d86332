"""Training as a library: a :class:`TrainState` holds the model, optimizer and data
sampler; ``state.train_step(x, y, lr)`` is one AdamW step; ``save``/``load`` write and
read checkpoints that resume bit-for-bit.

    from brainlike_np import TrainState, get_backend, preset
    state = TrainState.create("brainlike", preset("tiny"), get_backend("numpy"), seed=0)
    x, y = state.sample_batch(corpus.train, batch_size=8)
    metrics = state.train_step(x, y, lr=1e-3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

from . import model as brainlike_model
from . import transformer
from .backends import host
from .checkpoint import CheckpointError, check_shapes, load_checkpoint, save_checkpoint
from .config import PRESETS, ModelConfig
from .backends.distributed import SingleProcess
from .optim import AdamW, clip_by_global_norm

MODELS = {
    "brainlike": SimpleNamespace(module=brainlike_model, config_cls=ModelConfig, presets=PRESETS),
    "transformer": SimpleNamespace(module=transformer, config_cls=transformer.TransformerConfig,
                                   presets=transformer.PRESETS),
}


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite."""


def model_kind(name: str) -> SimpleNamespace:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}") from None


@dataclass
class TrainState:
    model_name: str
    cfg: object                      # the model's config dataclass
    backend: object
    params: dict
    optimizer: AdamW
    sampler: object                  # numpy Generator drawing training windows
    step: int = 0
    path: str = "sparse"             # brain-like execution path
    grad_clip: float = 1.0
    dtype: str = "float32"
    extra_meta: dict = field(default_factory=dict)
    comm: object = field(default_factory=SingleProcess, repr=False)   # data-parallel ranks

    @property
    def module(self):
        return model_kind(self.model_name).module

    def _model_kwargs(self) -> dict:
        return {"path": self.path} if self.model_name == "brainlike" else {}

    @classmethod
    def create(cls, model_name, cfg, backend, seed=0, *, path="sparse", dtype="float32",
               weight_decay=0.01, grad_clip=1.0) -> "TrainState":
        kind = model_kind(model_name)
        params = kind.module.init_params(cfg, backend, seed=seed, dtype=dtype)
        optimizer = AdamW(weight_decay=weight_decay, no_decay=kind.module.NO_DECAY)
        return cls(model_name, cfg, backend, params, optimizer, backend.rng(seed + 1),
                   path=path, grad_clip=grad_clip, dtype=dtype)

    # ---- steps ------------------------------------------------------------------------
    def sample_batch(self, tokens, batch_size):
        """Host windows x ``[B, T]`` and next bytes y ``[B]`` from the sampler stream."""
        return host.sample_windows(tokens, batch_size, self.cfg.context, self.sampler)

    def train_step(self, x, y, lr: float) -> dict:
        """One AdamW step on host batch (x, y) (this rank's slice of the global batch when
        data-parallel); parameters are left untouched if the loss or the gradients are not
        finite."""
        xb, yb = self.backend.asarray(x), self.backend.asarray(y)
        loss, grads = self.module.loss_and_grads(self.params, xb, yb, self.cfg,
                                                 self.backend.ops, **self._model_kwargs())
        loss, grads = self.comm.average(loss, grads)     # the global batch's, on every rank
        grads, norm = clip_by_global_norm(grads, self.grad_clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise TrainingDiverged(
                f"the loss became {loss} (gradient norm {norm}) at step {self.step + 1}; "
                "lower --lr or raise --warmup, and resume from the last checkpoint")
        self.params = self.optimizer.update(self.params, grads, lr)
        self.step += 1
        return {"loss": loss, "grad_norm": norm}

    def evaluate(self, windows) -> float:
        """Mean loss over a fixed list of host batches."""
        total = 0.0
        for x, y in windows:
            total += self.module.loss(self.params, self.backend.asarray(x),
                                      self.backend.asarray(y), self.cfg, self.backend.ops,
                                      **self._model_kwargs())
        return total / len(windows)

    def next_logits(self, x):
        """Host logits ``[B, V]`` of the byte after each window in host x ``[B, T']``."""
        logits = self.module.next_logits(self.params, self.backend.asarray(x), self.cfg,
                                         self.backend.ops, **self._model_kwargs())
        return self.backend.to_numpy(logits)

    # ---- checkpoints ----------------------------------------------------------------
    def save(self, path: str, **meta) -> None:
        save_checkpoint(path, self.params, self.optimizer, {
            "model": self.model_name, "config": self.cfg.to_dict(), "step": self.step,
            "path": self.path, "dtype": self.dtype, "grad_clip": self.grad_clip,
            "rng": self.sampler.bit_generator.state, **self.extra_meta, **meta,
        }, self.backend)

    @classmethod
    def load(cls, path: str, backend) -> "TrainState":
        params, m, v, meta = load_checkpoint(path)
        try:
            kind = model_kind(meta["model"])
            cfg = kind.config_cls.from_dict(meta["config"])
            dtype = meta["dtype"]
            sampler = backend.rng(0)
            sampler.bit_generator.state = meta["rng"]
            opt_meta = meta["optimizer"]
            step, path_name, grad_clip = int(meta["step"]), meta["path"], float(meta["grad_clip"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint '{path}' has incomplete or invalid metadata "
                                  f"({type(exc).__name__}: {exc})") from None
        check_shapes(path, params, kind.module.param_shapes(cfg))
        dt = backend.dtype(dtype)
        optimizer = AdamW(beta1=opt_meta["beta1"], beta2=opt_meta["beta2"], eps=opt_meta["eps"],
                          weight_decay=opt_meta["weight_decay"], no_decay=kind.module.NO_DECAY,
                          step=int(opt_meta["step"]),
                          m={n: backend.asarray(a, dt) for n, a in m.items()},
                          v={n: backend.asarray(a, dt) for n, a in v.items()})
        state = cls(meta["model"], cfg, backend, {n: backend.asarray(a, dt) for n, a in params.items()},
                    optimizer, sampler, step=step, path=path_name, grad_clip=grad_clip, dtype=dtype)
        state.extra_meta = {k: meta[k] for k in ("train", "metrics") if k in meta}
        return state
