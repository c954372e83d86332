"""Checkpoints: one ``.npz`` file, readable with NumPy alone.

Entries:
- ``params/<name>``: every parameter, in its training dtype;
- ``adam_m/<name>``, ``adam_v/<name>``: AdamW's moments (absent before the first step);
- ``meta.json``: a ``uint8`` array holding UTF-8 JSON: ``format``, ``model`` (the model
  kind), ``config`` (the model config fields), ``step``, ``optimizer`` (AdamW
  hyper-parameters and step), ``rng`` (the data sampler's NumPy bit-generator state),
  ``train`` (the training settings, ``TrainSettings``), ``metrics`` (the last
  evaluation), ``data`` (the corpus's identity, ``data.Corpus.record()``) and ``run_id``
  (made when the run started, also in its every metrics record); the last two are
  absent in older checkpoints.

    import json, numpy as np
    ck = np.load("out/ckpt.npz")
    meta = json.loads(ck["meta.json"].tobytes())
    W_dec = ck["params/W_dec"]

Writes are atomic (``output.replacing``: temporary file, fsync, rename): a crash or a
full disk mid-write leaves the previous checkpoint intact, and a state holding NaN or
infinity is never written. A replaced checkpoint keeps its permissions (a read-only one
stays read-only); only an absent path, an empty file or a zip is replaced.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np

from .data import (JSON_PATH_BYTES, MAX_DATA_RECORD_BYTES, NotRegularFileError,
                   open_regular_file)
from .output import ZIP_MAGIC, check_output_path, replacing

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


GROUPS = {"params": "parameter", "adam_m": "AdamW first moment",
          "adam_v": "AdamW second moment"}
# meta.json: a config, settings (--data: a path), an RNG state, one evaluation record
# (64 KiB) and the data record: the largest the writer writes (save_npz_atomic refuses more)
MAX_META_BYTES = (64 << 10) + JSON_PATH_BYTES + MAX_DATA_RECORD_BYTES
MAX_NPY_HEADER_BYTES = 1024  # its .npy header (NumPy writes 128 bytes for a 1-D array)
READ_CHUNK = 1 << 20        # bytes read at a time into an array


class CheckpointFile:
    """A checkpoint opened for reading: ``with CheckpointFile(path) as ck:`` reads and
    parses ``meta.json`` alone (``ck.meta``, a dict); ``ck.read_arrays(shapes, dtype)``
    then checks every entry's name, ``.npy`` header and declared size against what the
    caller's config needs before it reads any array data, so no file, however crafted,
    takes more memory than those arrays. CheckpointError for any problem; the file is
    never changed. The file stays open between the two, so a checkpoint renamed over
    this one meanwhile is never mixed in."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = open_regular_file(path)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint '{path}' does not exist; check the path (a new "
                                  "run needs no checkpoint)") from None
        except NotRegularFileError as exc:
            raise CheckpointError(f"checkpoint {exc}; point to a checkpoint file") from None
        except OSError as exc:
            raise CheckpointError(f"checkpoint '{path}' cannot be read ({exc.strerror}); "
                                  "check its permissions") from None
        try:
            with self._reading():
                self._zip = zipfile.ZipFile(self._file)
                self._entries = self._list_entries()
                self.meta = self._read_meta()
            self._check_meta()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def read_arrays(self, shapes: dict, dtype: str) -> dict:
        """-> ``{"params": {name: array}, "adam_m": ..., "adam_v": ...}`` (host arrays).
        ``shapes``: entry (``"params/E"``) -> the shape the config needs; every entry
        must be one of them, of ``dtype``, finite, and a second moment >= 0."""
        dtype = np.dtype(dtype)
        with self._reading():
            self._check_names(shapes)
            headers = {key: self._check_header(key, tuple(shape), dtype)
                       for key, shape in shapes.items()}
            arrays = {key: self._read_data(key, tuple(shapes[key]), dtype, *headers[key])
                      for key in shapes}
        groups = {group: {} for group in GROUPS}
        for key, value in arrays.items():
            group, _, name = key.partition("/")
            if not np.all(np.isfinite(value)):
                raise CheckpointError(f"checkpoint '{self.path}': {key} holds NaN or infinite "
                                      "values (saved from a diverged run?); use another "
                                      "checkpoint")
            if group == "adam_v" and np.any(value < 0):
                raise CheckpointError(f"checkpoint '{self.path}': {key} holds negative values "
                                      "(a second moment is a mean of squares); it is corrupted")
            groups[group][name] = value
        return groups

    # ---- the steps ---------------------------------------------------------------------
    def _check_meta(self) -> None:
        meta = self.meta
        if not isinstance(meta, dict):
            kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
                type(meta), "number")
            raise CheckpointError(f"checkpoint '{self.path}' is corrupted or not a brainlike-np "
                                  f"checkpoint (its {META_KEY} is a JSON {kind}, not an "
                                  "object); point to another checkpoint file")
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint '{self.path}' has format "
                                  f"{meta.get('format')!r}, this version reads {FORMAT!r}; "
                                  "start a new run")

    def _list_entries(self) -> dict:
        entries = {}
        for info in self._zip.infolist():
            if info.filename in entries:
                raise ValueError(f"the entry {info.filename} appears twice")
            entries[info.filename] = info
        return entries

    def _read_meta(self):
        info = self._entries.get(META_KEY + ".npy")
        if info is None:
            raise KeyError(f"no {META_KEY} entry")
        limit = MAX_META_BYTES + MAX_NPY_HEADER_BYTES
        if info.file_size > limit:
            raise ValueError(f"{META_KEY} declares {info.file_size} bytes, more than {limit}")
        with self._zip.open(info) as f:
            raw = f.read(limit + 1)
        text = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        if text.dtype != np.uint8 or text.ndim != 1 or text.size > MAX_META_BYTES:
            raise ValueError(f"{META_KEY} holds {text.dtype} {text.shape}, not UTF-8 bytes "
                             f"(at most {MAX_META_BYTES})")
        return json.loads(text.tobytes().decode())

    def _check_names(self, shapes: dict) -> None:
        present = {name[:-len(".npy")] if name.endswith(".npy") else name
                   for name in self._entries} - {META_KEY}
        unknown = sorted(k for k in present if k.partition("/")[0] not in GROUPS)
        if unknown:
            raise CheckpointError(f"checkpoint '{self.path}' has an unknown entry "
                                  f"'{unknown[0]}'")
        for group, what in GROUPS.items():
            have = {k for k in present if k.startswith(group + "/")}
            need = {k for k in shapes if k.startswith(group + "/")}
            if have != need:
                names = lambda keys: sorted(k.partition("/")[2] for k in keys) or "nothing"
                raise CheckpointError(
                    f"checkpoint '{self.path}' does not match the model ({what}): missing "
                    f"{names(need - have)}, unexpected {names(have - need)}")

    def _check_header(self, key: str, shape: tuple, dtype: np.dtype) -> tuple:
        """-> (Fortran order, header bytes), after checking the entry's shape, dtype and
        declared size against the config's, reading its header alone."""
        info = self._entries[key + ".npy"]
        with self._zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"{key}: unsupported .npy version {version}")
            saved_shape, fortran, saved_dtype = read_header(f)
            header_bytes = f.tell()
        if saved_dtype != dtype:
            raise CheckpointError(f"checkpoint '{self.path}': {key} is {saved_dtype}, the "
                                  f"run trains in {dtype}")
        if tuple(saved_shape) != shape:
            raise CheckpointError(f"checkpoint '{self.path}': {GROUPS[key.partition('/')[0]]} "
                                  f"{key.partition('/')[2]} has shape {tuple(saved_shape)}, "
                                  f"the config needs {shape}")
        n_bytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header_bytes + n_bytes:
            raise ValueError(f"{key} declares {info.file_size} bytes, its header "
                             f"{header_bytes} + {n_bytes}")
        return fortran, header_bytes

    def _read_data(self, key: str, shape: tuple, dtype: np.dtype, fortran: bool,
                   header_bytes: int) -> np.ndarray:
        """The entry's array, read in chunks straight into its own memory."""
        info = self._entries[key + ".npy"]
        size = info.file_size - header_bytes
        array = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
        buffer = memoryview(array.reshape(-1)).cast("B")
        with self._zip.open(info) as f:
            f.read(header_bytes)
            done = 0
            while done < size:
                chunk = f.read(min(size - done, READ_CHUNK))
                if not chunk:
                    raise EOFError(f"{key} ends after {done} of {size} bytes")
                buffer[done:done + len(chunk)] = chunk
                done += len(chunk)
            if f.read(1):       # also completes the CRC check of the entry
                raise ValueError(f"{key} holds more bytes than it declares")
        return array.T if fortran else array

    @contextmanager
    def _reading(self):
        """Any error of the zip or .npy layers -> one CheckpointError naming the file."""
        try:
            yield
        except CheckpointError:
            raise
        except MemoryError:
            raise CheckpointError(f"checkpoint '{self.path}' needs more memory than is free: "
                                  "it is too large for this machine") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError, UnicodeDecodeError, struct.error,
                RecursionError, SyntaxError) as exc:
            raise CheckpointError(
                f"checkpoint '{self.path}' is corrupted or not a brainlike-np checkpoint "
                f"({type(exc).__name__}: {exc}); point to another checkpoint file or start "
                "a new run") from None


# ---- .npz archives: arrays plus a JSON entry ------------------------------------
META_KEY = "meta.json"


def save_npz_atomic(path: str, arrays: dict, meta: dict) -> None:
    """Write arrays plus a JSON ``meta`` entry to ``path`` atomically (``output.replacing``:
    a crash never leaves a half-written file in place of the previous one, and ``path``
    must be absent or a file that is empty or a zip, such as an earlier checkpoint).
    CheckpointError, nothing written, if ``meta`` is larger than the reader takes."""
    text = json.dumps(meta).encode()
    if len(text) > MAX_META_BYTES:
        raise CheckpointError(f"not saving '{path}': its {META_KEY} would be {len(text):,} "
                              f"bytes, more than the {MAX_META_BYTES:,} a checkpoint may hold")
    check_output_path(path, ZIP_MAGIC, own_name="ckpt.npz")    # before making its folder
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = dict(arrays)
    payload[META_KEY] = np.frombuffer(text, dtype=np.uint8)
    with replacing(path, ZIP_MAGIC, own_name="ckpt.npz") as f:
        np.savez(f, **payload)
