"""The trainer's command line, parsed once into a :class:`TrainRequest` that the rest of
``train.py`` takes: every model config field and every training setting is a flag,
generated from the dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass

from .cli import OneLineParser
from .config import flag
from .models import MODELS
from .outdir import CHECKPOINT_NAME
from .train_state import TrainSettings


@dataclass(frozen=True)
class TrainRequest:
    """What the command line asks for. ``None`` and empty dicts mean "not given"."""

    model: str | None           # None: the checkpoint's on --resume, else brainlike
    preset: str | None          # None: the checkpoint's config on --resume, else default
    config: dict                # model config field -> value, for the fields given
    settings: dict              # TrainSettings field -> value, for the flags given
    out_dir: str
    resume: str | None          # the checkpoint to continue; None: a new run
    distributed: bool
    log_csv: str | None = None      # --log-csv FILE
    init_from: str | None = None    # --init-from CKPT: a new run from its parameters
    keep_optimizer: bool = False    # ... with its AdamW moments
    tensorboard: str | None = None  # --tensorboard DIR


def parse_request(argv=None) -> TrainRequest:
    """The command line (``sys.argv[1:]`` by default) -> a TrainRequest; exits 2 with
    one line on a malformed flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.init_from is not None and args.resume is not None:
        parser.error("--init-from starts a new run and --resume continues one; give one")
    if args.keep_optimizer and args.init_from is None:
        parser.error("--keep-optimizer goes with --init-from CKPT")
    config_names = {f.name for model in MODELS.values() for f in dataclasses.fields(model.Config)}
    config = {name: getattr(args, name) for name in config_names}
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
    resume = args.resume
    if resume == "":
        resume = os.path.join(args.out_dir, CHECKPOINT_NAME)
    return TrainRequest(model=args.model, preset=args.preset,
                        config={k: v for k, v in config.items() if v is not None},
                        settings={k: v for k, v in settings.items() if v is not None},
                        out_dir=args.out_dir, resume=resume, distributed=args.distributed,
                        log_csv=args.log_csv, tensorboard=args.tensorboard,
                        init_from=args.init_from, keep_optimizer=args.keep_optimizer)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m brainlike_np.train",
        description="Train a byte-level language model (the brain-like sparse model by "
                    "default). Backend: $BRAINLIKE_BACKEND (numpy, cupy, array_api_strict).")
    p.add_argument("--model", type=_name, help=f"model: {', '.join(MODELS)} (default brainlike)")
    presets = "; ".join(f"{name}: {', '.join(model.PRESETS)}" for name, model in MODELS.items())
    p.add_argument("--preset", type=_name, help=f"named model config ({presets}) "
                                                "(default: default)")
    p.add_argument("--out-dir", default="out", help="checkpoint and metrics folder (default out)")
    p.add_argument("--resume", nargs="?", const="", metavar="CKPT",
                   help="continue from CKPT (default: <out-dir>/ckpt.npz); the settings "
                        "given again replace the saved ones, except --data, --seed, --dtype "
                        "and the model's, which may only be repeated unchanged")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start a new run (new data, settings and schedule) from CKPT's "
                        "parameters, with fresh AdamW moments; it records where it started")
    p.add_argument("--keep-optimizer", action="store_true",
                   help="with --init-from: continue CKPT's AdamW moments and step count")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of mpirun/srun (the 'distributed' extra); "
                        "--batch-size is the global batch")
    p.add_argument("--log-csv", metavar="FILE", help="also write every metrics record to FILE "
                                                     "as CSV")
    p.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files to "
                   "DIR (the 'tensorboard' extra: pip install -e \".[tensorboard]\")")
    group = p.add_argument_group("training settings")
    for f in dataclasses.fields(TrainSettings):
        default = "" if f.default is None else f" (default {f.default})"
        group.add_argument(f"--{flag(f.name)}", type=_parse_number(f.type), dest=f.name,
                           metavar=f.name.upper(), help=f.metadata["help"] + default)
    added = set()
    for name, model in MODELS.items():
        group = p.add_argument_group(f"{name} model config (overrides the preset)")
        for f in dataclasses.fields(model.Config):
            if f.name in added:
                continue
            added.add(f.name)
            default = getattr(model.PRESETS["default"], f.name)
            kind = (dict(action=argparse.BooleanOptionalAction) if f.type == "bool" else
                    dict(type=_parse_number(f.type), metavar=f.name.upper()))
            choices = getattr(model, "CHOICES", {}).get(f.name)
            one_of = f"one of {', '.join(choices)}; " if choices else ""
            group.add_argument(f"--{flag(f.name)}", dest=f.name, **kind,
                               help=f"{one_of}default: the preset's ({default} in 'default')")
    return p


def _name(text: str) -> str:
    """argparse type for --model and --preset: an empty value is a mistake, not "unset"."""
    if not text:
        raise argparse.ArgumentTypeError("is empty; name one, or leave the flag out for "
                                         "the default")
    return text


# argparse names a value it cannot parse by its type function: "invalid integer value: 'x'"
def integer(text: str) -> int:
    return int(text)


def number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _parse_number(type_name: str):
    """argparse type for a config field: ints and floats parsed, floats must be finite."""
    return {"int": integer, "float": number}.get(type_name, str)
