"""The one module that imports the Numba CUDA target (the ``numba-cuda`` package).

Kernel modules take ``cuda`` from here, so moving to the target's successor is a
change to the import below, nowhere else.

Stream ordering: CuPy arrays name the stream they were made on in
``__cuda_array_interface__``, and by default Numba synchronises that stream for
every such kernel argument (``NUMBA_CUDA_ARRAY_INTERFACE_SYNC=1``). Our kernels are
launched on CuPy's current stream, the same stream the arrays come from, so stream
order already makes that wait unnecessary: it is switched off here (before Numba's
CUDA config is read, and on the config itself in case it was read earlier). Set the
variable to 1 in the environment to keep Numba's synchronisation.
"""

from __future__ import annotations

import os

_SYNC_ENV = "NUMBA_CUDA_ARRAY_INTERFACE_SYNC"
os.environ.setdefault(_SYNC_ENV, "0")

from numba import cuda  # noqa: E402  (numba-cuda: the Numba CUDA target)
from numba.cuda.core import config as cuda_config  # noqa: E402

cuda_config.CUDA_ARRAY_INTERFACE_SYNC = bool(int(os.environ[_SYNC_ENV]))

SIMULATOR = bool(cuda_config.ENABLE_CUDASIM)
"""True under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` before Numba loads)."""


def current_stream():
    """CuPy's current stream as a Numba stream, for launching kernels in CuPy's order.

    The simulator has no external streams (and cannot take CuPy arrays): there it is
    the default stream.
    """
    if SIMULATOR:
        return cuda.default_stream()
    import cupy
    return cuda.external_stream(cupy.cuda.get_current_stream().ptr)


__all__ = ["cuda", "SIMULATOR", "current_stream"]
