"""This library or PyTorch? Step time and peak step memory of a full brain-like training
step (forward, backward, gradient clipping, AdamW) against batch size, at the default
and seed presets and the design note's model (``note``, five steps) at its batch; writes
vs_torch.json, vs_torch.md and vs_torch.png (to bench/results/ unless --out says
otherwise).

    python bench/vs_torch.py --quick --out /tmp/vs_torch   # about a minute: checks it runs
    python bench/vs_torch.py                               # the comparison

Each implementation x batch runs in its own fresh process (two allocators in one process
distort each other), twice: once timed, with the allocator's defaults (the best of
``--steps`` steps after warm-up), once for memory, with glibc returning freed blocks at
once (the peak resident-memory delta of one step; for ours also the backend's traced
peak). The timing rounds alternate the order of the implementations.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import measure
from brainlike_np import TrainSettings, TrainState
from brainlike_np.backends import backend_is_available, get_backend
from brainlike_np.data import random_batch
from brainlike_np.models import brainlike as model
from measure import MIB, log

IMPLEMENTATIONS = {
    "ours": "this library, numpy backend: TrainState.train_step",
    "ours recompute": "the same, recompute=True in the config",
    "ours jax": "this library, jax backend: TrainState.train_step, the whole step one "
                "jax.jit program (Backend.compile_step)",
    "ours torch": "this library, torch backend (eager): TrainState.train_step on PyTorch "
                  "tensors",
    "ours torch compile": "the same, the step under torch.compile through the same hook "
                          "(Backend.compile_step)",
    "torch": "PyTorch eager, the same weights and step (torch_ref.train_step)",
    "torch checkpoint": "PyTorch eager, torch.utils.checkpoint over each interaction step",
    "torch compile": "PyTorch, the loss under torch.compile",
}
BATCHES = {"default": (16, 64, 256), "seed": (8, 32, 128), "note": (64,)}
QUICK_BATCHES = {"default": (2, 8), "seed": (1,)}
WARMUP_STEPS = 2
LR = 1e-3


OUR_BACKENDS = {"ours": "numpy", "ours recompute": "numpy", "ours jax": "jax",
                "ours torch": "torch", "ours torch compile": "torch"}


# ---------------------------------------------------------------------------------
# one implementation at one batch, in a fresh process
# ---------------------------------------------------------------------------------
def worker(spec: dict) -> dict:
    cfg = model.PRESETS[spec["preset"]]
    x, y = random_batch(spec["batch"], cfg.context, cfg.vocab_size)
    make = our_step if spec["impl"].startswith("ours") else torch_step
    step, backend = make(spec["impl"], cfg, x, y)
    for _ in range(WARMUP_STEPS):                # Numba's cache, torch.compile, AdamW state
        step()
    if spec["measure"] == "time":
        out = {"step_s": measure.best_time(lambda: None, step, spec["steps"])}
        if backend is None:          # PyTorch's own thread pool, unseen by threadpoolctl
            import torch
            out["torch_threads"] = torch.get_num_threads()
        return out
    out = {"rss_peak_bytes": measure.resident_peak(step)}
    if backend is not None and backend.name == "numpy":   # others: no exact array accounting
        out["traced_peak_bytes"] = measure.traced_peak(backend, step)
    return out


def our_step(impl, cfg, x, y):
    """-> (one training step, the backend: it returns the loss as a float, so it waits)."""
    if impl == "ours recompute":
        cfg = dataclasses.replace(cfg, recompute=True)
    backend = get_backend(OUR_BACKENDS[impl])
    if impl == "ours torch compile":
        backend.compile_step = torch_compile_step
    state = TrainState.create("brainlike", cfg, backend, TrainSettings(seed=0))
    return (lambda: state.train_step(x, y, LR)), backend


def torch_compile_step(fn, donate_argnums=(), key=None):
    """``Backend.compile_step`` by ``torch.compile`` (which has no donation)."""
    import torch
    return torch.compile(fn)


def torch_step(impl, cfg, x, y):
    """-> (one training step on the same weights, no backend)."""
    import torch

    import torch_ref
    host = model.init_params(cfg, get_backend("numpy"), seed=0)
    p = torch_ref.to_torch(host, torch.float32)
    step = torch_ref.train_step("brainlike", p, cfg, model.NO_DECAY,
                                compile=impl == "torch compile",
                                checkpoint_steps=impl == "torch checkpoint")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return (lambda: step(xt, yt)), None


# ---------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------
def skip_reasons(quick: bool) -> dict:
    """Implementation -> why it is not measured in this run."""
    reasons = {}
    for impl, name in OUR_BACKENDS.items():
        available, why = backend_is_available(name)
        if not available:
            reasons[impl] = f"the {name} backend is not available here ({why})"
    if quick and "ours torch compile" not in reasons:
        reasons["ours torch compile"] = "--quick: compiling takes tens of seconds in every process"
    if measure.installed_version("torch") is None:
        reasons.update({impl: "PyTorch is not installed" for impl in IMPLEMENTATIONS
                        if impl.startswith("torch")})
    elif quick:
        reasons["torch compile"] = "--quick: compiling takes about 40 s in every process"
    return reasons


def measure_all(args, skipped: dict) -> dict:
    """preset -> batch -> implementation -> measurements (or why it was skipped)."""
    batches = args.points or (QUICK_BATCHES if args.quick else BATCHES)
    impls = [impl for impl in IMPLEMENTATIONS if impl not in skipped]

    def run(impl, preset_name, B, what):
        spec = {"impl": impl, "preset": preset_name, "batch": B, "measure": what,
                "steps": args.steps}
        env = measure.worker_env(what, ours=impl.startswith("ours"))
        try:
            return measure.in_fresh_process(Path(__file__), spec, env=env,
                                            forced_blas_kernel=args.forced_blas_kernel)
        except RuntimeError as failure:
            if impl != "torch compile":
                raise
            return {"failed": str(failure)[-1000:]}

    results = {p: {B: {impl: {"step_s_per_round": []} for impl in impls} for B in Bs}
               for p, Bs in batches.items()}
    for r in range(args.rounds):
        for p, Bs in batches.items():
            for i, B in enumerate(Bs):
                for impl in (impls if (r + i) % 2 == 0 else impls[::-1]):
                    timed = run(impl, p, B, "time")
                    results[p][B][impl]["step_s_per_round"].append(timed.get("step_s"))
                    results[p][B][impl]["blas"] = timed.get("blas")
                log(f"round {r + 1}: {p} B {B} timed")
    for p, Bs in batches.items():
        for B in Bs:
            for impl in impls:
                cell = results[p][B][impl]
                cell.update(run(impl, p, B, "memory"))
                times = [t for t in cell["step_s_per_round"] if t is not None]
                cell["step_s"] = min(times) if times else None
            log(f"{p} B {B} memory done")
    return results


# ---------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    lines = [measure.machine_line(result["machine"]) + ".  ",
             f"Command: `{result['command']}`. Time: the best of {result['steps']} steps in "
             f"each of {result['rounds']} fresh processes. {measure.load_line(result['load'])}",
             "", "| preset | batch | implementation | step ms | sequences/s | peak RSS delta "
             "| traced peak | time / torch | memory / torch |", "|---" * 9 + "|"]
    for p, by_batch in result["results"].items():
        for B, cells in by_batch.items():
            ref = cells.get("torch", {})
            for impl, cell in cells.items():
                lines.append(f"| {p} | {B} | {impl} | " + table_cells(cell, ref, int(B)) + " |")
    lines += ["", "Implementations:", ""]
    lines += [f"- **{impl}**: {what}" + (f" (skipped: {result['skipped'][impl]})"
                                         if impl in result["skipped"] else "")
              for impl, what in IMPLEMENTATIONS.items()]
    return "\n".join(lines) + "\n"


def table_cells(cell: dict, ref: dict, B: int) -> str:
    if "failed" in cell or cell.get("step_s") is None:
        return "failed | | | | | "
    t, rss = cell["step_s"], cell["rss_peak_bytes"]
    traced = f"{cell['traced_peak_bytes'] / MIB:.0f} MiB" if "traced_peak_bytes" in cell else ""
    vs_t = f"{t / ref['step_s']:.2f}x" if ref.get("step_s") else ""
    vs_m = f"{rss / ref['rss_peak_bytes']:.2f}x" if ref.get("rss_peak_bytes") else ""
    return (f"{t * 1e3:.0f} | {B / t:.1f} | {rss / MIB:.0f} MiB | {traced} | {vs_t} | {vs_m}")


def plot(results: dict, path: Path) -> None:
    plt = measure.pyplot()
    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7), squeeze=False)
    for col, (p, by_batch) in enumerate(results.items()):
        Bs = list(by_batch)
        for impl in next(iter(by_batch.values())):
            cells = [by_batch[B][impl] for B in Bs]
            ok = [(B, c) for B, c in zip(Bs, cells) if c.get("step_s") is not None]
            if not ok:
                continue
            xs = [B for B, _ in ok]
            axes[0, col].plot(xs, [c["step_s"] * 1e3 for _, c in ok], "o-", label=impl)
            axes[1, col].plot(xs, [c["rss_peak_bytes"] / MIB for _, c in ok], "o-", label=impl)
        axes[0, col].set(title=f"{p} preset", ylabel="step time (ms)")
        axes[1, col].set(xlabel="batch size", ylabel="peak step memory, RSS delta (MiB)")
        for ax in axes[:, col]:
            ax.set(xscale="log", yscale="log")
            ax.legend(fontsize=8)
    fig.suptitle("Full training step: this library vs PyTorch (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_points(text: str) -> dict:
    """"default:64,seed:32" -> {"default": (64,), "seed": (32,)}."""
    points = {}
    for item in text.split(","):
        preset, _, batch = item.partition(":")
        if preset not in BATCHES or not batch.isdigit() or int(batch) < 1:
            raise argparse.ArgumentTypeError(
                f"'{item}' is not PRESET:BATCH with PRESET one of {', '.join(BATCHES)}")
        points[preset] = points.get(preset, ()) + (int(batch),)
    return points


def parse_impls(text: str) -> list:
    """'ours,torch compile' -> those names of IMPLEMENTATIONS."""
    impls = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in impls if name not in IMPLEMENTATIONS]
    if unknown or not impls:
        raise argparse.ArgumentTypeError(
            f"unknown implementation(s) {unknown or text!r}; choose from: "
            f"{', '.join(IMPLEMENTATIONS)}")
    return impls


def format_points(points: dict) -> str:
    return ",".join(f"{p}:{B}" for p, Bs in points.items() for B in Bs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small batches, 1 round, 2 steps, no torch.compile (about a minute)")
    parser.add_argument("--rounds", type=int, default=3, help="timed processes per point")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--out", type=Path, default=measure.RESULTS, help="output folder")
    parser.add_argument("--points", type=parse_points, metavar="PRESET:B,...",
                        help="only these preset and batch points, e.g. default:64,seed:32 "
                             f"(default: {format_points(BATCHES)})")
    parser.add_argument("--impls", type=parse_impls, metavar="NAME,...",
                        help="only these implementations, e.g. 'ours,ours jax,torch compile' "
                             f"(default: all of {', '.join(IMPLEMENTATIONS)})")
    measure.add_worker_arguments(parser)
    args = parser.parse_args(argv)
    if measure.start(args, worker):
        return 0
    if args.quick:
        args.rounds, args.steps = 1, 2
    load_at_start = measure.machine_load()
    skipped = skip_reasons(args.quick)
    skipped.update({impl: "not asked for (--impls)" for impl in IMPLEMENTATIONS
                    if args.impls and impl not in args.impls and impl not in skipped})
    results = measure_all(args, skipped)
    result = {"machine": measure.environment(), "command": measure.command_line(),
              "quick": args.quick, "rounds": args.rounds, "steps": args.steps,
              "warmup_steps": WARMUP_STEPS, "implementations": IMPLEMENTATIONS,
              "skipped": skipped, "results": results,
              "load": {"start": load_at_start, "end": measure.machine_load()}}
    measure.write_json(args.out / "vs_torch.json", result)
    (args.out / "vs_torch.md").write_text(markdown(result))
    plot(results, args.out / "vs_torch.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
