"""Byte-level corpora on the host: the default (the running Python's standard library
sources) or any text file, split deterministically into train and validation; windows
drawn from them with a seeded NumPy generator; count-model baselines.

Everything here is host-side NumPy (bytes in, ``uint8``/``int64`` arrays out), whatever
the backend: batches go to the device with ``backend.asarray``."""

from __future__ import annotations

import math
import os
import stat
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SKIPPED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"}
VALID_FRACTION = 0.1
COUNT_CHUNK = 1 << 18     # bytes the baselines count at a time: their extra memory is O(this)


class DataError(ValueError):
    """The corpus cannot be used; the message says which file and what to do."""


@dataclass
class Corpus:
    name: str
    train: object        # host uint8 array [n_train]
    valid: object        # host uint8 array [n_valid]

    def check_fits(self, context: int, vocab_size: int = 256) -> None:
        """DataError unless both splits hold more than ``context + 1`` bytes and every
        byte is a token of the model (below ``vocab_size``); cheap, so call it before the
        model is allocated."""
        for split in ("train", "valid"):
            tokens = getattr(self, split)
            n = tokens.shape[0]
            if n <= context + 1:
                raise DataError(
                    f"corpus '{self.name}': the {split} split has {n} bytes, too short for "
                    f"windows of {context} bytes plus a target; use a longer file or a "
                    f"smaller --context")
            top = int(tokens.max())
            if top >= vocab_size:
                raise DataError(
                    f"corpus '{self.name}' holds byte {top}, but the model's vocab_size is "
                    f"{vocab_size}: a byte corpus needs --vocab-size 256")


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not SKIPPED_STDLIB_DIRS & set(p.relative_to(root).parts))


def load_stdlib_corpus() -> Corpus:
    """Every tenth file (by a hash of its path) goes to validation. Each split grows in
    one buffer (files joined by newlines), never as a list of files plus a joined copy."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, valid = bytearray(), bytearray()
    for path in stdlib_files():
        key = zlib.crc32(str(path.relative_to(root)).encode())
        split = valid if key % 10 == 0 else train
        if split:
            split += b"\n"
        split += path.read_bytes()
    if not train or not valid:
        raise DataError(f"no Python sources found under {root}; pass --data FILE")
    return Corpus(f"python-stdlib ({root})", _read_only(train), _read_only(valid))


class NotRegularFileError(OSError):
    """The path exists but is not a regular file (a folder, a FIFO, a device...)."""


def open_regular_file(path: str):
    """``path`` opened for binary reading, if it is a regular file: a FIFO would block
    forever and ``/dev/zero`` never ends, so anything else raises NotRegularFileError
    (its message names what the path is) before a byte is read. Other failures raise
    the OSError that ``os.stat``/``os.open`` raise (FileNotFoundError, ...)."""
    _check_regular(path, os.stat(path))
    # O_NONBLOCK: opening a FIFO swapped in after the stat returns at once instead of
    # waiting for a writer; the fstat below then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_regular(path, os.fstat(fd))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISSOCK, "a socket"))
        kind = next((name for test, name in kinds if test(st.st_mode)), "not a regular file")
        raise NotRegularFileError(f"'{path}' is {kind}, not a regular file")


def load_text_file(path: str) -> Corpus:
    """The last 10% of the file's bytes are the validation split. The file is read once
    into one ``uint8`` buffer; both splits are views of it."""
    try:
        with open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise DataError(f"data file '{path}' is empty; pass a text file with content")
            tokens = np.empty(size, dtype=np.uint8)
            n = 0
            while n < size:      # readinto may return less than asked
                got = f.readinto(memoryview(tokens)[n:])
                if not got:      # the file shrank since the stat
                    break
                n += got
    except NotRegularFileError as exc:
        raise DataError(f"data file {exc}; pass a text file to --data") from None
    except FileNotFoundError:
        raise DataError(f"data file '{path}' does not exist; pass an existing text file "
                        "to --data, or leave --data out for the default corpus") from None
    except OSError as exc:
        raise DataError(f"data file '{path}' cannot be read ({exc.strerror or exc}); check "
                        "the path and its permissions") from None
    except MemoryError:
        raise DataError(f"data file '{path}' ({size:,} bytes) does not fit in memory; "
                        "train on a smaller file") from None
    if n == 0:
        raise DataError(f"data file '{path}' is empty; pass a text file with content")
    tokens = tokens[:n]
    tokens.flags.writeable = False
    cut = int(n * (1.0 - VALID_FRACTION))
    return Corpus(path, tokens[:cut], tokens[cut:])


def random_batch(batch_size: int, context: int, vocab_size: int = 256, seed: int = 0):
    """Uniformly random host tokens x ``[B, T]`` and targets y ``[B]`` (int64), for tests
    and benchmarks that need inputs of a shape rather than text."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab_size, size=(batch_size, context))                # [B, T]
    y = rng.integers(0, vocab_size, size=batch_size)                           # [B]
    return x, y


