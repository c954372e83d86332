"""The GPU check's performance stage: host reads per step, step time and peak memory
against PyTorch eager by batch size, and the kernels' bandwidth against the device's.
``stage_performance(ctx, st)`` (see gpu_report.py)."""

from __future__ import annotations

import statistics
import time

import numpy as np

from brainlike_np.backends import get_backend, host_reads
from brainlike_np.data import random_batch
from brainlike_np.models import brainlike as model
from brainlike_np.train_state import TrainState
from gpu_report import Context, Stage
from gpu_stages import device_bandwidth, device_props
from measure import traced_peak

MAX_BATCH = 2**16       # the batch sweep stops here whatever the memory says


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
    """Ours and PyTorch's forward+backward at B, 2B, 4B, ... until ours leaves the budget
    (the deadline is checked before each batch size)."""
    cfg, rows, B = model.PRESETS[preset_name], [], ctx.sizes.first_batch
    params = model.init_params(cfg, backend, seed=0)
    fixed = 3 * sum(int(p.nbytes) for p in params.values())             # params + AdamW
    while True:
        ctx.deadline.check()
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
    rows = kernel_bench.run(backend, sizes, "float32", repeats=10 if ctx.gpu else 1,
                            between=ctx.deadline.check)
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
