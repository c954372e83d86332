"""Host-side (NumPy) work that is not model math: byte corpora, window sampling with
the seeded host RNG, count-model baselines, sampling from logits, and ``.npz`` files.

Everything here runs on the CPU whatever the backend; batches are moved to the device
with ``backend.asarray``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile

import numpy as np


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


def sample_from_logits(logits: np.ndarray, rng: np.random.Generator,
                       temperature: float = 1.0, top_k: int = 0) -> int:
    """One token from logits ``[V]``; temperature 0 is greedy, top_k 0 keeps all."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits / temperature
    if 0 < top_k < scaled.shape[0]:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    return int(rng.choice(scaled.shape[0], p=probs / probs.sum()))


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2.0)


# ---- .npz archives -------------------------------------------------------------------
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
    """-> (arrays, meta). Raises ValueError/OSError/KeyError on a damaged file."""
    with open(path, "rb") as f:
        blob = f.read()
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    return arrays, meta