def load_corpus(path: str | None = None) -> Corpus:
    return load_stdlib_corpus() if path is None else load_text_file(path)


def as_tokens(data: bytes) -> np.ndarray:
    """Bytes as a ``uint8`` token array ``[n]``."""
    return np.frombuffer(data, dtype=np.uint8)


def _read_only(buffer: bytearray) -> np.ndarray:
    tokens = np.frombuffer(buffer, dtype=np.uint8)      # no copy
    tokens.flags.writeable = False
    return tokens


def sample_windows(tokens: np.ndarray, batch_size: int, context: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random windows x ``[B, T]`` (int64) and the byte after each, y ``[B]``."""
    starts = rng.integers(0, tokens.shape[0] - context, size=batch_size)       # [B]
    x = tokens[starts[:, None] + np.arange(context)[None, :]].astype(np.int64)  # [B, T]
    y = tokens[starts + context].astype(np.int64)                               # [B]
    return x, y


def count_model_losses(train: np.ndarray, valid: np.ndarray) -> dict:
    """Validation cross-entropy (nats/byte) of unigram and bigram count models fit on
    ``train``, with add-one smoothing. Bytes and byte pairs are counted a chunk at a
    time, so the extra memory is O(COUNT_CHUNK), whatever the corpus size."""
    unigram = _byte_counts(train) + 1.0                                                # [256]
    log_p1 = np.log(unigram / unigram.sum())
    bigram = _pair_counts(train) + 1.0                                           # [256, 256]
    log_p2 = np.log(bigram / bigram.sum(axis=1, keepdims=True))
    # mean over the validation bytes = counts of each byte (pair) times its log-probability
    return {"unigram": float(-(_byte_counts(valid) * log_p1).sum() / valid.shape[0]),
            "bigram": float(-(_pair_counts(valid) * log_p2).sum() / (valid.shape[0] - 1))}


def _byte_counts(tokens: np.ndarray) -> np.ndarray:
    """How often each byte value occurs: float64 ``[256]``."""
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, tokens.shape[0], COUNT_CHUNK):
        counts += np.bincount(tokens[start:start + COUNT_CHUNK], minlength=256)
    return counts.astype(np.float64)


def _pair_counts(tokens: np.ndarray) -> np.ndarray:
    """How often byte b follows byte a: float64 ``[256, 256]`` indexed [a, b]; the
    pairs are coded ``a * 256 + b`` in uint16, one chunk (overlapping by a byte) at a
    time."""
    counts = np.zeros(256 * 256, dtype=np.int64)
    for start in range(0, tokens.shape[0] - 1, COUNT_CHUNK):
        chunk = tokens[start:start + COUNT_CHUNK + 1]
        pairs = chunk[:-1].astype(np.uint16) * 256 + chunk[1:]        # [chunk] uint16
        counts += np.bincount(pairs, minlength=256 * 256)
    return counts.reshape(256, 256).astype(np.float64)


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2.0)


def check_batch(x, y, vocab_size: int) -> None:
    """ValueError unless host x ``[B, T]`` and y ``[B]`` are integer tokens in
    ``[0, vocab_size)`` with B > 0: checked once on the host, so the device never has to."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != x.shape[:1] or x.shape[0] == 0:
        raise ValueError(f"a batch is x [B, T] and y [B] with B > 0, got {x.shape} and {y.shape}")
    for name, a in (("x", x), ("y", y)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer tokens, got {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= vocab_size):
            raise ValueError(f"{name} holds tokens outside [0, {vocab_size}): "
                             f"{a.min()}..{a.max()}")
