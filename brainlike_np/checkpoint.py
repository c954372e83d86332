"""Checkpoints: one ``.npz`` file, readable with NumPy alone.

Entries:
- ``params/<name>``: every parameter, in its training dtype;
- ``adam_m/<name>``, ``adam_v/<name>``: AdamW's moments (absent before the first step);
- ``meta.json``: a ``uint8`` array holding UTF-8 JSON: ``format``, ``model`` (the model
  kind), ``config`` (the model config fields), ``step``, ``optimizer`` (AdamW
  hyper-parameters and step), ``rng`` (the data sampler's NumPy bit-generator state),
  ``train`` (the training arguments) and ``metrics`` (the last evaluation).

    import json, numpy as np
    ck = np.load("out/ckpt.npz")
    meta = json.loads(ck["meta.json"].tobytes())
    W_dec = ck["params/W_dec"]

Writes are atomic (temporary file, fsync, rename): a crash mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import zipfile

from .backends import host

FORMAT = "brainlike-np/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(path: str, params: dict, optimizer, meta: dict, backend) -> None:
    arrays = {f"params/{n}": backend.to_numpy(v) for n, v in params.items()}
    for name in optimizer.m:
        arrays[f"adam_m/{name}"] = backend.to_numpy(optimizer.m[name])
        arrays[f"adam_v/{name}"] = backend.to_numpy(optimizer.v[name])
    host.save_npz_atomic(path, arrays, {"format": FORMAT, **meta,
                                        "optimizer": optimizer.state()})


def load_checkpoint(path: str) -> tuple[dict, dict, dict, dict]:
    """-> (params, adam_m, adam_v, meta), as host arrays; CheckpointError if unusable."""
    try:
        arrays, meta = host.load_npz(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path, or "
                              "start without --resume") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' is corrupted or not a brainlike-np checkpoint "
            f"({type(exc).__name__}: {exc}); point --resume at another file or start "
            "a new run") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{path}' has format {meta.get('format')!r}, "
                              f"expected {FORMAT!r}")
    groups = {"params": {}, "adam_m": {}, "adam_v": {}}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        if group not in groups:
            raise CheckpointError(f"checkpoint '{path}' has an unknown entry '{key}'")
        groups[group][name] = value
    return groups["params"], groups["adam_m"], groups["adam_v"], meta


def check_shapes(path: str, params: dict, expected_shapes: dict) -> None:
    """Raise CheckpointError unless ``params`` has exactly the expected names and shapes."""
    missing = set(expected_shapes) - set(params)
    extra = set(params) - set(expected_shapes)
    if missing or extra:
        raise CheckpointError(
            f"checkpoint '{path}' does not match the model: missing "
            f"{sorted(missing) or 'nothing'}, unexpected {sorted(extra) or 'nothing'}")
    for name, shape in expected_shapes.items():
        if tuple(params[name].shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint '{path}': parameter {name} has shape "
                f"{tuple(params[name].shape)}, the config needs {tuple(shape)}")
