"""Measure each claim of the design note (docs/design.md; docs:
bench/README.md) in one run; write claims.json, claims.md and memory_vs_batch.png
(to bench/results/ unless --out says otherwise).

    python bench/claims.py --quick            # a few minutes on 2 CPU cores
    python bench/claims.py                    # the run behind the README table
    BRAINLIKE_BACKEND=cupy python bench/claims.py   # CuPy and torch CUDA (untested)

The model measurements run in this process (bench/lab.py: the backend's memory
accounting). PyTorch allocations are invisible to that accounting, so the PyTorch
comparison runs each side in a fresh process (measure.in_fresh_process) and compares
peak resident memory deltas.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import measure
from brainlike_np.backends import get_backend
from brainlike_np.models import get_model, get_preset
from brainlike_np.data import random_batch
from lab import (Lab, Subject, linear_fit, matmul_rate, max_batch, nbytes, note_subjects,
                 split)
from measure import GIB, fmt_bytes, log

NOTE_BATCH = 32
IMPLS = ("ours", "torch")
SMALL_BATCHES = (1, 2, 4, 8)
GRAD_ACCUM = 8          # the --grad-accum of the largest-batch table's accumulated row
# (measurement, subject) pairs in the memory-split table
MEMORY_TABLE = (("batched", "brain128"), ("recompute", "recompute128"), ("dense", "dense128"),
                ("brain512", "brain512"), ("tr128", "tr128"), ("tr512", "tr512"))

# The design note's figures: key -> (claim number, what the note says, the number a
# measurement is divided by in the "measured / note" column; None: no such number).
NOTE_FIGURES = {
    "loop_vs_batched_time": (1, "t_batch << 32 t_single", None),
    "loop_peak": (1, "5.25M floats (~20 MB)", 21e6),
    "batched_peak": (1, "67M floats (~268 MB)", 268e6),
    "dense_over_sparse_peak": (2, "33x less", 33),
    "dense_over_sparse_time": (2, "—", None),
    "transformer_activations": (3, "~1 GB", 1e9),
    "brainlike_activations": (3, "~100 MB", 100e6),
    "activation_ratio": (3, "10x", 10),
    "transformer_training_512": (4, "~5 GB", 5e9),
    "brainlike_training_512": (4, "~200 MB", 200e6),
    "max_batch_ratio": (4, "25x (6400 / 256 in 40 GB)", 25),
    "max_batch_40gib": (4, "6400 / 256", 25),
    "max_batch_grad_accum": (4, "—", None),
    "vectorization": (5, "10x+ faster", 10),
    "sequences_per_s": (5, "brain-like \"may even be faster\"", 1),
    "tokens_per_s": (5, "—", 1),
}


# ---------------------------------------------------------------------------------
# the measurements
# ---------------------------------------------------------------------------------
def measure_all(lab: Lab, args) -> dict:
    """Every measurement the claims need, as plain numbers."""
    quick, subjects = args.quick, note_subjects()
    reps = 1 if quick else 3
    rate_at_start = matmul_rate(lab.backend)
    m = {}
    m["batched"] = lab.step(subjects["brain128"], NOTE_BATCH, reps)
    m["recompute"] = lab.step(subjects["recompute128"], NOTE_BATCH, reps)
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
    m["grad_accum"] = accumulated_max_batch(lab, subjects["brain512"], budget, tolerance)
    m["update_transient"] = {m[k]["subject"]: lab.update_transient(subjects[s])
                             for k, s in MEMORY_TABLE}
    m["torch"] = compare_with_torch(repeats=3 if quick else 5, rounds=1 if quick else 3,
                                    forced_blas_kernel=args.forced_blas_kernel)
    log("PyTorch comparison done")
    # the best of two: a rate measured while other work runs is too low
    m["matmul_flops_per_s"] = max(rate_at_start, matmul_rate(lab.backend))
    return m


def accumulated_max_batch(lab, subject, budget: int, tolerance: float) -> dict:
    """The largest batch of ``--grad-accum GRAD_ACCUM`` under ``budget``: the largest
    micro-batch under the budget less one gradient accumulator (the parameters' size),
    then the accumulated step's memory measured at it."""
    accumulator = nbytes(lab.params(subject))
    micro = max_batch(lab, subject, budget - accumulator, tolerance)
    peak = lab.fixed_bytes(subject) + lab.accumulated_peak(subject, micro, GRAD_ACCUM)
    log(f"--grad-accum {GRAD_ACCUM} {subject.label}: {GRAD_ACCUM} x {micro}, {fmt_bytes(peak)}")
    return {"n": GRAD_ACCUM, "micro_batch": micro, "training_bytes": peak}


def scaled_from_one(lab, subject) -> dict:
    """Quick mode: the dense step at B = 1, scaled by 32 (overestimates the fixed part)."""
    one = lab.step(subject, 1, 1)
    out = split(subject, NOTE_BATCH, one["params_bytes"],
                one["grads_bytes"] + NOTE_BATCH * one["activation_bytes"],
                NOTE_BATCH * one["step_s"])
    out["extrapolated_from"] = [1]
    return out


def compare_with_torch(repeats: int, rounds: int, forced_blas_kernel: bool) -> dict:
    """Default presets at their default batch: our forward + backward and PyTorch eager's,
    each measured in fresh processes; the timing rounds alternate between the two so
    that both see the same load. Time runs with the allocator's defaults (what a user
    gets), memory with glibc returning freed blocks at once."""
    subjects = {"brain": Subject("brain-like default", "brainlike", get_preset("brainlike", "default")),
                "tr": Subject("Transformer default", "transformer",
                              get_preset("transformer", "default"))}
    B = get_model("brainlike").BATCH_SIZES["default"]

    def run(impl, subject, what, reps):
        spec = {"impl": impl, "subject": subject.to_spec(), "batch": B, "repeats": reps,
                "measure": what}
        env = measure.worker_env(what, ours=impl == "ours")
        return measure.in_fresh_process(Path(__file__), spec, env=env,
                                        forced_blas_kernel=forced_blas_kernel)

    out = {}
    for key, s in subjects.items():
        times = {impl: [] for impl in IMPLS}
        for _ in range(rounds):
            for impl in IMPLS:
                times[impl].append(run(impl, s, "time", repeats)["step_s"])
        out[key] = {impl: {"batch": B, "step_s": min(times[impl]),
                           **run(impl, s, "memory", 1)} for impl in IMPLS}
    return out


# ---------------------------------------------------------------------------------
# one step in a fresh process (ours or PyTorch's)
# ---------------------------------------------------------------------------------
def worker(spec: dict) -> dict:
    """One forward + backward of ``spec`` in our code or PyTorch, warmed up; returns its
    best time (``spec["measure"] == "time"``) or its peak memory."""
    backend = get_backend()
    subject = Subject.from_spec(spec["subject"])
    step, sync = (torch_step if spec["impl"] == "torch" else our_step)(subject, spec, backend)
    step()                                                   # warm-up (allocator, JIT)
    if spec["measure"] == "time":
        return {"step_s": measure.best_time(sync, step, spec["repeats"])}
    if backend.name == "cupy":      # device memory: each library's own allocator count
        return {"peak_bytes": (measure.torch_cuda_peak(step) if spec["impl"] == "torch"
                               else measure.traced_peak(backend, step))}
    out = {"peak_bytes": measure.resident_peak(step)}
    if spec["impl"] == "ours":
        out["traced_peak_bytes"] = measure.traced_peak(backend, step)
    return out


def our_step(subject, spec, backend):
    p = subject.module.init_params(subject.cfg, backend, seed=0)
    x, y = (backend.asarray(a) for a in random_batch(spec["batch"], subject.cfg.context,
                                                     subject.cfg.vocab_size))
    return lambda: subject.loss_and_grads(p, x, y, backend.ops), backend.synchronize


def torch_step(subject, spec, backend):
    import torch

    import torch_ref
    cuda = backend.name == "cupy"
    device = "cuda" if cuda else "cpu"
    host = subject.module.init_params(subject.cfg, get_backend("numpy"), seed=0)
    p = torch_ref.to_torch({n: np.asarray(v) for n, v in host.items()}, torch.float32, device)
    x, y = (torch.from_numpy(a).to(device) for a in random_batch(
        spec["batch"], subject.cfg.context, subject.cfg.vocab_size))
    return (lambda: torch_ref.loss_and_grads(subject.kind, p, x, y, subject.cfg),
            torch.cuda.synchronize if cuda else (lambda: None))


# ---------------------------------------------------------------------------------
# the claims and targets
# ---------------------------------------------------------------------------------
def claim(key, quantity, measured, value=None, comment=""):
    """A row of the claims table: the note's figure for ``key`` next to the measurement;
    "measured / note" is ``value`` over the note's number."""
    number, note, divisor = NOTE_FIGURES[key]
    ratio = None if divisor is None or value is None else value / divisor
    return {"claim": number, "quantity": quantity, "note": note, "measured": measured,
            "ratio": ratio, "comment": comment}


def claim_rows(m: dict, args) -> list:
    b, r, loop, dense = m["batched"], m["recompute"], m["loop"], m["dense"]
    b512, t128, t512 = m["brain512"], m["tr128"], m["tr512"]
    mb, budget, ga = m["max_batch"], f"{args.budget_gb:g} GiB", m["grad_accum"]
    dense_how = f"extrapolated from B = {', '.join(map(str, dense['extrapolated_from']))}"
    t512_how = (f"extrapolated from B = {', '.join(map(str, t512['extrapolated_from']))}"
                if "extrapolated_from" in t512 else "measured at B = 32")
    at40 = {k: (40 * GIB - m["per_sample_bytes"][k][1]) / m["per_sample_bytes"][k][0]
            for k in mb}
    speedup = loop["step_s"] / b["step_s"]
    dense_ratio = dense["peak_fb_bytes"] / b["peak_fb_bytes"]
    act_ratio = t128["activation_bytes"] / b["activation_bytes"]
    return [
        claim("loop_vs_batched_time", "step time, B = 32 (brain-like sparse, note sizes)",
              f"loop {loop['step_s']:.2f} s, batched {b['step_s']:.2f} s",
              comment="loop = 32 calls at B = 1, gradients summed"),
        claim("loop_peak", "peak memory, per-sample loop", fmt_bytes(loop["peak_fb_bytes"]),
              loop["peak_fb_bytes"], "forward + backward above the parameters, gradients included"),
        claim("batched_peak", "peak memory, batched B = 32", fmt_bytes(b["peak_fb_bytes"]),
              b["peak_fb_bytes"], "same accounting"),
        claim("dense_over_sparse_peak", "peak memory, dense / sparse path, B = 32",
              f"{dense_ratio:.0f}x less ({fmt_bytes(dense['peak_fb_bytes'])} vs "
              f"{fmt_bytes(b['peak_fb_bytes'])})", dense_ratio, f"dense {dense_how}"),
        claim("dense_over_sparse_time", "step time, dense / sparse path, B = 32",
              f"sparse {dense['step_s'] / b['step_s']:.0f}x faster "
              f"({dense['step_s']:.0f} s vs {b['step_s']:.2f} s)", comment=f"dense {dense_how}"),
        claim("transformer_activations", "activations, Transformer, B 32 T 128 (12 x d 512)",
              fmt_bytes(t128["activation_bytes"]), t128["activation_bytes"]),
        claim("brainlike_activations", "activations, brain-like, B 32 T 128",
              fmt_bytes(b["activation_bytes"]), b["activation_bytes"]),
        claim("activation_ratio", "activations, Transformer / brain-like", f"{act_ratio:.1f}x",
              act_ratio),
        claim("brainlike_activations", "activations, brain-like --recompute, B 32 T 128",
              fmt_bytes(r["activation_bytes"]), r["activation_bytes"],
              f"step {r['step_s']:.2f} s vs {b['step_s']:.2f} s without"),
        claim("activation_ratio", "activations, Transformer / brain-like --recompute",
              f"{t128['activation_bytes'] / r['activation_bytes']:.1f}x",
              t128["activation_bytes"] / r["activation_bytes"]),
        claim("transformer_training_512", "training memory, Transformer B 32 T 512",
              fmt_bytes(t512["training_bytes"]), t512["training_bytes"],
              f"params + grads + AdamW + activations; {t512_how}"),
        claim("brainlike_training_512", "training memory, brain-like B 32 T 512",
              fmt_bytes(b512["training_bytes"]), b512["training_bytes"],
              f"at T 128: {fmt_bytes(b['training_bytes'])}"),
        claim("max_batch_ratio", f"largest batch in {budget}, T 512: brain-like / Transformer",
              f"{mb['brain512'] / max(mb['tr512'], 1):.0f}x ({mb['brain512']} / {mb['tr512']})",
              mb["brain512"] / max(mb["tr512"], 1),
              f"T 128: {mb['brain128']} / {mb['tr128']}; measured by bisection"),
        claim("max_batch_40gib", "largest batch in 40 GiB, T 512 (linear from measured points)",
              f"{at40['brain512']:.0f} / {at40['tr512']:.0f}", at40["brain512"] / at40["tr512"],
              "extrapolated, not run"),
        claim("max_batch_grad_accum", f"largest batch in {budget}, T 512: brain-like "
              f"--grad-accum {ga['n']}", f"{ga['n'] * ga['micro_batch']} ({ga['n']} x "
              f"{ga['micro_batch']}), {fmt_bytes(ga['training_bytes'])}",
              comment=f"{ga['n'] * ga['micro_batch'] / max(mb['brain512'], 1):.0f}x the "
                      "largest single batch; the same update, one micro-batch's activations "
                      "plus a gradient accumulator, measured"),
        claim("vectorization", "vectorization: loop / batched step time", f"{speedup:.1f}x",
              speedup),
        claim("sequences_per_s", "training throughput, sequences/s (T 128 / T 512)",
              f"brain-like {b['sequences_per_s']:.1f} / {b512['sequences_per_s']:.1f}; "
              f"Transformer {t128['sequences_per_s']:.1f} / {t512['sequences_per_s']:.2f}",
              b512["sequences_per_s"] / t512["sequences_per_s"],
              "ratio: brain-like / Transformer at T 512"),
        claim("tokens_per_s", "training throughput, supervised tokens/s (T 128 / T 512)",
              f"brain-like {b['tokens_per_s']:.1f} / {b512['tokens_per_s']:.1f}; "
              f"Transformer {t128['tokens_per_s']:.0f} / {t512['tokens_per_s']:.0f}",
              b512["tokens_per_s"] / t512["tokens_per_s"],
              "brain-like: 1 target per window, Transformer: T; ratio at T 512"),
    ]


def target_rows(m: dict) -> list:
    rate = m["matmul_flops_per_s"]
    rows = []
    for key, name in (("batched", "brain-like sparse B 32 T 128"),
                      ("tr128", "Transformer B 32 T 128")):
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
    lines = [measure.machine_line(mc) + f"; backend `{mc['backend']}`, sparse ops `{mc['ops']}`; "
             f"matmul {result['measurements']['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s "
             f"(float32 2048³).  ",
             f"Command: `{result['command']}` ({result['duration_s'] / 60:.1f} min). Times are "
             f"the best of their repeats. {measure.load_line(result['load'])}", "",
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
    plt = measure.pyplot()
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


def machine(backend) -> dict:
    info = {**measure.environment(), "backend": backend.name, "ops": backend.ops.name}
    if backend.name == "cupy":
        info["gpu"] = backend._native.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one repeat, extrapolate the slowest sizes (a few minutes)")
    parser.add_argument("--budget-gb", type=float, default=2.0,
                        help="memory budget (GiB) for the largest-batch search (default 2)")
    parser.add_argument("--out", type=Path, default=measure.RESULTS, help="output folder")
    measure.add_worker_arguments(parser)
    args = parser.parse_args(argv)
    if measure.start(args, worker):
        return 0
    start, load_at_start = time.perf_counter(), measure.machine_load()
    backend = get_backend()
    lab = Lab(backend)
    measurements = measure_all(lab, args)
    result = {"machine": machine(backend), "command": measure.command_line(),
              "quick": args.quick, "budget_gib": args.budget_gb,
              "load": {"start": load_at_start, "end": measure.machine_load()},
              "measurements": measurements, "memory_points": lab.points}
    result["claims"] = claim_rows(measurements, args)
    result["targets"] = target_rows(measurements)
    result["duration_s"] = time.perf_counter() - start
    measure.write_json(args.out / "claims.json", result)
    (args.out / "claims.md").write_text(markdown(result))
    plot(lab.points, int(args.budget_gb * GIB), args.out / "memory_vs_batch.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
