"""The GPU acceptance check: one command, one report of everything the GPU path needs.

    python bench/gpu_check.py --out gpu-report                 # a GPU machine (<= 8 min, H100)
    python bench/gpu_check.py --backend numpy --out /tmp/dry   # dry run of the plumbing (CPU)

Six stages run in order; each is a function, and a stage that fails or raises is
recorded and the next one still runs, so one run shows everything:

1. environment: driver, CUDA runtime, CuPy, numba-cuda, NCCL, the GPU; one matmul and one
   Numba kernel on the backend's arrays, with any warnings they raise;
2. kernels: every Numba kernel (atomic and deterministic) and the reference ops on the
   device against the reference ops on NumPy, float32 and float64, at the seed preset's
   shapes with B = 256;
3. model tests: ``pytest -k cupy`` (gradient checks, sparse vs dense, numpy agreement);
4. end to end: 100 training steps, --resume, generation (the CLIs, in subprocesses); the
   first 20 losses against the numpy backend from the same seed; the checkpoint read
   with NumPy alone; memory figures; two backends' memory trackers in one process;
5. performance: step time and peak memory against PyTorch eager on the same weights, up
   to the largest batch that fits 8 GiB; device-to-host reads per step; the kernels'
   bandwidth against the device's;
6. NCCL: ``mpirun -n 1 ... --distributed`` for a few steps.

``--backend numpy`` runs the same stages on the CPU at small sizes (the GPU-only parts
are recorded as skipped, with the reason) in well under a minute: CI runs it.
Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))           # kernels.py, measure.py, torch_ref.py: by name

import array_api_compat.numpy as numpy_namespace  # noqa: E402

from brainlike_np.backends import get_backend, host_reads  # noqa: E402
from brainlike_np.backends.reference import ReferenceOps  # noqa: E402
from brainlike_np.data import random_batch  # noqa: E402
from brainlike_np.models import brainlike as model  # noqa: E402
from brainlike_np.train_state import TrainState  # noqa: E402
from measure import traced_peak  # noqa: E402

# max |got - want| / max |want| allowed against the NumPy reference
KERNEL_TOL = {"float32": 1e-5, "float64": 1e-12}
LOSS_RTOL = 1e-3        # first 20 losses, float32, device vs numpy: summation orders differ
GIB = 2**30
MAX_BATCH = 2**16       # the batch sweep stops here whatever the memory says


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""
    kernels: dict                  # B, N, D, k, T, V of the kernel checks
    train_preset: str              # end-to-end run
    train_steps: int
    compare_steps: int             # losses compared against the numpy backend
    perf_presets: tuple
    first_batch: int
    budget_bytes: int              # "largest batch that fits"
    timed_steps: int


GPU = Sizes(kernels=dict(B=256, N=4096, D=256, k=128, T=128, V=256), train_preset="default",
            train_steps=100, compare_steps=20, perf_presets=("default", "seed"),
            first_batch=32, budget_bytes=8 * GIB, timed_steps=5)
DRY = Sizes(kernels=dict(B=8, N=256, D=16, k=8, T=16, V=64), train_preset="tiny",
            train_steps=20, compare_steps=20, perf_presets=("tiny",), first_batch=4,
            budget_bytes=4 * 2**20, timed_steps=2)


class Skipped(Exception):
    """A stage that cannot run here; the message says why."""


@dataclass
class Stage:
    """One stage's outcome: checks (name, ok, detail), figures, skipped parts."""
    name: str
    checks: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    status: str = "passed"
    error: str = ""
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail="") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": str(detail)})
        return bool(ok)

    def skip(self, part: str, reason: str) -> None:
        self.skipped[part] = reason


