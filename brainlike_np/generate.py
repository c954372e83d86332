"""Continue a prompt byte by byte from a checkpoint: ``python -m brainlike_np.generate``."""

from __future__ import annotations

import argparse
import sys

from .backends import BackendError, get_backend, host
from .checkpoint import CheckpointError
from .training import TrainState


def generate(state: TrainState, prompt: bytes, n_bytes: int, temperature: float = 0.8,
             top_k: int = 0, seed: int = 0) -> bytes:
    """``n_bytes`` new bytes after ``prompt``; the model reads the last ``context`` bytes.

    The model was trained on full windows, so a prompt shorter than the context is
    left-padded with newlines (as if it started a file) rather than read short."""
    rng = state.backend.rng(seed)
    T = state.cfg.context
    out = bytearray(b"\n" * max(0, T - len(prompt)) + prompt)
    for _ in range(n_bytes):
        window = host.as_tokens(bytes(out[-T:]))[None, :].astype("int64")   # [1, T]
        logits = state.next_logits(window)[0]                                # [V]
        out.append(host.sample_from_logits(logits, rng, temperature, top_k))
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
