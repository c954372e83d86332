"""The trainer's command line: ``python -m brainlike_np.train`` (see ``--help``).

With no arguments it trains the ``default`` preset of the brain-like model on the
default corpus (the running Python's standard library sources) on the backend named by
``$BRAINLIKE_BACKEND``. Output folder: ``ckpt.npz`` (see checkpoint.py) and
``metrics.jsonl`` (see outdir.py). The command line is parsed in ``train_cli.py``, the
training itself is the library in ``train_state.py``.
"""

from __future__ import annotations

from .cli import exit_quietly_on_ctrl_c

if __name__ == "__main__":    # a Ctrl-C while the libraries below load: one line, exit 130
    exit_quietly_on_ctrl_c()

import hashlib  # noqa: E402  (the imports below take a while; the guard comes first)
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

from tqdm import tqdm  # noqa: E402

from .backends import (BackendError, get_backend, host_free_memory_bytes,  # noqa: E402
                       quiet_float_warnings)
from .backends.distributed import DistributedError, SingleProcess, connect  # noqa: E402
from .checkpoint import CheckpointError  # noqa: E402
from .cli import (EXIT_INTERRUPTED, describe_os_error, forgiving_streams,  # noqa: E402
                  startup_over)
from .config import ConfigError, flag  # noqa: E402
from .data import (DataError, baseline_note, check_same_data,  # noqa: E402
                   count_model_losses, nats_to_bits, open_corpus, rank_parts, sample_windows)
from .generate import generate, generate_tokens  # noqa: E402
from .models import get_model, get_preset  # noqa: E402
from .outdir import OutDir, OutDirError  # noqa: E402
from .output import OutputPathError  # noqa: E402
from .progress import Progress, warm_up  # noqa: E402
from .stop import EXIT_TERMINATED, StopFlag  # noqa: E402,F401  (EXIT_TERMINATED: for callers)
from .train_cli import TrainRequest, parse_request  # noqa: E402
from .train_state import (TrainingDiverged, TrainSettings, TrainState,  # noqa: E402
                          default_batch_size)

SAMPLE_PROMPT_BYTES = 24    # --sample-every: the prompt is the validation split's first bytes
SAMPLE_BYTES = 80           # ... and this many new bytes follow it


# ---------------------------------------------------------------------------------
# set-up: everything is checked before any training time is spent
# ---------------------------------------------------------------------------------
@dataclass
class Run:
    """A run ready to train: its state, corpus and output folder."""
    state: TrainState
    corpus: object
    out: OutDir


def configured(model_name: str, preset: str, overrides: dict):
    """The preset's config with the fields given on the command line replaced."""
    cfg = get_preset(model_name, preset)
    unknown = set(overrides) - set(cfg.to_dict())
    if unknown:
        raise ConfigError(f"model '{model_name}' has no config field(s) "
                          f"{', '.join(sorted(unknown))}")
    return cfg.with_overrides(**overrides)


def new_state(request: TrainRequest, backend, corpus) -> TrainState:
    model_name = "brainlike" if request.model is None else request.model
    preset = "default" if request.preset is None else request.preset
    from_data = {} if corpus.tokens is None else {"vocab_size": corpus.vocab_size}
    overrides = {**from_data, **request.config}     # the command line's win
    cfg = configured(model_name, preset, overrides)
    settings = TrainSettings(**request.settings)
    if corpus.tokens:           # resolved (nanoGPT's folder: uint16 or its sidecar's)
        settings = replace(settings, token_dtype=corpus.tokens["dtype"])
    if settings.batch_size is None:
        settings = replace(settings, batch_size=default_batch_size(model_name, preset))
    corpus.check_fits(cfg.context, cfg.vocab_size)
    check_memory(cfg, model_name, settings, backend)
    state = TrainState.create(model_name, cfg, backend, settings)
    state.config_origin = {"preset": preset, "overrides": overrides}
    return state


def resumed_state(request: TrainRequest, backend) -> TrainState:
    """The checkpoint's state; the flags that define the run may be given again, but
    only with the values it was trained with (``--preset``: its fields' values, with the
    overrides the run was started with, when the checkpoint records them)."""
    path = request.resume
    state = TrainState.load(path, backend)
    check_model_flags(request, state, path)
    flags = {name: value for name, value in request.settings.items() if name != "data"}
    settings = replace(state.settings, **flags)                 # data: by its record
    if settings.batch_size is None:     # saved through the library (TrainState.save)
        preset = request.preset or preset_of(state.model_name, state.cfg)
        settings = replace(settings, batch_size=default_batch_size(state.model_name, preset))
    state.change_settings(settings)
    return state


