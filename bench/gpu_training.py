"""The GPU check's training stages: the command-line tools end to end, and the first
training steps on the device against the same steps on the CPU. Each is
``stage(ctx, st)`` (see gpu_report.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from brainlike_np.backends import get_backend
from brainlike_np.data import random_batch
from brainlike_np.models import brainlike as model
from brainlike_np.train_state import TrainSettings, TrainState
from gpu_report import Context, Stage, errors

LOSS_RTOL = 1e-3        # float32 losses, device vs CPU: the summation orders differ
TIE_RTOL = 1e-3         # a top-k choice that differs must be a near-tie on the CPU
COMPARE_LR = 1e-3


# ---- end to end: the command-line tools ------------------------------------------------
def stage_end_to_end(ctx: Context, st: Stage) -> None:
    """Training, --resume and generation as a person runs them (subprocesses, each
    bounded by the deadline); the checkpoint read back; memory figures."""
    s = ctx.sizes
    run_dir = ctx.out / "train"
    shutil.rmtree(run_dir, ignore_errors=True)
    done = ctx.run_module(["brainlike_np.train", "--preset", s.train_preset, "--seed", "0",
                           "--max-iters", s.train_steps, "--out-dir", run_dir], limit=300)
    losses = logged(run_dir, "loss")
    st.check(f"{s.train_steps} training steps", done.returncode == 0 and
             len(losses) == s.train_steps and np.all(np.isfinite(losses)), errors(done))
    done = ctx.run_module(["brainlike_np.train", "--resume", "--max-iters", s.train_steps + 10,
                           "--out-dir", run_dir], limit=120)
    st.check("--resume for 10 more steps", done.returncode == 0 and
             len(logged(run_dir, "loss")) == s.train_steps + 10, errors(done))
    done = ctx.run_module(["brainlike_np.generate", "--checkpoint", run_dir / "ckpt.npz",
                           "--max-new-bytes", "40"], limit=120)
    st.check("generate 40 bytes", done.returncode == 0 and len(done.stdout) >= 40,
             errors(done) or f"{len(done.stdout)} characters")
    check_checkpoint(run_dir / "ckpt.npz", st)
    peaks = logged(run_dir, "peak_bytes")
    st.figures["peak_bytes min/max"] = [int(peaks.min()), int(peaks.max())] if peaks.size else []
    st.check("memory figures never negative", peaks.size and peaks.min() >= 0)
    check_two_trackers(ctx, st)


def logged(run_dir: Path, key: str) -> np.ndarray:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return np.array([])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return np.array([r[key] for r in records if key in r], dtype=np.float64)


def check_checkpoint(path: Path, st: Stage) -> None:
    """Readable with NumPy alone, with the config's exact shapes (0-d included), and loadable."""
    if not path.exists():
        st.check("a checkpoint was written", False, path)
        return
    with np.load(path) as archive:
        meta = json.loads(archive["meta.json"].tobytes())
        shapes = {k.split("/", 1)[1]: archive[k].shape for k in archive.files
                  if k.startswith("params/")}
    expected = model.param_shapes(model.Config.from_dict(meta["config"]))
    wrong = {n: s for n, s in shapes.items() if s != tuple(expected.get(n, ("missing",)))}
    st.check("checkpoint read with NumPy alone has the config's shapes",
             not wrong and len(shapes) == len(expected), wrong or "")
    state = TrainState.load(str(path), get_backend("numpy"))
    st.check("the resumed run's checkpoint loads", state.step == meta["step"])


def check_two_trackers(ctx: Context, st: Stage) -> None:
    """Two backends' memory trackers in one process (two runs in one process)."""
    first, second = get_backend(ctx.backend), get_backend(ctx.backend)
    first.memory.reset_peak()
    second.memory.reset_peak()
    x = first.zeros((1024, 256), first.dtype("float32"))            # 1 MiB
    first.synchronize()
    ok = first.memory.peak_bytes() >= 2**20 and second.memory.current_bytes() >= 0
    del x
    first.memory.stop()
    second.memory.stop()
    st.check("two backends' reset_peak() in one process", ok)


# ---- agreement: the device's training steps against the CPU's ---------------------------
def stage_agreement(ctx: Context, st: Stage) -> None:
    """The first training steps on the device against the same steps on the CPU (the
    numpy backend; in the dry run, numpy with the reference ops). See compare_training."""
    device = get_backend(ctx.backend)
    host = get_backend("numpy", kernels="auto" if ctx.gpu else "reference")
    s = ctx.sizes
    compare_training(device, host, model.PRESETS[s.train_preset], s.compare_steps,
                     s.compare_batch, st, between=ctx.deadline.check)


