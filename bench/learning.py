"""How low the validation loss gets for a given training time, and for a given number of
supervised targets: registered models and their ablations, each trained alone in a
fresh process for the same budget, scored on the same validation windows (issue 14;
the method is in bench/README.md, "Learning").

    python bench/learning.py --quick             # a few minutes: every run, tiny budgets
    python bench/learning.py                     # the full run: about 13 min on 2 quiet cores
    python bench/learning.py --seconds 300 --targets 0 --runs brainlike transformer-all
    python bench/learning.py --runs brainlike "brainlike:default:k_active=32,n_steps=2"
    python bench/learning.py --study reconnect   # issue 24: S = 0, 1, 5 with and without
                                                 # B + C, at 10 min and 76,800 targets, 2 seeds

Writes <out>/learning.json (every evaluation of every run, the machine, the command),
learning.md (the table for bench/README.md) and learning.png (the curves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import measure
from brainlike_np import ConfigError, get_backend, get_model, get_preset
from brainlike_np.data import count_model_losses, load_corpus, sample_windows
from brainlike_np.optim import cosine_lr
from brainlike_np.train_state import TrainSettings, TrainState, default_batch_size
from measure import RESULTS

# name -> (model, preset, config fields changed); "brainlike" is the default preset
# (issue 24's B + C at one step), "note" the design note's model at the same sizes
RUNS = {
    "brainlike": ("brainlike", "default", {}),
    "brainlike-S0": ("brainlike", "default", {"n_steps": 0}),   # = note at S = 0
    "brainlike-S5": ("brainlike", "default", {"n_steps": 5}),
    "brainlike-no-read": ("brainlike", "default", {"input_read": False}),
    "brainlike-tau0": ("brainlike", "default", {"tau": 0.0}),
    "brainlike-random-topk": ("brainlike", "default", {"selection": "random"}),
    "note": ("brainlike", "note", {}),
    "note-S1": ("brainlike", "note", {"n_steps": 1}),
    "transformer-last": ("transformer", "default", {"targets": "last"}),
    "transformer-all": ("transformer", "default", {}),
}
# a study: its runs, budgets and seeds (each one a flag's default when --study names it)
STUDIES = {
    "ablations": {"runs": ["brainlike", "brainlike-S0", "brainlike-no-read", "brainlike-tau0",
                           "brainlike-random-topk", "transformer-last", "transformer-all"],
                  "seconds": 60.0, "targets": 6400, "seeds": [0]},
    # the trainer's budget: 76,800 targets = 1,200 steps of 64 windows, and 10 minutes
    "reconnect": {"runs": ["brainlike-S0", "note-S1", "brainlike", "note", "brainlike-S5",
                           "transformer-last", "transformer-all"],
                  "seconds": 600.0, "targets": 76_800, "seeds": [0, 1]},
}
SCHEDULE_UNITS = 10_000     # the lr schedule's resolution over a seconds budget
# the trainer's warmup share: at 76,800 targets (1,200 steps of 64) a run here follows the
# trainer's default run step for step, and scores the same validation windows
TRAINER_WARMUP = TrainSettings.warmup / TrainSettings.max_iters


# ---------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------
def parse_run(text: str) -> dict:
    """A name from RUNS, or ``MODEL[:PRESET[:FIELD=VALUE,...]]`` -> a run spec; the
    config is built here, so a bad one stops before any training."""
    if text in RUNS:
        model_name, preset, fields = RUNS[text]
    else:
        parts = text.split(":", 2)
        model_name, preset, assignments = parts + ["default", ""][len(parts) - 1:]
        model = get_model(model_name)
        types = {f.name: f.type for f in dataclasses.fields(model.Config)}
        fields = {}
        for item in filter(None, assignments.split(",")):
            name, _, value = item.partition("=")
            if name not in types:
                raise SystemExit(f"error: run '{text}': {model_name} has no config field {name}")
            try:
                fields[name] = {"int": int, "float": float, "str": str,
                                "bool": lambda v: {"true": True, "false": False}[v.lower()]
                                }[types[name]](value)
            except (KeyError, ValueError):
                raise SystemExit(f"error: run '{text}': {name} must be of type {types[name]}, "
                                 f"got '{value}'") from None
    get_preset(model_name, preset).with_overrides(**fields)        # validates
    return {"name": text, "model": model_name, "preset": preset, "fields": fields}


# ---------------------------------------------------------------------------------
# one run, in its own process
# ---------------------------------------------------------------------------------
def train(spec: dict) -> dict:
    """Train one run for its budget; evaluate at 0 and after each 1/evals of it."""
    backend = get_backend()
    corpus = load_corpus(spec["data"])
    cfg = get_preset(spec["model"], spec["preset"]).with_overrides(**spec["fields"])
    batch = spec["batch_size"] or default_batch_size(spec["model"], spec["preset"])
    settings = TrainSettings(batch_size=batch, lr=spec["lr"], seed=spec["seed"])
    state = TrainState.create(spec["model"], cfg, backend, settings)
    # the same windows for every run and seed: drawn at the longest context, each model
    # reads its own
    rng = np.random.default_rng(spec["eval_seed"] + 10_000)
    windows = [sample_windows(corpus.valid, spec["eval_batch_size"], spec["eval_context"], rng)
               for _ in range(spec["eval_batches"])]
    windows = [(x[:, x.shape[1] - cfg.context:], y) for x, y in windows]
    per_window = state.model.supervised_targets(cfg)
    kind, budget = spec["budget"]
    total_steps = math.ceil(budget / (batch * per_window))     # for a target budget
    # untimed warm-up: loads (or compiles) the kernels; changes no parameter
    state.model.loss_and_grads(state.params, *map(backend.asarray, windows[0]), cfg, backend.ops)
    seconds, seen, loss, lr = 0.0, 0, None, 0.0
    curve, next_eval, started = [], 0, time.perf_counter()
    while True:
        progress = (seconds if kind == "seconds" else seen) / budget
        if progress >= next_eval / spec["evals"]:
            curve.append({"step": state.step, "seconds": seconds, "targets": seen,
                          "val_loss": state.evaluate(windows), "train_loss": loss, "lr": lr})
            print(f"  {spec['name']}: step {state.step} {seconds:.0f} s {seen:,} targets "
                  f"val {curve[-1]['val_loss']:.3f}", file=sys.stderr, flush=True)
            next_eval = math.floor(progress * spec["evals"]) + 1
        if progress >= 1.0:
            break
        if kind == "targets":   # by steps, as the trainer schedules: its lr at each step
            lr = cosine_lr(state.step, spec["lr"], round(spec["warmup"] * total_steps),
                           total_steps, settings.min_lr_ratio)
        else:                   # by the share of the seconds spent
            lr = cosine_lr(int(progress * SCHEDULE_UNITS), spec["lr"],
                           int(spec["warmup"] * SCHEDULE_UNITS), SCHEDULE_UNITS,
                           settings.min_lr_ratio)
        # a target budget ends exactly: the last batch holds only the windows it needs
        n = batch if kind == "seconds" else min(batch, math.ceil((budget - seen) / per_window))
        t0 = time.perf_counter()
        x, y = state.sample_batch(corpus.train, n)
        loss = state.train_step(x, y, lr)["loss"]
        backend.synchronize()
        seconds += time.perf_counter() - t0
        seen += n * per_window
    return {"name": spec["name"], "model": spec["model"], "preset": spec["preset"],
            "fields": spec["fields"], "config": cfg.to_dict(), "budget": {kind: budget},
            "batch_size": batch, "targets_per_step": batch * per_window,
            "params": sum(math.prod(s) for s in state.model.param_shapes(cfg).values()),
            "steps": state.step, "seconds": seconds, "targets": seen,
            "step_s": seconds / max(state.step, 1), "val_loss": curve[-1]["val_loss"],
            "wall_s": time.perf_counter() - started, "curve": curve,
            "backend": backend.name, "ops": backend.ops.name}


def run_in_fresh_process(spec: dict, forced_blas_kernel: bool) -> dict:
    """A fresh process per run: no allocator state or warm caches shared between runs.
    A failure is recorded, and the other runs still go."""
    try:
        return measure.in_fresh_process(Path(__file__), spec,
                                        forced_blas_kernel=forced_blas_kernel)
    except RuntimeError as failure:
        return {**spec, "error": " ".join(str(failure).split())[-300:]}


# ---------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------
def config_change(run: dict) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in run["fields"].items())
    return f"{run['model']} {run['preset']}" + (f" ({fields})" if fields else "")


def table(result: dict) -> str:
    b = result["baselines"]
    budgets = [k for k in ("seconds", "targets") if result["budgets"][k]]
    head = {"seconds": f"{result['budgets']['seconds']:g} s of training",
            "targets": f"{result['budgets']['targets']:,} targets"}
    lines = [f"Command: `{result['command']}` ({result['total_s'] / 60:.1f} min).  ",
             f"{measure.machine_line(result['machine'])}; backend "
             f"{result['runs'][0].get('backend', '?')} (ops {result['runs'][0].get('ops', '?')}); "
             f"threads {result['machine']['threads']}.  ",
             f"Budget per run: {' and, separately, '.join(head[k] for k in budgets)}; lr "
             f"{result['settings']['lr']:g}, warmup {result['settings']['warmup']:.0%} of the "
             f"budget then cosine; {result['settings']['eval_windows']} validation windows.  ",
             f"CPU pressure at start / end: `{result['load']['start']['cpu_pressure']}` / "
             f"`{result['load']['end']['cpu_pressure']}`.", "",
             "| run | config | params | targets / step | "
             + " | ".join(f"{head[k]}: steps | targets | seconds | val loss" for k in budgets) + " |",
             "|---|---|---|---|" + "---|---|---|---|" * len(budgets)]
    for name in result["run_names"]:
        row = [name, "", "", ""]
        for kind in budgets:
            run = next(r for r in result["runs"] if r["name"] == name and kind in r["budget"])
            if "error" in run:
                row += ["failed", "", "", run["error"]]
                continue
            row[1:4] = [config_change(run), f"{run['params'] / 1e6:.2f}M", str(run["targets_per_step"])]
            row += [str(run["steps"]), f"{run['targets']:,}", f"{run['seconds']:.0f}",
                    f"{run['val_loss']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    for name in ("bigram", "unigram"):
        row = [f"{name} count model", "whole validation split", "", ""]
        lines.append("| " + " | ".join(row + ["", "", "", f"{b[name]:.3f}"] * len(budgets)) + " |")
    return "\n".join(lines) + "\n\nValidation loss in nats/byte; seconds exclude evaluation.\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    budgets = [k for k in ("seconds", "targets") if result["budgets"][k]]
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], budgets):
        for run in result["runs"]:
            if kind in run["budget"] and "curve" in run:
                ax.plot([p[kind] for p in run["curve"]], [p["val_loss"] for p in run["curve"]],
                        "-" if run["model"] == "brainlike" else "--", marker=".", label=run["name"])
        for name, style in (("bigram", ":"), ("unigram", "-.")):
            ax.axhline(result["baselines"][name], color="gray", ls=style, label=f"{name} counts")
        ax.set_xlabel("training seconds" if kind == "seconds" else "supervised targets seen")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.set_title(f"same budget: {result['budgets'][kind]:,g} {kind}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", choices=STUDIES, default="ablations",
                    help="the runs, budgets and seeds to use unless given below: "
                    + "; ".join(f"{name}: {len(st['runs'])} runs, {st['seconds']:g} s and "
                                f"{st['targets']:,} targets, seeds {st['seeds']}"
                                for name, st in STUDIES.items()) + " (default ablations)")
    ap.add_argument("--runs", nargs="+", metavar="RUN",
                    help=f"names ({', '.join(RUNS)}) or MODEL[:PRESET[:FIELD=VALUE,...]]")
    ap.add_argument("--seconds", type=float,
                    help="training seconds per run (0: skip this budget; default: the study's)")
    ap.add_argument("--targets", type=int,
                    help="supervised targets per run (0: skip this budget; default: the study's)")
    ap.add_argument("--seeds", type=int, nargs="+", help="train each run at each seed "
                    "(weights and data order; the validation windows are the first seed's; "
                    "default: the study's)")
    ap.add_argument("--evals", type=int, default=6, help="evaluations per run after the "
                    "one at step 0 (default 6)")
    ap.add_argument("--eval-batches", type=int, default=TrainSettings.eval_batches,
                    help=f"validation batches (default {TrainSettings.eval_batches}: with 64 "
                    "windows each at seed 0, the trainer's windows at batch 64)")
    ap.add_argument("--eval-batch-size", type=int, default=64, help="windows per validation "
                    "batch (default 64)")
    ap.add_argument("--batch-size", type=int, help="training batch (default: each preset's)")
    ap.add_argument("--lr", type=float, default=TrainSettings.lr, help="peak learning rate")
    ap.add_argument("--warmup", type=float, default=TRAINER_WARMUP, help="linear warmup, as a "
                    f"fraction of each run's budget (default {TRAINER_WARMUP:.4f}, the trainer's "
                    "100 of 1,200 steps), then cosine to 0.1 x lr")
    ap.add_argument("--data", help="a text file (default: the Python standard library)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="output folder (default "
                    "bench/results)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (3 s, 320 targets, "
                    "2 evaluations of 2 batches), the first seed unless --seeds is given: "
                    "checks that every run works")
    measure.add_worker_arguments(ap)
    args = ap.parse_args()
    if measure.start(args, train):
        return 0
    study, seeds_given = STUDIES[args.study], args.seeds is not None
    for name in ("runs", "seconds", "targets", "seeds"):
        if getattr(args, name) is None:
            setattr(args, name, study[name])
    if args.quick:
        args.seconds, args.targets, args.evals, args.eval_batches = 3.0, 320, 2, 2
        args.seeds = args.seeds if seeds_given else args.seeds[:1]
    try:
        specs = [{**parse_run(r), "seed": seed} for r in args.runs for seed in args.seeds]
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if len(args.seeds) > 1:
        for spec in specs:
            spec["name"] += f" (seed {spec['seed']})"
    started, load_at_start = time.perf_counter(), measure.machine_load()
    corpus = load_corpus(args.data)
    runs = []
    for kind, budget in (("seconds", args.seconds), ("targets", args.targets)):
        for spec in specs if budget else []:
            print(f"[{time.strftime('%H:%M:%S')}] {spec['name']}: {budget:g} {kind}", flush=True)
            runs.append(run_in_fresh_process({
                **spec, "budget": [kind, budget], "data": args.data, "eval_seed": args.seeds[0],
                "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                "evals": args.evals, "eval_batches": args.eval_batches,
                "eval_batch_size": args.eval_batch_size,
                "eval_context": max(get_preset(s["model"], s["preset"])
                                    .with_overrides(**s["fields"]).context for s in specs),
            }, args.forced_blas_kernel))
    result = {
        "command": measure.command_line(), "machine": measure.environment(),
        "load": {"start": load_at_start, "end": measure.machine_load()},
        "budgets": {"seconds": args.seconds, "targets": args.targets},
        "settings": {"lr": args.lr, "warmup": args.warmup, "seeds": args.seeds,
                     "eval_windows": args.eval_batches * args.eval_batch_size,
                     "schedule": "warmup + cosine over each run's own budget, by the share "
                                 "of it spent (seconds or targets)"},
        "baselines": count_model_losses(corpus.train, corpus.valid),
        "run_names": [s["name"] for s in specs], "runs": runs,
        "total_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "learning.md").write_text(table(result))
    plot(result, args.out / "learning.png")
    print(table(result) + f"\n(written to {args.out}/learning.{{json,md,png}})")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