def started_state(request: TrainRequest, backend, corpus) -> TrainState:
    """--init-from CKPT: a new run from the checkpoint's parameters (its model: the model
    flags may only repeat its values) on this run's data and settings."""
    settings = TrainSettings(**request.settings)
    state = TrainState.start_from(request.init_from, backend, settings, request.keep_optimizer)
    check_model_flags(request, state, request.init_from, "start from it")
    if settings.batch_size is None:
        preset = request.preset or preset_of(state.model_name, state.cfg)
        state.settings = replace(settings, batch_size=default_batch_size(state.model_name, preset))
    corpus.check_fits(state.cfg.context, state.cfg.vocab_size)
    check_memory(state.cfg, state.model_name, state.settings, backend)
    return state


def check_model_flags(request: TrainRequest, state: TrainState, path: str,
                      to: str = "resume it") -> None:
    """CheckpointError unless --model, --preset and the config flags given repeat the
    checkpoint's values (``--preset``: its fields', with the overrides its run was started
    with, when the checkpoint records them)."""
    if request.model is not None and request.model != state.model_name:
        raise CheckpointError(f"checkpoint '{path}' holds a '{state.model_name}' model, not "
                              f"'{request.model}'; drop --model to {to}")
    started_with = (state.config_origin or {}).get("overrides", {})
    expected = (configured(state.model_name, request.preset,
                           {**started_with, **request.config}).to_dict()
                if request.preset is not None else request.config)
    saved = state.cfg.to_dict()
    for name, value in expected.items():
        if saved.get(name) != value:
            given = (f"--preset {request.preset}" if name not in request.config
                     else f"--{flag(name)}")
            raise CheckpointError(
                f"checkpoint '{path}' was trained with {name}={saved.get(name)}, not {value} "
                f"({given}); drop {given} to {to}, or start a new run in another "
                "--out-dir")


def preset_of(model_name: str, cfg) -> str:
    """The name of the model's preset whose config is ``cfg``; 'default' if none is."""
    presets = get_model(model_name).PRESETS
    return next((name for name, preset in presets.items() if preset == cfg), "default")


def check_memory(cfg, model_name: str, settings: TrainSettings, backend) -> None:
    """ConfigError, before anything is allocated, when the run cannot fit: the model's
    parameters, gradients, AdamW moments and update temporaries (5 copies) and its
    activations on the backend's device; the evaluation windows on the host."""
    model = get_model(model_name)
    itemsize = {"float32": 4, "float64": 8}[settings.dtype]
    n_params = sum(math.prod(shape) for shape in model.param_shapes(cfg).values())
    params = 5 * n_params * itemsize
    activations = model.activation_bytes(cfg, settings.batch_size, itemsize)
    free = backend.free_memory_bytes()
    if free is not None and params + activations > free:
        raise ConfigError(
            f"this run needs about {_gib(params + activations)} on the {backend.name} "
            f"backend's device (parameters, gradients and AdamW {_gib(params)}, activations "
            f"at batch {settings.batch_size} {_gib(activations)}) but {_gib(free)} are free; "
            "lower --batch-size or the model's size (--preset, --n-neurons, ...)")
    windows = settings.eval_batches * settings.batch_size * (cfg.context + 1) * 8
    host_free = host_free_memory_bytes()
    if host_free is not None and windows > host_free // 2:
        raise ConfigError(
            f"{settings.eval_batches} evaluation batches of {settings.batch_size} windows take "
            f"about {_gib(windows)} of host memory, {_gib(host_free)} are free; lower "
            "--eval-batches")


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes < 2**60 else f"{n_bytes:.2e} bytes"


def prepare(request: TrainRequest, backend, out: OutDir) -> Run:
    if request.resume is not None:
        state = resumed_state(request, backend)
        out.check_resume(request.resume, state.step, state.metrics, state.run_id)
        check_memory(state.cfg, state.model_name, state.settings, backend)
        saved = state.data_record      # the files the run was trained on, resolved
        data = request.settings.get("data")
        if data is not None:
            corpus = open_corpus(data, token_dtype=state.settings.token_dtype)
        else:       # the run's own files: a missing one is to be restored, not replaced
            corpus = open_corpus(saved.get("source") if saved else state.settings.data,
                                 missing="restore it, or start a new run in another --out-dir",
                                 token_dtype=state.settings.token_dtype)
        corpus.check_outside(out.path)
        note = check_same_data(saved, corpus.record())
        if note:
            print(note, file=sys.stderr)
        corpus.check_fits(state.cfg.context, state.cfg.vocab_size)
    else:
        out.check_new_run()
        corpus = open_corpus(request.settings.get("data"),
                             token_dtype=request.settings.get("token_dtype"))
        corpus.check_outside(out.path)
        state = (started_state(request, backend, corpus) if request.init_from
                 else new_state(request, backend, corpus))
    state.data_record = corpus.record()
    return Run(state, corpus, out)