@dataclass
class Context:
    backend: str                   # "cupy", or "numpy" for the dry run
    out: Path
    sizes: Sizes

    @property
    def gpu(self) -> bool:
        return self.backend == "cupy"

    def env(self, **extra) -> dict:
        return {**os.environ, "BRAINLIKE_BACKEND": self.backend, **extra}

    def gpu_only(self, stage: Stage, part: str) -> bool:
        """True on the GPU; in the dry run, records ``part`` as skipped."""
        if not self.gpu:
            stage.skip(part, "GPU only: this is the --backend numpy dry run")
        return self.gpu


def run_cli(ctx: Context, args: list, timeout: float, **env) -> subprocess.CompletedProcess:
    """``python -m <args>`` in the repository, on the context's backend."""
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=ctx.env(**env),
                          capture_output=True, text=True, timeout=timeout)


def tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def errors(done: subprocess.CompletedProcess) -> str:
    """The end of a failed command's stderr, for the report ("" when it succeeded)."""
    return tail(done.stderr) if done.returncode else ""


# ---- 1. environment --------------------------------------------------------------------
def stage_environment(ctx: Context, st: Stage) -> None:
    st.figures.update(python=platform.python_version(), numpy=np.__version__,
                      numba=importlib.metadata.version("numba"))
    if ctx.gpu_only(st, "driver, CUDA runtime, CuPy, numba-cuda, NCCL, GPU"):
        st.figures.update(gpu_versions())
        st.check("NCCL loads (cupy.cuda.nccl.available)", st.figures["nccl_available"])
    backend = get_backend(ctx.backend, kernels="numba")   # outside: its warning filters stay
    a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        product = backend.to_numpy(backend.asarray(a) @ backend.asarray(a))
        rows = backend.to_numpy(backend.ops.gather_rows(backend.asarray(a),
                                                        backend.asarray(np.array([5, 0]))))
    st.check(f"matmul on {ctx.backend}", np.allclose(product, a @ a, rtol=1e-4, atol=1e-4))
    st.check(f"a Numba kernel ({backend.ops.name}) on {ctx.backend} arrays",
             np.array_equal(rows, a[[5, 0]]))
    st.figures["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    st.check("no warnings from the matmul or the kernel", not caught,
             st.figures["warnings"] or "")


def gpu_versions() -> dict:
    import cupy
    from cupy.cuda import nccl
    runtime = cupy.cuda.runtime
    props = device_props()
    return {"driver_cuda": cuda_version(runtime.driverGetVersion()),
            "cuda_runtime": cuda_version(runtime.runtimeGetVersion()),
            "cupy": cupy.__version__, "numba_cuda": importlib.metadata.version("numba-cuda"),
            "nccl_available": bool(nccl.available), "gpu": props["name"].decode(),
            "gpu_memory_gib": round(props["totalGlobalMem"] / GIB, 1),
            "memory_bandwidth_bytes_s": device_bandwidth(props)}


def device_props() -> dict:
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())


def cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def device_bandwidth(props: dict) -> float | None:
    """Peak memory bandwidth in bytes/s: clock (kHz) x bus width (bits) x 2 (DDR) / 8;
    None where the runtime no longer reports the clock (CUDA 13 dropped the field)."""
    if not props.get("memoryClockRate"):
        return None
    return props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] * 2 / 8


# ---- 2. kernels against the reference -------------------------------------------------
def stage_kernels(ctx: Context, st: Stage) -> None:
    backend = get_backend(ctx.backend, kernels="reference")
    host_ref = ReferenceOps(numpy_namespace)
    impls = {"reference": backend.ops, **numba_impls(ctx)}
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        for case, op, args in kernel_cases(ctx.sizes.kernels, dtype, rng):
            want = as_list(getattr(host_ref, op)(*args))
            on_device = tuple(backend.asarray(a) if isinstance(a, np.ndarray) else a
                              for a in args)
            for name, ops in impls.items():
                got = [backend.to_numpy(g) for g in as_list(getattr(ops, op)(*on_device))]
                error = max(relative_error(g, w) for g, w in zip(got, want))
                st.check(f"{case}, {dtype}, {name}", error <= KERNEL_TOL[dtype],
                         f"error {error:.1e}")
    check_determinism(backend, impls, st)
    check_out_of_range(ctx, st)


