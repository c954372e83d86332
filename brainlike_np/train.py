"""The trainer's command line: ``python -m brainlike_np.train`` (see ``--help``).

With no arguments it trains the ``default`` preset of the brain-like model on the
default corpus (the running Python's standard library sources) on the backend named by
``$BRAINLIKE_BACKEND``. Output folder: ``ckpt.npz`` (see checkpoint.py) and
``metrics.jsonl``. The training itself is the library in ``train_state.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import time
import traceback
from dataclasses import dataclass

from tqdm import tqdm

from .backends import BackendError, get_backend, host_free_memory_bytes, quiet_float_warnings
from .backends.distributed import DistributedError, SingleProcess, connect
from .checkpoint import CheckpointError
from .cli import OneLineParser
from .config import ConfigError
from .data import (DataError, baseline_note, check_same_data, count_model_losses, nats_to_bits,
                   open_corpus, sample_windows)
from .generate import generate
from .models import MODELS, get_model, get_preset
from .optim import cosine_lr
from .outdir import OutDir, OutDirError
from .train_state import TrainingDiverged, TrainSettings, TrainState

EXIT_INTERRUPTED = 130      # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143       # SIGTERM (Slurm, Kubernetes, kill)
DEFAULT_BATCH_SIZE = 32     # for presets that name none
SAMPLE_PROMPT_BYTES = 24    # --sample-every: the prompt is the validation split's first bytes
SAMPLE_BYTES = 80           # ... and this many new bytes follow it


# ---------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m brainlike_np.train",
        description="Train a byte-level language model (the brain-like sparse model by "
                    "default). Backend: $BRAINLIKE_BACKEND (numpy, cupy, array_api_strict).")
    p.add_argument("--model", help=f"model: {', '.join(MODELS)} (default brainlike)")
    p.add_argument("--preset", help="named model config, e.g. tiny, default, seed "
                                    "(default: default)")
    p.add_argument("--out-dir", default="out", help="checkpoint and metrics folder (default out)")
    p.add_argument("--resume", nargs="?", const="", metavar="CKPT",
                   help="continue from CKPT (default: <out-dir>/ckpt.npz); the settings "
                        "given again replace the saved ones, except --data, --seed, --dtype "
                        "and the model's")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of mpirun/srun (the 'distributed' extra); "
                        "--batch-size is the global batch")
    group = p.add_argument_group("training settings")
    for f in dataclasses.fields(TrainSettings):
        default = "" if f.default is None else f" (default {f.default})"
        group.add_argument(f"--{_flag(f.name)}", type=_parse_number(f.type), dest=f"train_{f.name}",
                           metavar=f.name.upper(), help=f.metadata["help"] + default)
    added = set()
    for name, model in MODELS.items():
        group = p.add_argument_group(f"{name} model config (overrides the preset)")
        for f in dataclasses.fields(model.Config):
            if f.name in added:
                continue
            added.add(f.name)
            default = getattr(model.PRESETS["default"], f.name)
            kind = (dict(action=argparse.BooleanOptionalAction) if f.type == "bool" else
                    dict(type=_parse_number(f.type), metavar=f.name.upper()))
            group.add_argument(f"--{_flag(f.name)}", dest=f"cfg_{f.name}", **kind,
                               help=f"default: the preset's ({default} in 'default')")
    return p


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _parse_number(type_name: str):
    """argparse type for a config field: ints and floats parsed, floats must be finite."""
    def parse_float(text):
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value
    return {"int": int, "float": parse_float}.get(type_name, str)


def given(args, prefix: str) -> dict:
    """The flags the user gave, with ``prefix`` removed from their names."""
    return {k[len(prefix):]: v for k, v in vars(args).items()
            if k.startswith(prefix) and v is not None}


# ---------------------------------------------------------------------------------
# set-up: everything is checked before any training time is spent
# ---------------------------------------------------------------------------------
@dataclass
class Run:
    state: TrainState
    corpus: object
    out: OutDir
    batch_size: int


def new_state(args, backend, corpus) -> TrainState:
    model_name = args.model or "brainlike"
    cfg = get_preset(model_name, args.preset or "default")
    config_flags = given(args, "cfg_")
    unknown = set(config_flags) - {f.name for f in dataclasses.fields(cfg)}
    if unknown:
        raise ConfigError(f"model '{model_name}' has no config field(s) "
                          f"{', '.join(sorted(unknown))}")
    cfg = cfg.with_overrides(**config_flags)
    settings = TrainSettings(**given(args, "train_"))
    if settings.batch_size is None:
        batch = get_model(model_name).BATCH_SIZES.get(args.preset or "default", DEFAULT_BATCH_SIZE)
        settings = dataclasses.replace(settings, batch_size=batch)
    corpus.check_fits(cfg.context, cfg.vocab_size)
    check_memory(cfg, model_name, settings, backend)
    return TrainState.create(model_name, cfg, backend, settings)


def resumed_state(args, backend, path: str) -> TrainState:
    state = TrainState.load(path, backend)
    if args.model and args.model != state.model_name:
        raise CheckpointError(f"checkpoint '{path}' holds a '{state.model_name}' model, not "
                              f"'{args.model}'; drop --model to resume it")
    if args.preset:
        raise ConfigError("--preset cannot change on --resume (the checkpoint holds the "
                          "model's config); drop it, or start a new run in another --out-dir")
    saved = state.cfg.to_dict()
    for name, value in given(args, "cfg_").items():
        if saved.get(name) != value:
            raise CheckpointError(
                f"checkpoint '{path}' was trained with {name}={saved.get(name)}, not {value}; "
                f"drop --{_flag(name)} to resume it, or start a new run in another --out-dir")
    flags = {name: value for name, value in given(args, "train_").items() if name != "data"}
    state.with_settings(dataclasses.replace(state.settings, **flags))   # data: by its record
    return state


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


def prepare(args, backend, out: OutDir) -> Run:
    if args.resume is not None:
        state = resumed_state(args, backend, args.resume or out.checkpoint)
        check_memory(state.cfg, state.model_name, state.settings, backend)
        saved = state.data_record      # the files the run was trained on, resolved
        data = args.train_data if args.train_data is not None else \
            saved.get("source") if saved else state.settings.data
        corpus = open_corpus(data)
        corpus.check_outside(out.path)
        note = check_same_data(saved, corpus.record())
        if note:
            print(note, file=sys.stderr)
        corpus.check_fits(state.cfg.context, state.cfg.vocab_size)
    else:
        out.check_fresh()
        corpus = open_corpus(args.train_data)
        corpus.check_outside(out.path)
        state = new_state(args, backend, corpus)
    state.data_record = corpus.record()
    return Run(state, corpus, out, state.settings.batch_size)


def join_ranks(run: Run, comm) -> None:
    """Give the state the communicator, after checking that the ranks agree."""
    s = run.state.settings
    if s.batch_size % comm.size:
        raise ConfigError(f"--batch-size {s.batch_size} must be divisible by the number of "
                          f"ranks ({comm.size}): each takes an equal slice")
    comm.check_same("state (step, settings, data, sampler)", json.dumps(
        [run.state.step, s.to_dict(), run.corpus.train.shape[0],
         run.state.sampler.bit_generator.state]))
    run.state.comm = comm


# ---------------------------------------------------------------------------------
# rank 0's duties: evaluation, logs, checkpoints
# ---------------------------------------------------------------------------------
class Reporter:
    """Evaluates, logs and saves on rank 0; does nothing on the other ranks."""

    def __init__(self, run: Run, root: bool):
        self.run, self.root = run, root
        s, state = run.state.settings, run.state
        self.baselines = count_model_losses(run.corpus.train, run.corpus.valid) if root else {}
        self.evaluations = 0
        eval_rng = state.backend.rng(s.seed + 10_000)
        self.eval_windows = [sample_windows(run.corpus.valid, s.batch_size, state.cfg.context,
                                            eval_rng) for _ in range(s.eval_batches)] if root else []
        self.metrics = run.out.open_metrics(upto_step=state.step,
                                            last_eval=state.metrics) if root else None
        # seconds of training, continued from the checkpoint's last evaluation
        self.clock = time.perf_counter() - (state.metrics.get("time_s") or 0.0)

    def banner(self, comm) -> None:
        if not self.root:
            return
        state, s, corpus = self.run.state, self.run.state.settings, self.run.corpus
        print(f"model {state.model_name} {state.cfg}\n"
              f"backend {state.backend.name} (kernels: {state.backend.ops.name}), batch "
              f"{s.batch_size}{f' over {comm.size} ranks' if comm.size > 1 else ''}, steps "
              f"{state.step}->{s.max_iters}, corpus {corpus.name}: {corpus.train.shape[0]:,} "
              f"train / {corpus.valid.shape[0]:,} valid bytes\n"
              f"baselines (valid, nats/byte{baseline_note(corpus.train, corpus.valid)}): "
              f"unigram {self.baselines['unigram']:.3f}, "
              f"bigram {self.baselines['bigram']:.3f}", flush=True)

    def log_step(self, record: dict) -> None:
        if self.root:
            self.metrics.write({**record, "time_s": time.perf_counter() - self.clock})

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
        state.save(self.run.out.checkpoint)
        self.metrics.write(state.metrics)
        tqdm.write(f"step {state.step:5d} | val {val:.4f} nats ({nats_to_bits(val):.3f} bits/byte)"
                   f" | unigram {self.baselines['unigram']:.3f} | bigram "
                   f"{self.baselines['bigram']:.3f} | {reason}")
        self.evaluations += 1
        if state.settings.sample_every and self.evaluations % state.settings.sample_every == 0:
            self.print_sample()
        return val

    def print_sample(self) -> None:
        """A short continuation of the validation split's first bytes (a fixed prompt)."""
        state = self.run.state
        prompt = self.run.corpus.valid.head(SAMPLE_PROMPT_BYTES)
        text = generate(state, prompt, SAMPLE_BYTES, seed=state.settings.seed)
        tqdm.write(f"sample at step {state.step}: "
                   f"{(prompt + text).decode('utf-8', errors='replace')!r}")

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