def join_ranks(run: Run, comm) -> None:
    """Give the state the communicator, after checking that the ranks agree on all that
    defines the run: DistributedError on every rank, naming what differs, if not."""
    s = run.state.settings
    if s.batch_size % comm.size:
        raise ConfigError(f"--batch-size {s.batch_size} must be divisible by the number of "
                          f"ranks ({comm.size}): each takes an equal slice")
    if comm.size > 1:
        mine = {what: json.dumps(value, sort_keys=True)
                for what, value in run_identity(run).items()}
        everyone = comm.allgather(mine)
        differ = [what for what in mine if any(f[what] != everyone[0][what] for f in everyone)]
        if differ:
            ranks = [rank for rank, facts in enumerate(everyone) if facts != everyone[0]]
            raise DistributedError(
                f"rank(s) {ranks} differ from rank 0 in: {', '.join(differ)}; start every "
                "rank with the same flags, and let them read the same --data and checkpoint "
                "(a filesystem all nodes share)")
    run.state.comm = comm


def run_identity(run: Run) -> dict:
    """What every rank must hold the same of before the first step."""
    state = run.state
    return {"model": state.model_name, "model config": state.cfg.to_dict(),
            "training settings": state.settings.to_dict(),
            "step and data order": [state.step, state.sampler.bit_generator.state],
            "training data": run.corpus.digest(), "parameters": checksum(state)}