def numba_impls(ctx: Context) -> dict:
    if ctx.gpu:
        from brainlike_np.backends.numba_cuda import NumbaCudaOps
        return {"numba-cuda atomic": NumbaCudaOps(),
                "numba-cuda deterministic": NumbaCudaOps(deterministic=True)}
    from brainlike_np.backends.numba_cpu import NumbaCpuOps
    return {"numba serial": NumbaCpuOps(), "numba parallel": NumbaCpuOps(parallel_min_work=0)}


def kernel_cases(s: dict, dtype: str, rng) -> list:
    """(case, op, host args) for every hot-path operation, as the sparse path uses it,
    at sizes ``s``."""
    B, N, D, k, T, V = (s[key] for key in ("B", "N", "D", "k", "T", "V"))

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    tokens = rng.integers(0, V, (B, T))                                  # [B, T]
    z = np.round(normal(B, N), 2)                                        # [B, N], ties
    idx = np.argsort(-z, axis=1, kind="stable")[:, :k]                   # [B, k]
    E, P = normal(V, N), normal(T, N)
    return [
        ("gather embedding rows", "gather_rows", (normal(V, D), tokens)),
        ("gather neuron rows", "gather_rows", (normal(N, D), idx)),
        ("scatter-add embedding rows", "scatter_add_rows",
         (tokens.reshape(-1), normal(B * T, D), V)),
        ("scatter-add neuron rows", "scatter_add_rows", (idx.reshape(-1), normal(B * k, D), N)),
        ("top-k", "topk", (z, k)),
        ("gathered weighted sum", "gather_weighted_sum", (E, tokens, P)),
        ("gathered weighted sum backward", "gather_weighted_sum_backward",
         (normal(B, k), idx, E, tokens, P)),
    ]


def as_list(result) -> list:
    return list(result) if isinstance(result, tuple) else [result]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (inf for a shape or dtype mismatch)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return float("inf")
    if got.size == 0:
        return 0.0
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
    return float(diff / max(np.abs(want.astype(np.float64)).max(), 1e-30))


def check_determinism(backend, impls: dict, st: Stage) -> None:
    """The deterministic / serial scatter-add gives the same bits twice."""
    name = next(n for n in impls if "deterministic" in n or "serial" in n)
    rng = np.random.default_rng(1)
    ids = backend.asarray(rng.integers(0, 7, 5000))
    rows = backend.asarray(rng.standard_normal((5000, 33)).astype(np.float32))
    first, second = (backend.to_numpy(impls[name].scatter_add_rows(ids, rows, 7))
                     for _ in range(2))
    st.check(f"{name} scatter-add is bitwise reproducible", np.array_equal(first, second))


def check_out_of_range(ctx: Context, st: Stage) -> None:
    if ctx.gpu:
        st.skip("ids out of range", "the CUDA ops do not check ids (a check reads the device "
                                    "on every call); batches are checked on the host")
        return
    ops = numba_impls(ctx)["numba serial"]
    try:
        ops.gather_rows(np.zeros((4, 2), np.float32), np.array([0, 4]))
    except ValueError as exc:
        st.check("ids out of range: one-line ValueError", "out of range" in str(exc), exc)
    else:
        st.check("ids out of range: one-line ValueError", False, "no error")


# ---- 3. the model test matrix ---------------------------------------------------------
def stage_model_tests(ctx: Context, st: Stage) -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                           "no:cacheprovider", "-k", "cupy", "tests"], cwd=ROOT, env=ctx.env(),
                          capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines() or [done.stderr]
    st.figures["pytest -k cupy"] = lines[-1]
    st.check("pytest -k cupy passes", done.returncode == 0,
             tail(done.stdout, 15) if done.returncode else "")
    if ctx.gpu_only(st, "the cupy-parametrized tests (they skip without a GPU)"):
        no_gpu = [line for line in lines if line.startswith("SKIPPED") and "'cupy'" in line]
        st.check("the cupy tests ran, none skipped for want of a GPU", not no_gpu,
                 " | ".join(no_gpu[:3]))


