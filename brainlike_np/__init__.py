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

from .backends import Backend, BackendError, get_backend
from .checkpoint import CheckpointError
from .config import ConfigError
from .data import load_corpus
from .models import MODELS, get_model, get_preset
from .train_state import TrainingDiverged, TrainSettings, TrainState

__version__ = "0.1.0"

__all__ = ["MODELS", "Backend", "BackendError", "CheckpointError", "ConfigError",
           "TrainSettings", "TrainState", "TrainingDiverged", "__version__", "get_backend",
           "get_model", "get_preset", "load_corpus"]
