"""Training as a library: :class:`TrainSettings` (the training hyper-parameters) and
:class:`TrainState` (model, optimizer and data sampler): ``state.train_step(x, y, lr)``
is one AdamW step; ``save``/``load`` write and read checkpoints that resume bit-for-bit.
The command line around it is ``train.py``.

    from brainlike_np import TrainState, TrainSettings, get_backend, get_preset
    state = TrainState.create("brainlike", get_preset("brainlike", "tiny"),
                              get_backend("numpy"), TrainSettings(seed=0))
    x, y = state.sample_batch(corpus.train, batch_size=8)
    metrics = state.train_step(x, y, lr=1e-3)
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
from dataclasses import dataclass, field

from .backends.distributed import SingleProcess
from .backends import Backend, to_float
from .checkpoint import CheckpointError, CheckpointFile, save_checkpoint
from .config import ConfigDict, ConfigError, choose, flag
from .data import TOKEN_DTYPES, as_tokens, check_batch, sample_windows, tokens_problem
from .layers import cross_entropy_forward
from .models import get_model
from .optim import SCHEDULES, AdamW, continued_lr, scheduled_lr

DTYPES = ("float32", "float64")


def _setting(default, help_text):
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class TrainSettings(ConfigDict):
    """How a model is trained; saved in the checkpoint (``meta["train"]``). The fields in
    ``FIXED`` define the run and cannot change on resume; the others can."""

    batch_size: int = _setting(None, "windows per step (per micro-batch with --grad-accum), "
                                     "the global batch when distributed (default: the "
                                     "preset's)")
    grad_accum: int = _setting(1, "micro-batches of --batch-size windows per step, their "
                                  "gradients accumulated: the update of a batch this many "
                                  "times larger, at the memory of one micro-batch")
    max_iters: int = _setting(1200, "the step to train up to")
    lr: float = _setting(3e-3, "peak learning rate")
    warmup: int = _setting(100, "linear warmup steps")
    min_lr_ratio: float = _setting(0.1, "final lr / peak lr of the decay, in [0, 1]")
    weight_decay: float = _setting(0.01, "AdamW decoupled weight decay")
    grad_clip: float = _setting(1.0, "global gradient norm limit (0: off)")
    eval_every: int = _setting(200, "steps between evaluations and checkpoints")
    eval_batches: int = _setting(16, "validation batches per evaluation")
    data: str = _setting(None, "a text file, a folder or a glob pattern to train on, mapped, "
                               "not read (default: Python stdlib sources)")
    seed: int = _setting(0, "seed for the weights and the data order")
    dtype: str = _setting("float32", "parameter dtype: float32 or float64")
    sample_every: int = _setting(0, "print a short sample at every N-th evaluation (0: never)")
    save_every: int = _setting(None, "steps between checkpoints without an evaluation "
                                     "(default: at each evaluation only)")
    keep_last: int = _setting(0, "also keep the last N checkpoints as ckpt-STEP.npz (0: none)")
    log_every: int = _setting(20, "steps between progress lines when not on a terminal")
    token_dtype: str = _setting(None, "--data holds raw little-endian token ids of this type: "
                                      "uint16 or uint32 (default: bytes; a folder with "
                                      "nanoGPT's train.bin and val.bin: uint16, or its "
                                      "tokens.json's)")

    schedule: str = _setting("cosine", "learning-rate schedule after the warmup: cosine, "
                                       "linear, constant or wsd (warmup-stable-decay)")
    decay_fraction: float = _setting(0.2, "wsd: the last fraction of --max-iters that decays, "
                                          "in [0, 1]")

    FIXED = ("data", "seed", "dtype", "token_dtype")
    SCHEDULE = ("lr", "warmup", "max_iters", "min_lr_ratio", "schedule", "decay_fraction")

    def __post_init__(self):
        self.check_types()
        for name in ("batch_size", "max_iters", "eval_every", "eval_batches", "grad_accum",
                     "save_every", "log_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{flag(name)} must be positive, got {value}")
        for name in ("warmup", "seed", "sample_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{flag(name)} must be 0 or more, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise ConfigError(f"--{flag(name)} must be a finite number "
                                  f"{'above' if name == 'lr' else 'at least'} 0, got {value}")
        for name in ("min_lr_ratio", "decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{flag(name)} must be in [0, 1], got {getattr(self, name)}")
        choose(SCHEDULES, self.schedule, "--schedule")
        choose(DTYPES, self.dtype, "dtype")
        if self.token_dtype is not None:
            choose(TOKEN_DTYPES, self.token_dtype, "--token-dtype")


DEFAULT_BATCH_SIZE = 32     # for presets whose model names none


def default_batch_size(model_name: str, preset: str) -> int:
    """The batch size a preset trains at when none is given (the trainer's and the
    benches')."""
    return get_model(model_name).BATCH_SIZES.get(preset, DEFAULT_BATCH_SIZE)


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite."""


@dataclass
class TrainState:
    model_name: str
    cfg: object                      # the model's config dataclass
    settings: TrainSettings
    backend: object
    params: dict
    optimizer: AdamW
    sampler: object                  # numpy Generator drawing training windows
    step: int = 0
    metrics: dict = field(default_factory=dict)   # the last evaluation's record
    comm: object = field(default_factory=SingleProcess, repr=False)   # data-parallel ranks
    data_record: dict | None = None  # the corpus's identity (data.Corpus.record()); None: unknown
    run_id: str | None = None        # made when the run starts, in every metrics record;
                                     # None: a run started before run ids existed
    config_origin: dict | None = None   # {"preset": name, "overrides": {field: value}}: how
                                        # the trainer made cfg; None: unknown (the library)
    init_from: dict | None = None    # where a run started from another's parameters
                                     # (start_from); None: from its own initialisation
    lr_continuation: dict | None = None  # {"step", "lr"}: the schedule changed on resume at
                                         # that step, after that rate (see learning_rate)
    _steps: dict = field(default_factory=dict, repr=False)   # settings -> the step function

    @property
    def model(self):
        return get_model(self.model_name)

    @classmethod
    def create(cls, model_name: str, cfg, backend, settings: TrainSettings = TrainSettings()):
        """A new state: the model's parameters initialised from ``settings.seed`` on
        ``backend``; TypeError/ConfigError naming the argument that cannot work."""
        if not isinstance(model_name, str):
            raise TypeError(f"model_name must be a model's name (one of brainlike_np.MODELS), "
                            f"got {model_name!r}")
        _check_backend(backend, "TrainState.create")
        if not isinstance(settings, TrainSettings):
            raise TypeError(f"settings must be a TrainSettings, got {type(settings).__name__}")
        model = get_model(model_name)
        if not isinstance(cfg, model.Config):
            raise ConfigError(f"model '{model_name}' needs a {model.Config.__name__}, "
                              f"got {type(cfg).__name__}")
        params = model.init_params(cfg, backend, seed=settings.seed, dtype=settings.dtype)
        optimizer = AdamW(weight_decay=settings.weight_decay, no_decay=model.NO_DECAY)
        return cls(model_name, cfg, settings, backend, optimizer.adopt(params, backend.xp),
                   optimizer, backend.rng(settings.seed + 1), run_id=secrets.token_hex(8))

    @classmethod
    def start_from(cls, path: str, backend, settings: TrainSettings = TrainSettings(),
                   keep_optimizer: bool = False) -> "TrainState":
        """A new run (step 0, a new run id, its data order from ``settings.seed``) from the
        parameters of the checkpoint at ``path``: fresh AdamW moments, or with
        ``keep_optimizer`` the saved ones with their step count (their bias correction
        goes on). ``init_from`` records the checkpoint, its run and step."""
        if not isinstance(settings, TrainSettings):
            raise TypeError(f"settings must be a TrainSettings, got {type(settings).__name__}")
        source = cls.load(path, backend)
        if settings.dtype != source.settings.dtype:
            raise ConfigError(f"checkpoint '{path}' holds {source.settings.dtype} parameters, "
                              f"not {settings.dtype}; drop --dtype")
        optimizer = source.optimizer if keep_optimizer else AdamW(no_decay=source.model.NO_DECAY)
        optimizer.weight_decay = settings.weight_decay
        params = (source.params if keep_optimizer
                  else optimizer.adopt(source.params, backend.xp))
        origin = {"checkpoint": os.path.abspath(path), "run_id": source.run_id,
                  "step": source.step, "optimizer_step": optimizer.step}
        return cls(source.model_name, source.cfg, settings, backend, params, optimizer,
                   backend.rng(settings.seed + 1), run_id=secrets.token_hex(8),
                   config_origin=source.config_origin, init_from=origin)

    def change_settings(self, settings: TrainSettings) -> None:
        """Continue under new settings, in place: those in ``TrainSettings.FIXED`` must
        not change (ConfigError naming the flag); the others take effect from the next
        step. (Methods named ``with_...`` return a changed copy, as
        ``ConfigDict.with_overrides`` does; a state is changed in place, never copied,
        since a copy would share its parameter arrays, which AdamW updates in place.)"""
        for name in TrainSettings.FIXED:
            old, new = getattr(self.settings, name), getattr(settings, name)
            if old != new:
                raise ConfigError(f"this run was trained with --{flag(name)} {old}, not {new}; "
                                  f"drop --{flag(name)} to resume it, or start a new run in "
                                  "another --out-dir")
        if self.step and any(getattr(self.settings, name) != getattr(settings, name)
                             for name in TrainSettings.SCHEDULE):
            last = self.learning_rate(self.step - 1)        # the rate last used
            new = scheduled_lr(settings.schedule, self.step - 1, settings.lr, settings.warmup,
                               settings.max_iters, settings.min_lr_ratio,
                               settings.decay_fraction)
            # the new schedule takes over as it is where it gave that step the same rate
            self.lr_continuation = None if new == last else {"step": self.step, "lr": last}
        self.settings = settings
        self.optimizer.weight_decay = settings.weight_decay

    def learning_rate(self, step: int | None = None) -> float:
        """The rate of ``step`` (default: the next one) under the settings' schedule. After
        a change of the schedule's settings on resume (``change_settings``) that would make
        the rate jump (the new schedule gives the last step another rate than it had), the
        rate moves linearly from the last one used to the new schedule's over ``--warmup``
        steps (0: at once), then follows the new schedule."""
        s, step = self.settings, self.step if step is None else step
        rate = scheduled_lr(s.schedule, step, s.lr, s.warmup, s.max_iters, s.min_lr_ratio,
                            s.decay_fraction)
        if self.lr_continuation is None:
            return rate
        c = self.lr_continuation
        return continued_lr(rate, step, c["step"], c["lr"], s.warmup)

    # ---- steps ------------------------------------------------------------------------
    def sample_batch(self, tokens, batch_size):
        """Host windows x ``[B, T]`` and next bytes y ``[B]`` from the sampler stream.
        ``tokens``: bytes, a 1-D integer array of tokens in the vocabulary, or a corpus
        split (``corpus.train``), longer than the context; TypeError/ValueError else."""
        tokens = as_tokens(tokens, self.cfg.context, self.cfg.vocab_size)
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return sample_windows(tokens, int(batch_size), self.cfg.context, self.sampler)

    def train_step(self, x, y, lr: float) -> dict:
        """One AdamW step on host batch (x, y) (this rank's slice of the global batch when
        data-parallel); parameters and moments are left untouched if the loss or the
        gradients are not finite.

        Nothing is read from the device until the update is issued (a GPU runs the step
        without waiting; the clipping and the finiteness guard are device-side), then
        the loss and the gradient norm are read together, once. The step is one function
        of arrays (:meth:`_step_function`) that the backend may compile (jax)."""
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"the learning rate must be finite and at least 0, got {lr}")
        self.check_windows(x, y)
        if len(x) % self.settings.grad_accum:
            raise ValueError(f"a batch of {len(x)} windows cannot be split into "
                             f"--grad-accum {self.settings.grad_accum} equal micro-batches")
        xb, yb = self.backend.asarray_ids(x), self.backend.asarray_ids(y)
        optimizer, order = self.optimizer, list(self.params)
        rates = optimizer.upload_rates(optimizer.next_rates(lr), self.params)  # counts the step
        try:
            params, moments, stats = self._step_function()(
                self.params, optimizer.moments(self.params), xb, yb, rates)
        except BaseException:
            optimizer.undo_count()                       # no step was taken
            raise
        if params is not self.params:                    # new arrays (jax): in the model's order
            self.params = {name: params[name] for name in order}
        optimizer.set_moments(moments)
        loss, norm = self.backend.to_numpy(stats).tolist()   # the step's one host read
        if not (math.isfinite(loss) and math.isfinite(norm)):
            optimizer.undo_count()                       # the update changed nothing
            raise TrainingDiverged(
                f"the loss became {loss} (gradient norm {norm}) at step {self.step + 1}; "
                "lower --lr or raise --warmup, and resume from the last checkpoint")
        self.step += 1
        return {"loss": loss, "grad_norm": norm}

    def _step_function(self):
        """The training step as a function of arrays, (parameters, moments, x, y, rates)
        -> (parameters, moments, ``[loss, norm]``): the model's loss and hand-written
        gradients, averaged over the data-parallel ranks, then clipping and AdamW
        (``AdamW.clip_and_step``), compiled by the backend (``Backend.compile_step``:
        jax, one XLA program with the parameters and moments donated; elsewhere the
        function itself, which updates numpy's flat buffers in place).

        In one process the whole step is one function. Across ranks, or with
        ``--grad-accum`` n > 1, it is two: the gradients, of each of the n micro-batches in
        turn (``accumulate``), averaged on the host across ranks, and the update. Made
        once per setting that shapes it: the clipping norm, whether weights decay, the
        ranks, the micro-batches."""
        key = (self.settings.grad_clip, self.optimizer.weight_decay != 0, self.comm.size,
               self.settings.grad_accum)
        if key not in self._steps:
            self._steps.clear()
            self._steps[key] = self._make_step_function(self.settings.grad_clip)
        return self._steps[key]

    def _make_step_function(self, max_norm: float):
        model, cfg, ops, optimizer = self.model, self.cfg, self.backend.ops, self.optimizer.rule()

        def gradients(params, x, y):                     # -> (loss, grads)
            return model.loss_and_grads(params, x, y, cfg, ops)

        def update(params, moments, loss, grads, rates):
            return optimizer.clip_and_step(params, moments, grads, loss, rates, max_norm)

        compile_step = self.backend.compile_step
        key = ("train step", self.model_name, cfg, ops.name, max_norm, optimizer.weight_decay != 0,
               optimizer.no_decay)                       # what the functions compute
        n = self.settings.grad_accum
        if self.comm.size == 1 and n == 1:               # the mean over one rank: itself
            return compile_step(lambda params, moments, x, y, rates:
                                update(params, moments, *gradients(params, x, y), rates),
                                donate_argnums=(0, 1), key=key)
        compiled_gradients = compile_step(gradients, key=key + ("gradients",))
        compiled_update = compile_step(update, donate_argnums=(0, 1), key=key + ("update",))

        def step(params, moments, x, y, rates):
            size = x.shape[0] // n                       # x [n * b, T]: n micro-batches
            micro_batches = ((x[i * size:(i + 1) * size, :], y[i * size:(i + 1) * size])
                             for i in range(n))
            loss, grads = accumulate(lambda xb, yb: compiled_gradients(params, xb, yb),
                                     micro_batches, n)
            loss, grads = self.comm.average(loss, grads)
            return compiled_update(params, moments, loss, grads, rates)
        return step

    def evaluate(self, windows) -> float:
        """Mean loss over a fixed, non-empty list of host batches."""
        if not windows:
            raise ValueError("evaluate needs at least one batch (x, y)")
        model, cfg, ops = self.model, self.cfg, self.backend.ops

        def loss(params, x, y):      # model.loss before its host read, as both models define it
            return cross_entropy_forward(model.next_logits(params, x, cfg, ops), y)[0]
        loss = self.backend.compile_step(loss, key=("evaluation loss", self.model_name, cfg,
                                                    ops.name))     # jax: one program
        total = 0.0
        for x, y in windows:
            self.check_windows(x, y)
            total += to_float(loss(self.params, self.backend.asarray_ids(x),
                                   self.backend.asarray_ids(y)))
        return total / len(windows)

    def check_windows(self, x, y) -> None:
        """ValueError unless host x ``[B, context]`` and y ``[B]`` are a batch of full
        training windows of tokens in the vocabulary."""
        check_batch(x, y, self.cfg.vocab_size)
        if len(x[0]) != self.cfg.context:
            raise ValueError(f"windows must be the model's context ({self.cfg.context} "
                             f"tokens), got {len(x[0])}")

    def next_logits(self, x):
        """Host logits ``[B, V]`` of the byte after each window in host x ``[B, T']``."""
        model, cfg, ops = self.model, self.cfg, self.backend.ops
        logits_of = self.backend.compile_step(                   # jax: one program per shape
            lambda params, x: model.next_logits(params, x, cfg, ops),
            key=("next logits", self.model_name, cfg, ops.name))
        return self.backend.to_numpy(logits_of(self.params, self.backend.asarray_ids(x)))

    # ---- checkpoints ----------------------------------------------------------------
    def save(self, path: str) -> None:
        save_checkpoint(path, self.params, self.optimizer, {
            "model": self.model_name, "config": self.cfg.to_dict(), "step": self.step,
            "rng": self.sampler.bit_generator.state, "train": self.settings.to_dict(),
            "metrics": self.metrics, "data": self.data_record, "run_id": self.run_id,
            "config_origin": self.config_origin, "init_from": self.init_from,
            "lr_continuation": self.lr_continuation,
        }, self.backend)

    @classmethod
    def load(cls, path: str, backend) -> "TrainState":
        """The state saved at ``path``, on ``backend`` (``get_backend()``); its arrays are
        read only after their names, shapes, dtypes and sizes match the saved config."""
        _check_backend(backend, "TrainState.load")
        with CheckpointFile(path) as checkpoint:
            meta = checkpoint.meta
            try:
                model = get_model(meta["model"])
                cfg = model.Config.from_dict(meta["config"])
                settings = TrainSettings.from_dict(meta["train"])
                sampler = _restored_rng(backend.rng(0), meta["rng"])
                step = meta["step"]
                optimizer = AdamW.from_state(meta["optimizer"], no_decay=model.NO_DECAY)
                _check_optimizer(optimizer)
                run_id = meta.get("run_id")
                if not isinstance(run_id, (str, type(None))):
                    raise ValueError(f"run_id {run_id!r}")
                metrics = dict(meta.get("metrics") or {})
                _check_metrics(metrics)
                data_record = meta.get("data")
                if not isinstance(data_record, (dict, type(None))):
                    raise ValueError(f"data record {data_record!r}")
                if data_record and not isinstance(data_record.get("source"), (str, type(None))):
                    raise ValueError(f"data source {data_record['source']!r}")
                if data_record and tokens_problem(data_record.get("tokens")):
                    raise ValueError(tokens_problem(data_record.get("tokens")))
                config_origin = meta.get("config_origin")
                _check_config_origin(config_origin, cfg)
                init_from = meta.get("init_from")
                kept_steps = _check_init_from(init_from)     # counted by a kept optimizer
                lr_continuation = meta.get("lr_continuation")
                _check_lr_continuation(lr_continuation, meta["step"])
                if not isinstance(step, int) or step < 0 or optimizer.step != step + kept_steps:
                    raise ValueError(f"step {step!r} (optimizer step {optimizer.step})")
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise CheckpointError(f"checkpoint '{path}' has incomplete or invalid metadata "
                                      f"({type(exc).__name__}: {exc}); point --resume at "
                                      "another file or start a new run") from None
            shapes = model.param_shapes(cfg)
            groups = ("params", "adam_m", "adam_v") if step else ("params",)   # moments
            arrays = checkpoint.read_arrays(                    # exist after the first step
                {f"{group}/{name}": shape for group in groups for name, shape in shapes.items()},
                settings.dtype)
        dt = backend.dtype(settings.dtype)
        on_backend = {group: {n: backend.asarray(a, dt) for n, a in named.items()}
                      for group, named in arrays.items()}
        optimizer.m, optimizer.v = on_backend["adam_m"], on_backend["adam_v"]
        params = optimizer.adopt(on_backend["params"], backend.xp)
        return cls(meta["model"], cfg, settings, backend, params, optimizer, sampler,
                   step=step, metrics=metrics, data_record=data_record, run_id=run_id,
                   config_origin=config_origin, init_from=init_from,
                   lr_continuation=lr_continuation)


def accumulate(loss_and_grads, micro_batches, n: int) -> tuple:
    """The mean loss and gradients of ``loss_and_grads(x, y)`` over ``n`` equal
    micro-batches (an iterable of device (x, y), consumed in turn), so that one
    micro-batch's activations are alive at a time, plus one gradient accumulator. The mean
    of equal micro-batches' means is the mean over their union: the large batch's."""
    for i, (x, y) in enumerate(micro_batches):
        part_loss, part = loss_and_grads(x, y)
        if i == 0:
            loss, grads = part_loss, part
            continue
        loss = loss + part_loss
        for name, g in part.items():
            grads[name] += g
        del part, part_loss                     # this micro-batch's arrays go here
    if n == 1:                                  # (no extra launch for the usual step)
        return loss, grads
    return loss / n, {name: g / n for name, g in grads.items()}

def _check_backend(backend, where: str) -> None:
    if not isinstance(backend, Backend):
        raise TypeError(f"{where} needs a backend (brainlike_np.get_backend(name)), got "
                        f"{backend!r}")


def _restored_rng(sampler, state):
    """``sampler`` set to the saved bit-generator ``state``; ValueError unless NumPy
    takes it as it is (a crafted integer out of range, a wrong type or generator)."""
    try:
        sampler.bit_generator.state = state
    except (OverflowError, TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"rng state: {exc}") from None
    if sampler.bit_generator.state != state:
        raise ValueError(f"rng state {state!r:.80} is not one NumPy gives back")
    return sampler


def _check_init_from(origin) -> int:
    """-> the optimizer steps counted before the run began; ValueError unless ``origin``
    is None or what ``start_from`` records."""
    if origin is None:
        return 0
    if not (isinstance(origin, dict) and isinstance(origin.get("checkpoint"), str)
            and all(isinstance(origin.get(k), int) and not isinstance(origin.get(k), bool)
                    and origin[k] >= 0 for k in ("step", "optimizer_step"))
            and isinstance(origin.get("run_id"), (str, type(None)))):
        raise ValueError(f"init_from {origin!r:.80}")
    return origin["optimizer_step"]


def _check_config_origin(origin, cfg) -> None:
    """ValueError unless ``origin`` is None or {"preset": str, "overrides": {field:
    value}} whose every override is ``cfg``'s value of that field."""
    if origin is None:
        return
    if not (isinstance(origin, dict) and set(origin) == {"preset", "overrides"}
            and isinstance(origin["preset"], str) and isinstance(origin["overrides"], dict)):
        raise ValueError(f"config_origin {origin!r:.80}")
    saved = cfg.to_dict()
    for name, value in origin["overrides"].items():
        if name not in saved or saved[name] != value:
            raise ValueError(f"config_origin override {name}={value!r:.40} is not the "
                             "config's")


def _check_lr_continuation(continuation, step) -> None:
    """ValueError unless ``continuation`` is None or {"step": an int in [1, step], "lr": a
    finite number >= 0}."""
    if continuation is None:
        return
    ok = (isinstance(continuation, dict) and set(continuation) == {"step", "lr"}
          and isinstance(continuation["step"], int) and not isinstance(continuation["step"], bool)
          and isinstance(step, int) and 1 <= continuation["step"] <= step
          and isinstance(continuation["lr"], (int, float))
          and not isinstance(continuation["lr"], bool)
          and math.isfinite(continuation["lr"]) and continuation["lr"] >= 0)
    if not ok:
        raise ValueError(f"lr_continuation {continuation!r:.60}")


def _check_metrics(record: dict) -> None:
    """ValueError unless ``record`` (the last evaluation's) is empty or a step (an int
    of 0 or more) with numbers or nulls."""
    def is_number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    for key, value in record.items():
        if not (value is None or is_number(value)):
            raise ValueError(f"metrics {key} {value!r}")
    step = record.get("step", 0)
    if not (is_number(step) and isinstance(step, int) and step >= 0):
        raise ValueError(f"metrics step {step!r}")


def _check_optimizer(optimizer: AdamW) -> None:
    """ValueError unless the saved AdamW hyper-parameters can work."""
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(optimizer, name) < 1.0:
            raise ValueError(f"optimizer {name} must be in [0, 1), got {getattr(optimizer, name)}")
    if not optimizer.eps > 0.0:
        raise ValueError(f"optimizer eps must be above 0, got {optimizer.eps}")
    if optimizer.weight_decay < 0.0:
        raise ValueError(f"optimizer weight_decay must be 0 or more, got {optimizer.weight_decay}")
