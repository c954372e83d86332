"""The trainer: ``python -m brainlike_np.train`` (see ``--help``).

With no arguments it trains the ``default`` preset on the default corpus (the running
Python's standard library sources) on the backend named by ``$BRAINLIKE_BACKEND``.
Output folder: ``ckpt.npz`` (see checkpoint.py) and ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
import traceback

from tqdm import tqdm

from .backends import BackendError, get_backend, host
from .checkpoint import CheckpointError
from .config import PRESET_BATCH_SIZE, ConfigError
from .data import DataError, load_corpus
from .backends.distributed import DistributedError, SingleProcess, connect
from .optim import cosine_lr
from .training import MODELS, TrainingDiverged, TrainState, model_kind

CHECKPOINT_NAME = "ckpt.npz"
METRICS_NAME = "metrics.jsonl"
EXIT_INTERRUPTED = 130

# training settings: CLI flag -> default (None: taken from the preset)
TRAIN_DEFAULTS = {
    "preset": "default", "model": "brainlike", "path": "sparse", "batch_size": None,
    "max_iters": 1200, "lr": 3e-3, "warmup": 100, "min_lr_ratio": 0.1,
    "weight_decay": 0.01, "grad_clip": 1.0, "eval_every": 200, "eval_batches": 16,
    "data": None, "seed": 0, "dtype": "float32",
}


def config_fields() -> dict:
    """Every model config field of every model kind: name -> type."""
    fields = {}
    for kind in MODELS.values():
        for f in dataclasses.fields(kind.config_cls):
            fields[f.name] = type(f.default)
    return fields


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m brainlike_np.train",
        description="Train the brain-like sparse language model on bytes. "
                    "Backend: $BRAINLIKE_BACKEND (numpy, cupy, array_api_strict).")
    p.add_argument("--model", choices=list(MODELS), help="model kind (default brainlike)")
    p.add_argument("--preset", help="named config: tiny, default, seed (default: default)")
    p.add_argument("--path", choices=["sparse", "dense"], help="brain-like execution path")
    p.add_argument("--max-iters", type=int, help="training steps (default 1200)")
    p.add_argument("--batch-size", type=int, help="windows per step (default: the preset's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    p.add_argument("--warmup", type=int, help="linear warmup steps (default 100)")
    p.add_argument("--min-lr-ratio", type=float, help="final lr / peak lr (default 0.1)")
    p.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay")
    p.add_argument("--grad-clip", type=float, help="global gradient norm limit (0: off)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default 200)")
    p.add_argument("--eval-batches", type=int, help="validation batches per evaluation")
    p.add_argument("--data", help="a text file to train on (default: Python stdlib sources)")
    p.add_argument("--out-dir", default="out", help="checkpoint and metrics folder (default out)")
    p.add_argument("--seed", type=int, help="seed for weights and data (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="parameter dtype")
    p.add_argument("--resume", nargs="?", const="", metavar="CKPT",
                   help=f"continue from CKPT (default: <out-dir>/{CHECKPOINT_NAME})")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of mpirun/srun (the 'distributed' extra); "
                        "--batch-size is the global batch")
    group = p.add_argument_group("model config (override the preset)")
    for name, typ in config_fields().items():
        group.add_argument("--" + name.replace("_", "-"), type=typ, dest="cfg_" + name,
                           metavar=name.upper())
    return p


def resolve_settings(args, saved: dict | None) -> dict:
    """Explicit flags win, then the resumed run's settings, then the defaults."""
    settings = dict(TRAIN_DEFAULTS)
    settings.update(saved or {})
    for name in TRAIN_DEFAULTS:
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    return settings


def config_overrides(args) -> dict:
    return {n: getattr(args, "cfg_" + n) for n in config_fields()
            if getattr(args, "cfg_" + n) is not None}


def build_config(settings: dict, overrides: dict):
    kind = model_kind(settings["model"])
    if settings["preset"] not in kind.presets:
        raise ConfigError(f"unknown preset '{settings['preset']}' for model "
                          f"'{settings['model']}'; choose one of: {', '.join(kind.presets)}")
    base = kind.presets[settings["preset"]]
    known = {f.name for f in dataclasses.fields(kind.config_cls)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"model '{settings['model']}' has no config field(s) "
                          f"{', '.join(sorted(unknown))}")
    return base.with_overrides(**overrides)


