"""A run's curves as a PNG: ``python -m brainlike_np.plot OUT_DIR [OUT_DIR ...]``.

Left: training and validation loss (nats/byte) against the step; right: the same against
seconds of training (set-up excluded, continued across ``--resume``). The unigram and
bigram count-model baselines are horizontal lines. Several out-dirs are overlaid, one
colour each. Each ``metrics.jsonl`` is read as the trainer reads it (``read_metrics``: a
torn or bad line is skipped). Needs matplotlib (``pip install -e ".[plot]"``);
without it, or without metrics to plot, the command ends with one ``error: ...`` line.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

from .cli import OneLineParser, printable
from .outdir import METRICS_NAME, read_metrics
from .output import PNG_MAGIC, OutputPathError, check_output_path, replacing

DEFAULT_NAME = "curves.png"
PLOT_LIMIT = 1e300      # larger values are skipped: an axis from -1e308 to 1e308 overflows


class PlotError(ValueError):
    """Nothing to plot, or nowhere to write it; the message says what to do."""


@dataclass
class RunCurves:
    label: str
    train: list = field(default_factory=list)      # (step, seconds or None, loss)
    valid: list = field(default_factory=list)      # (step, seconds or None, val_loss)
    baselines: dict = field(default_factory=dict)  # unigram, bigram (nats/byte)
    skipped: int = 0                               # points with values beyond PLOT_LIMIT


def read_run(out_dir: str) -> RunCurves:
    """The curves of one out-dir; PlotError if it has no training or validation record.
    A value a figure axis cannot take (beyond ±PLOT_LIMIT, or an integer too large for
    a float) is skipped with its point, and counted in ``skipped``."""
    if not os.path.isdir(out_dir):
        raise PlotError(f"'{out_dir}' is not a folder; pass a trainer's --out-dir")
    run = RunCurves(os.path.basename(os.path.normpath(out_dir)) or out_dir)
    for r in read_metrics(os.path.join(out_dir, METRICS_NAME)):
        point = (_plottable(r.get("step")), _plottable(r.get("time_s")))
        for curve, key in ((run.train, "loss"), (run.valid, "val_loss")):
            if _is_number(r.get(key)):
                loss = _plottable(r[key])
                if loss is None or point[0] is None:
                    run.skipped += 1
                else:
                    curve.append((*point, loss))
        if _is_number(r.get("val_loss")):
            run.baselines = {k: _plottable(r[f"{k}_baseline"]) for k in ("unigram", "bigram")
                             if _plottable(r.get(f"{k}_baseline")) is not None}
    if not run.train and not run.valid:
        raise PlotError(f"'{os.path.join(out_dir, METRICS_NAME)}' holds no training records"
                        + (f" with values a plot can show ({run.skipped} beyond "
                           f"±{PLOT_LIMIT:g})" if run.skipped else "")
                        + "; pass the --out-dir of a training run")
    return run


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plottable(value) -> float | None:
    """``value`` as a float an axis can take (finite, within ±PLOT_LIMIT: the axis's
    span and margins must stay finite), else None."""
    if not _is_number(value):
        return None
    try:
        value = float(value)
    except OverflowError:       # an integer of hundreds of digits
        return None
    return value if math.isfinite(value) and abs(value) <= PLOT_LIMIT else None


def plot_runs(runs: list[RunCurves], path: str) -> None:
    """Write the PNG atomically (``output.replacing``: ``path`` must be absent, an empty
    file or a PNG; OutputPathError otherwise, before the figure is drawn)."""
    check_output_path(path, PNG_MAGIC, fix="pass another --output")   # before the work
    fig = figure(runs)
    with replacing(path, PNG_MAGIC, fix="pass another --output") as f:
        fig.savefig(f, format="png", dpi=110)


def figure(runs: list[RunCurves]):
    """A matplotlib Figure: loss against steps (left) and seconds (right)."""
    from matplotlib.figure import Figure      # optional: the caller reports its absence

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    shared_baselines = len({tuple(r.baselines.items()) for r in runs}) == 1
    for i, run in enumerate(runs):
        colour = f"C{i}"
        for ax, x in ((by_step, 0), (by_time, 1)):
            _draw(ax, run, x, colour)
            for name, style in (("unigram", ":"), ("bigram", "--")):
                if name in run.baselines and (i == 0 or not shared_baselines):
                    ax.axhline(run.baselines[name], color="black" if shared_baselines else colour,
                               linestyle=style, linewidth=1, label=f"{name} count model"
                               + ("" if shared_baselines else f" ({run.label})"))
    by_step.set(xlabel="step", ylabel="loss (nats/byte)", title="against steps")
    by_time.set(xlabel="seconds of training", title="against time")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize="small")
    return fig


def _draw(ax, run: RunCurves, x: int, colour: str) -> None:
    """Training loss (thin) and validation loss (dots) of one run; ``x``: 0 steps, 1
    seconds (records without seconds, from an older trainer, are left out)."""
    for points, style in ((run.train, dict(linewidth=0.8, alpha=0.5, label="train")),
                          (run.valid, dict(marker="o", markersize=3, label="valid"))):
        shown = [(p[x], p[2]) for p in points if p[x] is not None]
        if shown:
            ax.plot(*zip(*shown), color=colour, **{**style, "label": f"{run.label} {style['label']}"})


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m brainlike_np.plot",
                      description="Plot training and validation loss of one or more runs.")
    p.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="a trainer's --out-dir")
    p.add_argument("-o", "--output", help=f"the PNG to write (default: "
                                          f"<first OUT_DIR>/{DEFAULT_NAME})")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    output = args.output or os.path.join(args.out_dirs[0], DEFAULT_NAME)
    try:
        import matplotlib  # noqa: F401  (only to say in one line that it is missing)
    except ImportError:
        print('error: the plot needs matplotlib: pip install -e ".[plot]"',
              file=sys.stderr)
        return 1
    except ValueError as exc:       # a bad rc setting, e.g. MPLBACKEND=bogus
        print(f"error: matplotlib refuses its settings ({exc}); fix or unset "
              "MPLBACKEND or matplotlibrc (the plot writes a PNG and needs no backend)",
              file=sys.stderr)
        return 1
    try:
        runs = [read_run(d) for d in args.out_dirs]
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read '{exc.filename}' ({exc.strerror or exc}); check its "
              "permissions", file=sys.stderr)
        return 1
    try:
        plot_runs(runs, output)
    except OutputPathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write '{output}' ({exc.strerror or exc}); pass another "
              "--output", file=sys.stderr)
        return 1
    skipped = sum(run.skipped for run in runs)
    if skipped:
        print(f"note: {skipped} points with values beyond ±{PLOT_LIMIT:g} were left out",
              file=sys.stderr)
    print(printable(output, sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
