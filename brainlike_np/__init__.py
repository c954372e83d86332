"""brainlike-np: a brain-like sparse neural language model with hand-written backprop.

The math is written once against the Python array API and runs on NumPy, CuPy and
array-api-strict; the backend (``brainlike_np.backends``) supplies the namespace, the
device, host-side random numbers, memory accounting and the sparse hot-path kernels.

Importing this package is light: no GPU library is imported until a GPU backend is asked for.
"""

from .backends import Backend, BackendError, get_backend

__version__ = "0.1.0"

__all__ = ["Backend", "BackendError", "get_backend", "__version__"]