def check_resume_config(state: TrainState, overrides: dict, path: str) -> None:
    current = state.cfg.to_dict()
    for name, value in overrides.items():
        if current.get(name) != value:
            raise CheckpointError(
                f"checkpoint '{path}' was trained with {name}={current.get(name)}, not "
                f"{value}; drop --{name.replace('_', '-')} to resume it, or start a new "
                "run in another --out-dir")


class StopFlag:
    """Ctrl-C sets a flag the loop checks after each step; a second Ctrl-C aborts.

    ``distributed``: SIGTERM sets it too (on Ctrl-C, Open MPI's mpirun sends every rank
    SIGTERM, then SIGKILL; Slurm sends SIGINT, then SIGTERM), and a second signal does
    not abort: the launcher kills the ranks itself after its grace period."""

    def __init__(self, distributed=False):
        self.requested = False
        self.distributed = distributed
        self.signals = (signal.SIGINT, signal.SIGTERM) if distributed else (signal.SIGINT,)

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def _handle(self, signum, frame):
        if self.requested and not self.distributed:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def prepare(args, backend):
    """-> (state, settings, corpus, checkpoint path); raises the user-facing errors."""
    ckpt_path = os.path.join(args.out_dir, CHECKPOINT_NAME)
    overrides = config_overrides(args)
    if args.resume is not None:
        resume_path = args.resume or ckpt_path
        state = TrainState.load(resume_path, backend)
        check_resume_config(state, overrides, resume_path)
        settings = resolve_settings(args, state.extra_meta.get("train"))
        if settings["model"] != state.model_name:
            raise CheckpointError(f"checkpoint '{resume_path}' holds a '{state.model_name}' "
                                  f"model, not '{settings['model']}'")
    else:
        if os.path.exists(ckpt_path):
            raise CheckpointError(
                f"'{ckpt_path}' already exists; pass --resume to continue that run, or "
                "choose another --out-dir (nothing was overwritten)")
        settings = resolve_settings(args, None)
        cfg = build_config(settings, overrides)
        state = TrainState.create(settings["model"], cfg, backend, seed=settings["seed"],
                                  path=settings["path"], dtype=settings["dtype"],
                                  weight_decay=settings["weight_decay"],
                                  grad_clip=settings["grad_clip"])
    if settings["batch_size"] is None:
        settings["batch_size"] = PRESET_BATCH_SIZE.get(settings["preset"], 32)
    for name in ("batch_size", "max_iters", "eval_every", "eval_batches"):
        if settings[name] <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, "
                              f"got {settings[name]}")
    corpus = load_corpus(settings["data"])
    corpus.check_fits(state.cfg.context)
    state.extra_meta["train"] = settings
    return state, settings, corpus, ckpt_path


def join_ranks(state, settings, corpus, comm) -> None:
    """Give ``state`` the communicator, after checking that the ranks agree."""
    if settings["batch_size"] % comm.size:
        raise ConfigError(f"--batch-size {settings['batch_size']} must be divisible by the "
                          f"number of ranks ({comm.size}): each takes an equal slice")
    comm.check_same("state (step, settings, data, sampler)", json.dumps(
        [state.step, settings, corpus.train.shape[0], state.sampler.bit_generator.state]))
    state.comm = comm


