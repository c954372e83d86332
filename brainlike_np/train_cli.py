"""The trainer's command line, parsed once into a :class:`TrainRequest` that the rest of
``train.py`` takes: every model config field and every training setting is a flag,
generated from the dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass

from .backends import BACKEND_NAMES
from .cli import OneLineParser
from .config import flag
from .data import open_regular_file
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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(config_file_args(parser, argv) + argv)   # the command line wins
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


def config_file_args(parser: argparse.ArgumentParser, argv: list) -> list:
    """The flags that ``--config FILE.toml`` in ``argv`` stands for (none without it):
    each key is a flag's name (``max-iters = 2400``; ``max_iters`` too), each value of
    the flag's type (a TOML boolean for an on/off flag). The parser's one error line,
    naming the file and the key, for a file that cannot be read, an unknown key or a
    value the flag refuses."""
    path = parser.parse_known_args(argv)[0].config
    if path is None:
        return []
    table = read_toml(parser, path)
    actions = {a.option_strings[0][2:]: a for a in parser._actions
               if a.option_strings and a.option_strings[0].startswith("--")}
    args = []
    for key, value in table.items():
        name = key.replace("_", "-")
        action = actions.get(name)
        if action is None or name in ("config", "help"):
            parser.error(f"--config {path}: unknown key '{key}' (the keys are the flags, e.g. "
                         "max-iters = 2400)")
        args += _flag_args(parser, path, key, name, action, value)
        try:           # each value as the flag would parse it, so the error names the key
            if action.type is not None:
                action.type(str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            parser.error(f"--config {path}: key '{key}' = {value!r} is not valid ({exc})")
    return args


def _flag_args(parser, path: str, key: str, name: str, action, value) -> list:
    """``--name value`` (``--name`` / ``--no-name`` for an on/off flag) for one key."""
    on_off = action.nargs == 0                  # --recompute/--no-recompute, --distributed
    if on_off != isinstance(value, bool) or isinstance(value, (dict, list)):
        parser.error(f"--config {path}: key '{key}' must be "
                     f"{'true or false' if on_off else 'a number or a string'}, got {value!r}")
    if not on_off:
        return [f"--{name}", str(value)]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [f"--{name}" if value else f"--no-{name}"]
    return [f"--{name}"] if value else []        # --distributed = false: the default


def read_toml(parser: argparse.ArgumentParser, path: str) -> dict:
    """The TOML file at ``path`` as a dict; the parser's one error line if it cannot be."""
    try:
        import tomllib
    except ModuleNotFoundError:       # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            parser.error("--config needs Python 3.11 or later (tomllib), or pip install tomli")
    try:
        with open_regular_file(path) as f:
            return tomllib.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"--config {path} cannot be read ({getattr(exc, 'strerror', None) or exc})")
    except tomllib.TOMLDecodeError as exc:
        parser.error(f"--config {path} is not valid TOML ({exc})")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m brainlike_np.train",
        description="Train a byte-level language model (the brain-like sparse model by "
                    "default). Backend: $BRAINLIKE_BACKEND (" + ", ".join(BACKEND_NAMES) + ").")
    p.add_argument("--model", type=_name, help=f"model: {', '.join(MODELS)} (default brainlike)")
    presets = "; ".join(f"{name}: {', '.join(model.PRESETS)}" for name, model in MODELS.items())
    p.add_argument("--preset", type=_name, help=f"named model config ({presets}) "
                                                "(default: default)")
    p.add_argument("--out-dir", default="out", help="checkpoint and metrics folder (default out)")
    p.add_argument("--config", metavar="FILE.toml",
                   help="read flags from a TOML file whose keys are the flags' names "
                        "(max-iters = 2400); a flag on the command line overrides it")
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
