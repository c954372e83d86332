"""The GPU check's PyTorch route: the torch backend on CUDA (``BRAINLIKE_DEVICE=cuda``).

One stage, ``torch-cuda`` (``stage_torch``), skipped with the reason where PyTorch is not
installed or sees no CUDA GPU:

- environment: PyTorch's version and CUDA, the GPU;
- ops: every hot-path and fused op, as ``PyTorch native``, its ``reproducible()`` form
  (sort-based scatter-adds instead of atomics) and the reference ops on CUDA tensors,
  against the reference ops on NumPy (the kernels stage's cases and tolerances);
- end to end: training, --resume and generation through the CLIs on the torch backend,
  PyTorch's CUDA memory figures;
- the test matrix: ``pytest -k torch`` with ``BRAINLIKE_DEVICE=cuda`` (gradient checks,
  execution options, numpy agreement, the bit-identical resume chain on the reproducible
  ops, the checkpoint read on every backend).

The ``--backend numpy`` dry run runs the same ops and end-to-end parts on PyTorch's CPU
at small sizes (the test matrix's torch rows run in the default ``pytest``).
"""

from __future__ import annotations

import shutil
import sys

import numpy as np

from brainlike_np.backends import get_backend
from brainlike_np.backends.reference import ReferenceOps
from gpu_report import Context, Skipped, Stage, errors, tail
from gpu_stages import check_ops_against_numpy
from gpu_training import logged


def stage_torch(ctx: Context, st: Stage) -> None:
    torch = import_torch()
    device = "cuda" if ctx.gpu else "cpu"
    if ctx.gpu and not torch.cuda.is_available():
        raise Skipped(f"PyTorch {torch.__version__} sees no CUDA GPU (a CPU build, or no "
                      "driver): install PyTorch's CUDA build")
    st.figures.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    if ctx.gpu:
        st.figures["gpu"] = torch.cuda.get_device_name(0)
    backend = get_backend("torch", device=device)
    st.check(f"the torch backend on {backend.device} uses PyTorch's ops",
             backend.ops.name == "native", backend.ops.name)
    check_ops(ctx, backend, st)
    check_end_to_end(ctx, device, st)
    check_test_matrix(ctx, st)


def import_torch():
    try:
        import torch
    except ImportError as exc:
        raise Skipped(f"not installed: PyTorch ({exc}); pip install -e '.[torch]'") from None
    return torch


def check_ops(ctx: Context, backend, st: Stage) -> None:
    """The kernels stage's cases on torch tensors, each implementation against NumPy."""
    impls = {"PyTorch native": backend.ops, "PyTorch native reproducible": backend.ops.reproducible(),
             "reference on PyTorch": ReferenceOps(backend.xp)}
    check_ops_against_numpy(ctx, backend, impls, st)


def check_end_to_end(ctx: Context, device: str, st: Stage) -> None:
    """Train, resume and generate through the CLIs on the torch backend."""
    s = ctx.sizes
    run_dir = ctx.out / "train-torch"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = ctx.env(BRAINLIKE_BACKEND="torch", BRAINLIKE_DEVICE=device)
    python = [sys.executable, "-m"]
    done = ctx.run([*python, "brainlike_np.train", "--preset", s.train_preset, "--seed", "0",
                    "--max-iters", s.train_steps, "--out-dir", run_dir], 300, env)
    losses = logged(run_dir, "loss")
    st.check(f"{s.train_steps} training steps on torch ({device})", done.returncode == 0
             and len(losses) == s.train_steps and np.all(np.isfinite(losses)), errors(done))
    rates = logged(run_dir, "tokens_per_s")
    st.figures["torch tokens/s (median)"] = float(np.median(rates)) if rates.size else None
    peaks = logged(run_dir, "peak_bytes")
    st.figures["torch peak_bytes max"] = int(peaks.max()) if peaks.size else None
    memory = "array memory" if device == "cuda" else "resident memory"
    said = f"peak {memory}" in done.stdout
    st.check(f"the trainer reports its peak {memory}", said, "" if said else tail(done.stdout, 2))
    done = ctx.run([*python, "brainlike_np.train", "--resume", "--max-iters", s.train_steps + 5,
                    "--out-dir", run_dir], 120, env)
    st.check("--resume for 5 more steps on torch", done.returncode == 0 and
             len(logged(run_dir, "loss")) == s.train_steps + 5, errors(done))
    done = ctx.run([*python, "brainlike_np.generate", "--checkpoint", run_dir / "ckpt.npz",
                    "--max-new-bytes", "40"], 120, env)
    st.check("generate 40 bytes on torch", done.returncode == 0 and len(done.stdout) >= 40,
             errors(done) or f"{len(done.stdout)} characters")


def check_test_matrix(ctx: Context, st: Stage) -> None:
    """``pytest -k torch`` on the GPU; on none may skip for want of one."""
    if not ctx.gpu_only(st, "pytest -k torch on CUDA (the CPU rows run in the default pytest)"):
        return
    done = ctx.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                    "-k", "torch", "tests"], 300, ctx.env(BRAINLIKE_DEVICE="cuda"))
    lines = done.stdout.strip().splitlines() or [done.stderr]
    st.figures["pytest -k torch (cuda)"] = lines[-1]
    st.check("pytest -k torch passes on CUDA", done.returncode == 0,
             tail(done.stdout, 15) if done.returncode else "")
