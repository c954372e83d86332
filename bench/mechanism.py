"""The diagnostics that found why the brain-like model's interaction steps hurt (issue 24,
"The mechanism"): train brain-like configs for some steps and, at a few points along the
way, measure on fixed validation windows

- the validation loss;
- the encoder's gradient norm (E, P, b_e together), mean over the validation batches;
- the decoder-path ablations: the loss added by removing the direct path a_j W_dec[idx_j]
  (W_dec = 0) and by removing the pooled-state path (W_r = 0);
- the random top-k penalty: the loss added by choosing the active neurons at random
  (``selection="random"``) instead of by z, at evaluation;
- the neuron-usage perplexity: exp of the entropy of how often each neuron is active,
  out of N (N = uniform use), and the active neurons two neighbouring windows share;
- the correlation between the activation the decoder reads (the last state's) and the
  encoder's sigmoid(z[idx]), over every (window, active neuron).

    python bench/mechanism.py --quick                  # seconds: checks the plumbing
    python bench/mechanism.py                          # bench/README's table: S = 0; note and
                                                       # B + C at S = 5; the default; 300 steps
    python bench/mechanism.py --steps 1200 --evals 4   # the same over the trainer's whole run

Writes <out>/mechanism.json and mechanism.md. A run is a name of bench/learning.py's RUNS
or ``brainlike[:PRESET[:FIELD=VALUE,...]]``. Counts, not timings: safe on a busy machine.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

import measure
from brainlike_np import ConfigError, get_backend, get_preset
from brainlike_np.data import load_corpus, sample_windows
from brainlike_np.models import brainlike
from brainlike_np.optim import cosine_lr
from brainlike_np.train_state import TrainSettings, TrainState, default_batch_size
from learning import RUNS, TRAINER_WARMUP, parse_run
from measure import RESULTS

ENCODER = ("E", "P", "b_e")
DEFAULT_RUNS = ["brainlike-S0", "note", "brainlike-S5", "brainlike"]


# ---------------------------------------------------------------------------------
# the diagnostics, on one state
# ---------------------------------------------------------------------------------
def diagnose(state: TrainState, windows) -> dict:
    """Every diagnostic of the module doc at the state's parameters, over host windows."""
    backend, cfg, p = state.backend, state.cfg.with_overrides(path="sparse"), state.params
    ops = backend.ops

    def mean_loss(params, config):
        return float(np.mean([brainlike.loss(params, backend.asarray(x), backend.asarray(y),
                                             config, ops) for x, y in windows]))

    loss = mean_loss(p, cfg)
    grad_norms, used, shared, readout, encoder = [], [], [], [], []
    for x, y in windows:
        xd = backend.asarray(x)
        _, grads = brainlike.loss_and_grads(p, xd, backend.asarray(y), cfg, ops)
        grad_norms.append(math.sqrt(sum(float(np.sum(backend.to_numpy(grads[n]) ** 2))
                                        for n in ENCODER)))
        _, cache = brainlike.forward(p, xd, cfg, ops)
        idx = backend.to_numpy(cache.encoder.idx)                            # [B, k]
        used.append(idx.ravel())
        shared += [len(np.intersect1d(a, b)) for a, b in zip(idx[:-1], idx[1:])]
        encoder.append(backend.to_numpy(cache.encoder.a).ravel())            # sigmoid(z[idx])
        readout.append(backend.to_numpy(cache.decoder.pools[-1][1]).ravel())   # last read's a
    counts = np.bincount(np.concatenate(used), minlength=cfg.n_neurons)
    share = counts[counts > 0] / counts.sum()
    zeroed = lambda name: {**p, name: backend.xp.zeros_like(p[name])}       # noqa: E731
    readout, encoder = np.concatenate(readout), np.concatenate(encoder)
    return {
        "val_loss": loss,
        "encoder_grad_norm": float(np.mean(grad_norms)),
        "no_direct_path": mean_loss(zeroed("W_dec"), cfg) - loss,
        "no_pooled_path": mean_loss(zeroed("W_r"), cfg) - loss,
        "random_topk_penalty": mean_loss(p, cfg.with_overrides(selection="random")) - loss,
        "usage_perplexity": float(np.exp(-np.sum(share * np.log(share)))),
        "shared_active": float(np.mean(shared)),
        "readout_encoder_corr": (float(np.corrcoef(readout, encoder)[0, 1])
                                 if readout.std() > 0 and encoder.std() > 0 else float("nan")),
    }


