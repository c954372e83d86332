"""brainlike-np: a brain-like sparse neural language model with hand-written backprop.

The math is written once against the Python array API and runs on NumPy, CuPy and
array-api-strict; the backend (``brainlike_np.backends``) supplies the namespace, the
device, host-side random numbers, memory accounting and the sparse hot-path kernels.

Importing this package is light: no GPU library is imported until a GPU backend is asked for.

    import brainlike_np as bl
    backend = bl.get_backend("numpy")
    state = bl.TrainState.create("brainlike", bl.get_preset("brainlike", "tiny"), backend,
                                 bl.TrainSettings(seed=0))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> the module that defines it. Loaded on first use (PEP 562), so that
# ``python -m brainlike_np.train`` runs its Ctrl-C guard before NumPy and the rest load.
_EXPORTS = {
    "Backend": "backends", "BackendError": "backends", "get_backend": "backends",
    "CheckpointError": "checkpoint", "ConfigError": "config", "load_corpus": "data",
    "MODELS": "models", "get_model": "models", "get_preset": "models",
    "TrainingDiverged": "train_state", "TrainSettings": "train_state",
    "TrainState": "train_state", "evaluate_tokens": "evaluate",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:
    from .backends import Backend, BackendError, get_backend
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import load_corpus
    from .evaluate import evaluate_tokens
    from .models import MODELS, get_model, get_preset
    from .train_state import TrainingDiverged, TrainSettings, TrainState


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'brainlike_np' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