# ---- 4. end to end ---------------------------------------------------------------------
def stage_end_to_end(ctx: Context, st: Stage) -> None:
    s = ctx.sizes
    run_dir = ctx.out / "train"
    shutil.rmtree(run_dir, ignore_errors=True)
    flags = ["--preset", s.train_preset, "--warmup", "100", "--seed", "0"]
    done = run_cli(ctx, ["brainlike_np.train", *flags, "--max-iters", s.train_steps,
                         "--out-dir", run_dir], timeout=300)
    losses = logged(run_dir, "loss")
    st.check(f"{s.train_steps} training steps", done.returncode == 0 and
             len(losses) == s.train_steps and np.all(np.isfinite(losses)), errors(done))
    done = run_cli(ctx, ["brainlike_np.train", "--resume", "--max-iters", s.train_steps + 10,
                         "--out-dir", run_dir], timeout=120)
    st.check("--resume for 10 more steps", done.returncode == 0 and
             len(logged(run_dir, "loss")) == s.train_steps + 10, errors(done))
    done = run_cli(ctx, ["brainlike_np.generate", "--checkpoint", run_dir / "ckpt.npz",
                         "--max-new-bytes", "40"], timeout=120)
    st.check("generate 40 bytes", done.returncode == 0 and len(done.stdout) >= 40,
             errors(done) or f"{len(done.stdout)} characters")
    compare_losses(ctx, st, flags, losses)
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


def compare_losses(ctx: Context, st: Stage, flags: list, losses: np.ndarray) -> None:
    """The first losses against another implementation from the same seed: the numpy
    backend (GPU run) or the reference ops (dry run). Both runs are in the warmup, so
    their learning rates agree although their --max-iters differ."""
    n = ctx.sizes.compare_steps
    other = ctx.out / "train-compare"
    shutil.rmtree(other, ignore_errors=True)
    kernels = "auto" if ctx.gpu else "reference"
    done = subprocess.run([sys.executable, "-m", "brainlike_np.train", *flags,
                           "--max-iters", str(n), "--out-dir", str(other)], cwd=ROOT,
                          env={**os.environ, "BRAINLIKE_BACKEND": "numpy",
                               "BRAINLIKE_KERNELS": kernels},
                          capture_output=True, text=True, timeout=300)
    reference = logged(other, "loss")
    ok = done.returncode == 0 and len(reference) == n and len(losses) >= n
    worst = float(np.max(np.abs(losses[:n] / reference - 1))) if ok else float("inf")
    st.figures[f"first {n} losses, max relative difference"] = worst
    st.check(f"first {n} losses agree with numpy ({kernels} kernels) to {LOSS_RTOL:g}",
             worst <= LOSS_RTOL, f"{worst:.1e} {errors(done)}".strip())


def check_checkpoint(path: Path, st: Stage) -> None:
    """Readable with NumPy alone, with the config's exact shapes (0-d included), and loadable."""
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


# ---- 5. performance --------------------------------------------------------------------
def stage_performance(ctx: Context, st: Stage) -> None:
    backend = get_backend(ctx.backend)
    st.figures["host reads per training step"] = reads_per_step(backend)
    st.check("at most 2 device-to-host reads per training step",
             st.figures["host reads per training step"] <= 2)
    torch_device = torch_available(ctx, st)
    for name in ctx.sizes.perf_presets:
        rows = batch_sweep(ctx, backend, name, torch_device)
        st.figures[f"{name}: step and memory by batch"] = rows
        fitting = [r["batch"] for r in rows if r["fits"]]
        st.figures[f"{name}: largest batch measured within budget"] = max(fitting, default=None)
    kernel_bandwidth(ctx, backend, st)