# ---------------------------------------------------------------------------------
# training a run and diagnosing it along the way
# ---------------------------------------------------------------------------------
def run(spec: dict, args, corpus) -> dict:
    backend = get_backend()
    cfg = get_preset(spec["model"], spec["preset"]).with_overrides(**spec["fields"])
    batch = args.batch_size or default_batch_size("brainlike", spec["preset"])
    settings = TrainSettings(batch_size=batch, lr=args.lr, seed=args.seed)
    state = TrainState.create("brainlike", cfg, backend, settings)
    rng = np.random.default_rng(args.seed + 10_000)
    windows = [sample_windows(corpus.valid, args.eval_batch_size, cfg.context, rng)
               for _ in range(args.eval_batches)]
    warmup = round(args.warmup * args.steps)
    points = sorted({round(args.steps * i / args.evals) for i in range(args.evals + 1)})
    curve = []
    for step in range(args.steps + 1):
        if step in points:
            curve.append({"step": step, **diagnose(state, windows)})
            measure.log(f"{spec['name']}: step {step} " + ", ".join(
                f"{k} {v:.3f}" for k, v in curve[-1].items() if k != "step"))
        if step < args.steps:
            x, y = state.sample_batch(corpus.train, batch)
            state.train_step(x, y, cosine_lr(step, args.lr, warmup, args.steps))
    return {"name": spec["name"], "preset": spec["preset"], "fields": spec["fields"],
            "config": cfg.to_dict(), "batch_size": batch, "curve": curve}


def table(result: dict) -> str:
    columns = ["val_loss", "encoder_grad_norm", "no_direct_path", "no_pooled_path",
               "random_topk_penalty", "usage_perplexity", "shared_active",
               "readout_encoder_corr"]
    lines = [f"Command: `{result['command']}`.  ",
             f"{measure.machine_line(result['machine'])}.  ",
             f"Each run: {result['steps']} steps, lr {result['lr']:g} (warmup then cosine), "
             f"seed {result['seed']}; {result['eval_windows']} validation windows.", "",
             "| run | step | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for r in result["runs"]:
        for point in r["curve"]:
            lines.append(f"| {r['name']} | {point['step']} | "
                         + " | ".join(f"{point[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines) + ("\n\nLosses in nats/byte; the ablations and the penalty are "
                               "the loss they add. Usage perplexity out of N.\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    brain_runs = [name for name, (model, _, _) in RUNS.items() if model == "brainlike"]
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, metavar="RUN",
                    help=f"names ({', '.join(brain_runs)}) or brainlike[:PRESET[:FIELD=VALUE,"
                         f"...]] (default: {' '.join(DEFAULT_RUNS)})")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    ap.add_argument("--evals", type=int, default=3,
                    help="diagnostic points after step 0 (default 3)")
    ap.add_argument("--batch-size", type=int, help="training batch (default: each preset's)")
    ap.add_argument("--lr", type=float, default=TrainSettings.lr, help="peak learning rate")
    ap.add_argument("--warmup", type=float, default=TRAINER_WARMUP,
                    help=f"warmup share of the steps (default {TRAINER_WARMUP:.4f}, the trainer's)")
    ap.add_argument("--seed", type=int, default=0, help="weights, data order, validation windows")
    ap.add_argument("--eval-batches", type=int, default=TrainSettings.eval_batches,
                    help=f"validation batches (default {TrainSettings.eval_batches}, the trainer's)")
    ap.add_argument("--eval-batch-size", type=int, default=64,
                    help="windows per batch (default 64)")
    ap.add_argument("--data", help="a text file (default: the Python standard library)")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="output folder (default bench/results)")
    ap.add_argument("--quick", action="store_true", help="4 steps of batch 16, 2 validation "
                    "batches of 16: checks the plumbing in seconds")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.evals, args.eval_batches, args.eval_batch_size = 4, 1, 2, 16
        args.batch_size = args.batch_size or 16
    try:
        specs = [parse_run(r) for r in args.runs]
        if any(s["model"] != "brainlike" for s in specs):
            raise ConfigError("the diagnostics read the brain-like model's internals: "
                              "give brain-like runs only")
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    corpus = load_corpus(args.data)
    runs = [run(spec, args, corpus) for spec in specs]
    result = {"command": measure.command_line(), "machine": measure.environment(),
              "steps": args.steps, "lr": args.lr, "seed": args.seed,
              "eval_windows": args.eval_batches * args.eval_batch_size, "runs": runs}
    measure.write_json(args.out / "mechanism.json", result)
    (args.out / "mechanism.md").write_text(table(result))
    print(table(result) + f"\n(written to {args.out}/mechanism.{{json,md}})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
