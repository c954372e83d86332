"""Byte-level corpora on the host: the default (the running Python's standard library
sources) or any text file, split deterministically into train and validation; windows
drawn from them with a seeded NumPy generator; count-model baselines.

Everything here is host-side NumPy (bytes in, ``uint8``/``int64`` arrays out), whatever
the backend: batches go to the device with ``backend.asarray``."""

from __future__ import annotations

import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import math

import numpy as np

SKIPPED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"}
VALID_FRACTION = 0.1


class DataError(ValueError):
    """The corpus cannot be used; the message says which file and what to do."""


@dataclass
class Corpus:
    name: str
    train: object        # host uint8 array [n_train]
    valid: object        # host uint8 array [n_valid]

    def check_fits(self, context: int) -> None:
        for split in ("train", "valid"):
            n = getattr(self, split).shape[0]
            if n <= context + 1:
                raise DataError(
                    f"corpus '{self.name}': the {split} split has {n} bytes, too short for "
                    f"windows of {context} bytes plus a target; use a longer file or a "
                    f"smaller --context")


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not SKIPPED_STDLIB_DIRS & set(p.relative_to(root).parts))


def load_stdlib_corpus() -> Corpus:
    """Every tenth file (by a hash of its path) goes to validation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, valid = [], []
    for path in stdlib_files():
        key = zlib.crc32(str(path.relative_to(root)).encode())
        (valid if key % 10 == 0 else train).append(path.read_bytes())
    if not train or not valid:
        raise DataError(f"no Python sources found under {root}; pass --data FILE")
    return Corpus(f"python-stdlib ({root})",
                  as_tokens(b"\n".join(train)), as_tokens(b"\n".join(valid)))


def load_text_file(path: str) -> Corpus:
    """The last 10% of the file's bytes are the validation split."""
    if not os.path.isfile(path):
        raise DataError(f"data file '{path}' does not exist; pass an existing text file "
                        "to --data, or leave --data out for the default corpus")
    data = Path(path).read_bytes()
    if not data:
        raise DataError(f"data file '{path}' is empty; pass a text file with content")
    cut = int(len(data) * (1.0 - VALID_FRACTION))
    tokens = as_tokens(data)
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


def sample_windows(tokens: np.ndarray, batch_size: int, context: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random windows x ``[B, T]`` (int64) and the byte after each, y ``[B]``."""
    starts = rng.integers(0, tokens.shape[0] - context, size=batch_size)       # [B]
    x = tokens[starts[:, None] + np.arange(context)[None, :]].astype(np.int64)  # [B, T]
    y = tokens[starts + context].astype(np.int64)                               # [B]
    return x, y


def count_model_losses(train: np.ndarray, valid: np.ndarray) -> dict:
    """Validation cross-entropy (nats/byte) of unigram and bigram count models fit on
    ``train``, with add-one smoothing."""
    unigram = np.bincount(train, minlength=256).astype(np.float64) + 1.0           # [256]
    log_p1 = np.log(unigram / unigram.sum())
    pairs = train[:-1].astype(np.int64) * 256 + train[1:]
    bigram = np.bincount(pairs, minlength=256 * 256).reshape(256, 256) + 1.0        # [256, 256]
    log_p2 = np.log(bigram / bigram.sum(axis=1, keepdims=True))
    return {"unigram": float(-log_p1[valid].mean()),
            "bigram": float(-log_p2[valid[:-1], valid[1:]].mean())}


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2.0)
