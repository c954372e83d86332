"""Time one full training step (``TrainState.train_step``: forward, backward, clipping,
AdamW) of a preset with the sparse hot path on the array-API reference vs the Numba
kernels, side by side.

    python bench/train_step.py                    # default preset, batch 64
    python bench/train_step.py --preset seed --batch-size 32 --repeats 5
    python bench/train_step.py --quick --out /tmp/train_step.json   # seconds: checks it runs

Both variants run in one process (one library, two sets of kernels) on the same
parameters and batch, taking turns, after warm-up steps (Numba compiles on first use);
the report is the median step time of each and their ratio. Results go to
bench/results/train_step-<backend>-<preset>.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import measure
from brainlike_np import TrainSettings, TrainState
from brainlike_np.backends import get_backend
from brainlike_np.data import random_batch
from brainlike_np.models import brainlike

VARIANTS = ("reference", "numba")
QUICK_BATCH, QUICK_REPEATS = 8, 2


def make_stepper(kernels, cfg, x, y):
    """(backend, a function running one training step and waiting for it)."""
    backend = get_backend(kernels=kernels)
    state = TrainState.create("brainlike", cfg, backend, TrainSettings(seed=0))

    def step():
        state.train_step(x, y, lr=1e-3)
        backend.synchronize()

    return backend, step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--quick", action="store_true",
                    help=f"batch {QUICK_BATCH}, {QUICK_REPEATS} repeats: checks that it runs")
    ap.add_argument("--out", type=Path, help="JSON path")
    measure.add_blas_argument(ap)
    args = ap.parse_args(argv)
    measure.use_native_blas_kernel(args.forced_blas_kernel)
    load_at_start = measure.machine_load()
    cfg = brainlike.PRESETS[args.preset]
    B = args.batch_size or (QUICK_BATCH if args.quick else brainlike.BATCH_SIZES[args.preset])
    repeats = QUICK_REPEATS if args.quick else args.repeats
    x, y = random_batch(B, cfg.context, cfg.vocab_size)
    steppers = {v: make_stepper(v, cfg, x, y) for v in VARIANTS}
    times = measure.take_turns({v: step for v, (_, step) in steppers.items()}, repeats,
                               sync=lambda: None, warmup=2)
    median = {v: statistics.median(t) for v, t in times.items()}
    backend = steppers["numba"][0]
    result = {
        "preset": args.preset, "config": cfg.to_dict(), "batch_size": B,
        "backend": backend.name, "kernels": {v: s[0].ops.name for v, s in steppers.items()},
        "median_step_s": median, "all_step_s": times,
        "reference_over_kernels": median["reference"] / median["numba"],
        "machine": measure.environment(),
        "load": {"start": load_at_start, "end": measure.machine_load()},
        "command": measure.command_line(),
    }
    out = args.out or measure.RESULTS / f"train_step-{backend.name}-{args.preset}.json"
    measure.write_json(out, result)
    print(f"| preset | batch | reference step (s) | kernel step (s) | reference / kernels |\n"
          f"|---|---|---|---|---|\n"
          f"| {args.preset} | {B} | {median['reference']:.3f} | {median['numba']:.3f} | "
          f"{result['reference_over_kernels']:.2f}x |\n(written to {out})")


if __name__ == "__main__":
    main()
