"""How the backend layer reports problems: its exceptions, its one-line warnings, and
NumPy's floating-point warnings switched off where the trainer reports them itself."""

from __future__ import annotations

import functools
import sys

import numpy as np


class BackendError(RuntimeError):
    """A backend cannot be used as asked; the message says why and how to fix it."""


class KernelsMissing(RuntimeError):
    """This backend has no kernels of its own (``kernels='auto'`` then uses the reference
    ops without a word)."""


class KernelsUnavailable(RuntimeError):
    """This backend's kernels cannot run here (not installed, not importable, no
    cache folder, rejected by the driver); the message says why and how to fix it."""


@functools.cache
def warn_once(message: str) -> None:
    """``message`` as one line on stderr, the first time it is given in this process."""
    print(message, file=sys.stderr, flush=True)


def quiet_float_warnings():
    """A context in which NumPy's floating-point warnings (overflow, invalid) are silent:
    a diverged loss is caught and reported in one line by the trainer itself."""
    return np.errstate(all="ignore")
