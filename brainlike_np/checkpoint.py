"""Checkpoints: one ``.npz`` file, readable with NumPy alone.

Entries:
- ``params/<name>``: every parameter, in its training dtype;
- ``adam_m/<name>``, ``adam_v/<name>``: AdamW's moments (absent before the first step);
- ``meta.json``: a ``uint8`` array holding UTF-8 JSON: ``format``, ``model`` (the model
  kind), ``config`` (the model config fields), ``step``, ``optimizer`` (AdamW
  hyper-parameters and step), ``rng`` (the data sampler's NumPy bit-generator state),
  ``train`` (the training settings, ``TrainSettings``), ``metrics`` (the last
  evaluation) and ``data`` (the corpus's identity, ``data.Corpus.record()``; absent in
  older checkpoints).

    import json, numpy as np
    ck = np.load("out/ckpt.npz")
    meta = json.loads(ck["meta.json"].tobytes())
    W_dec = ck["params/W_dec"]

Writes are atomic (temporary file, fsync, rename): a crash or a full disk mid-write
leaves the previous checkpoint intact, and a state holding NaN or infinity is never
written.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .data import NotRegularFileError, open_regular_file

FORMAT = "brainlike-np/2"   # 2: execution path in the config, training settings in "train"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(path: str, params: dict, optimizer, meta: dict, backend) -> None:
    """Write the state atomically; CheckpointError, and the file at ``path`` untouched,
    if any array holds a NaN or an infinity: a diverged state never replaces a good one."""
    arrays = {f"params/{n}": backend.to_numpy(v) for n, v in params.items()}
    for name in optimizer.m:
        arrays[f"adam_m/{name}"] = backend.to_numpy(optimizer.m[name])
        arrays[f"adam_v/{name}"] = backend.to_numpy(optimizer.v[name])
    not_finite = [key for key, a in arrays.items() if not np.all(np.isfinite(a))]
    if not_finite:
        raise CheckpointError(
            f"not saving '{path}': {', '.join(not_finite[:3])} hold NaN or infinite values "
            "(training diverged); the last checkpoint is kept: lower --lr or raise --warmup "
            "and resume from it")
    save_npz_atomic(path, arrays, {"format": FORMAT, **meta,
                                        "optimizer": optimizer.state()})


def load_checkpoint(path: str) -> tuple[dict, dict, dict, dict]:
    """-> (params, adam_m, adam_v, meta), as host arrays; CheckpointError if unusable:
    not a regular file, not an npz archive, meta not a JSON object, an unknown entry, an
    array that is not floating point or holds NaN or infinity, a negative second moment."""
    try:
        arrays, meta = load_npz(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path (a new "
                              "run needs no checkpoint)") from None
    except NotRegularFileError as exc:
        raise CheckpointError(f"checkpoint {exc}; point to a checkpoint file") from None
    except MemoryError:
        raise CheckpointError(f"checkpoint '{path}' declares arrays larger than the memory: "
                              "it is corrupted, or too large for this machine") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError,
            RecursionError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' is corrupted or not a brainlike-np checkpoint "
            f"({type(exc).__name__}: {exc}); point to another checkpoint file or start "
            "a new run") from None
    if not isinstance(meta, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
            type(meta), "number")
        raise CheckpointError(f"checkpoint '{path}' is corrupted or not a brainlike-np "
                              f"checkpoint (its {META_KEY} is a JSON {kind}, not an object); "
                              "point to another checkpoint file")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{path}' has format {meta.get('format')!r}, "
                              f"this version reads {FORMAT!r}; start a new run")
    groups = {"params": {}, "adam_m": {}, "adam_v": {}}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        if group not in groups:
            raise CheckpointError(f"checkpoint '{path}' has an unknown entry '{key}'")
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"checkpoint '{path}': {key} holds {value.dtype}, not "
                                  "floating-point numbers; it is corrupted")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"checkpoint '{path}': {key} holds NaN or infinite values "
                                  "(saved from a diverged run?); use another checkpoint")
        if group == "adam_v" and np.any(value < 0):
            raise CheckpointError(f"checkpoint '{path}': {key} holds negative values (a "
                                  "second moment is a mean of squares); it is corrupted")
        groups[group][name] = value
    return groups["params"], groups["adam_m"], groups["adam_v"], meta


def check_shapes(path: str, arrays: dict, expected_shapes: dict, what: str = "parameter") -> None:
    """Raise CheckpointError unless ``arrays`` has exactly the expected names and shapes."""
    missing = set(expected_shapes) - set(arrays)
    extra = set(arrays) - set(expected_shapes)
    if missing or extra:
        raise CheckpointError(
            f"checkpoint '{path}' does not match the model ({what}): missing "
            f"{sorted(missing) or 'nothing'}, unexpected {sorted(extra) or 'nothing'}")
    for name, shape in expected_shapes.items():
        if tuple(arrays[name].shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint '{path}': {what} {name} has shape "
                f"{tuple(arrays[name].shape)}, the config needs {tuple(shape)}")


# ---- .npz archives: arrays plus a JSON entry ------------------------------------
META_KEY = "meta.json"


def save_npz_atomic(path: str, arrays: dict, meta: dict) -> None:
    """Write arrays plus a JSON ``meta`` entry to ``path`` atomically: a temporary file
    in the same folder, fsync, then rename, so a crash never leaves a half-written file
    in place of the previous one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = dict(arrays)
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())   # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_npz(path: str) -> tuple[dict, dict]:
    """-> (arrays, meta). Raises ValueError/OSError/KeyError on a damaged file, and
    NotRegularFileError (an OSError) before reading anything that is not a regular file.
    Every array is read while the file is open, so a checkpoint renamed over this one
    meanwhile is never mixed in."""
    with open_regular_file(path) as f:
        archive = np.load(f, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):     # a lone .npy array
            raise ValueError("a single array, not an .npz archive")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    return arrays, meta