def reads_per_step(backend) -> int:
    state = TrainState.create("brainlike", model.PRESETS["tiny"], backend)
    x, y = random_batch(4, state.cfg.context)
    state.train_step(x, y, lr=1e-3)                                      # warm-up
    before = host_reads()
    state.train_step(x, y, lr=1e-3)
    return host_reads() - before


def torch_available(ctx: Context, st: Stage) -> str | None:
    """The torch device to compare with, or None (recorded as skipped)."""
    try:
        import torch
    except ImportError:
        st.skip("PyTorch eager", "torch is not installed (pip install torch)")
        return None
    if ctx.gpu and not torch.cuda.is_available():
        st.skip("PyTorch eager", "this torch build has no CUDA")
        return None
    return "cuda" if ctx.gpu else "cpu"


def batch_sweep(ctx: Context, backend, preset_name: str, torch_device) -> list:
    """Ours and PyTorch's forward+backward at B, 2B, 4B, ... until ours leaves the budget."""
    cfg, rows, B = model.PRESETS[preset_name], [], ctx.sizes.first_batch
    params = model.init_params(cfg, backend, seed=0)
    fixed = 3 * sum(int(p.nbytes) for p in params.values())             # params + AdamW
    while True:
        row = {"batch": B, **time_and_peak_ours(ctx, backend, cfg, params, B)}
        row["fits"] = fixed + row["peak_bytes"] <= ctx.sizes.budget_bytes
        if torch_device:
            row.update(time_and_peak_torch(ctx, cfg, B, torch_device))
        rows.append(row)
        if not row["fits"] or B >= MAX_BATCH:
            return rows
        B *= 2


def median_time(step, sync, repeats: int) -> float:
    for _ in range(2):                                                   # warm-up
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_and_peak_ours(ctx, backend, cfg, params, B) -> dict:
    x, y = (backend.asarray(a) for a in random_batch(B, cfg.context))

    def step():
        model.loss_and_grads(params, x, y, cfg, backend.ops)

    seconds = median_time(step, backend.synchronize, ctx.sizes.timed_steps)
    return {"step_s": seconds, "peak_bytes": traced_peak(backend, step)}


def time_and_peak_torch(ctx, cfg, B, device) -> dict:
    import torch

    import torch_ref
    host = model.init_params(cfg, get_backend("numpy"), seed=0)
    p = torch_ref.to_torch({n: np.asarray(v) for n, v in host.items()}, torch.float32, device)
    x, y = (torch.from_numpy(a).to(device) for a in random_batch(B, cfg.context))

    def step():
        torch_ref.loss_and_grads("brainlike", p, x, y, cfg)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result = {"torch_step_s": median_time(step, sync, ctx.sizes.timed_steps)}
    if device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        result["torch_peak_bytes"] = torch.cuda.max_memory_allocated() - base
    return result


def kernel_bandwidth(ctx: Context, backend, st: Stage) -> None:
    """bench/kernels.py's cases: GB/s that each kernel must move / its time, against the
    device's peak bandwidth."""
    import kernels as kernel_bench
    sizes = kernel_bench.DESIGN if ctx.gpu else kernel_bench.QUICK
    rows = kernel_bench.run(backend, sizes, "float32", repeats=10 if ctx.gpu else 1)
    fast = "numba-cuda" if ctx.gpu else "numba"
    st.figures["kernel GB/s"] = {r["case"]: round(r["gb_per_s"][fast], 1) for r in rows}
    if not ctx.gpu_only(st, "kernel bandwidth against the device's"):
        return
    peak = device_bandwidth(device_props())
    if peak is None:
        st.skip("kernel bandwidth against the device's", "the runtime does not report "
                                                         "the memory clock")
        return
    st.figures["device peak GB/s"] = round(peak / 1e9)
    st.figures["kernel fraction of device bandwidth"] = {
        case: round(gb * 1e9 / peak, 3) for case, gb in st.figures["kernel GB/s"].items()}