def run(args, comm, backend) -> int:
    state, s, corpus, ckpt_path = prepare(args, backend)
    join_ranks(state, s, corpus, comm)
    root = comm.rank == 0      # rank 0 alone logs, evaluates and writes checkpoints
    baselines = host.count_model_losses(corpus.train, corpus.valid)
    eval_rng = backend.rng(s["seed"] + 10_000)
    eval_windows = [host.sample_windows(corpus.valid, s["batch_size"], state.cfg.context,
                                        eval_rng) for _ in range(s["eval_batches"])]
    os.makedirs(args.out_dir, exist_ok=True)
    metrics_file = open(os.path.join(args.out_dir, METRICS_NAME) if root else os.devnull, "a")
    tokens_per_step = s["batch_size"] * state.cfg.context
    if root:
        print(f"model {state.model_name} ({state.path}) {state.cfg}\n"
              f"backend {backend.name} (kernels: {backend.ops.name}), batch {s['batch_size']}"
              f"{f' over {comm.size} ranks' if comm.size > 1 else ''}, "
              f"steps {state.step}->{s['max_iters']}, corpus {corpus.name}: "
              f"{corpus.train.shape[0]:,} train / {corpus.valid.shape[0]:,} valid bytes\n"
              f"baselines (valid, nats/byte): unigram {baselines['unigram']:.3f}, "
              f"bigram {baselines['bigram']:.3f}", flush=True)

    def log(record):
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()

    def evaluate_and_save(reason):
        if not root:
            return None
        val = state.evaluate(eval_windows)
        record = {"step": state.step, "val_loss": val, "val_bits_per_byte": host.nats_to_bits(val),
                  **{f"{k}_baseline": v for k, v in baselines.items()}}
        log(record)
        state.save(ckpt_path, metrics=record)
        tqdm.write(f"step {state.step:5d} | val {val:.4f} nats ({host.nats_to_bits(val):.3f} "
                   f"bits/byte) | unigram {baselines['unigram']:.3f} | bigram "
                   f"{baselines['bigram']:.3f} | {reason}")
        return val

    backend.memory.reset_peak()
    started = time.perf_counter()
    bar = tqdm(total=s["max_iters"], initial=state.step, disable=None if root else True,
               mininterval=1.0, dynamic_ncols=True)
    val = None
    try:
        with StopFlag(distributed=comm.size > 1) as stop:
            while state.step < s["max_iters"]:
                lr = cosine_lr(state.step, s["lr"], s["warmup"], s["max_iters"], s["min_lr_ratio"])
                t0 = time.perf_counter()
                x, y = state.sample_batch(corpus.train, s["batch_size"])   # the global batch
                m = state.train_step(comm.local_part(x), comm.local_part(y), lr)
                backend.synchronize()
                dt = time.perf_counter() - t0
                peak = backend.memory.peak_bytes()
                log({"step": state.step, "loss": m["loss"], "lr": lr, "grad_norm": m["grad_norm"],
                     "tokens_per_s": tokens_per_step / dt, "peak_bytes": peak})
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tokens_per_step / dt:,.0f}",
                                peak_mb=f"{peak / 2**20:.0f}", refresh=False)
                if comm.any_rank(stop.requested):    # every rank stops at the same step
                    evaluate_and_save("interrupted: checkpoint saved")
                    if root:
                        print(f"interrupted at step {state.step}; resume with --resume "
                              f"--out-dir {args.out_dir}", file=sys.stderr)
                    return EXIT_INTERRUPTED
                if state.step % s["eval_every"] == 0 or state.step == s["max_iters"]:
                    val = evaluate_and_save("checkpoint saved")
        if val is None:   # resumed at or past max_iters: report the current model
            val = evaluate_and_save("checkpoint saved")
    finally:
        bar.close()
        metrics_file.close()
        backend.memory.stop()
    if not root:
        return 0
    wall = time.perf_counter() - started
    print(f"done: {state.step} steps in {wall:.1f} s, peak array memory "
          f"{backend.memory.peak_bytes() / 2**20:.1f} MiB; valid loss {val:.4f} nats/byte "
          f"({host.nats_to_bits(val):.3f} bits/byte) vs unigram {baselines['unigram']:.3f}, "
          f"bigram {baselines['bigram']:.3f}; checkpoint {ckpt_path}")
    return 0


USER_ERRORS = (BackendError, ConfigError, DataError, CheckpointError, TrainingDiverged,
               DistributedError)


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


def failure_message(exc: BaseException) -> str:
    """One line for the user; the traceback too when it is a bug, not a user error."""
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted outside a training step; the last checkpoint on disk is intact"
    traceback.print_exc()
    return f"{type(exc).__name__}: {exc}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.distributed:
        return run_distributed(args)
    try:
        return run(args, SingleProcess(), get_backend())
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted by a second Ctrl-C; the last checkpoint on disk is intact",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
