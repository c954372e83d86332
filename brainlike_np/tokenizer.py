"""Token ids <-> text for models trained on token files (``--data`` with token ids):
a tiktoken encoding by name (``gpt2``, as nanoGPT's ``prepare.py`` uses), the optional
``tokenizer`` extra. Byte models need none: each byte is its token."""

from __future__ import annotations

import importlib


class TokenizerError(ValueError):
    """A tokenizer that is not installed or cannot be loaded; the message says the fix."""


def load_tokenizer(name: str):
    """The tiktoken encoding ``name`` (``encode(text) -> ids``, ``decode(ids) -> text``);
    TokenizerError when tiktoken is missing or cannot load it (its BPE file is fetched
    from the network the first time, then cached in ``$TIKTOKEN_CACHE_DIR``)."""
    if not isinstance(name, str) or not name:
        raise TokenizerError(f"--tokenizer must name a tiktoken encoding such as gpt2, "
                             f"got {name!r}")
    try:
        tiktoken = importlib.import_module("tiktoken")
    except ImportError:
        raise TokenizerError(f"tokenizer '{name}' needs tiktoken: pip install "
                             "'brainlike-np[tokenizer]' (or pass --tokenizer none)") from None
    try:
        return tiktoken.get_encoding(name)
    except ValueError as exc:      # an unknown name
        raise TokenizerError(f"tiktoken has no encoding '{name}' ({exc}); name one such as "
                             "gpt2") from None
    except Exception as exc:       # its BPE file could not be fetched or read
        raise TokenizerError(
            f"tiktoken cannot load '{name}' ({type(exc).__name__}); run it once with network "
            "access, or point $TIKTOKEN_CACHE_DIR at a cache that holds it, or pass "
            "--tokenizer none for ids only") from None
