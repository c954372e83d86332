"""Time one full training step (forward, backward, clipping, AdamW) of a preset with the
sparse hot path on the array-API reference vs the Numba kernels, side by side.

    python bench/train_step.py                    # default preset, batch 64
    python bench/train_step.py --preset seed --batch-size 32 --repeats 5

Both variants run in one process on the same parameters and batch, taking turns, after
warm-up steps (Numba compiles on first use); the report is the median step time of
each and their ratio. Results go to bench/results/train_step-<backend>-<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from brainlike_np import model
from brainlike_np.backends import get_backend
from brainlike_np.config import PRESET_BATCH_SIZE, preset
from brainlike_np.optim import AdamW, clip_by_global_norm

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("reference", "numba")


def make_stepper(kernels, cfg, x, y):
    backend = get_backend(kernels=kernels)
    params = model.init_params(cfg, backend, seed=0)
    optimizer = AdamW(no_decay=model.NO_DECAY)
    xb, yb = backend.asarray(x), backend.asarray(y)

    def step():
        nonlocal params
        _, grads = model.loss_and_grads(params, xb, yb, cfg, backend.ops)
        grads, _ = clip_by_global_norm(grads, 1.0)
        params = optimizer.update(params, grads, 1e-3)
        backend.synchronize()

    return backend, step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    cfg = preset(args.preset)
    B = args.batch_size or PRESET_BATCH_SIZE[args.preset]
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (B, cfg.context))
    y = rng.integers(0, cfg.vocab_size, B)
    steppers = {v: make_stepper(v, cfg, x, y) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for _ in range(2):                                   # warm-up (compilation)
        for _, step in steppers.values():
            step()
    for _ in range(args.repeats):                        # take turns
        for v, (_, step) in steppers.items():
            t0 = time.perf_counter()
            step()
            times[v].append(time.perf_counter() - t0)
    median = {v: statistics.median(t) for v, t in times.items()}
    backend = steppers["numba"][0]
    result = {
        "preset": args.preset, "config": cfg.to_dict(), "batch_size": B,
        "backend": backend.name, "kernels": {v: s[0].ops.name for v, s in steppers.items()},
        "median_step_s": median, "all_step_s": times,
        "reference_over_kernels": median["reference"] / median["numba"],
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
        "command": f"python bench/train_step.py --preset {args.preset} --batch-size {B} "
                   f"--repeats {args.repeats}",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"train_step-{backend.name}-{args.preset}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| preset | batch | reference step (s) | kernel step (s) | reference / kernels |\n"
          f"|---|---|---|---|---|\n"
          f"| {args.preset} | {B} | {median['reference']:.3f} | {median['numba']:.3f} | "
          f"{result['reference_over_kernels']:.2f}x |\n(written to {out})")


if __name__ == "__main__":
    main()
