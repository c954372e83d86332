"""Continue a prompt byte by byte from a checkpoint: ``python -m brainlike_np.generate``.

The prompt is bytes: on the command line, its text as the shell passed it (a prompt
that is not valid UTF-8, such as ``$'\\xff'`` in bash, is taken byte for byte, as
``os.fsencode`` gives it back). The output is the prompt plus the new bytes, written
to stdout as each byte is sampled, as UTF-8 text with any byte sequence that is not
UTF-8 shown as U+FFFD, written as bytes whatever stdout's encoding is.

A model trained on token files (``--data`` with token ids) takes and prints token ids
instead (``--prompt-ids``; the ids on one line), and their text on the next line when a
tokenizer is named (``--tokenizer gpt2``, or the data's ``tokens.json``'s; tiktoken).

Bad input (a temperature that is not a finite number >= 0, a negative --max-new-bytes,
--top-k or --seed, a missing or damaged checkpoint, an unusable backend) ends with one
``error: ...`` line and exit code 1; the library function ``generate`` raises ValueError
for the same arguments.
"""

from __future__ import annotations

from .cli import exit_quietly_on_ctrl_c

if __name__ == "__main__":    # a Ctrl-C while the libraries below load: one line, exit 130
    exit_quietly_on_ctrl_c()

import codecs  # noqa: E402  (the imports below take a while; the guard comes first)
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import numpy as np  # noqa: E402

from .backends import BACKEND_NAMES, BackendError, get_backend  # noqa: E402
from .checkpoint import CheckpointError  # noqa: E402
from .cli import (EXIT_INTERRUPTED, OneLineParser, describe_os_error,  # noqa: E402
                  open_missing_standard_fds, startup_over)
from .tokenizer import TokenizerError, load_tokenizer  # noqa: E402
from .train_state import TrainState  # noqa: E402


class GenerationError(ValueError):
    """An argument of ``generate`` (or of the command line) that cannot work."""


def sample_from_logits(logits: np.ndarray, rng: np.random.Generator,
                       temperature: float = 1.0, top_k: int = 0) -> int:
    """One token from logits ``[V]``; temperature 0 is greedy, top_k 0 (or >= V) keeps
    all. ValueError if a logit is NaN or infinite (a diverged model).

    Computed in float64 with the maximum subtracted before dividing by the temperature,
    so any temperature > 0, however small, gives finite probabilities (the likeliest
    token has weight exactly 1; at tiny temperatures the others underflow to 0)."""
    _check_sampling(temperature, top_k)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 1 or logits.shape[0] == 0:
        raise GenerationError(f"logits must be one row [V] with V > 0, got shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise GenerationError("the model's logits hold NaN or infinite values: its parameters "
                         "are broken (a diverged run?)")
    if temperature == 0:
        return int(np.argmax(logits))
    with np.errstate(over="ignore"):    # a tiny temperature sends the others to -inf
        scaled = (logits - logits.max()) / temperature      # <= 0, the maximum exactly 0
    if 0 < top_k < scaled.shape[0]:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    probs = np.exp(scaled)                                   # in [0, 1], the maximum 1
    return int(rng.choice(scaled.shape[0], p=probs / probs.sum()))


