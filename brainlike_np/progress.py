"""A training run's progress wherever it goes: the tqdm bar on a terminal, else a line
every ``--log-every`` steps (step, train loss, ms/step, tokens/s, ETA, peak memory);
``--log-csv FILE``; ``--tensorboard DIR`` (tensorboardX, the ``tensorboard`` extra); and
callbacks, any callable given each record that metrics.jsonl gets, for other trackers.

A record is a dict: a step's has ``step``, ``loss``, ``lr``, ``grad_norm``,
``tokens_per_s``, ``ms_per_step``, ``peak_bytes``, ``time_s``; an evaluation's has ``step``,
``val_loss``, ``val_bits_per_byte``, the baselines and ``time_s``.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from .config import ConfigError
from .data import random_batch
from .output import replacing

CSV_COLUMNS = ("step", "loss", "lr", "grad_norm", "ms_per_step", "tokens_per_s", "peak_bytes",
               "time_s", "val_loss", "val_bits_per_byte")
CSV_HEADER = ",".join(CSV_COLUMNS) + "\n"


class Progress:
    """Shows and forwards the records of a run from ``initial`` up to step ``total``
    (lines on stdout, beside the evaluations; the bar on stderr)."""

    def __init__(self, total: int, initial: int, log_every: int, csv_path: str | None = None,
                 tensorboard_dir: str | None = None, callbacks=(), history=()):
        on_terminal = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, mininterval=1.0,
                        dynamic_ncols=True) if on_terminal else None
        self.total, self.log_every = total, log_every
        self.first = None        # (seconds, step) of the first step shown: the ETA's origin
        self.logs = [TensorBoardLog(tensorboard_dir)] if tensorboard_dir else []
        if csv_path:            # after the check for tensorboardX: nothing written if missing
            self.logs.append(CsvLog(csv_path, history))
        self.sinks = list(callbacks) + [log.write for log in self.logs]

    def record(self, record: dict) -> None:
        """A step's or an evaluation's record: shown if it is a step's, then forwarded."""
        if "loss" in record:
            self._show(record)
        for sink in self.sinks:
            sink(record)

    def _show(self, r: dict) -> None:
        if self.bar is not None:
            self.bar.update(r["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{r['loss']:.3f}", tok_s=f"{r['tokens_per_s']:,.0f}",
                                 peak_mb=f"{r['peak_bytes'] / 2**20:.0f}", refresh=False)
            return
        now = time.perf_counter()
        self.first = self.first or (now, r["step"])
        if r["step"] % self.log_every == 0 or r["step"] == self.total:
            steps = r["step"] - self.first[1]
            per_step = (now - self.first[0]) / steps if steps else r["ms_per_step"] / 1e3
            eta = per_step * (self.total - r["step"])
            print(f"step {r['step']:5d}/{self.total} | loss {r['loss']:.4f} | "
                  f"{r['ms_per_step']:.0f} ms/step | {r['tokens_per_s']:,.0f} tok/s | "
                  f"ETA {_duration(eta)} | peak {r['peak_bytes'] / 2**20:.1f} MiB", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for log in self.logs:
            log.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600
            else f"{seconds // 60}m{seconds % 60:02d}s")


class CsvLog:
    """``--log-csv FILE``: the run's records as CSV, one row each (CSV_COLUMNS, blank where
    a record has none), flushed at once; the records logged before (``history``: a resumed
    run's) first. Written through ``output.replacing``: FILE must be absent, empty or an
    earlier such CSV (it starts with the header), never anything else."""

    def __init__(self, path: str, history=()):
        with replacing(path, CSV_HEADER.encode(), keep_open=True,
                       fix="name another --log-csv file") as f:
            self._file = f
            f.write(CSV_HEADER.encode())
            for record in history:
                self.write(record)

    def write(self, record: dict) -> None:
        row = ",".join("" if record.get(c) is None else repr(record[c]) for c in CSV_COLUMNS)
        self._file.write((row + "\n").encode())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLog:
    """``--tensorboard DIR``: each record's numbers as TensorBoard scalars at its step
    (under ``train/`` or ``valid/``); ConfigError naming the extra when tensorboardX is
    missing."""

    def __init__(self, folder: str):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError('--tensorboard needs tensorboardX: pip install -e ".[tensorboard]"'
                              ) from None
        self._writer = SummaryWriter(folder)

    def write(self, record: dict) -> None:
        group = "valid" if "val_loss" in record else "train"
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(f"{group}/{name}", value, record["step"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def warm_up(state, local_batch: int, announce: bool = True) -> None:
    """One forward and backward pass on a random batch of the step's shape, before the
    run's clock and peak memory start: a first run compiles the Numba kernels here
    (cached on disk after), and ``announce`` says so. Parameters, moments and the
    training sampler are untouched."""
    say = print if announce else (lambda *args, **kwargs: None)
    say(f"preparing the {state.backend.ops.name} kernels (a first run compiles them)...",
        end="", flush=True)
    started = time.perf_counter()
    x, y = random_batch(local_batch, state.cfg.context, state.cfg.vocab_size)
    b = state.backend
    loss, _ = state.model.loss_and_grads(state.params, b.asarray_ids(x), b.asarray_ids(y),
                                         state.cfg, b.ops)
    b.to_numpy(loss)                     # done on the device too
    say(f" ready in {time.perf_counter() - started:.1f} s", flush=True)
