"""Measure each claim of the design note (/work/shared/SEED.md, docs: bench/README.md) in
one run; write bench/results/claims.json, claims.md and memory_vs_batch.png.

    python bench/claims.py --quick            # a few minutes on 2 CPU cores
    python bench/claims.py                    # the run behind the README table
    BRAINLIKE_BACKEND=cupy python bench/claims.py   # CuPy and torch CUDA (untested)

Memory is the backend's accounting (tracemalloc on the host, a pool hook on CuPy):
bytes of arrays alive above the parameters. A training step's memory is split into
parameters, gradients, AdamW state (2 moments) and activations = peak(forward +
backward) - gradients. PyTorch allocations are invisible to tracemalloc, so the
PyTorch comparison runs each side in a fresh subprocess and compares peak resident
memory deltas (VmHWM after a reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from brainlike_np import model, transformer
from brainlike_np.backends import get_backend
from brainlike_np.config import PRESET_BATCH_SIZE, ModelConfig, preset
from brainlike_np.optim import AdamW

GIB, MIB = 2 ** 30, 2 ** 20
NOTE_BATCH = 32
IMPLS = ("ours", "torch")
SMALL_BATCHES = (1, 2, 4, 8)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# (measurement, subject) pairs in the memory-split table
MEMORY_TABLE = (("batched", "brain128"), ("dense", "dense128"), ("brain512", "brain512"),
                ("tr128", "tr128"), ("tr512", "tr512"))
RESULTS = Path(__file__).resolve().parent / "results"
# glibc returns freed large blocks to the OS at once, so resident memory tracks arrays
MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


# ---------------------------------------------------------------------------------
# what is measured: one model at one size
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Subject:
    label: str
    kind: str                  # "brainlike" or "transformer"
    cfg: object
    path: str = "sparse"       # brain-like only

    @property
    def module(self):
        return model if self.kind == "brainlike" else transformer

    @property
    def targets_per_window(self) -> int:
        """Supervised next-byte targets per window: 1 for the brain-like model, T for
        the causal Transformer."""
        return 1 if self.kind == "brainlike" else self.cfg.context

    def loss_and_grads(self, params, x, y, ops):
        if self.kind == "brainlike":
            return model.loss_and_grads(params, x, y, self.cfg, ops, self.path)
        return transformer.loss_and_grads(params, x, y, self.cfg, ops)

    def forward_matmul_flops(self, B: int) -> int:
        count = brainlike_flops if self.kind == "brainlike" else transformer_flops
        return count(self.cfg, B, self.path)

    def to_spec(self) -> dict:
        return {"label": self.label, "kind": self.kind, "cfg": self.cfg.to_dict(),
                "path": self.path}

    @classmethod
    def from_spec(cls, spec: dict) -> "Subject":
        make_cfg = ModelConfig.from_dict if spec["kind"] == "brainlike" else \
            (lambda d: transformer.TransformerConfig(**d))
        return cls(spec["label"], spec["kind"], make_cfg(spec["cfg"]), spec["path"])


def brainlike_flops(cfg, B, path):
    """Matmul FLOPs of one forward pass (2*m*n*k each); M neurons carried per sample."""
    M = cfg.k_active if path == "sparse" else cfg.n_neurons
    T, D, V = cfg.context, cfg.d_state, cfg.vocab_size
    read = 2 * B * (2 * M * D * D + 2 * T * D * D + 2 * M * T * D)      # q, o; k, v; qk, pv
    step = 2 * B * (4 * M * D * D + 2 * M * M * D + M * 2 * D * D + M * D)   # + W_u, w_a
    decode = 2 * B * (M * V + D * V)
    return read + cfg.n_steps * step + decode


def transformer_flops(cfg, B, path=None):
    T, D, F, V = cfg.context, cfg.d_model, cfg.d_mlp, cfg.vocab_size
    layer = 2 * B * T * (4 * D * D + 2 * T * D + 2 * D * F)     # qkvo, qk+pv (full), mlp
    return cfg.n_layers * layer + 2 * B * T * D * V


def note_subjects() -> dict:
    seed = preset("seed")
    note = transformer.preset("note")
    return {
        "brain128": Subject("brain-like sparse, T 128", "brainlike", seed),
        "dense128": Subject("brain-like dense, T 128", "brainlike", seed, "dense"),
        "brain512": Subject("brain-like sparse, T 512", "brainlike",
                            dataclasses.replace(seed, context=512)),
        "tr128": Subject("Transformer, T 128", "transformer", note),
        "tr512": Subject("Transformer, T 512", "transformer",
                         dataclasses.replace(note, context=512)),
    }


# ---------------------------------------------------------------------------------
# measuring one training step
# ---------------------------------------------------------------------------------
def random_windows(backend, cfg, B, seed=0):
    rng = np.random.default_rng(seed)
    return (backend.asarray(rng.integers(0, cfg.vocab_size, size=(B, cfg.context))),
            backend.asarray(rng.integers(0, cfg.vocab_size, size=B)))


def nbytes(arrays: dict) -> int:
    return sum(int(a.nbytes) for a in arrays.values())


def traced_peak(backend, fn) -> int:
    """Peak bytes of arrays allocated while ``fn()`` runs, above what was alive before."""
    backend.memory.reset_peak()
    base = backend.memory.current_bytes()
    fn()
    backend.synchronize()
    peak = backend.memory.peak_bytes() - base
    backend.memory.stop()
    return peak


def timed(sync, fn, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs (the caller has warmed up);
    ``sync()`` waits for the device. Best, not median: other work on a shared machine
    only ever adds time."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


class Lab:
    """Runs measurements on one backend and keeps every (batch, memory) point."""

    def __init__(self, backend, quick: bool):
        self.backend, self.quick = backend, quick
        self.points: dict[str, list] = {}     # label -> [(B, training bytes)]
        self._params: dict[str, dict] = {}

    def params(self, subject) -> dict:
        key = json.dumps(subject.cfg.to_dict(), sort_keys=True) + subject.kind
        if key not in self._params:
            self._params[key] = subject.module.init_params(subject.cfg, self.backend, seed=0)
        return self._params[key]

    def fixed_bytes(self, subject) -> int:
        """Parameters + AdamW moments: alive for the whole of training."""
        return 3 * nbytes(self.params(subject))

    def step_peak(self, subject, B: int) -> int:
        """Peak bytes of one forward + backward above the parameters (grads included)."""
        p, ops = self.params(subject), self.backend.ops
        x, y = random_windows(self.backend, subject.cfg, B)
        peak = traced_peak(self.backend, lambda: subject.loss_and_grads(p, x, y, ops))
        self.points.setdefault(subject.label, []).append((B, self.fixed_bytes(subject) + peak))
        return peak

    def step(self, subject, B: int, repeats: int) -> dict:
        """Memory split and median step time at batch B (the traced run warms up)."""
        p, ops = self.params(subject), self.backend.ops
        peak = self.step_peak(subject, B)
        x, y = random_windows(self.backend, subject.cfg, B)
        seconds = timed(self.backend.synchronize, lambda: subject.loss_and_grads(p, x, y, ops), repeats)
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
        x, y = random_windows(self.backend, subject.cfg, B)

        def one_by_one():
            total = None
            for i in range(B):
                _, grads = subject.loss_and_grads(p, x[i:i + 1, :], y[i:i + 1], ops)
                total = grads if total is None else {n: total[n] + g for n, g in grads.items()}
            return {n: g / B for n, g in total.items()}

        peak = traced_peak(self.backend, one_by_one)
        return {"batch": B, "peak_fb_bytes": peak,
                "step_s": timed(self.backend.synchronize, one_by_one, repeats)}

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


# ---------------------------------------------------------------------------------
# machine and matmul rate
# ---------------------------------------------------------------------------------
def machine(backend) -> dict:
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "numpy": np.__version__, "backend": backend.name, "ops": backend.ops.name,
            "threads": {v: os.environ.get(v, "default") for v in THREAD_VARS}}
    if backend.name == "cupy":
        info["gpu"] = backend._native.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return info


def cpu_pressure() -> str:
    """The kernel's CPU pressure (share of time some task waited for a CPU): other work
    on a shared machine slows every timing."""
    path = Path("/proc/pressure/cpu")
    return path.read_text().splitlines()[0] if path.exists() else "unavailable"


def matmul_rate(backend, n=2048, repeats=10) -> float:
    """float32 FLOP/s of an n x n x n matmul on this backend."""
    rng = backend.rng(0)
    a = backend.normal(rng, (n, n), 1.0, backend.dtype("float32"))
    a @ a
    return 2 * n ** 3 / timed(backend.synchronize, lambda: a @ a, repeats)


# ---------------------------------------------------------------------------------
# PyTorch and resident memory: one measurement per fresh subprocess
# ---------------------------------------------------------------------------------
def worker(spec: dict) -> dict:
    """Runs in a fresh process: one step of ``spec`` in our code or PyTorch, warmed up;
    returns its median time (``spec["measure"] == "time"``) or its peak memory."""
    backend = get_backend()
    subject = Subject.from_spec(spec["subject"])
    step, sync = (torch_step if spec["impl"] == "torch" else our_step)(subject, spec, backend)
    step()                                                   # warm-up (allocator, JIT)
    if spec["measure"] == "time":
        return {"step_s": timed(sync, step, spec["repeats"])}
    if backend.name == "cupy":      # device memory: each library's own allocator count
        return {"peak_bytes": (torch_cuda_peak(step) if spec["impl"] == "torch"
                               else traced_peak(backend, step))}
    out = {"peak_bytes": resident_peak(step)}
    if spec["impl"] == "ours":
        out["traced_peak_bytes"] = traced_peak(backend, step)
    return out


def our_step(subject, spec, backend):
    p = subject.module.init_params(subject.cfg, backend, seed=0)
    x, y = random_windows(backend, subject.cfg, spec["batch"])
    return lambda: subject.loss_and_grads(p, x, y, backend.ops), backend.synchronize


def torch_step(subject, spec, backend):
    import torch

    import torch_ref
    cuda = backend.name == "cupy"
    device = "cuda" if cuda else "cpu"
    host = subject.module.init_params(subject.cfg, get_backend("numpy"), seed=0)
    p = torch_ref.to_torch({n: np.asarray(v) for n, v in host.items()}, torch.float32, device)
    x, y = (torch.from_numpy(backend.to_numpy(a)).to(device)
            for a in random_windows(backend, subject.cfg, spec["batch"]))
    return (lambda: torch_ref.loss_and_grads(subject.kind, p, x, y, subject.cfg),
            torch.cuda.synchronize if cuda else (lambda: None))


def resident_peak(step) -> int:
    """Peak resident memory of ``step()`` above the resident memory before it."""
    base = resident_bytes()
    Path("/proc/self/clear_refs").write_text("5")            # resets VmHWM to VmRSS
    step()
    return resident_bytes("VmHWM") - base


def torch_cuda_peak(step) -> int:
    import torch
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def resident_bytes(field="VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def in_subprocess(impl: str, subject: Subject, B: int, measure: str, repeats: int) -> dict:
    """One step's time or peak memory, measured in a fresh process: for memory, glibc
    returns freed blocks at once (so resident memory follows the arrays); for time,
    the allocator keeps its defaults (what a user gets)."""
    spec = {"impl": impl, "subject": subject.to_spec(), "batch": B, "repeats": repeats,
            "measure": measure}
    env = {**os.environ, **(MEMORY_WORKER_ENV if measure == "memory" else {})}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"worker {impl} {measure} {subject.label} failed:\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------
# the claims
# ---------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fmt_bytes(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if abs(b) >= GIB else f"{b / MIB:.0f} MiB"


def row(claim, quantity, note, measured, ratio=None, comment=""):
    return {"claim": claim, "quantity": quantity, "note": note, "measured": measured,
            "ratio": ratio, "comment": comment}


def measure_all(lab: Lab, args) -> dict:
    """Every measurement the claims need, as plain numbers."""
    quick, subjects = lab.quick, note_subjects()
    reps = 1 if quick else 3
    rate_at_start = matmul_rate(lab.backend)
    m = {}
    m["batched"] = lab.step(subjects["brain128"], NOTE_BATCH, reps)
    m["loop"] = lab.loop_step(subjects["brain128"], NOTE_BATCH, reps)
    log("loop vs batched done")
    m["dense"] = (scaled_from_one(lab, subjects["dense128"]) if quick
                  else lab.step_extrapolated(subjects["dense128"], NOTE_BATCH, (1, 2), 1))
    log("dense done")
    m["brain512"] = lab.step(subjects["brain512"], NOTE_BATCH, reps)
    m["tr128"] = lab.step(subjects["tr128"], NOTE_BATCH, reps)
    m["tr512"] = (lab.step_extrapolated(subjects["tr512"], NOTE_BATCH, (2, 4), 1) if quick
                  else lab.step(subjects["tr512"], NOTE_BATCH, 1))
    log("Transformer done")
    budget = int(args.budget_gb * GIB)
    tolerance = 0.1 if quick else 0.0
    m["max_batch"], m["per_sample_bytes"] = {}, {}
    for key in ("brain128", "brain512", "tr128", "tr512"):
        s = subjects[key]
        for B in SMALL_BATCHES:      # the memory curve's low end; memory only, no timing
            lab.step_peak(s, B)
        m["max_batch"][key] = max_batch(lab, s, budget, tolerance)
        m["per_sample_bytes"][key] = linear_fit(lab.points[s.label])
        log(f"max batch {s.label}: {m['max_batch'][key]}")
    m["update_transient"] = {m[k]["subject"]: lab.update_transient(subjects[s])
                             for k, s in MEMORY_TABLE}
    m["torch"] = compare_with_torch(repeats=3 if quick else 5, rounds=1 if quick else 3)
    log("PyTorch comparison done")
    # the best of two: a rate measured while other work runs is too low
    m["matmul_flops_per_s"] = max(rate_at_start, matmul_rate(lab.backend))
    return m


def scaled_from_one(lab, subject) -> dict:
    """Quick mode: the dense step at B = 1, scaled by 32 (overestimates the fixed part)."""
    one = lab.step(subject, 1, 1)
    out = split(subject, NOTE_BATCH, one["params_bytes"],
                one["grads_bytes"] + NOTE_BATCH * one["activation_bytes"],
                NOTE_BATCH * one["step_s"])
    out["extrapolated_from"] = [1]
    return out


def compare_with_torch(repeats: int, rounds: int) -> dict:
    """Default presets at their default batch: our step and PyTorch eager, each measured
    in fresh subprocesses; the timing rounds alternate between the two so that both
    see the same load."""
    subjects = {"brain": Subject("brain-like default", "brainlike", preset("default")),
                "tr": Subject("Transformer default", "transformer", transformer.preset("default"))}
    B = PRESET_BATCH_SIZE["default"]
    out = {}
    for key, s in subjects.items():
        times = {impl: [] for impl in IMPLS}
        for _ in range(rounds):
            for impl in IMPLS:
                times[impl].append(in_subprocess(impl, s, B, "time", repeats)["step_s"])
        out[key] = {impl: {"batch": B, "step_s": min(times[impl]),
                           **in_subprocess(impl, s, B, "memory", 1)} for impl in IMPLS}
    return out


def claim_rows(m: dict, args) -> list:
    b, loop, dense = m["batched"], m["loop"], m["dense"]
    b512, t128, t512 = m["brain512"], m["tr128"], m["tr512"]
    mb, budget = m["max_batch"], f"{args.budget_gb:g} GiB"
    dense_how = f"extrapolated from B = {', '.join(map(str, dense['extrapolated_from']))}"
    t512_how = (f"extrapolated from B = {', '.join(map(str, t512['extrapolated_from']))}"
                if "extrapolated_from" in t512 else "measured at B = 32")
    at40 = {k: (40 * GIB - m["per_sample_bytes"][k][1]) / m["per_sample_bytes"][k][0]
            for k in mb}
    speedup = loop["step_s"] / b["step_s"]
    act_ratio = t128["activation_bytes"] / b["activation_bytes"]
    return [
        row(1, "step time, B = 32 (brain-like sparse, note sizes)", "t_batch << 32 t_single",
            f"loop {loop['step_s']:.2f} s, batched {b['step_s']:.2f} s",
            None, "loop = 32 calls at B = 1, gradients summed"),
        row(1, "peak memory, per-sample loop", "5.25M floats (~20 MB)",
            fmt_bytes(loop["peak_fb_bytes"]), loop["peak_fb_bytes"] / 21e6,
            "forward + backward above the parameters, gradients included"),
        row(1, "peak memory, batched B = 32", "67M floats (~268 MB)",
            fmt_bytes(b["peak_fb_bytes"]), b["peak_fb_bytes"] / 268e6, "same accounting"),
        row(2, "peak memory, dense / sparse path, B = 32", "33x less",
            f"{dense['peak_fb_bytes'] / b['peak_fb_bytes']:.0f}x less "
            f"({fmt_bytes(dense['peak_fb_bytes'])} vs {fmt_bytes(b['peak_fb_bytes'])})",
            dense["peak_fb_bytes"] / b["peak_fb_bytes"] / 33, f"dense {dense_how}"),
        row(2, "step time, dense / sparse path, B = 32", "—",
            f"sparse {dense['step_s'] / b['step_s']:.0f}x faster "
            f"({dense['step_s']:.0f} s vs {b['step_s']:.2f} s)", None, f"dense {dense_how}"),
        row(3, "activations, Transformer, B 32 T 128 (12 x d 512)", "~1 GB",
            fmt_bytes(t128["activation_bytes"]), t128["activation_bytes"] / 1e9),
        row(3, "activations, brain-like, B 32 T 128", "~100 MB",
            fmt_bytes(b["activation_bytes"]), b["activation_bytes"] / 100e6),
        row(3, "activations, Transformer / brain-like", "10x", f"{act_ratio:.1f}x",
            act_ratio / 10),
        row(4, "training memory, Transformer B 32 T 512", "~5 GB",
            fmt_bytes(t512["training_bytes"]), t512["training_bytes"] / 5e9,
            f"params + grads + AdamW + activations; {t512_how}"),
        row(4, "training memory, brain-like B 32 T 512", "~200 MB",
            fmt_bytes(b512["training_bytes"]), b512["training_bytes"] / 200e6,
            f"at T 128: {fmt_bytes(b['training_bytes'])}"),
        row(4, f"largest batch in {budget}, T 512: brain-like / Transformer", "25x (6400 / 256 in 40 GB)",
            f"{mb['brain512'] / max(mb['tr512'], 1):.0f}x ({mb['brain512']} / {mb['tr512']})",
            mb["brain512"] / max(mb["tr512"], 1) / 25,
            f"T 128: {mb['brain128']} / {mb['tr128']}; measured by bisection"),
        row(4, "largest batch in 40 GiB, T 512 (linear from measured points)", "6400 / 256",
            f"{at40['brain512']:.0f} / {at40['tr512']:.0f}",
            at40["brain512"] / at40["tr512"] / 25, "extrapolated, not run"),
        row(5, "vectorization: loop / batched step time", "10x+ faster", f"{speedup:.1f}x",
            speedup / 10),
        row(5, "training throughput, sequences/s (T 128 / T 512)",
            "brain-like \"may even be faster\"",
            f"brain-like {b['sequences_per_s']:.1f} / {b512['sequences_per_s']:.1f}; "
            f"Transformer {t128['sequences_per_s']:.1f} / {t512['sequences_per_s']:.2f}",
            b512["sequences_per_s"] / t512["sequences_per_s"], "ratio: brain-like / Transformer at T 512"),
        row(5, "training throughput, supervised tokens/s (T 128 / T 512)", "—",
            f"brain-like {b['tokens_per_s']:.1f} / {b512['tokens_per_s']:.1f}; "
            f"Transformer {t128['tokens_per_s']:.0f} / {t512['tokens_per_s']:.0f}",
            b512["tokens_per_s"] / t512["tokens_per_s"],
            "brain-like: 1 target per window, Transformer: T; ratio at T 512"),
    ]


def target_rows(m: dict) -> list:
    rate = m["matmul_flops_per_s"]
    rows = []
    for key, name in (("batched", "brain-like sparse B 32 T 128"), ("tr128", "Transformer B 32 T 128")):
        frac = m[key]["train_flops"] / m[key]["step_s"] / rate
        rows.append(target(f"matmul FLOP rate, {name}", ">= 50% of matmul rate",
                           f"{frac:.0%} ({m[key]['train_flops'] / m[key]['step_s'] / 1e9:.0f} "
                           f"of {rate / 1e9:.0f} GFLOP/s)", frac >= 0.5))
    ratio = m["dense"]["peak_fb_bytes"] / m["batched"]["peak_fb_bytes"]
    rows.append(target("sparse vs dense peak memory, B 32", ">= 20x less", f"{ratio:.0f}x",
                       ratio >= 20))
    for key, name in (("brain", "brain-like default"), ("tr", "Transformer default")):
        ours, ref = m["torch"][key]["ours"], m["torch"][key]["torch"]
        rows.append(target(f"step time vs PyTorch eager, {name} B {ours['batch']}",
                           "<= PyTorch", f"{ours['step_s'] * 1e3:.0f} ms vs "
                           f"{ref['step_s'] * 1e3:.0f} ms ({ours['step_s'] / ref['step_s']:.2f}x)",
                           ours["step_s"] <= ref["step_s"]))
        rows.append(target(f"peak memory vs PyTorch eager, {name}", "<= 0.5 x PyTorch",
                           f"{fmt_bytes(ours['peak_bytes'])} vs {fmt_bytes(ref['peak_bytes'])} "
                           f"({ours['peak_bytes'] / ref['peak_bytes']:.2f}x)",
                           ours["peak_bytes"] <= 0.5 * ref["peak_bytes"]))
        if "traced_peak_bytes" in ours:
            rows.append(target(f"memory accounting: tracemalloc / peak RSS delta, {name}",
                               "~1", f"{fmt_bytes(ours['traced_peak_bytes'])} / "
                               f"{fmt_bytes(ours['peak_bytes'])} = "
                               f"{ours['traced_peak_bytes'] / ours['peak_bytes']:.2f}", None))
    return rows


def target(quantity, goal, measured, met):
    return {"quantity": quantity, "target": goal, "measured": measured,
            "met": None if met is None else bool(met)}


# ---------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    mc = result["machine"]
    lines = [f"Machine: {mc['cpu']}, {mc['cores']} cores{', ' + mc['gpu'] if 'gpu' in mc else ''}; "
             f"backend `{mc['backend']}`, sparse ops `{mc['ops']}`; "
             f"matmul {result['measurements']['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s (float32 2048³).  ",
             f"Command: `{result['command']}` ({result['duration_s'] / 60:.1f} min, BLAS/OpenMP "
             f"threads {mc['threads']}). Times are the best of their repeats; CPU pressure "
             f"from other work at start / end: `{result['cpu_pressure'][0]}` / "
             f"`{result['cpu_pressure'][1]}`.", "",
             "| # | quantity | design note | measured | measured / note | how |",
             "|---|---|---|---|---|---|"]
    for r in result["claims"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2g}"
        lines.append(f"| {r['claim']} | {r['quantity']} | {r['note']} | {r['measured']} | "
                     f"{ratio} | {r['comment']} |")
    lines += ["", "Memory of one training step at B = 32 (backend accounting):", "",
              "| model | params | grads | AdamW | activations | total | AdamW update transient |",
              "|---|---|---|---|---|---|---|"]
    m = result["measurements"]
    for key, _ in MEMORY_TABLE:
        s = m[key]
        note = " (extrapolated)" if "extrapolated_from" in s else ""
        transient = m["update_transient"][s["subject"]]
        lines.append(f"| {s['subject']}{note} | {fmt_bytes(s['params_bytes'])} | "
                     f"{fmt_bytes(s['grads_bytes'])} | {fmt_bytes(s['adamw_bytes'])} | "
                     f"{fmt_bytes(s['activation_bytes'])} | {fmt_bytes(s['training_bytes'])} | "
                     f"{fmt_bytes(transient)} |")
    lines += ["", "Targets:", "", "| quantity | target | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(f"| {t['quantity']} | {t['target']} | {t['measured']} | {met} |")
    return "\n".join(lines) + "\n"


def plot(points: dict, budget: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in sorted(points.items()):
        Bs, mem = zip(*sorted(set(pts)))
        ax.plot(Bs, np.array(mem) / GIB, "o-", label=label, markersize=4)
    ax.axhline(budget / GIB, color="grey", linestyle="--", label="budget")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="GiB",
           title="Training memory: parameters + AdamW + peak of forward/backward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one repeat, extrapolate the slowest sizes (a few minutes)")
    parser.add_argument("--budget-gb", type=float, default=2.0,
                        help="memory budget (GiB) for the largest-batch search (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    start, pressure_at_start = time.perf_counter(), cpu_pressure()
    backend = get_backend()
    lab = Lab(backend, args.quick)
    measurements = measure_all(lab, args)
    result = {"machine": machine(backend), "command": "python " + " ".join(
                  [str(Path(sys.argv[0]))] + sys.argv[1:]),
              "quick": args.quick, "budget_gib": args.budget_gb,
              "cpu_pressure": [pressure_at_start, cpu_pressure()],
              "measurements": measurements, "memory_points": lab.points}
    result["claims"] = claim_rows(measurements, args)
    result["targets"] = target_rows(measurements)
    result["duration_s"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claims.json").write_text(json.dumps(result, indent=1))
    (args.out / "claims.md").write_text(markdown(result))
    plot(lab.points, int(args.budget_gb * GIB), args.out / "memory_vs_batch.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
