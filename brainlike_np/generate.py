"""Continue a prompt byte by byte from a checkpoint: ``python -m brainlike_np.generate``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .backends import BackendError, get_backend
from .checkpoint import CheckpointError
from .data import as_tokens
from .train_state import TrainState


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


def generate(state: TrainState, prompt: bytes, n_bytes: int, temperature: float = 0.8,
             top_k: int = 0, seed: int = 0) -> bytes:
    """``n_bytes`` new bytes after ``prompt``; the model reads the last ``context`` bytes.

    The model was trained on full windows, so a prompt shorter than the context is
    left-padded with newlines (as if it started a file) rather than read short."""
    rng = state.backend.rng(seed)
    T = state.cfg.context
    out = bytearray(b"\n" * max(0, T - len(prompt)) + prompt)
    for _ in range(n_bytes):
        window = as_tokens(bytes(out[-T:]))[None, :].astype("int64")   # [1, T]
        logits = state.next_logits(window)[0]                                # [V]
        out.append(sample_from_logits(logits, rng, temperature, top_k))
    return bytes(out[-n_bytes:]) if n_bytes else b""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m brainlike_np.generate",
                                description="Sample bytes from a trained checkpoint.")
    p.add_argument("--checkpoint", default="out/ckpt.npz", help="default out/ckpt.npz")
    p.add_argument("--prompt", default="def ", help="text to continue")
    p.add_argument("--max-new-bytes", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        state = TrainState.load(args.checkpoint, get_backend())
    except (BackendError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    prompt = args.prompt.encode()
    text = generate(state, prompt, args.max_new_bytes, args.temperature, args.top_k, args.seed)
    sys.stdout.write((prompt + text).decode("utf-8", errors="replace") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