def compare_training(device, host, cfg, steps: int, batch_size: int, st: Stage,
                     between=lambda: None) -> None:
    """Train the same model from the same seed on the same batches on both backends and
    check that each step's loss agrees to LOSS_RTOL.

    Why not bit for bit, and why the CPU follows the device's top-k: the device sums in
    another order (float atomics in the scatter-adds, other reductions), so the last bits
    differ, and where two neurons' scores nearly tie at the top-k boundary those bits can
    put a different neuron in the active set. One swapped neuron changes the loss by far
    more than rounding does, and the runs would drift apart for a reason that is no
    fault. So the CPU run takes the device's top-k choice at every step (ReplayTopk),
    which leaves only rounding between the losses; and so that this cannot hide a wrong
    top-k on the device, every choice that differs from the CPU's own must be a near-tie:
    each neuron the device chose scores, on the CPU, within TIE_RTOL (of the largest
    score) of the CPU's k-th largest."""
    choices = []
    device.ops = RecordTopk(device.ops, device.to_numpy, choices)
    host.ops = replay = ReplayTopk(host.ops, choices)
    settings = TrainSettings(seed=0, batch_size=batch_size)
    states = [TrainState.create("brainlike", cfg, backend, settings) for backend in (device, host)]
    losses = np.zeros((2, steps))
    for step in range(steps):
        between()
        x, y = random_batch(batch_size, cfg.context, cfg.vocab_size, seed=step)
        for run, state in enumerate(states):           # the device first: it records top-k
            losses[run, step] = state.train_step(x, y, lr=COMPARE_LR)["loss"]
    worst = float(np.max(np.abs(losses[0] / losses[1] - 1)))
    st.figures[f"first {steps} losses, max relative difference"] = worst
    st.figures["top-k rows where the device chose otherwise than the CPU"] = replay.rows_differing
    st.check(f"first {steps} losses agree with the CPU's ({host.ops.name}) to {LOSS_RTOL:g}, "
             "on the device's top-k choices", worst <= LOSS_RTOL, f"{worst:.1e}")
    st.check(f"every top-k choice of the device is a near-tie on the CPU ({TIE_RTOL:g})",
             replay.worst_shortfall <= TIE_RTOL, f"{replay.worst_shortfall:.1e}")


class RecordTopk:
    """Another backend's ops that keep each top-k choice on the host, in call order."""

    def __init__(self, ops, to_numpy, choices: list):
        self.ops, self.to_numpy, self.choices = ops, to_numpy, choices
        self.name = ops.name

    def __getattr__(self, name):                      # every other op unchanged
        return getattr(self.ops, name)

    def topk(self, z, k):
        idx = self.ops.topk(z, k)                                        # [B, k]
        self.choices.append(self.to_numpy(idx))
        return idx


class ReplayTopk:
    """NumPy ops that take their top-k from ``choices`` (first recorded, first used) and
    measure how far each taken choice is from their own."""

    def __init__(self, ops, choices: list):
        self.ops, self.choices = ops, choices
        self.name = ops.name
        self.rows_differing = 0
        self.worst_shortfall = 0.0     # max (k-th largest - smallest chosen) / max |z|

    def __getattr__(self, name):
        return getattr(self.ops, name)

    def topk(self, z, k):
        taken = self.choices.pop(0)                                      # [B, k]
        if taken.shape != (z.shape[0], k):
            raise ValueError(f"the recorded top-k has shape {taken.shape}, "
                             f"not {(z.shape[0], k)}: the two runs went different ways")
        z = np.asarray(z)                                                # [B, N]
        own = np.asarray(self.ops.topk(z, k))                            # [B, k]
        taken = taken.astype(own.dtype)
        own = np.sort(own, axis=1)
        self.rows_differing += int(np.sum(np.any(own != np.sort(taken, axis=1), axis=1)))
        kth = np.take_along_axis(z, own, axis=1).min(axis=1)             # [B]
        chosen = np.take_along_axis(z, taken, axis=1).min(axis=1)        # [B]
        scale = max(float(np.abs(z).max()), 1e-30)
        self.worst_shortfall = max(self.worst_shortfall, float((kth - chosen).max()) / scale)
        return taken