# ---------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------
class StopFlag:
    """Ctrl-C (SIGINT) and SIGTERM set a flag the loop checks after each step: it saves
    and exits 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C aborts at once, keeping the
    last checkpoint on disk.

    ``distributed``: a second signal does not abort (on Ctrl-C, Open MPI's mpirun sends
    every rank SIGTERM, then SIGKILL; Slurm sends SIGINT, then SIGTERM): the launcher
    kills the ranks itself after its grace period."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, distributed=False):
        self.signum = None
        self.distributed = distributed

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested and not self.distributed:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def train_loop(run: Run, reporter: Reporter, comm, stop: StopFlag):
    """Train up to max_iters; -> (exit code, last validation loss or None)."""
    state, s = run.state, run.state.settings
    backend = state.backend
    tokens_per_step = s.batch_size * state.cfg.context
    bar = tqdm(total=s.max_iters, initial=state.step, disable=None if reporter.root else True,
               mininterval=1.0, dynamic_ncols=True)
    val = None
    try:
        while state.step < s.max_iters:
            lr = cosine_lr(state.step, s.lr, s.warmup, s.max_iters, s.min_lr_ratio)
            t0 = time.perf_counter()
            x, y = state.sample_batch(run.corpus.train, s.batch_size)   # the global batch
            m = state.train_step(comm.local_part(x), comm.local_part(y), lr)
            backend.synchronize()
            dt = time.perf_counter() - t0
            peak = backend.memory.peak_bytes()
            reporter.log_step({"step": state.step, "loss": m["loss"], "lr": lr,
                               "grad_norm": m["grad_norm"], "tokens_per_s": tokens_per_step / dt,
                               "peak_bytes": peak})
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tokens_per_step / dt:,.0f}",
                            peak_mb=f"{peak / 2**20:.0f}", refresh=False)
            if comm.any_rank(stop.requested):    # every rank stops at the same step
                reporter.evaluate_and_save("interrupted: checkpoint saved")
                if reporter.root:
                    print(f"interrupted at step {state.step}; resume with --resume "
                          f"--out-dir {run.out.path}", file=sys.stderr)
                return stop.exit_code, None
            if state.step % s.eval_every == 0 or state.step == s.max_iters:
                val = reporter.evaluate_and_save("checkpoint saved")
    finally:
        bar.close()
    if val is None:   # resumed at or past max_iters: report the current model
        val = reporter.evaluate_and_save("checkpoint saved")
    return 0, val


def run(args, comm, backend) -> int:
    root = comm.rank == 0      # rank 0 alone logs, evaluates and writes checkpoints
    with OutDir(args.out_dir, writer=root) as out:
        job = prepare(args, backend, out)
        join_ranks(job, comm)
        reporter = Reporter(job, root)
        reporter.banner(comm)
        backend.memory.reset_peak()
        started = time.perf_counter()
        try:
            with StopFlag(distributed=comm.size > 1) as stop:
                code, val = train_loop(job, reporter, comm, stop)
            peak = backend.memory.peak_bytes()
        finally:
            reporter.close()
            backend.memory.stop()
    if root and code == 0:
        b = reporter.baselines
        print(f"done: {job.state.step} steps in {time.perf_counter() - started:.1f} s, peak "
              f"array memory {peak / 2**20:.1f} MiB; valid loss "
              f"{val:.4f} nats/byte ({nats_to_bits(val):.3f} bits/byte) vs unigram "
              f"{b['unigram']:.3f}, bigram {b['bigram']:.3f}; checkpoint {out.checkpoint}")
    return code


# ---------------------------------------------------------------------------------
# errors: one line for the user, the whole job ended on any rank's failure
# ---------------------------------------------------------------------------------
USER_ERRORS = (BackendError, ConfigError, DataError, CheckpointError, TrainingDiverged,
               DistributedError, OutDirError)


def failure_message(exc: BaseException) -> str:
    """One line for the user; the traceback too when it is a bug, not a user error."""
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" '{exc.filename}'" if exc.filename else ""
        return (f"{exc.strerror or exc}{where}: check that the path exists, is writable "
                "and its disk has space; the last checkpoint on disk is intact")
    if isinstance(exc, MemoryError):
        return ("out of memory: lower --batch-size, --eval-batches or the model's size; "
                "the last checkpoint on disk is intact")
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted outside a training step; the last checkpoint on disk is intact"
    traceback.print_exc()
    return f"{type(exc).__name__}: {exc}"


def run_distributed(args) -> int:
    """One rank of an mpirun/srun job. An error on any rank ends the whole job (MPI
    Abort) instead of leaving the other ranks waiting forever in the next all-reduce; the
    last checkpoint on disk stays intact (written atomically by rank 0)."""
    try:
        comm, backend = connect()
    except (DistributedError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return run(args, comm, backend)
    except (Exception, KeyboardInterrupt) as exc:
        print(f"error: rank {comm.rank}: {failure_message(exc)}", file=sys.stderr, flush=True)
        comm.abort(1)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with quiet_float_warnings():
        return _main(args)


def _main(args) -> int:
    if args.distributed:
        return run_distributed(args)
    try:
        return run(args, SingleProcess(), get_backend())
    except KeyboardInterrupt:
        # a second Ctrl-C in training, or the first one before training began
        print("error: interrupted; the last checkpoint on disk is intact", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (Exception, MemoryError) as exc:
        print(f"error: {failure_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