def _check_sampling(temperature, top_k, names=("temperature", "top_k")) -> None:
    """GenerationError naming the argument (``names``: the library's or the flags')."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (math.isfinite(temperature) and temperature >= 0):
        raise GenerationError(f"{names[0]} must be a finite number >= 0 (0: greedy), "
                              f"got {temperature!r}")
    _check_count(names[1], top_k, "(0: all bytes)")


def _check_count(name: str, value, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise GenerationError(f"{name} must be an integer >= 0{' ' + note if note else ''}, "
                         f"got {value!r}")


def generate(state: TrainState, prompt: bytes, n_bytes: int, temperature: float = 0.8,
             top_k: int = 0, seed: int = 0) -> bytes:
    """``n_bytes`` new bytes after ``prompt``; the model reads the last ``context`` bytes.

    The model was trained on full windows, so a prompt shorter than the context is
    left-padded with newlines (as if it started a file) rather than read short.
    ValueError for a prompt that is not bytes or holds a byte the model has no token
    for, a negative ``n_bytes``, ``top_k`` or ``seed``, a temperature that is not a
    finite number >= 0, and a model whose logits are not finite."""
    return bytes(generate_stream(state, prompt, n_bytes, temperature, top_k, seed))


def generate_stream(state: TrainState, prompt: bytes, n_bytes: int, temperature: float = 0.8,
                    top_k: int = 0, seed: int = 0) -> Iterator[int]:
    """``generate``'s bytes one at a time, as each is sampled (in memory: the last
    ``context`` bytes only); its arguments are checked at the call, not the first byte."""
    if not isinstance(prompt, (bytes, bytearray, memoryview)):
        raise GenerationError(f"the prompt must be bytes, got {type(prompt).__name__} "
                         "(encode text first, e.g. os.fsencode(text))")
    prompt = bytes(prompt)
    _check_count("n_bytes", n_bytes)
    _check_count("seed", seed)
    _check_sampling(temperature, top_k)
    V, T = state.cfg.vocab_size, state.cfg.context
    if prompt and max(prompt) >= V:
        raise GenerationError(f"the prompt holds byte {max(prompt)}, but the model's vocabulary "
                         f"has {V} tokens")
    window = (b"\n" * max(0, T - len(prompt)) + prompt)[-T:]
    return _sampled(state, list(window), n_bytes, state.backend.rng(seed), temperature, top_k)


def generate_tokens(state: TrainState, prompt: list, n_tokens: int, temperature: float = 0.8,
                    top_k: int = 0, seed: int = 0, pad_id: int = 0) -> list:
    """``n_tokens`` new token ids after the ids ``prompt``, for a model trained on token
    files; as ``generate``, a prompt shorter than the context is left-padded, with
    ``pad_id`` (GPT-2's end-of-text, 50256, is where its documents start).
    GenerationError naming the argument that cannot work."""
    return list(generate_token_stream(state, prompt, n_tokens, temperature, top_k, seed,
                                      pad_id))


def generate_token_stream(state: TrainState, prompt: list, n_tokens: int,
                          temperature: float = 0.8, top_k: int = 0, seed: int = 0,
                          pad_id: int = 0) -> Iterator[int]:
    """``generate_tokens``'s ids one at a time, as each is sampled."""
    V, T = state.cfg.vocab_size, state.cfg.context
    if isinstance(prompt, (str, bytes)) or not all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt):
        raise GenerationError(f"the prompt must be a list of token ids, got {prompt!r:.60}")
    for name, value in (("n_tokens", n_tokens), ("seed", seed), ("pad_id", pad_id)):
        _check_count(name, value)
    _check_sampling(temperature, top_k)
    outside = [int(t) for t in [*prompt, pad_id] if not 0 <= t < V]
    if outside:
        raise GenerationError(f"token id {outside[0]} is outside the model's vocabulary "
                              f"[0, {V})")
    window = ([int(pad_id)] * max(0, T - len(prompt)) + [int(t) for t in prompt])[-T:]
    return _sampled(state, window, n_tokens, state.backend.rng(seed), temperature, top_k)


def _sampled(state, window: list, n_new: int, rng, temperature, top_k) -> Iterator[int]:
    """Each new token, the model reading the ``context`` tokens before it (``window``)."""
    for _ in range(n_new):
        x = np.array(window, dtype=np.int64)[None, :]                         # [1, T]
        logits = state.next_logits(x)[0]                                      # [V]
        token = sample_from_logits(logits, rng, temperature, top_k)
        window = window[1:] + [token]
        yield token


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m brainlike_np.generate",
                      description="Sample bytes from a trained checkpoint. Backend: "
                                  "$BRAINLIKE_BACKEND (" + ", ".join(BACKEND_NAMES) + ").")
    p.add_argument("--checkpoint", default="out/ckpt.npz", help="default out/ckpt.npz")
    p.add_argument("--prompt", default="def ",
                   help="text to continue, taken byte for byte (need not be UTF-8)")
    p.add_argument("--max-new-bytes", "--max-new-tokens", type=int, default=200,
                   help="0 or more (default 200)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="a finite number >= 0; 0: greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=0,
                   help="sample among the k likeliest bytes (0: all)")
    p.add_argument("--seed", type=int, default=0, help="0 or more")
    p.add_argument("--prompt-ids", metavar="IDS",
                   help="a model of token files: the prompt as token ids, e.g. '464 1893' "
                        "(default: --prompt encoded by the tokenizer, else none)")
    p.add_argument("--tokenizer", metavar="NAME",
                   help="a model of token files: the tiktoken encoding that decodes the ids, "
                        "e.g. gpt2, or none (default: the data's tokens.json's)")
    return p