# ---- 6. NCCL ---------------------------------------------------------------------------
def stage_nccl(ctx: Context, st: Stage) -> None:
    mpirun = shutil.which("mpirun")
    if mpirun is None or importlib.util.find_spec("mpi4py") is None:
        raise Skipped("needs mpirun and mpi4py: apt-get install openmpi-bin; "
                      "pip install -e '.[cuda12-distributed]'")
    if not ctx.gpu:
        st.skip("NCCL", "dry run: the same command on the numpy backend (MPI transport)")
    run_dir = ctx.out / "distributed"
    shutil.rmtree(run_dir, ignore_errors=True)
    flags = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    command = [mpirun, *flags, "--oversubscribe", "-n", "1", sys.executable, "-m",
               "brainlike_np.train", "--distributed", "--preset", "tiny", "--max-iters", "5",
               "--eval-every", "5", "--eval-batches", "1", "--out-dir", str(run_dir)]
    done = subprocess.run(command, cwd=ROOT, env=ctx.env(), capture_output=True, text=True,
                          timeout=180)
    ok = done.returncode == 0 and len(logged(run_dir, "loss")) == 5
    st.check("mpirun -n 1 ... --distributed: 5 steps", ok, errors(done))


# ---- the runner and the report ---------------------------------------------------------
STAGES = [("environment", stage_environment), ("kernels", stage_kernels),
          ("model tests", stage_model_tests), ("end to end", stage_end_to_end),
          ("performance", stage_performance), ("nccl", stage_nccl)]


def run_stage(ctx: Context, name: str, fn) -> Stage:
    st = Stage(name)
    start = time.perf_counter()
    try:
        fn(ctx, st)
        st.status = "passed" if all(c["ok"] for c in st.checks) else "failed"
    except Skipped as exc:
        st.status, st.error = "skipped", str(exc)
    except Exception:                          # recorded; the next stage still runs
        st.status, st.error = "error", traceback.format_exc(limit=-6)
    st.seconds = round(time.perf_counter() - start, 1)
    print(f"[{st.seconds:6.1f} s] {name}: {st.status}", flush=True)
    return st


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['backend']}): {report['verdict']}", "",
             f"`{report['command']}`, {report['seconds']} s", ""]
    for st in report["stages"]:
        lines += [f"## {st['name']}: {st['status']} ({st['seconds']} s)", ""]
        lines += [f"- {'ok' if c['ok'] else '**FAILED**'}: {c['name']}"
                  + (f" ({c['detail']})" if c["detail"] else "") for c in st["checks"]]
        lines += [f"- skipped: {part}: {why}" for part, why in st["skipped"].items()]
        lines += [f"- {k}: `{json.dumps(v)}`" for k, v in st["figures"].items()]
        if st["status"] == "skipped":
            lines.append(f"- skipped: {st['error']}")
        elif st["error"]:
            lines += ["", "```", st["error"].rstrip(), "```"]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the report")
    parser.add_argument("--backend", choices=["cupy", "numpy"], default="cupy",
                        help="numpy: a dry run of the plumbing on the CPU, small sizes")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.backend, args.out.resolve(), GPU if args.backend == "cupy" else DRY)
    start = time.perf_counter()
    stages = [dataclasses.asdict(run_stage(ctx, name, fn)) for name, fn in STAGES]
    ok = all(s["status"] in ("passed", "skipped") for s in stages)
    report = {"backend": args.backend, "verdict": "passed" if ok else "FAILED",
              "command": " ".join(["python bench/gpu_check.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "seconds": round(time.perf_counter() - start, 1), "stages": stages}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"{report['verdict']}: report in {args.out / 'gpu_check.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
