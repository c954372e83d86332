"""Data-parallel training step time and throughput at 1 and P ranks, and the share of the
step spent in the gradient all-reduce.

    python bench/distributed.py                          # default preset, global batch 64
    python bench/distributed.py --preset tiny --steps 50 --ranks 2
    python bench/distributed.py --quick --out /tmp/distributed.json   # checks that it runs

Each configuration runs in fresh processes on the same global batch, in ``--rounds``
rounds that take turns (so a busy neighbour on the machine slows them alike):
  - 1 process, all cores to BLAS (the plain single-process trainer);
  - 1 process, 1 BLAS thread;
  - P ranks under mpirun, 1 BLAS thread each (the ``--distributed`` path: each rank
    computes its B/P windows, then one all-reduce of the flat gradients).
Reported per configuration: the median step time (sample the global batch, loss and
gradients, all-reduce, clip, AdamW) over all rounds' ``--steps`` steps after warm-up,
tokens/s, and for P ranks the median time inside the all-reduce (this includes waiting
for the slower rank) and, separately, the all-reduce alone on the same buffer after a
barrier.
Results go to bench/results/distributed.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import measure

WARMUP_STEPS = 2
QUICK = {"preset": "tiny", "steps": 3, "rounds": 1}


# ---- one configuration (runs in the measured processes) --------------------------------
def timed_allreduce(comm, seconds: list):
    """Make ``comm.allreduce_mean`` append the time of each call to ``seconds``."""
    allreduce = comm.allreduce_mean

    def timed(flat):
        t0 = time.perf_counter()
        out = allreduce(flat)
        seconds.append(time.perf_counter() - t0)
        return out

    comm.allreduce_mean = timed


def allreduce_alone(comm, n: int, dtype: str, repeats: int = 20) -> list:
    """Times of the all-reduce of a buffer ``[n]`` once all ranks are ready."""
    flat = np.ones(n, dtype=dtype)
    times = []
    for _ in range(repeats):
        comm.world.Barrier()
        t0 = time.perf_counter()
        comm.allreduce_mean(flat)
        times.append(time.perf_counter() - t0)
    return times


def measure_rank(spec: dict) -> dict | None:
    """Train ``spec["steps"]`` steps in this process (one rank); rank 0 returns the timings."""
    from brainlike_np.backends import get_backend
    from brainlike_np.backends.distributed import SingleProcess, connect
    from brainlike_np.data import load_corpus
    from brainlike_np.models import get_preset
    from brainlike_np.train_state import TrainSettings, TrainState

    comm, backend = connect() if spec["distributed"] else (SingleProcess(), get_backend())
    corpus = load_corpus(spec["data"])
    state = TrainState.create("brainlike", get_preset("brainlike", spec["preset"]), backend,
                              TrainSettings(seed=0, dtype=spec["dtype"]))
    state.comm = comm
    in_allreduce, steps = [], []
    for step in range(WARMUP_STEPS + spec["steps"]):
        if step == WARMUP_STEPS and spec["distributed"]:
            timed_allreduce(comm, in_allreduce)
        t0 = time.perf_counter()
        x, y = state.sample_batch(corpus.train, spec["batch_size"])       # [B, T], [B]
        state.train_step(comm.local_part(x), comm.local_part(y), lr=1e-3)
        backend.synchronize()
        steps.append(time.perf_counter() - t0)
    result = {"step_s": steps[WARMUP_STEPS:], "kernels": backend.ops.name}
    if spec["distributed"]:
        n = sum(int(np.prod(p.shape)) for p in state.params.values()) + 1   # grads + loss
        result.update(allreduce_in_step_s=in_allreduce,
                      allreduce_alone_s=allreduce_alone(comm, n, spec["dtype"]),
                      buffer_floats=n)
    return result if comm.rank == 0 else None


# ---- the driver ------------------------------------------------------------------------
def mpirun_prefix(ranks: int) -> list:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("bench/distributed.py needs mpirun (apt-get install openmpi-bin) and "
                 "mpi4py (pip install -e '.[distributed]')")
    flags = ["--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        flags.append("--allow-run-as-root")
    return [mpirun, *flags, "-n", str(ranks)]


def run_configuration(args, ranks: int, threads: int) -> dict:
    """One run of the configuration in fresh processes (under mpirun for ranks > 1)."""
    spec = {"preset": args.preset, "batch_size": args.batch_size, "steps": args.steps,
            "dtype": args.dtype, "data": args.data, "distributed": ranks > 1}
    return measure.in_fresh_process(
        Path(__file__), spec, forced_blas_kernel=args.forced_blas_kernel,
        env={v: str(threads) for v in measure.THREAD_VARS},
        launcher=tuple(mpirun_prefix(ranks)) if ranks > 1 else ())


def summarize(rounds: list, ranks: int, threads: int, tokens_per_step: int) -> dict:
    """Medians over every timed step of every round of one configuration."""
    pooled = {key: [t for r in rounds for t in r[key]]
              for key in ("step_s", "allreduce_in_step_s", "allreduce_alone_s") if key in rounds[0]}
    run = {"ranks": ranks, "blas_threads": threads, "kernels": rounds[0]["kernels"],
           "blas": rounds[0]["blas"],                    # rank 0's libraries, as it ran
           **{key: statistics.median(times) for key, times in pooled.items()},
           "step_s_per_round": [statistics.median(r["step_s"]) for r in rounds]}
    run["tokens_per_s"] = tokens_per_step / run["step_s"]
    if ranks > 1:
        run["buffer_floats"] = rounds[0]["buffer_floats"]
        run["allreduce_share"] = run["allreduce_in_step_s"] / run["step_s"]
    return run


def report(run: dict) -> str:
    line = (f"{run['ranks']} rank(s) x {run['blas_threads']} BLAS thread(s): step "
            f"{run['step_s'] * 1e3:8.1f} ms, {run['tokens_per_s']:9,.0f} tokens/s")
    if run["ranks"] > 1:
        line += (f", all-reduce {run['allreduce_in_step_s'] * 1e3:.1f} ms in the step "
                 f"({run['allreduce_share']:.1%}), {run['allreduce_alone_s'] * 1e3:.2f} ms "
                 f"alone ({run['buffer_floats']:,} floats)")
    return line


def drive(args) -> None:
    from brainlike_np.models import brainlike

    args.batch_size = args.batch_size or brainlike.BATCH_SIZES[args.preset]
    args.context = brainlike.PRESETS[args.preset].context
    cores = os.cpu_count()
    load_at_start = measure.machine_load()
    configurations = ((1, cores), (1, 1), (args.ranks, 1))
    rounds = {c: [] for c in configurations}
    for _ in range(args.rounds):
        for ranks, threads in configurations:
            rounds[ranks, threads].append(run_configuration(args, ranks, threads))
    runs = [summarize(rounds[c], *c, args.batch_size * args.context) for c in configurations]
    for run in runs:
        print(report(run))
    best_single = min(r["step_s"] for r in runs if r["ranks"] == 1)
    result = {
        "preset": args.preset, "config": brainlike.PRESETS[args.preset].to_dict(),
        "global_batch": args.batch_size, "dtype": args.dtype, "steps": args.steps,
        "rounds": args.rounds,
        "data": args.data or "stdlib sources", "runs": runs,
        "speedup_vs_best_single_process": best_single / runs[-1]["step_s"],
        "machine": measure.environment(),
        "load": {"start": load_at_start, "end": measure.machine_load()},
        "command": measure.command_line(),
    }
    print(f"{args.ranks} ranks vs the best single process: "
          f"{result['speedup_vs_best_single_process']:.2f}x")
    measure.write_json(args.out or measure.RESULTS / "distributed.json", result)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch-size", type=int, help="the global batch (default: the preset's)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each configuration")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--data", help="a text file (default: the Python stdlib sources)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK['steps']} steps of the {QUICK['preset']} preset, "
                         f"{QUICK['rounds']} round: checks that it runs")
    ap.add_argument("--out", type=Path, help="JSON path")
    measure.add_worker_arguments(ap)
    args = ap.parse_args()
    if measure.start(args, measure_rank):
        return 0
    if args.quick:
        vars(args).update(QUICK)
    drive(args)


if __name__ == "__main__":
    main()