def main(argv=None) -> int:
    startup_over()
    stdout_closed = sys.stdout is None       # started with >&-
    open_missing_standard_fds()              # (stderr too, for the error line)
    args = build_parser().parse_args(argv)
    try:
        prompt = os.fsencode(args.prompt)    # the bytes the shell passed, UTF-8 or not
        _check_count("--max-new-bytes", args.max_new_bytes)
        _check_count("--seed", args.seed)
        _check_sampling(args.temperature, args.top_k, names=("--temperature", "--top-k"))
        if stdout_closed:
            raise GenerationError("stdout is closed: nowhere to write the sample")
        state = TrainState.load(args.checkpoint, get_backend())
        tokens = (state.data_record or {}).get("tokens")
        if tokens or args.prompt_ids is not None or args.tokenizer is not None:
            write_token_sample(state, tokens, args)
            return 0
        stream = generate_stream(state, prompt, args.max_new_bytes, args.temperature,
                                 args.top_k, args.seed)
        as_text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        write_sample(as_text.decode(prompt))
        for byte in stream:           # each byte as it comes: a long sample shows as it grows
            write_sample(as_text.decode(bytes([byte])))
        write_sample(as_text.decode(b"", final=True) + "\n")
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:     # the reader went away (e.g. `| head -c 10`): not an error
        _silence_stdout()
        return 0
    except (BackendError, CheckpointError, GenerationError, TokenizerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory while generating; try a smaller model or the numpy "
              "backend", file=sys.stderr)
        return 1
    return 0


def write_token_sample(state: TrainState, tokens: dict | None, args) -> None:
    """A model of token files: the prompt's and the new token ids on one line, as they
    come, then the text they decode to when a tokenizer is named (or the data's)."""
    if not tokens:
        raise GenerationError("this checkpoint's model was trained on bytes; drop "
                              "--prompt-ids and --tokenizer")
    name = args.tokenizer if args.tokenizer is not None else tokens.get("tokenizer")
    tokenizer = load_tokenizer(name) if name not in (None, "none") else None
    if args.prompt_ids is not None:
        prompt = parse_ids(args.prompt_ids)
    else:
        prompt = tokenizer.encode(args.prompt) if tokenizer else []
    pad = getattr(tokenizer, "eot_token", 0) if tokenizer else 0
    stream = generate_token_stream(state, prompt, args.max_new_bytes, args.temperature,
                                   args.top_k, args.seed, pad)
    ids = list(prompt)
    write_sample(" ".join(map(str, prompt)))
    for token in stream:
        write_sample(f"{' ' if ids else ''}{token}")
        ids.append(token)
    write_sample("\n" + (tokenizer.decode(ids) + "\n" if tokenizer else ""))


def parse_ids(text: str) -> list:
    """'464 1893,11' -> [464, 1893, 11]; GenerationError naming --prompt-ids otherwise."""
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise GenerationError(f"--prompt-ids must be integers separated by spaces or commas, "
                              f"got {text!r:.60}") from None


def write_sample(text: str) -> None:
    """Write and flush ``text`` on stdout as UTF-8 bytes, whatever stdout's encoding (an
    ASCII locale cannot encode U+FFFD or the prompt's letters); BrokenPipeError as it
    comes (not an error), any other failure (``/dev/full``) as a GenerationError that
    says it was stdout."""
    try:
        sys.stdout.flush()                    # what was written as text goes first
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        _silence_stdout()
        raise GenerationError(f"cannot write the sample to stdout ({exc.strerror}); send "
                              "it to a file or program that takes it") from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
