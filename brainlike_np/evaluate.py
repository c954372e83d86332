"""Evaluation only: ``python -m brainlike_np.evaluate --checkpoint CKPT --data FILE``.

The loss of a checkpoint's model on any data, in nats and bits per byte (per token for
token files), over every window of the chosen split (the ``context`` tokens before each
token, for every token that has that many before it), or over ``--max-windows`` of them evenly spaced when there are
more (the output says which), beside the count-model baselines. The library function is
:func:`evaluate_tokens`: it picks its windows by position, never from the training
sampler, so evaluating a state in the middle of a run leaves its data order (and exact
resume) as it was.
"""

from __future__ import annotations

from .cli import exit_quietly_on_ctrl_c

if __name__ == "__main__":    # a Ctrl-C while the libraries below load: one line, exit 130
    exit_quietly_on_ctrl_c()

import numbers  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402  (host-side window positions, as data.py)

from .backends import BACKEND_NAMES, BackendError, get_backend, quiet_float_warnings  # noqa: E402
from .checkpoint import CheckpointError  # noqa: E402
from .cli import (EXIT_INTERRUPTED, OneLineParser, describe_os_error,  # noqa: E402
                  forgiving_streams, startup_over)
from .data import (DataError, as_tokens, baseline_note, count_model_losses,  # noqa: E402
                   nats_to_bits, open_corpus)
from .train_state import TrainState  # noqa: E402

SPLITS = ("valid", "train", "all")
DEFAULT_MAX_WINDOWS = 4096     # windows evaluated per split at most (each is a forward pass)
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class Evaluation:
    """The mean loss over ``windows`` of the ``total`` windows of some tokens."""
    loss: float          # nats per token
    windows: int         # windows evaluated
    total: int           # windows the tokens hold

    @property
    def bits(self) -> float:
        return nats_to_bits(self.loss)

    @property
    def sampled(self) -> bool:
        return self.windows < self.total


def window_starts(total: int, max_windows: int | None) -> np.ndarray:
    """Every window's start ``[total]``, or ``max_windows`` evenly spaced ones (the
    first and the last included) when there are more."""
    if max_windows is None or total <= max_windows:
        return np.arange(total, dtype=np.int64)
    return np.linspace(0, total - 1, max_windows).round().astype(np.int64)


def evaluate_tokens(state: TrainState, tokens, batch_size: int = DEFAULT_BATCH_SIZE,
                    max_windows: int | None = DEFAULT_MAX_WINDOWS) -> Evaluation:
    """The mean loss of ``state``'s model predicting each token of ``tokens`` (bytes, a
    1-D integer array or a corpus split) from the ``context`` tokens before it: every
    window, or ``max_windows`` evenly spaced (None: all). Reads ``batch_size`` windows
    at a time; neither the parameters nor the training sampler are touched.
    TypeError/ValueError naming the argument that cannot work."""
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    _check_positive("batch_size", batch_size)
    if max_windows is not None:
        _check_positive("max_windows", max_windows)
    T = state.cfg.context
    tokens = as_tokens(tokens, T, state.cfg.vocab_size)
    total = len(tokens) - T
    starts = window_starts(total, max_windows)                           # [W]
    offsets = np.arange(T + 1)[None, :]                                  # [1, T+1]
    loss_sum = 0.0
    for first in range(0, len(starts), batch_size):
        batch = starts[first:first + batch_size]                         # [B]
        windows = tokens.take(batch[:, None] + offsets).astype(np.int64)  # [B, T+1]
        x, y = np.ascontiguousarray(windows[:, :-1]), windows[:, -1].copy()
        loss_sum += state.evaluate([(x, y)]) * len(batch)   # evaluate: the batch's mean
    return Evaluation(loss_sum / len(starts), len(starts), total)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------
def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m brainlike_np.evaluate",
                      description="The loss of a checkpoint's model on a file, folder or "
                                  "glob, with the count-model baselines. Backend: "
                                  "$BRAINLIKE_BACKEND (" + ", ".join(BACKEND_NAMES) + ").")
    p.add_argument("--checkpoint", default="out/ckpt.npz",
                   help="any checkpoint the trainer writes: ckpt.npz, best.npz, "
                        "ckpt-STEP.npz (default out/ckpt.npz)")
    p.add_argument("--data", help="a text file, a folder or a glob pattern (default: the "
                                  "data the checkpoint was trained on)")
    p.add_argument("--split", choices=SPLITS, default="valid",
                   help="which part of the data: its validation split (the last 10%% of "
                        "one file, or one file in ten), its train split, or all of it "
                        "(default valid)")
    p.add_argument("--max-windows", type=int, default=DEFAULT_MAX_WINDOWS,
                   help="evaluate at most this many windows of each split, evenly spaced; "
                        f"0: every window (default {DEFAULT_MAX_WINDOWS})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"windows per forward pass (default {DEFAULT_BATCH_SIZE})")
    return p


def run(args) -> None:
    """Evaluate and print: one line per split, then the total over the splits asked for."""
    if args.max_windows < 0:
        raise ValueError(f"--max-windows must be 0 (every window) or more, got {args.max_windows}")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    state = TrainState.load(args.checkpoint, get_backend())
    data = args.data
    if data is None:       # the run's own data, as it was recorded
        data = (state.data_record or {}).get("source") or state.settings.data
    corpus = open_corpus(data, token_dtype=state.settings.token_dtype)   # the model's tokens
    corpus.check_fits(state.cfg.context, state.cfg.vocab_size)
    splits = ("train", "valid") if args.split == "all" else (args.split,)
    unit = corpus.unit                         # what the data's tokens are: byte or token
    print(f"checkpoint {args.checkpoint}: model {state.model_name} at step {state.step}; "
          f"data {corpus.name}", flush=True)
    results = {}
    for split in splits:
        tokens = getattr(corpus, split)
        result = evaluate_tokens(state, tokens, args.batch_size, args.max_windows or None)
        base = count_model_losses(corpus.train, tokens, vocab_size=state.cfg.vocab_size)
        which = (f"{result.windows:,} of {result.total:,} windows, evenly spaced"
                 if result.sampled else f"all {result.total:,} windows")
        print(f"{split}: {result.loss:.4f} nats/{unit} ({result.bits:.3f} bits/{unit}) over "
              f"{which}; baselines unigram {base['unigram']:.3f}, bigram {base['bigram']:.3f} "
              f"(fit on the train split{baseline_note(corpus.train, tokens)})", flush=True)
        results[split] = result
    if len(results) > 1:
        n = sum(r.windows for r in results.values())
        loss = sum(r.loss * r.windows for r in results.values()) / n
        print(f"all: {loss:.4f} nats/{unit} ({nats_to_bits(loss):.3f} bits/{unit}) over {n:,} "
              "windows", flush=True)


def main(argv=None) -> int:
    startup_over()
    with forgiving_streams(), quiet_float_warnings():
        args = build_parser().parse_args(argv)
        try:
            run(args)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except (BackendError, CheckpointError, DataError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return 1
        except MemoryError:
            print("error: out of memory while evaluating; lower --batch-size", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
