"""brainlike-np: a brain-like sparse neural language model with hand-written backprop.

The math is written once against the Python array API and runs on NumPy, CuPy and
array-api-strict; the backend (``brainlike_np.backends``) supplies the namespace, the
device, host-side random numbers, memory accounting and the sparse hot-path kernels.

Importing this package is light: no GPU library is imported until a GPU backend is asked for.

    import brainlike_np as bl
    backend = bl.get_backend("numpy")
    state = bl.TrainState.create("brainlike", bl.preset("tiny"), backend, seed=0)
"""

from . import model
from .backends import Backend, BackendError, get_backend
from .checkpoint import CheckpointError
from .config import ConfigError, ModelConfig, preset
from .data import load_corpus
from .training import TrainingDiverged, TrainState

__version__ = "0.1.0"

__all__ = ["Backend", "BackendError", "CheckpointError", "ConfigError", "ModelConfig",
           "TrainState", "TrainingDiverged", "__version__", "get_backend",
           "load_corpus", "model", "preset"]