def checksum(state: TrainState) -> str:
    """SHA-256 of the parameters and AdamW moments, read to the host one at a time."""
    digest = hashlib.sha256()
    for group in (state.params, state.optimizer.m, state.optimizer.v):
        for name in sorted(group):
            digest.update(name.encode())
            digest.update(state.backend.to_numpy(group[name]).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------
# rank 0's duties: evaluation, logs, checkpoints
# ---------------------------------------------------------------------------------
class Reporter:
    """Evaluates, logs and saves on rank 0; does nothing on the other ranks."""

    def __init__(self, run: Run, root: bool, request: TrainRequest, callbacks=()):
        self.run, self.root = run, root
        s, state = run.state.settings, run.state
        self.baselines = count_model_losses(run.corpus.train, run.corpus.valid,
                                            vocab_size=state.cfg.vocab_size) if root else {}
        self.evaluations = 0
        eval_rng = state.backend.rng(s.seed + 10_000)
        self.eval_windows = [sample_windows(run.corpus.valid, s.batch_size, state.cfg.context,
                                            eval_rng) for _ in range(s.eval_batches)] if root else []
        self.metrics = run.out.open_metrics(upto_step=state.step, last_eval=state.metrics,
                                            run_id=state.run_id) if root else None
        self.progress = Progress(s.max_iters, state.step, s.log_every, request.log_csv,
                                 request.tensorboard, callbacks,
                                 run.out.read_metrics() if request.log_csv else ()
                                 ) if root else None
        self.best_val = run.out.best_val_loss(state.run_id) if root else math.inf
        if root and state.init_from and state.step == 0:   # the first record: where it began
            self.metrics.write({"step": 0, "init_from": state.init_from})

    def start_clock(self) -> None:
        """Seconds of training from now, continued from the checkpoint's last evaluation."""
        self.clock = time.perf_counter() - (self.run.state.metrics.get("time_s") or 0.0)

    def banner(self, comm) -> None:
        if not self.root:
            return
        state, s, corpus = self.run.state, self.run.state.settings, self.run.corpus
        print(f"model {state.model_name} {state.cfg}\n"
              f"backend {state.backend.name} (kernels: {state.backend.ops.name}), batch "
              f"{s.batch_size}{f' x {s.grad_accum} micro-batches' if s.grad_accum > 1 else ''}"
              f"{f' over {comm.size} ranks' if comm.size > 1 else ''}, steps "
              f"{state.step}->{s.max_iters}, corpus {corpus.name}: {corpus.train.shape[0]:,} "
              f"train / {corpus.valid.shape[0]:,} valid {corpus.unit}s\n"
              f"baselines (valid, nats/{corpus.unit}"
              f"{baseline_note(corpus.train, corpus.valid)}): "
              f"unigram {self.baselines['unigram']:.3f}, "
              f"bigram {self.baselines['bigram']:.3f}", flush=True)

    def log(self, record: dict) -> None:
        """A step's or an evaluation's record: to metrics.jsonl, then shown and tracked."""
        if self.root:
            record = {**record, "time_s": record.get("time_s",
                                                     time.perf_counter() - self.clock)}
            self.metrics.write(record)
            self.progress.record(record)

    def evaluate_and_save(self, reason: str):
        """Evaluate, then save the checkpoint, then log the evaluation: the metrics file
        never holds an evaluation whose checkpoint was not written."""
        if not self.root:
            return None
        state = self.run.state
        val = state.evaluate(self.eval_windows)
        if not math.isfinite(val):    # finite parameters can still be a diverged state
            raise TrainingDiverged(
                f"the validation loss became {val} at step {state.step}; not saving it over "
                "the last checkpoint: lower --lr or raise --warmup, and resume from it")
        state.metrics = {"step": state.step, "val_loss": val, "val_bits_per_byte": nats_to_bits(val),
                         **{f"{k}_baseline": v for k, v in self.baselines.items()},
                         "time_s": time.perf_counter() - self.clock}
        self.save(best=val < self.best_val)
        self.best_val = min(val, self.best_val)
        self.log(state.metrics)
        tqdm.write(f"step {state.step:5d} | val {val:.4f} nats ({nats_to_bits(val):.3f} "
                   f"bits/{self.run.corpus.unit})"
                   f" | unigram {self.baselines['unigram']:.3f} | bigram "
                   f"{self.baselines['bigram']:.3f} | {reason}")
        self.evaluations += 1
        if state.settings.sample_every and self.evaluations % state.settings.sample_every == 0:
            self.print_sample()
        return val

    def save(self, best: bool = False) -> None:
        """ckpt.npz, best.npz when ``best``, ckpt-STEP.npz with --keep-last (rank 0)."""
        if self.root:
            self.run.out.save(self.run.state, best, self.run.state.settings.keep_last)

    def print_sample(self) -> None:
        """A short continuation of the validation split's first bytes (a fixed prompt)."""
        state, corpus = self.run.state, self.run.corpus
        if corpus.tokens:       # ids: the trainer decodes none
            prompt = corpus.valid.first(SAMPLE_PROMPT_BYTES)
            ids = generate_tokens(state, prompt, SAMPLE_BYTES, seed=state.settings.seed)
            tqdm.write(f"sample at step {state.step} (token ids): {prompt} + {ids}")
            return
        prompt = corpus.valid.head(SAMPLE_PROMPT_BYTES)
        text = generate(state, prompt, SAMPLE_BYTES, seed=state.settings.seed)
        tqdm.write(f"sample at step {state.step}: "
                   f"{(prompt + text).decode('utf-8', errors='replace')!r}")

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.progress.close()


# ---------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------
def train_loop(run: Run, reporter: Reporter, comm, stop: StopFlag):
    """Train up to max_iters; -> (exit code, last validation loss or None)."""
    state, s = run.state, run.state.settings
    backend = state.backend
    tokens_per_step = s.batch_size * s.grad_accum * state.cfg.context
    val = None
    while state.step < s.max_iters:
        lr = state.learning_rate()
        t0 = time.perf_counter()
        # the global batch: --grad-accum micro-batches of --batch-size
        x, y = state.sample_batch(run.corpus.train, s.batch_size * s.grad_accum)
        # returns once the step is done on the device: it reads its loss to the host
        m = state.train_step(rank_parts(x, s.grad_accum, comm.local_part),
                             rank_parts(y, s.grad_accum, comm.local_part), lr)
        dt = time.perf_counter() - t0
        reporter.log({"step": state.step, "loss": m["loss"], "lr": lr,
                      "grad_norm": m["grad_norm"], "ms_per_step": dt * 1e3,
                      "tokens_per_s": tokens_per_step / dt,
                      "peak_bytes": backend.memory.peak_bytes()})
        stopping = comm.any_rank(stop.requested)    # every rank stops at the same step
        if stopping or state.step % s.eval_every == 0 or state.step == s.max_iters:
            val = reporter.evaluate_and_save("interrupted: checkpoint saved" if stopping
                                             else "checkpoint saved")
            # a signal during that evaluation: its checkpoint is the one to stop at
            stopping = stopping or (state.step < s.max_iters
                                    and comm.any_rank(stop.requested))
        elif s.save_every and state.step % s.save_every == 0:
            reporter.save()
        if stopping:
            if reporter.root:
                print(f"interrupted at step {state.step}; resume with --resume "
                      f"--out-dir {run.out.path}", file=sys.stderr)
            return stop.exit_code, None
    if val is None:   # resumed at or past max_iters: its evaluation, not a second one
        if reporter.root:
            print(f"note: this run already reached step {state.step} (--max-iters "
                  f"{s.max_iters}); raise --max-iters to train on", file=sys.stderr)
        val = (state.metrics["val_loss"] if state.metrics.get("step") == state.step
               else reporter.evaluate_and_save("checkpoint saved"))
    return 0, val


def train(request: TrainRequest, comm, backend, callbacks=()) -> int:
    """The whole command on this rank: prepare, train, report; -> the exit code.
    ``callbacks``: callables given each record of metrics.jsonl (rank 0), for a tracker."""
    root = comm.rank == 0      # rank 0 alone logs, evaluates and writes checkpoints
    with OutDir(request.out_dir, writer=root) as out:
        run = prepare(request, backend, out)
        join_ranks(run, comm)
        reporter = Reporter(run, root, request, callbacks)
        warm_up(run.state, run.state.settings.batch_size // comm.size, announce=root)
        reporter.banner(comm)               # its last line: training starts
        reporter.start_clock()
        backend.memory.reset_peak()
        started = time.perf_counter()
        try:
            with StopFlag(distributed=comm.size > 1) as stop:
                code, val = train_loop(run, reporter, comm, stop)
            peak = backend.memory.peak_bytes()
        finally:
            reporter.close()
            backend.memory.stop()
    if root and code == 0:
        b, unit = reporter.baselines, run.corpus.unit
        print(f"done: {run.state.step} steps in {time.perf_counter() - started:.1f} s, "
              f"{backend.memory.describe_peak(peak)}; valid loss "
              f"{val:.4f} nats/{unit} ({nats_to_bits(val):.3f} bits/{unit}) vs unigram "
              f"{b['unigram']:.3f}, bigram {b['bigram']:.3f}; checkpoint {out.checkpoint}")
    return code


# ---------------------------------------------------------------------------------
# errors: one line for the user, the whole job ended on any rank's failure
# ---------------------------------------------------------------------------------
USER_ERRORS = (BackendError, ConfigError, DataError, CheckpointError, TrainingDiverged,
               DistributedError, OutDirError, OutputPathError)


def failure_message(exc: BaseException) -> str:
    """One line for the user; the traceback too when it is a bug, not a user error."""
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{describe_os_error(exc)}; the last checkpoint on disk is intact"
    if isinstance(exc, MemoryError):
        return ("out of memory: lower --batch-size, --eval-batches or the model's size; "
                "the last checkpoint on disk is intact")
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted outside a training step; the last checkpoint on disk is intact"
    traceback.print_exc()
    return f"{type(exc).__name__}: {exc}"


def train_distributed(request: TrainRequest) -> int:
    """One rank of an mpirun/srun job. An error on any rank ends the whole job (MPI
    Abort) instead of leaving the other ranks waiting forever in the next all-reduce; the
    last checkpoint on disk stays intact (written atomically by rank 0)."""
    try:
        comm, backend = connect()
    except (DistributedError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return train(request, comm, backend)
    except (Exception, KeyboardInterrupt) as exc:
        print(f"error: rank {comm.rank}: {failure_message(exc)}", file=sys.stderr, flush=True)
        comm.abort(1)


def main(argv=None, callbacks=()) -> int:
    """The command; ``callbacks``: see :func:`train`."""
    startup_over()
    with forgiving_streams(), quiet_float_warnings():
        try:
            request = parse_request(argv)
            if request.distributed:
                return train_distributed(request)
            return train(request, SingleProcess(), get_backend(), callbacks)
        except KeyboardInterrupt:
            # a second Ctrl-C in training, or the first one before training began
            print("error: interrupted; the last checkpoint on disk is intact", file=sys.stderr)
            return EXIT_INTERRUPTED
        except (Exception, MemoryError) as exc:
            print(f"error: {failure_message(exc)}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
